"""Training: LightningModule, DataModule, collation, export, the LightningCLI.

See ``docs/training.md``.
"""

from pet_dl.training.batching import BatchGeometry, Collate, to_recon_batch
from pet_dl.training.datamodule import PETDataModule
from pet_dl.training.export import ExportCallback, export_lightning_checkpoint, export_module
from pet_dl.training.module import ReconModule

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
