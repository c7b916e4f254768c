"""TOF cost of the numba kernels: TOF (Siemens Vision, 33 bins) against non-TOF on the same LORs.

    python bench/tof_kernels.py                   # this checkout's kernels
    git show <commit>:pet_dl/projector/numba_kernels.py > old_kernels.py
    python bench/tof_kernels.py --old old_kernels.py   # and an older version, same run

Cases: "2D" = one ring, 440 x 440 x 1 image of 1.65 mm (fits in cache: the kernel's own
cost), every 4th of the 380 views x 520 radial bins; "3D" = span 19, 440 x 440 x 159, one
view, every 19th plane (memory-bound, as a clinical 3D projection is). float32 data
(``--dtype float64`` for the libm-erf path), one batch item. Times are CPU seconds
(``time.process_time``: on a shared, loaded machine the wall clock measures the other
jobs), the best of ``--repeats`` after a warm-up. Prints a markdown table with the TOF /
non-TOF ratio of forward + back and, with ``--old``, how far each version's TOF forward
and back projections are from the old one's (max |difference| / max |old|).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

from pet_dl.geometry import SinogramGeometry, get_scanner  # noqa: E402
from pet_dl.projector import numba_kernels  # noqa: E402
from pet_dl.projector._checks import Geometry, tof_kernel  # noqa: E402


def cpu_time(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


def measure(mod, x, s, e, plain, timed, y_tof, repeats):  # noqa: ANN001, ANN201
    """CPU seconds of non-TOF forward, back, TOF forward, back with kernels module ``mod``,
    and the TOF forward and back projections (the back projection of ``y_tof``)."""
    tf, y = cpu_time(lambda: mod.forward(x, s, e, plain), repeats)
    tb, _ = cpu_time(lambda: mod.back(y, s, e, plain), repeats)
    ttf, yt = cpu_time(lambda: mod.forward(x, s, e, timed), repeats)
    ttb, bt = cpu_time(lambda: mod.back(y_tof, s, e, timed), repeats)
    return (tf, tb, ttf, ttb), (yt, bt)


def lors(case: str) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    vision = get_scanner("vision")
    if case == "2D":
        sino = SinogramGeometry.two_d(vision, num_radial=520, tof=True)
        s, e = sino.lor_endpoints(views=torch.arange(0, sino.num_views, 4))
        shape = (440, 440, 1)
    else:
        sino = SinogramGeometry(vision, num_radial=520, span=19, tof=True)
        s, e = sino.lor_endpoints(views=torch.tensor([7]))
        s, e = s[::19], e[::19]
        shape = (440, 440, 159)
    return s.reshape(-1, 3).contiguous(), e.reshape(-1, 3).contiguous(), shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default=None, help="an older numba_kernels.py to time beside this one")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cases", default="2D,3D")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    modules = {"this checkout": numba_kernels}
    if args.old:
        spec = importlib.util.spec_from_file_location("old_numba_kernels", args.old)
        assert spec is not None and spec.loader is not None
        old = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = old  # numba's cache finds the module by name when it reloads
        spec.loader.exec_module(old)
        modules = {"old": old, **modules}
    tof = get_scanner("vision").tof
    dtype = getattr(torch, args.dtype)
    print(f"{args.dtype}, numba threads: {numba_kernels.numba.get_num_threads()}")
    print("| case | kernels | LORs | non-TOF fwd + back (CPU s) | TOF 33 bins fwd + back (CPU s) | TOF / non-TOF "
          "| TOF fwd, back vs old |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case in args.cases.split(","):
        s, e, shape = lors(case)
        vox = (1.65, 1.65, 1.65)
        origin = tuple(-(n - 1) * v / 2 for n, v in zip(shape, vox))
        s, e = s.to(dtype), e.to(dtype)
        x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0)).to(dtype)
        y_tof = torch.rand(1, s.shape[0], tof.num_bins, generator=torch.Generator().manual_seed(1)).to(dtype)
        plain, timed = Geometry(shape, origin, vox), Geometry(shape, origin, vox, tof_kernel(tof))
        first = None
        for name, mod in modules.items():
            (tf, tb, ttf, ttb), outs = measure(mod, x, s, e, plain, timed, y_tof, args.repeats)
            first = first or outs
            diff = ", ".join(f"{float((o.double() - r.double()).abs().max() / r.abs().max()):.1e}"
                             for o, r in zip(outs, first))
            print(f"| {case} {'x'.join(map(str, shape))} | {name} | {s.shape[0]} | {tf + tb:.3f} | "
                  f"{ttf + ttb:.3f} | {(ttf + ttb) / (tf + tb):.1f} | {diff} |")


if __name__ == "__main__":
    main()
