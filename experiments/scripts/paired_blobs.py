"""Paired false-hot-spot differences of two models on the same scans, with 95 % intervals.

    python experiments/scripts/paired_blobs.py BASE.log CANDIDATE.log

Each log is the output of ``wide_object_scores.py ... --per-case`` for one model on the same
scans (same ``--object``, ``--realisations`` and ``--scan-seed``); per dose it prints both
models' blob totals and the mean per-scan difference (candidate − base) ± 1.96 standard
errors. docs/experiments.md, the v48 round ("How large a blob difference 32 scans can see").
"""

from __future__ import annotations

import math
import re
import sys

DOSES = ("full", "1/4", "1/10", "1/20", "1/50", "1/100")


def rows(path: str) -> list[list[int]]:
    """Per scan, the network's false hot spots per dose, from a ``--per-case`` table."""
    out = []
    for line in open(path, encoding="utf-8"):
        if re.match(r"\| \d+ \| \d+ \|", line):
            cells = line.strip().strip("|").split("|")[2:]
            out.append([int(re.search(r"\((\d+) /", c).group(1)) for c in cells])
    return out


def main() -> None:
    base, candidate = rows(sys.argv[1]), rows(sys.argv[2])
    if not base or len(base) != len(candidate):
        raise SystemExit(f"error: {len(base)} and {len(candidate)} scans; give two --per-case logs of the same scans")
    n = len(base)
    for j, dose in enumerate(DOSES):
        d = [c[j] - b[j] for b, c in zip(base, candidate)]
        mean = sum(d) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
        print(f"{dose}: {sum(b[j] for b in base)} vs {sum(c[j] for c in candidate)} blobs; "
              f"difference per image {mean:+.2f} ± {1.96 * sd / math.sqrt(n):.2f}")


if __name__ == "__main__":
    main()
