"""An external anatomy for evaluation: the BrainWeb-based SIRF brain, with a recipe's lesions.

The networks are trained on seeded phantoms (:mod:`pet_dl.phantoms`); scoring them on an
anatomy drawn by someone else shows what they learned about brains rather than about
the generator. :func:`sirf_brain_phantoms` gives :func:`pet_dl.evaluate.simulate_eval_set`
(``phantom_of=``) one axial plane of the SIRF brain per seed, on the recipe's grid, so the
same scanner, counts and noise apply.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from pet_dl.phantoms import Phantom

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
