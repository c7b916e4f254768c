"""FDG torso / whole-body phantom: body contour, fat, lungs, heart, liver, spleen, kidneys,
bladder, aorta and spine.

World axes are RAS+ (+x patient left, +y anterior, +z superior). Along z the body runs
from the pelvis (z about -480 mm) to the neck (z about +300 mm). The plane z = 0 cuts the
lung bases, the heart, the liver dome and the spine, so a 2D grid shows a lower-thorax
slice; ``bed_offset_mm`` shifts the anatomy along z to image other levels (kidneys near
z = -150, bladder near z = -400 at offset 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from pet_dl.phantoms.base import (
    MU_BONE,
    MU_FAT,
    MU_LUNG,
    MU_SOFT_TISSUE,
    MU_SPONGY_BONE,
    SUV1_BQML,
    Canvas,
    Phantom,
    check_fov,
    seed_of,
    uniform,
)
from pet_dl.phantoms.shapes import ellipsoid, elliptic_cylinder

if TYPE_CHECKING:
    from pet_dl.geometry import ImageGeometry

# Typical FDG SUVs (mean) at 60 min.
SUV = {
    "fat": 0.35,
    "soft_tissue": 0.8,
    "lung": 0.4,
    "myocardium": 3.0,
    "blood": 1.6,
    "liver": 2.3,
    "spleen": 1.8,
    "kidney": 3.5,
    "bladder": 15.0,
    "marrow": 1.3,
    "bone": 0.4,
}


def _uniform_draws(generator: torch.Generator, suv1_bqml: float) -> Callable[[float, float], float]:
    """Check a phantom's generator and SUV scale; ``u(lo, hi)``: one uniform draw from it."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if suv1_bqml <= 0:
        raise ValueError(f"suv1_bqml must be positive, got {suv1_bqml}")
    return lambda lo, hi: uniform(generator, lo, hi)


def torso_phantom(
    image: ImageGeometry,
    generator: torch.Generator,
    *,
    suv1_bqml: float = SUV1_BQML,
    bed_offset_mm: float = 0.0,
    supersampling: int = 4,
    arms: bool = False,
) -> Phantom:
    """A randomised FDG torso on ``image``.

    Random per seed: body width (-10..+12 %) and depth (-10..+15 %), organ positions
    (+-5 mm) and sizes (+-10 %), organ uptakes (+-20 %; myocardium x0.4..2 and bladder
    x0.5..2, as in patients).

    ``arms=True`` adds the arms down at the body's sides, as in a whole-body scan with the
    arms not raised: each a separate object (a gap of air from the body), muscle in a fat
    rim around the humerus, 35-50 mm in radius, 10-40 mm from the body; radius and gap
    shrink (to 5 mm of gap) where the arms would reach beyond :data:`ARMS_REACH_MM` from the axis (then the grid must cover
    that far). They are drawn after everything else, so a
    seed gives the same torso with or without them.

    Args:
        image: the grid (needs about 390 x 260 mm transaxially).
        generator: seeded torch generator.
        suv1_bqml: activity of SUV 1, Bq/mL (370 MBq in 70 kg after 60 min: about 4 kBq/mL).
        bed_offset_mm: anatomy shifted by minus this along z (image z = anatomy z - offset).
        supersampling: sub-samples per axis for partial-volume voxels.
        arms: add the arms at the body's sides.

    Returns:
        Phantom with tissues fat, soft_tissue, lung, liver, spleen, kidney, bladder,
        aorta, myocardium, blood, spine_cortex, marrow (and arm_cortex, arm_marrow with
        ``arms``); no lesions.
    """
    u = _uniform_draws(generator, suv1_bqml)

    def at(x: float, y: float, z: float, d: float = 5.0) -> tuple[float, float, float]:
        return (x + u(-d, d), y + u(-d, d), z - bed_offset_mm + u(-d, d))

    def s(v: float) -> float:
        return v * u(0.9, 1.1)

    def act(name: str, lo: float = 0.8, hi: float = 1.2) -> float:
        return SUV[name] * suv1_bqml * u(lo, hi)

    w, d = 170.0 * u(0.9, 1.12), 110.0 * u(0.9, 1.15)
    check_fov(image, ARMS_REACH_MM if arms else w + 5.0, d + 5.0, "torso with arms" if arms else "torso")
    z0 = -90.0 - bed_offset_mm
    cv = Canvas(image, supersampling)
    cv.paint(elliptic_cylinder((0.0, 0.0, z0), (w, d), 390.0), act("fat"), MU_FAT, "fat")
    inner = (w - u(8.0, 25.0), d - u(8.0, 20.0))
    cv.paint(
        elliptic_cylinder((0.0, 0.0, z0), inner, 390.0),
        act("soft_tissue"),
        MU_SOFT_TISSUE,
        "soft_tissue",
    )

    cv.paint(
        ellipsoid(at(-0.4 * w, 0.02 * d, -60.0), (s(0.4 * w), s(0.6 * d), s(100.0)), 0.2),
        act("liver"),
        MU_SOFT_TISSUE,
        "liver",
    )
    cv.paint(
        ellipsoid(at(0.55 * w, -0.3 * d, -50.0), (s(25.0), s(45.0), s(50.0)), -0.5),
        act("spleen"),
        MU_SOFT_TISSUE,
        "spleen",
    )
    for side in (-1.0, 1.0):
        cv.paint(
            ellipsoid(at(side * 0.4 * w, -0.05 * d, 90.0), (s(0.3 * w), s(0.55 * d), s(130.0))),
            act("lung"),
            MU_LUNG,
            "lung",
        )
        cv.paint(
            ellipsoid(at(side * 65.0, -0.45 * d, -150.0), (s(28.0), s(32.0), s(55.0)), side * 0.35),
            act("kidney", 0.7, 1.3),
            MU_SOFT_TISSUE,
            "kidney",
        )
    heart_c = at(0.15 * w, 0.25 * d, 30.0)
    heart = (s(52.0), s(44.0), s(50.0))
    cv.paint(
        ellipsoid(heart_c, heart, 0.5), act("myocardium", 0.4, 2.0), MU_SOFT_TISSUE, "myocardium"
    )
    cv.paint(
        ellipsoid(heart_c, (heart[0] - 11.0, heart[1] - 11.0, heart[2] - 11.0), 0.5),
        act("blood"),
        MU_SOFT_TISSUE,
        "blood",
    )
    aorta = 12.0 * u(0.85, 1.15)
    cv.paint(
        elliptic_cylinder(at(0.1 * w, -0.45 * d, -100.0, 3.0), (aorta, aorta), 160.0),
        act("blood"),
        MU_SOFT_TISSUE,
        "aorta",
    )
    bl = u(0.7, 1.3)
    cv.paint(
        ellipsoid(at(0.0, 0.2 * d, -400.0), (45.0 * bl, 35.0 * bl, 35.0 * bl)),
        act("bladder", 0.5, 2.0),
        MU_SOFT_TISSUE,
        "bladder",
    )

    spine_c = (u(-3.0, 3.0), -d + 40.0 + u(-4.0, 4.0), z0)
    cv.paint(
        elliptic_cylinder(spine_c, (s(20.0), s(18.0)), 390.0), act("bone"), MU_BONE, "spine_cortex"
    )
    cv.paint(
        elliptic_cylinder(spine_c, (15.0, 13.0), 390.0), act("marrow"), MU_SPONGY_BONE, "marrow"
    )
    if arms:
        _paint_arms(cv, w, d, z0, u, act)
    phantom = cv.to_phantom("torso", seed=seed_of(generator))
    phantom.extra.update(suv1_bqml=suv1_bqml, bed_offset_mm=bed_offset_mm)
    return phantom


#: the arms' outer edge lies within this distance of the axis (mm): inside the mMR's bins (294 mm)
ARMS_REACH_MM = 275.0


def _paint_arms(
    cv: Canvas, w: float, d: float, z0: float, u, act,  # noqa: ANN001
    radius_mm: tuple[float, float] = (35.0, 50.0),
    gap_mm: tuple[float, float] = (10.0, 40.0),
    shift_mm: tuple[float, float] = (-15.0, 15.0),
) -> None:
    """Paint two arms beside a body of semi-axes ``(w, d)`` mm (see :func:`torso_phantom`).

    Each arm: radius drawn from ``radius_mm``, an air gap from ``gap_mm`` to the body (both
    shrunk to keep within :data:`ARMS_REACH_MM`), its centre ``-0.1 d`` plus a draw from
    ``shift_mm`` front-back.
    """
    for side in (-1.0, 1.0):
        radius = min(u(*radius_mm), 0.5 * (ARMS_REACH_MM - w - 5.0))
        gap = min(u(*gap_mm), ARMS_REACH_MM - w - 2.0 * radius)
        centre = (side * (w + gap + radius), -0.1 * d + u(*shift_mm), z0)
        cv.paint(elliptic_cylinder(centre, (radius, radius * u(0.9, 1.1)), 390.0), act("fat"), MU_FAT, "fat")
        inner = radius - u(4.0, 10.0)
        cv.paint(elliptic_cylinder(centre, (inner, inner), 390.0), act("soft_tissue"), MU_SOFT_TISSUE, "soft_tissue")
        bone = (centre[0] + u(-5.0, 5.0), centre[1] + u(-5.0, 5.0), z0)
        cv.paint(elliptic_cylinder(bone, (11.0, 11.0), 390.0), act("bone"), MU_BONE, "arm_cortex")
        cv.paint(elliptic_cylinder(bone, (6.0, 6.0), 390.0), act("fat"), MU_SPONGY_BONE, "arm_marrow")


#: FDG SUVs of the neck's own tissues (the rest as in :data:`SUV`)
NECK_SUV = {"thyroid": 1.8, "trachea": 0.05}


def neck_arms_phantom(
    image: ImageGeometry,
    generator: torch.Generator,
    *,
    suv1_bqml: float = SUV1_BQML,
) -> Phantom:
    """A randomised neck with the arms raised beside it: three small objects far apart.

    A slice through the neck of a patient scanned with the arms up (as for prone breast or
    head-and-neck PET): a neck of 90-150 mm across and 120-190 mm front to back (fat rim,
    muscle, a cervical vertebra with marrow, the trachea, two thyroid lobes, the carotids and
    jugulars), and an upper arm on each side, 56-90 mm across, 40-140 mm of air from the neck
    and shifted up to 0.8 of the neck's depth front or back. The whole scene spans 320-550 mm
    with most of it air: a wide grid that a body hardly fills, unlike :func:`torso_phantom`
    with ``arms=True`` (a 310-380 mm torso with the arms close beside it). Random per seed as
    there: sizes, positions, uptakes (+-20 %; thyroid x0.5-2).

    Args:
        image: the grid; it must cover +-:data:`ARMS_REACH_MM` across and +-135 mm front-back.
        generator: seeded torch generator.
        suv1_bqml: activity of SUV 1, Bq/mL.

    Returns:
        Phantom named ``"neck_arms"`` with tissues fat, soft_tissue, spine_cortex, marrow,
        trachea, thyroid, blood, arm_cortex, arm_marrow; no lesions.
    """
    u = _uniform_draws(generator, suv1_bqml)

    def act(name: str, lo: float = 0.8, hi: float = 1.2) -> float:
        return {**SUV, **NECK_SUV}[name] * suv1_bqml * u(lo, hi)

    w, d = u(45.0, 75.0), u(60.0, 95.0)
    check_fov(image, ARMS_REACH_MM, 135.0, "neck with arms")
    z0 = -200.0
    cv = Canvas(image, supersampling=4)
    cv.paint(elliptic_cylinder((0.0, 0.0, z0), (w, d), 400.0), act("fat"), MU_FAT, "fat")
    inner = (w - u(5.0, 12.0), d - u(5.0, 12.0))
    cv.paint(elliptic_cylinder((0.0, 0.0, z0), inner, 400.0), act("soft_tissue"), MU_SOFT_TISSUE, "soft_tissue")
    spine = (u(-3.0, 3.0), -0.35 * d + u(-5.0, 5.0), z0)
    cv.paint(elliptic_cylinder(spine, (u(14.0, 18.0), u(12.0, 16.0)), 400.0), act("bone"), MU_BONE, "spine_cortex")
    cv.paint(elliptic_cylinder(spine, (10.0, 8.0), 400.0), act("marrow"), MU_SPONGY_BONE, "marrow")
    trachea = (u(-3.0, 3.0), 0.45 * d, z0)
    radius = u(8.0, 11.0)
    for side in (-1.0, 1.0):
        lobe = (trachea[0] + side * (radius + u(8.0, 12.0)), trachea[1] - u(0.0, 8.0), z0)
        cv.paint(elliptic_cylinder(lobe, (u(6.0, 10.0), u(8.0, 14.0)), 400.0), act("thyroid", 0.5, 2.0),
                 MU_SOFT_TISSUE, "thyroid")
        for lateral in (0.35, 0.5):  # carotid, then jugular
            vessel = (side * lateral * w, 0.1 * d + u(-5.0, 5.0), z0)
            r = u(3.5, 5.5)
            cv.paint(elliptic_cylinder(vessel, (r, r), 400.0), act("blood"), MU_SOFT_TISSUE, "blood")
    cv.paint(elliptic_cylinder(trachea, (radius, radius), 400.0), act("trachea"), MU_LUNG, "trachea")
    _paint_arms(cv, w, d, z0, u, act, radius_mm=(28.0, 45.0), gap_mm=(40.0, 140.0),
                shift_mm=(-0.8 * d, 0.8 * d))
    phantom = cv.to_phantom("neck_arms", seed=seed_of(generator))
    phantom.extra.update(suv1_bqml=suv1_bqml)
    return phantom


def torso_window_phantom(
    image: ImageGeometry,
    generator: torch.Generator,
    *,
    suv1_bqml: float = SUV1_BQML,
    bed_offset_range_mm: tuple[float, float] = (-200.0, 150.0),
) -> Phantom:
    """A window of a randomised torso as wide as ``image``: a body for a brain-sized field of view.

    The torso of :func:`torso_phantom` (about 390 x 260 mm) does not fit a brain scanner's
    reconstruction grid. This draws a torso and an axial position (``bed_offset_mm`` uniform
    in ``bed_offset_range_mm``: from the kidneys to the upper lungs), paints it on a grid
    with ``image``'s voxels that holds the whole body, and keeps a window of ``image``'s
    size at a random left-right position inside the body (front-back: centred); what lies
    outside the window is dropped, an object that fits the field of view. Training and
    evaluating a brain network on such windows tells whether it has learned brains or PET.

    Args:
        image: the grid of the window (any size; 2D or 3D).
        generator: seeded torch generator.
        suv1_bqml: activity of SUV 1, Bq/mL.
        bed_offset_range_mm: range of the torso's axial position (``torso_phantom``'s
            ``bed_offset_mm``).

    Returns:
        Phantom named ``"torso_window"`` on ``image`` (the torso's tissues, no lesions).
    """
    from pet_dl.geometry import ImageGeometry

    vx, vy, vz = (float(v) for v in image.voxel_size_mm)
    nx, ny = int(image.shape[0]), int(image.shape[1])
    big_nx = max(nx, 2 * int(200.0 / vx + 1))  # holds +-200 mm: the widest torso and its margin
    big_ny = max(ny, 2 * int(135.0 / vy + 1))
    big = ImageGeometry(
        (big_nx, big_ny, image.shape[2]),
        (vx, vy, vz),
        (-(big_nx - 1) * vx / 2, -(big_ny - 1) * vy / 2, float(image.origin_mm[2])),
    )
    offset = uniform(generator, *bed_offset_range_mm)
    torso = torso_phantom(big, generator, suv1_bqml=suv1_bqml, bed_offset_mm=offset)
    body = (torso.activity > 0).flatten(1).any(1)  # (big_nx,): columns with activity
    xs = torch.nonzero(body).flatten()
    lo, hi = int(xs.min()), int(xs.max()) - nx + 1
    if hi < lo:  # the body is narrower than the window: centre it
        lo = hi = max(0, (int(xs.min()) + int(xs.max()) - nx + 1) // 2)
    i0 = min(lo + int((hi - lo + 1) * uniform(generator, 0.0, 1.0)), big_nx - nx)
    j0 = (big_ny - ny) // 2
    window = (slice(i0, i0 + nx), slice(j0, j0 + ny))
    phantom = Phantom(
        name="torso_window",
        image=image,
        activity=torso.activity[window].contiguous(),
        mu=torso.mu[window].contiguous(),
        labels=torso.labels[window].contiguous(),
        tissue=torso.tissue[window].contiguous(),
        tissues=dict(torso.tissues),
        seed=torso.seed,
    )
    phantom.extra.update(suv1_bqml=suv1_bqml, bed_offset_mm=offset, window_x_mm=(i0 - (big_nx - nx) / 2) * vx)
    return phantom
