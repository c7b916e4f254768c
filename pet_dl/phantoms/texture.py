"""Fine-scale uptake texture: a multiplicative random field on a phantom's activity.

Real tracer uptake is not flat inside an organ: at the scale of a few millimetres it varies
by 10-30 % (tissue structure, vessels, partial volumes), and real PET images used as
activity carry that texture. Phantoms built from tissue labels (BrainWeb, the torsos) are
flat inside each tissue up to a smooth field of tens of millimetres, so a network trained
on them learns that every fine-scale variation is noise and smooths real texture away.
:func:`add_texture` multiplies the activity by ``1 + amplitude * field``, where ``field``
is white noise blurred by a Gaussian of a drawn correlation length and scaled to unit
standard deviation over the grid; the factor is clipped to :data:`GAIN_RANGE`, so the
activity stays non-negative and zero stays zero. Optionally the textured activity is then
blurred by a Gaussian of a drawn FWHM (soft edges: real uptake changes over millimetres,
and a real PET image used as the activity has the scanner's resolution), so that a
network does not learn that every edge is a step. mu, labels and tissues are unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from pet_dl.forward_model import GaussianResolution, gaussian_kernel_1d
from pet_dl.phantoms.base import Phantom, uniform

GAIN_RANGE = (0.3, 2.0)


def texture_field(
    shape: tuple[int, int, int],
    voxel_size_mm: tuple[float, float, float],
    correlation_mm: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """A zero-mean, unit-standard-deviation random field on a grid, ``(nx, ny, nz)`` float64.

    White Gaussian noise blurred separably by a Gaussian of standard deviation
    ``correlation_mm`` along each axis (an axis of one voxel is left as it is), then
    centred and scaled over the grid.

    Args:
        shape: ``(nx, ny, nz)`` voxels.
        voxel_size_mm: voxel size per axis, mm.
        correlation_mm: standard deviation of the Gaussian, mm (> 0).
        generator: seeded torch generator (one ``randn`` draw of the grid's size).
    """
    if correlation_mm <= 0:
        raise ValueError(f"correlation_mm must be > 0, got {correlation_mm}")
    field = torch.randn(shape, generator=generator, dtype=torch.float64)
    field = _reflected_blur(field, voxel_size_mm, correlation_mm)
    field = field - field.mean()
    return field / field.std().clamp_min(1e-12)


def _reflected_blur(
    volume: torch.Tensor, voxel_size_mm: tuple[float, float, float], sigma_mm: float
) -> torch.Tensor:
    """``volume`` ``(nx, ny, nz)`` blurred separably by a Gaussian of ``sigma_mm`` along each
    axis of more than one voxel, reflected at the borders (a field, unlike an object, does
    not stop at the grid's edge); same shape and dtype."""
    out = volume
    for axis, (n, v) in enumerate(zip(volume.shape, voxel_size_mm)):
        if n == 1:
            continue
        kernel = gaussian_kernel_1d(sigma_mm / float(v), max_radius=n - 1).to(volume.dtype)
        moved = out.movedim(axis, -1)
        flat = moved.reshape(-1, 1, n)
        pad = (kernel.numel() - 1) // 2
        flat = F.conv1d(F.pad(flat, (pad, pad), mode="reflect" if pad < n else "replicate"),
                        kernel.view(1, 1, -1))
        out = flat.reshape(moved.shape).movedim(-1, axis)
    return out


def add_texture(
    phantom: Phantom,
    generator: torch.Generator,
    amplitude_range: tuple[float, float] = (0.0, 0.3),
    correlation_mm_range: tuple[float, float] = (1.5, 6.0),
    blur_fwhm_mm_range: tuple[float, float] = (0.0, 0.0),
) -> Phantom:
    """``phantom`` with a fine-scale multiplicative texture on its activity.

    Draws (in this order, from ``generator``) the amplitude (uniform in
    ``amplitude_range``), the correlation length (uniform in ``correlation_mm_range``) and
    the field (:func:`texture_field`); the activity becomes ``activity * clip(1 + amplitude
    * field, *GAIN_RANGE)``. Then, if ``blur_fwhm_mm_range`` is not ``(0, 0)``, a FWHM
    uniform in it is drawn and the activity blurred by that Gaussian
    (:class:`~pet_dl.forward_model.GaussianResolution`, zero padding: the total activity of
    an object inside the grid is kept). The drawn values go to ``extra``
    (``texture_amplitude``, ``texture_correlation_mm``, ``texture_blur_fwhm_mm``).

    Args:
        phantom: any phantom; not modified.
        generator: seeded torch generator.
        amplitude_range: relative standard deviation of the field before clipping, in [0, 1].
        correlation_mm_range: the Gaussian's standard deviation, mm, > 0.
        blur_fwhm_mm_range: FWHM of the blur of the textured activity, mm, >= 0.

    Returns:
        a new phantom: activity ``(nx, ny, nz)`` float32 Bq/mL, everything else as ``phantom``.
    """
    lo, hi = (float(a) for a in amplitude_range)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"texture amplitude must be [low, high] within [0, 1], got {amplitude_range}")
    clo, chi = (float(c) for c in correlation_mm_range)
    if not 0.0 < clo <= chi:
        raise ValueError(f"texture correlation_mm must be [low, high] with 0 < low <= high, got {correlation_mm_range}")
    blo, bhi = (float(b) for b in blur_fwhm_mm_range)
    if not 0.0 <= blo <= bhi:
        raise ValueError(f"texture blur_fwhm_mm must be [low, high] with 0 <= low <= high, got {blur_fwhm_mm_range}")
    amplitude = uniform(generator, lo, hi)
    correlation = uniform(generator, clo, chi)
    shape = tuple(int(n) for n in phantom.activity.shape)
    voxel = tuple(float(v) for v in phantom.image.voxel_size_mm)
    field = texture_field(shape, voxel, correlation, generator)  # type: ignore[arg-type]
    gain = (1.0 + amplitude * field).clamp(*GAIN_RANGE)
    activity = phantom.activity.to(torch.float64) * gain
    extra = dict(phantom.extra, texture_amplitude=amplitude, texture_correlation_mm=correlation)
    if bhi > 0:
        fwhm = uniform(generator, blo, bhi)
        activity = GaussianResolution(phantom.image, fwhm)(activity).clamp_min(0)
        extra["texture_blur_fwhm_mm"] = fwhm
    activity = activity.to(torch.float32)
    return replace(phantom, activity=activity, extra=extra)
