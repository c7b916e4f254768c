"""Collation: dataset items (dicts of tensors) -> a batch dict holding a :class:`ReconBatch`.

Batches stay plain dicts of tensors plus one :class:`BatchGeometry` (a plain object that
Lightning moves between devices untouched), so device transfer needs no custom hook.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, Sampler

from pet_dl.models import ReconBatch

SCAN_KEYS = ("prompts", "multiplicative", "additive", "calibration", "dose_fraction")


class BatchGeometry:
    """Sinogram layout, image grid and PSF shared by every item of a dataset.

    Args:
        sinogram: :class:`pet_dl.geometry.SinogramGeometry` (or ``None`` with a projector).
        image: :class:`pet_dl.geometry.ImageGeometry`.
        psf_fwhm_mm: image-space resolution model FWHM, mm.
        projector: optional explicit projector (tests, custom system matrices).
    """

    def __init__(
        self, sinogram: Any, image: Any, psf_fwhm_mm: float = 0.0, projector: nn.Module | None = None
    ) -> None:
        self.sinogram = sinogram
        self.image = image
        self.psf_fwhm_mm = float(psf_fwhm_mm)
        self.projector = projector

    def metadata(self) -> dict[str, Any]:
        """JSON-able description (for checkpoints)."""
        meta: dict[str, Any] = {"psf_fwhm_mm": self.psf_fwhm_mm}
        if self.sinogram is not None and hasattr(self.sinogram, "to_dict"):
            meta["sinogram"] = self.sinogram.to_dict()
        if hasattr(self.image, "to_dict"):
            meta["image"] = self.image.to_dict()
        return meta


class Collate:
    """Stack dataset items into ``{"geometry", "target", "lesion_mask", "initial", *scan keys}``.

    Items of :class:`pet_dl.datasets.GridGroups` carry ``grid_group``: the batch's geometry
    is then ``others[g - 1]`` for group ``g >= 1`` (group 0: ``geometry``), and a batch
    must hold one grid (:class:`GridBatchSampler`).

    Picklable, so it works with worker processes and ``ddp_spawn``.
    """

    def __init__(self, geometry: BatchGeometry, others: Sequence[BatchGeometry] = ()) -> None:
        self.geometry = geometry
        self.others = list(others)

    def __call__(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
        if not items:
            raise ValueError("cannot collate an empty list of items")
        geometry = self.geometry
        if "grid_group" in items[0]:
            groups = {int(item["grid_group"]) for item in items}
            if len(groups) != 1:
                raise ValueError(f"a batch mixes grid groups {sorted(groups)}: use GridBatchSampler")
            g = groups.pop()
            geometry = self.geometry if g == 0 else self.others[g - 1]
        out: dict[str, Any] = {"geometry": geometry}
        for key in items[0]:
            if key != "grid_group":
                out[key] = torch.stack([torch.as_tensor(item[key]) for item in items])
        return out


class GridBatchSampler(BatchSampler):
    """Batches of one grid each, from a dataset on several (:class:`pet_dl.datasets.GridGroups`).

    The sampler's indices (shuffled for training) go into one bucket per grid; a bucket
    that holds its grid's batch size is a batch. So the grids interleave in the sampler's
    order, in proportion to their items, and a wide grid can have a smaller batch.

    Under DDP Lightning rebuilds it with a ``DistributedSampler`` as ``sampler`` (a
    ``BatchSampler`` subclass with a ``sampler`` argument); every rank must then step the
    same number of times though its share of each grid differs. So the count is fixed:
    ``len(self)`` batches, from the rank's expected share of each grid, less one per grid
    when the sampler is a share; a rank that runs out early yields its part-filled
    buckets, then repeats its last batch.

    Args:
        sampler: the item indices (``RandomSampler`` / ``SequentialSampler`` / a DDP share).
        batch_size: the batch size of grid 0 (the model's own).
        drop_last: drop the part-filled buckets at the end (training).
        group_of: every dataset item's grid group.
        group_batch_sizes: the batch size per grid group (default: ``batch_size`` for all).
    """

    def __init__(
        self, sampler: Sampler[int] | Iterable[int], batch_size: int, drop_last: bool,
        group_of: Sequence[int], group_batch_sizes: Sequence[int] | None = None,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.group_of = list(group_of)
        groups = max(self.group_of) + 1 if self.group_of else 1
        sizes = list(group_batch_sizes) if group_batch_sizes is not None else [batch_size] * groups
        if len(sizes) < groups or min(sizes) < 1:
            raise ValueError(f"need a batch size >= 1 for each of {groups} grid groups, got {sizes}")
        self.group_batch_sizes = sizes[:groups]
        self.group_counts = [self.group_of.count(g) for g in range(groups)]

    def __len__(self) -> int:
        counts = self.group_counts
        share = len(self.sampler) / max(len(self.group_of), 1)  # type: ignore[arg-type]
        if share >= 1.0:  # every item: full batches, and the part-filled ones unless drop_last
            return sum(n // b if self.drop_last else -(-n // b) for n, b in zip(counts, self.group_batch_sizes))
        # a DDP share: its grids' counts vary around the expected ones
        expected = sum(int(n * share) // b for n, b in zip(counts, self.group_batch_sizes))
        return max(expected - len(self.group_batch_sizes), 0)

    def __iter__(self) -> Iterator[list[int]]:
        wanted = len(self)
        buckets: list[list[int]] = [[] for _ in self.group_batch_sizes]
        made = 0
        last: list[int] | None = None
        for i in self.sampler:
            g = self.group_of[int(i)]
            buckets[g].append(int(i))
            if len(buckets[g]) == self.group_batch_sizes[g]:
                if made == wanted:
                    return
                last, buckets[g] = buckets[g], []
                made += 1
                yield last
        for bucket in buckets:  # part-filled buckets: the end of a validation pass, or a short share
            if bucket and made < wanted:
                last = bucket
                made += 1
                yield bucket
        while last is not None and made < wanted:
            made += 1
            yield last


def to_recon_batch(batch: dict[str, Any]) -> ReconBatch:
    """The :class:`ReconBatch` of a collated batch (uses its ``initial`` image when present)."""
    geometry: BatchGeometry = batch["geometry"]
    missing = [k for k in SCAN_KEYS if k not in batch]
    if missing:
        raise KeyError(f"batch lacks {missing}")
    return ReconBatch(
        prompts=batch["prompts"].float(),
        multiplicative=batch["multiplicative"].float(),
        additive=batch["additive"].float(),
        calibration=batch["calibration"].float(),
        dose_fraction=batch["dose_fraction"].float(),
        sinogram=geometry.sinogram,
        image=geometry.image,
        psf_fwhm_mm=geometry.psf_fwhm_mm,
        initial=batch["initial"].float() if "initial" in batch else None,
        projector=geometry.projector,
    )
