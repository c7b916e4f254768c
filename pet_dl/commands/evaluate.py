"""``python -m pet_dl evaluate``: learned vs classical reconstruction on held-out phantoms.

Examples::

    python -m pet_dl evaluate --config configs/evaluate2d.yaml --out outputs/evaluate2d
    python -m pet_dl evaluate --config configs/evaluate2d.yaml --out /tmp/quick \\
        --test-phantoms 2 --realisations 2 --val-phantoms 1      # a few minutes on CPU

Writes ``results.md`` and ``results.csv`` (PSNR, SSIM, NRMSE, lesion SUVmean / SUVmax
bias per method and reduction factor, mean ± std over noise realisations),
``selection.md`` (OSEM iterations / post-filter and MAP beta chosen on validation) and
``contrast_noise.png``. See :mod:`pet_dl.evaluate` for the definitions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Register the ``evaluate`` sub-command."""
    p = subparsers.add_parser(
        "evaluate", help="evaluate networks against OSEM and MAP-RDP on held-out phantoms",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, type=Path, help="evaluation config (configs/evaluate2d.yaml)")
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.add_argument("--test-phantoms", type=int, default=None, help="use the first N test phantoms")
    p.add_argument("--realisations", type=int, default=None, help="noise realisations per test phantom")
    p.add_argument("--val-phantoms", type=int, default=None, help="validation phantoms for the selection")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; prints the markdown table."""
    from pet_dl.errors import InvalidInputError
    from pet_dl.evaluate import load_eval_config, results_markdown, run_config

    for name in ("test_phantoms", "realisations", "val_phantoms"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InvalidInputError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    config = load_eval_config(args.config)  # a bad config fails before any output
    args.out.mkdir(parents=True, exist_ok=True)
    results = run_config(
        config, args.out, test_phantoms=args.test_phantoms, realisations=args.realisations,
        val_phantoms=args.val_phantoms, progress=sys.stderr.isatty(),
    )
    print(results_markdown(results))
    print(f"wrote {args.out}/results.md, results.csv, selection.md, contrast_noise.png", file=sys.stderr)
    return 0
