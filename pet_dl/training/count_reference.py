"""The full-dose count density of a training set: the reference of count-level conditioning.

A network trained with ``count_reference`` (see :class:`pet_dl.models.base.ReconNetwork`)
is conditioned on ``count_density(scan) / count_reference``, measured from each scan, so a
real scan without dose metadata gets the treatment its counts call for. The reference is
the median over a training set's scans of ``count_density / dose_fraction``:

    python -m pet_dl.training.count_reference data/generated/brainweb2d [--split train]

prints it (put it in the training config as ``model.network.count_reference``) and, per
dose, how far the measured level strays from the true dose fraction (5th-95th percentile
of their ratio).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from pet_dl.models.blocks import count_density

if TYPE_CHECKING:
    from pet_dl.datasets import GridGroups, PairedScanDataset


def dataset_densities(dataset: PairedScanDataset | GridGroups) -> tuple[torch.Tensor, torch.Tensor]:
    """``(density, dose_fraction)`` of every item, each ``(N,)``: counts per mL, and (0, 1]
    (folders on several grids: each on its own grid's voxels)."""
    densities, fractions = [], []
    for part in getattr(dataset, "parts", [dataset]):
        vs = tuple(float(v) for v in part.image.voxel_size_mm)
        for i in range(len(part)):
            item = part[i]
            d = count_density(item["prompts"][None], item["additive"][None], item["initial"][None], vs)
            densities.append(float(d[0]))
            fractions.append(float(item["dose_fraction"]))
    return torch.tensor(densities, dtype=torch.float64), torch.tensor(fractions, dtype=torch.float64)


def count_reference(density: torch.Tensor, dose_fraction: torch.Tensor) -> float:
    """Median of ``density / dose_fraction``: the full-dose count density, counts per mL."""
    return float((density / dose_fraction).median())


def main(argv: Sequence[str] | None = None) -> int:
    from pet_dl.datasets import open_paired_scans

    parser = argparse.ArgumentParser(
        prog="python -m pet_dl.training.count_reference",
        description="Full-dose count density (counts per mL) of a dataset: a network's count_reference.",
    )
    parser.add_argument("data_dir", nargs="+", help="dataset folder(s) written by `pet_dl dataset`")
    parser.add_argument("--split", default="train")
    args = parser.parse_args(argv)
    try:
        dataset = open_paired_scans(args.data_dir, args.split)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    density, fraction = dataset_densities(dataset)
    reference = count_reference(density, fraction)
    print(f"count_reference: {reference:.6g}   # counts per mL, median of {len(density)} scans")
    level = density / reference
    for f in sorted(set(fraction.tolist()), reverse=True):
        ratio = level[fraction == f] / f
        lo, hi = torch.quantile(ratio, torch.tensor([0.05, 0.95], dtype=torch.float64)).tolist()
        print(f"dose 1/{1 / f:g}: measured level / dose fraction {lo:.2f}-{hi:.2f} (5-95 %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
