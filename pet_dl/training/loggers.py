"""A WandbLogger whose mode follows ``WANDB_MODE`` (offline unless told otherwise)."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger


class PetWandbLogger(WandbLogger):
    """``WandbLogger`` with ``mode=$WANDB_MODE`` (default ``"offline"``; tests use ``"disabled"``).

    Args:
        project: wandb project name.
        save_dir: local folder for run files (``None``: ``outputs``; ``train.py`` sets the
            run folder, :func:`pet_dl.training.cli.fill_run_paths`).
        **kwargs: passed to :class:`lightning.pytorch.loggers.WandbLogger`.
    """

    def __init__(self, project: str = "pet_dl", save_dir: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("mode", os.environ.get("WANDB_MODE", "offline"))
        # with wandb 0.31 and no WANDB_MODE, train.py's offline run stopped asking for an
        # API key although mode="offline" was passed; the environment variable avoids that
        os.environ.setdefault("WANDB_MODE", kwargs["mode"])
        save_dir = save_dir or "outputs"
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(project=project, save_dir=save_dir, **kwargs)
