"""External anatomy for evaluation: the SIRF brain and real whole-body PET slices, with a recipe's lesions.

The networks are trained on seeded phantoms (:mod:`pet_dl.phantoms`); scoring them on an
anatomy drawn by someone else shows what they learned about brains rather than about
the generator. :func:`sirf_brain_phantoms` gives :func:`pet_dl.evaluate.simulate_eval_set`
(``phantom_of=``) one axial plane of the SIRF brain per seed, on the recipe's grid, so the
same scanner, counts and noise apply. :func:`acrin_slice_phantoms` does the same with crops
of real whole-body PET slices (activity patterns no phantom generator drew).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from pet_dl.phantoms import Phantom
from pet_dl.recipes import PET_IMAGE_BODY_LEVEL

ACRIN_MEAN_BQML = 7000.0  # mean activity in the crop's body, about a BrainWeb slice's in its head
WATER_MU_PER_MM = 0.0096  # 511 keV
SIRF_PLANES = range(8, 15)  # axial planes of the SIRF brain at and above the ventricles
GREY_MATTER_BQML = 16000.0  # the brain phantom's grey matter (pet_dl.phantoms.brain)
BRAIN_LEVEL = 0.2  # white matter is 29 % of the maximum there, scalp and muscle 14 %


def sirf_brain_phantoms(
    folder: str | os.PathLike[str], recipe: Mapping[str, Any]
) -> Callable[[int], Phantom]:
    """seed -> one plane of the SIRF brain on the recipe's grid, with the recipe's random lesions.

    ``folder`` holds ``emission.hv`` and ``attenuation.hv`` (STIR Interfile, mu in 1/cm;
    ``shared/data/sirf_phantoms/brain``). The seed draws a plane of :data:`SIRF_PLANES`
    (6.75 mm apart), then the lesions (:func:`pet_dl.recipes.add_recipe_lesions`, as
    :func:`pet_dl.recipes.phantom_of_seed` does), placed in white or grey matter (activity
    above :data:`BRAIN_LEVEL` of the maximum). The maximum (grey matter) becomes
    :data:`GREY_MATTER_BQML`; the y axis is flipped from STIR's (towards the back of a
    supine, head-first patient) to RAS+ (anterior).

    Args:
        folder: the SIRF brain's folder.
        recipe: a validated recipe (its image grid and ``lesions``).

    Returns:
        ``phantom_of(seed)``: a :class:`Phantom` named ``"sirf_brain"``, activity Bq/mL
        and mu 1/mm on the recipe's grid.

    Raises:
        ValueError: emission and attenuation on different grids.
    """
    from pet_dl.io import load_image, mu_per_cm_to_per_mm
    from pet_dl.phantoms import image_phantom
    from pet_dl.recipes import add_recipe_lesions, recipe_geometry

    emission, grid = load_image(Path(folder) / "emission.hv")
    mu, mu_grid = load_image(Path(folder) / "attenuation.hv")
    if mu_grid != grid:
        raise ValueError(f"{folder}: emission and attenuation grids differ")
    emission = emission.flip(1).clamp_min(0)
    mu = mu_per_cm_to_per_mm(mu.flip(1)).clamp_min(0)
    scale = GREY_MATTER_BQML / float(emission.max())
    image = recipe_geometry(recipe)[1]

    def phantom_of(seed: int) -> Phantom:
        g = torch.Generator().manual_seed(int(seed))
        plane = SIRF_PLANES[int(torch.randint(len(SIRF_PLANES), (1,), generator=g))]
        z = grid.origin_mm[2] + plane * grid.voxel_size_mm[2]
        phantom = image_phantom(
            emission, mu, grid, image, name="sirf_brain", z_mm=z, activity_scale=scale,
            tissue_levels={"extracerebral": 0.0, "brain": BRAIN_LEVEL},
        )
        return add_recipe_lesions(recipe, phantom, g, tissues=("brain",))

    return phantom_of


def acrin_slice_phantoms(
    folder: str | os.PathLike[str], recipe: Mapping[str, Any]
) -> Callable[[int], Phantom]:
    """seed -> a crop of a real whole-body PET slice (ACRIN-FLT-Breast) on the recipe's grid.

    ``folder`` holds PET DICOM files of single slices (``shared/data/acrin_pet_dicom``:
    two [18F]FLT slices of 168 x 168 pixels of 4.07 mm, about 680 mm across). Their bodies
    are wider than the brain network's field of view, so the seed draws a slice and a
    square window as wide as the recipe's grid, at a random left-right position inside the
    body's extent and on its front-back centre; the activity outside the window is
    dropped (an object that fits the field of view). The activity is scaled so that its
    mean inside the body outline (above :data:`pet_dl.recipes.PET_IMAGE_BODY_LEVEL` of the slice's maximum)
    is :data:`ACRIN_MEAN_BQML`; mu is water inside the outline. Then the recipe's random
    lesions are placed in the body. The image is a reconstructed PET itself (4 mm pixels,
    its own noise and resolution): as the truth it stands for real activity patterns, not
    for a noiseless object.

    Args:
        folder: a folder of PET DICOM single-slice files.
        recipe: a validated recipe (its image grid and ``lesions``).

    Returns:
        ``phantom_of(seed)``: a :class:`Phantom` named ``"acrin_slice"``, activity Bq/mL
        and mu 1/mm on the recipe's grid.

    Raises:
        ValueError: no DICOM file in ``folder``.
    """
    import numpy as np

    from pet_dl.geometry import ImageGeometry
    from pet_dl.io.dicom import read_pet_series
    from pet_dl.phantoms import image_phantom
    from pet_dl.recipes import add_recipe_lesions, recipe_geometry

    files = sorted(Path(folder).glob("*.dcm"))
    if not files:
        raise ValueError(f"no .dcm files in {folder}")
    image = recipe_geometry(recipe)[1]
    slices = []
    for path in files:
        activity, grid, _ = read_pet_series(path)
        plane = torch.from_numpy(np.ascontiguousarray(activity[:, :, :1])).float().clamp_min(0)
        body = plane > PET_IMAGE_BODY_LEVEL * float(plane.max())
        xs, ys = torch.nonzero(body[:, :, 0], as_tuple=True)
        slices.append((plane, body, grid, xs, ys))
    width_mm = image.shape[0] * image.voxel_size_mm[0]

    def phantom_of(seed: int) -> Phantom:
        g = torch.Generator().manual_seed(int(seed))
        plane, body, grid, xs, ys = slices[int(torch.randint(len(slices), (1,), generator=g))]
        dx, dy = grid.voxel_size_mm[0], grid.voxel_size_mm[1]
        # the window's centre: anywhere that keeps the window inside the body's extent
        half = 0.5 * width_mm / dx
        lo, hi = float(xs.min()) + half, float(xs.max()) - half
        if lo > hi:
            lo = hi = 0.5 * (float(xs.min()) + float(xs.max()))
        cx = lo + (hi - lo) * float(torch.rand((), generator=g))
        cy = 0.5 * (float(ys.min()) + float(ys.max()))
        # voxel centres within half the window of (cx, cy), in source voxels
        ix = torch.arange(plane.shape[0], dtype=torch.float32)
        iy = torch.arange(plane.shape[1], dtype=torch.float32)
        window = (((ix - cx) * dx).abs() <= width_mm / 2)[:, None, None] & (
            ((iy - cy) * dy).abs() <= width_mm / 2
        )[None, :, None]
        inside = body & window
        activity = torch.where(inside, plane, torch.zeros_like(plane))
        activity = activity * (ACRIN_MEAN_BQML / float(activity[inside].mean()))
        mu = inside.float() * WATER_MU_PER_MM
        # the window's centre on the grid's centre (z: the single plane on z = 0)
        source = ImageGeometry(
            plane.shape, (dx, dy, image.voxel_size_mm[2]),
            (-cx * dx, -cy * dy, 0.0),
        )
        phantom = image_phantom(
            activity, mu, source, image, name="acrin_slice", z_mm=0.0,
            tissue_levels={"outside": 0.0, "body": PET_IMAGE_BODY_LEVEL},
        )
        return add_recipe_lesions(recipe, phantom, g, tissues=("body",))

    return phantom_of


def reconstructed_phantoms(
    recipe: Mapping[str, Any], phantom_of: Callable[[int], Phantom] | None = None,
    postfilter_mm: float | None = None, dose_range: tuple[float, float] | None = None,
) -> Callable[[int], Phantom]:
    """seed -> a PET-like truth: a reconstructed PET image of the anatomy, with new lesions.

    The ACRIN slices (:func:`acrin_slice_phantoms`) are reconstructed PET images: as the
    truth they carry a scanner's resolution, its noise texture and 4 mm pixels resampled
    onto the grid, which no phantom generator draws. This source makes the same kind of
    truth from any anatomy (:func:`pet_dl.recipes.reconstructed_activity`), so that such
    images can be had from validation subjects (never the test); then the recipe's random
    lesions are placed in the object (generator seed ``seed + 2 *
    RECONSTRUCTED_NOISE_SEED``), as for the ACRIN slices. A recipe's ``reconstructed:`` key
    does the same for its own phantoms (training data).

    Args:
        recipe: a validated recipe (its scanner, simulation, grid and ``lesions``).
        phantom_of: seed -> the anatomy on the recipe's grid; default
            :func:`pet_dl.recipes.phantom_of_seed`.
        postfilter_mm, dose_range: the clinical reconstruction's post-filter (mm) and the
            range of its scan's dose fraction (:func:`pet_dl.recipes.reconstructed_activity`).

    Returns:
        ``phantom_of(seed)``: a :class:`Phantom` named ``"reconstructed_<name>"``, activity
        Bq/mL and mu 1/mm on the recipe's grid; tissues ``outside`` and ``body``.
    """
    from pet_dl.recipes import (
        RECONSTRUCTED_NOISE_SEED,
        add_recipe_lesions,
        phantom_of_seed,
        recipe_geometry,
        reconstructed_activity,
    )

    image = recipe_geometry(recipe)[1]

    def make(seed: int) -> Phantom:
        base = phantom_of(seed) if phantom_of is not None else phantom_of_seed(recipe, seed, image)
        phantom = reconstructed_activity(recipe, base, int(seed), postfilter_mm, dose_range)
        lesions = torch.Generator().manual_seed(int(seed) + 2 * RECONSTRUCTED_NOISE_SEED)
        return add_recipe_lesions(recipe, phantom, lesions, tissues=("body",))

    return make
