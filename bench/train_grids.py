"""Training step time on the model's own grid against a wide grid (training on several grids).

One step = ``ReconModule.training_step`` (the shipped network's architecture with its anchor,
L1 + NRMSE + false-hot-spot loss) + backward, on real shards: a batch of the first folder's
scans (the 96-voxel grid) against one scan of the second folder's (a whole body with arms on
the 224-voxel grid, native 344 bins); alternating, median of ``--repeats`` after a warm-up
each; one process. Needs the two folders (``python -m pet_dl dataset --recipe
data/torso_window2d_flt.yaml ...`` and ``data/torso_arms2d_flt.yaml``, docs/training.md).

    OMP_NUM_THREADS=1 python bench/train_grids.py
"""

from __future__ import annotations

import argparse
import time

import torch
import yaml

from pet_dl.training import ReconModule
from pet_dl.training.batching import Collate
from pet_dl.training.datamodule import PETDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--own", default="data/generated/torso_window2d_flt")
    parser.add_argument("--wide", default="data/generated/torso_arms2d_flt")
    parser.add_argument("--config", default="experiments/configs/brainweb2d_arms.yaml")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = yaml.safe_load(open(args.config))["model"]
    losses = {k: v for k, v in model.items() if k in ("loss", "nrmse_weight", "hot_spot_weight")}
    module = ReconModule(model["network"], **losses)
    dm = PETDataModule(data_dir=[args.own, args.wide], batch_size=args.batch_size, other_grid_batch_size=1)
    dm.setup()
    data = dm._dataset("train")
    collate = Collate(dm.geometry(), dm.other_geometries())
    batches = {
        f"{args.batch_size} x {dm.geometry().image.shape[0]}-voxel": collate([data[i] for i in range(args.batch_size)]),
        f"1 x {dm.other_geometries()[0].image.shape[0]}-voxel": collate([data[len(data) - 1]]),
    }
    opt = torch.optim.AdamW(module.parameters(), 1e-6)

    def step(batch: dict) -> float:
        start = time.perf_counter()
        module.training_step(batch, 0).backward()
        opt.zero_grad()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in batches}
    for batch in batches.values():
        step(batch)  # warm-up
    for _ in range(args.repeats):
        for name, batch in batches.items():
            times[name].append(step(batch))
    medians = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    first = next(iter(medians.values()))
    print(f"| batch | step (s), median of {args.repeats} | ratio |\n|---|---:|---:|")
    for name, value in medians.items():
        print(f"| {name} | {value:.2f} | {value / first:.2f} |")


if __name__ == "__main__":
    main()
