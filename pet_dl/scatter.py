"""Single-scatter simulation (SSS) of PET data and tail fitting.

The model (Watson, IEEE NSS 2000; Ollinger, Phys Med Biol 41:153, 1996): the scatter in
the bin of detectors ``A`` and ``B`` is a sum over scatter points ``S`` (voxels of a
coarse mu-map, volume ``V``)::

    s_AB = sum_S V mu_S / sigma_tot(511) * dsigma_KN/dOmega(theta)
           * a_A cos_A a_B cos_B / (4 pi R_AS^2 R_BS^2)
           * [ eps(511) eps(E') exp(-M_AS - r M_SB) L_AS
             + eps(E') eps(511) exp(-r M_AS - M_SB) L_SB ]

with ``theta`` the scattering angle at ``S`` of the path ``A -> S -> B``, ``E' = 511 /
(2 - cos theta)`` keV, ``M`` and ``L`` the mu and activity line integrals from ``S`` to a
detector, ``r = mu(E') / mu(511)`` (the Klein-Nishina total cross-sections' ratio),
``a cos`` a detector's area seen from ``S`` (crystal face x cosine of the incidence
angle) and ``eps`` the energy window's efficiency for a Gaussian energy resolution.
The first term is the annihilation on the ``A`` side whose other photon scatters at
``S`` towards ``B``.

The result is in relative units; :func:`fit_tails` scales it to measured data on the bins
whose LORs miss the object (attenuation factor close to 1), where prompts - randoms is
scatter only.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from pet_dl.geometry import ImageGeometry, SinogramGeometry

ELECTRON_REST_KEV = 511.0


def klein_nishina_total(alpha: torch.Tensor) -> torch.Tensor:
    """Klein-Nishina total cross-section per electron, in units of ``2 pi r_e^2``, for
    photon energies ``alpha = E / 511 keV``."""
    a = alpha
    log = torch.log1p(2 * a)
    return (1 + a) / a**2 * (2 * (1 + a) / (1 + 2 * a) - log / a) + log / (2 * a) - (
        1 + 3 * a
    ) / (1 + 2 * a) ** 2


def klein_nishina_511(cos_theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a 511 keV photon scattered by ``theta``: the differential cross-section over
    the total one (1/sr) and the energy ratio ``E'/511 = 1 / (2 - cos theta)``."""
    p = 1.0 / (2.0 - cos_theta)
    sin2 = 1.0 - cos_theta**2
    dsigma = 0.5 * p**2 * (p + 1.0 / p - sin2)  # in units of r_e^2 per sr
    total = 2 * math.pi * klein_nishina_total(torch.tensor(1.0, dtype=cos_theta.dtype))
    return dsigma / total, p


def window_efficiency(
    energy_kev: torch.Tensor, window_kev: tuple[float, float], resolution: float
) -> torch.Tensor:
    """Probability that a photon of ``energy_kev`` is recorded in the window, for a
    Gaussian energy response of FWHM ``resolution x 511 keV x sqrt(E / 511)``."""
    sigma = resolution * ELECTRON_REST_KEV * torch.sqrt(energy_kev / ELECTRON_REST_KEV) / 2.3548
    lo, hi = window_kev
    z = math.sqrt(2.0)
    return 0.5 * (torch.erf((hi - energy_kev) / (z * sigma)) - torch.erf((lo - energy_kev) / (z * sigma)))


def _downsample(
    volume: torch.Tensor, image: ImageGeometry, spacing_mm: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Scatter points: block centres (n, 3) mm, the blocks' mean value, block volume mm^3.

    Blocks of about ``spacing_mm`` are laid symmetrically about the grid's centre (the
    volume is zero-padded equally on both sides), so a block's mean x its volume is the
    integral of ``volume`` over it."""
    factors, pads = [], []
    for v, n in zip(image.voxel_size_mm, image.shape, strict=True):
        f = max(1, round(spacing_mm / v)) if n > 1 else 1
        nb = -(-n // f)
        if n % 2 and f > 1:  # an odd axis gets an odd number of odd blocks: pads split evenly
            f += 1 - f % 2
            nb = -(-n // f)
            nb += 1 - nb % 2
        total = nb * f - n
        factors.append(f)
        pads.append((total // 2, total - total // 2))
    padded = F.pad(volume.double(), (*pads[2], *pads[1], *pads[0]))
    pooled = F.avg_pool3d(padded[None, None], kernel_size=factors, stride=factors)[0, 0]
    idx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in pooled.shape], indexing="ij"), -1).double()
    vox = torch.tensor(image.voxel_size_mm, dtype=torch.float64)
    f = torch.tensor(factors, dtype=torch.float64)
    start = torch.tensor(image.origin_mm, dtype=torch.float64) - torch.tensor([p[0] for p in pads]) * vox
    centres = start + (idx * f + (f - 1) / 2) * vox
    return centres.reshape(-1, 3), pooled.reshape(-1), float(torch.prod(vox * f))


def _line_integrals(
    volumes: torch.Tensor, image: ImageGeometry, start: torch.Tensor, end: torch.Tensor, samples: int
) -> torch.Tensor:
    """Line integrals (mm x value) of each of ``volumes`` (C, nx, ny, nz) from ``start``
    to ``end`` (..., 3) mm, by ``samples`` midpoint samples (trilinear); (C, ...)."""
    shape = start.shape[:-1]
    start, end = start.reshape(-1, 3), end.reshape(-1, 3)
    t = (torch.arange(samples, dtype=torch.float64) + 0.5) / samples
    origin = torch.tensor(image.origin_mm, dtype=torch.float64)
    vox = torch.tensor(image.voxel_size_mm, dtype=torch.float64)
    n = torch.tensor(image.shape, dtype=torch.float64)
    vol = volumes.float().permute(0, 3, 2, 1)[None]  # (1, C, nz, ny, nx)
    out = []
    for k in range(0, start.shape[0], 4096):
        a, b = start[k : k + 4096], end[k : k + 4096]
        pts = a[:, None, :] + t[None, :, None] * (b - a)[:, None, :]  # (m, samples, 3)
        idx = (pts - origin) / vox
        grid = torch.where(n > 1, 2 * idx / (n - 1).clamp(min=1) - 1, torch.zeros_like(idx))
        vals = F.grid_sample(vol, grid[None, :, :, None, :].float(),
                             mode="bilinear", padding_mode="zeros", align_corners=True)
        # vals: (1, C, m, samples, 1)
        step = (b - a).norm(dim=-1) / samples
        out.append(vals[0, :, :, :, 0].double().sum(-1) * step)
    return torch.cat(out, dim=1).reshape(volumes.shape[0], *shape)


def single_scatter(
    activity: torch.Tensor,
    mu_per_mm: torch.Tensor,
    image: ImageGeometry,
    sinogram: SinogramGeometry,
    window_kev: tuple[float, float] = (430.0, 610.0),
    energy_resolution: float = 0.15,
    scatter_spacing_mm: float = 20.0,
    mu_threshold_per_mm: float = 0.001,
    samples: int = 96,
) -> torch.Tensor:
    """Single-scatter estimate for every bin of ``sinogram`` (relative units).

    Args:
        activity: ``image.shape`` (any units: the result scales with it).
        mu_per_mm: ``image.shape``, 1/mm at 511 keV.
        image: their grid.
        sinogram: non-arc-corrected, non-TOF; each bin uses its representative crystal
            pair (:meth:`SinogramGeometry.crystal_pairs`).
        window_kev, energy_resolution: the energy window and the FWHM resolution at
            511 keV (fraction).
        scatter_spacing_mm: scatter points on a grid of about this spacing.
        mu_threshold_per_mm: scatter points need at least this mean mu.
        samples: samples per line integral.

    Returns:
        float32 ``sinogram.shape`` (non-TOF).
    """
    if sinogram.arc_corrected:
        raise ValueError("single_scatter needs a non-arc-corrected sinogram (crystal pairs)")
    scanner = sinogram.scanner
    centres, mu_s, dv = _downsample(mu_per_mm, image, scatter_spacing_mm)
    keep = mu_s > mu_threshold_per_mm
    centres, mu_s = centres[keep], mu_s[keep]
    if centres.shape[0] == 0:
        return torch.zeros(sinogram.shape[:3])
    rings, crystals = sinogram.crystal_pairs()  # (P, V, R, 2)
    det_index = rings * scanner.crystals_per_ring + crystals
    used, inverse = torch.unique(det_index.reshape(-1), return_inverse=True)
    positions = scanner.crystal_positions().reshape(-1, 3)[used]  # (D, 3)
    # line integrals from every scatter point to every detector used
    s = centres[:, None, :].expand(-1, positions.shape[0], -1)
    d = positions[None, :, :].expand(centres.shape[0], -1, -1)
    vols = torch.stack((mu_per_mm.double(), activity.double()))
    mu_line, act_line = _line_integrals(vols, image, s, d, samples)  # (S, D)
    vec = d - s
    dist = vec.norm(dim=-1)
    unit = vec / dist[..., None]
    radial = positions[:, :2] / positions[:, :2].norm(dim=-1, keepdim=True)
    cos_inc = (unit[..., :2] * radial[None]).sum(-1).abs()
    area = scanner.crystal_size_mm[0] * scanner.crystal_size_mm[1]
    seen = area * cos_inc / dist**2  # (S, D)
    eps511 = float(window_efficiency(torch.tensor(511.0), window_kev, energy_resolution))
    bins_a = inverse.reshape(det_index.shape)[..., 0].reshape(-1)
    bins_b = inverse.reshape(det_index.shape)[..., 1].reshape(-1)
    total = torch.zeros(bins_a.numel(), dtype=torch.float64)
    weight = mu_s * dv  # (S,)
    kn_total_511 = klein_nishina_total(torch.tensor(1.0, dtype=torch.float64))
    for k in range(0, bins_a.numel(), 8192):
        a, b = bins_a[k : k + 8192], bins_b[k : k + 8192]
        cos_theta = -(unit[:, a] * unit[:, b]).sum(-1)  # (S, m): -(u_SA . u_SB)
        kn, p = klein_nishina_511(cos_theta)
        energy = ELECTRON_REST_KEV * p
        eps_scattered = window_efficiency(energy, window_kev, energy_resolution)
        r = klein_nishina_total(p) / kn_total_511
        ma, mb = mu_line[:, a], mu_line[:, b]
        term = eps511 * eps_scattered * (
            torch.exp(-ma - r * mb) * act_line[:, a] + torch.exp(-r * ma - mb) * act_line[:, b]
        )
        value = weight[:, None] * kn * seen[:, a] * seen[:, b] / (4 * math.pi) * term
        total[k : k + 8192] = value.sum(0)
    return total.reshape(sinogram.shape[:3]).float()


def fit_tails(
    scatter: torch.Tensor,
    prompts: torch.Tensor,
    randoms: torch.Tensor,
    attenuation: torch.Tensor,
    threshold: float = 0.95,
) -> float:
    """Scale of ``scatter`` that fits ``prompts - randoms`` on the tails: bins whose
    attenuation factor is above ``threshold`` (LORs that miss the object), by least
    squares. Returns 0 when the tails hold no scatter estimate."""
    tails = attenuation > threshold
    s = scatter[tails].double()
    y = (prompts - randoms)[tails].double()
    denom = float((s * s).sum())
    return max(float((s * y).sum()) / denom, 0.0) if denom > 0 else 0.0
