"""One evaluation: select the baselines on validation, then score every method on test."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pet_dl.evaluate.data import EvalSet, check_held_out, factor_key
from pet_dl.evaluate.methods import map_reconstruction, network_reconstruction, osem_trajectory
from pet_dl.evaluate.scoring import aggregate, case_metrics, contrast_noise, sampling_error
from pet_dl.evaluate.selection import MapChoice, OsemChoice, select_map, select_osem

if TYPE_CHECKING:
    from pet_dl.models import ReconBatch

#: A contrast-vs-noise curve: ``(label, contrast_recovery, noise)`` points (fractions).
Curve = list[tuple[str, float, float]]


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
            metric of :data:`pet_dl.evaluate.METRICS`, ``<metric>`` (mean over
            realisations), ``<metric>_std`` (over realisations: noise) and
            ``<metric>_sem`` (standard error over phantoms or lesions:
            :func:`pet_dl.evaluate.scoring.sampling_error`); ``case_seed`` and
            ``case_nrmse``, one per test case, for paired comparisons; ``case_lesions``,
            per case ``[diameter_mm, suvmean_bias, suvmax_bias]`` of each lesion
            (:func:`pet_dl.evaluate.scoring.bias_by_size`).
        osem: chosen OSEM parameters per factor; map: chosen MAP beta per factor.
        curves: contrast-vs-noise curves at ``plot_factor``: name -> :data:`Curve`.
        plot_factor: the factor of the curves.
        num_phantoms, realisations, val_cases: sizes of the test and validation sets.
    """

    rows: list[dict[str, Any]]
    osem: dict[float, OsemChoice]
    map: dict[float, MapChoice]
    curves: dict[str, Curve]
    plot_factor: float | None
    num_phantoms: int
    realisations: int
    val_cases: int


def score_row(method: str, factor: float, params: str, images: torch.Tensor, data: EvalSet) -> dict[str, Any]:
    """One table row: :func:`aggregate` of :func:`case_metrics` of ``images`` ``(B, nx, ny, nz)`` Bq/mL."""
    cases = case_metrics(images, data)
    stats = aggregate(cases, data.case_realisation)
    sem = sampling_error(cases, data.case_seed)
    row: dict[str, Any] = {"method": method, "factor": factor, "params": params}
    for key, (mean, std) in stats.items():
        row[key] = mean
        row[key + "_std"] = std
        row[key + "_sem"] = sem[key]
    # per case, for comparisons paired over the same phantoms and noise (report.py)
    row["case_seed"] = list(data.case_seed)
    row["case_nrmse"] = [c["nrmse"] for c in cases]
    row["case_hot_spots"] = [c["hot_spots"] for c in cases]
    # per case, (diameter mm, SUVmean bias, SUVmax bias) of each lesion: bias by lesion size
    row["case_lesions"] = [
        [list(t) for t in zip(c["lesion_diameter_mm"], c["suvmean_bias"], c["suvmax_bias"])] for c in cases
    ]
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
            with :func:`pet_dl.evaluate.merge_results`).

    Raises:
        ValueError: test and validation share phantoms, or their factors differ.
    """
    from tqdm.auto import tqdm

    s = settings
    plot_f = None if s.plot_factor is None else factor_key(test.factors, s.plot_factor)
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
    curves: dict[str, Curve] = {}
    bar = tqdm(total=len(test.factors) * (2 * classical + len(networks)), desc="test", disable=not progress)
    for f in test.factors:
        batch = test.batch(f)
        if classical:
            _classical_rows(f, batch, test, osem_choice[f], map_choice[f], s, plot_f, rows, curves)
            bar.update(2)
        for name, net in networks.items():
            images = network_reconstruction(net, batch)
            rows.append(score_row(name, f, "", images, test))
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
    f: float, batch: ReconBatch, test: EvalSet, oc: OsemChoice, mc: MapChoice, s: EvalSettings,
    plot_f: float | None, rows: list[dict[str, Any]], curves: dict[str, Curve],
) -> None:
    """OSEM and MAP-RDP rows (and curves at ``plot_f``) for factor ``f``."""
    from pet_dl.recon import gaussian_postfilter

    n_it = max(s.osem_iterations) if f == plot_f else oc.iterations
    traj = osem_trajectory(batch, n_it, s.osem_subsets)
    best = gaussian_postfilter(traj[oc.iterations - 1], test.image, oc.fwhm_mm)
    rows.append(score_row("OSEM", f, f"{oc.iterations} it x {oc.subsets} subsets, {oc.fwhm_mm:g} mm", best, test))
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
    rows.append(score_row("MAP-RDP", f, f"beta_rel {mc.beta:g} mm", map_images[mc.beta], test))
    if f == plot_f:
        curves["MAP-RDP (beta)"] = [(f"{b:g}", *contrast_noise(x, test)) for b, x in map_images.items()]
        curves["MAP-RDP (chosen)"] = [("", *contrast_noise(map_images[mc.beta], test))]
