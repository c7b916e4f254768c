"""Issue 18's lesion target read from an evaluation's results.json (docs/results.md, "Targets").

    python experiments/scripts/lesion_targets.py outputs/eval_brainweb2d/results.json \
        [--min-diameter-mm 10] [--factor 20] [--reference OSEM]
    python experiments/scripts/lesion_targets.py --simulate 200000 200640 [CHECKPOINT]

``--simulate FIRST STOP`` scores more test slices than the evaluation (one realisation):
``data/brainweb2d.yaml``'s seeds ``FIRST .. STOP - 1``, OSEM at full dose and at
``--factor`` with the settings chosen on validation (docs/results.md, "Parameters chosen on
validation") and the network (default: shipped) at ``--factor``; then the same table.

For every method at ``--factor``, the SUVmean and SUVmax biases of the hot lesions of at
least ``--min-diameter-mm`` (each lesion first averaged over its noise realisations), and
their differences from ``--reference`` at full dose, paired lesion by lesion: means ± 1.96
standard errors over the lesions. The target: SUVmean within 5 points of full-dose OSEM's
own bias, SUVmax within 10 %.
"""

from __future__ import annotations

import argparse
import json
import math

from pet_dl.evaluate.scoring import bias_by_size


def lesions_at_least(case_lesions: list, case_seed: list, min_diameter_mm: float) -> dict[str, float]:
    """:func:`pet_dl.evaluate.scoring.bias_by_size` over one bin: lesions >= ``min_diameter_mm``."""
    return bias_by_size(case_lesions, case_seed, (min_diameter_mm, math.inf))[0]


#: OSEM (iterations x 7 subsets, post-filter FWHM mm) chosen on the BrainWeb validation subjects
OSEM_CHOSEN_BRAINWEB = {1.0: (20, 4.0), 4.0: (8, 4.0), 10.0: (6, 6.0), 20.0: (4, 6.0), 50.0: (2, 6.0), 100.0: (2, 6.0)}


def simulated_rows(seeds: range, factor: float, checkpoint: str | None) -> list[dict]:
    """Evaluation rows (``method``, ``factor``, ``case_seed``, ``case_lesions``) of OSEM at full
    dose and at ``factor`` and of the network at ``factor``, on ``seeds`` of the BrainWeb recipe."""
    import torch

    from pet_dl.evaluate.data import simulate_eval_set
    from pet_dl.evaluate.methods import network_reconstruction, osem_trajectory
    from pet_dl.evaluate.pipeline import score_row
    from pet_dl.inference import load_model
    from pet_dl.recipes import load_recipe
    from pet_dl.recon.filters import gaussian_postfilter

    ev = simulate_eval_set(load_recipe("data/brainweb2d.yaml"), list(seeds), 1, sorted({1.0, factor}))
    rows = []
    for f in sorted({1.0, factor}):
        iterations, fwhm = OSEM_CHOSEN_BRAINWEB[f]
        osem = gaussian_postfilter(osem_trajectory(ev.batch(f), iterations, 7)[-1], ev.image, fwhm)
        rows.append(score_row("OSEM", f, f"{iterations} x 7, {fwhm:g} mm", osem, ev))
    net = load_model(checkpoint, torch.device("cpu")).model
    with torch.no_grad():
        rows.append(score_row("network", factor, "", network_reconstruction(net, ev.batch(factor)), ev))
    return rows


def cell(stats: dict[str, float], key: str) -> str:
    """``mean ± 1.96 SE`` in percent of a relative bias of ``stats``."""
    return f"{100 * stats[key]:+.1f} ± {196 * stats[key + '_sem']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="?", default=None,
                        help="results.json written by `python -m pet_dl evaluate` (with --simulate: "
                             "the network's checkpoint, default shipped)")
    parser.add_argument("--min-diameter-mm", type=float, default=10.0)
    parser.add_argument("--factor", type=float, default=20.0)
    parser.add_argument("--reference", default="OSEM", help="method whose full-dose bias is the reference")
    parser.add_argument("--simulate", type=int, nargs=2, metavar=("FIRST", "STOP"), default=None,
                        help="score these test seeds directly instead of reading results.json")
    args = parser.parse_args()
    if args.simulate is not None:
        rows = simulated_rows(range(*args.simulate), args.factor, args.results)
    elif args.results is None:
        parser.error("give a results.json, or --simulate FIRST STOP")
    else:
        rows = json.load(open(args.results))["rows"]
    refs = [r for r in rows if r["method"] == args.reference and r["factor"] == 1.0]
    if not refs:
        raise SystemExit(f"error: no full-dose {args.reference} row in {args.results}")
    ref = refs[0]
    ref_stats = lesions_at_least(ref["case_lesions"], ref["case_seed"], args.min_diameter_mm)
    if ref_stats["lesions"] < 2:
        raise SystemExit(f"error: fewer than 2 lesions of >= {args.min_diameter_mm:g} mm")
    print(f"hot lesions >= {args.min_diameter_mm:g} mm: {ref_stats['lesions']:.0f}; factor {args.factor:g}; "
          f"reference: {args.reference} at full dose, SUVmean {cell(ref_stats, 'suvmean_bias')} %, "
          f"SUVmax {cell(ref_stats, 'suvmax_bias')} %")
    print("| method | SUVmean bias (%) | SUVmax bias (%) | SUVmean - reference (points, paired) | SUVmax - reference (points, paired) |")
    print("|---|---|---|---|---|")
    for row in rows:
        if row["factor"] != args.factor:
            continue
        if row["case_seed"] != ref["case_seed"]:
            raise SystemExit(f"error: {row['method']} was scored on other cases than the reference")
        # the same cases carry the same lesions in the same order: differences lesion by lesion
        differences = [
            [(d, m - m0, x - x0) for (d, m, x), (_, m0, x0) in zip(lesions, ref_lesions)]
            for lesions, ref_lesions in zip(row["case_lesions"], ref["case_lesions"])
        ]
        stats = lesions_at_least(row["case_lesions"], row["case_seed"], args.min_diameter_mm)
        paired = lesions_at_least(differences, row["case_seed"], args.min_diameter_mm)
        cells = [cell(stats, "suvmean_bias"), cell(stats, "suvmax_bias"),
                 cell(paired, "suvmean_bias"), cell(paired, "suvmax_bias")]
        print(f"| {row['method']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
