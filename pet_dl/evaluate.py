"""Evaluation of learned and classical reconstructions on held-out phantoms.

The data are simulated from a dataset recipe (``data/*.yaml``, see :mod:`pet_dl.datasets`):
each phantom seed of a split gives ``R`` independent full-dose noise realisations, each
thinned to every reduction factor (factor 1 = full dose). Classical baselines have their
free parameters chosen per factor on the *validation* split by the mean NRMSE against
the true activity: OSEM's iteration count and Gaussian post-filter FWHM, MAP-RDP's beta.
The *test* split is then reconstructed by every method and scored against the true
activity (PSNR, SSIM, NRMSE, lesion SUVmean / SUVmax bias, lesions >= 8 mm apart).

Aggregation: for each method, factor and realisation the metrics are averaged over the
phantoms (lesion biases over all lesions of that realisation); tables give the mean and
the sample standard deviation of these averages over the realisations.

Contrast vs noise (one factor): lesion contrast recovery ``CR = C_image / C_true`` with
``C = mean(lesion) / mean(shell) - 1`` (shell: voxels 2-4 voxels outside the lesion, not
in another lesion, with activity) against the background noise, the ensemble coefficient
of variation over the noise realisations averaged over non-lesion voxels with truth above
10 % of the maximum (needs ``R >= 2``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: Lesions at least this large (diameter, mm) are reported separately.
LARGE_LESION_MM = 8.0
METRICS = ("psnr", "ssim", "nrmse", "suvmean_bias", "suvmax_bias", "suvmean_bias_ge8", "suvmax_bias_ge8")


# ----------------------------------------------------------------------------- data
@dataclass
class EvalSet:
    """Simulated scans of one split, grouped by reduction factor.

    Case ``i`` (of ``B = len(seeds) * realisations``) is phantom ``case_seed[i]``,
    noise realisation ``case_realisation[i]``; every factor has the same cases.

    Attributes:
        sinogram, image: geometry (:class:`SinogramGeometry`, :class:`ImageGeometry`).
        psf_fwhm_mm: resolution model FWHM, mm.
        factors: dose reduction factors (1.0 = full dose).
        prompts, additive: per factor, ``(B, *sino)`` counts.
        calibration: per factor, ``(B,)`` counts per (Bq/mL x mm).
        multiplicative: ``(B, *sino)`` attenuation x normalisation.
        target: ``(B, nx, ny, nz)`` true activity, Bq/mL.
        lesion_mask: ``(B, nx, ny, nz)`` int64 labels (0 background).
        lesion_diameters: per case, label -> diameter in mm.
        case_seed, case_realisation: phantom seed and noise realisation of each case.
        projector: optional explicit projector (tests); else the Joseph projector.
    """

    sinogram: Any
    image: Any
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
        return len(self.case_seed)

    @property
    def realisations(self) -> int:
        return len(set(self.case_realisation))

    def batch(self, factor: float, index: Sequence[int] | slice = slice(None)) -> Any:
        """The :class:`pet_dl.models.ReconBatch` of the cases ``index`` at ``factor``."""
        from pet_dl.models import ReconBatch

        f = _factor_key(self.factors, factor)
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


def _factor_key(factors: Sequence[float], factor: float) -> float:
    for f in factors:
        if math.isclose(f, float(factor), rel_tol=1e-6):
            return f
    raise ValueError(f"reduction factor {factor} is not in the evaluation set {list(factors)}")


def check_held_out(test_seeds: Iterable[int], used_seeds: Mapping[str, Iterable[int]]) -> None:
    """Refuse test phantoms that were used for training or parameter selection.

    Args:
        test_seeds: phantom seeds of the test set.
        used_seeds: e.g. ``{"train": range(...), "val": range(...)}``.

    Raises:
        ValueError: naming the split and up to 5 shared seeds.
    """
    test = {int(s) for s in test_seeds}
    for name, seeds in used_seeds.items():
        shared = sorted(test & {int(s) for s in seeds})
        if shared:
            raise ValueError(
                f"test set overlaps the {name} phantoms ({len(shared)} shared seeds, e.g. "
                f"{shared[:5]}): evaluate on held-out phantoms only"
            )


def _phantom_of_seed(recipe: Mapping[str, Any], image: Any, seed: int) -> Any:
    from pet_dl.datasets import _phantom  # the recipe's seeded phantom + lesions

    return _phantom(recipe, image, seed)


def simulate_eval_set(
    recipe: Mapping[str, Any],
    seeds: Sequence[int],
    realisations: int,
    factors: Sequence[float],
    progress: bool = False,
) -> EvalSet:
    """Simulate ``realisations`` noise realisations of each phantom seed at each factor.

    Realisation ``k`` of seed ``s`` is a full-dose Poisson scan with noise seed
    ``(s + 1) * 1_000_003 + k`` thinned binomially to ``1 / factor``.

    Args:
        recipe: a validated recipe (:func:`pet_dl.datasets.load_recipe`).
        seeds: phantom seeds.
        realisations: noise realisations per phantom (>= 1).
        factors: dose reduction factors (>= 1; 1 = the full-dose scan itself).
        progress: show a progress bar.
    """
    from tqdm.auto import tqdm

    from pet_dl.datasets import psf_of_recipe, recipe_geometry
    from pet_dl.scan import AcquisitionMetadata
    from pet_dl.simulate import simulate_scan, thin_scan

    if realisations < 1:
        raise ValueError(f"realisations must be >= 1, got {realisations}")
    if not seeds:
        raise ValueError("no phantom seeds to evaluate")
    factors = tuple(float(f) for f in factors)
    if not factors or any(not f >= 1 for f in factors):
        raise ValueError(f"reduction factors must be >= 1, got {list(factors)}")
    sinogram, image = recipe_geometry(recipe)
    sim = dict(recipe.get("simulation") or {})
    duration = float(sim.pop("duration_s", 300.0))
    cols: dict[str, list] = {k: [] for k in ("mult", "target", "mask", "diam", "seed", "real")}
    per_factor: dict[float, dict[str, list]] = {f: {"p": [], "a": [], "c": []} for f in factors}
    for seed in tqdm(list(seeds), desc="simulate", unit="phantom", disable=not progress):
        phantom = _phantom_of_seed(recipe, image, int(seed))
        diameters = {int(les.label): float(les.diameter_mm) for les in phantom.lesions}
        for k in range(realisations):
            g = torch.Generator().manual_seed((int(seed) + 1) * 1_000_003 + k)
            meta = AcquisitionMetadata(duration_s=duration, phantom=str(recipe["phantom"]), seed=int(seed))
            full = simulate_scan(
                phantom.activity, phantom.mu, sinogram, image, duration_s=duration,
                generator=g, metadata=meta, **sim,
            )
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
        sinogram=sinogram, image=image, psf_fwhm_mm=psf_of_recipe(recipe), factors=factors,
        prompts={f: torch.stack(v["p"]) for f, v in per_factor.items()},
        additive={f: torch.stack(v["a"]) for f, v in per_factor.items()},
        calibration={f: torch.tensor(v["c"]) for f, v in per_factor.items()},
        multiplicative=torch.stack(cols["mult"]), target=torch.stack(cols["target"]),
        lesion_mask=torch.stack(cols["mask"]), lesion_diameters=cols["diam"],
        case_seed=cols["seed"], case_realisation=cols["real"],
    )


# ----------------------------------------------------------------------- algorithms
@torch.no_grad()
def osem_trajectory(batch: Any, max_iterations: int, subsets: int) -> list[torch.Tensor]:
    """OSEM images after 1 .. ``max_iterations`` full iterations (uniform start).

    Args:
        batch: a :class:`pet_dl.models.ReconBatch` (``B`` scans).
        max_iterations: iterations to run (>= 1).
        subsets: view subsets.

    Returns:
        ``max_iterations`` images ``(B, nx, ny, nz)``, Bq/mL; entry ``k`` after ``k + 1``.
    """
    from pet_dl.recon import osem

    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    model = batch.forward_model()
    y = batch.prompts.float()
    images, x = [], None
    for _ in range(max_iterations):
        x = osem(model, y, 1, subsets, x0=x)
        images.append(x)
    return images


@torch.no_grad()
def map_reconstruction(
    batch: Any, beta_rel: float, iterations: int, subsets: int, gamma: float = 2.0
) -> torch.Tensor:
    """MAP-RDP of every scan in ``batch`` with ``beta = beta_rel * calibration``.

    The log-likelihood scales with the counts, i.e. with the calibration (counts per
    Bq/mL x mm, proportional to dose and scan time), so one ``beta_rel`` (mm) keeps the
    same balance at every dose level and scanner sensitivity. Returns ``(B, nx, ny, nz)``
    Bq/mL.

    Raises:
        ValueError: the scans of ``batch`` have different calibrations.
    """
    from pet_dl.recon import map_rdp

    cal = batch.calibration.double()
    if not bool(torch.allclose(cal, cal[0].expand_as(cal), rtol=1e-6)):
        raise ValueError("map_reconstruction needs one calibration (count level) per batch")
    beta = float(beta_rel) * float(cal[0])
    return map_rdp(
        batch.forward_model(), batch.prompts.float(), beta, gamma=gamma,
        num_iterations=iterations, num_subsets=subsets,
        voxel_size_mm=batch.image.voxel_size_mm,
    )


@torch.no_grad()
def network_reconstruction(model: nn.Module, batch: Any, chunk: int = 8) -> torch.Tensor:
    """Run a learned model on ``batch`` in chunks of ``chunk`` scans: ``(B, nx, ny, nz)``."""
    from dataclasses import replace

    model.eval()
    outs = []
    for i in range(0, batch.batch_size, chunk):
        sl = slice(i, i + chunk)
        part = replace(
            batch, prompts=batch.prompts[sl], multiplicative=batch.multiplicative[sl],
            additive=batch.additive[sl], calibration=batch.calibration[sl],
            dose_fraction=batch.dose_fraction[sl],
            initial=None if batch.initial is None else batch.initial[sl],
        )
        outs.append(model(part).float())
    return torch.cat(outs)


# ------------------------------------------------------------------------ selection
@dataclass(frozen=True)
class OsemChoice:
    """OSEM parameters chosen on validation for one factor, with the searched grid.

    ``grid[(iterations, fwhm_mm)]`` is the mean validation NRMSE.
    """

    factor: float
    iterations: int
    fwhm_mm: float
    subsets: int
    grid: dict[tuple[int, float], float] = field(repr=False)

    @property
    def nrmse(self) -> float:
        return self.grid[(self.iterations, self.fwhm_mm)]


@dataclass(frozen=True)
class MapChoice:
    """MAP-RDP ``beta_rel`` (:func:`map_reconstruction`) chosen on validation; ``grid[beta]`` = NRMSE."""

    factor: float
    beta: float
    iterations: int
    subsets: int
    grid: dict[float, float] = field(repr=False)

    @property
    def nrmse(self) -> float:
        return self.grid[self.beta]


def _mean_nrmse(images: torch.Tensor, target: torch.Tensor) -> float:
    from pet_dl.metrics import nrmse

    return float(nrmse(images, target).mean())


def select_osem(
    val: EvalSet, factor: float, iterations: Sequence[int], fwhms_mm: Sequence[float], subsets: int
) -> OsemChoice:
    """The (iterations, post-filter FWHM) of lowest mean NRMSE on ``val`` at ``factor``.

    Ties go to fewer iterations, then to the smaller FWHM.
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
        (it, fw): _mean_nrmse(gaussian_postfilter(traj[it - 1], val.image, fw), val.target)
        for it in its for fw in fwhms
    }
    best = min(grid, key=lambda key: (grid[key], key))
    return OsemChoice(_factor_key(val.factors, factor), best[0], best[1], subsets, grid)


def select_map(
    val: EvalSet, factor: float, betas: Sequence[float], iterations: int, subsets: int,
    gamma: float = 2.0,
) -> MapChoice:
    """The ``beta_rel`` (from ``betas``, mm) of lowest mean NRMSE on ``val`` at ``factor``."""
    grid_betas = sorted({float(b) for b in betas})
    if not grid_betas or grid_betas[0] < 0:
        raise ValueError(f"beta grid must hold values >= 0, got {list(betas)}")
    batch = val.batch(factor)
    grid = {
        b: _mean_nrmse(map_reconstruction(batch, b, iterations, subsets, gamma), val.target)
        for b in grid_betas
    }
    best = min(grid, key=lambda b: (grid[b], b))
    return MapChoice(_factor_key(val.factors, factor), best, iterations, subsets, grid)


# -------------------------------------------------------------------------- metrics
def case_metrics(images: torch.Tensor, data: EvalSet) -> list[dict[str, Any]]:
    """Per-case PSNR (dB), SSIM, NRMSE and mean lesion SUVmean / SUVmax biases.

    Args:
        images: ``(B, nx, ny, nz)`` Bq/mL, one per case of ``data``.

    Returns:
        one dict per case; lesion biases are lists (``suvmean_bias`` etc., one entry per
        lesion; relative, 0.05 = +5 %), ``*_ge8`` for lesions >= 8 mm.
    """
    from pet_dl import metrics

    if tuple(images.shape) != tuple(data.target.shape):
        raise ValueError(f"images {tuple(images.shape)} do not match the targets {tuple(data.target.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("a reconstruction has NaN or Inf values")
    psnr = metrics.psnr(images, data.target)
    ssim = metrics.ssim(images, data.target)
    nrmse = metrics.nrmse(images, data.target)
    rows = []
    for i in range(images.shape[0]):
        row: dict[str, Any] = {"psnr": float(psnr[i]), "ssim": float(ssim[i]), "nrmse": float(nrmse[i])}
        for key in ("suvmean_bias", "suvmax_bias", "suvmean_bias_ge8", "suvmax_bias_ge8"):
            row[key] = []
        if bool(data.lesion_mask[i].any()):
            for les in metrics.lesion_bias(images[i], data.target[i], data.lesion_mask[i], data.image.voxel_size_mm):
                large = data.lesion_diameters[i].get(les.label, 0.0) >= LARGE_LESION_MM
                for suffix in ("", "_ge8") if large else ("",):
                    row["suvmean_bias" + suffix].append(les.mean_bias)
                    row["suvmax_bias" + suffix].append(les.max_bias)
        rows.append(row)
    return rows


def aggregate(rows: list[dict[str, Any]], realisation: Sequence[int]) -> dict[str, tuple[float, float]]:
    """Mean over phantoms per realisation, then (mean, sample std) over realisations.

    Lesion biases are pooled over the lesions of a realisation; NaN when there are none.
    """
    out: dict[str, tuple[float, float]] = {}
    reals = sorted(set(realisation))
    for key in METRICS:
        per_real = []
        for r in reals:
            vals: list[float] = []
            for row, rr in zip(rows, realisation):
                if rr == r:
                    v = row[key]
                    vals.extend(v if isinstance(v, list) else [v])
            per_real.append(sum(vals) / len(vals) if vals else math.nan)
        t = torch.tensor(per_real, dtype=torch.float64)
        std = float(t.std()) if len(per_real) > 1 else 0.0
        out[key] = (float(t.mean()), std)
    return out


def _shell(mask: torch.Tensor, inner: int, outer: int) -> torch.Tensor:
    """Voxels between ``inner`` and ``outer`` voxels (chessboard) outside ``mask`` (nx, ny, nz)."""
    import torch.nn.functional as F  # noqa: N812

    m = mask.double()[None, None]
    spatial = [s > 1 for s in mask.shape]

    def dilate(r: int) -> torch.Tensor:
        k = tuple(2 * r + 1 if s else 1 for s in spatial)
        p = tuple(r if s else 0 for s in spatial)
        return F.max_pool3d(m, k, stride=1, padding=p)[0, 0] > 0

    return dilate(outer) & ~dilate(inner)


def contrast_noise(images: torch.Tensor, data: EvalSet, min_diameter_mm: float = LARGE_LESION_MM) -> tuple[float, float]:
    """Mean lesion contrast recovery and background ensemble CoV (see the module docstring).

    Args:
        images: ``(B, nx, ny, nz)`` Bq/mL, one per case of ``data``.
        min_diameter_mm: only lesions at least this large count.

    Returns:
        ``(contrast_recovery, noise)``, both fractions (NaN when undefined).
    """
    crs = []
    for i in range(images.shape[0]):
        labels, truth = data.lesion_mask[i], data.target[i].double()
        for lab, diam in data.lesion_diameters[i].items():
            m = labels == lab
            if diam < min_diameter_mm or not bool(m.any()):
                continue
            shell = _shell(m, 2, 4) & (labels == 0) & (truth > 0)
            if not bool(shell.any()):
                continue
            c_true = float(truth[m].mean() / truth[shell].mean()) - 1
            if c_true < 0.2:
                continue
            x = images[i].double()
            crs.append((float(x[m].mean() / x[shell].mean()) - 1) / c_true)
    cr = sum(crs) / len(crs) if crs else math.nan
    covs = []
    for seed in sorted(set(data.case_seed)):
        idx = [i for i, s in enumerate(data.case_seed) if s == seed]
        if len(idx) < 2:
            continue
        stack = images[idx].double()
        truth = data.target[idx[0]].double()
        bg = (data.lesion_mask[idx[0]] == 0) & (truth > 0.1 * truth.max())
        mean = stack.mean(0)
        ok = bg & (mean > 0)
        covs.append(float((stack.std(0)[ok] / mean[ok]).mean()))
    noise = sum(covs) / len(covs) if covs else math.nan
    return cr, noise


# ---------------------------------------------------------------------- orchestration
@dataclass(frozen=True)
class EvalSettings:
    """Grids and iteration counts of the classical baselines and the plot.

    Attributes:
        osem_subsets: OSEM view subsets.
        osem_iterations: iteration counts searched on validation.
        postfilter_fwhm_mm: Gaussian post-filter FWHMs searched (mm, 0 = none).
        map_betas: RDP ``beta_rel`` values searched (mm; ``beta = beta_rel * calibration``).
        map_iterations, map_subsets, map_gamma: MAP-RDP settings.
        plot_factor: reduction factor of the contrast-vs-noise plot (None: no curves).
    """

    osem_subsets: int = 7
    osem_iterations: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 10)
    postfilter_fwhm_mm: tuple[float, ...] = (0.0, 2.0, 4.0, 6.0)
    map_betas: tuple[float, ...] = (0.3, 1.0, 2.0, 4.0, 8.0)
    map_iterations: int = 10
    map_subsets: int = 7
    map_gamma: float = 2.0
    plot_factor: float | None = 20.0


@dataclass
class EvalResults:
    """Everything :func:`evaluate` measured.

    Attributes:
        rows: one dict per method x factor: ``method``, ``factor``, ``params`` and, per
            metric of :data:`METRICS`, ``<metric>`` (mean over realisations) and
            ``<metric>_std``.
        osem: chosen OSEM parameters per factor; map: chosen MAP beta per factor.
        curves: contrast-vs-noise curves at ``plot_factor``: name -> list of
            ``(label, contrast_recovery, noise)``.
        plot_factor: the factor of the curves.
        num_phantoms, realisations, val_cases: sizes of the test and validation sets.
    """

    rows: list[dict[str, Any]]
    osem: dict[float, OsemChoice]
    map: dict[float, MapChoice]
    curves: dict[str, list[tuple[str, float, float]]]
    plot_factor: float | None
    num_phantoms: int
    realisations: int
    val_cases: int


def _row(method: str, factor: float, params: str, images: torch.Tensor, data: EvalSet) -> dict[str, Any]:
    stats = aggregate(case_metrics(images, data), data.case_realisation)
    row: dict[str, Any] = {"method": method, "factor": factor, "params": params}
    for key, (mean, std) in stats.items():
        row[key] = mean
        row[key + "_std"] = std
    return row


def evaluate(
    val: EvalSet | None,
    test: EvalSet,
    networks: Mapping[str, nn.Module],
    settings: EvalSettings = EvalSettings(),
    progress: bool = False,
    classical: bool = True,
) -> EvalResults:
    """Choose the baselines' parameters on ``val``, then score every method on ``test``.

    Args:
        val: validation scans (parameter selection), same factors as ``test``; may be
            None when ``classical`` is False.
        test: held-out test scans.
        networks: display name -> learned model (``model(ReconBatch) -> images``).
        settings: grids and iteration counts.
        progress: show progress bars.
        classical: evaluate OSEM and MAP-RDP (False: the networks only; combine runs
            with :func:`merge_results`).

    Raises:
        ValueError: test and validation share phantoms, or their factors differ.
    """
    from tqdm.auto import tqdm

    s = settings
    plot_f = None if s.plot_factor is None else _factor_key(test.factors, s.plot_factor)
    osem_choice: dict[float, OsemChoice] = {}
    map_choice: dict[float, MapChoice] = {}
    if classical:
        if val is None:
            raise ValueError("the classical baselines need a validation set")
        check_held_out(test.case_seed, {"validation": val.case_seed})
        if tuple(val.factors) != tuple(test.factors):
            raise ValueError(f"validation factors {val.factors} differ from test factors {test.factors}")
        bar = tqdm(total=2 * len(val.factors), desc="select on validation", disable=not progress)
        for f in val.factors:
            osem_choice[f] = select_osem(val, f, s.osem_iterations, s.postfilter_fwhm_mm, s.osem_subsets)
            bar.update(1)
            map_choice[f] = select_map(val, f, s.map_betas, s.map_iterations, s.map_subsets, s.map_gamma)
            bar.update(1)
        bar.close()

    rows: list[dict[str, Any]] = []
    curves: dict[str, list[tuple[str, float, float]]] = {}
    bar = tqdm(total=len(test.factors) * (2 * classical + len(networks)), desc="test", disable=not progress)
    for f in test.factors:
        batch = test.batch(f)
        if classical:
            _classical_rows(f, batch, test, osem_choice[f], map_choice[f], s, plot_f, rows, curves)
            bar.update(2)
        for name, net in networks.items():
            images = network_reconstruction(net, batch)
            rows.append(_row(name, f, "", images, test))
            if f == plot_f:
                curves[name] = [("", *contrast_noise(images, test))]
            bar.update(1)
    bar.close()
    return EvalResults(
        rows=rows, osem=osem_choice, map=map_choice, curves=curves, plot_factor=plot_f,
        num_phantoms=len(set(test.case_seed)), realisations=test.realisations,
        val_cases=0 if val is None else val.num_cases,
    )


def _classical_rows(
    f: float, batch: Any, test: EvalSet, oc: OsemChoice, mc: MapChoice, s: EvalSettings,
    plot_f: float | None, rows: list[dict[str, Any]], curves: dict[str, list],
) -> None:
    """OSEM and MAP-RDP rows (and curves at ``plot_f``) for factor ``f``."""
    from pet_dl.recon import gaussian_postfilter

    n_it = max(s.osem_iterations) if f == plot_f else oc.iterations
    traj = osem_trajectory(batch, n_it, s.osem_subsets)
    best = gaussian_postfilter(traj[oc.iterations - 1], test.image, oc.fwhm_mm)
    rows.append(_row("OSEM", f, f"{oc.iterations} it x {oc.subsets} subsets, {oc.fwhm_mm:g} mm", best, test))
    if f == plot_f:
        curves["OSEM (iterations)"] = [
            (f"{k + 1}", *contrast_noise(x, test)) for k, x in enumerate(traj)
        ]
        curves[f"OSEM {oc.iterations} it (post-filter)"] = [
            (f"{fw:g} mm", *contrast_noise(gaussian_postfilter(traj[oc.iterations - 1], test.image, fw), test))
            for fw in sorted(s.postfilter_fwhm_mm)
        ]
        curves["OSEM (chosen)"] = [("", *contrast_noise(best, test))]
    betas = sorted(s.map_betas) if f == plot_f else [mc.beta]
    map_images = {b: map_reconstruction(batch, b, s.map_iterations, s.map_subsets, s.map_gamma) for b in betas}
    rows.append(_row("MAP-RDP", f, f"beta_rel {mc.beta:g} mm", map_images[mc.beta], test))
    if f == plot_f:
        curves["MAP-RDP (beta)"] = [(f"{b:g}", *contrast_noise(x, test)) for b, x in map_images.items()]
        curves["MAP-RDP (chosen)"] = [("", *contrast_noise(map_images[mc.beta], test))]


# --------------------------------------------------------------------------- output
_PERCENT = {"nrmse", "suvmean_bias", "suvmax_bias", "suvmean_bias_ge8", "suvmax_bias_ge8"}
_HEADERS = {
    "psnr": "PSNR (dB)", "ssim": "SSIM", "nrmse": "NRMSE (%)",
    "suvmean_bias": "SUVmean bias (%)", "suvmax_bias": "SUVmax bias (%)",
    "suvmean_bias_ge8": "SUVmean bias >=8 mm (%)", "suvmax_bias_ge8": "SUVmax bias >=8 mm (%)",
}


def _fmt(key: str, mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    if key in _PERCENT:
        return f"{100 * mean:+.1f} ± {100 * std:.1f}" if "bias" in key else f"{100 * mean:.2f} ± {100 * std:.2f}"
    return f"{mean:.2f} ± {std:.2f}" if key == "psnr" else f"{mean:.3f} ± {std:.3f}"


def factor_label(factor: float) -> str:
    """``"full"`` for 1, else the factor (``"20"``)."""
    return "full" if factor == 1.0 else f"{factor:g}"


def results_markdown(results: EvalResults) -> str:
    """The results table (markdown): one row per factor x method, mean ± std over realisations."""
    keys = list(METRICS)
    lines = [
        "| factor | method | " + " | ".join(_HEADERS[k] for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for row in results.rows:
        cells = [_fmt(k, row[k], row[k + "_std"]) for k in keys]
        lines.append(f"| {factor_label(row['factor'])} | {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def selection_markdown(results: EvalResults) -> str:
    """The validation choices (markdown table)."""
    lines = [
        "| factor | OSEM iterations | OSEM post-filter FWHM (mm) | OSEM val NRMSE (%) "
        "| MAP beta_rel (mm) | MAP val NRMSE (%) |",
        "|---|---|---|---|---|---|",
    ]
    for f, oc in results.osem.items():
        mc = results.map[f]
        lines.append(
            f"| {factor_label(f)} | {oc.iterations} (x {oc.subsets} subsets) | {oc.fwhm_mm:g} "
            f"| {100 * oc.nrmse:.2f} | {mc.beta:g} | {100 * mc.nrmse:.2f} |"
        )
    return "\n".join(lines) + "\n"


def results_csv(results: EvalResults) -> str:
    """The results as CSV (fractions, not %): method, factor, params, metric, metric_std ..."""
    import csv
    import io

    buf = io.StringIO()
    fields = ["factor", "method", "params"] + [c for k in METRICS for c in (k, k + "_std")]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in results.rows:
        writer.writerow({k: row[k] for k in fields})
    return buf.getvalue()


def results_to_json(results: EvalResults) -> str:
    """Everything in ``results`` as JSON (read back with :func:`results_from_json`)."""
    import json

    return json.dumps({
        "rows": results.rows,
        "osem": [{"factor": c.factor, "iterations": c.iterations, "fwhm_mm": c.fwhm_mm,
                  "subsets": c.subsets, "grid": [[k[0], k[1], v] for k, v in c.grid.items()]}
                 for c in results.osem.values()],
        "map": [{"factor": c.factor, "beta": c.beta, "iterations": c.iterations, "subsets": c.subsets,
                 "grid": [[k, v] for k, v in c.grid.items()]} for c in results.map.values()],
        "curves": {k: [list(p) for p in v] for k, v in results.curves.items()},
        "plot_factor": results.plot_factor, "num_phantoms": results.num_phantoms,
        "realisations": results.realisations, "val_cases": results.val_cases,
    }, indent=1, allow_nan=True)


def results_from_json(text: str) -> EvalResults:
    """Inverse of :func:`results_to_json`."""
    import json

    d = json.loads(text)
    osem = {
        c["factor"]: OsemChoice(c["factor"], c["iterations"], c["fwhm_mm"], c["subsets"],
                                {(int(i), float(fw)): v for i, fw, v in c["grid"]})
        for c in d["osem"]
    }
    maps = {
        c["factor"]: MapChoice(c["factor"], c["beta"], c["iterations"], c["subsets"],
                               {float(b): v for b, v in c["grid"]})
        for c in d["map"]
    }
    curves = {k: [(str(p[0]), float(p[1]), float(p[2])) for p in v] for k, v in d["curves"].items()}
    return EvalResults(d["rows"], osem, maps, curves, d["plot_factor"], d["num_phantoms"],
                       d["realisations"], d["val_cases"])


def merge_results(parts: Sequence[EvalResults]) -> EvalResults:
    """One result from runs on the same test set (e.g. classical and networks apart).

    Rows are ordered by factor, then OSEM, MAP-RDP and the networks in run order.

    Raises:
        ValueError: the runs used different test sets or plot factors, or share a method.
    """
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    for p in parts[1:]:
        if (p.num_phantoms, p.realisations, p.plot_factor) != (first.num_phantoms, first.realisations, first.plot_factor):
            raise ValueError("cannot merge results of different test sets or plot factors")
    rows = [r for p in parts for r in p.rows]
    keys = [(r["method"], r["factor"]) for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError("the runs to merge evaluate the same method twice")
    order = {m: i for i, m in enumerate(dict.fromkeys(["OSEM", "MAP-RDP"] + [r["method"] for r in rows]))}
    rows.sort(key=lambda r: (r["factor"], order[r["method"]]))
    merged = EvalResults(rows, {}, {}, {}, first.plot_factor, first.num_phantoms, first.realisations, 0)
    for p in parts:
        merged.osem.update(p.osem)
        merged.map.update(p.map)
        merged.curves.update(p.curves)
        merged.val_cases = max(merged.val_cases, p.val_cases)
    return merged


def write_results(results: EvalResults, out_dir: Any, header: str = "") -> None:
    """Write ``results.md``, ``results.csv``, ``results.json``, ``selection.md`` and (with
    curves and >= 2 realisations) ``contrast_noise.png`` under ``out_dir``, each atomically."""
    from pathlib import Path

    from pet_dl.io.atomic import atomic_write_text

    out = Path(out_dir)
    atomic_write_text(out / "results.md", header + results_markdown(results))
    atomic_write_text(out / "results.csv", results_csv(results))
    atomic_write_text(out / "results.json", results_to_json(results))
    if results.osem:
        atomic_write_text(out / "selection.md", selection_markdown(results))
    if results.curves and results.realisations >= 2:
        plot_contrast_noise(results, out / "contrast_noise.png")


def plot_contrast_noise(results: EvalResults, path: Any) -> None:
    """Write the contrast-recovery vs background-noise plot (PNG) to ``path`` atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pet_dl.io.atomic import atomic_path

    if not results.curves:
        raise ValueError("no contrast-vs-noise curves were computed (plot_factor was None)")
    fig, ax = plt.subplots(figsize=(6.5, 4.8), dpi=120)
    markers = iter("s^Dvp*hX<>")
    colours: dict[str, str] = {}
    for name, points in results.curves.items():
        cr = [100 * p[1] for p in points]
        noise = [100 * p[2] for p in points]
        family = name.split(" ")[0]
        if "chosen" in name:
            ax.plot(noise, cr, "o", mfc="none", ms=13, mew=2, color=colours.get(family, "k"), label=name)
        elif len(points) > 1:
            line = ax.plot(noise, cr, ".-", label=name)[0]
            colours.setdefault(family, line.get_color())
            for (label, _, _), x, y in zip(points, noise, cr):
                ax.annotate(label, (x, y), fontsize=6, color=line.get_color(), xytext=(2, 2),
                            textcoords="offset points")
        else:
            ax.plot(noise, cr, next(markers, "o"), ms=9, label=name)
    ax.set_xlabel("background noise: ensemble CoV (%)")
    ax.set_ylabel(f"lesion contrast recovery, lesions >= {LARGE_LESION_MM:g} mm (%)")
    ax.set_title(
        f"dose reduction factor {factor_label(results.plot_factor or 1.0)}: "
        f"{results.num_phantoms} test phantoms x {results.realisations} realisations"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------- config / io
_CONFIG_KEYS = {
    "recipe", "networks", "factors", "test_phantoms", "realisations", "val_phantoms",
    "val_realisations", "settings",
}


def load_eval_config(config: Any) -> dict[str, Any]:
    """Read (YAML path) and validate an evaluation config (``configs/evaluate2d.yaml``).

    Keys: ``recipe`` (dataset recipe path), ``networks`` (display name -> checkpoint path,
    ``shipped`` for the shipped model), ``factors`` (1 = full dose), ``test_phantoms``,
    ``realisations``, ``val_phantoms``, ``val_realisations`` and ``settings``
    (the fields of :class:`EvalSettings`).

    Raises:
        ValueError: unknown keys or bad values (the message names them).
    """
    from pathlib import Path

    if not isinstance(config, Mapping):
        import yaml

        path = Path(config)
        if not path.is_file():
            raise ValueError(f"evaluation config {path} does not exist")
        config = yaml.safe_load(path.read_text())
        if not isinstance(config, Mapping):
            raise ValueError(f"evaluation config {path} is not a YAML mapping")
    c = dict(config)
    unknown = sorted(set(c) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown evaluation config key(s) {unknown}; valid: {sorted(_CONFIG_KEYS)}")
    if "recipe" not in c:
        raise ValueError("evaluation config needs 'recipe' (a data/*.yaml path)")
    c.setdefault("networks", {})
    c.setdefault("factors", [1, 4, 10, 20, 50, 100])
    c.setdefault("test_phantoms", None)
    c.setdefault("realisations", 3)
    c.setdefault("val_phantoms", 4)
    c.setdefault("val_realisations", 1)
    settings = c.get("settings") or {}
    if not isinstance(settings, EvalSettings):
        settings = dict(settings)
        valid = set(EvalSettings.__dataclass_fields__)
        bad = sorted(set(settings) - valid)
        if bad:
            raise ValueError(f"unknown evaluation setting(s) {bad}; valid: {sorted(valid)}")
        for key in ("osem_iterations", "postfilter_fwhm_mm", "map_betas"):
            if key in settings:
                settings[key] = tuple(settings[key])
        settings = EvalSettings(**settings)
    c["settings"] = settings
    for key in ("realisations", "val_phantoms", "val_realisations"):
        if not isinstance(c[key], int) or c[key] < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {c[key]!r}")
    if c["test_phantoms"] is not None and (not isinstance(c["test_phantoms"], int) or c["test_phantoms"] < 1):
        raise ValueError(f"test_phantoms must be an integer >= 1 (or null: all), got {c['test_phantoms']!r}")
    if not isinstance(c["networks"], Mapping):
        raise ValueError("networks must map display names to checkpoint paths")
    return c


def _plain(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))


def load_networks(
    paths: Mapping[str, str], recipe: Mapping[str, Any], held_out_seeds: Sequence[int]
) -> dict[str, nn.Module]:
    """Load checkpoints and check that each was trained on the recipe's geometry.

    A checkpoint whose metadata lists its training phantom seeds (``train_seeds``) is
    refused when they overlap ``held_out_seeds``.

    Args:
        paths: display name -> ``.safetensors`` path (``"shipped"``: the shipped model).
        recipe: the evaluation recipe.
        held_out_seeds: the test phantom seeds.
    """
    from pet_dl.datasets import psf_of_recipe, recipe_geometry
    from pet_dl.inference import shipped_checkpoint
    from pet_dl.io.checkpoint import load_checkpoint

    sinogram, image = recipe_geometry(recipe)
    nets = {}
    for name, path in paths.items():
        loaded = load_checkpoint(shipped_checkpoint() if path == "shipped" else path)
        meta = loaded.metadata
        for key, want in (("sinogram", sinogram.to_dict()), ("image", image.to_dict())):
            if key in meta and _plain(meta[key]) != _plain(want):
                raise ValueError(f"network {name!r} ({path}) was trained on another {key} geometry than the recipe's")
        psf = meta.get("psf_fwhm_mm")
        if psf is not None and not math.isclose(float(psf), psf_of_recipe(recipe), abs_tol=1e-6):
            raise ValueError(f"network {name!r} was trained with PSF {psf} mm, the recipe has {psf_of_recipe(recipe)} mm")
        if "train_seeds" in meta:
            check_held_out(held_out_seeds, {f"{name} training": meta["train_seeds"]})
        nets[name] = loaded.model.eval()
    return nets


def run_config(
    config: Any,
    out_dir: Any,
    test_phantoms: int | None = None,
    realisations: int | None = None,
    val_phantoms: int | None = None,
    progress: bool = False,
    classical: bool = True,
    networks: bool = True,
) -> EvalResults:
    """Evaluate as ``config`` says and write the outputs (:func:`write_results`) to ``out_dir``.

    The ``test_phantoms`` / ``realisations`` / ``val_phantoms`` arguments override the
    config; ``classical`` / ``networks`` False skip those methods (merge runs with
    :func:`merge_results`).
    """
    from pathlib import Path

    from pet_dl.datasets import load_recipe, split_seeds

    c = load_eval_config(config)
    out = Path(out_dir)
    if not out.is_dir():
        raise ValueError(f"output folder {out} does not exist")
    if not classical and not (networks and c["networks"]):
        raise ValueError("nothing to evaluate: no classical baselines and no networks")
    recipe = load_recipe(c["recipe"])
    n_test = test_phantoms or c["test_phantoms"]
    n_val = val_phantoms or c["val_phantoms"]
    n_real = realisations or c["realisations"]
    test_seeds = list(split_seeds(recipe, "test"))[:n_test]
    val_seeds = list(split_seeds(recipe, "val"))[:n_val]
    check_held_out(test_seeds, {"train": split_seeds(recipe, "train"), "validation": val_seeds})
    nets = load_networks(c["networks"], recipe, test_seeds) if networks else {}
    val = simulate_eval_set(recipe, val_seeds, c["val_realisations"], c["factors"], progress) if classical else None
    test = simulate_eval_set(recipe, test_seeds, n_real, c["factors"], progress)
    results = evaluate(val, test, nets, c["settings"], progress, classical=classical)
    header = (
        f"{results.num_phantoms} test phantoms (seeds {test_seeds[0]}..{test_seeds[-1]}) x "
        f"{results.realisations} noise realisations; selection on {len(val_seeds)} validation "
        f"phantoms x {c['val_realisations']} realisation(s). Mean ± std over realisations.\n\n"
    )
    write_results(results, out, header)
    return results
