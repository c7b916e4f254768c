"""Metrics for PET reconstructions (framework-free functions on tensors), by topic.

- :mod:`pet_dl.metrics.image`: PSNR, SSIM, NRMSE (L2- and range-normalised), Poisson
  deviance of counts against expected counts, SUV conversion.
- :mod:`pet_dl.metrics.lesions`: SUVmean / SUVmax / SUVpeak bias of labelled lesions,
  false hot spots, local means over balls, mask dilation.
- :mod:`pet_dl.metrics.nema`: NEMA NU 2 contrast recovery and background variability.

Every public name is importable from ``pet_dl.metrics`` itself. Definitions are stated in
``docs/metrics.md``. Images are ``(nx, ny, nz)`` or ``(B, nx, ny, nz)`` tensors in Bq/mL
(or SUV); per-image results come back as a scalar tensor or a ``(B,)`` tensor.
``reference`` is the truth (or the full-dose image).
"""

from pet_dl.metrics.image import (
    F18_HALF_LIFE_S,
    nrmse,
    nrmse_range,
    poisson_deviance,
    psnr,
    ssim,
    suv_factor,
    to_suv,
)
from pet_dl.metrics.lesions import (
    PEAK_SPHERE_RADIUS_MM,
    LesionBias,
    dilate_mask,
    hot_spots,
    lesion_bias,
    local_mean,
)
from pet_dl.metrics.nema import (
    NEMA_SPHERE_DIAMETERS_MM,
    NemaSphereResult,
    background_roi_centres,
    nema_image_quality,
    nema_regions,
)

__all__ = [
    "F18_HALF_LIFE_S",
    "NEMA_SPHERE_DIAMETERS_MM",
    "PEAK_SPHERE_RADIUS_MM",
    "LesionBias",
    "NemaSphereResult",
    "background_roi_centres",
    "dilate_mask",
    "hot_spots",
    "lesion_bias",
    "local_mean",
    "nema_image_quality",
    "nema_regions",
    "nrmse",
    "nrmse_range",
    "poisson_deviance",
    "psnr",
    "ssim",
    "suv_factor",
    "to_suv",
]
