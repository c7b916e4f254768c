"""``python -m pet_dl dataset --recipe data/<name>.yaml --out data/generated/<name>``.

Simulates the recipe's train / val / test splits of paired low-dose scans into sharded
HDF5 files (see :mod:`pet_dl.datasets`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Register the ``dataset`` sub-command."""
    p = subparsers.add_parser(
        "dataset", help="simulate train/val/test sets of paired low-dose scans (HDF5 shards)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--recipe", required=True, help="recipe YAML (data/*.yaml)")
    p.add_argument("--out", required=True, help="output folder (data/generated/<name>)")
    p.add_argument("--splits", nargs="+", choices=["train", "val", "test"], default=None,
                   help="splits to generate (default: all in the recipe)")
    p.add_argument("--max-phantoms", nargs="+", default=None, metavar="SPLIT=N",
                   help="write at most N phantoms of that split, the first seeds of its range "
                   "(e.g. val=40: a training run's validation loss needs a few dozen)")
    p.set_defaults(run=run)


def split_limits(items: list[str] | None) -> dict[str, int]:
    """``["val=40", ...]`` -> ``{"val": 40, ...}`` (the counts are checked by
    :func:`pet_dl.datasets.generate_dataset`)."""
    from pet_dl.commands import name_value
    from pet_dl.errors import InvalidInputError

    limits: dict[str, int] = {}
    for item in items or []:
        split, count = name_value(item, "--max-phantoms", "SPLIT=N")
        if not count.lstrip("-").isdigit():
            raise InvalidInputError(f"--max-phantoms needs SPLIT=N with N an integer, got {item!r}")
        limits[split] = int(count)
    return limits


def run(args: argparse.Namespace) -> int:
    """Generate the dataset; prints the shard paths."""
    from pet_dl.datasets import generate_dataset
    from pet_dl.recipes import load_recipe

    limits = split_limits(args.max_phantoms)
    recipe = load_recipe(args.recipe)
    paths = generate_dataset(recipe, args.out, splits=args.splits, progress=sys.stderr.isatty(),
                             max_phantoms=limits)
    for path in paths:
        print(path)
    return 0
