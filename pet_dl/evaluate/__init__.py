"""Evaluation of learned and classical reconstructions on held-out phantoms.

The data are simulated from a dataset recipe (``data/*.yaml``, see :mod:`pet_dl.recipes`):
each phantom seed of a split gives ``R`` independent full-dose noise realisations, each
thinned to every reduction factor (factor 1 = full dose). Classical baselines have their
free parameters chosen per factor on the *validation* split by the mean NRMSE against
the true activity: OSEM's iteration count and Gaussian post-filter FWHM, MAP-RDP's beta.
The *test* split is then reconstructed by every method and scored against the true
activity (PSNR, SSIM, NRMSE, lesion SUVmean / SUVmax bias, lesions >= 8 mm apart).

Aggregation (mean ± std over the noise realisations of the per-realisation averages),
standard errors over phantoms and lesions, paired differences, lesion bias by diameter
bin and the contrast-vs-noise curves are defined in :mod:`pet_dl.evaluate.scoring`.

Modules, in the order of the data flow:

- :mod:`~pet_dl.evaluate.data`: :class:`EvalSet`, :func:`simulate_eval_set`,
  :func:`check_held_out`;
- :mod:`~pet_dl.evaluate.external`: the SIRF brain as an anatomy no network has seen
  (``simulate_eval_set(..., phantom_of=sirf_brain_phantoms(folder, recipe))``);
- :mod:`~pet_dl.evaluate.methods`: OSEM trajectory, MAP-RDP, learned models on a batch;
- :mod:`~pet_dl.evaluate.selection`: OSEM / MAP-RDP parameters chosen on validation;
- :mod:`~pet_dl.evaluate.scoring`: per-case metrics, aggregation, bias by lesion size,
  contrast vs noise, false hot spots;
- :mod:`~pet_dl.evaluate.pipeline`: :func:`evaluate` (selection, then the test table);
- :mod:`~pet_dl.evaluate.report`: markdown, CSV, JSON, merge, plot;
- :mod:`~pet_dl.evaluate.config`: configs, checkpoints, :func:`run_config`
  (``python -m pet_dl evaluate``).
"""

from __future__ import annotations

from pet_dl.evaluate.config import (
    external_source_phantoms,
    load_eval_config,
    load_networks,
    run_config,
)
from pet_dl.evaluate.data import EvalSet, check_held_out, factor_key, simulate_eval_set
from pet_dl.evaluate.methods import map_reconstruction, network_reconstruction, osem_trajectory
from pet_dl.evaluate.pipeline import Curve, EvalResults, EvalSettings, evaluate, score_row
from pet_dl.evaluate.report import (
    factor_label,
    lesion_size_markdown,
    merge_results,
    plot_contrast_noise,
    rename_methods,
    results_csv,
    results_from_json,
    results_markdown,
    results_to_json,
    selection_markdown,
    size_bin_cells,
    uncertainty_markdown,
    write_results,
)
from pet_dl.evaluate.scoring import (
    LARGE_LESION_MM,
    METRICS,
    SIZE_EDGES_MM,
    aggregate,
    bias_by_size,
    case_metrics,
    contrast_noise,
    false_hot_spots,
    paired_difference,
    sampling_error,
    shell,
)
from pet_dl.evaluate.selection import MapChoice, OsemChoice, mean_nrmse, select_map, select_osem

__all__ = [
    "LARGE_LESION_MM",
    "METRICS",
    "Curve",
    "EvalResults",
    "EvalSet",
    "EvalSettings",
    "MapChoice",
    "OsemChoice",
    "SIZE_EDGES_MM",
    "aggregate",
    "bias_by_size",
    "case_metrics",
    "check_held_out",
    "contrast_noise",
    "evaluate",
    "external_source_phantoms",
    "factor_key",
    "false_hot_spots",
    "factor_label",
    "load_eval_config",
    "lesion_size_markdown",
    "load_networks",
    "map_reconstruction",
    "mean_nrmse",
    "merge_results",
    "rename_methods",
    "network_reconstruction",
    "osem_trajectory",
    "paired_difference",
    "plot_contrast_noise",
    "results_csv",
    "results_from_json",
    "results_markdown",
    "results_to_json",
    "run_config",
    "sampling_error",
    "score_row",
    "select_map",
    "select_osem",
    "selection_markdown",
    "shell",
    "simulate_eval_set",
    "size_bin_cells",
    "uncertainty_markdown",
    "write_results",
]
