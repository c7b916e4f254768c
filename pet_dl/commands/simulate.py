"""``python -m pet_dl simulate``: activity + mu-map (NIfTI, Interfile, DICOM) or a phantom in,
scan file out.

Examples::

    python -m pet_dl simulate --activity A.nii.gz --mu MU.nii.gz --scanner mmr \\
        --dose-fraction 0.05 --seed 1 --out scan.h5
    python -m pet_dl simulate --phantom brain --image-shape 128 128 1 --voxel-size 2 \\
        --scanner mmr --out brain_full.h5
    python -m pet_dl simulate --activity emission.hv --mu attenuation.hv --mu-units per-cm \\
        --out sirf_brain.h5
    python -m pet_dl simulate --activity pet_slice.dcm --mu mu.nii.gz --out slice.h5

A NIfTI with one slice (or ``--image-shape NX NY 1``) gives a 2D scan: one direct plane
at z = 0 (a single slice is placed at z = 0). The full-dose scan of ``--duration`` seconds
is simulated with ``--seed``; ``--dose-fraction`` and ``--scan-time`` thin it binomially,
so scans with the same seed and different fractions are one acquisition at several
count levels. The activity is in Bq/mL, the mu-map in 1/mm at 511 keV (``--mu-units
per-cm`` converts STIR / SIRF maps in 1/cm; a DICOM CT series is converted from HU and
resampled to the activity's grid). An image whose grid is centred off the scanner's axis
(DICOM patient coordinates) is moved onto the axis, with its mu-map, and a note says so;
activity outside the field of view gets a one-line warning with its fraction.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_parser(subparsers: Any) -> None:
    """Register the ``simulate`` sub-command."""
    p = subparsers.add_parser(
        "simulate", help="simulate a PET scan (HDF5 scan file) from activity + mu or a phantom",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("input (files or a phantom)")
    src.add_argument("--activity", type=Path,
                     help="activity, Bq/mL: NIfTI (.nii, .nii.gz), STIR Interfile (.hv) or a "
                          "DICOM PET series (a .dcm file or a folder)")
    src.add_argument("--mu", type=Path,
                     help="mu-map at 511 keV on the activity's grid: NIfTI or Interfile (1/mm, "
                          "see --mu-units), or a DICOM CT series (HU; converted and resampled)")
    src.add_argument("--mu-units", choices=["per-mm", "per-cm"], default="per-mm",
                     help="units of a NIfTI / Interfile mu-map (per-mm; STIR and SIRF: per-cm)")
    src.add_argument("--phantom", choices=["brain", "torso", "nema"],
                     help="a built-in phantom instead of --activity/--mu")
    src.add_argument("--image-shape", type=int, nargs=3, metavar=("NX", "NY", "NZ"),
                     default=(128, 128, 1), help="phantom grid (default 128 128 1: 2D)")
    src.add_argument("--voxel-size", type=float, nargs="+", metavar="MM", default=[2.0],
                     help="phantom voxel size, mm: one value or three (default 2)")
    acq = p.add_argument_group("acquisition")
    acq.add_argument("--scanner", default="mmr", help="scanner preset (default mmr)")
    acq.add_argument("--span", type=int, default=11, help="axial compression for 3D (default 11)")
    acq.add_argument("--max-ring-difference", type=int, default=None,
                     help="largest ring difference for 3D (default: all the span allows)")
    acq.add_argument("--tof", action="store_true", help="TOF sinogram (needs a TOF scanner)")
    acq.add_argument("--num-radial", type=int, default=None,
                     help="radial bins (default: the scanner's, e.g. 344 for the mMR)")
    acq.add_argument("--view-mashing", type=int, default=1,
                     help="views combined into one (default 1; the shipped model: 2)")
    acq.add_argument("--duration", type=float, default=600.0, help="full scan duration, s (600)")
    acq.add_argument("--dose-fraction", type=_fraction, default=1.0,
                     help="injected-dose fraction in (0, 1] (0.05 = 1/20 dose)")
    acq.add_argument("--scan-time", type=_fraction, default=1.0,
                     help="scan-time fraction in (0, 1] of --duration (a shorter scan)")
    acq.add_argument("--scatter-fraction", type=float, default=0.3, help="in [0, 1) (0.3)")
    acq.add_argument("--randoms-fraction", type=float, default=0.2, help="in [0, 1) (0.2)")
    acq.add_argument("--psf-fwhm", type=float, default=0.0, help="resolution FWHM, mm (0)")
    acq.add_argument("--norm-sigma", type=float, default=0.0,
                     help="spread of random crystal efficiencies (0: uniform)")
    acq.add_argument("--seed", type=int, default=0, help="random seed (phantom and noise)")
    meta = p.add_argument_group("metadata")
    meta.add_argument("--injected-activity", type=float, default=370e6, help="Bq (370e6)")
    meta.add_argument("--weight", type=float, default=None, help="patient weight, kg")
    p.add_argument("--out", type=Path, required=True, help="output scan file (.h5)")
    p.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    from pet_dl.errors import InvalidInputError

    files = args.activity is not None or args.mu is not None
    if files and args.phantom:
        raise InvalidInputError("give either --activity and --mu, or --phantom, not both")
    if not files and not args.phantom:
        raise InvalidInputError("give --activity and --mu (image files), or --phantom")
    if files and (args.activity is None or args.mu is None):
        raise InvalidInputError("--activity and --mu go together (both image files)")
    for path in (args.activity, args.mu):
        if path is not None and not path.exists():
            raise InvalidInputError(f"{path}: no such file")
    if not args.duration > 0:
        raise InvalidInputError(f"--duration must be > 0 s, got {args.duration}")
    if len(args.voxel_size) not in (1, 3) or min(args.voxel_size) <= 0:
        raise InvalidInputError("--voxel-size needs one or three positive values (mm)")
    if args.injected_activity <= 0:
        raise InvalidInputError(f"--injected-activity must be > 0 Bq, got {args.injected_activity}")
    if args.weight is not None and args.weight <= 0:
        raise InvalidInputError(f"--weight must be > 0 kg, got {args.weight}")
    if args.out.suffix not in (".h5", ".hdf5"):
        raise InvalidInputError(f"--out must end in .h5 or .hdf5, got {args.out}")
    if not args.out.parent.is_dir() and str(args.out.parent):
        raise InvalidInputError(f"output folder {args.out.parent} does not exist")


def _is_dicom(path: Path) -> bool:
    return path.is_dir() or path.suffix.lower() in (".dcm", ".ima")


def read_activity(path: Path) -> tuple[Any, Any]:
    """Activity image ``(float32 (nx, ny, nz) Bq/mL, ImageGeometry)`` from NIfTI, Interfile
    (``.hv``) or a DICOM PET series (file or folder; its ``Units`` must be ``BQML``)."""
    import torch

    from pet_dl.errors import InvalidInputError
    from pet_dl.io.interfile import load_image

    if not _is_dicom(path):
        return load_image(path)
    from pet_dl.io.dicom import read_pet_series

    volume, image, info = read_pet_series(path)
    if info.units.upper() != "BQML":
        raise InvalidInputError(
            f"{path}: PET DICOM in units {info.units or 'unknown'!r}; --activity needs Bq/mL (BQML)"
        )
    return torch.from_numpy(volume.astype("float32")), image


def read_mu(path: Path, units: str) -> tuple[Any, Any, bool]:
    """``(mu, grid, is_ct)``: a NIfTI / Interfile mu-map converted to 1/mm from ``units``
    (``per-mm`` or ``per-cm``), or a DICOM CT series converted from HU (``is_ct``: to be
    resampled to the activity's grid)."""
    from pet_dl.io.interfile import load_image

    if _is_dicom(path):
        from pet_dl.io.ct import hu_to_mu, read_ct_series

        hu, grid = read_ct_series(path if path.is_dir() else [path])
        return hu_to_mu(hu), grid, True
    mu, grid = load_image(path)
    return (mu / 10.0 if units == "per-cm" else mu), grid, False


def _shifted(grid: Any, shift: tuple[float, float, float]) -> Any:
    return replace(grid, origin_mm=tuple(o + d for o, d in zip(grid.origin_mm, shift)))


def recentre_shift(image: Any) -> tuple[float, float, float]:
    """The shift (mm) that puts the grid's centre on the scanner's centre, or zeros.

    Transaxially the grid moves when its centre is more than one voxel off the axis;
    axially a 3D grid moves when its centre is more than one voxel from z = 0, a single
    slice always goes to z = 0 (a 2D scan).
    """
    centre = [o + (n - 1) / 2.0 * v for o, n, v in
              zip(image.origin_mm, image.shape, image.voxel_size_mm)]
    vox = image.voxel_size_mm
    dx = dy = dz = 0.0
    if (centre[0] ** 2 + centre[1] ** 2) ** 0.5 > max(vox[0], vox[1]):
        dx, dy = -centre[0], -centre[1]
    if image.shape[2] == 1 or abs(centre[2]) > vox[2]:
        dz = -image.origin_mm[2] if image.shape[2] == 1 else -centre[2]
    return (dx, dy, dz)


def activity_outside_fov(activity: Any, image: Any, sinogram: Any) -> tuple[float, float]:
    """Fraction of the total activity whose voxel centres lie outside the field of view,
    and the transaxial FOV radius (mm).

    The transaxial FOV is the circle the outermost radial bins reach; axially (3D
    sinograms) the rings' extent. Activity outside is measured only in part or not at
    all, and cannot be reconstructed.
    """
    import torch

    radius = sinogram.field_of_view_radius_mm()
    x = torch.as_tensor(image.voxel_centers(0), dtype=torch.float64)
    y = torch.as_tensor(image.voxel_centers(1), dtype=torch.float64)
    z = torch.as_tensor(image.voxel_centers(2), dtype=torch.float64)
    outside = (x[:, None, None] ** 2 + y[None, :, None] ** 2 > radius**2).expand(image.shape)
    if sinogram.scanner.num_rings > 1:
        half = sinogram.scanner.axial_fov_mm / 2.0
        outside = outside | (z.abs() > half)[None, None, :]
    a = activity.to(torch.float64)
    total = float(a.sum())
    return (float(a[outside].sum()) / total if total > 0 else 0.0), radius


def load_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any, str, Any]:
    """``(activity, mu, image_geometry, name, truth)`` from the files or the phantom.

    Files: see :func:`read_activity`, :func:`read_mu`; an off-axis grid is recentred
    (:func:`recentre_shift`, with a note on stderr) and the mu-map moves with it.
    """
    import torch

    from pet_dl.errors import GeometryError
    from pet_dl.geometry import ImageGeometry

    if args.phantom:
        from pet_dl.phantoms import make_phantom

        vox = args.voxel_size * 3 if len(args.voxel_size) == 1 else args.voxel_size
        image = ImageGeometry.centered(tuple(args.image_shape), tuple(vox))
        phantom = make_phantom(args.phantom, image, torch.Generator().manual_seed(args.seed))
        return phantom.activity, phantom.mu, image, args.phantom, phantom
    activity, image = read_activity(args.activity)
    mu, mu_image, is_ct = read_mu(args.mu, getattr(args, "mu_units", "per-mm"))
    shift = recentre_shift(image)
    if shift[0] or shift[1] or (shift[2] and image.shape[2] > 1):
        centre = [o + (n - 1) / 2.0 * v for o, n, v in
                  zip(image.origin_mm, image.shape, image.voxel_size_mm)]
        print(
            f"note: {args.activity.name}: grid centred at ({centre[0]:.1f}, {centre[1]:.1f}, "
            f"{centre[2]:.1f}) mm in its file's (patient) coordinates, off the scanner's axis: "
            f"recentred on the scanner (moved by ({shift[0]:.1f}, {shift[1]:.1f}, "
            f"{shift[2]:.1f}) mm; the mu-map moves with it)",
            file=sys.stderr,
        )
    image = _shifted(image, shift)
    mu_image = _shifted(mu_image, shift)
    if is_ct:
        from pet_dl.io.ct import resample_to_grid

        mu, mu_image = resample_to_grid(mu, mu_image, image), image
    if mu_image.shape != image.shape or not all(
        abs(a - b) < 1e-3 for a, b in zip(mu_image.voxel_size_mm + mu_image.origin_mm,
                                          image.voxel_size_mm + image.origin_mm)
    ):
        raise GeometryError(
            f"activity grid {image.shape} ({args.activity.name}) and mu-map grid "
            f"{mu_image.shape} ({args.mu.name}) differ: resample the mu-map first"
        )
    return activity, mu, image, args.activity.name, {"activity": activity, "mu": mu}


def run(args: argparse.Namespace) -> int:
    """Simulate and write the scan; prints a one-line summary."""
    import torch

    from pet_dl.errors import InvalidInputError, UnitsError
    from pet_dl.geometry import SinogramGeometry, get_scanner
    from pet_dl.io.scanfile import write_scan
    from pet_dl.scan import AcquisitionMetadata
    from pet_dl.simulate import check_activity, check_mu, simulate_scan, thin_scan

    _check_args(args)
    scanner = get_scanner(args.scanner)  # ValueError naming the presets
    activity, mu, image, name, truth = load_inputs(args)
    activity = check_activity(activity, image)
    try:
        mu = check_mu(mu, image)
    except UnitsError as exc:
        if "1/cm" not in str(exc) or getattr(args, "mu_units", "per-mm") == "per-cm":
            raise
        raise UnitsError(f"{args.mu}: {exc} (or pass --mu-units per-cm)") from None
    if args.tof and scanner.tof is None:
        raise InvalidInputError(f"scanner {scanner.name!r} has no TOF; drop --tof")
    num_radial = args.num_radial or scanner.default_num_radial
    if image.shape[2] == 1:
        sinogram = SinogramGeometry.two_d(
            scanner, num_radial=num_radial, view_mashing=args.view_mashing, tof=args.tof
        )
    else:
        sinogram = SinogramGeometry(
            scanner, num_radial=num_radial, span=args.span,
            max_ring_difference=args.max_ring_difference, view_mashing=args.view_mashing,
            tof=args.tof,
        )
    image.check_fits(sinogram.scanner)
    outside, fov_radius = activity_outside_fov(activity, image, sinogram)
    if outside > 0:
        where = "transaxial" if sinogram.scanner.num_rings == 1 else "transaxial or axial"
        print(
            f"warning: {100 * outside:.3g} % of the activity lies outside the scanner's {where} "
            f"field of view (radius {fov_radius:.1f} mm): it is measured only in part or not "
            "at all and cannot be reconstructed",
            file=sys.stderr,
        )
    metadata = AcquisitionMetadata(
        duration_s=args.duration, injected_activity_bq=args.injected_activity,
        patient_weight_kg=args.weight, phantom=name, seed=args.seed,
    )
    generator = torch.Generator().manual_seed(args.seed)
    scan = simulate_scan(
        activity, mu, sinogram, image, duration_s=args.duration,
        scatter_fraction=args.scatter_fraction, randoms_fraction=args.randoms_fraction,
        psf_fwhm_mm=args.psf_fwhm, crystal_efficiency_sigma=args.norm_sigma,
        generator=generator, metadata=metadata,
    )
    if args.dose_fraction < 1.0:
        scan = thin_scan(scan, args.dose_fraction, generator, kind="dose")
    if args.scan_time < 1.0:
        scan = thin_scan(scan, args.scan_time, generator, kind="time")
    write_scan(args.out, scan, truth=truth)  # atomic: no partial file on failure
    print(
        f"{args.out}: {'x'.join(map(str, sinogram.shape))} sinogram, "
        f"{float(scan.prompts.sum()):.4g} prompts, dose fraction "
        f"{scan.metadata.dose_fraction:g}, {scan.metadata.duration_s:g} s",
        file=sys.stderr,
    )
    return 0
