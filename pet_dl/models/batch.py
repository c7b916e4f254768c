"""The input of every learned reconstruction: a batch of scans sharing one geometry.

A :class:`ReconBatch` carries measured data and the per-scan physics (attenuation x
normalisation, randoms + scatter, calibration), so that one set of network weights
serves any attenuation map and any count level. The forward model of scan ``b`` is

    ybar_b = calibration_b * multiplicative_b * P(G x_b) + additive_b

with ``x`` in Bq/mL (see :class:`pet_dl.forward_model.PETForwardModel`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from pet_dl.forward_model import PETForwardModel
    from pet_dl.geometry import ImageGeometry, SinogramGeometry


@lru_cache(maxsize=8)
def _cached_projector(sinogram: SinogramGeometry, image: ImageGeometry, device: str) -> nn.Module:
    """The Joseph sinogram projector for a geometry, built once per process and device."""
    from pet_dl.forward_model import SinogramProjector

    return SinogramProjector(sinogram, image).to(torch.device(device))


@dataclass
class ReconBatch:
    """A batch of ``B`` scans on one sinogram layout and one image grid.

    Attributes:
        prompts: measured counts, ``(B, *sino)``.
        multiplicative: attenuation x normalisation, ``(B, *sino)``, dimensionless.
        additive: expected randoms + scatter counts, ``(B, *sino)``.
        calibration: expected counts per (Bq/mL x mm) of line integral, ``(B,)``.
        dose_fraction: dose (or scan-time) fraction of each scan in (0, 1], ``(B,)``.
        sinogram: the sinogram layout shared by the batch.
        image: the reconstruction grid shared by the batch (``shape = (nx, ny, nz)``).
        psf_fwhm_mm: FWHM of the image-space resolution model, mm (0: none).
        initial: optional initial image ``(B, nx, ny, nz)`` in Bq/mL (e.g. OSEM/MLEM);
            models compute one with :func:`initial_image` when it is ``None``.
        projector: optional linear operator image ``(nx, ny, nz)`` -> sinogram ``(*sino)``
            used instead of the Joseph projector built from the geometry (tests, custom
            system matrices).
    """

    prompts: torch.Tensor
    multiplicative: torch.Tensor
    additive: torch.Tensor
    calibration: torch.Tensor
    dose_fraction: torch.Tensor
    sinogram: SinogramGeometry | None
    image: ImageGeometry
    psf_fwhm_mm: float = 0.0
    initial: torch.Tensor | None = None
    projector: nn.Module | None = None

    def __post_init__(self) -> None:
        b = self.prompts.shape[0] if self.prompts.dim() > 0 else 0
        for name in ("multiplicative", "additive"):
            t = getattr(self, name)
            if t.shape != self.prompts.shape:
                raise ValueError(
                    f"ReconBatch.{name} has shape {tuple(t.shape)}, prompts {tuple(self.prompts.shape)}"
                )
        for name in ("calibration", "dose_fraction"):
            t = getattr(self, name)
            if t.shape != (b,):
                raise ValueError(f"ReconBatch.{name} must have shape ({b},), got {tuple(t.shape)}")
        if bool((self.dose_fraction <= 0).any()) or bool((self.dose_fraction > 1).any()):
            raise ValueError("ReconBatch.dose_fraction must lie in (0, 1]")
        if self.initial is not None and tuple(self.initial.shape) != (b, *self.image.shape):
            raise ValueError(
                f"ReconBatch.initial must have shape {(b, *self.image.shape)}, "
                f"got {tuple(self.initial.shape)}"
            )
        if self.sinogram is None and self.projector is None:
            raise ValueError("ReconBatch needs a sinogram geometry or an explicit projector")

    @property
    def batch_size(self) -> int:
        """Number of scans ``B``."""
        return int(self.prompts.shape[0])

    @property
    def device(self) -> torch.device:
        """Device of the measured data."""
        return self.prompts.device

    def to(self, device: torch.device | str) -> ReconBatch:
        """A copy with every tensor on ``device``."""
        moved = {
            name: getattr(self, name).to(device)
            for name in ("prompts", "multiplicative", "additive", "calibration", "dose_fraction")
        }
        initial = None if self.initial is None else self.initial.to(device)
        projector = None if self.projector is None else self.projector.to(device)
        return replace(self, initial=initial, projector=projector, **moved)

    def forward_model(self) -> PETForwardModel:
        """The batched forward model ``x (B, nx, ny, nz) -> ybar (B, *sino)``, float32."""
        from pet_dl.forward_model import GaussianResolution, PETForwardModel

        device = self.device
        if self.projector is not None:
            projector = self.projector
        else:
            projector = _cached_projector(self.sinogram, self.image, str(device))
        resolution = None
        if self.psf_fwhm_mm > 0:
            resolution = GaussianResolution(self.image, self.psf_fwhm_mm).to(device)
        return PETForwardModel(
            projector,
            multiplicative=self.multiplicative.float(),
            additive=self.additive.float(),
            resolution=resolution,
            calibration=self.calibration.float(),
        )


@torch.no_grad()
def initial_image(
    model: PETForwardModel, prompts: torch.Tensor, num_iterations: int, num_subsets: int = 1
) -> torch.Tensor:
    """OSEM from a uniform image: the shared starting point of every learned model.

    The datasets store the same image (``initial``) so training and inference agree.

    Args:
        model: batched forward model (``x (B, nx, ny, nz) -> (B, *sino)``).
        prompts: measured counts ``(B, *sino)``.
        num_iterations: full OSEM iterations (0 gives the uniform, count-matched image).
        num_subsets: view subsets (1: MLEM).

    Returns:
        ``(B, nx, ny, nz)`` in Bq/mL, non-negative, zero where the sensitivity is zero.
    """
    from pet_dl.recon import osem

    return osem(model, prompts.float(), num_iterations, num_subsets)
