"""Hot spherical lesions with known activity and a label mask, inserted into any phantom."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pet_dl.phantoms.base import MU_SOFT_TISSUE, MU_SPONGY_BONE, Lesion, Phantom, uniform
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
    if not isinstance(generator, torch.Generator):
        raise TypeError("add_lesions needs a seeded torch.Generator (generator=...)")
    if n < 0:
        raise ValueError(f"number of lesions must be >= 0, got {n}")
    dmin, dmax = diameter_range_mm
    if not 0 < dmin <= dmax:
        raise ValueError(f"diameter range must satisfy 0 < min <= max, got {diameter_range_mm}")
    cmin, cmax = (contrast, contrast) if isinstance(contrast, (int, float)) else contrast
    if not 0 < cmin <= cmax:
        raise ValueError(f"contrast must be positive (min <= max), got {contrast}")
    out = phantom.copy()
    image = out.image
    shape = tuple(int(s) for s in image.shape)
    vs = tuple(float(v) for v in image.voxel_size_mm)
    origin = tuple(float(o) for o in image.origin_mm)
    planar = shape[2] == 1
    allowed = (out.activity > 0) & (out.mu < MU_SPONGY_BONE) & (out.labels == 0)
    names = tissues if tissues is not None else LESION_TISSUES.get(phantom.name)
    if names is not None:
        unknown = [t for t in names if t not in out.tissues]
        if unknown:
            raise ValueError(
                f"unknown tissue(s) {unknown} for the {phantom.name} phantom; it has "
                f"{sorted(out.tissues)}"
            )
        in_tissue = torch.zeros_like(allowed)
        for t in names:
            in_tissue |= out.tissue == out.tissues[t]
        allowed &= in_tissue
    candidates = torch.nonzero(allowed)
    if candidates.shape[0] == 0:
        raise ValueError(f"{phantom.name} phantom has no tissue where a lesion can go")
    directions = _directions(planar)
    vs_t = torch.tensor(vs, dtype=torch.float64)
    origin_t = torch.tensor(origin, dtype=torch.float64)
    shape_t = torch.tensor(shape)
    lesions = list(out.lesions)
    next_label = max([int(out.labels.max())] + [les.label for les in lesions]) + 1
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
        diameter = uniform(generator, dmin, dmax)
        r = diameter / 2.0
        pick = int(torch.randint(candidates.shape[0], (), generator=generator))
        centre = origin_t + candidates[pick].to(torch.float64) * vs_t
        centre = centre + (torch.rand(3, generator=generator, dtype=torch.float64) - 0.5) * vs_t
        if planar:
            centre[2] = origin_t[2]
        probes = torch.cat(
            [centre[None], centre + r * directions, centre + 0.5 * r * directions], dim=0
        )
        idx = torch.round((probes - origin_t) / vs_t).to(torch.int64)
        if ((idx < 0) | (idx >= shape_t)).any():
            continue
        if not bool(allowed[idx[:, 0], idx[:, 1], idx[:, 2]].all()):
            continue
        if any(
            math.dist(centre.tolist(), les.centre_mm) < r + les.diameter_mm / 2.0 + 2.0
            for les in lesions
        ):
            continue
        c_idx = idx[0]
        background = float(out.activity[c_idx[0], c_idx[1], c_idx[2]])
        activity = background * uniform(generator, cmin, cmax)
        centre_t = tuple(float(v) for v in centre)
        f = rasterize(sphere(centre_t, diameter), shape, vs, origin, supersampling)  # type: ignore[arg-type]
        f32 = f.to(torch.float32)
        out.activity = out.activity * (1 - f32) + activity * f32
        out.mu = out.mu * (1 - f32) + MU_SOFT_TISSUE * f32
        out.labels[f >= 0.5] = next_label
        lesions.append(
            Lesion(next_label, f"lesion_{next_label}", centre_t, diameter, activity, background)  # type: ignore[arg-type]
        )
        allowed &= f == 0
        next_label += 1
        placed += 1
    out.lesions = tuple(lesions)
    return out
