"""What single-slice rebinning costs: SSRB + 2D OSEM against 3D OSEM of the same scan.

    python scripts/rebin_cost.py [--rings 17] [--iterations 4] [--subsets 7]

A small simulated mMR (``--rings`` rings, span 11, the shipped model's 128 radial bins and
view mashing 2; image 96 x 96 x (2 rings - 1) voxels of 2.6 x 2.6 x 2.03 mm, the slices on
the rebinned planes) is reconstructed twice with the same OSEM (iterations x subsets, no
PSF, no post-filter): 3D OSEM of the 3D sinogram, and 2D OSEM of each plane after
:func:`pet_dl.rebin.ssrb` (the same counts, summed). Printed (Markdown):

* resolution: FWHM (mm; radial x, tangential y, axial z, linear interpolation at half the
  peak; axially also the full width at a tenth, FWTM, which sees SSRB's wings) of three
  points in air on the central slice at 1, 51 and 100 mm from the axis (noise-free data:
  the reconstruction's own resolution, NEMA-like; a point fills one voxel, so one voxel is
  the floor);
* noise and bias: a 10 kBq/mL water cylinder (80 mm radius, the whole axial field) with
  attenuation, crystal efficiencies, 30 % scatter and 20 % randoms, Poisson counts of a
  600 s scan: coefficient of variation of the voxels (r < 60 mm, slices 8 or more from the
  axial ends) and their mean against the truth;
* time of each reconstruction.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner  # noqa: E402
from pet_dl.rebin import ssrb  # noqa: E402
from pet_dl.recon import osem  # noqa: E402
from pet_dl.scan import AcquisitionMetadata, Scan  # noqa: E402
from pet_dl.simulate import calibration_per_second, expected_counts, simulate_scan  # noqa: E402

POINT_INDEX = (48, 67, 86)  # x voxel of each point (x = 1.3, 50.7, 100.1 mm), y voxel 48


def width_mm(profile: torch.Tensor, spacing: float, level: float = 0.5) -> float:
    """Full width of a 1D profile around its maximum at ``level`` x the maximum (0.5: FWHM,
    0.1: FWTM), linear interpolation, mm."""
    p = profile.double()
    k = int(torch.argmax(p))
    half = float(p[k]) * level

    def crossing(step: int) -> float:
        j = k
        while 0 <= j + step < p.numel() and float(p[j + step]) > half:
            j += step
        if not 0 <= j + step < p.numel():
            return float(j)
        a, b = float(p[j]), float(p[j + step])
        return j + step * (a - half) / (a - b)

    return (crossing(1) - crossing(-1)) * spacing


def setup(rings: int) -> tuple[SinogramGeometry, ImageGeometry]:
    sino = SinogramGeometry(get_scanner("mmr").with_rings(rings), num_radial=128, span=11, view_mashing=2)
    image = ImageGeometry.centered((96, 96, 2 * rings - 1), (2.6, 2.6, sino.scanner.ring_spacing_mm / 2))
    return sino, image


def both(scan: Scan, iterations: int, subsets: int) -> dict[str, tuple[torch.Tensor, float]]:
    """3D OSEM and SSRB + 2D OSEM of ``scan``: {name: (image (nx, ny, nz), seconds)}."""
    out = {}
    t0 = time.perf_counter()
    out["3D OSEM"] = (osem(scan.forward_model(), scan.prompts, iterations, subsets), time.perf_counter() - t0)
    t0 = time.perf_counter()
    rebinned = ssrb(scan)
    out["SSRB + 2D OSEM"] = (
        osem(rebinned.forward_model(), rebinned.prompts, iterations, subsets),
        time.perf_counter() - t0,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rings", type=int, default=17, help="mMR rings kept (>= 17 for oblique segments)")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--subsets", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sino, image = setup(args.rings)
    nx, ny, nz = image.shape
    mid = nz // 2
    meta = AcquisitionMetadata(duration_s=600.0, seed=args.seed)
    zero = torch.zeros(nx, ny, nz)

    # resolution: points in air, noise-free
    points = zero.clone()
    for i in POINT_INDEX:
        points[i, 48, mid] = 1e5
    cal = calibration_per_second(sino) * 600.0
    exp = expected_counts(points, zero, sino, image, calibration=cal, scatter_fraction=0.0, randoms_fraction=0.0)
    point_scan = Scan(sino, image, exp.total, torch.ones(sino.shape), torch.zeros(sino.shape), cal, 0.0, meta)
    vx, vy, vz = image.voxel_size_mm
    rows = []
    for name, (x, seconds) in both(point_scan, args.iterations, args.subsets).items():
        cells = []
        for i in POINT_INDEX:
            cells.append(
                f"{width_mm(x[i - 8 : i + 9, 48, mid], vx):.1f} / {width_mm(x[i, 40:57, mid], vy):.1f} / "
                f"{width_mm(x[i, 48, :], vz):.1f} ({width_mm(x[i, 48, :], vz, 0.1):.1f})"
            )
        rows.append((name, cells, seconds))

    # noise: a uniform water cylinder, Poisson counts
    xs = (torch.arange(nx) - (nx - 1) / 2) * vx
    r = torch.sqrt(xs[:, None] ** 2 + xs[None, :] ** 2)
    disk = (r < 80.0).float()[..., None].expand(nx, ny, nz).contiguous()
    truth = 10000.0
    scan = simulate_scan(disk * truth, disk * 0.0096, sino, image, duration_s=600.0,
                         crystal_efficiency_sigma=0.05, metadata=meta)
    roi = (r < 60.0)[..., None].expand(nx, ny, nz).clone()
    roi[..., :8] = False
    roi[..., nz - 8 :] = False
    noise = {}
    for name, (x, seconds) in both(scan, args.iterations, args.subsets).items():
        v = x[roi].double()
        noise[name] = (float(v.std() / v.mean()) * 100, float(v.mean() / truth - 1) * 100, seconds)

    print(f"mMR {args.rings} rings, span 11, {sino.num_views} views x {sino.num_radial} bins, "
          f"{nx} x {ny} x {nz} voxels; OSEM {args.iterations} x {args.subsets}; "
          f"cylinder scan {float(scan.prompts.sum()):.3g} prompts\n")
    print("| reconstruction | FWHM radial / tangential / axial (axial FWTM) (mm) at r = 1 ; 51 ; 100 mm "
          "| CoV (%) | mean - truth (%) | time points / cylinder (s) |")
    print("|---|---|---|---|---|")
    for name, cells, seconds in rows:
        cov, bias, t_noise = noise[name]
        print(f"| {name} | {' ; '.join(cells)} | {cov:.1f} | {bias:+.1f} | {seconds:.0f} / {t_noise:.0f} |")


if __name__ == "__main__":
    main()
