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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Generate the dataset; prints the shard paths."""
    from pet_dl.datasets import generate_dataset
    from pet_dl.recipes import load_recipe

    recipe = load_recipe(args.recipe)
    paths = generate_dataset(recipe, args.out, splits=args.splits, progress=sys.stderr.isatty())
    for path in paths:
        print(path)
    return 0
