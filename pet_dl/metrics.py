"""Image-quality metrics for PET reconstructions (framework-free functions on tensors).

Definitions are stated in ``docs/metrics.md``. Images are ``(nx, ny, nz)`` or
``(B, nx, ny, nz)`` tensors in Bq/mL (or SUV); per-image results come back as a scalar
tensor or a ``(B,)`` tensor. ``reference`` is the truth (or the full-dose image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

F18_HALF_LIFE_S = 6586.2
#: Radius of a 1 mL sphere, mm (SUVpeak).
PEAK_SPHERE_RADIUS_MM = (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0) * 10.0
#: Inner diameters of the NEMA NU-2 IEC body phantom spheres, mm.
NEMA_SPHERE_DIAMETERS_MM: tuple[float, ...] = (10.0, 13.0, 17.0, 22.0, 28.0, 37.0)


def _pair(x: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Checks shapes; returns both as ``(B, nx, ny, nz)`` float64 and whether batched."""
    for name, t in (("image", x), ("reference", reference)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim not in (3, 4):
            raise ValueError(f"{name} must be (nx, ny, nz) or (B, nx, ny, nz), got {tuple(t.shape)}")
    if x.shape != reference.shape:
        raise ValueError(f"image shape {tuple(x.shape)} != reference shape {tuple(reference.shape)}")
    batched = x.ndim == 4
    if not batched:
        x, reference = x[None], reference[None]
    return x.detach().double(), reference.detach().to(x.device).double(), batched


def _out(values: torch.Tensor, batched: bool) -> torch.Tensor:
    return values if batched else values[0]


def _mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``mask`` broadcast to ``like`` (``(B, nx, ny, nz)``) as bool; all-true when None."""
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    if tuple(mask.shape[-3:]) != tuple(like.shape[-3:]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match image {tuple(like.shape[1:])}")
    m = mask.to(like.device).bool().expand_as(like)
    if not bool(m.flatten(1).any(dim=1).all()):
        raise ValueError("mask is empty")
    return m


def _data_range(reference: torch.Tensor, data_range: float | None) -> list[float]:
    if data_range is not None:
        if not data_range > 0:
            raise ValueError(f"data_range must be > 0, got {data_range}")
        return [float(data_range)] * reference.shape[0]
    ranges = [float(r.max()) for r in reference]
    if min(ranges) <= 0:
        raise ValueError("reference maximum is <= 0: give data_range explicitly")
    return ranges


def psnr(image: torch.Tensor, reference: torch.Tensor, data_range: float | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio, dB (MONAI's ``PSNRMetric``).

    ``PSNR = 20 log10(data_range) - 10 log10(mean((image - reference)^2))``, over all
    voxels; ``data_range`` defaults to ``max(reference)`` of each image.

    Args:
        image: ``(nx, ny, nz)`` or ``(B, nx, ny, nz)``.
        reference: same shape and units.
        data_range: peak value (same units); default ``reference.max()`` per image.

    Returns:
        Scalar or ``(B,)`` float64 tensor, dB.
    """
    from monai.metrics import PSNRMetric

    x, ref, batched = _pair(image, reference)
    values = [
        PSNRMetric(max_val=r, reduction="none")(xi[None, None], ri[None, None]).reshape(())
        for xi, ri, r in zip(x, ref, _data_range(ref, data_range))
    ]
    return _out(torch.stack(values), batched)


def ssim(
    image: torch.Tensor, reference: torch.Tensor, data_range: float | None = None, win_size: int = 11
) -> torch.Tensor:
    """Structural similarity (MONAI's ``SSIMMetric``, Gaussian window, sigma 1.5).

    A 2D image (``nz == 1``) or a stack with fewer than ``win_size`` slices is scored
    slice by slice in 2D and averaged over slices; otherwise in 3D. ``data_range``
    defaults to ``max(reference)`` of each image.

    Args:
        image: ``(nx, ny, nz)`` or ``(B, nx, ny, nz)``; ``nx, ny >= win_size``.
        reference: same shape and units.
        data_range: the dynamic range for the SSIM constants; default ``reference.max()``.
        win_size: window size in voxels (odd).

    Returns:
        Scalar or ``(B,)`` float64 tensor in [-1, 1].
    """
    from monai.metrics import SSIMMetric

    x, ref, batched = _pair(image, reference)
    nx, ny, nz = x.shape[1:]
    if min(nx, ny) < win_size:
        raise ValueError(f"SSIM needs nx, ny >= win_size={win_size}, got {(nx, ny)}")
    values = []
    for xi, ri, r in zip(x, ref, _data_range(ref, data_range)):
        if nz >= win_size:
            metric = SSIMMetric(spatial_dims=3, data_range=r, win_size=win_size, reduction="none")
            values.append(metric(xi[None, None], ri[None, None]).reshape(()))
        else:
            metric = SSIMMetric(spatial_dims=2, data_range=r, win_size=win_size, reduction="none")
            slices_x = xi.permute(2, 0, 1)[:, None]  # (nz, 1, nx, ny)
            slices_r = ri.permute(2, 0, 1)[:, None]
            values.append(metric(slices_x, slices_r).mean())
    return _out(torch.stack(values), batched)


def nrmse(
    image: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L2-normalised RMSE: ``||image - reference||_2 / ||reference||_2`` (within ``mask``).

    Args:
        image: ``(nx, ny, nz)`` or ``(B, nx, ny, nz)``.
        reference: same shape and units.
        mask: optional ``(nx, ny, nz)`` bool region; default the whole image.

    Returns:
        Scalar or ``(B,)`` float64 tensor, dimensionless (0.1 = 10 %).
    """
    x, ref, batched = _pair(image, reference)
    m = _mask(mask, x).double()
    err = (((x - ref) * m) ** 2).flatten(1).sum(1).sqrt()
    norm = ((ref * m) ** 2).flatten(1).sum(1).sqrt()
    if bool((norm == 0).any()):
        raise ValueError("reference is zero in the region: NRMSE is undefined")
    return _out(err / norm, batched)


def poisson_deviance(expected: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean Poisson deviance per bin of measured ``counts`` against ``expected`` counts.

    ``2 (ybar - y + y ln(y / ybar))`` averaged over the bins of each scan (the ``y ln y``
    term is 0 where ``y = 0``): how well an image explains the data, about 1 per bin when
    ``expected`` is the truth and the counts are many, less for images fitted to the noise
    (ML-EM), more for images the data contradict.

    Args:
        expected: expected counts ``(B, *sino)`` (a forward projection, randoms and scatter
            included), > 0 where ``counts`` > 0.
        counts: measured counts, same shape.

    Returns:
        ``(B,)`` float64, dimensionless.
    """
    if expected.shape != counts.shape:
        raise ValueError(f"expected {tuple(expected.shape)} and counts {tuple(counts.shape)} differ")
    ybar = expected.double().clamp_min(1e-12)
    y = counts.double()
    log_term = torch.where(y > 0, y * torch.log(y.clamp_min(1e-12) / ybar), torch.zeros_like(y))
    return (2.0 * (ybar - y + log_term)).flatten(1).mean(1)


def nrmse_range(
    image: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Range-normalised RMSE (Ultra-Low-Dose PET challenge): ``RMSE / (max(ref) - min(ref))``.

    RMSE and the range of the reference are both taken within ``mask`` (default: the
    whole image).

    Args:
        image: ``(nx, ny, nz)`` or ``(B, nx, ny, nz)``.
        reference: same shape and units.
        mask: optional ``(nx, ny, nz)`` bool region.

    Returns:
        Scalar or ``(B,)`` float64 tensor, dimensionless.
    """
    x, ref, batched = _pair(image, reference)
    m = _mask(mask, x)
    values = []
    for xi, ri, mi in zip(x, ref, m):
        rmse = ((xi[mi] - ri[mi]) ** 2).mean().sqrt()
        span = ri[mi].max() - ri[mi].min()
        if float(span) <= 0:
            raise ValueError("reference is constant in the region: range-normalised RMSE is undefined")
        values.append(rmse / span)
    return _out(torch.stack(values), batched)


def suv_factor(
    injected_activity_bq: float,
    patient_weight_kg: float,
    decay_time_s: float = 0.0,
    half_life_s: float = F18_HALF_LIFE_S,
) -> float:
    """Factor from Bq/mL to SUVbw (g/mL): ``weight_g / (A_inj * 2^(-t / T_half))``.

    Args:
        injected_activity_bq: injected activity at injection time, Bq (> 0).
        patient_weight_kg: body weight, kg (> 0).
        decay_time_s: time from injection to the reference time of the image, s (>= 0);
            0 when the image is decay-corrected to the injection time.
        half_life_s: radionuclide half-life, s (F-18 by default).

    Returns:
        SUV per Bq/mL, in g/mL per Bq/mL (multiply an image in Bq/mL by it).
    """
    if not injected_activity_bq > 0 or not patient_weight_kg > 0:
        raise ValueError(
            f"injected activity and weight must be > 0, got {injected_activity_bq} Bq, "
            f"{patient_weight_kg} kg"
        )
    if decay_time_s < 0 or not half_life_s > 0:
        raise ValueError(f"decay time must be >= 0 and half-life > 0, got {decay_time_s}, {half_life_s}")
    decayed = injected_activity_bq * 2.0 ** (-decay_time_s / half_life_s)
    return patient_weight_kg * 1000.0 / decayed


def to_suv(
    image_bqml: torch.Tensor,
    injected_activity_bq: float,
    patient_weight_kg: float,
    decay_time_s: float = 0.0,
    half_life_s: float = F18_HALF_LIFE_S,
) -> torch.Tensor:
    """An activity image (Bq/mL) in SUVbw (g/mL); arguments as in :func:`suv_factor`."""
    return image_bqml * suv_factor(injected_activity_bq, patient_weight_kg, decay_time_s, half_life_s)


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
        image: ``(nx, ny, nz)``.
        radius_mm: ball radius, mm.
        voxel_size_mm: voxel size, mm.

    Returns:
        ``(nx, ny, nz)`` float64, same units as ``image``.
    """
    kernel = _ball_kernel(radius_mm, voxel_size_mm, image.shape[2]).to(image.device)
    pad = [s // 2 for s in kernel.shape]
    x = image.double()[None, None]
    ones = torch.ones_like(x)
    total = F.conv3d(x, kernel[None, None], padding=pad)
    count = F.conv3d(ones, kernel[None, None], padding=pad)
    return (total / count)[0, 0]


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


@dataclass(frozen=True)
class NemaSphereResult:
    """NEMA NU-2 image-quality values for one hot sphere (fractions, not %)."""

    label: int
    diameter_mm: float
    contrast_recovery: float
    background_variability: float


def _disk(shape2d: tuple[int, int], centre: tuple[int, int], radius_mm: float, voxel: Sequence[float]) -> torch.Tensor:
    ix = (torch.arange(shape2d[0], dtype=torch.float64) - centre[0]) * voxel[0]
    iy = (torch.arange(shape2d[1], dtype=torch.float64) - centre[1]) * voxel[1]
    return (ix[:, None] ** 2 + iy[None, :] ** 2) <= radius_mm**2 + 1e-9


def background_roi_centres(
    background: torch.Tensor, slice_index: int, radius_mm: float, voxel_size_mm: Sequence[float], count: int = 12
) -> list[tuple[int, int]]:
    """Centres of up to ``count`` well-spread disks of ``radius_mm`` inside ``background``.

    Candidates are voxels of slice ``slice_index`` whose disk lies wholly in the background;
    the centres are then picked by farthest-point sampling (deterministic).
    """
    plane = background[:, :, slice_index].double()
    half = [int(radius_mm // v) for v in voxel_size_mm[:2]]
    kernel = _disk((2 * half[0] + 1, 2 * half[1] + 1), (half[0], half[1]), radius_mm, voxel_size_mm).double()
    inside = F.conv2d(plane[None, None], kernel[None, None], padding=half)[0, 0]
    candidates = torch.nonzero(inside >= kernel.sum() - 0.5).double()
    if len(candidates) == 0:
        return []
    scale = torch.tensor(voxel_size_mm[:2], dtype=torch.float64)
    pos = candidates * scale
    centroid = pos.mean(0)
    chosen = [int(torch.argmax(((pos - centroid) ** 2).sum(1)))]
    dist = ((pos - pos[chosen[0]]) ** 2).sum(1)
    while len(chosen) < min(count, len(candidates)):
        nxt = int(torch.argmax(dist))
        if float(dist[nxt]) == 0:
            break
        chosen.append(nxt)
        dist = torch.minimum(dist, ((pos - pos[nxt]) ** 2).sum(1))
    return [(int(candidates[i, 0]), int(candidates[i, 1])) for i in chosen]


def nema_regions(phantom: Any) -> tuple[torch.Tensor, torch.Tensor, float, dict[int, float]]:
    """Sphere labels, background mask, activity ratio and diameters of a NEMA phantom.

    Args:
        phantom: a :class:`pet_dl.phantoms.Phantom` from ``nema_phantom`` (``labels``,
            ``tissue``, ``tissues["background"]``, ``lesions``).

    Returns:
        ``(sphere_labels (nx, ny, nz) int, background (nx, ny, nz) bool, activity_ratio,
        {label: diameter_mm})``, ready for :func:`nema_image_quality`.
    """
    if "background" not in phantom.tissues or not phantom.lesions:
        raise ValueError("phantom has no background tissue or no spheres: not a NEMA phantom")
    background = (phantom.tissue == phantom.tissues["background"]) & (phantom.labels == 0)
    ratio = float(phantom.lesions[0].contrast)
    diameters = {int(lesion.label): float(lesion.diameter_mm) for lesion in phantom.lesions}
    return phantom.labels, background, ratio, diameters


def nema_image_quality(
    image: torch.Tensor,
    sphere_labels: torch.Tensor,
    background: torch.Tensor,
    voxel_size_mm: Sequence[float],
    activity_ratio: float = 4.0,
    sphere_diameters_mm: dict[int, float] | None = None,
    num_background_rois: int = 12,
    margin_mm: float = 15.0,
) -> list[NemaSphereResult]:
    """NEMA NU-2 contrast recovery and background variability of hot spheres.

    For hot sphere ``j``: ``CR_j = (C_H,j / C_B,j - 1) / (activity_ratio - 1)`` and
    ``BV_j = SD_j / C_B,j``. ``C_H,j`` is the mean over the sphere's voxels on its central
    slice (the slice where it is largest). Background ROIs are disks of the sphere's
    diameter at ``num_background_rois`` well-spread positions inside ``background`` (at
    least ``margin_mm`` from its edge where possible) on the
    central slice of the spheres and, in 3D, on the slices 10 and 20 mm above and below;
    ``C_B,j`` is their mean and ``SD_j`` the sample standard deviation of their means.

    Args:
        image: ``(nx, ny, nz)`` reconstruction of the IEC phantom, Bq/mL.
        sphere_labels: ``(nx, ny, nz)`` int, 0 = none, ``k`` = hot sphere ``k``.
        background: ``(nx, ny, nz)`` bool, the warm background compartment (no spheres,
            no lung insert).
        voxel_size_mm: voxel size, mm.
        activity_ratio: true sphere-to-background activity ratio (NEMA: 4).
        sphere_diameters_mm: diameter of each label, mm; default: from the label's
            volume (equivalent sphere, or disk in a single-slice image).
        num_background_rois: background ROIs per slice (NEMA: 12).
        margin_mm: least distance from a background ROI of the largest sphere's size to
            the edge of ``background`` (NEMA: 15 mm); halved, then 0, when fewer than
            ``num_background_rois`` positions fit.

    Returns:
        One :class:`NemaSphereResult` per sphere label, increasing label order.
    """
    if image.ndim != 3 or sphere_labels.shape != image.shape or background.shape != image.shape:
        raise ValueError("image, sphere_labels and background must all be (nx, ny, nz) of one shape")
    if not activity_ratio > 1:
        raise ValueError(f"activity_ratio must be > 1, got {activity_ratio}")
    x = image.detach().double()
    background = background.bool().cpu()
    sphere_labels = sphere_labels.cpu()
    x = x.cpu()
    labels = sorted(int(v) for v in torch.unique(sphere_labels) if int(v) != 0)
    if not labels:
        raise ValueError("sphere_labels has no sphere (all zero)")
    nz = image.shape[2]
    areas = torch.stack([(sphere_labels == k).sum(dim=(0, 1)) for k in labels]).sum(0)
    centre_slice = int(torch.argmax(areas))
    slices = [centre_slice]
    for off_mm in (-20.0, -10.0, 10.0, 20.0):
        s = centre_slice + round(off_mm / voxel_size_mm[2])
        if nz > 1 and 0 <= s < nz and s not in slices:
            slices.append(s)
    diameters = {}
    for k in labels:
        n = float((sphere_labels == k).sum())
        if sphere_diameters_mm and k in sphere_diameters_mm:
            diameters[k] = float(sphere_diameters_mm[k])
        elif nz == 1:
            diameters[k] = 2 * math.sqrt(n * voxel_size_mm[0] * voxel_size_mm[1] / math.pi)
        else:
            diameters[k] = 2 * (3 * n * math.prod(voxel_size_mm) / (4 * math.pi)) ** (1 / 3)
    largest = max(diameters.values()) / 2
    centres: list[tuple[int, int]] = []
    for margin in (margin_mm, margin_mm / 2, 0.0):  # NEMA's 15 mm, less if it cannot fit
        centres = background_roi_centres(
            background, centre_slice, largest + margin, voxel_size_mm, num_background_rois
        )
        if len(centres) >= num_background_rois:
            break
    if len(centres) < 2:
        raise ValueError("the background is too small for NEMA background ROIs of the largest sphere")
    results = []
    for k in labels:
        m = sphere_labels == k
        sl = int(torch.argmax(m.sum(dim=(0, 1))))
        hot = float(x[:, :, sl][m[:, :, sl]].mean())
        radius = diameters[k] / 2
        roi_means = []
        for s in slices:
            for c in centres:
                disk = _disk(tuple(x.shape[:2]), c, radius, voxel_size_mm)
                if bool((background[:, :, s] | ~disk).all()):
                    roi_means.append(x[:, :, s][disk].mean())
        means = torch.stack(roi_means)
        c_b = float(means.mean())
        if c_b <= 0:
            raise ValueError("background mean is <= 0: cannot compute contrast recovery")
        results.append(
            NemaSphereResult(
                label=k,
                diameter_mm=diameters[k],
                contrast_recovery=(hot / c_b - 1.0) / (activity_ratio - 1.0),
                background_variability=float(means.std(unbiased=True)) / c_b,
            )
        )
    return results
