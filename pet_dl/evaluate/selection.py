"""Choice of the classical baselines' free parameters on the validation split.

For each reduction factor: OSEM's iteration count and Gaussian post-filter FWHM, and
MAP-RDP's ``beta_rel``, each the grid point of lowest mean NRMSE against the true
activity (:func:`pet_dl.metrics.nrmse`) over the validation cases. Ties go to the
smaller value (fewer iterations, then the smaller FWHM; the smaller beta).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pet_dl.evaluate.data import EvalSet, factor_key
from pet_dl.evaluate.methods import map_reconstruction, osem_trajectory


@dataclass(frozen=True)
class OsemChoice:
    """OSEM parameters chosen on validation for one factor, with the searched grid.

    ``grid[(iterations, fwhm_mm)]`` is the mean validation NRMSE (fraction).
    """

    factor: float
    iterations: int
    fwhm_mm: float
    subsets: int
    grid: dict[tuple[int, float], float] = field(repr=False)

    @property
    def nrmse(self) -> float:
        """Mean validation NRMSE of the chosen point."""
        return self.grid[(self.iterations, self.fwhm_mm)]


@dataclass(frozen=True)
class MapChoice:
    """MAP-RDP ``beta_rel`` (:func:`map_reconstruction`, mm) chosen on validation; ``grid[beta]`` = NRMSE."""

    factor: float
    beta: float
    iterations: int
    subsets: int
    grid: dict[float, float] = field(repr=False)

    @property
    def nrmse(self) -> float:
        """Mean validation NRMSE of the chosen beta."""
        return self.grid[self.beta]


def mean_nrmse(images: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over the batch of :func:`pet_dl.metrics.nrmse`: images and target ``(B, nx, ny, nz)``."""
    from pet_dl.metrics import nrmse

    return float(nrmse(images, target).mean())


def select_osem(
    val: EvalSet, factor: float, iterations: Sequence[int], fwhms_mm: Sequence[float], subsets: int
) -> OsemChoice:
    """The (iterations, post-filter FWHM) of lowest mean NRMSE on ``val`` at ``factor``.

    Args:
        val: validation cases.
        factor: reduction factor (one of ``val.factors``).
        iterations: OSEM iteration counts to try (>= 1).
        fwhms_mm: Gaussian post-filter FWHMs to try, mm (0 = none).
        subsets: OSEM view subsets.

    Raises:
        ValueError: an empty or invalid grid, or an unknown factor.
    """
    from pet_dl.recon import gaussian_postfilter

    its = sorted({int(i) for i in iterations})
    if not its or its[0] < 1:
        raise ValueError(f"OSEM iteration grid must hold integers >= 1, got {list(iterations)}")
    fwhms = sorted({float(f) for f in fwhms_mm})
    if not fwhms or fwhms[0] < 0:
        raise ValueError(f"post-filter FWHM grid must hold values >= 0 mm, got {list(fwhms_mm)}")
    traj = osem_trajectory(val.batch(factor), its[-1], subsets)
    grid = {
        (it, fw): mean_nrmse(gaussian_postfilter(traj[it - 1], val.image, fw), val.target)
        for it in its for fw in fwhms
    }
    best = min(grid, key=lambda key: (grid[key], key))
    return OsemChoice(factor_key(val.factors, factor), best[0], best[1], subsets, grid)


def select_map(
    val: EvalSet, factor: float, betas: Sequence[float], iterations: int, subsets: int,
    gamma: float = 2.0,
) -> MapChoice:
    """The ``beta_rel`` (from ``betas``, mm) of lowest mean NRMSE on ``val`` at ``factor``.

    Args:
        val: validation cases.
        factor: reduction factor (one of ``val.factors``).
        betas: ``beta_rel`` values to try (>= 0, mm).
        iterations, subsets, gamma: MAP-RDP settings (:func:`map_reconstruction`).

    Raises:
        ValueError: an empty or negative grid, or an unknown factor.
    """
    grid_betas = sorted({float(b) for b in betas})
    if not grid_betas or grid_betas[0] < 0:
        raise ValueError(f"beta grid must hold values >= 0, got {list(betas)}")
    batch = val.batch(factor)
    grid = {
        b: mean_nrmse(map_reconstruction(batch, b, iterations, subsets, gamma), val.target)
        for b in grid_betas
    }
    best = min(grid, key=lambda b: (grid[b], b))
    return MapChoice(factor_key(val.factors, factor), best, iterations, subsets, grid)
