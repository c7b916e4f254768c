"""Spheres inserted into any phantom: hot lesions (with a label mask and known activity) and cold regions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pet_dl.phantoms.base import MU_LUNG, MU_SOFT_TISSUE, MU_SPONGY_BONE, Lesion, Phantom, uniform
from pet_dl.phantoms.brain import BRAIN_TISSUES
from pet_dl.phantoms.brainweb import BRAIN_TISSUES as BRAINWEB_BRAIN_TISSUES
from pet_dl.phantoms.shapes import rasterize, sphere

# Where lesions go by default, per phantom name (other phantoms: any tissue with activity
# that is not bone).
LESION_TISSUES: dict[str, tuple[str, ...]] = {
    "brain": BRAIN_TISSUES,
    "brain_folded": BRAIN_TISSUES,
    "brain_varied": BRAIN_TISSUES,
    "brainweb": BRAINWEB_BRAIN_TISSUES,
    "torso": ("soft_tissue", "liver", "lung", "spleen", "kidney"),
    "nema": ("background",),
}


def _directions(planar: bool) -> torch.Tensor:
    """Unit directions for the containment check, ``(K, 3)``."""
    dirs = []
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            for k in (0,) if planar else (-1, 0, 1):
                if (i, j, k) != (0, 0, 0):
                    dirs.append((i, j, k))
    d = torch.tensor(dirs, dtype=torch.float64)
    return d / torch.linalg.vector_norm(d, dim=-1, keepdim=True)


def _room(phantom: Phantom, tissues: Sequence[str] | None) -> torch.Tensor:
    """``(nx, ny, nz)`` bool: voxels of ``tissues`` (all, if None) with activity, not bone, no label.

    Raises:
        ValueError: a tissue the phantom does not have.
    """
    allowed = (phantom.activity > 0) & (phantom.mu < MU_SPONGY_BONE) & (phantom.labels == 0)
    if tissues is not None:
        unknown = [t for t in tissues if t not in phantom.tissues]
        if unknown:
            raise ValueError(
                f"unknown tissue(s) {unknown} for the {phantom.name} phantom; it has "
                f"{sorted(phantom.tissues)}"
            )
        in_tissue = torch.zeros_like(allowed)
        for t in tissues:
            in_tissue |= phantom.tissue == phantom.tissues[t]
        allowed &= in_tissue
    return allowed


def _checked_balls(
    function: str, what: str, generator: object, n: int, diameter_range_mm: tuple[float, float]
) -> tuple[float, float]:
    """The ``(min, max)`` diameter, mm, after checking the arguments every ball inserter takes.

    Raises:
        TypeError: no seeded generator. ValueError: ``n < 0`` or a bad diameter range.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{function} needs a seeded torch.Generator (generator=...)")
    if n < 0:
        raise ValueError(f"number of {what} must be >= 0, got {n}")
    dmin, dmax = diameter_range_mm
    if not 0 < dmin <= dmax:
        raise ValueError(f"diameter range must satisfy 0 < min <= max, got {diameter_range_mm}")
    return dmin, dmax


class _BallPlacer:
    """Random balls wholly inside the ``allowed`` voxels of one phantom's grid.

    :meth:`draw` proposes one ball per call (diameter, then a voxel of ``allowed``, then a
    jitter within it; on a one-slice grid centred in its plane) and keeps it when its centre
    and 8 / 26 directions at its radius and half its radius lie in ``allowed`` and it keeps
    2 mm from the balls already taken. The caller removes a placed ball from ``allowed``.
    """

    def __init__(self, phantom: Phantom, allowed: torch.Tensor, name: str, what: str) -> None:
        image = phantom.image
        self.shape = tuple(int(s) for s in image.shape)
        self.vs = tuple(float(v) for v in image.voxel_size_mm)
        self.origin = tuple(float(o) for o in image.origin_mm)
        self.planar = self.shape[2] == 1
        self.allowed = allowed
        self.candidates = torch.nonzero(allowed)
        if self.candidates.shape[0] == 0:
            raise ValueError(f"{name} phantom has no tissue where {what} can go")
        self.directions = _directions(self.planar)
        self.vs_t = torch.tensor(self.vs, dtype=torch.float64)
        self.origin_t = torch.tensor(self.origin, dtype=torch.float64)
        self.shape_t = torch.tensor(self.shape)

    def draw(
        self, generator: torch.Generator, dmin: float, dmax: float,
        taken: Sequence[tuple[tuple[float, float, float], float]],
    ) -> tuple[tuple[float, float, float], float, torch.Tensor] | None:
        """One attempt: ``(centre_mm, diameter_mm, centre voxel index (3,))``, or None."""
        diameter = uniform(generator, dmin, dmax)
        r = diameter / 2.0
        pick = int(torch.randint(self.candidates.shape[0], (), generator=generator))
        centre = self.origin_t + self.candidates[pick].to(torch.float64) * self.vs_t
        centre = centre + (torch.rand(3, generator=generator, dtype=torch.float64) - 0.5) * self.vs_t
        if self.planar:
            centre[2] = self.origin_t[2]
        probes = torch.cat(
            [centre[None], centre + r * self.directions, centre + 0.5 * r * self.directions], dim=0
        )
        idx = torch.round((probes - self.origin_t) / self.vs_t).to(torch.int64)
        if ((idx < 0) | (idx >= self.shape_t)).any():
            return None
        if not bool(self.allowed[idx[:, 0], idx[:, 1], idx[:, 2]].all()):
            return None
        if any(math.dist(centre.tolist(), c) < r + d / 2.0 + 2.0 for c, d in taken):
            return None
        return tuple(float(v) for v in centre), diameter, idx[0]  # type: ignore[return-value]

    def fraction(self, centre_mm: tuple[float, float, float], diameter_mm: float, supersampling: int) -> torch.Tensor:
        """``(nx, ny, nz)`` float64: the fraction of each voxel inside the ball."""
        return rasterize(sphere(centre_mm, diameter_mm), self.shape, self.vs, self.origin, supersampling)  # type: ignore[arg-type]


def add_lesions(
    phantom: Phantom,
    n: int,
    diameter_range_mm: tuple[float, float] = (4.0, 20.0),
    contrast: float | tuple[float, float] = (2.0, 6.0),
    generator: torch.Generator | None = None,
    *,
    tissues: Sequence[str] | None = None,
    max_attempts: int = 2000,
    supersampling: int = 4,
    allow_fewer: bool = False,
) -> Phantom:
    """A copy of ``phantom`` with ``n`` hot spherical lesions added.

    Each lesion has a diameter drawn uniformly from ``diameter_range_mm`` and an activity
    of ``contrast`` times the activity at its centre before insertion (a contrast range
    is sampled uniformly). Lesions are placed wholly inside ``tissues`` (default
    :data:`LESION_TISSUES` for the phantom's name), in voxels with activity that are not
    bone, away from other lesions and spheres; their mu becomes soft tissue. On a
    one-slice grid they are centred in its plane. New labels follow the existing ones.

    Args:
        phantom: the phantom (not modified).
        n: number of lesions (>= 0).
        diameter_range_mm: (min, max) diameter, mm.
        contrast: lesion:background activity ratio, or a (min, max) range.
        generator: seeded torch generator (required).
        tissues: names of the tissues (``phantom.tissues``) that may hold lesions.
        max_attempts: placement attempts before giving up.
        allow_fewer: after ``max_attempts``, keep the lesions placed so far instead of
            raising (real anatomies: a slice near the vertex may have room for none).
        supersampling: sub-samples per axis for partial-volume voxels.

    Returns:
        The new Phantom; ``lesions`` lists the old and the new ones with centres (mm),
        diameters and activities (Bq/mL).

    Raises:
        ValueError: bad arguments, or no room for the lesions.
    """
    dmin, dmax = _checked_balls("add_lesions", "lesions", generator, n, diameter_range_mm)
    cmin, cmax = (contrast, contrast) if isinstance(contrast, (int, float)) else contrast
    if not 0 < cmin <= cmax:
        raise ValueError(f"contrast must be positive (min <= max), got {contrast}")
    out = phantom.copy()
    allowed = _room(out, tissues if tissues is not None else LESION_TISSUES.get(phantom.name))
    lesions = list(out.lesions)
    next_label = max([int(out.labels.max())] + [les.label for les in lesions]) + 1
    placer = _BallPlacer(out, allowed, phantom.name, "a lesion")
    placed = attempts = 0
    while placed < n:
        attempts += 1
        if attempts > max_attempts:
            if allow_fewer:
                break
            raise ValueError(
                f"could place only {placed} of {n} lesions of {dmin}-{dmax} mm in the "
                f"{phantom.name} phantom; use fewer or smaller lesions"
            )
        ball = placer.draw(generator, dmin, dmax, [(les.centre_mm, les.diameter_mm) for les in lesions])
        if ball is None:
            continue
        centre_t, diameter, c_idx = ball
        background = float(out.activity[c_idx[0], c_idx[1], c_idx[2]])
        activity = background * uniform(generator, cmin, cmax)
        f = placer.fraction(centre_t, diameter, supersampling)
        f32 = f.to(torch.float32)
        out.activity = out.activity * (1 - f32) + activity * f32
        out.mu = out.mu * (1 - f32) + MU_SOFT_TISSUE * f32
        out.labels[f >= 0.5] = next_label
        lesions.append(
            Lesion(next_label, f"lesion_{next_label}", centre_t, diameter, activity, background)  # type: ignore[arg-type]
        )
        placer.allowed &= f == 0
        next_label += 1
        placed += 1
    out.lesions = tuple(lesions)
    return out


#: Tissue name of the regions :func:`add_cold_regions` inserts (in ``Phantom.tissues``).
COLD_REGION_TISSUE = "cold_region"


def add_cold_regions(
    phantom: Phantom,
    n: int,
    diameter_range_mm: tuple[float, float] = (10.0, 50.0),
    activity_fraction: tuple[float, float] = (0.0, 0.1),
    lung_probability: float = 0.5,
    generator: torch.Generator | None = None,
    *,
    tissues: Sequence[str] | None = None,
    max_attempts: int = 2000,
    supersampling: int = 4,
) -> Phantom:
    """A copy of ``phantom`` with up to ``n`` cold regions: balls of (almost) no activity.

    A zero-activity region inside a warm body (NEMA's lung insert, an air-filled bowel, a
    cyst or a necrotic core) has rims where the resolution-blurred truth is low, so a little
    spill-in is a large relative excess: where a network trained without such regions puts
    false hot spots. Each region has a diameter drawn uniformly from ``diameter_range_mm``
    and an activity of a fraction (uniform in ``activity_fraction``) of the activity at its
    centre before insertion; with probability ``lung_probability`` its mu becomes lung's
    (:data:`MU_LUNG`: an air-filled insert), else it keeps the tissue's mu. Regions lie
    wholly inside ``tissues`` (default: any voxel with activity that is not bone nor a
    lesion), 2 mm apart; their voxels become tissue :data:`COLD_REGION_TISSUE` (no lesion
    label: they are background, not lesions). Where there is no room, fewer are placed.

    Args:
        phantom: the phantom (not modified).
        n: the number of regions wanted (>= 0).
        diameter_range_mm: (min, max) diameter, mm.
        activity_fraction: (min, max) of the region's activity over its surroundings', in [0, 1).
        lung_probability: chance that a region gets lung's mu, in [0, 1].
        generator: seeded torch generator (required).
        tissues: names of the tissues (``phantom.tissues``) that may hold regions.
        max_attempts: placement attempts before giving up on the rest.
        supersampling: sub-samples per axis for partial-volume voxels.

    Returns:
        the new Phantom: activity Bq/mL and mu 1/mm changed inside the regions, ``tissue``
        and ``tissues`` with :data:`COLD_REGION_TISSUE`; lesions unchanged.

    Raises:
        ValueError: bad arguments, or no tissue where a region can go.
    """
    dmin, dmax = _checked_balls("add_cold_regions", "cold regions", generator, n, diameter_range_mm)
    fmin, fmax = activity_fraction
    if not 0 <= fmin <= fmax < 1:
        raise ValueError(f"activity fraction must satisfy 0 <= min <= max < 1, got {activity_fraction}")
    if not 0 <= lung_probability <= 1:
        raise ValueError(f"lung probability must be in [0, 1], got {lung_probability}")
    out = phantom.copy()
    if n == 0:
        return out
    placer = _BallPlacer(out, _room(out, tissues), phantom.name, "a cold region")
    tissue_id = out.tissues.get(COLD_REGION_TISSUE, max(out.tissues.values(), default=0) + 1)
    taken = [(les.centre_mm, les.diameter_mm) for les in out.lesions]
    placed = attempts = 0
    while placed < n and attempts < max_attempts:
        attempts += 1
        ball = placer.draw(generator, dmin, dmax, taken)
        if ball is None:
            continue
        centre, diameter, c_idx = ball
        activity = float(out.activity[c_idx[0], c_idx[1], c_idx[2]]) * uniform(generator, fmin, fmax)
        lung = float(torch.rand((), generator=generator)) < lung_probability
        f = placer.fraction(centre, diameter, supersampling)
        f32 = f.to(torch.float32)
        out.activity = out.activity * (1 - f32) + activity * f32
        if lung:
            out.mu = out.mu * (1 - f32) + MU_LUNG * f32
        out.tissue[f >= 0.5] = tissue_id
        placer.allowed &= f == 0
        taken.append((centre, diameter))
        placed += 1
    if placed:
        out.tissues[COLD_REGION_TISSUE] = tissue_id
    return out
