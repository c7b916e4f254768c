"""Image metrics: PSNR, SSIM, NRMSE (L2- and range-normalised), Poisson deviance, SUV.

Images are ``(nx, ny, nz)`` or ``(B, nx, ny, nz)`` tensors in Bq/mL (or SUV); per-image
results come back as a scalar tensor or a ``(B,)`` tensor. ``reference`` is the truth
(or the full-dose image). Definitions: ``docs/metrics.md``.
"""

from __future__ import annotations

import torch

F18_HALF_LIFE_S = 6586.2


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
