"""Paired false-hot-spot differences of two models on the same scans, with 95 % intervals.

    python experiments/scripts/paired_blobs.py BASE.log CANDIDATE.log

Each log is the output of ``wide_object_scores.py ... --per-case`` for one model on the same
scans (same ``--object``, ``--realisations`` and ``--scan-seed``); per dose it prints both
models' blob totals and the mean per-scan difference (candidate − base) ± 1.96 standard
errors. docs/experiments.md, the v48 round ("How large a blob difference 32 scans can see").
"""

from __future__ import annotations

import sys

from pooled_cases import DOSES, cases, mean_interval


def main() -> None:
    base = [r for _, r in cases(sys.argv[1])]
    candidate = [r for _, r in cases(sys.argv[2])]
    if not base or len(base) != len(candidate):
        raise SystemExit(f"error: {len(base)} and {len(candidate)} scans; give two --per-case logs of the same scans")
    for j, dose in enumerate(DOSES):
        d = [float(c[j][1] - b[j][1]) for b, c in zip(base, candidate)]
        print(f"{dose}: {sum(b[j][1] for b in base)} vs {sum(c[j][1] for c in candidate)} blobs; "
              f"difference per image {mean_interval(d)}")


if __name__ == "__main__":
    main()
