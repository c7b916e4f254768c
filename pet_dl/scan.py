"""The in-memory form of a scan file: measured data plus everything needed to reconstruct it.

A :class:`Scan` is what :mod:`pet_dl.simulate` produces, what :mod:`pet_dl.io.scanfile`
writes and reads, and what the reconstructions consume. Its forward model is

    ybar = calibration * multiplicative * P(G x) + additive

with ``x`` in Bq/mL, ``P`` the Joseph projector (line integrals in mm), ``G`` the
image-space resolution model and ``ybar`` expected counts per sinogram bin.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pet_dl.forward_model import PETForwardModel
    from pet_dl.geometry import ImageGeometry, SinogramGeometry

F18_HALF_LIFE_S = 6586.2


@dataclass
class AcquisitionMetadata:
    """Acquisition and patient facts that travel with a scan (and into DICOM).

    Times are ISO 8601 strings (``"2026-01-01T10:00:00"``); activities in Bq.
    """

    duration_s: float
    dose_fraction: float = 1.0
    injected_activity_bq: float = 370e6
    radionuclide: str = "F-18"
    half_life_s: float = F18_HALF_LIFE_S
    tracer: str = "FDG"
    patient_weight_kg: float | None = None
    patient_id: str = "ANON"
    patient_name: str = "Anonymous"
    injection_time: str = "2026-01-01T09:00:00"
    acquisition_start: str = "2026-01-01T10:00:00"
    phantom: str = ""
    seed: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class Scan:
    """One PET acquisition, ready for reconstruction.

    Attributes:
        sinogram: sinogram layout (scanner, segments, views, radial bins, TOF).
        image: the reconstruction grid (the input phantom's grid for simulated scans).
        prompts: measured counts, shape ``sinogram.shape``, float32 (integer valued).
        multiplicative: attenuation x normalisation factors, shape ``sinogram.shape``,
            dimensionless.
        additive: expected randoms + scatter counts in this scan, shape ``sinogram.shape``.
        calibration: expected counts per (Bq/mL x mm) of line integral for this scan
            (scanner sensitivity x duration x dose fraction).
        psf_fwhm_mm: FWHM of the image-space Gaussian resolution model, mm (0: none).
        metadata: acquisition and patient facts.
    """

    sinogram: SinogramGeometry
    image: ImageGeometry
    prompts: torch.Tensor
    multiplicative: torch.Tensor
    additive: torch.Tensor
    calibration: float
    psf_fwhm_mm: float
    metadata: AcquisitionMetadata

    def forward_model(self, device: torch.device | str | None = None) -> PETForwardModel:
        """The forward model of this scan (``ybar = c * m * P(G x) + a``), x in Bq/mL."""
        from pet_dl.forward_model import GaussianResolution, PETForwardModel, SinogramProjector

        projector = SinogramProjector(self.sinogram, self.image).to(device)
        resolution = (
            GaussianResolution(self.image, self.psf_fwhm_mm).to(device)
            if self.psf_fwhm_mm > 0
            else None
        )
        return PETForwardModel(
            projector,
            multiplicative=self.multiplicative.to(device),
            additive=self.additive.to(device),
            resolution=resolution,
            calibration=self.calibration,
        )

    def with_counts(
        self, prompts: torch.Tensor, fraction: float, metadata: AcquisitionMetadata
    ) -> Scan:
        """A copy with new prompts whose expected counts are ``fraction`` of this scan's."""
        return replace(
            self,
            prompts=prompts,
            additive=self.additive * fraction,
            calibration=self.calibration * fraction,
            metadata=metadata,
        )
