"""``train.py``: the LightningCLI over :class:`ReconModule` and :class:`PETDataModule`.

Every training config is read on top of ``configs/base.yaml`` (trainer defaults, logger,
callbacks), so a config holds only what is its own: the run folder
(``trainer.default_root_dir``), the number of steps, the model and the data. The paths
of one run follow from its folder (:func:`fill_run_paths`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI

from pet_dl.errors import PetDLError
from pet_dl.training.datamodule import PETDataModule
from pet_dl.training.module import ReconModule

#: ``configs/base.yaml`` of the source checkout, read before every ``--config``.
BASE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "base.yaml"

_CHECKPOINT_CLASSES = ("lightning.pytorch.callbacks.ModelCheckpoint",
                       "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint")
_LOGGER_CLASSES = ("pet_dl.training.loggers.PetWandbLogger",)


def fill_run_paths(config: Any) -> None:
    """Fill in the run's paths that a config leaves out, from ``trainer.default_root_dir``.

    With ``root = trainer.default_root_dir``: a :class:`PetWandbLogger`'s ``save_dir``
    (``root``) and ``name`` (the folder's name), a ``ModelCheckpoint``'s ``dirpath``
    (``root/checkpoints``, where ``scripts/slurm_train.sh`` resumes from ``last.ckpt``).
    The :class:`pet_dl.training.export.ExportCallback` writes ``root/pet_dl_2d.safetensors``
    unless given a path. Values the config sets are kept. Nothing changes without a root.

    Args:
        config: the parsed config of one subcommand (a jsonargparse ``Namespace``), edited
            in place.
    """
    trainer = config.get("trainer")
    root = trainer.get("default_root_dir") if trainer is not None else None
    if not root:
        return
    logger = trainer.get("logger")
    for item in logger if isinstance(logger, list) else [logger]:
        if getattr(item, "class_path", None) in _LOGGER_CLASSES:
            if item.init_args.get("save_dir") is None:
                item.init_args.save_dir = str(root)
            if item.init_args.get("name") is None:
                item.init_args.name = Path(root).name
    for callback in trainer.get("callbacks") or []:
        if getattr(callback, "class_path", None) in _CHECKPOINT_CLASSES:
            if callback.init_args.get("dirpath") is None:
                callback.init_args.dirpath = str(Path(root) / "checkpoints")


class PetLightningCLI(LightningCLI):
    """LightningCLI that fills in the run's paths (:func:`fill_run_paths`) before building."""

    def before_instantiate_classes(self) -> None:
        fill_run_paths(self.config[self.subcommand] if self.subcommand else self.config)


def main(
    args: list[str] | None = None, run: bool = True, base_config: str | Path | None = BASE_CONFIG
) -> LightningCLI:
    """Run ``python train.py {fit,validate} --config configs/<name>.yaml [...]``.

    ``base_config`` (default: ``configs/base.yaml``; ``None``: none) is read first, then
    each ``--config`` on top of it: mappings merge key by key, a list (``callbacks``)
    given again replaces the base's. A config with an unknown key fails before training
    with jsonargparse's message naming the key; a pet_dl input error (e.g. a missing or
    mismatched ``model.init_weights`` file) prints one ``error: ...`` line and exits
    with code 2.
    """
    defaults = {"default_config_files": [str(base_config)] if base_config is not None and Path(base_config).is_file() else []}
    # with subcommands (run=True) each subcommand's parser reads the base; without, the main one
    parser_kwargs: dict[str, Any] = {"parser_mode": "yaml"}
    parser_kwargs.update({sub: defaults for sub in LightningCLI.subcommands()} if run else defaults)
    try:
        cli = PetLightningCLI(
            ReconModule,
            PETDataModule,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            parser_kwargs=parser_kwargs,
        )
    except PetDLError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if run:
        release_process_group()
    return cli


def release_process_group() -> None:
    """Wait for every rank, then destroy the default process group, if one is up.

    A DDP rank that exits with its process group still alive can abort in the
    communication library's teardown after training has finished (seen with gloo as
    "terminate called without an active exception"), turning a finished run into a
    non-zero exit; PyTorch asks for ``destroy_process_group`` before exit.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
