"""Outputs of an evaluation: markdown and CSV tables, JSON (round trip, merge), the plot."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace

from pet_dl.evaluate.pipeline import EvalResults
from pet_dl.evaluate.scoring import LARGE_LESION_MM, METRICS
from pet_dl.evaluate.selection import MapChoice, OsemChoice

_PERCENT = {"nrmse", "suvmean_bias", "suvmax_bias", "suvmean_bias_ge8", "suvmax_bias_ge8"}
_HEADERS = {
    "psnr": "PSNR (dB)", "ssim": "SSIM", "nrmse": "NRMSE (%)",
    "suvmean_bias": "SUVmean bias (%)", "suvmax_bias": "SUVmax bias (%)",
    "suvmean_bias_ge8": "SUVmean bias >=8 mm (%)", "suvmax_bias_ge8": "SUVmax bias >=8 mm (%)",
    "hot_spots": "false hot spots / image",
}


def _fmt(key: str, mean: float, std: float | None) -> str:
    """One table cell, ``"mean ± std"`` (``std`` None: the mean alone)."""
    if math.isnan(mean):
        return "n/a"
    if key in _PERCENT:
        scale, spec = 100.0, ("+.1f" if "bias" in key else ".2f")
    else:
        scale, spec = 1.0, (".2f" if key in ("psnr", "hot_spots") else ".3f")
    text = f"{scale * mean:{spec}}"
    return text if std is None else f"{text} ± {scale * std:{spec.lstrip('+')}}"


def factor_label(factor: float) -> str:
    """``"full"`` for 1, else the factor (``"20"``)."""
    return "full" if factor == 1.0 else f"{factor:g}"


def results_markdown(results: EvalResults) -> str:
    """The results table (markdown): one row per factor x method, mean ± std over
    realisations (the mean alone with one realisation, which has no noise spread)."""
    keys = list(METRICS)
    spread = results.realisations >= 2
    lines = [
        "| factor | method | " + " | ".join(_HEADERS[k] for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for row in results.rows:
        cells = [_fmt(k, row[k], row[k + "_std"] if spread else None) for k in keys]
        lines.append(f"| {factor_label(row['factor'])} | {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: Standard errors to each side of a mean for a two-sided 95 % interval (normal approximation).
Z95 = 1.96


def _interval(mean: float, sem: float, digits: int = 1, signed: bool = False) -> str:
    """``"mean ± 1.96 sem"`` in %, ``"n/a"`` when either is NaN."""
    if math.isnan(mean) or math.isnan(sem):
        return "n/a"
    sign = "+" if signed else ""
    return f"{100 * mean:{sign}.{digits}f} ± {100 * Z95 * sem:.{digits}f}"


#: The default reference of the paired NRMSE difference: OSEM at full dose (issue 4's target).
PAIRED_REFERENCE: tuple[str, float | None] = ("OSEM", 1.0)


def uncertainty_markdown(results: EvalResults, reference: tuple[str, float | None] | None = None) -> str:
    """Means with 95 % intervals from the sample of phantoms and lesions (markdown table).

    Per factor x method: NRMSE and the lesion >= 8 mm SUVmean / SUVmax biases ± 1.96
    standard errors over phantoms / lesions (:func:`pet_dl.evaluate.scoring.sampling_error`),
    and the NRMSE difference to the ``reference`` rows paired over the same phantoms and
    noise realisations (:func:`pet_dl.evaluate.scoring.paired_difference`); false hot spots
    per image and their paired difference at the row's own factor to OSEM, or to the
    reference method when ``reference`` has factor ``None``. ``reference``
    is ``(method, factor)``: that one row, or with factor ``None`` the method's row at each
    row's own factor; ``None``: :data:`PAIRED_REFERENCE` (OSEM at full dose), the column
    showing ``n/a`` when the results have no such row (e.g. networks only). A target such as "NRMSE at or
    below the reference" is met beyond the sampling doubt when the whole interval of the
    difference is at or below 0. Rows without per-case values (results of older versions)
    show ``n/a``.

    Raises:
        ValueError: ``results`` has no row of the reference method (at that factor).
    """
    from pet_dl.evaluate.scoring import paired_difference

    method, factor = reference or PAIRED_REFERENCE
    by_key = {(r["method"], r["factor"]): r for r in results.rows}
    if reference is not None and not any(m == method and (factor is None or f == factor) for m, f in by_key):
        at = "" if factor is None else f" at factor {factor_label(factor)}"
        raise ValueError(f"no results for the paired reference {method!r}{at}")
    where = "the same factor" if factor is None else ("full dose" if factor == 1.0 else f"factor {factor:g}")
    hot_reference = method if factor is None else "OSEM"
    lines = [
        f"| factor | method | NRMSE (%) | NRMSE - {method} at {where} (%, paired) "
        f"| SUVmean bias >={LARGE_LESION_MM:g} mm (%) | SUVmax bias >={LARGE_LESION_MM:g} mm (%) "
        f"| false hot spots / image | hot spots - {hot_reference} at the same factor (paired) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results.rows:
        ref = by_key.get((method, row["factor"] if factor is None else factor))
        diff = "n/a"
        if ref is not None and "case_nrmse" in row and "case_nrmse" in ref and row["case_seed"] == ref["case_seed"]:
            diff = _interval(*paired_difference(row["case_nrmse"], ref["case_nrmse"], row["case_seed"]), 2, True)
        hot_ref = by_key.get((hot_reference, row["factor"]))
        hot_diff = "n/a"
        if hot_ref is not None and "case_hot_spots" in row and "case_hot_spots" in hot_ref and row["case_seed"] == hot_ref["case_seed"]:
            mean, sem = paired_difference(row["case_hot_spots"], hot_ref["case_hot_spots"], row["case_seed"])
            hot_diff = "n/a" if math.isnan(sem) else f"{mean:+.2f} ± {Z95 * sem:.2f}"
        hot = row.get("hot_spots", math.nan)
        hot_sem = row.get("hot_spots_sem", math.nan)
        cells = [
            _interval(row["nrmse"], row.get("nrmse_sem", math.nan), 2), diff,
            _interval(row["suvmean_bias_ge8"], row.get("suvmean_bias_ge8_sem", math.nan), signed=True),
            _interval(row["suvmax_bias_ge8"], row.get("suvmax_bias_ge8_sem", math.nan), signed=True),
            "n/a" if math.isnan(hot) or math.isnan(hot_sem) else f"{hot:.2f} ± {Z95 * hot_sem:.2f}",
            hot_diff,
        ]
        lines.append(f"| {factor_label(row['factor'])} | {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def size_bin_cells(bins: Sequence[dict[str, float]]) -> tuple[list[str], list[str]]:
    """Column heads (``"8-12 mm (79 lesions)"``) and cells (``"SUVmean / SUVmax"`` bias in %,
    ± 1.96 standard errors) of :func:`pet_dl.evaluate.scoring.bias_by_size` bins."""
    heads = [f"{b['lo_mm']:g}-{b['hi_mm']:g} mm ({int(b['lesions'])} lesions)" for b in bins]
    cells = [
        f"{_interval(b['suvmean_bias'], b['suvmean_bias_sem'], signed=True)} / "
        f"{_interval(b['suvmax_bias'], b['suvmax_bias_sem'], signed=True)}"
        for b in bins
    ]
    return heads, cells


def lesion_size_markdown(results: EvalResults, edges_mm: Sequence[float] | None = None) -> str:
    """Lesion SUVmean / SUVmax bias by diameter bin (markdown table), ± 1.96 standard errors.

    One row per factor x method that has per-lesion values (``case_lesions``; rows of
    older versions are left out), one column per bin of ``edges_mm`` (default
    :data:`pet_dl.evaluate.scoring.SIZE_EDGES_MM`) reading ``SUVmean / SUVmax`` bias in %
    (:func:`pet_dl.evaluate.scoring.bias_by_size`). Empty string when no row has them.
    """
    from pet_dl.evaluate.scoring import SIZE_EDGES_MM, bias_by_size

    edges = SIZE_EDGES_MM if edges_mm is None else tuple(edges_mm)
    rows = [r for r in results.rows if "case_lesions" in r]
    if not rows:
        return ""
    heads, _ = size_bin_cells(bias_by_size(rows[0]["case_lesions"], rows[0]["case_seed"], edges))
    lines = ["| factor | method | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
    for row in rows:
        _, cells = size_bin_cells(bias_by_size(row["case_lesions"], row["case_seed"], edges))
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
    """The results as CSV (fractions, not %): method, factor, params, then per metric its
    mean, ``_std`` (over realisations) and ``_sem`` (standard error over phantoms or
    lesions; empty for rows of older versions)."""
    import csv
    import io

    buf = io.StringIO()
    fields = ["factor", "method", "params"] + [c for k in METRICS for c in (k, k + "_std", k + "_sem")]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in results.rows:
        writer.writerow({k: row.get(k, "") for k in fields})
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


def rename_methods(results: EvalResults, names: Mapping[str, str]) -> EvalResults:
    """The same results with methods renamed (rows and contrast-noise curves).

    Args:
        results: one evaluation (or merge).
        names: old method name -> new name.

    Raises:
        ValueError: a name to change is not among the results' methods.
    """
    methods = {r["method"] for r in results.rows}
    unknown = sorted(set(names) - methods)
    if unknown:
        raise ValueError(f"cannot rename {unknown}: not among {sorted(methods)}")
    rows = [{**r, "method": names.get(r["method"], r["method"])} for r in results.rows]
    curves = {names.get(k, k): v for k, v in results.curves.items()}
    return replace(results, rows=rows, curves=curves)


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


def write_results(
    results: EvalResults, out_dir: str | os.PathLike[str], header: str = "",
    paired_reference: tuple[str, float | None] | None = None,
) -> None:
    """Write ``results.md`` (with :func:`uncertainty_markdown` and
    :func:`lesion_size_markdown`), ``results.csv``,
    ``results.json``, ``selection.md`` and (with curves and >= 2 realisations)
    ``contrast_noise.png`` under ``out_dir``, each atomically.

    Args:
        results: what to write.
        out_dir: an existing folder.
        header: markdown put before the table in ``results.md``.
        paired_reference: the reference of :func:`uncertainty_markdown`'s paired column.
    """
    from pathlib import Path

    from pet_dl.io.atomic import atomic_write_text

    out = Path(out_dir)
    noise_note = (
        ", which the ± std over realisations above (noise only) leaves out"
        if results.realisations >= 2 else " and from the one noise realisation of each phantom"
    )
    uncertainty = (
        "\n## Sampling uncertainty\n\nMeans ± 1.96 standard errors over the "
        f"{results.num_phantoms} phantoms (NRMSE, paired difference) or over the lesions "
        "(biases), each first averaged over its noise realisations: the doubt that comes "
        f"from the size of the test set{noise_note}.\n\n" + uncertainty_markdown(results, paired_reference)
    )
    sizes = lesion_size_markdown(results)
    if sizes:
        uncertainty += (
            "\n## Lesion bias by size\n\nSUVmean / SUVmax bias (%) of the lesions in each "
            "diameter bin, ± 1.96 standard errors over those lesions (each first averaged "
            "over its noise realisations).\n\n" + sizes
        )
    atomic_write_text(out / "results.md", header + results_markdown(results) + uncertainty)
    atomic_write_text(out / "results.csv", results_csv(results))
    atomic_write_text(out / "results.json", results_to_json(results))
    if results.osem:
        atomic_write_text(out / "selection.md", selection_markdown(results))
    if results.curves and results.realisations >= 2:
        plot_contrast_noise(results, out / "contrast_noise.png")


def plot_contrast_noise(results: EvalResults, path: str | os.PathLike[str]) -> None:
    """Write the contrast-recovery vs background-noise plot (PNG) to ``path`` atomically.

    Raises:
        ValueError: ``results`` has no curves.
    """
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
