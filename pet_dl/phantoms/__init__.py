"""Seeded digital phantoms (activity in Bq/mL, mu in 1/mm at 511 keV, lesion labels).

``make_phantom("brain" | "brain_folded" | "brain_varied" | "brainweb" | "torso" | "torso_window" | "nema", image, generator)`` builds one
on an :class:`~pet_dl.geometry.ImageGeometry`; :func:`add_lesions` inserts hot lesions, :func:`add_cold_regions` cold regions;
:func:`image_phantom` makes one from given activity and mu volumes (a real anatomy).
See ``docs/phantoms.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from pet_dl.phantoms.base import (
    MU_BONE,
    MU_LUNG,
    MU_SOFT_TISSUE,
    MU_WATER,
    SUV1_BQML,
    Lesion,
    Phantom,
)
from pet_dl.phantoms.brain import brain_phantom, varied_brain_phantom
from pet_dl.phantoms.brainweb import BRAINWEB_SUBJECTS, brainweb_phantom
from pet_dl.phantoms.from_image import image_phantom
from pet_dl.phantoms.lesions import COLD_REGION_TISSUE, add_cold_regions, add_lesions
from pet_dl.phantoms.nema import SPHERE_DIAMETERS_MM, nema_phantom
from pet_dl.phantoms.torso import neck_arms_phantom, torso_phantom, torso_window_phantom

if TYPE_CHECKING:
    from pet_dl.geometry import ImageGeometry

PHANTOMS: dict[str, Callable[..., Phantom]] = {
    "brain": brain_phantom,
    "brain_folded": functools.partial(brain_phantom, cortex="folded"),
    "brain_varied": varied_brain_phantom,
    "brainweb": brainweb_phantom,
    "torso": torso_phantom,
    "torso_arms": functools.partial(torso_phantom, arms=True),
    "neck_arms": neck_arms_phantom,
    "torso_window": torso_window_phantom,
    "nema": nema_phantom,
}


def make_phantom(
    name: str, image: ImageGeometry, generator: torch.Generator, **kwargs: Any
) -> Phantom:
    """Build the phantom called ``name`` (``"brain"``, ``"brain_folded"``, ``"brain_varied"``, ``"brainweb"``, ``"torso"``, ``"torso_arms"`` (with the arms down at its sides), ``"neck_arms"`` (a neck with the arms raised beside it), ``"torso_window"``, ``"nema"``) on ``image``.

    Keyword arguments go to the phantom's function (e.g. ``grey_white_ratio``; ``"brainweb"``
    needs ``subject``, a real anatomy: :mod:`pet_dl.phantoms.brainweb`).
    """
    try:
        build = PHANTOMS[name]
    except KeyError:
        raise ValueError(
            f"unknown phantom {name!r}; choose one of {', '.join(sorted(PHANTOMS))}"
        ) from None
    return build(image, generator, **kwargs)


__all__ = [
    "BRAINWEB_SUBJECTS",
    "COLD_REGION_TISSUE",
    "MU_BONE",
    "MU_LUNG",
    "MU_SOFT_TISSUE",
    "MU_WATER",
    "PHANTOMS",
    "SPHERE_DIAMETERS_MM",
    "SUV1_BQML",
    "Lesion",
    "Phantom",
    "add_cold_regions",
    "add_lesions",
    "brain_phantom",
    "brainweb_phantom",
    "image_phantom",
    "make_phantom",
    "nema_phantom",
    "torso_phantom",
    "torso_window_phantom",
    "varied_brain_phantom",
]
