"""Training: LightningModule, DataModule, collation, export, the LightningCLI.

See ``docs/training.md``.
"""

from pet_dl.training.batching import BatchGeometry, Collate, to_recon_batch
from pet_dl.training.datamodule import PETDataModule
from pet_dl.training.module import ReconModule

_EXPORTS = ("ExportCallback", "export_lightning_checkpoint", "export_module")


def __getattr__(name: str) -> object:
    # Lazy, so that ``python -m pet_dl.training.export`` does not import itself twice.
    if name in _EXPORTS:
        from pet_dl.training import export

        return getattr(export, name)
    raise AttributeError(f"module 'pet_dl.training' has no attribute {name!r}")


__all__ = [
    "BatchGeometry",
    "Collate",
    "ExportCallback",
    "PETDataModule",
    "ReconModule",
    "export_lightning_checkpoint",
    "export_module",
    "to_recon_batch",
]
