"""Pool the per-case tables of ``wide_object_scores.py --per-case`` runs: network − OSEM per dose.

    python experiments/scripts/pooled_cases.py RUN.log [RUN.log ...]

Each log holds one model's ``--per-case`` table (e.g. the whole ACRIN slices: ``--object
acrin --realisations 8`` and ``--realisations 16 --first 8 --scan-seed 300008``). Per dose,
over all the cases of all the logs and per image grid (on the ACRIN set the grid tells the
slice: 200 voxels the 476 mm slice, 156 the 382 mm one): the mean network − OSEM NRMSE in
points ± 1.96 standard errors, and the false hot spots per image, network / OSEM.
docs/results.md, "Objects wider than the model's grid".
"""

from __future__ import annotations

import math
import os
import re
import sys

DOSES = ("full", "1/4", "1/10", "1/20", "1/50", "1/100")
CELL = re.compile(r"([+-]?\d+\.\d+) \((\d+) / (\d+)\)")


def cases(path: str) -> list[tuple[str, list[tuple[float, int, int]]]]:
    """``(grid, [(network − OSEM, network's hot spots, OSEM's) per dose])`` per case row."""
    out = []
    for line in open(path, encoding="utf-8"):
        if re.match(r"\| \d+ \| \d+ \|", line):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            values = [CELL.fullmatch(c) for c in cells[2:]]
            if len(values) != len(DOSES) or not all(values):
                raise SystemExit(f"error: {path}: unreadable row {line.strip()!r}")
            out.append((cells[1], [(float(m[1]), int(m[2]), int(m[3])) for m in values]))  # type: ignore[index]
    return out


def mean_interval(values: list[float]) -> str:
    """``mean ± half-width`` of the 95 % interval (1.96 standard errors) of ``values``."""
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else math.nan
    return f"{mean:+.2f} ± {1.96 * se:.2f}"


def summary(rows: list[list[tuple[float, int, int]]], label: str) -> str:
    """One table row: the mean difference ± 1.96 SE per dose, then the hot spots."""
    n = len(rows)
    parts = [mean_interval([r[j][0] for r in rows]) for j in range(len(DOSES))]
    spots = " / ".join(f"{sum(r[j][1] for r in rows) / n:.2f}:{sum(r[j][2] for r in rows) / n:.2f}"
                       for j in range(len(DOSES)))
    return f"| {label} ({n}) | " + " | ".join(parts) + f" | {spots} |"


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0] + "\n\nusage: pooled_cases.py RUN.log [RUN.log ...]")
        raise SystemExit(0 if len(sys.argv) > 1 else 2)
    missing = [path for path in sys.argv[1:] if not os.path.isfile(path)]
    if missing:
        raise SystemExit(f"error: no such log: {missing[0]}")
    rows = [c for path in sys.argv[1:] for c in cases(path)]
    if not rows:
        raise SystemExit("error: no per-case rows; give logs of wide_object_scores.py --per-case")
    print("| cases | " + " | ".join(DOSES) + " | hot spots per image, network:OSEM |")
    print("|---|" + "---|" * (len(DOSES) + 1))
    print(summary([r for _, r in rows], "all"))
    for grid in sorted({g for g, _ in rows}, key=int, reverse=True):
        print(summary([r for g, r in rows if g == grid], f"grid {grid}"))


if __name__ == "__main__":
    main()
