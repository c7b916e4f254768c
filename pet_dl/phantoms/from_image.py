"""Phantoms from activity and attenuation volumes (a real anatomy such as the SIRF / BrainWeb brain).

The seeded phantoms of :mod:`pet_dl.phantoms` are drawn from a handful of shapes; an
external anatomy checks that what is learned on them carries over to a real one.
:func:`image_phantom` resamples given volumes onto the reconstruction grid (a local
average, so the activity integral is kept) and classes the voxels by activity level, so
that :func:`pet_dl.phantoms.add_lesions` can place lesions in a chosen tissue.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pet_dl.geometry import ImageGeometry, resample_to_grid
from pet_dl.phantoms.base import Phantom


def image_phantom(
    activity: torch.Tensor,
    mu: torch.Tensor,
    source: ImageGeometry,
    image: ImageGeometry,
    *,
    name: str = "image",
    z_mm: float = 0.0,
    activity_scale: float = 1.0,
    tissue_levels: Mapping[str, float] | None = None,
) -> Phantom:
    """A :class:`Phantom` on ``image`` from activity and mu volumes on ``source``.

    Both volumes are resampled with :func:`pet_dl.geometry.resample_to_grid` (box-filtered
    where the target voxels are at least twice as large, then trilinear), after the source
    is shifted along z by ``-z_mm``, so that the source plane at ``z = z_mm`` lands on the
    target's ``z = 0`` (a 2D grid: the slice to simulate). Voxels are classed by resampled
    activity: tissue ``k`` (in the order of ``tissue_levels``, levels ascending) is every
    voxel whose activity is above the ``k``-th level times the image's maximum; class 0
    ("air") has no activity.

    Args:
        activity: ``(sx, sy, sz)`` activity on ``source`` (any unit; times
            ``activity_scale`` gives Bq/mL).
        mu: ``(sx, sy, sz)`` linear attenuation at 511 keV on ``source``, 1/mm.
        source: the volumes' grid (world mm, RAS+).
        image: the phantom's grid.
        name: the phantom's name.
        z_mm: source z (mm) that lands on the target's z = 0.
        activity_scale: factor to Bq/mL.
        tissue_levels: tissue name -> fraction of the maximum activity above which a voxel
            is that tissue (levels strictly ascending, each in [0, 1)); default
            ``{"tissue": 0.0}``.

    Returns:
        the Phantom (no lesions; ``labels`` all 0).

    Raises:
        ValueError: shapes that do not match ``source``, negative activity or mu, a
            non-positive scale, levels not ascending in [0, 1), or no activity on ``image``.
    """
    for what, volume in (("activity", activity), ("mu", mu)):
        if tuple(volume.shape) != tuple(source.shape):
            raise ValueError(f"{what} shape {tuple(volume.shape)} != source grid {source.shape}")
        if bool((volume < 0).any()):
            raise ValueError(f"{what} has negative values (min {float(volume.min()):.3g})")
    if not activity_scale > 0:
        raise ValueError(f"activity_scale must be > 0, got {activity_scale}")
    levels = dict(tissue_levels) if tissue_levels is not None else {"tissue": 0.0}
    values = list(levels.values())
    if not values or any(not 0 <= v < 1 for v in values) or values != sorted(set(values)):
        raise ValueError(f"tissue_levels must ascend strictly within [0, 1), got {levels}")
    shifted = ImageGeometry(
        source.shape, source.voxel_size_mm,
        (source.origin_mm[0], source.origin_mm[1], source.origin_mm[2] - float(z_mm)),
    )
    act = resample_to_grid(activity.float(), shifted, image).clamp_min(0) * float(activity_scale)
    att = resample_to_grid(mu.float(), shifted, image).clamp_min(0)
    peak = float(act.max())
    if peak <= 0:
        raise ValueError(f"no activity on the image grid at z = {z_mm} mm")
    tissue = torch.zeros(act.shape, dtype=torch.int64)
    for k, level in enumerate(values, start=1):
        tissue[act > level * peak] = k
    return Phantom(
        name=name, image=image, activity=act, mu=att,
        labels=torch.zeros(act.shape, dtype=torch.int64), tissue=tissue,
        tissues={"air": 0, **{t: k for k, t in enumerate(levels, start=1)}},
    )
