"""Training throughput and peak memory of the learned models, 2D and 3D, with and
without activation checkpointing.

    python bench/train.py                   # CPU
    python bench/train.py --device cuda     # GPU (peak memory from torch.cuda)

Synthetic scans on the real Joseph projector (mMR, one plane for 2D; a reduced ring set
for 3D); each step is forward + backward + AdamW on one batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning threads

import torch  # noqa: E402

from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner  # noqa: E402
from pet_dl.models import ReconBatch, build_model  # noqa: E402
from pet_dl.recipes import read_yaml_mapping  # noqa: E402

CASES = {
    "2d": dict(image=((96, 96, 1), (2.6, 2.6, 2.6)), rings=1, radial=128, mashing=2, span=1, mrd=None),
    "3d": dict(image=((64, 64, 16), (3.5, 3.5, 4.0625)), rings=16, radial=112, mashing=6, span=1, mrd=3),
}


def make_batch(
    case: str, batch_size: int, device: torch.device, generator: torch.Generator, dose_fraction: float = 0.05
) -> ReconBatch:
    spec = CASES[case]
    scanner = get_scanner("mmr")
    if spec["rings"] == 1:
        sino = SinogramGeometry.two_d(scanner, num_radial=spec["radial"], view_mashing=spec["mashing"])
    else:
        sino = SinogramGeometry(
            scanner.with_rings(spec["rings"]), num_radial=spec["radial"], span=spec["span"],
            max_ring_difference=spec["mrd"], view_mashing=spec["mashing"],
        )
    image = ImageGeometry.centered(*spec["image"])
    shape = (batch_size, *sino.shape)
    y = torch.poisson(torch.full(shape, 3.0), generator=generator).to(device)
    dose = torch.full((batch_size,), dose_fraction, device=device)
    return ReconBatch(y, torch.ones_like(y), torch.full_like(y, 0.5), dose * 10, dose, sino, image)


# the models a --models name stands for ("unrolled_em" = the shipped architecture)
VARIANTS = {
    "unrolled_em_v6": dict(name="unrolled_em", num_iterations=3, channels=[32, 64, 128], strides=[2, 2], num_res_units=2),
    "unrolled_em_v3": dict(name="unrolled_em", num_iterations=6, channels=[16, 32, 64], strides=[2, 2], num_res_units=1),
    "post_unet": dict(name="post_unet", channels=[32, 64, 128], strides=[2, 2], num_res_units=2),
    "learned_primal_dual": dict(name="learned_primal_dual", num_iterations=6, width=16, depth=3),
}
VARIANTS["unrolled_em_v7"] = {**VARIANTS["unrolled_em_v6"], "share_weights": False}  # a UNet per iteration
VARIANTS["unrolled_em"] = {**VARIANTS["unrolled_em_v7"], "flip_ensemble": [0]}  # v10-v14: + left-right flip average
# the shipped model's own OSEM start (4 x 7), without and with its 0.7-voxel anchor in the loss (v32 round)
VARIANTS["unrolled_em_start4x7"] = {**VARIANTS["unrolled_em"], "init_iterations": 4, "init_subsets": 7}
VARIANTS["unrolled_em_anchored"] = {
    **VARIANTS["unrolled_em_start4x7"], "anchor_in_training": True,
    "anchor": read_yaml_mapping(Path(__file__).resolve().parents[1] / "configs" / "anchor2d_fine.yaml", "anchor"),
}


def network(case: str, name: str, checkpointing: bool) -> dict:
    dims = 2 if case == "2d" else 3
    return {"init_iterations": 1, **VARIANTS[name], "spatial_dims": dims, "checkpointing": checkpointing}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # whole process (Linux: KiB)


def bench(
    case: str, name: str, checkpointing: bool, batch_size: int, steps: int, device: torch.device,
    dose_fraction: float = 0.05,
) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = make_batch(case, batch_size, device, g, dose_fraction)
    net = build_model(network(case, name, checkpointing)).to(device)
    with torch.no_grad():
        batch.initial = net(batch).detach() * 0 + 1.0  # fixed start: time the unrolled part only
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        loss = net(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    step = sorted(times[1:])[len(times[1:]) // 2]  # median, first step is warm-up
    return {"case": case, "model": name, "checkpointing": checkpointing, "batch": batch_size,
            "samples_per_s": batch_size / step, "step_s": step, "peak_mb": peak_memory_mb(device)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--dose-fraction", type=float, default=0.05,
                   help="the scans' dose (1 = full): sets the anchor's OSEM row (full dose: 11 more "
                   "iterations after the 4 x 7 start, 1/20: none)")
    p.add_argument("--cases", nargs="+", default=["2d", "3d"], choices=list(CASES))
    p.add_argument("--models", nargs="+", default=["unrolled_em"], choices=list(VARIANTS),
                   help="unrolled_em = the shipped architecture (3 iterations, a UNet 32-64-128 each, "
                   "averaged over left-right flips); unrolled_em_v7 = the same without the flips; "
                   "unrolled_em_v3 = an older one (6 iterations, UNet 16-32-64); "
                   "unrolled_em_start4x7 = the shipped one from its own 4 x 7 OSEM start (the others "
                   "start from 1 iteration); unrolled_em_anchored = that with its 0.7-voxel anchor in "
                   "the loss (anchor_in_training)")
    p.add_argument("--single", nargs=3, metavar=("CASE", "MODEL", "CKPT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    device = torch.device(args.device)
    if args.single:  # one configuration per process, so the CPU peak RSS is its own
        case, name, ck = args.single
        print(json.dumps(bench(case, name, ck == "1", args.batch_size, args.steps, device, args.dose_fraction)))
        return
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'})")
    print("| case | model | act. ckpt | batch | samples/s | step (s) | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases:
        for name in args.models:
            for ck in (False, True):
                cmd = [sys.executable, __file__, "--device", args.device, "--steps", str(args.steps),
                       "--batch-size", str(args.batch_size), "--dose-fraction", str(args.dose_fraction),
                       "--single", case, name, str(int(ck))]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                print(f"| {r['case']} | {r['model']} | {'yes' if ck else 'no'} | {r['batch']} | "
                      f"{r['samples_per_s']:.2f} | {r['step_s']:.3f} | {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
