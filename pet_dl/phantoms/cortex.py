"""A folded cortex: sulci and white matter drawn from smooth random fields.

The smooth brain (:func:`pet_dl.phantoms.brain_phantom`, ``cortex="smooth"``) has a grey
ring about 10 mm thick around an ellipsoid of white matter. A real cortex is a ribbon
2.5-3.5 mm thick folded into gyri: sulci reach 10-20 mm into the brain, each lined by
grey matter, with white matter filling the gyri up to about a ribbon's width from the
surface. :func:`folded_cortex` draws that pattern: the sulci are the zero set of a sum of
random plane waves (wavelengths 14-28 mm, so gyri 7-14 mm wide), cut off at a depth that
varies with a second field (9-22 mm); the white matter is everything deeper than the ribbon and
farther than a ribbon from a sulcus. Both fields are continuous functions of position, so
the shapes rasterise with partial volumes on any grid, 2D or 3D alike.
"""

from __future__ import annotations

import math

import torch

from pet_dl.phantoms.base import uniform
from pet_dl.phantoms.shapes import Shape, ellipsoid

NUM_WAVES = 24


class _Waves:
    """``n(p) = sum_k cos(w_k . p + phi_k)`` with random directions and wavelengths, and its gradient."""

    def __init__(self, generator: torch.Generator, wavelength_mm: tuple[float, float]) -> None:
        d = torch.randn(NUM_WAVES, 3, generator=generator, dtype=torch.float64)
        d = d / torch.linalg.vector_norm(d, dim=1, keepdim=True)
        lo, hi = wavelength_mm
        lam = lo + (hi - lo) * torch.rand(NUM_WAVES, generator=generator, dtype=torch.float64)
        self.omega = d * (2.0 * math.pi / lam)[:, None]  # (K, 3) rad/mm
        self.phase = 2.0 * math.pi * torch.rand(NUM_WAVES, generator=generator, dtype=torch.float64)

    def value(self, p: torch.Tensor) -> torch.Tensor:
        """``n`` at points ``(..., 3)`` mm, ``(...)``."""
        return torch.cos(p.to(torch.float64) @ self.omega.T + self.phase).sum(-1).to(p.dtype)

    def value_and_gradient(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` at points ``(..., 3)`` mm and ``|grad n|`` (1/mm), both ``(...)``."""
        arg = p.to(torch.float64) @ self.omega.T + self.phase  # (..., K)
        value = torch.cos(arg).sum(-1)
        grad = -(torch.sin(arg)[..., None] * self.omega).sum(-2)  # (..., 3)
        return value.to(p.dtype), torch.linalg.vector_norm(grad, dim=-1).to(p.dtype)


def smooth_random_field(
    generator: torch.Generator, points: torch.Tensor, wavelength_mm: tuple[float, float]
) -> torch.Tensor:
    """A zero-mean, unit-variance random field at ``points`` ``(..., 3)`` mm, ``(...)`` float64.

    The normalised sum of :data:`NUM_WAVES` plane waves with random directions, phases and
    wavelengths in ``wavelength_mm``: smooth on scales shorter than the shortest wavelength.
    """
    waves = _Waves(generator, wavelength_mm)
    return waves.value(points.to(torch.float64)) / math.sqrt(NUM_WAVES / 2.0)


def folded_cortex(
    centre: tuple[float, float, float],
    semi_axes: tuple[float, float, float],
    generator: torch.Generator,
) -> tuple[Shape, Shape]:
    """Sulci and white matter of a folded cortex inside the ellipsoidal brain surface.

    Random per generator: the fold pattern, ribbon thickness (2.5-3.5 mm), sulcus width
    (1-2 mm) and the depth of each sulcus (9-22 mm, varying along it).

    Args:
        centre: the brain's centre, world mm.
        semi_axes: semi-axes of the brain's outer (pial) surface, mm.
        generator: seeded torch generator.

    Returns:
        ``(sulci, white_matter)``: shapes inside the brain (paint the sulci as CSF over the
        grey matter, then the white matter). Their levels are distance estimates
        (``|n| / |grad n|`` near the zero set), halved to stay below 1 mm per mm.
    """
    brain = ellipsoid(centre, semi_axes)
    folds = _Waves(generator, (14.0, 28.0))
    depths = _Waves(generator, (30.0, 60.0))
    ribbon = uniform(generator, 2.5, 3.5)
    half_width = 0.5 * uniform(generator, 1.0, 2.0)
    shallow, deep = 9.0, 22.0

    def parts(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Depth below the surface, distance to the fold set, sulcal depth there (mm)."""
        depth = -brain.level(p)
        n, grad = folds.value_and_gradient(p)
        dist = n.abs() / grad.clamp_min(1e-6)
        m = depths.value(p)
        reach = shallow + (deep - shallow) * torch.sigmoid(1.5 * m / math.sqrt(NUM_WAVES / 2.0))
        return depth, dist, reach

    def sulci_level(p: torch.Tensor) -> torch.Tensor:
        depth, dist, reach = parts(p)
        return 0.5 * torch.maximum(dist - half_width, depth - reach)

    def white_level(p: torch.Tensor) -> torch.Tensor:
        depth, dist, reach = parts(p)
        beside = torch.minimum(half_width + ribbon - dist, reach + ribbon - depth)
        return 0.5 * torch.maximum(ribbon - depth, beside)

    sulci = Shape(sulci_level, brain.lower, brain.upper) & brain
    white = Shape(white_level, brain.lower, brain.upper) & brain
    return sulci, white
