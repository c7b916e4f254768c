"""The runnable examples in the docstrings of the main entry points run and give what they show.

Each module below must hold at least one example (so a deleted example fails too); the
examples are kept to about a second each.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "pet_dl.recon",  # simulate a brain phantom and reconstruct it with OSEM
    "pet_dl.operators",  # a linear operator, its adjoint and transpose
    "pet_dl.geometry.image",  # an image grid, its voxel centres and affine
    "pet_dl.io.checkpoint",  # save and load weights with a model builder and a model version
    "pet_dl.recipes",  # a recipe checked, the seeds of a split and their JSON form
    "pet_dl.data_check",  # an image the counts support and one they contradict
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (output above)"
