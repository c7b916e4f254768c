"""Benchmark of the Joseph projector; prints markdown tables for docs/performance.md.

Cases:
  (a) 2D: 256 x 256 image (2 mm voxels), 360 views x 256 parallel lines over 180 degrees,
      side by side with astra-toolbox's CPU ``linear`` projector on the same problem.
  (b) 3D Siemens mMR span-11 sinogram (837 x 252 x 344) into 344 x 344 x 127, non-TOF.
  (c) TOF: Siemens Vision preset (33 TOF bins), span 19, into 440 x 440 x 159 of 1.65 x 1.65 x 1.65 mm.

On CPU, (b) and (c) time a subset of views and extrapolate to the full sinogram
(labelled "extrapolated"). (b) and (c) use the forward model's path (factored sinogram
LORs, ``pet_dl.projector.sinogram_forward``); (c) also times the same LORs without TOF,
and prints the TOF / non-TOF ratio. Times are the best of ``--repeats`` runs after one
warm-up.

Usage: python bench/projector.py [--device cuda] [--cases abc] [--views 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from collections.abc import Callable

# Two OpenMP pools share the cores (torch's and numba's); spinning idle threads of one
# slow the other down a lot on a small machine. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from pet_dl.geometry import SinogramGeometry, get_scanner
from pet_dl.projector import (  # noqa: E402
    SinogramLORs,
    joseph_back,
    joseph_forward,
    sinogram_back,
    sinogram_forward,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Best wall time (s) of ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def parallel_lors_2d(num_views: int, num_lines: int, spacing_mm: float, radius_mm: float):  # noqa: ANN201
    """Parallel-beam LORs in the plane z = 0: ``(num_views, num_lines, 3)`` start and end, mm."""
    angles = torch.arange(num_views, dtype=torch.float64) * math.pi / num_views
    r = (torch.arange(num_lines, dtype=torch.float64) - (num_lines - 1) / 2) * spacing_mm
    cx, cy = (r[None] * angles.cos()[:, None]), (r[None] * angles.sin()[:, None])
    dx, dy = -angles.sin()[:, None], angles.cos()[:, None]
    zero = torch.zeros(num_views, num_lines, dtype=torch.float64)
    start = torch.stack([cx - radius_mm * dx, cy - radius_mm * dy, zero], -1)
    end = torch.stack([cx + radius_mm * dx, cy + radius_mm * dy, zero], -1)
    return start, end


def row(name: str, fwd: float, back: float, num_lors: int, note: str = "") -> str:
    both = fwd + back
    return (
        f"| {name} | {fwd:.4f} | {back:.4f} | {both:.4f} | {num_lors / both / 1e6:.2f} | {note} |"
    )


HEADER = (
    "| projector | forward (s) | back (s) | forward + back (s) | M LORs/s (fwd+back) | note |\n"
    "|---|---|---|---|---|---|"
)


def case_2d(device: torch.device, repeats: int, use_astra: bool) -> None:
    n, vs = 256, 2.0
    start, end = parallel_lors_2d(360, 256, vs, 400.0)
    start, end = start.to(device, torch.float32), end.to(device, torch.float32)
    origin = (-(n - 1) * vs / 2, -(n - 1) * vs / 2, 0.0)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(n, n, 1, generator=g).to(device)
    num_lors = start.shape[0] * start.shape[1]
    values = joseph_forward(image, start, end, origin, (vs, vs, vs))
    fwd = best_time(lambda: joseph_forward(image, start, end, origin, (vs, vs, vs)), repeats, device)
    back = best_time(lambda: joseph_back(values, start, end, (n, n, 1), origin, (vs, vs, vs)), repeats, device)
    print("\n### (a) 2D: 256 x 256 image, 360 views x 256 parallel lines, float32\n")
    print(HEADER)
    print(row(f"pet_dl ({device.type})", fwd, back, num_lors))
    if not use_astra:
        print("| astra linear (CPU) | - | - | - | - | skipped (--no-astra) |")
        return
    try:
        import astra  # noqa: PLC0415 - optional bench dependency
        import numpy as np  # noqa: PLC0415
    except ImportError:
        print("| astra linear (CPU) | - | - | - | - | astra-toolbox not installed (pip install astra-toolbox) |")
        return
    vol = astra.create_vol_geom(n, n)
    proj = astra.create_proj_geom("parallel", 1.0, 256, np.linspace(0, np.pi, 360, endpoint=False))
    pid = astra.create_projector("linear", proj, vol)
    x = image[:, :, 0].cpu().numpy()
    sino = astra.create_sino(x, pid, returnData=True)[1]

    def a_fwd() -> None:
        sid, _ = astra.create_sino(x, pid)
        astra.data2d.delete(sid)

    def a_back() -> None:
        bid, _ = astra.create_backprojection(sino, pid)
        astra.data2d.delete(bid)

    a_f = best_time(a_fwd, repeats, torch.device("cpu"))
    a_b = best_time(a_back, repeats, torch.device("cpu"))
    astra.projector.delete(pid)
    print(row(f"astra {astra.__version__} linear (CPU)", a_f, a_b, num_lors))
    print(
        f"\nratio pet_dl / astra: forward {fwd / a_f:.2f}, back {back / a_b:.2f}, "
        f"forward + back {(fwd + back) / (a_f + a_b):.2f}"
    )


def _views_subset(num_views: int, count: int | None) -> torch.Tensor | None:
    if count is None or count >= num_views:
        return None
    return torch.linspace(0, num_views - 1, count).round().long()


def case_3d(
    title: str, sino: SinogramGeometry, shape: tuple[int, int, int], voxel: tuple[float, float, float],
    device: torch.device, repeats: int, views: int | None,
) -> None:
    subset = _views_subset(sino.num_views, views)
    # the forward model's path: factored LORs (views' xy, planes' z), validated once
    lors_parts = SinogramLORs.from_geometry(sino, subset, dtype=torch.float64).to(device)
    origin = tuple(-(n - 1) * v / 2 for n, v in zip(shape, voxel))
    g = torch.Generator().manual_seed(0)
    image = torch.rand(shape, generator=g).to(device)
    timed_views = lors_parts.shape[1]
    scale = sino.num_views / timed_views
    lors = lors_parts.num_lors
    print(f"\n### {title}\n")
    print(f"sinogram {tuple(sino.shape)}, image {shape} of {voxel} mm, float32\n")
    print(HEADER)
    times = {}
    # TOF cases are timed beside the same LORs without TOF (the ratio is the TOF cost)
    for tof in ([None, sino.scanner.tof] if sino.tof else [None]):
        def fwd(tof=tof) -> torch.Tensor:  # noqa: ANN001
            return sinogram_forward(image, lors_parts, origin, voxel, tof)

        def back(y: torch.Tensor, tof=tof) -> torch.Tensor:  # noqa: ANN001
            return sinogram_back(y, lors_parts, shape, origin, voxel, tof)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        y = fwd()
        t_f = best_time(fwd, repeats, device)
        t_b = best_time(lambda y=y: back(y), repeats, device)
        times[tof is not None] = t_f + t_b
        note = "full sinogram" if scale == 1 else f"{timed_views} of {sino.num_views} views timed, extrapolated x{scale:.1f}"
        if device.type == "cuda":
            note += f"; peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
        name = f"pet_dl ({device.type}){f', TOF {tof.num_bins} bins' if tof is not None else ', non-TOF'}"
        print(row(name, t_f * scale, t_b * scale, int(lors * scale), note))
    if len(times) == 2:
        print(f"\nTOF / non-TOF (forward + back, same LORs, same run): {times[True] / times[False]:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cases", default="abc", help="which cases to run, e.g. 'a' or 'bc'")
    parser.add_argument("--views", type=int, default=None,
                        help="views timed in (b), (c) (default: 4 on CPU, all on CUDA)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-astra", action="store_true", help="skip the astra comparison")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    views = args.views if args.views is not None else (None if device.type == "cuda" else 4)

    print("## Machine\n")
    print(f"- {platform.platform()}, python {platform.python_version()}, torch {torch.__version__}")
    print(f"- CPU count {os.cpu_count()}, usable {len(os.sched_getaffinity(0))}, torch threads {torch.get_num_threads()}")
    try:
        import numba  # noqa: PLC0415

        print(f"- numba {numba.__version__}, threads {numba.get_num_threads()}")
    except ImportError:
        pass
    if device.type == "cuda":
        print(f"- device {torch.cuda.get_device_name(device)}")
    if "a" in args.cases:
        case_2d(device, args.repeats, not args.no_astra)
    if "b" in args.cases:
        mmr = SinogramGeometry(get_scanner("mmr"), num_radial=344, span=11, max_ring_difference=60)
        case_3d("(b) 3D Siemens mMR span 11, non-TOF", mmr, (344, 344, 127), (2.086, 2.086, 2.031),
                device, args.repeats, views)
    if "c" in args.cases:
        vision = SinogramGeometry(get_scanner("vision"), num_radial=520, span=19, max_ring_difference=66, tof=True)
        case_3d("(c) 3D Siemens Vision span 19, TOF", vision, (440, 440, 159), (1.65, 1.65, 1.65),
                device, args.repeats, views if views is None else max(1, views // 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
