"""FDG brain phantom: scalp, skull, CSF, cortical grey matter, white matter, deep grey nuclei.

The head is centred on the origin; the plane z = 0 cuts the lateral ventricles and the
basal ganglia, so a 2D grid (one slice at z = 0) shows a typical transverse FDG slice.
World axes are RAS+: +x patient left, +y anterior, +z superior.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from pet_dl.phantoms.base import (
    MU_BONE,
    MU_SOFT_TISSUE,
    MU_WATER,
    Canvas,
    Phantom,
    check_fov,
    seed_of,
    uniform,
)
from pet_dl.phantoms.cortex import folded_cortex, smooth_random_field
from pet_dl.phantoms.shapes import box, ellipsoid

if TYPE_CHECKING:
    from pet_dl.geometry import ImageGeometry

GREY_MATTER_BQML = 16000.0  # typical for 370 MBq FDG at 60 min
GREY_WHITE_RATIO = 4.0
BRAIN_TISSUES = ("grey_matter", "white_matter", "deep_grey", "cerebellum")


def brain_phantom(
    image: ImageGeometry,
    generator: torch.Generator,
    *,
    grey_matter_bqml: float = GREY_MATTER_BQML,
    grey_white_ratio: float = GREY_WHITE_RATIO,
    supersampling: int = 4,
    cortex: str = "smooth",
    heterogeneity: float = 0.0,
) -> Phantom:
    """A randomised FDG brain on ``image``.

    Random per seed: head size and shape (+-8 %), structure positions (+-2 mm) and sizes,
    cortical sulci (number, places, depth), grey-matter uptake (+-15 % around
    ``grey_matter_bqml``) and the grey:white ratio (+-10 % around ``grey_white_ratio``).
    With ``cortex="folded"`` the grey matter is a folded ribbon 2.5-3.5 mm thick around
    white-matter gyri (:func:`pet_dl.phantoms.cortex.folded_cortex`) instead of a ring about
    10 mm thick with 10-18 radial sulci around an ellipsoid of white matter.

    Args:
        image: the grid (needs about 180 x 220 mm transaxially).
        generator: seeded torch generator; the same seed gives the same phantom.
        grey_matter_bqml: mean cortical grey-matter activity, Bq/mL.
        grey_white_ratio: mean grey:white activity ratio.
        supersampling: sub-samples per axis for partial-volume voxels.
        cortex: ``"smooth"`` (the default; the shipped model's training phantoms) or
            ``"folded"`` (make_phantom's ``"brain_folded"``).
        heterogeneity: relative standard deviation of a smooth random uptake field
            (wavelengths 15-60 mm, clipped to 0.5-1.5) that multiplies the activity of
            grey and white matter, deep grey nuclei and cerebellum (0: uniform tissues;
            drawn after everything else, so the rest of the phantom does not change).

    Returns:
        Phantom with tissues scalp, skull, csf, grey_matter, white_matter, deep_grey,
        cerebellum; activity in Bq/mL, mu in 1/mm at 511 keV; no lesions.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if grey_matter_bqml <= 0 or grey_white_ratio <= 0:
        raise ValueError("grey_matter_bqml and grey_white_ratio must be positive")
    if cortex not in ("smooth", "folded"):
        raise ValueError(f"cortex must be 'smooth' or 'folded', got {cortex!r}")
    if not 0.0 <= heterogeneity <= 0.5:
        raise ValueError(f"heterogeneity must lie in [0, 0.5], got {heterogeneity}")
    g = generator

    def u(lo: float, hi: float) -> float:
        return uniform(g, lo, hi)

    def jit(c: tuple[float, float, float], d: float = 2.0) -> tuple[float, float, float]:
        return (c[0] + u(-d, d), c[1] + u(-d, d), c[2] + u(-d, d))

    a, b, c = 76.0 * u(0.92, 1.08), 96.0 * u(0.92, 1.08), 100.0 * u(0.95, 1.05)
    check_fov(image, a + 2.0, b + 2.0, "brain")
    grey = grey_matter_bqml * u(0.85, 1.15)
    white = grey / (grey_white_ratio * u(0.9, 1.1))
    csf = 0.0125 * grey
    centre = (0.0, 0.0, -10.0)

    def shell(inset: float) -> tuple[float, float, float]:
        return (a - inset, b - inset, c - inset)

    cv = Canvas(image, supersampling)
    cv.paint(ellipsoid(centre, shell(0.0)), 0.12 * grey, MU_SOFT_TISSUE, "scalp")
    cv.paint(ellipsoid(centre, shell(5.0)), 0.05 * grey, MU_BONE, "skull")
    cv.paint(ellipsoid(centre, shell(11.0)), csf, MU_WATER, "csf")
    grey_axes = shell(13.0)
    cv.paint(ellipsoid(centre, grey_axes), grey, MU_WATER, "grey_matter")

    if cortex == "folded":
        sulci, white_matter = folded_cortex(centre, grey_axes, g)
        cv.paint(sulci, csf, MU_WATER, "csf")
        cv.paint(white_matter, white, MU_WATER, "white_matter")
    else:
        # Sulci: thin CSF clefts reaching in from the cortical surface, radially oriented.
        for _ in range(int(u(10, 19))):
            theta = u(0.0, 2.0 * math.pi)
            zc = u(-10.0, 40.0)
            scale = math.sqrt(max(1.0 - ((zc - centre[2]) / grey_axes[2]) ** 2, 0.2))
            px = grey_axes[0] * scale * math.cos(theta)
            py = grey_axes[1] * scale * math.sin(theta)
            depth = u(6.0, 14.0)
            angle = math.atan2(py, px) - math.pi / 2.0
            cleft = ellipsoid((px, py, zc), (u(1.0, 1.8), depth, u(10.0, 20.0)), angle)
            cv.paint(cleft & ellipsoid(centre, grey_axes), csf, MU_WATER, "csf")

        cv.paint(
            ellipsoid(jit(centre), (a - 23.0 * u(0.9, 1.1), b - 25.0 * u(0.9, 1.1), c - 28.0)),
            white,
            MU_WATER,
            "white_matter",
        )
    # Interhemispheric fissure: anterior and posterior at the ventricle level, full above.
    brain = ellipsoid(centre, grey_axes)
    cv.paint(box((0.0, b * 0.6, 15.0), (1.2, b * 0.4, 40.0)) & brain, csf, MU_WATER, "csf")
    cv.paint(box((0.0, -b * 0.6, 15.0), (1.2, b * 0.35, 40.0)) & brain, csf, MU_WATER, "csf")
    cv.paint(box((0.0, 0.0, 70.0), (1.2, b, 30.0)) & brain, csf, MU_WATER, "csf")

    deep = grey * u(0.8, 1.0)
    for side in (-1.0, 1.0):
        cv.paint(
            ellipsoid(jit((side * 12.0, 18.0, 2.0)), (5.0, 9.0, 10.0)), deep, MU_WATER, "deep_grey"
        )
        cv.paint(
            ellipsoid(jit((side * 25.0, 5.0, 0.0)), (5.5 * u(0.9, 1.1), 13.0, 10.0), side * 0.2),
            deep,
            MU_WATER,
            "deep_grey",
        )
        cv.paint(
            ellipsoid(jit((side * 10.0, -12.0, 2.0)), (8.0, 11.0, 9.0)), deep, MU_WATER, "deep_grey"
        )
    vent = u(0.7, 1.4)  # ventricle size varies with age
    for side in (-1.0, 1.0):
        cv.paint(
            ellipsoid(jit((side * 8.0, 6.0, 5.0)), (4.0 * vent, 24.0, 12.0), -side * 0.15),
            csf,
            MU_WATER,
            "csf",
        )
    cv.paint(
        ellipsoid(jit((0.0, -55.0, -48.0)), (45.0, 26.0, 18.0)), 0.75 * grey, MU_WATER, "cerebellum"
    )
    if heterogeneity > 0:
        _modulate_uptake(cv, heterogeneity, g)
    phantom = cv.to_phantom("brain" if cortex == "smooth" else "brain_folded", seed=seed_of(g))
    phantom.extra.update(grey_matter_bqml=grey, white_matter_bqml=white)
    return phantom


def _modulate_uptake(cv: Canvas, heterogeneity: float, generator: torch.Generator) -> None:
    """Multiply the brain tissues' activity by ``1 + heterogeneity * field`` (clipped to 0.5-1.5)."""
    image = cv.image
    axes = [torch.as_tensor(image.voxel_centers(k), dtype=torch.float64) for k in range(3)]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (nx, ny, nz, 3) mm
    field = smooth_random_field(generator, points, (15.0, 60.0))
    gain = (1.0 + heterogeneity * field).clamp(0.5, 1.5)
    brain = torch.zeros_like(cv.tissue, dtype=torch.bool)
    for name in BRAIN_TISSUES:
        if name in cv.tissues:
            brain |= cv.tissue == cv.tissues[name]
    cv.activity[brain] *= gain[brain]


def varied_brain_phantom(
    image: ImageGeometry, generator: torch.Generator, *, supersampling: int = 4
) -> Phantom:
    """A brain of wider variety than ``brain`` or ``brain_folded``: make_phantom's ``"brain_varied"``.

    Per seed: a smooth or a folded cortex (even odds), a mean grey:white ratio drawn from
    2.5-5 (instead of 4 +- 10 %) and a smooth random uptake field of 5-25 % relative
    standard deviation on the brain's tissues (``heterogeneity``), so that no two regions
    of one tissue need read alike. Training data for networks that should not snap every
    brain onto two activity levels.

    Returns:
        as :func:`brain_phantom`, named ``"brain_varied"``.
    """
    cortex = "folded" if uniform(generator, 0.0, 1.0) < 0.5 else "smooth"
    ratio = uniform(generator, 2.5, 5.0)
    heterogeneity = uniform(generator, 0.05, 0.25)
    phantom = brain_phantom(
        image, generator, grey_white_ratio=ratio, supersampling=supersampling, cortex=cortex,
        heterogeneity=heterogeneity,
    )
    phantom.name = "brain_varied"
    phantom.extra.update(heterogeneity=heterogeneity, folded=float(cortex == "folded"))
    return phantom
