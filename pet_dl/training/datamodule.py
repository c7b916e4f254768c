"""The LightningDataModule: shards from ``generate_dataset`` or simulation on the fly."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from pet_dl.training.batching import BatchGeometry, Collate, GridBatchSampler


class PETDataModule(pl.LightningDataModule):
    """Paired low-dose scans and true activity for training and validation.

    Give ``data_dir`` (shards written by ``python -m pet_dl dataset``) or ``recipe``
    (a ``data/*.yaml`` path: phantoms are simulated on the fly).

    Args:
        data_dir: dataset folder with ``train/`` and ``val/`` shards, or a list of them
            read as one (e.g. two phantom families). Folders on another grid (whole
            bodies on the wide grid the product grows for them) are read in batches of
            their own grid (:class:`pet_dl.datasets.GridGroups`); the first folder's grid
            is the model's.
        recipe: recipe path, used when ``data_dir`` is not given.
        batch_size: scans per batch (per process under DDP).
        other_grid_batch_size: scans per batch on the grids other than the first folder's
            (a 224-voxel scan costs about 3.4 x a 96-voxel one: bench/train_grids.py); default ``batch_size``.
        num_workers: DataLoader worker processes.
        reduction_factors: keep only these dose reduction factors (default: all).
        train_phantoms, val_phantoms: on the fly only: phantoms per split (default: all).
    """

    def __init__(
        self,
        data_dir: str | list[str] | None = None,
        recipe: str | None = None,
        batch_size: int = 4,
        other_grid_batch_size: int | None = None,
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
        if other_grid_batch_size is not None and other_grid_batch_size < 1:
            raise ValueError(f"other_grid_batch_size must be >= 1, got {other_grid_batch_size}")
        self.save_hyperparameters()
        self.datasets: dict[str, Dataset] = {}

    def _dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            hp = self.hparams
            if hp.data_dir is not None:
                from pet_dl.datasets import open_paired_scans

                self.datasets[split] = open_paired_scans(hp.data_dir, split, hp.reduction_factors)
            else:
                from pet_dl.datasets import OnTheFlyDataset

                n = hp.train_phantoms if split == "train" else hp.val_phantoms
                self.datasets[split] = OnTheFlyDataset(hp.recipe, split, n)
        return self.datasets[split]

    def geometry(self) -> BatchGeometry:
        """Sinogram layout, image grid and PSF of the training data (the model's: the first folder's)."""
        ds = self._dataset("train")
        return BatchGeometry(ds.sinogram, ds.image, ds.psf_fwhm_mm)

    def other_geometries(self, split: str = "train") -> list[BatchGeometry]:
        """The geometries of the other grids' folders, in their group order (none: one grid)."""
        parts = getattr(self._dataset(split), "parts", [])[1:]
        return [BatchGeometry(part.sinogram, part.image, part.psf_fwhm_mm) for part in parts]

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
        dataset = self._dataset(split)
        group_of = getattr(dataset, "group_of", None)
        common = dict(
            num_workers=self.hparams.num_workers,
            collate_fn=Collate(self.geometry(), self.other_geometries(split)),
            persistent_workers=self.hparams.num_workers > 0,
        )
        if group_of is None:
            return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=shuffle, **common)
        batch_size = self.hparams.batch_size
        other = self.hparams.other_grid_batch_size or batch_size
        sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        batches = GridBatchSampler(sampler, batch_size, shuffle, group_of,
                                   [batch_size] + [other] * (max(group_of) if group_of else 0))
        return DataLoader(dataset, batch_sampler=batches, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
