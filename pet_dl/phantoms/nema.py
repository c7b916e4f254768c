"""NEMA NU 2 / IEC 61675-1 body phantom: six hot spheres, a lung insert, a warm background.

Interior cross-section (as in the standard): a half disc of radius 147 mm on top of a
140 x 77 mm block with two quarter discs of radius 77 mm, so 294 mm wide and 224 mm deep,
with 3 mm acrylic walls, 180 mm long. The lung insert (radius 25 mm, mu 0.0025 /mm, no
activity) runs along the axis of the half disc. The spheres (inner diameters 10, 13, 17,
22, 28 and 37 mm, no walls modelled) sit on a circle of radius 57.2 mm around that axis,
all centred in the plane z = 0, so a 2D grid at z = 0 cuts each through its centre.
The phantom is centred so that its bounding box is centred on x = y = 0; it spans
z = -110 .. +70 mm (the sphere plane is 70 mm from the lid, as in the standard).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from pet_dl.phantoms.base import (
    MU_LUNG,
    MU_PMMA,
    MU_WATER,
    Canvas,
    Lesion,
    Phantom,
    check_fov,
    seed_of,
    uniform,
)
from pet_dl.phantoms.shapes import Shape, box, elliptic_cylinder, sphere

if TYPE_CHECKING:
    from pet_dl.geometry import ImageGeometry

SPHERE_DIAMETERS_MM = (10.0, 13.0, 17.0, 22.0, 28.0, 37.0)
SPHERE_RING_RADIUS_MM = 57.2
LUNG_INSERT_RADIUS_MM = 25.0
BACKGROUND_BQML = 5300.0  # NEMA NU 2-2018: 5.3 kBq/mL background
AXIS_Y_MM = -35.0  # y of the lung-insert axis (centres the 224 mm depth on y = 0)
Z_RANGE_MM = (-110.0, 70.0)
WALL_MM = 3.0


def _body(extra: float) -> Shape:
    """Interior cross-section grown by ``extra`` mm, along the phantom's z range."""
    zc = 0.5 * (Z_RANGE_MM[0] + Z_RANGE_MM[1])
    hz = 0.5 * (Z_RANGE_MM[1] - Z_RANGE_MM[0]) + extra
    yc = AXIS_Y_MM
    upper = elliptic_cylinder((0.0, yc, zc), (147.0 + extra, 147.0 + extra), hz) & box(
        (0.0, yc + 100.0, zc), (200.0, 100.0, hz)
    )
    block = box((0.0, yc - 38.5, zc), (70.0, 38.5 + extra, hz))
    corners = box((0.0, yc - 50.0, zc), (200.0, 50.0, hz))
    shape = upper | block
    for side in (-1.0, 1.0):
        shape = shape | (
            elliptic_cylinder((side * 70.0, yc, zc), (77.0 + extra, 77.0 + extra), hz) & corners
        )
    return shape


def sphere_centres_mm() -> list[tuple[float, float, float]]:
    """Centres of the six spheres (in diameter order), world mm."""
    centres = []
    for k in range(len(SPHERE_DIAMETERS_MM)):
        angle = math.pi + k * math.pi / 3.0
        centres.append(
            (
                SPHERE_RING_RADIUS_MM * math.cos(angle),
                AXIS_Y_MM + SPHERE_RING_RADIUS_MM * math.sin(angle),
                0.0,
            )
        )
    return centres


def nema_phantom(
    image: ImageGeometry,
    generator: torch.Generator,
    *,
    background_bqml: float = BACKGROUND_BQML,
    sphere_to_background: float = 4.0,
    supersampling: int = 4,
) -> Phantom:
    """The IEC body phantom with hot spheres on ``image``.

    The geometry is fixed by the standard; the seed varies the background activity by
    +-10 % around ``background_bqml`` (a different filling), keeping the sphere ratio.

    Args:
        image: the grid (needs about 310 x 240 mm transaxially).
        generator: seeded torch generator.
        background_bqml: background activity, Bq/mL.
        sphere_to_background: sphere:background activity ratio (4 in NEMA NU 2).
        supersampling: sub-samples per axis for partial-volume voxels.

    Returns:
        Phantom whose labels 1..6 are the spheres 10..37 mm (``lesions`` gives each
        centre, diameter and activity); tissues wall, background, lung_insert, sphere.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if background_bqml <= 0 or sphere_to_background <= 0:
        raise ValueError("background_bqml and sphere_to_background must be positive")
    check_fov(image, 147.0 + WALL_MM, 112.0 + WALL_MM, "nema")
    bg = background_bqml * uniform(generator, 0.9, 1.1)
    hot = bg * sphere_to_background
    cv = Canvas(image, supersampling)
    cv.paint(_body(WALL_MM), 0.0, MU_PMMA, "wall")
    cv.paint(_body(0.0), bg, MU_WATER, "background")
    zc = 0.5 * (Z_RANGE_MM[0] + Z_RANGE_MM[1])
    hz = 0.5 * (Z_RANGE_MM[1] - Z_RANGE_MM[0])
    cv.paint(
        elliptic_cylinder((0.0, AXIS_Y_MM, zc), (LUNG_INSERT_RADIUS_MM,) * 2, hz),  # type: ignore[arg-type]
        0.0,
        MU_LUNG,
        "lung_insert",
    )
    lesions = []
    for k, (diameter, centre) in enumerate(zip(SPHERE_DIAMETERS_MM, sphere_centres_mm())):
        cv.paint(sphere(centre, diameter), hot, MU_WATER, "sphere", label=k + 1)
        lesions.append(Lesion(k + 1, f"sphere_{diameter:g}mm", centre, diameter, hot, bg))
    phantom = cv.to_phantom("nema", lesions=tuple(lesions), seed=seed_of(generator))
    phantom.extra.update(background_bqml=bg)
    return phantom
