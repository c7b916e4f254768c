"""``train.py``: the LightningCLI over :class:`ReconModule` and :class:`PETDataModule`."""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from pet_dl.errors import PetDLError
from pet_dl.training.datamodule import PETDataModule
from pet_dl.training.module import ReconModule


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Run ``python train.py {fit,validate} --config configs/<name>.yaml [...]``.

    A config with an unknown key fails before training with jsonargparse's message
    naming the key; a pet_dl input error (e.g. a missing or mismatched
    ``model.init_weights`` file) prints one ``error: ...`` line and exits with code 2.
    """
    try:
        return LightningCLI(
            ReconModule,
            PETDataModule,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            parser_kwargs={"parser_mode": "yaml"},
        )
    except PetDLError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
