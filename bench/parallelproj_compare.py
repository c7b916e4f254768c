"""pet_dl's Joseph kernels side by side with parallelproj's C/OpenMP ones, same LORs, same run.

parallelproj (https://github.com/gschramm/parallelproj, 1.x: ``c/src/joseph3d_fwd.c`` and
``joseph3d_back.c``) is built from its public source by ``bench/build_parallelproj.sh`` into
``bench/_build/`` and loaded here with ctypes; it is not a pet_dl dependency.

Both projectors get the same float32 image and the same LORs: pet_dl's endpoints of the
Siemens mMR span-11 sinogram (837 planes x 252 views x 344 radial bins, 72.6 M LORs; by
default an evenly spread subset of views, all planes and radial bins; ``--full`` for all of
them) into its native 344 x 344 x 127 grid of 2.086 x 2.086 x 2.031 mm, in sinogram order
(plane, view, radial bin). Conventions agree: image ``[i, j, k]`` is world axes (0, 1, 2),
C order, and the origin is the centre of voxel (0, 0, 0), in mm, in both. One difference:
parallelproj integrates the whole line through the image box, pet_dl only the segment
between the endpoints, and the mMR's 717 mm box reaches past its detector ring in the
corners; the mMR image is therefore random inside the ring (2 voxels in) and 0 outside,
and the backprojections are compared inside the ring.

Rows:
- ``factored``: pet_dl's forward model path (``sinogram_forward`` / ``sinogram_back`` on
  :class:`~pet_dl.projector.SinogramLORs`: views' (x, y) and planes' z in float64, read in
  the kernel). parallelproj gets the same LORs materialised in float32 (its API).
- ``flat``: pet_dl's ``joseph_forward`` / ``joseph_back`` on exactly parallelproj's float32
  ``(N, 3)`` arrays (includes pet_dl's per-call checks of flat endpoints).
- ``2d``: 256 x 256 image of 2 mm, 360 views x 256 parallel lines (``bench/projector.py``'s
  case (a), the one compared with astra there).

Checks printed per row: relative L2 difference of the two forward projections and of the two
backprojections of the same sinogram, and each projector's adjoint test
``|<A x, y> - <x, A^T y>| / |<A x, y>|``. Times: best of ``--repeats`` after the checks'
calls (the warm-up), the four calls interleaved in each repeat so that a noisy machine slows
both alike. Threads:
``--threads`` sets NUMBA_NUM_THREADS and OMP_NUM_THREADS (default 2) before anything loads.

``--per-view`` adds, per mMR case, the forward projections' agreement view by view (the worst
views, their worst LOR, and the agreement without the rows whose in-plane direction is an
exact 45-degree tie) and the backprojections' agreement without those rows (one more
backprojection each). In exact arithmetic those rows have ``|dx| == |dy|``, and the two
projectors break the tie differently: parallelproj (float32, ``cos1_sq >= cos0_sq``) steps
along y, pet_dl along x unless float64 rounding of the endpoints makes ``|dy|`` larger. Both
are Joseph's method, but along x and along y they sample the random test image at different
points, so these LORs differ by up to ~6 % (the mMR's views 63 and 189; 2 x 172 of 252 x 344
rows); every other LOR agrees to ~1e-6. ``--view-ids 63,189`` picks views by number.

Usage: python bench/parallelproj_compare.py [--views 4] [--full] [--view-ids 63,189]
       [--per-view] [--cases factored,flat,2d] [--repeats 2] [--threads 2] [--lib PATH]
Exits 3 with one line when the library was not built (run bench/build_parallelproj.sh).
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_LIB = (
    Path(__file__).resolve().parent / "_build" / "parallelproj" / "lib" / "libparallelproj_c.so"
)
MMR_SHAPE = (344, 344, 127)
MMR_VOXEL = (2.086, 2.086, 2.031)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--views", type=int, default=4, help="mMR views timed (evenly spread; default 4 of 252)"
    )
    parser.add_argument(
        "--full", action="store_true", help="all 252 views (72.6 M LORs; ~2 GB of endpoints)"
    )
    parser.add_argument(
        "--view-ids", default="", help="comma-separated mMR views (overrides --views and --full)"
    )
    parser.add_argument(
        "--per-view",
        action="store_true",
        help="print the forward projections' agreement per view (worst views, 45-degree ties)",
    )
    parser.add_argument(
        "--cases", default="factored,flat,2d", help="comma-separated: factored, flat, 2d"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=2, help="NUMBA_NUM_THREADS and OMP_NUM_THREADS"
    )
    parser.add_argument(
        "--lib",
        type=Path,
        default=Path(os.environ.get("PARALLELPROJ_LIB", DEFAULT_LIB)),
        help="libparallelproj_c.so (default bench/_build/parallelproj/lib/, or $PARALLELPROJ_LIB)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.cases.split(",")) - {"factored", "flat", "2d"}
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}")
    return args


class ParallelProj:
    """ctypes binding of parallelproj 1.x's non-TOF ``joseph3d_fwd`` and ``joseph3d_back``."""

    def __init__(self, path: Path) -> None:
        import numpy as np  # noqa: PLC0415

        self.np = np
        self.lib = ctypes.CDLL(str(path))
        f32 = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
        i32 = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
        # void joseph3d_fwd(xstart, xend, img, img_origin, voxsize, p, nlors, img_dim)
        self.lib.joseph3d_fwd.argtypes = [f32, f32, f32, f32, f32, f32, ctypes.c_longlong, i32]
        self.lib.joseph3d_fwd.restype = None
        # void joseph3d_back(xstart, xend, img, img_origin, voxsize, p, nlors, img_dim); adds to img
        self.lib.joseph3d_back.argtypes = [f32, f32, f32, f32, f32, f32, ctypes.c_longlong, i32]
        self.lib.joseph3d_back.restype = None

    def forward(self, start, end, image, origin, voxel):  # noqa: ANN001, ANN201
        """``start``, ``end`` ``(N, 3)`` float32 mm; ``image`` ``(n0, n1, n2)`` float32 -> ``(N,)``."""
        np = self.np
        out = np.empty(start.shape[0], dtype=np.float32)
        self.lib.joseph3d_fwd(
            start,
            end,
            image,
            np.asarray(origin, np.float32),
            np.asarray(voxel, np.float32),
            out,
            start.shape[0],
            np.asarray(image.shape, np.int32),
        )
        return out

    def back(self, start, end, values, shape, origin, voxel):  # noqa: ANN001, ANN201
        """``values`` ``(N,)`` float32 -> image ``shape`` float32 (allocated and zeroed here)."""
        np = self.np
        image = np.zeros(shape, dtype=np.float32)
        self.lib.joseph3d_back(
            start,
            end,
            image,
            np.asarray(origin, np.float32),
            np.asarray(voxel, np.float32),
            values,
            start.shape[0],
            np.asarray(shape, np.int32),
        )
        return image


def interleaved_best(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best wall time (s) of each function over ``repeats`` rounds that call all of them in turn."""
    best = dict.fromkeys(fns, math.inf)
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def fov_mask(
    shape: tuple[int, int, int], voxel: tuple[float, ...], origin: tuple[float, ...], radius: float
):  # noqa: ANN201
    """``(n0, n1, n2)`` float32 tensor: 1 where the voxel centre's (x, y) lies within ``radius`` mm."""
    import torch  # noqa: PLC0415

    x = torch.arange(shape[0]) * voxel[0] + origin[0]
    y = torch.arange(shape[1]) * voxel[1] + origin[1]
    inside = (x[:, None] ** 2 + y[None, :] ** 2) < radius**2
    return inside[:, :, None].expand(shape).to(torch.float32).contiguous()


def rel(a, b) -> float:  # noqa: ANN001
    """Relative L2 difference ``|a - b| / |b|`` in float64."""
    a, b = a.astype("float64").ravel(), b.astype("float64").ravel()
    return float(((a - b) ** 2).sum() ** 0.5 / max((b**2).sum() ** 0.5, 1e-300))


def adjoint_gap(x, ax, y, aty) -> float:  # noqa: ANN001
    """``|<A x, y> - <x, A^T y>| / |<A x, y>|`` in float64."""
    lhs = float((ax.astype("float64").ravel() * y.astype("float64").ravel()).sum())
    rhs = float((x.astype("float64").ravel() * aty.astype("float64").ravel()).sum())
    return abs(lhs - rhs) / max(abs(lhs), 1e-300)


def run_case(
    name: str,
    num_lors: int,
    pet_fwd: Callable[[], Any],
    pet_back: Callable[[Any], Any],
    pp_fwd: Callable[[], Any],
    pp_back: Callable[[Any], Any],
    image: Any,
    repeats: int,
    region: Any = None,
    per_view: Any = None,
    keep: Any = None,
) -> dict[str, Any]:
    """Checks and timings of one case; ``pet_*`` / ``pp_*`` return numpy arrays.

    The checks' calls are the warm-up (numba compiles or loads its cache there). The two
    backprojections are compared within ``region`` (a 0/1 image; default everywhere).
    ``per_view(y_pet, y_pp)``, when given, is called on the two forward projections (its
    result goes in the returned dict as ``"per_view"``). ``keep`` (``(N,)`` bool), when given:
    the two backprojections again with the sinogram zeroed where it is False, compared as
    ``"back_rel_kept"`` (one more backprojection each).
    """
    import numpy as np  # noqa: PLC0415

    y_pet, y_pp = pet_fwd(), pp_fwd()
    sino = np.random.default_rng(1).random(num_lors, dtype=np.float32)
    b_pet, b_pp = pet_back(sino), pp_back(sino)
    checks = {
        "fwd_rel": rel(y_pet, y_pp),
        "back_rel": rel(b_pet, b_pp) if region is None else rel(b_pet * region, b_pp * region),
        "adj_pet": adjoint_gap(image, y_pet, sino, b_pet),
        "adj_pp": adjoint_gap(image, y_pp, sino, b_pp),
        "hit_frac": float((y_pp != 0).mean()),
    }
    if per_view is not None:
        checks["per_view"] = per_view(y_pet, y_pp)
    if keep is not None:
        kept = np.where(keep, sino, np.float32(0))
        b_pet, b_pp = pet_back(kept), pp_back(kept)
        checks["back_rel_kept"] = (
            rel(b_pet, b_pp) if region is None else rel(b_pet * region, b_pp * region)
        )
        del kept
    times = interleaved_best(
        {
            "pet_fwd": pet_fwd,
            "pp_fwd": pp_fwd,
            "pet_back": lambda: pet_back(sino),
            "pp_back": lambda: pp_back(sino),
        },
        repeats,
    )
    return {"case": name, "lors": num_lors, **checks, **times}


def view_agreement(y_pet, y_pp, sino_shape, view_ids, tie_rows, worst=8) -> list[str]:  # noqa: ANN001
    """Markdown lines: the forward projections' agreement per view, worst first.

    ``y_pet``, ``y_pp``: ``(P * V * R,)`` in sinogram order ``sino_shape = (P, V, R)``;
    ``view_ids``: the ``V`` views' numbers; ``tie_rows``: ``(V, R)`` bool, rows whose in-plane
    direction is a 45-degree tie. Relative L2 differences in float64, view by view.
    """
    import numpy as np  # noqa: PLC0415

    a_all = y_pet.reshape(sino_shape)
    b_all = y_pp.reshape(sino_shape)
    rows, d2_tot, b2_tot, d2_tie = [], 0.0, 0.0, 0.0
    for k, view in enumerate(view_ids):
        a = a_all[:, k].astype(np.float64)
        b = b_all[:, k].astype(np.float64)
        d = np.abs(a - b)
        d2, b2 = float((d**2).sum()), float((b**2).sum())
        d2_tie += float((d[:, tie_rows[k]] ** 2).sum())
        d2_tot, b2_tot = d2_tot + d2, b2_tot + b2
        p, r = np.unravel_index(int(d.argmax()), d.shape)
        rel_lor = float(d[p, r] / max(abs(b[p, r]), 1e-30))
        rows.append(
            (d2, view, (d2 / max(b2, 1e-300)) ** 0.5, int(tie_rows[k].sum()), p, r, rel_lor)
        )
    rows.sort(reverse=True)
    lines = [
        "| view | fwd rel L2 of the view | share of all squared differences | 45-degree tie rows "
        "| worst LOR (plane, radial bin) | its relative difference |",
        "|---|---|---|---|---|---|",
    ]
    for d2, view, rel_v, ties, p, r, rel_lor in rows[:worst]:
        lines.append(
            f"| {view} | {rel_v:.2e} | {d2 / max(d2_tot, 1e-300):.1%} | {ties} | ({p}, {r}) | {rel_lor:.2e} |"
        )
    rest = sum(x[0] for x in rows[worst:])
    lines.append(
        f"\nAll {len(view_ids)} views: fwd rel L2 {(d2_tot / max(b2_tot, 1e-300)) ** 0.5:.2e}; "
        f"without the {int(tie_rows.sum())} tie rows (x {sino_shape[0]} planes): "
        f"{((d2_tot - d2_tie) / max(b2_tot, 1e-300)) ** 0.5:.2e}; the views past the {worst} above: "
        f"{(rest / max(b2_tot, 1e-300)) ** 0.5:.2e} (of the whole projection's L2)."
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.lib.is_file():
        print(
            f"SKIP: parallelproj library not built ({args.lib} missing); run bench/build_parallelproj.sh first"
        )
        return 3
    # thread counts (and idle-thread policy, as in bench/projector.py) before numba/torch/OpenMP load
    os.environ["NUMBA_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import numba  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from projector import parallel_lors_2d  # noqa: PLC0415 - bench/projector.py's 2D case

    from pet_dl.geometry import SinogramGeometry, get_scanner  # noqa: PLC0415
    from pet_dl.projector import (  # noqa: PLC0415
        SinogramLORs,
        joseph_back,
        joseph_forward,
        sinogram_back,
        sinogram_forward,
    )

    pp = ParallelProj(args.lib)
    version_file = args.lib.resolve().parent.parent / "VERSION"
    pp_version = version_file.read_text().strip() if version_file.is_file() else "unknown version"
    cases = args.cases.split(",")
    results = []

    if "factored" in cases or "flat" in cases:
        sino = SinogramGeometry(get_scanner("mmr"), num_radial=344, span=11, max_ring_difference=60)
        views = (
            torch.tensor([int(v) for v in args.view_ids.split(",")])
            if args.view_ids
            else None
            if args.full or args.views >= sino.num_views
            else (torch.linspace(0, sino.num_views - 1, args.views).round().long())
        )
        lors = SinogramLORs.from_geometry(sino, views, dtype=torch.float64)  # forward model's parts
        shape, voxel = MMR_SHAPE, MMR_VOXEL
        origin = tuple(-(n - 1) * v / 2 for n, v in zip(shape, voxel))
        # random activity inside the detector ring only: parallelproj integrates the whole line
        # through the image box, pet_dl the segment between the endpoints, and the mMR's
        # 344 x 2.086 mm box reaches past the ring (its corners); inside, both agree.
        ring = float(
            torch.linalg.vector_norm(torch.cat([lors.xy_start, lors.xy_end]), dim=-1).min()
        )
        fov = fov_mask(shape, voxel, origin, ring - 2 * voxel[0])
        image_t = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * fov
        image = image_t.numpy()
        start_t, end_t = (
            t.reshape(-1, 3).contiguous() for t in lors.endpoints(dtype=torch.float32)
        )
        start, end = start_t.numpy(), end_t.numpy()
        n = lors.num_lors
        label = (
            "all 252 views"
            if views is None
            else f"views {args.view_ids}"
            if args.view_ids
            else f"{lors.shape[1]} of {sino.num_views} views"
        )
        per_view = no_ties = None
        if args.per_view:
            dxy = (lors.xy_end - lors.xy_start).abs()  # (V, R, 2), float64
            tie_rows = ((dxy[..., 0] - dxy[..., 1]).abs() < 1e-6).numpy()  # mm
            view_ids = list(range(sino.num_views)) if views is None else views.tolist()
            per_view = lambda a, b: view_agreement(a, b, lors.shape, view_ids, tie_rows)  # noqa: E731
            no_ties = np.broadcast_to(~tie_rows, lors.shape).reshape(-1)
        print(
            f"mMR span 11: sinogram {tuple(sino.shape)}, {label}: {n / 1e6:.2f} M LORs, image {shape}"
        )
        if "factored" in cases:
            results.append(
                run_case(
                    f"mMR span 11, {label}, pet_dl factored float64 parts",
                    n,
                    lambda: sinogram_forward(image_t, lors, origin, voxel).numpy(),
                    lambda s: sinogram_back(
                        torch.from_numpy(s).reshape(lors.shape), lors, shape, origin, voxel
                    ).numpy(),
                    lambda: pp.forward(start, end, image, origin, voxel),
                    lambda s: pp.back(start, end, s, shape, origin, voxel),
                    image,
                    args.repeats,
                    fov.numpy(),
                    per_view,
                    no_ties,
                )
            )
        if "flat" in cases:
            results.append(
                run_case(
                    f"mMR span 11, {label}, pet_dl flat float32 (same arrays)",
                    n,
                    lambda: joseph_forward(image_t, start_t, end_t, origin, voxel).numpy(),
                    lambda s: joseph_back(
                        torch.from_numpy(s), start_t, end_t, shape, origin, voxel
                    ).numpy(),
                    lambda: pp.forward(start, end, image, origin, voxel),
                    lambda s: pp.back(start, end, s, shape, origin, voxel),
                    image,
                    args.repeats,
                    fov.numpy(),
                    per_view,
                    no_ties,
                )
            )
        del start, end, start_t, end_t

    if "2d" in cases:
        n2, vs = 256, 2.0
        s2, e2 = (
            t.reshape(-1, 3).to(torch.float32).contiguous()
            for t in parallel_lors_2d(360, 256, vs, 400.0)
        )
        shape2, voxel2 = (n2, n2, 1), (vs, vs, vs)
        origin2 = (-(n2 - 1) * vs / 2, -(n2 - 1) * vs / 2, 0.0)
        img2_t = torch.rand(shape2, generator=torch.Generator().manual_seed(0))
        img2, s2n, e2n = img2_t.numpy(), s2.numpy(), e2.numpy()
        results.append(
            run_case(
                "2D 256 x 256, 360 x 256 parallel lines, flat float32",
                s2.shape[0],
                lambda: joseph_forward(img2_t, s2, e2, origin2, voxel2).numpy(),
                lambda s: joseph_back(torch.from_numpy(s), s2, e2, shape2, origin2, voxel2).numpy(),
                lambda: pp.forward(s2n, e2n, img2, origin2, voxel2),
                lambda s: pp.back(s2n, e2n, s, shape2, origin2, voxel2),
                img2,
                args.repeats,
            )
        )

    print("\n## Machine\n")
    print(
        f"- {platform.platform()}, python {platform.python_version()}, torch {torch.__version__}, "
        f"numpy {np.__version__}"
    )
    print(
        f"- CPU count {os.cpu_count()}, usable {len(os.sched_getaffinity(0))}, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (at the end of the run)"
    )
    print(
        f"- numba {numba.__version__}, threads {numba.get_num_threads()}; parallelproj {pp_version} "
        f"(C/OpenMP, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}); repeats {args.repeats} (best, after a warm-up)"
    )
    print("\n## Agreement (relative L2 differences; adjoint gaps |<Ax,y> - <x,A'y>| / |<Ax,y>|)\n")
    print(
        "| case | LORs | LORs with a nonzero projection | fwd pet_dl vs parallelproj | back pet_dl vs parallelproj (inside the ring) "
        "| adjoint gap pet_dl | adjoint gap parallelproj |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['case']} | {r['lors']:,} | {r['hit_frac']:.1%} | {r['fwd_rel']:.2e} | {r['back_rel']:.2e} "
            f"| {r['adj_pet']:.1e} | {r['adj_pp']:.1e} |"
        )
    for r in results:
        if "per_view" in r:
            print(f"\n### Forward agreement per view: {r['case']}\n")
            print("\n".join(r["per_view"]))
            print(
                f"Backprojections (inside the ring) with the tie rows' values set to 0: "
                f"{r['back_rel_kept']:.2e} (all rows: {r['back_rel']:.2e})."
            )
    print("\n## Times (s; ratio = pet_dl / parallelproj, below 1: pet_dl faster)\n")
    print(
        "| case | LORs | pet_dl fwd | parallelproj fwd | pet_dl back | parallelproj back "
        "| ratio fwd | ratio back | ratio fwd + back |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        both = (r["pet_fwd"] + r["pet_back"]) / (r["pp_fwd"] + r["pp_back"])
        print(
            f"| {r['case']} | {r['lors']:,} | {r['pet_fwd']:.3f} | {r['pp_fwd']:.3f} | {r['pet_back']:.3f} "
            f"| {r['pp_back']:.3f} | {r['pet_fwd'] / r['pp_fwd']:.2f} | {r['pet_back'] / r['pp_back']:.2f} "
            f"| {both:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
