"""Row kernels against per-LOR kernels for factored non-TOF sinograms, side by side in one run.

    python bench/factored_kernels.py                        # 3D on 8 views, 2D, one OSEM sub-iteration
    python bench/factored_kernels.py --cases full --repeats 1   # the whole mMR span-11 sinogram

"new" is what ``numba_kernels.forward_factored`` / ``back_factored`` run for a non-TOF
sinogram of several planes: ``_forward_rows`` / ``_back_rows``, one (view, radial bin) row
per iteration with all planes inside. "old" is the per-LOR kernels (``_forward_plain`` /
``_back_plain``, kept as ``_forward_factored_per_lor`` / ``_back_factored_per_lor``), which
every factored projection took before. Cases:

- ``3d``: Siemens mMR span 11 (837 planes x 344 radial bins) on ``--views`` evenly spread of
  its 252 views, into its native 344 x 344 x 127 grid of 2.086 x 2.086 x 2.031 mm, float32,
  batch 1;
- ``full``: the same on all 252 views (72.6 M LORs);
- ``2d``: one mMR plane (252 views x 344 bins) into 344 x 344 x 1, batch 1 and 8: the
  training's 2D case, where ``forward_factored`` keeps the per-LOR kernels (``P == 1``);
  "new" forces the row kernels there;
- ``osem``: one sub-iteration of a 21-subset OSEM of the 3D mMR (subset 0, 12 views;
  ``bench/recon.py``'s extrapolated case: flat Poisson data, no attenuation): one
  ``em_update`` (a forward and a backprojection of the subset, through the forward model;
  the subset's sensitivity is setup, computed once before and not timed), with the old
  kernels swapped in for "old". x 21 = one iteration, extrapolated from one sub-iteration;
- ``iteration``: the row kernels only (the per-LOR ones take a quarter of an hour): the
  setup (``OrderedSubsets.of_scan`` computing the 21 subset sensitivities into a fresh cache
  folder), then ``osem`` for one iteration of 21 subsets reading them from that folder (its
  uniform start image, one image read per sub-iteration): a measured full iteration.

Each case checks that the forward projections are equal bit for bit and prints the largest
backprojection difference relative to the largest value. Times: best of ``--repeats`` after
a warm-up (numba compiles or loads its cache there), old and new alternating in each repeat
so that a shared machine's load slows both alike; wall and CPU (``time.process_time``, all
threads) seconds. ``--threads`` sets NUMBA_NUM_THREADS and OMP_NUM_THREADS (default 2).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="3d,2d,osem", help="comma-separated: 3d, full, 2d, osem, iteration")
    parser.add_argument("--views", type=int, default=8, help="mMR views of the 3d case (evenly spread)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="NUMBA_NUM_THREADS and OMP_NUM_THREADS")
    args = parser.parse_args(argv)
    unknown = set(args.cases.split(",")) - {"3d", "full", "2d", "osem", "iteration"}
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}")
    return args


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and CPU seconds of one call, and its result."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def side_by_side(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, tuple[float, float]], dict]:
    """Best (wall, CPU) seconds of each function over ``repeats`` rounds calling them all in
    turn, and each one's result of the first round."""
    best = {k: (float("inf"), float("inf")) for k in fns}
    first: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c, out = timed(fn)
            first.setdefault(name, out)
            best[name] = (min(best[name][0], w), min(best[name][1], c))
    return best, first



def native_osem_problem(mmr: Any, vox: tuple[float, float, float]) -> tuple[Any, Any, Any, Any]:
    """The mMR span-11 sinogram, the native 344 x 344 x 127 grid, a forward model with a
    flat additive term, and Poisson counts of 5 per bin (seeded): the OSEM cases' problem,
    ``(SinogramGeometry, ImageGeometry, PETForwardModel, counts)``."""
    import torch

    from pet_dl.forward_model import PETForwardModel, SinogramProjector
    from pet_dl.geometry import ImageGeometry, SinogramGeometry

    sino = SinogramGeometry(mmr, num_radial=344, span=11, max_ring_difference=60)
    image = ImageGeometry.centered((344, 344, 127), vox)
    model = PETForwardModel(SinogramProjector(sino, image), None, torch.full(sino.shape, 0.5), calibration=1e-3)
    y = torch.poisson(torch.full(sino.shape, 5.0), generator=torch.Generator().manual_seed(0))
    return sino, image, model, y

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["NUMBA_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's and numba's pools share the cores

    import numba  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner  # noqa: PLC0415
    from pet_dl.projector import SinogramLORs  # noqa: PLC0415
    from pet_dl.projector import numba_kernels as nk  # noqa: PLC0415
    from pet_dl.projector._checks import Geometry  # noqa: PLC0415
    from pet_dl.recon import osem  # noqa: PLC0415
    from pet_dl.recon.em import OrderedSubsets, em_update  # noqa: PLC0415

    mmr = get_scanner("mmr")
    vox = (2.08626, 2.08626, 2.03125)
    cases = args.cases.split(",")
    rows: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(0)

    def kernels(name: str, lors: SinogramLORs, image: ImageGeometry, batch: int, force_rows: bool = False) -> None:
        geom = Geometry(tuple(image.shape), tuple(image.origin_mm), tuple(image.voxel_size_mm))
        parts = lors.parts()
        x = torch.rand(batch, *image.shape, generator=gen)
        packed = nk._factored(*parts)

        def new_fwd() -> torch.Tensor:
            if force_rows:
                return nk._run_forward(x, packed, geom, None, rows=True)
            return nk.forward_factored(x, *parts, geom)

        def new_back(y: torch.Tensor) -> torch.Tensor:
            if force_rows:
                return nk._run_back(y, packed, geom, None, rows=True)
            return nk.back_factored(y, *parts, geom)

        def old_fwd() -> torch.Tensor:
            return nk._forward_factored_per_lor(x, *parts, geom)

        def old_back(y: torch.Tensor) -> torch.Tensor:
            return nk._back_factored_per_lor(y, *parts, geom)

        load0 = os.getloadavg()[0]
        y = torch.rand(batch, lors.num_lors, generator=gen)
        t, out = side_by_side({"old fwd": old_fwd, "new fwd": new_fwd,
                               "old back": lambda: old_back(y), "new back": lambda: new_back(y)}, args.repeats)
        y_old, y_new, b_old, b_new = out["old fwd"], out["new fwd"], out["old back"], out["new back"]
        rows.append({"case": name, "lors": y_old.shape[1], "batch": batch, "t": t,
                     "fwd_equal": bool(torch.equal(y_new, y_old)),
                     "back_diff": float((b_new - b_old).abs().max() / b_old.abs().max()),
                     "load": f"{load0:.1f}-{os.getloadavg()[0]:.1f}"})
        print(rows[-1], flush=True)

    # numba compiles (or loads its cache) on a small problem, so that every timed call is warm
    small = ImageGeometry.centered((8, 8, 8), (40.0, 40.0, 20.0))
    small_lors = SinogramLORs.from_geometry(SinogramGeometry(mmr.with_rings(4), num_radial=8), [0, 1], torch.float64)
    small_geom = Geometry(tuple(small.shape), tuple(small.origin_mm), tuple(small.voxel_size_mm))
    xs = torch.rand(1, *small.shape, generator=gen)
    for rows_kernel in (False, True):
        packed = nk._factored(*small_lors.parts())
        nk._run_back(nk._run_forward(xs, packed, small_geom, None, rows=rows_kernel), packed, small_geom, None,
                     rows=rows_kernel)

    if "3d" in cases or "full" in cases:
        sino = SinogramGeometry(mmr, num_radial=344, span=11, max_ring_difference=60)
        image = ImageGeometry.centered((344, 344, 127), vox)
        if "3d" in cases:
            views = torch.linspace(0, sino.num_views - 1, args.views).round().long()
            kernels(f"3D mMR span 11, {args.views} of 252 views", SinogramLORs.from_geometry(sino, views, torch.float64),
                    image, 1)
        if "full" in cases:
            kernels("3D mMR span 11, all 252 views", SinogramLORs.from_geometry(sino, None, torch.float64), image, 1)
    if "2d" in cases:
        sino = SinogramGeometry.two_d(mmr)
        image = ImageGeometry.centered((344, 344, 1), vox)
        lors = SinogramLORs.from_geometry(sino, None, torch.float64)
        for batch in (1, 8):
            kernels("2D mMR (P = 1), row kernels forced", lors, image, batch, force_rows=True)
    osem_row: dict[str, Any] | None = None
    if "osem" in cases:
        sino, image, model, y = native_osem_problem(mmr, vox)
        sub = model.subsets(21)[0]
        y0 = model.subset_data(y, 0, 21)
        x0 = torch.ones(image.shape)
        sens = sub.sensitivity()  # setup (cached on the model and, by osem, on disk): not timed
        swapped = {"forward_factored": nk._forward_factored_per_lor, "back_factored": nk._back_factored_per_lor}
        current = {k: getattr(nk, k) for k in swapped}

        def sub_iteration(old: bool) -> Callable[[], torch.Tensor]:
            def run() -> torch.Tensor:
                for k in swapped:  # factored.py calls numba_kernels.<name> at each projection
                    setattr(nk, k, swapped[k] if old else current[k])
                try:
                    return em_update(x0, sub, y0, sens)
                finally:
                    for k in swapped:
                        setattr(nk, k, current[k])
            return run

        load0 = os.getloadavg()[0]
        t, out = side_by_side({"old": sub_iteration(True), "new": sub_iteration(False)}, args.repeats)
        x_old, x_new = out["old"], out["new"]
        osem_row = {"views": int(sub.projector.out_shape[1]), "t": t,
                    "diff": float((x_new - x_old).abs().max() / x_old.abs().max()),
                    "load": f"{load0:.1f}-{os.getloadavg()[0]:.1f}"}
        print(osem_row, flush=True)

    iteration_row: dict[str, Any] | None = None
    if "iteration" in cases:
        sino, image, model, y = native_osem_problem(mmr, vox)
        load0 = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as cache:
            def setup() -> None:  # the 21 subset sensitivities, written to the cache folder (osem's setup)
                with OrderedSubsets.of_scan(model, y, 21, cache_dir=cache):
                    pass

            w1, c1, _ = timed(setup)
            # osem reads them back (one image per sub-iteration) and runs one iteration
            w2, c2, x2 = timed(lambda: osem(model, y, 1, 21, sensitivity_cache=cache))
        iteration_row = {"first": (w1, c1), "second": (w2, c2), "load": f"{load0:.1f}-{os.getloadavg()[0]:.1f}",
                         "finite": bool(torch.isfinite(x2).all()) and float(x2.max()) > 0}
        print(iteration_row, flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} CPUs, numba threads {numba.get_num_threads()}, "
          f"torch {torch.__version__}, numba {numba.__version__}, commit {commit}")
    if rows:
        print("\n| case | LORs | batch | old fwd s (CPU s) | new fwd s (CPU s) | old back s (CPU s) | new back s (CPU s) "
              "| old / new fwd | old / new back | fwd bit-equal | back max diff | load average |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
        for r in rows:
            t = r["t"]
            ob, nb = t.get("old back", (float("nan"),) * 2), t.get("new back", (float("nan"),) * 2)
            print(f"| {r['case']} | {r['lors']:,} | {r['batch']} | {t['old fwd'][0]:.2f} ({t['old fwd'][1]:.2f}) | "
                  f"{t['new fwd'][0]:.2f} ({t['new fwd'][1]:.2f}) | {ob[0]:.2f} ({ob[1]:.2f}) | {nb[0]:.2f} ({nb[1]:.2f}) | "
                  f"{t['old fwd'][0] / t['new fwd'][0]:.2f} | {ob[0] / nb[0]:.2f} | {r['fwd_equal']} | "
                  f"{r['back_diff']:.1e} | {r['load']} |")
    if osem_row is not None:
        t = osem_row["t"]
        print("\n| 3D mMR OSEM, 21 subsets | old s (CPU s) | new s (CPU s) | old / new | x 21: old s | x 21: new s "
              "| image max diff | load average |")
        print("|---|---:|---:|---:|---:|---:|---:|---|")
        print(f"| one sub-iteration (subset 0, {osem_row['views']} views: em_update, 1 forward + 1 back) | "
              f"{t['old'][0]:.2f} ({t['old'][1]:.2f}) | {t['new'][0]:.2f} ({t['new'][1]:.2f}) | "
              f"{t['old'][0] / t['new'][0]:.2f} | {21 * t['old'][0]:.0f} | {21 * t['new'][0]:.0f} | "
              f"{osem_row['diff']:.1e} | {osem_row['load']} |")
    if iteration_row is not None:
        r = iteration_row
        print("\n| 3D mMR OSEM, 21 subsets, row kernels, measured | wall s | CPU s | load average |")
        print("|---|---:|---:|---|")
        print(f"| setup: OrderedSubsets.of_scan, 21 subset sensitivities into a cache folder | {r['first'][0]:.0f} | "
              f"{r['first'][1]:.0f} | {r['load']} |")
        print(f"| osem(model, y, 1, 21, sensitivity_cache=folder): 1 iteration | {r['second'][0]:.0f} | "
              f"{r['second'][1]:.0f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
