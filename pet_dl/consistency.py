"""Data-consistency map: where a reconstruction claims more activity than the counts support.

One global number (``pet_dl.data_check.data_fit``) hides a local disagreement: a false
lesion of 1 cm changes a few hundred of the sinogram's bins, and at low counts the noise
of all the others drowns it. This module localises the test. For an image ``x`` of a scan
with counts ``y`` and forward model ``ybar = A x + a`` (``A`` = calibration x
attenuation x normalisation x projector x PSF):

1. per bin, the signed Pearson residual ``r_i = (y_i - ybar_i) / sqrt(ybar_i)``: mean 0 and
   variance 1 at every count level where ``x`` is the truth;
2. its sensitivity-weighted mean over the lines of response through each voxel,
   ``A^T r / A^T 1``, smoothed by a Gaussian of the scanner's resolution (the scan's PSF
   FWHM), less its local background (a Gaussian of :data:`BACKGROUND_FWHM_MM`): broad
   disagreements (a global scale, OSEM's slow convergence) are not local hot spots;
3. divided by the standard deviation that map has when ``r`` is pure unit-variance noise
   (Monte-Carlo with :data:`NULL_SAMPLES` random-sign sinograms through the same steps,
   seeded, so the map is deterministic), and negated:

   ``z = -HP(G(A^T r / A^T 1)) / sd_null``

``z`` is in standard deviations of the noise; positive where the image has more activity
than the measured counts support (a false hot spot), negative where it has less (a lesion
it missed). The noise scale does not change with the count level, so one threshold,
:data:`CONSISTENCY_THRESHOLD`, serves every dose. Flagged regions (:func:`find_regions`)
are the connected components of ``z > threshold`` inside the object
(:func:`object_support`) where the relative excess (:func:`relative_excess`: how much the
expected counts on the lines through a voxel exceed the measured ones) is above
:data:`MIN_RELATIVE_EXCESS`; at full dose tiny real disagreements are significant, and
this floor keeps them out.

A reference image (the OSEM the shipped network starts from) is optional: it gives the
object's support, and its map is returned beside the image's for comparison, but the flags
are the image's own. Subtracting the reference's map was measured and rejected
(docs/inference.md, "Data-consistency map"): where the network is closer to the truth than
4 x 7 OSEM, the difference reads as a disagreement.

Layer: above the forward model and ``recon`` (it uses their operators and filters),
below ``inference``; tensors only, no file formats.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pet_dl.forward_model import PETForwardModel
    from pet_dl.geometry import ImageGeometry

# Random-sign sinograms used to estimate the map's noise scale (per scan, seeded).
NULL_SAMPLES = 16
# Seed of those sinograms: the same scan always gives the same map.
NULL_SEED = 20_261_206
# FWHM (mm) of the extra smoothing of the Monte-Carlo variance map (it is smooth; this
# takes the sampling noise of NULL_SAMPLES samples out of it).
NULL_SMOOTHING_MM = 20.0
# Smoothing FWHM (mm) for a scan without a PSF model (the shipped geometry's PSF).
DEFAULT_FWHM_MM = 4.5
# Voxels whose sensitivity is below this fraction of the maximum get z = 0 (edge of FOV).
MIN_SENSITIVITY = 0.05

# z above which a region is flagged (standard deviations of the noise). Calibrated on
# validation phantoms of the shipped model's two training families (seeds 101600-101619
# of data/brain2d_dense.yaml and data/brain2d_folded_dense.yaml; test seeds start at
# 200000), scripts/consistency_scores.py: see docs/inference.md, "Data-consistency map".
CONSISTENCY_THRESHOLD = 4.0
# A flagged region needs at least this many voxels above the threshold.
MIN_REGION_VOXELS = 2
# ... and a relative excess (relative_excess) above this: the expected counts on the
# lines through it exceed the measured ones by more than 2 %. At full dose a tiny real
# disagreement (OSEM's slow convergence, a lesion overshot by 10 %) is significant; this
# floor keeps it out while false blobs of 2-3 x the local activity stay well above it.
MIN_RELATIVE_EXCESS = 0.02
# FWHM (mm) of the local background subtracted from the map: broad disagreements (a
# global scale, OSEM's slow convergence) are not local hot spots, and at full dose they
# are significant everywhere. Chosen with scripts/consistency_scores.py (15-40 mm
# measured).
BACKGROUND_FWHM_MM = 40.0
# Regions are only counted inside the object: where the reference (else the image),
# smoothed by SUPPORT_SMOOTHING_MM, has at least SUPPORT_FRACTION of its maximum. Outside
# it, at the edge of the field of view, the noise scale is least certain.
SUPPORT_FRACTION = 0.05
SUPPORT_SMOOTHING_MM = 10.0


@dataclass(frozen=True)
class Region:
    """One flagged region of a consistency map.

    Attributes:
        centre_mm: z-weighted centroid of its voxels above the threshold, world mm.
        peak: largest z in it (standard deviations).
        peak_mm: world position of that voxel, mm.
        voxels: number of voxels above the threshold.
    """

    centre_mm: tuple[float, float, float]
    peak: float
    peak_mm: tuple[float, float, float]
    voxels: int


@dataclass(frozen=True)
class ConsistencyMap:
    """The data-consistency map of one image and its flagged regions.

    Attributes:
        z: ``(nx, ny, nz)`` float32, standard deviations of the noise; positive where the
            image has more activity than the counts support.
        regions: connected components of ``z > threshold`` where the relative excess is
            above :data:`MIN_RELATIVE_EXCESS`, inside the object (largest peak first).
        threshold: the threshold used.
        excess: ``(nx, ny, nz)`` float32 relative excess (:func:`relative_excess`), or None.
        reference_z: the same map as ``z`` for the reference image, or None.
    """

    z: torch.Tensor
    regions: tuple[Region, ...]
    threshold: float
    excess: torch.Tensor | None = None
    reference_z: torch.Tensor | None = None

    @property
    def count(self) -> int:
        """Number of flagged regions."""
        return len(self.regions)

    @property
    def max_z(self) -> float:
        """Largest value of the map (standard deviations)."""
        return float(self.z.max())


def pearson_residual(counts: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Per-bin ``(y - ybar) / sqrt(ybar)``, 0 where ``ybar <= 0``.

    Args:
        counts: measured counts ``(B?, *sino)``.
        expected: expected counts ``(B?, *sino)`` of the image, same shape.

    Returns:
        float32, same shape, dimensionless (variance 1 per bin for Poisson counts of mean
        ``expected``).
    """
    if counts.shape != expected.shape:
        raise ValueError(f"counts {tuple(counts.shape)} and expected {tuple(expected.shape)} differ")
    ybar = expected.float()
    valid = ybar > 1e-8
    safe = torch.where(valid, ybar, torch.ones_like(ybar))
    return torch.where(valid, (counts.float() - ybar) / safe.sqrt(), torch.zeros_like(ybar))


def _mean_over_lors(
    model: PETForwardModel, values: torch.Tensor, sensitivity: torch.Tensor,
    image: ImageGeometry, fwhm_mm: float, background_fwhm_mm: float = 0.0,
    denominator: torch.Tensor | None = None,
) -> torch.Tensor:
    """``G(A^T values / A^T 1)`` minus its local background: ``(B?, *sino)`` ->
    ``(B?, nx, ny, nz)``, 0 off the FOV. ``denominator`` replaces ``A^T 1``."""
    from pet_dl.recon.filters import gaussian_postfilter

    back = model.adjoint(values.float())
    inside = _inside(sensitivity)
    den = sensitivity if denominator is None else denominator
    mean = torch.where(inside, back / den.clamp_min(1e-30), torch.zeros_like(back))
    smooth = gaussian_postfilter(mean, image, fwhm_mm) if fwhm_mm > 0 else mean
    if background_fwhm_mm <= 0:
        return smooth
    weight = gaussian_postfilter(inside.float(), image, background_fwhm_mm)
    local = gaussian_postfilter(mean, image, background_fwhm_mm) / weight.clamp_min(1e-6)
    return torch.where(inside, smooth - local, torch.zeros_like(smooth))


def _inside(sensitivity: torch.Tensor) -> torch.Tensor:
    """Voxels with at least :data:`MIN_SENSITIVITY` of the (per-scan) maximum sensitivity."""
    peak = sensitivity.flatten(-3).amax(-1)[..., None, None, None]
    return sensitivity >= MIN_SENSITIVITY * peak


@torch.no_grad()
def null_scale(
    model: PETForwardModel, valid: torch.Tensor, image: ImageGeometry, fwhm_mm: float,
    background_fwhm_mm: float = 0.0, samples: int = NULL_SAMPLES, seed: int = NULL_SEED,
) -> torch.Tensor:
    """Standard deviation of the smoothed LOR mean of unit-variance noise, per voxel.

    ``samples`` random-sign sinograms (on ``valid`` bins, 0 elsewhere) go through
    :func:`_mean_over_lors`; the mean of their squares, smoothed by
    :data:`NULL_SMOOTHING_MM`, is the variance.

    Args:
        model: the scan's forward model (batched or not).
        valid: ``(B?, *sino)`` bool, the bins that carry a residual.
        image: the image grid.
        fwhm_mm: the map's smoothing FWHM, mm.

    Returns:
        ``(B?, nx, ny, nz)`` float32, > 0 inside the FOV (dimensionless).
    """
    from pet_dl.recon.filters import gaussian_postfilter

    sens = model.sensitivity()
    g = torch.Generator().manual_seed(int(seed))
    total = torch.zeros_like(sens, dtype=torch.float32)
    if model.batch_size in (None, 1):  # one scan: all samples in one back-projection
        sino = tuple(valid.shape[-len(model.out_shape):])
        signs = torch.randint(0, 2, (samples, *sino), generator=g).to(valid.device) * 2.0 - 1.0
        means = _mean_over_lors(
            model, signs * valid.reshape(sino), sens.reshape(image.shape), image, fwhm_mm,
            background_fwhm_mm,
        )
        total += (means**2).sum(0).reshape(total.shape)
    else:
        for _ in range(samples):
            signs = torch.randint(0, 2, tuple(valid.shape), generator=g).to(valid.device) * 2.0 - 1.0
            total += _mean_over_lors(model, signs * valid, sens, image, fwhm_mm, background_fwhm_mm) ** 2
    variance = gaussian_postfilter(total / samples, image, NULL_SMOOTHING_MM)
    floor = 1e-12 + 1e-6 * float(variance.max())
    return variance.clamp_min(floor).sqrt()


@torch.no_grad()
def excess_z(
    model: PETForwardModel, prompts: torch.Tensor, images: torch.Tensor,
    image: ImageGeometry, fwhm_mm: float, scale: torch.Tensor | None = None,
    background_fwhm_mm: float = BACKGROUND_FWHM_MM,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The z map of steps 1-3 of the module docstring, for one scan or a batch.

    Args:
        model: forward model ``x (B?, nx, ny, nz) -> ybar (B?, *sino)`` of the scan(s).
        prompts: measured counts ``(B?, *sino)``.
        images: reconstructions ``(B?, nx, ny, nz)`` Bq/mL.
        image: the image grid (voxel size for the smoothing, mm).
        fwhm_mm: smoothing FWHM, mm (the scan's PSF FWHM; 0: none).
        scale: :func:`null_scale` when already computed for this model and these bins.

    Returns:
        ``(z (B?, nx, ny, nz) float32, scale (B?, nx, ny, nz))``; z positive where the
        image has more activity than the counts support, 0 off the FOV.
    """
    expected = model(images.float())
    residual = pearson_residual(prompts, expected)
    valid = expected > 1e-8
    sens = model.sensitivity()
    mean = _mean_over_lors(model, residual, sens, image, fwhm_mm, background_fwhm_mm)
    if scale is None:
        scale = null_scale(model, valid, image, fwhm_mm, background_fwhm_mm)
    z = torch.where(_inside(sens), -mean / scale, torch.zeros_like(mean))
    return z.float(), scale


def object_support(
    image: torch.Tensor, grid: ImageGeometry, fraction: float = SUPPORT_FRACTION,
    fwhm_mm: float = SUPPORT_SMOOTHING_MM,
) -> torch.Tensor:
    """Voxels where ``image`` ``(B?, nx, ny, nz)`` (Bq/mL), smoothed by ``fwhm_mm``, has
    at least ``fraction`` of its (per-image) maximum: ``(B?, nx, ny, nz)`` bool."""
    from pet_dl.recon.filters import gaussian_postfilter

    smooth = gaussian_postfilter(image.float(), grid, fwhm_mm)
    peak = smooth.flatten(-3).amax(-1)[..., None, None, None]
    return smooth >= fraction * peak


@torch.no_grad()
def relative_excess(
    model: PETForwardModel, prompts: torch.Tensor, images: torch.Tensor,
    image: ImageGeometry, fwhm_mm: float, background_fwhm_mm: float = BACKGROUND_FWHM_MM,
) -> torch.Tensor:
    """How much more the image predicts than was measured, on the lines through each voxel.

    ``e = -G(A^T(y - ybar) / A^T ybar)`` less its local background (the same filters as
    :func:`excess_z`): the fraction by which the expected counts on those lines exceed
    the measured ones (0.02 = 2 %). Its expectation does not depend on the count level,
    so it tells a real but tiny disagreement at full dose (a lesion overshot by 10 %)
    from a false blob.

    Args:
        model, prompts, images, image, fwhm_mm, background_fwhm_mm: as :func:`excess_z`.

    Returns:
        ``(B?, nx, ny, nz)`` float32, dimensionless, 0 off the FOV.
    """
    expected = model(images.float())
    sens = model.sensitivity()
    back_expected = model.adjoint(expected.float())
    e = _mean_over_lors(
        model, prompts.float() - expected, sens, image, fwhm_mm, background_fwhm_mm,
        denominator=back_expected,
    )
    return torch.where(_inside(sens), -e, torch.zeros_like(e)).float()


def find_regions(
    z: torch.Tensor, image: ImageGeometry, threshold: float = CONSISTENCY_THRESHOLD,
    min_voxels: int = MIN_REGION_VOXELS, support: torch.Tensor | None = None,
) -> tuple[Region, ...]:
    """Connected components (26-neighbourhood; 8 in a 2D slice) of ``z > threshold``.

    Args:
        z: ``(nx, ny, nz)`` map (standard deviations).
        image: its grid (voxel centres in mm).
        threshold: level above which voxels count.
        min_voxels: components with fewer voxels are dropped.
        support: ``(nx, ny, nz)`` bool, the voxels that may be flagged (None: all).

    Returns:
        The regions, largest peak first.
    """
    if z.dim() != 3:
        raise ValueError(f"z must be (nx, ny, nz), got shape {tuple(z.shape)}")
    values = z.detach().double().cpu().numpy()
    above = values > threshold
    if support is not None:
        above &= support.detach().cpu().numpy().astype(bool)
    seen = above.copy()
    shape = values.shape
    origin, voxel = image.origin_mm, image.voxel_size_mm
    offsets = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)]
    regions = []
    for start in zip(*above.nonzero()):
        if not seen[start]:
            continue
        seen[start] = False
        members, queue = [], deque([start])
        while queue:
            p = queue.popleft()
            members.append(p)
            for o in offsets:
                q = (p[0] + o[0], p[1] + o[1], p[2] + o[2])
                if all(0 <= q[k] < shape[k] for k in range(3)) and seen[q]:
                    seen[q] = False
                    queue.append(q)
        if len(members) < min_voxels:
            continue
        weights = [values[m] for m in members]
        total = sum(weights)
        centre = tuple(
            origin[k] + voxel[k] * sum(w * m[k] for w, m in zip(weights, members)) / total
            for k in range(3)
        )
        peak_index = members[max(range(len(members)), key=lambda i: weights[i])]
        peak_mm = tuple(origin[k] + voxel[k] * peak_index[k] for k in range(3))
        regions.append(Region(
            tuple(float(c) for c in centre), float(max(weights)),
            tuple(float(c) for c in peak_mm), len(members),
        ))
    return tuple(sorted(regions, key=lambda r: -r.peak))


@torch.no_grad()
def consistency_map(
    forward_model: PETForwardModel,
    prompts: torch.Tensor,
    image: torch.Tensor,
    grid: ImageGeometry,
    fwhm_mm: float,
    reference: torch.Tensor | None = None,
    threshold: float = CONSISTENCY_THRESHOLD,
    background_fwhm_mm: float = BACKGROUND_FWHM_MM,
    min_excess: float = MIN_RELATIVE_EXCESS,
) -> ConsistencyMap:
    """Where ``image`` has more activity than ``prompts`` support, and the flagged regions.

    Args:
        forward_model: the scan's model ``x (nx, ny, nz) -> ybar (*sino)``, or a batched
            model of this one scan (``(1, nx, ny, nz) -> (1, *sino)``), randoms and
            scatter included.
        prompts: measured counts ``(*sino)`` (or ``(1, *sino)``).
        image: the reconstruction ``(nx, ny, nz)`` Bq/mL.
        grid: the image grid (voxel size and origin, mm).
        fwhm_mm: smoothing FWHM, mm: the scan's PSF FWHM (``Scan.psf_fwhm_mm``); 0 or
            less: :data:`DEFAULT_FWHM_MM`.
        reference: optional reference image ``(nx, ny, nz)`` Bq/mL (OSEM of the same
            scan): it gives the object's support (:func:`object_support`; else the image
            does) and its own map is returned as ``reference_z`` (same noise scale).
        threshold: :data:`CONSISTENCY_THRESHOLD` unless calibrating.
        background_fwhm_mm: :data:`BACKGROUND_FWHM_MM` unless calibrating.
        min_excess: :data:`MIN_RELATIVE_EXCESS` unless calibrating.

    Returns:
        a :class:`ConsistencyMap` (``z`` float32 on the CPU).
    """
    if tuple(image.shape) != tuple(grid.shape):
        raise ValueError(f"image has shape {tuple(image.shape)}, the grid {tuple(grid.shape)}")
    if forward_model.batch_size not in (None, 1):
        raise ValueError(f"consistency_map takes one scan, the model has {forward_model.batch_size}")
    fwhm = float(fwhm_mm) if fwhm_mm > 0 else DEFAULT_FWHM_MM
    lead = (1,) if forward_model.batch_size is not None else ()
    y = prompts.reshape(*lead, *forward_model.out_shape)
    x = image.to(y.device, torch.float32).reshape(*lead, *grid.shape)
    z, scale = excess_z(forward_model, y, x, grid, fwhm, None, background_fwhm_mm)
    z = z.reshape(grid.shape).cpu()
    excess = relative_excess(forward_model, y, x, grid, fwhm, background_fwhm_mm)
    excess = excess.reshape(grid.shape).cpu()
    ref_z = None
    if reference is not None:
        r = reference.to(y.device, torch.float32).reshape(*lead, *grid.shape)
        ref_z = excess_z(forward_model, y, r, grid, fwhm, scale, background_fwhm_mm)[0]
        ref_z = ref_z.reshape(grid.shape).cpu()
    support = object_support((image if reference is None else reference).float().cpu(), grid)
    regions = find_regions(z, grid, threshold, support=support & (excess > min_excess))
    return ConsistencyMap(z, regions, float(threshold), excess, ref_z)
