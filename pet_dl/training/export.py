"""Export a trained network to a safetensors checkpoint (``pet_dl.io.checkpoint``).

``python -m pet_dl.training.export LIGHTNING.ckpt OUT.safetensors`` or the
:class:`ExportCallback` (``trainer.callbacks`` in a config) at the end of ``fit``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from pet_dl.training.module import ReconModule


def export_module(
    module: ReconModule, path: str | Path, training_command: str = ""
) -> Path:
    """Write ``module``'s network, resolved config and training geometry to ``path``."""
    from pet_dl.io.checkpoint import save_checkpoint

    meta: dict[str, Any] = dict(module.geometry_metadata)
    if not meta.get("image"):
        raise ValueError("the module has no training geometry (train it with a PETDataModule first)")
    meta["training_command"] = training_command or meta.get("training_command", "")
    meta["global_step"] = int(getattr(module, "global_step", 0))
    config = dict(module.network_config)
    config.setdefault("init_iterations", meta.get("init_iterations", 10))
    config.setdefault("init_subsets", meta.get("init_subsets", 1))
    module.net.eval()
    return save_checkpoint(path, module.net, config, meta)


def export_lightning_checkpoint(ckpt: str | Path, out: str | Path, training_command: str = "") -> Path:
    """Export a Lightning ``.ckpt`` of a :class:`ReconModule` without unpickling code.

    The checkpoint is read with ``torch.load(weights_only=True)`` through
    :func:`pet_dl.io.checkpoint.convert_lightning_checkpoint`; the network config comes
    from its hyper-parameters and the training geometry from ``pet_dl_metadata``.
    """
    import torch

    from pet_dl.io.checkpoint import convert_lightning_checkpoint

    ckpt_data = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    meta: dict[str, Any] = dict(ckpt_data.get("pet_dl_metadata") or {})
    if not meta.get("image"):
        raise ValueError(f"{ckpt} has no training geometry (pet_dl_metadata)")
    meta["training_command"] = training_command or meta.get("training_command", "")
    meta["global_step"] = int(ckpt_data.get("global_step", 0))
    config = dict(ckpt_data["hyper_parameters"]["network"])
    config.setdefault("init_iterations", meta.get("init_iterations", 10))
    config.setdefault("init_subsets", meta.get("init_subsets", 1))
    return convert_lightning_checkpoint(ckpt, out, config=config, metadata=meta, prefix="net.")


class ExportCallback(pl.Callback):
    """Export the network to ``path`` (safetensors) when ``fit`` ends (rank 0 only).

    Args:
        path: output ``.safetensors`` file.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and isinstance(pl_module, ReconModule):
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            export_module(pl_module, self.path, "python " + shlex.join(sys.argv))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("ckpt", help="Lightning checkpoint (.ckpt) of a ReconModule")
    parser.add_argument("out", help="output .safetensors file")
    parser.add_argument("--training-command", default="", help="recorded in the metadata")
    args = parser.parse_args(argv)
    print(export_lightning_checkpoint(args.ckpt, args.out, args.training_command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
