"""Data corrections for measured scans: randoms from delayed coincidences, mu-maps on the
image grid and attenuation factors (incl. 2D rebinned data).

Randoms (``randoms_from_delayeds``): the delayed window measures the randoms rate of
every LOR, ``R_ij = 2 tau s_i s_j`` with ``s`` the singles rates, but a short frame has
about 0 or 1 delayed per LOR. The delayeds' fan sums (per detector, :attr:`
pet_dl.io.listmode.ListmodeHistogram.delayed_singles`) are well measured: the singles-like
``q`` that solve ``q_i sum_{j in fan(i)} q_j = F_i`` (fan: the detectors in coincidence
with ``i``) give the smooth estimate ``q_i q_j`` per LOR, whose total equals the number of
delayeds (the standard crystal-singles / fan-sum randoms estimate).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from pet_dl.geometry import ImageGeometry, SinogramGeometry
from pet_dl.io.listmode import PetlinkLayout, sum_over_lors


def fan_matrices(layout: PetlinkLayout) -> tuple[np.ndarray, np.ndarray]:
    """Which detectors are in coincidence: ring band ``W`` float64 ``(rings, rings)``
    (1 where ``|ra - rb| <= max_ring_difference``) and crystal coverage ``M`` float64
    ``(crystals, crystals)`` (1 where the crystal pair is one of the recorded radial bins)."""
    rings = np.arange(layout.num_rings)
    w = (np.abs(rings[:, None] - rings[None, :]) <= layout.max_ring_difference).astype(float)
    n_det = 2 * layout.num_views
    u = np.arange(layout.num_views)
    k = np.arange(layout.num_projections) - layout.num_projections // 2
    ca = (u[:, None] + np.floor_divide(k, 2)) % n_det
    cb = (u[:, None] + n_det // 2 - np.floor_divide(k + 1, 2)) % n_det
    m = np.zeros((n_det, n_det))
    m[ca, cb] = 1.0
    m[cb, ca] = 1.0
    return w, m


def singles_from_fan_sums(
    fan_sums: np.ndarray, layout: PetlinkLayout, iterations: int = 100, tol: float = 1e-7
) -> np.ndarray:
    """Solve ``q_i (W q M)_i = F_i`` for the singles-like ``q`` (see the module docstring).

    Args:
        fan_sums: float ``(num_rings, crystals)`` delayed counts per detector ``F``.
        layout: which detector pairs are recorded (:func:`fan_matrices`).
        iterations, tol: damped fixed-point iterations, stopped at relative change ``tol``.

    Returns:
        float64 ``(num_rings, crystals)``, >= 0 (0 where ``F`` is 0, e.g. gap crystals).
    """
    f = np.asarray(fan_sums, dtype=np.float64)
    if f.shape != (layout.num_rings, 2 * layout.num_views):
        raise ValueError(f"fan_sums must be {(layout.num_rings, 2 * layout.num_views)}, got {f.shape}")
    if (f < 0).any() or not np.isfinite(f).all():
        raise ValueError("fan_sums must be finite and >= 0")
    total = f.sum()
    if total == 0:
        return np.zeros_like(f)
    w, m = fan_matrices(layout)
    q = f / math.sqrt(total)
    for _ in range(iterations):
        fan = w @ q @ m
        new = np.sqrt(q * np.divide(f, fan, out=np.zeros_like(f), where=fan > 0))
        change = np.abs(new - q).max() / max(q.max(), 1e-300)
        q = new
        if change < tol:
            break
    return q


def randoms_from_delayeds(
    fan_sums: np.ndarray,
    sinogram: SinogramGeometry,
    layout: PetlinkLayout | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Smooth expected randoms per bin of ``sinogram`` from the delayeds' fan sums.

    Args:
        fan_sums: delayed events per detector, ``(num_rings, crystals)`` (each delayed
            counted at both its detectors).
        sinogram: the target layout (as for :func:`pet_dl.io.listmode.histogram_listmode`).
        layout: vendor layout (default: the mMR's).

    Returns:
        float32 ``sinogram.shape``, counts in the frame; its sum is the number of
        delayeds in the bins the sinogram keeps (all of them for 344 radial bins).
    """
    layout = layout or PetlinkLayout()
    q = singles_from_fan_sums(fan_sums, layout)
    out = sum_over_lors(sinogram, layout, q, progress=progress, desc="randoms")
    return out.astype(np.float32)


# ------------------------------------------------------------------------ mu-maps
def mu_map_to_per_mm(mu: torch.Tensor, units: str = "auto") -> tuple[torch.Tensor, str]:
    """A 511 keV mu-map in 1/mm.

    Args:
        mu: the map in its file's units.
        units: ``"1/mm"``, ``"1/cm"`` or ``"auto"`` (1/cm when the 99th percentile of the
            positive voxels is above 0.04: water is 0.0096 /mm but 0.096 /cm).

    Returns:
        (mu in 1/mm, the units taken).
    """
    if units not in ("auto", "1/mm", "1/cm"):
        raise ValueError(f"mu-map units must be auto, 1/mm or 1/cm, got {units!r}")
    if not torch.isfinite(mu).all():
        raise ValueError("mu-map contains NaN or infinite values")
    if units == "auto":
        positive = mu[mu > 0]
        high = float(torch.quantile(positive.float()[:1_000_000], 0.99)) if positive.numel() else 0.0
        units = "1/cm" if high > 0.04 else "1/mm"
    out = mu / 10.0 if units == "1/cm" else mu
    return out.clamp(min=0.0).float(), units


def resample_image(
    image: torch.Tensor, source: ImageGeometry, target: ImageGeometry
) -> torch.Tensor:
    """Trilinear resampling of ``image`` (on ``source``) onto ``target``, world
    coordinates; zero outside the source.

    Args:
        image: float ``source.shape`` ``(nx, ny, nz)``.

    Returns:
        float32 ``target.shape``.
    """
    def axis(g: ImageGeometry, k: int) -> torch.Tensor:
        return g.origin_mm[k] + torch.arange(g.shape[k], dtype=torch.float64) * g.voxel_size_mm[k]

    norm = []
    for k in range(3):
        n = source.shape[k]
        pos = (axis(target, k) - source.origin_mm[k]) / source.voxel_size_mm[k]  # voxel index
        # align_corners=True: -1 is voxel 0's centre, +1 voxel n-1's; a one-voxel axis
        # (a single-slice map) applies at every position along it
        norm.append(2.0 * pos / (n - 1) - 1.0 if n > 1 else torch.zeros_like(pos))
    gx, gy, gz = torch.meshgrid(*norm, indexing="ij")
    grid = torch.stack((gx, gy, gz), dim=-1).float()
    # grid_sample: input (N, C, D, H, W) = (1, 1, nz, ny, nx); grid (..., 3) = (x, y, z)
    vol = image.float().permute(2, 1, 0)[None, None]  # (1, 1, nz, ny, nx)
    out = F.grid_sample(vol, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, 0].contiguous()


def rebinned_attenuation(
    mu_per_mm: torch.Tensor,
    mu_geometry: ImageGeometry,
    sinogram_2d: SinogramGeometry,
    image_2d: ImageGeometry,
    axial_fov_mm: float,
    num_slices: int = 32,
) -> torch.Tensor:
    """Attenuation factors of 2D-rebinned data: the mean over the axial field of view of
    the direct-plane factors ``exp(-P mu(z))``.

    Single-slice rebinning puts every ring pair's counts into one plane; at each axial
    position the counts are attenuated by that slice's mu, so the factor of the rebinned
    plane is the average of the slices' factors (exact when the activity is axially
    uniform; the ring pairs' obliqueness, at most 20 degrees on the mMR, is neglected).

    Args:
        mu_per_mm: ``mu_geometry.shape``, 1/mm.
        sinogram_2d: one-ring sinogram.
        image_2d: the 2D image grid (its transaxial grid is used).
        axial_fov_mm: extent averaged over, centred on z = 0, mm.
        num_slices: axial samples.

    Returns:
        float32 ``sinogram_2d.shape``, in (0, 1].
    """
    from pet_dl.forward_model import SinogramProjector, attenuation_with

    dz = axial_fov_mm / num_slices
    projector = SinogramProjector(sinogram_2d, image_2d)
    total = torch.zeros(sinogram_2d.shape)
    for i in range(num_slices):
        z = -axial_fov_mm / 2 + (i + 0.5) * dz
        slab = ImageGeometry(image_2d.shape, image_2d.voxel_size_mm,
                             (image_2d.origin_mm[0], image_2d.origin_mm[1], z))
        mu_z = resample_image(mu_per_mm, mu_geometry, slab)
        total += attenuation_with(projector, mu_z, sinogram_2d)
    return (total / num_slices).float()

