"""``python -m pet_dl simulate``: activity + mu-map (NIfTI) or a phantom in, scan file out.

Examples::

    python -m pet_dl simulate --activity A.nii.gz --mu MU.nii.gz --scanner mmr \\
        --dose-fraction 0.05 --seed 1 --out scan.h5
    python -m pet_dl simulate --phantom brain --image-shape 128 128 1 --voxel-size 2 \\
        --scanner mmr --out brain_full.h5

A NIfTI with one slice (or ``--image-shape NX NY 1``) gives a 2D scan: one direct plane
at z = 0 (a single slice is placed at z = 0). The full-dose scan of ``--duration`` seconds
is simulated with ``--seed``; ``--dose-fraction`` and ``--scan-time`` thin it binomially,
so scans with the same seed and different fractions are one acquisition at several
count levels. The activity is in Bq/mL, the mu-map in 1/mm at 511 keV.
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
    src.add_argument("--activity", type=Path, help="activity NIfTI, Bq/mL")
    src.add_argument("--mu", type=Path, help="mu-map NIfTI, 1/mm at 511 keV (same grid)")
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
        raise InvalidInputError("give --activity and --mu (NIfTI files), or --phantom")
    if files and (args.activity is None or args.mu is None):
        raise InvalidInputError("--activity and --mu go together (both NIfTI files)")
    for path in (args.activity, args.mu):
        if path is not None and not path.is_file():
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


def load_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any, str, Any]:
    """``(activity, mu, image_geometry, name, truth)`` from the files or the phantom."""
    import torch

    from pet_dl.errors import GeometryError
    from pet_dl.geometry import ImageGeometry
    from pet_dl.io.nifti import load_nifti

    if args.phantom:
        from pet_dl.phantoms import make_phantom

        vox = args.voxel_size * 3 if len(args.voxel_size) == 1 else args.voxel_size
        image = ImageGeometry.centered(tuple(args.image_shape), tuple(vox))
        phantom = make_phantom(args.phantom, image, torch.Generator().manual_seed(args.seed))
        return phantom.activity, phantom.mu, image, args.phantom, phantom
    activity, image = load_nifti(args.activity)
    mu, mu_image = load_nifti(args.mu)
    if mu_image.shape != image.shape or not all(
        abs(a - b) < 1e-3 for a, b in zip(mu_image.voxel_size_mm + mu_image.origin_mm,
                                          image.voxel_size_mm + image.origin_mm)
    ):
        raise GeometryError(
            f"activity grid {image.shape} ({args.activity.name}) and mu-map grid "
            f"{mu_image.shape} ({args.mu.name}) differ: resample the mu-map first"
        )
    if image.shape[2] == 1 and image.origin_mm[2] != 0.0:
        image = replace(image, origin_mm=(image.origin_mm[0], image.origin_mm[1], 0.0))
    return activity, mu, image, args.activity.name, {"activity": activity, "mu": mu}


def run(args: argparse.Namespace) -> int:
    """Simulate and write the scan; prints a one-line summary."""
    import torch

    from pet_dl.errors import InvalidInputError
    from pet_dl.geometry import SinogramGeometry, get_scanner
    from pet_dl.io.scanfile import write_scan
    from pet_dl.scan import AcquisitionMetadata
    from pet_dl.simulate import check_activity, check_mu, simulate_scan, thin_scan

    _check_args(args)
    scanner = get_scanner(args.scanner)  # ValueError naming the presets
    activity, mu, image, name, truth = load_inputs(args)
    activity = check_activity(activity, image)
    mu = check_mu(mu, image)
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
