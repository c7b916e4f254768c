"""Image-space post-filter for reconstructed images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from pet_dl.forward_model import fwhm_per_axis

if TYPE_CHECKING:
    from pet_dl.geometry import ImageGeometry

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def gaussian_postfilter(
    x: torch.Tensor, image: ImageGeometry, fwhm_mm: float | Sequence[float]
) -> torch.Tensor:
    """Separable Gaussian filter with the FWHM given in mm (MONAI's Gaussian kernels).

    The kernel is MONAI's ``gaussian_1d`` (erf-integrated over each voxel, truncated at 4
    sigma, normalised to sum 1), so the total activity of an object away from the image
    edge is kept; outside the image counts as 0. An axis of one voxel (the z axis of a
    2D image) or with FWHM 0 is not filtered.

    Args:
        x: image ``(*batch, nx, ny, nz)`` (any units; Bq/mL for reconstructions).
        image: the image grid (for the voxel size in mm).
        fwhm_mm: FWHM in mm, one value or one per axis; 0 returns ``x`` unchanged.

    Returns:
        The filtered image, same shape, dtype and units as ``x``.
    """
    fwhm = fwhm_per_axis(fwhm_mm)
    if x.ndim < 3 or tuple(x.shape[-3:]) != tuple(image.shape):
        raise ValueError(
            f"image tensor shape {tuple(x.shape)} does not end with the grid shape {tuple(image.shape)}"
        )
    axes = [
        k for k in range(3) if fwhm[k] > 0 and image.shape[k] > 1
    ]
    if not axes:
        return x
    batch = x.shape[:-3]
    flat = x.reshape((-1, 1, *x.shape[-3:]))
    out = flat
    for k in axes:  # axis by axis, zero padding (MONAI's separable_filtering, same order)
        sigma = fwhm[k] / FWHM_PER_SIGMA / image.voxel_size_mm[k]
        kernel = gaussian_erf_kernel(sigma).to(dtype=x.dtype, device=x.device)
        shape = [1, 1, 1, 1, 1]
        shape[k + 2] = -1
        padding = [0, 0, 0]
        padding[k] = (kernel.numel() - 1) // 2
        out = F.conv3d(out, kernel.reshape(shape), padding=tuple(padding))
    return out.reshape((*batch, *x.shape[-3:]))


def gaussian_erf_kernel(sigma_voxels: float, truncated: float = 4.0) -> torch.Tensor:
    """MONAI's ``gaussian_1d(sigma, truncated, approx="erf", normalize=True)`` (float32), without
    importing MONAI (1.5 s): the Gaussian integrated over each voxel, ``2 tail + 1`` taps
    with ``tail = int(max(sigma * truncated, 0.5) + 0.5)``, normalised to sum 1."""
    sigma = torch.tensor(float(sigma_voxels), dtype=torch.float32)
    tail = int(max(float(sigma) * truncated, 0.5) + 0.5)
    t = torch.arange(-tail, tail + 1, dtype=torch.float32)
    scale = 0.70710678 / sigma.abs()
    out = (0.5 * ((scale * (t + 0.5)).erf() - (scale * (t - 0.5)).erf())).clamp(min=0)
    return out / out.sum()
