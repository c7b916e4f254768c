"""The library example in README.md runs as written and gives Bq/mL back."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_reconstructs_in_bqml() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    image, phantom = namespace["image"], namespace["phantom"]
    assert image.shape == phantom.activity.shape
    assert torch.isfinite(image).all() and (image >= 0).all()
    # Calibrated forward model: the reconstruction's mean activity matches the truth's.
    rel = abs(image.mean() - phantom.activity.mean()) / phantom.activity.mean()
    assert rel < 0.05, f"mean activity off by {rel:.1%}"
