"""Evaluation data: noise realisations of a recipe's phantoms at every reduction factor.

Realisation ``k`` of phantom seed ``s`` is a full-dose Poisson scan with noise seed
``(s + 1) * 1_000_003 + k``, thinned binomially to ``1 / factor`` for every factor
(factor 1 = the full-dose scan itself). The phantoms come from
:func:`pet_dl.recipes.phantom_of_seed`, so a seed gives the same phantom as in the
training data; :func:`check_held_out` keeps test phantoms out of the seeds used before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from pet_dl.geometry import ImageGeometry, SinogramGeometry
    from pet_dl.models import ReconBatch
    from pet_dl.phantoms import Phantom


@dataclass
class EvalSet:
    """Simulated scans of one split, grouped by reduction factor.

    Case ``i`` (of ``B = len(seeds) * realisations``) is phantom ``case_seed[i]``,
    noise realisation ``case_realisation[i]``; every factor has the same cases.

    Attributes:
        sinogram, image: the recipe's geometry.
        psf_fwhm_mm: resolution model FWHM, mm.
        factors: dose reduction factors (1.0 = full dose).
        prompts, additive: per factor, ``(B, *sino)`` counts.
        calibration: per factor, ``(B,)`` counts per (Bq/mL x mm).
        multiplicative: ``(B, *sino)`` attenuation x normalisation, dimensionless.
        target: ``(B, nx, ny, nz)`` true activity, Bq/mL.
        lesion_mask: ``(B, nx, ny, nz)`` int64 labels (0 background).
        lesion_diameters: per case, label -> diameter in mm of each hot lesion (contrast > 1).
        case_seed, case_realisation: phantom seed and noise realisation of each case.
        projector: optional explicit projector (tests); else the Joseph projector.
    """

    sinogram: SinogramGeometry
    image: ImageGeometry
    psf_fwhm_mm: float
    factors: tuple[float, ...]
    prompts: dict[float, torch.Tensor]
    additive: dict[float, torch.Tensor]
    calibration: dict[float, torch.Tensor]
    multiplicative: torch.Tensor
    target: torch.Tensor
    lesion_mask: torch.Tensor
    lesion_diameters: list[dict[int, float]]
    case_seed: list[int]
    case_realisation: list[int]
    projector: nn.Module | None = None

    @property
    def num_cases(self) -> int:
        """Number of cases ``B`` (phantoms x realisations)."""
        return len(self.case_seed)

    @property
    def realisations(self) -> int:
        """Number of distinct noise realisations."""
        return len(set(self.case_realisation))

    def batch(self, factor: float, index: Sequence[int] | slice = slice(None)) -> ReconBatch:
        """The :class:`pet_dl.models.ReconBatch` of the cases ``index`` at ``factor``.

        Raises:
            ValueError: ``factor`` is not one of :attr:`factors`.
        """
        from pet_dl.models import ReconBatch

        f = factor_key(self.factors, factor)
        prompts = self.prompts[f][index]
        return ReconBatch(
            prompts=prompts,
            multiplicative=self.multiplicative[index],
            additive=self.additive[f][index],
            calibration=self.calibration[f][index],
            dose_fraction=torch.full((prompts.shape[0],), 1.0 / f),
            sinogram=self.sinogram,
            image=self.image,
            psf_fwhm_mm=self.psf_fwhm_mm,
            projector=self.projector,
        )


def factor_key(factors: Sequence[float], factor: float) -> float:
    """The entry of ``factors`` equal to ``factor`` (relative tolerance 1e-6).

    Raises:
        ValueError: ``factor`` is not in ``factors``.
    """
    for f in factors:
        if math.isclose(f, float(factor), rel_tol=1e-6):
            return f
    raise ValueError(f"reduction factor {factor} is not in the evaluation set {list(factors)}")


def check_held_out(test_seeds: Iterable[int], used_seeds: Mapping[str, Iterable[int]]) -> None:
    """Refuse test phantoms that were used for training or parameter selection.

    Args:
        test_seeds: phantom seeds of the test set.
        used_seeds: e.g. ``{"train": range(...), "val": range(...)}`` (a ``range`` is
            checked without being expanded).

    Raises:
        ValueError: naming the split and up to 5 shared seeds.
    """
    test = sorted({int(s) for s in test_seeds})
    for name, seeds in used_seeds.items():
        used = seeds if isinstance(seeds, range) else {int(s) for s in seeds}
        shared = [s for s in test if s in used]
        if shared:
            raise ValueError(
                f"test set overlaps the {name} phantoms ({len(shared)} shared seeds, e.g. "
                f"{shared[:5]}): evaluate on held-out phantoms only"
            )


def simulate_eval_set(
    recipe: Mapping[str, Any],
    seeds: Sequence[int],
    realisations: int,
    factors: Sequence[float],
    progress: bool = False,
    phantom_of: Callable[[int], Phantom] | None = None,
) -> EvalSet:
    """Simulate ``realisations`` noise realisations of each phantom seed at each factor.

    Realisation ``k`` of seed ``s`` is a full-dose Poisson scan with noise seed
    ``(s + 1) * 1_000_003 + k`` thinned binomially to ``1 / factor``.

    Args:
        recipe: a validated recipe (:func:`pet_dl.recipes.load_recipe`).
        seeds: phantom seeds.
        realisations: noise realisations per phantom (>= 1).
        factors: dose reduction factors (>= 1; 1 = the full-dose scan itself).
        progress: show a progress bar.
        phantom_of: seed -> phantom on the recipe's image grid (an external anatomy,
            e.g. :func:`pet_dl.phantoms.image_phantom`); default
            :func:`pet_dl.recipes.phantom_of_seed`. The recipe still gives the scanner
            and the simulation.

    Raises:
        ValueError: no seeds, ``realisations < 1`` or a factor below 1.
    """
    from tqdm.auto import tqdm

    from pet_dl.recipes import full_dose_scan, phantom_of_seed, psf_of_recipe, recipe_geometry
    from pet_dl.simulate import thin_scan

    if realisations < 1:
        raise ValueError(f"realisations must be >= 1, got {realisations}")
    if not seeds:
        raise ValueError("no phantom seeds to evaluate")
    factors = tuple(float(f) for f in factors)
    if not factors or any(not f >= 1 for f in factors):
        raise ValueError(f"reduction factors must be >= 1, got {list(factors)}")
    geometry = recipe_geometry(recipe)
    cols: dict[str, list] = {k: [] for k in ("mult", "target", "mask", "diam", "seed", "real")}
    per_factor: dict[float, dict[str, list]] = {f: {"p": [], "a": [], "c": []} for f in factors}
    for seed in tqdm(list(seeds), desc="simulate", unit="phantom", disable=not progress):
        if phantom_of is None:
            phantom = phantom_of_seed(recipe, int(seed), geometry[1])
        else:
            phantom = phantom_of(int(seed))
            if tuple(phantom.activity.shape) != tuple(geometry[1].shape):
                raise ValueError(
                    f"phantom of seed {seed} has shape {tuple(phantom.activity.shape)}, the "
                    f"recipe's image grid {geometry[1].shape}"
                )
        # SUV biases are read on hot lesions; a cold one (contrast < 1) stays in the mask, so
        # no hot spot is counted on it, but its relative 'SUV bias' would mean nothing
        diameters = {int(les.label): float(les.diameter_mm) for les in phantom.lesions if les.contrast > 1.0}
        for k in range(realisations):
            g = torch.Generator().manual_seed((int(seed) + 1) * 1_000_003 + k)
            full = full_dose_scan(recipe, phantom, int(seed), g, geometry)
            for f in factors:
                scan = full if f == 1.0 else thin_scan(full, 1.0 / f, g)
                per_factor[f]["p"].append(scan.prompts.float())
                per_factor[f]["a"].append(scan.additive.float())
                per_factor[f]["c"].append(float(scan.calibration))
            cols["mult"].append(full.multiplicative.float())
            cols["target"].append(phantom.activity.float())
            cols["mask"].append(phantom.labels.long())
            cols["diam"].append(diameters)
            cols["seed"].append(int(seed))
            cols["real"].append(k)
    return EvalSet(
        sinogram=geometry[0], image=geometry[1], psf_fwhm_mm=psf_of_recipe(recipe), factors=factors,
        prompts={f: torch.stack(v["p"]) for f, v in per_factor.items()},
        additive={f: torch.stack(v["a"]) for f, v in per_factor.items()},
        calibration={f: torch.tensor(v["c"]) for f, v in per_factor.items()},
        multiplicative=torch.stack(cols["mult"]), target=torch.stack(cols["target"]),
        lesion_mask=torch.stack(cols["mask"]), lesion_diameters=cols["diam"],
        case_seed=cols["seed"], case_realisation=cols["real"],
    )
