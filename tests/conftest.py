"""Shared fixtures: seeded generators, the real-data folder, and the device list."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator: tests never touch global random state."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def test_data() -> Path:
    """The third-party data folder (``PET_DL_TEST_DATA``); skips when it is not set."""
    root = os.environ.get("PET_DL_TEST_DATA")
    if not root:
        pytest.skip("PET_DL_TEST_DATA is not set (point it at shared/data to run this test)")
    path = Path(root)
    if not path.is_dir():
        pytest.skip(f"PET_DL_TEST_DATA={root} is not a folder")
    return path


_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each available device: CPU always, CUDA when present."""
    return torch.device(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
