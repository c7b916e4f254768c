"""The LightningDataModule: shards from ``generate_dataset`` or simulation on the fly."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset

from pet_dl.training.batching import BatchGeometry, Collate


class PETDataModule(pl.LightningDataModule):
    """Paired low-dose scans and true activity for training and validation.

    Give ``data_dir`` (shards written by ``python -m pet_dl dataset``) or ``recipe``
    (a ``data/*.yaml`` path: phantoms are simulated on the fly).

    Args:
        data_dir: dataset folder with ``train/`` and ``val/`` shards, or a list of them
            read as one (same acquisition geometry; e.g. two phantom families).
        recipe: recipe path, used when ``data_dir`` is not given.
        batch_size: scans per batch (per process under DDP).
        num_workers: DataLoader worker processes.
        reduction_factors: keep only these dose reduction factors (default: all).
        train_phantoms, val_phantoms: on the fly only: phantoms per split (default: all).
    """

    def __init__(
        self,
        data_dir: str | list[str] | None = None,
        recipe: str | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        reduction_factors: list[float] | None = None,
        train_phantoms: int | None = None,
        val_phantoms: int | None = None,
    ) -> None:
        super().__init__()
        if (data_dir is None) == (recipe is None):
            raise ValueError("give exactly one of data.data_dir (shards) and data.recipe (on the fly)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters()
        self.datasets: dict[str, Dataset] = {}

    def _dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            hp = self.hparams
            if hp.data_dir is not None:
                from pet_dl.datasets import PairedScanDataset

                self.datasets[split] = PairedScanDataset(hp.data_dir, split, hp.reduction_factors)
            else:
                from pet_dl.datasets import OnTheFlyDataset

                n = hp.train_phantoms if split == "train" else hp.val_phantoms
                self.datasets[split] = OnTheFlyDataset(hp.recipe, split, n)
        return self.datasets[split]

    def geometry(self) -> BatchGeometry:
        """Sinogram layout, image grid and PSF of the training data."""
        ds = self._dataset("train")
        return BatchGeometry(ds.sinogram, ds.image, ds.psf_fwhm_mm)

    def metadata(self) -> dict[str, Any]:
        """Checkpoint metadata: geometry, reduction factors, initial-image settings.

        ``dataset`` names the training recipe, or the recipes joined by ``+`` when
        ``data_dir`` lists several folders.
        """
        ds = self._dataset("train")
        recipes = getattr(ds, "recipes", [ds.recipe])
        meta = self.geometry().metadata()
        meta.update(
            reduction_factors=list(self.hparams.reduction_factors or ds.reduction_factors),
            init_iterations=ds.init_iterations,
            init_subsets=ds.init_subsets,
            dataset="+".join(str(recipe.get("name", "")) for recipe in recipes),
        )
        return meta

    def setup(self, stage: str | None = None) -> None:
        self._dataset("train")
        self._dataset("val")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self._dataset(split),
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            collate_fn=Collate(self.geometry()),
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
