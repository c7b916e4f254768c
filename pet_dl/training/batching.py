"""Collation: dataset items (dicts of tensors) -> a batch dict holding a :class:`ReconBatch`.

Batches stay plain dicts of tensors plus one :class:`BatchGeometry` (a plain object that
Lightning moves between devices untouched), so device transfer needs no custom hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

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

    Picklable, so it works with worker processes and ``ddp_spawn``.
    """

    def __init__(self, geometry: BatchGeometry) -> None:
        self.geometry = geometry

    def __call__(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
        if not items:
            raise ValueError("cannot collate an empty list of items")
        out: dict[str, Any] = {"geometry": self.geometry}
        for key in items[0]:
            out[key] = torch.stack([torch.as_tensor(item[key]) for item in items])
        return out


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
