"""Issue 18's lesion target read from an evaluation's results.json (docs/results.md, "Targets").

    python experiments/scripts/lesion_targets.py outputs/eval_brainweb2d/results.json \
        [--min-diameter-mm 10] [--factor 20] [--reference OSEM]

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


def cell(stats: dict[str, float], key: str) -> str:
    """``mean ± 1.96 SE`` in percent of a relative bias of ``stats``."""
    return f"{100 * stats[key]:+.1f} ± {196 * stats[key + '_sem']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="results.json written by `python -m pet_dl evaluate`")
    parser.add_argument("--min-diameter-mm", type=float, default=10.0)
    parser.add_argument("--factor", type=float, default=20.0)
    parser.add_argument("--reference", default="OSEM", help="method whose full-dose bias is the reference")
    args = parser.parse_args()
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
