"""Lesion and hot-spot analysis: SUVmean / SUVmax / SUVpeak bias of labelled lesions, false hot spots.

Local means over balls (SUVpeak's 1 mL sphere, the hot spots' 4 mm ball) and mask
dilation are here too. Images are ``(nx, ny, nz)`` in Bq/mL (or SUV). Definitions:
``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

from pet_dl.metrics.image import _pair

#: Radius of a 1 mL sphere, mm (SUVpeak).
PEAK_SPHERE_RADIUS_MM = (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0) * 10.0


def _ball_kernel(radius_mm: float, voxel_size_mm: Sequence[float], depth: int) -> torch.Tensor:
    """A 0/1 ball of ``radius_mm`` on the voxel grid, cut to at most ``depth`` slices."""
    half = [int(radius_mm // v) for v in voxel_size_mm]
    half[2] = min(half[2], (depth - 1) // 2)
    axes = [torch.arange(-h, h + 1, dtype=torch.float64) * v for h, v in zip(half, voxel_size_mm)]
    gx, gy, gz = torch.meshgrid(*axes, indexing="ij")
    return ((gx**2 + gy**2 + gz**2) <= radius_mm**2 + 1e-9).double()


def local_mean(image: torch.Tensor, radius_mm: float, voxel_size_mm: Sequence[float]) -> torch.Tensor:
    """Mean of ``image`` in a ball of ``radius_mm`` around each voxel (inside the image).

    Args:
        image: ``(*batch, nx, ny, nz)``.
        radius_mm: ball radius, mm.
        voxel_size_mm: voxel size, mm.

    Returns:
        ``image``'s shape, float64, same units as ``image`` (differentiable).
    """
    kernel = _ball_kernel(radius_mm, voxel_size_mm, image.shape[-1]).to(image.device)
    pad = [s // 2 for s in kernel.shape]
    x = image.double().reshape(-1, 1, *image.shape[-3:])
    ones = torch.ones_like(x[:1])
    total = F.conv3d(x, kernel[None, None], padding=pad)
    count = F.conv3d(ones, kernel[None, None], padding=pad)
    return (total / count).reshape(image.shape)


def dilate_mask(mask: torch.Tensor, dilation: int, spatial_dims: int) -> torch.Tensor:
    """Binary dilation of ``mask > 0`` by a (2 ``dilation`` + 1)-voxel square / cube.

    Args:
        mask: ``(B, nx, ny, nz)`` labels or booleans (0 / False = background).
        dilation: radius in voxels (0: no dilation).
        spatial_dims: 2 (dilate in x, y only; ``nz`` is 1) or 3.

    Returns:
        ``(B, nx, ny, nz)`` bool.
    """
    if mask.dim() != 4:
        raise ValueError(f"mask must be (B, nx, ny, nz), got shape {tuple(mask.shape)}")
    if dilation < 0:
        raise ValueError(f"dilation must be >= 0 voxels, got {dilation}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    m = mask > 0
    if dilation == 0:
        return m
    k = 2 * dilation + 1
    f = m.float()
    if spatial_dims == 2:
        # (B, nx, ny, nz) -> (B * nz, 1, nx, ny)
        b, nx, ny, nz = f.shape
        g = f.permute(0, 3, 1, 2).reshape(b * nz, 1, nx, ny)
        g = F.max_pool2d(g, k, stride=1, padding=dilation)
        return g.reshape(b, nz, nx, ny).permute(0, 2, 3, 1) > 0
    return F.max_pool3d(f[:, None], k, stride=1, padding=dilation)[:, 0] > 0


def hot_spots(
    image: torch.Tensor,
    reference: torch.Tensor,
    voxel_size_mm: Sequence[float],
    exclude: torch.Tensor | None = None,
    radius_mm: float = 4.0,
    threshold: float = 0.5,
    min_reference: float = 0.1,
) -> torch.Tensor:
    """Lesion-like hot spots of ``image`` that ``reference`` does not have (false positives).

    The relative excess ``e = local_mean(image) / local_mean(reference) - 1`` is taken over
    balls of ``radius_mm`` (4 mm: the smallest lesion that ``evaluate`` counts, 8 mm); a hot
    spot is a local maximum of ``e`` (over the 3 x 3 (x 3) neighbourhood) with
    ``e > threshold``, outside ``exclude`` and where ``local_mean(reference)`` is at least
    ``min_reference`` of its maximum (inside the object). For false positives, pass as
    ``reference`` the true activity blurred by the scanner's resolution and as ``exclude``
    the true lesions, dilated.

    Args:
        image: ``(nx, ny, nz)`` activity.
        reference: ``(nx, ny, nz)``, same units.
        voxel_size_mm: voxel size, mm.
        exclude: ``(nx, ny, nz)`` bool or labels (non-zero: not counted), or None.
        radius_mm: averaging ball radius, mm.
        threshold: relative excess that counts (0.5 = 50 % above the reference).
        min_reference: fraction of the reference's maximum local mean below which voxels
            are not counted.

    Returns:
        ``(nx, ny, nz)`` bool, True at each hot spot (``.sum()`` counts them).
    """
    if image.shape != reference.shape or image.dim() != 3:
        raise ValueError(
            f"image and reference must be (nx, ny, nz) of one shape, got {tuple(image.shape)} "
            f"and {tuple(reference.shape)}"
        )
    ref = local_mean(reference, radius_mm, voxel_size_mm)
    inside = ref >= min_reference * float(ref.max())
    excess = torch.where(inside, local_mean(image, radius_mm, voxel_size_mm) / ref.clamp_min(1e-30) - 1.0,
                         torch.zeros_like(ref))
    depth = 3 if excess.shape[2] >= 3 else 1
    pooled = F.max_pool3d(excess[None, None], (3, 3, depth), stride=1, padding=(1, 1, depth // 2))[0, 0]
    peaks = (excess >= pooled) & (excess > threshold) & inside
    if exclude is not None:
        peaks &= exclude.to(peaks.device) == 0
    return peaks


@dataclass(frozen=True)
class LesionBias:
    """Lesion uptake in an image and in the reference, and the relative biases.

    Values are in the units of the inputs (Bq/mL, or SUV when a factor is given);
    biases are relative, ``(image - reference) / reference`` (0.05 = +5 %).
    """

    label: int
    volume_ml: float
    mean: float
    max: float
    peak: float
    reference_mean: float
    reference_max: float
    reference_peak: float

    @property
    def mean_bias(self) -> float:
        return (self.mean - self.reference_mean) / self.reference_mean

    @property
    def max_bias(self) -> float:
        return (self.max - self.reference_max) / self.reference_max

    @property
    def peak_bias(self) -> float:
        return (self.peak - self.reference_peak) / self.reference_peak


def lesion_bias(
    image: torch.Tensor,
    reference: torch.Tensor,
    labels: torch.Tensor,
    voxel_size_mm: Sequence[float],
    suv_scale: float = 1.0,
) -> list[LesionBias]:
    """SUVmean / SUVmax / SUVpeak of each labelled lesion in ``image`` and ``reference``.

    SUVmean is the mean over the lesion's voxels, SUVmax the largest voxel value in it,
    SUVpeak the largest mean within a 1 mL sphere (radius 6.20 mm; in a single-slice
    image, the disk where that sphere cuts the slice) centred on a lesion voxel.

    Args:
        image: ``(nx, ny, nz)`` reconstruction, Bq/mL.
        reference: ``(nx, ny, nz)`` truth or full-dose image, Bq/mL.
        labels: ``(nx, ny, nz)`` int, 0 = background, lesion ``k`` = voxels equal to ``k``.
        voxel_size_mm: voxel size, mm.
        suv_scale: factor from Bq/mL to SUV (:func:`suv_factor`); 1 keeps Bq/mL. The
            relative biases do not depend on it.

    Returns:
        One :class:`LesionBias` per label, in increasing label order.
    """
    x, ref, batched = _pair(image, reference)
    if batched:
        raise ValueError("lesion_bias takes one image (nx, ny, nz), not a batch")
    x, ref = x[0] * suv_scale, ref[0] * suv_scale
    if tuple(labels.shape) != tuple(x.shape):
        raise ValueError(f"labels shape {tuple(labels.shape)} != image shape {tuple(x.shape)}")
    if torch.is_floating_point(labels):
        raise TypeError("labels must be an integer tensor (0 = background)")
    labels = labels.to(x.device)
    voxel_ml = math.prod(voxel_size_mm) / 1000.0
    peak_x = local_mean(x, PEAK_SPHERE_RADIUS_MM, voxel_size_mm)
    peak_r = local_mean(ref, PEAK_SPHERE_RADIUS_MM, voxel_size_mm)
    results = []
    for k in sorted(int(v) for v in torch.unique(labels) if int(v) != 0):
        m = labels == k
        results.append(
            LesionBias(
                label=k,
                volume_ml=float(m.sum()) * voxel_ml,
                mean=float(x[m].mean()),
                max=float(x[m].max()),
                peak=float(peak_x[m].max()),
                reference_mean=float(ref[m].mean()),
                reference_max=float(ref[m].max()),
                reference_peak=float(peak_r[m].max()),
            )
        )
    return results
