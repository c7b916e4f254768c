"""Simulated PET scans: expected counts, Poisson noise, binomial thinning, paired scans.

Expected counts per sinogram bin (see ``docs/forward-model.md``)::

    trues   = calibration * n * a * P(G x)        x: activity, Bq/mL
    scatter = smooth sinogram, sum = SF / (1 - SF) * sum(trues)
    randoms = n (flat up to crystal efficiencies), sum = RF / (1 - RF) * sum(trues + scatter)
    prompts ~ Poisson(trues + scatter + randoms)

with ``a = exp(-P mu)`` the attenuation, ``n`` the normalisation (crystal efficiency
products, zero for virtual gap crystals), ``SF`` the scatter fraction (NEMA:
scatter / (trues + scatter)) and ``RF`` the randoms fraction (randoms / prompts).
A low-dose or short scan is the binomial thinning of a full-dose realisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch.nn import functional as F

from pet_dl.errors import GeometryError, InvalidInputError, UnitsError
from pet_dl.forward_model import (
    FWHM_PER_SIGMA,
    GaussianResolution,
    SinogramProjector,
    attenuation_with,
    gaussian_kernel_1d,
)
from pet_dl.geometry import ImageGeometry, SinogramGeometry
from pet_dl.scan import AcquisitionMetadata, Scan

__all__ = [
    "MU_MAX_PER_MM",
    "ExpectedCounts",
    "calibration_per_second",
    "crystal_normalisation",
    "expected_counts",
    "simulate_pair",
    "simulate_scan",
    "thin_scan",
]

#: Largest accepted mu (1/mm). Cortical bone at 511 keV is about 0.017 /mm and water
#: 0.0096 /mm; a mu-map in 1/cm has water at 0.096, so anything above 0.05 is taken as
#: the wrong unit (titanium, about 0.05 /mm, is the densest common implant).
MU_MAX_PER_MM = 0.05
#: Values beyond these look like CT numbers (Hounsfield units: air -1000, bone +1000).
_HU_MIN, _HU_MAX = -1.0, 10.0
#: FWHM of the radial blur that makes the scatter sinogram smooth, mm.
SCATTER_RADIAL_FWHM_MM = 150.0
#: FWHM of the blur across views for the scatter sinogram, degrees.
SCATTER_VIEW_FWHM_DEG = 30.0
#: Default dose reduction factors (Ultra-Low-Dose PET challenge).
REDUCTION_FACTORS = (4, 10, 20, 50, 100)
#: Sinogram bins per block where a sinogram-sized temporary is formed a block at a time
#: (the normalisation's crystal pairs, the scatter smoothing, float64 sums): 1 M bins,
#: 4 to 16 MB per temporary.
_BLOCK_BINS = 1_000_000


# --------------------------------------------------------------------------- calibration
def _radial_spacing_mm(sinogram: SinogramGeometry) -> float:
    """Radial spacing of LORs near the axis, mm."""
    if sinogram.arc_corrected:
        return float(sinogram.radial_bin_mm)  # type: ignore[arg-type]
    # non-arc-corrected: offsets (R + doi) sin(pi k / N); spacing at the centre
    return sinogram.scanner.detector_radius_mm * math.sin(
        math.pi / sinogram.scanner.crystals_per_ring
    )


def calibration_per_second(
    sinogram: SinogramGeometry, sensitivity_cps_per_kbq: float | None = None
) -> float:
    """Expected counts per second per (Bq/mL x mm) of line integral, for one LOR bin.

    Chosen so that a source spread over the axial field of view gives the scanner's
    published sensitivity ``S`` (counts/s per Bq, no attenuation) summed over the
    sinogram. For each view, the line integrals of the radial bins (spacing ``d`` mm)
    sum to ``integral(x dA) / d``; over planes of polar angle ``theta_p`` covering an
    axial length ``L`` they sum to ``num_views * sum_p sec(theta_p) * integral(x dV) /
    (L d)``. With ``integral(x dV) = 1000 A`` (x in Bq/mL, A in Bq)::

        calibration = S * L * d / (1000 * num_views * sum_p sec(theta_p))

    A 2D scan (one ring, one direct plane) is a slab of thickness ``L`` = ring spacing
    that records the full 3D sensitivity of that slab, as after single-slice rebinning:
    ``S * ring_spacing * d / (1000 * num_views)``. A 3D span-1 sinogram with all ring
    differences has ``num_rings**2`` planes over ``L = num_rings * ring_spacing``, so
    each LOR gets about ``1 / num_rings`` of the 2D value. View mashing is included
    through ``num_views`` (a mashed bin sums its member views); TOF bins sum to the
    non-TOF value and need nothing more.

    Args:
        sinogram: the sinogram layout.
        sensitivity_cps_per_kbq: overrides the scanner's published sensitivity.

    Returns:
        Counts / s / (Bq/mL x mm).
    """
    scanner = sinogram.scanner
    s = (
        sensitivity_cps_per_kbq
        if sensitivity_cps_per_kbq is not None
        else scanner.sensitivity_cps_per_kbq
    )
    if s is None:
        raise InvalidInputError(
            f"scanner {scanner.name!r} has no published sensitivity; pass sensitivity_cps_per_kbq"
        )
    if not math.isfinite(s) or s <= 0:
        raise InvalidInputError(f"sensitivity_cps_per_kbq must be positive, got {s}")
    z_start, z_end = sinogram.plane_z()
    tan = (z_end - z_start) / (2.0 * scanner.detector_radius_mm)
    sec_sum = float(torch.sqrt(1.0 + tan**2).sum())
    length = scanner.num_rings * scanner.ring_spacing_mm
    d = _radial_spacing_mm(sinogram)
    return (s / 1000.0) * length * d / (1000.0 * sinogram.num_views * sec_sum)


# --------------------------------------------------------------------------- normalisation
def crystal_normalisation(
    sinogram: SinogramGeometry, sigma: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-bin detection efficiency from crystal efficiencies (non-TOF sinogram shape).

    Crystal efficiencies are log-normal ``exp(sigma z - sigma^2 / 2)`` (mean 1), virtual
    gap crystals have efficiency 0; a bin's factor is the product of its two crystals'
    efficiencies (its representative crystal pair, see
    :meth:`SinogramGeometry.crystal_pairs`), divided by the mean over bins, so the total
    counts keep matching the scanner's sensitivity.

    Args:
        sinogram: the layout (non-arc-corrected, unless sigma = 0 and there are no gaps).
        sigma: spread of the log efficiencies (0: all ones).
        generator: CPU generator for the efficiencies.

    Returns:
        float32 ``(num_planes, num_views, num_radial)``, mean 1.
    """
    if not math.isfinite(sigma) or sigma < 0:
        raise InvalidInputError(f"crystal_efficiency_sigma must be >= 0, got {sigma}")
    scanner = sinogram.scanner
    shape = sinogram.shape[:3]
    gaps = scanner.is_gap_crystal()
    if sigma == 0 and not bool(gaps.any()):
        return torch.ones(shape)
    if sinogram.arc_corrected:
        raise GeometryError(
            "crystal efficiencies and gaps need a non-arc-corrected sinogram (crystal pairs)"
        )
    eff = torch.ones(scanner.num_rings, scanner.crystals_per_ring, dtype=torch.float64)
    if sigma > 0:
        z = torch.randn(eff.shape, generator=generator, dtype=torch.float64)
        eff = torch.exp(sigma * z - 0.5 * sigma**2)
    eff[:, gaps] = 0.0
    # A block of views at a time: the whole sinogram's int64 crystal pairs and float64
    # products would be 40 bytes per bin (2.9 GB for the mMR span-11 sinogram). The
    # products are formed twice (their mean, then the result) to divide in float64.
    planes, views, radial = shape
    step = max(1, _BLOCK_BINS // (planes * radial))
    blocks = [torch.arange(v, min(v + step, views)) for v in range(0, views, step)]

    def product(block: torch.Tensor) -> torch.Tensor:
        rings, crystals = sinogram.crystal_pairs(block)
        return eff[rings[..., 0], crystals[..., 0]] * eff[rings[..., 1], crystals[..., 1]]

    mean = sum(float(product(b).sum()) for b in blocks) / (planes * views * radial)
    norm = torch.empty(shape)
    for b in blocks:
        norm[:, int(b[0]) : int(b[-1]) + 1] = product(b) / mean
    return norm


# --------------------------------------------------------------------------- validation
def _check_image(t: object, image: ImageGeometry, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(image.shape):
        raise GeometryError(
            f"{name} has shape {tuple(t.shape)}, the image grid is {tuple(image.shape)}"
        )
    if not t.is_floating_point():
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise InvalidInputError(f"{name} has non-finite values (NaN or inf)")
    return t


def check_activity(activity_bqml: torch.Tensor, image: ImageGeometry) -> torch.Tensor:
    """Validate an activity image (Bq/mL): shape, finite, non-negative."""
    x = _check_image(activity_bqml, image, "activity")
    if bool((x < 0).any()):
        raise InvalidInputError(f"activity has negative values (min {float(x.min()):.4g} Bq/mL)")
    return x


def check_mu(mu_per_mm: torch.Tensor, image: ImageGeometry) -> torch.Tensor:
    """Validate a mu-map in 1/mm; reject values typical of 1/cm or Hounsfield units."""
    mu = _check_image(mu_per_mm, image, "mu-map")
    lo, hi = float(mu.min()), float(mu.max())
    if lo < _HU_MIN or hi > _HU_MAX:
        raise UnitsError(
            f"mu-map values {lo:.4g} .. {hi:.4g} look like Hounsfield units; convert the CT to "
            "511 keV mu in 1/mm first (pet_dl.io.ct)"
        )
    if hi > MU_MAX_PER_MM:
        raise UnitsError(
            f"mu-map maximum {hi:.4g} exceeds {MU_MAX_PER_MM} /mm (water is 0.0096 /mm): it looks "
            "like 1/cm; divide by 10"
        )
    if lo < 0:
        raise InvalidInputError(f"mu-map has negative values (min {lo:.4g} /mm)")
    return mu


def _check_fraction(name: str, value: float, *, upper_open: bool) -> float:
    v = float(value)
    ok = math.isfinite(v) and (0.0 <= v < 1.0 if upper_open else 0.0 < v <= 1.0)
    if not ok:
        interval = "[0, 1)" if upper_open else "(0, 1]"
        raise InvalidInputError(f"{name} must be in {interval}, got {value}")
    return v


# --------------------------------------------------------------------------- expectation
@dataclass
class ExpectedCounts:
    """Noise-free components of a scan, each ``sinogram.shape``, counts.

    Attributes:
        trues, scatter, randoms: expected counts.
        attenuation: survival probabilities ``exp(-P mu)``.
        normalisation: detection efficiency per bin (mean 1).
        calibration: counts per (Bq/mL x mm) of this scan.
    """

    trues: torch.Tensor
    scatter: torch.Tensor
    randoms: torch.Tensor
    attenuation: torch.Tensor
    normalisation: torch.Tensor
    calibration: float

    @property
    def total(self) -> torch.Tensor:
        """Expected prompts, ``trues + scatter + randoms``."""
        return self.trues + self.scatter + self.randoms


def _smooth_sinogram(
    s: torch.Tensor, sinogram: SinogramGeometry, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Blur a non-TOF sinogram ``(P, V, R)`` radially (zero padding) and across views
    (periodic, with the radial flip at 180 degrees).

    Planes are blurred independently, a block of planes at a time, so the temporaries
    (padded copies, permutations) are block-sized; ``out`` may be ``s`` itself (in place).
    Returns ``out`` (a new tensor if None).
    """
    planes, views, radial = s.shape
    sigma_r = SCATTER_RADIAL_FWHM_MM / FWHM_PER_SIGMA / _radial_spacing_mm(sinogram)
    kr = gaussian_kernel_1d(sigma_r, max_radius=radial - 1).to(s.dtype)
    kv = None
    if views > 1:
        sigma_v = SCATTER_VIEW_FWHM_DEG / FWHM_PER_SIGMA / (180.0 / views)
        kv = gaussian_kernel_1d(sigma_v, max_radius=views - 1).to(s.dtype)
    if out is None:
        out = torch.empty_like(s)
    step = max(1, _BLOCK_BINS // (views * radial))
    for p in range(0, planes, step):
        out[p : p + step] = _smooth_planes(s[p : p + step], kr, kv)
    return out


def _smooth_planes(s: torch.Tensor, kr: torch.Tensor, kv: torch.Tensor | None) -> torch.Tensor:
    """:func:`_smooth_sinogram` of a block of planes ``(p, V, R)`` with its radial and
    view kernels (``kv`` None: one view, no blur across views)."""
    planes, views, radial = s.shape
    out = F.conv1d(s.reshape(-1, 1, radial), kr.reshape(1, 1, -1), padding=(kr.numel() - 1) // 2)
    out = out.reshape(planes, views, radial)
    if kv is not None:
        r = (kv.numel() - 1) // 2
        flipped = out.flip(-1)
        padded = torch.cat((flipped[:, views - r :], out, flipped[:, :r]), dim=1)
        del out, flipped
        padded = padded.permute(0, 2, 1).reshape(-1, 1, views + 2 * r)
        out = F.conv1d(padded, kv.reshape(1, 1, -1)).reshape(planes, radial, views).permute(0, 2, 1)
    return out


def expected_counts(
    activity_bqml: torch.Tensor,
    mu_per_mm: torch.Tensor,
    sinogram: SinogramGeometry,
    image: ImageGeometry,
    *,
    calibration: float,
    scatter_fraction: float = 0.3,
    randoms_fraction: float = 0.2,
    psf_fwhm_mm: float = 0.0,
    normalisation: torch.Tensor | None = None,
) -> ExpectedCounts:
    """Noise-free trues, scatter and randoms of a scan (see the module docstring).

    Args:
        activity_bqml: ``(nx, ny, nz)`` Bq/mL.
        mu_per_mm: ``(nx, ny, nz)`` 1/mm.
        sinogram, image: geometry.
        calibration: counts per (Bq/mL x mm) for this scan.
        scatter_fraction: scatter / (trues + scatter), in [0, 1).
        randoms_fraction: randoms / (trues + scatter + randoms), in [0, 1).
        psf_fwhm_mm: image-space resolution FWHM, mm (0: none).
        normalisation: ``(P, V, R)`` detection efficiencies (default ones).

    Returns:
        :class:`ExpectedCounts`, float32 tensors of ``sinogram.shape``.
    """
    x = check_activity(activity_bqml, image).float()
    mu = check_mu(mu_per_mm, image).float()
    sf = _check_fraction("scatter_fraction", scatter_fraction, upper_open=True)
    rf = _check_fraction("randoms_fraction", randoms_fraction, upper_open=True)
    if not math.isfinite(psf_fwhm_mm) or psf_fwhm_mm < 0:
        raise InvalidInputError(f"psf_fwhm_mm must be >= 0, got {psf_fwhm_mm}")
    try:
        image.check_fits(sinogram.scanner)
    except ValueError as e:
        raise GeometryError(str(e)) from None
    device = x.device
    base = sinogram.shape[:3]
    norm = torch.ones(base) if normalisation is None else normalisation.float()
    if tuple(norm.shape) != base:
        raise GeometryError(f"normalisation has shape {tuple(norm.shape)}, expected {base}")
    norm = norm.to(device)
    tof = sinogram.tof
    projector = SinogramProjector(sinogram, image).to(device)
    att = attenuation_with(projector, mu, replace(sinogram, tof=False))  # (P, V, R)
    blurred = GaussianResolution(image, psf_fwhm_mm).to(device)(x) if psf_fwhm_mm > 0 else x
    with torch.no_grad():
        line = projector(blurred)
    del blurred
    # The sinogram-sized terms are formed in place where the same products allow it (a
    # 3D mMR span-11 sinogram is 290 MB): at most five are held at once.
    trues = att * norm
    trues.mul_(calibration)
    if tof:
        plain = line.sum(-1).mul_(att)
        trues = line.mul_(trues.unsqueeze(-1))
    else:
        trues.mul_(line)
        plain = line.mul_(att)
    del line
    trues_sum = _sum64(trues)
    # scatter: smooth attenuated (un-normalised) trues, times the efficiencies
    scatter = _smooth_sinogram(plain, sinogram, out=plain).mul_(norm)
    del plain
    scatter = _scale_(scatter, sf / (1.0 - sf) * trues_sum)
    randoms = _scale_(norm.clone(), rf / (1.0 - rf) * (trues_sum + _sum64(scatter)))
    if tof:
        k = sinogram.num_tof_bins
        scatter = (scatter / k).unsqueeze(-1).expand(sinogram.shape).contiguous()
        randoms = (randoms / k).unsqueeze(-1).expand(sinogram.shape).contiguous()
        att = att.unsqueeze(-1).expand(sinogram.shape).contiguous()
        norm = norm.unsqueeze(-1).expand(sinogram.shape).contiguous()
    return ExpectedCounts(trues, scatter, randoms, att, norm, float(calibration))


def _sum64(t: torch.Tensor) -> float:
    """Sum of a tensor in float64, a block at a time (``t.sum(dtype=torch.float64)``
    makes a float64 copy of the whole tensor: 580 MB for a 3D mMR sinogram)."""
    return sum(float(b.sum(dtype=torch.float64)) for b in t.reshape(-1).split(_BLOCK_BINS))


def _scale_(shape: torch.Tensor, total: float) -> torch.Tensor:
    """``shape`` scaled in place to sum to ``total`` (zeros if either sum is not positive)."""
    s = _sum64(shape)
    if s <= 0 or total <= 0:
        return shape.zero_()
    return shape.mul_(total / s)


# --------------------------------------------------------------------------- scans
def simulate_scan(
    activity_bqml: torch.Tensor,
    mu_per_mm: torch.Tensor,
    sinogram: SinogramGeometry,
    image: ImageGeometry,
    *,
    duration_s: float,
    scatter_fraction: float = 0.3,
    randoms_fraction: float = 0.2,
    psf_fwhm_mm: float = 0.0,
    crystal_efficiency_sigma: float = 0.0,
    generator: torch.Generator | None = None,
    metadata: AcquisitionMetadata | None = None,
) -> Scan:
    """Simulate one scan: expected counts (see :func:`expected_counts`) + Poisson noise.

    Args:
        activity_bqml: activity at scan time, ``(nx, ny, nz)`` Bq/mL (decay ignored).
        mu_per_mm: 511 keV attenuation, ``(nx, ny, nz)`` 1/mm.
        sinogram, image: geometry; the image grid must fit the scanner.
        duration_s: scan duration, s.
        scatter_fraction: scatter / (trues + scatter), in [0, 1).
        randoms_fraction: randoms / prompts, in [0, 1).
        psf_fwhm_mm: image-space resolution FWHM, mm (0: none).
        crystal_efficiency_sigma: spread of random crystal efficiencies (0: uniform).
        generator: random source (on the activity's device); None: seeded with
            ``metadata.seed`` (or 0), so scans are always reproducible.
        metadata: acquisition facts; ``duration_s`` is set from the argument and
            ``dose_fraction`` (default 1) scales the counts.

    Returns:
        A :class:`Scan` with ``prompts`` (float32 counts), ``multiplicative`` =
        attenuation x normalisation, ``additive`` = expected scatter + randoms and
        ``calibration = calibration_per_second x duration_s x dose_fraction``.
    """
    duration_s = float(duration_s)
    if not math.isfinite(duration_s) or duration_s <= 0:
        raise InvalidInputError(f"duration_s must be positive, got {duration_s}")
    meta = metadata if metadata is not None else AcquisitionMetadata(duration_s=duration_s)
    meta = replace(meta, duration_s=duration_s)
    dose = _check_fraction("dose_fraction", meta.dose_fraction, upper_open=False)
    if generator is None:
        generator = torch.Generator().manual_seed(meta.seed if meta.seed is not None else 0)
    norm = crystal_normalisation(sinogram, crystal_efficiency_sigma, generator)
    calibration = calibration_per_second(sinogram) * duration_s * dose
    exp = expected_counts(
        activity_bqml,
        mu_per_mm,
        sinogram,
        image,
        calibration=calibration,
        scatter_fraction=scatter_fraction,
        randoms_fraction=randoms_fraction,
        psf_fwhm_mm=psf_fwhm_mm,
        normalisation=norm,
    )
    # exp.total, multiplicative and additive formed in place of the expected terms (none
    # of them is needed afterwards), then the Poisson draw: four sinograms at most here
    total = exp.trues.add_(exp.scatter).add_(exp.randoms)
    additive = exp.scatter.add_(exp.randoms)
    multiplicative = exp.attenuation.mul_(exp.normalisation)
    del exp, norm
    prompts = torch.poisson(total, generator=generator)
    del total
    return Scan(
        sinogram=sinogram,
        image=image,
        prompts=prompts.float(),
        multiplicative=multiplicative,
        additive=additive,
        calibration=calibration,
        psf_fwhm_mm=float(psf_fwhm_mm),
        metadata=meta,
    )


def thin_scan(
    scan: Scan, fraction: float, generator: torch.Generator | None = None, kind: str = "dose"
) -> Scan:
    """Binomial thinning: keep each count with probability ``fraction``.

    The thinned prompts are Poisson with mean ``fraction`` x the original mean, and never
    exceed the original counts. ``additive`` and ``calibration`` are scaled by
    ``fraction``, so reconstructions stay in Bq/mL.

    Args:
        scan: the (full-dose) scan.
        fraction: kept fraction in (0, 1] (1 / dose reduction factor).
        generator: random source on the prompts' device (None: seed 0).
        kind: ``"dose"`` (metadata.dose_fraction scaled) or ``"time"`` (a shorter scan:
            metadata.duration_s scaled).

    Returns:
        A new :class:`Scan`; the input is unchanged.
    """
    f = _check_fraction("fraction", fraction, upper_open=False)
    if kind not in ("dose", "time"):
        raise InvalidInputError(f"kind must be 'dose' or 'time', got {kind!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    counts = scan.prompts
    if f == 1.0:
        thinned = counts.clone()
    else:
        prob = torch.full_like(counts, f)
        thinned = torch.binomial(counts, prob, generator=generator)
    meta = scan.metadata
    if kind == "dose":
        meta = replace(meta, dose_fraction=meta.dose_fraction * f)
    else:
        meta = replace(meta, duration_s=meta.duration_s * f)
    return scan.with_counts(thinned.to(counts.dtype), f, meta)


def simulate_pair(
    activity_bqml: torch.Tensor,
    mu_per_mm: torch.Tensor,
    sinogram: SinogramGeometry,
    image: ImageGeometry,
    *,
    reduction_factors: Sequence[float] = REDUCTION_FACTORS,
    kind: str = "dose",
    generator: torch.Generator | None = None,
    **kwargs: object,
) -> tuple[Scan, dict[float, Scan]]:
    """A full-dose scan and its binomially thinned low-dose (or short) versions.

    Args:
        activity_bqml, mu_per_mm, sinogram, image: as :func:`simulate_scan`.
        reduction_factors: dose (or time) reduction factors ``r >= 1``; each low-dose scan
            keeps ``1 / r`` of the full scan's counts, thinned independently from it.
        kind: ``"dose"`` or ``"time"`` (see :func:`thin_scan`).
        generator: one random source for the full scan and every thinning.
        kwargs: the other keyword arguments of :func:`simulate_scan`.

    Returns:
        ``(full, {r: low})`` keyed by the reduction factors as given.
    """
    factors = list(reduction_factors)
    for r in factors:
        if not math.isfinite(float(r)) or float(r) < 1:
            raise InvalidInputError(f"reduction factors must be >= 1, got {r}")
    if generator is None:
        meta = kwargs.get("metadata")
        seed = getattr(meta, "seed", None)
        generator = torch.Generator().manual_seed(seed if seed is not None else 0)
    full = simulate_scan(activity_bqml, mu_per_mm, sinogram, image, generator=generator, **kwargs)  # type: ignore[arg-type]
    low = {r: thin_scan(full, 1.0 / float(r), generator, kind=kind) for r in factors}
    return full, low
