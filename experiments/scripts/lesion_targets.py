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
from collections import defaultdict


def per_lesion(row: dict, min_diameter_mm: float) -> dict[tuple[int, int], tuple[float, float]]:
    """(case seed, lesion index) -> (SUVmean bias, SUVmax bias), averaged over realisations."""
    pooled: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for seed, lesions in zip(row["case_seed"], row["case_lesions"]):
        for i, (diameter, mean_bias, max_bias) in enumerate(lesions):
            if diameter >= min_diameter_mm:
                pooled[(seed, i)].append((mean_bias, max_bias))
    return {k: (sum(a for a, _ in v) / len(v), sum(b for _, b in v) / len(v)) for k, v in pooled.items()}


def mean_interval(values: list[float]) -> str:
    """``mean ± 1.96 SE`` in percent of the fractions ``values``."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1)) if n > 1 else float("nan")
    return f"{100 * mean:+.1f} ± {196 * sd / math.sqrt(n):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="results.json written by `python -m pet_dl evaluate`")
    parser.add_argument("--min-diameter-mm", type=float, default=10.0)
    parser.add_argument("--factor", type=float, default=20.0)
    parser.add_argument("--reference", default="OSEM", help="method whose full-dose bias is the reference")
    args = parser.parse_args()
    rows = json.load(open(args.results))["rows"]
    ref_rows = [r for r in rows if r["method"] == args.reference and r["factor"] == 1.0]
    if not ref_rows:
        raise SystemExit(f"error: no full-dose {args.reference} row in {args.results}")
    ref = per_lesion(ref_rows[0], args.min_diameter_mm)
    if len(ref) < 2:
        raise SystemExit(f"error: fewer than 2 lesions of >= {args.min_diameter_mm:g} mm")
    print(f"hot lesions >= {args.min_diameter_mm:g} mm: {len(ref)}; factor {args.factor:g}; "
          f"reference: {args.reference} at full dose, SUVmean {mean_interval([v[0] for v in ref.values()])} %, "
          f"SUVmax {mean_interval([v[1] for v in ref.values()])} %")
    print("| method | SUVmean bias (%) | SUVmax bias (%) | SUVmean - reference (points, paired) | SUVmax - reference (points, paired) |")
    print("|---|---|---|---|---|")
    for row in rows:
        if row["factor"] != args.factor:
            continue
        biases = per_lesion(row, args.min_diameter_mm)
        keys = [k for k in ref if k in biases]
        cells = [mean_interval([biases[k][j] for k in keys]) for j in (0, 1)]
        cells += [mean_interval([biases[k][j] - ref[k][j] for k in keys]) for j in (0, 1)]
        print(f"| {row['method']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
