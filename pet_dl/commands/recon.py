"""``python -m pet_dl recon``: scan file in, classical reconstruction (NIfTI, Bq/mL) out.

Examples::

    python -m pet_dl recon scan.h5 --algorithm osem --iterations 4 --subsets 12 --out img.nii.gz
    python -m pet_dl recon scan.h5 --algorithm map --beta 0.05 --iterations 10 --out map.nii.gz

The image is on the scan's image grid (the NIfTI affine is the grid's), in Bq/mL: the
scan file's calibration (and, for a low-dose scan, its dose fraction) is part of the
forward model, so no rescaling is needed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    """Register the ``recon`` sub-command."""
    p = subparsers.add_parser(
        "recon", help="reconstruct a scan file with MLEM, OSEM or MAP-RDP (NIfTI out)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scan", type=Path, help="scan file (.h5) written by `pet_dl simulate`")
    p.add_argument("--algorithm", choices=["mlem", "osem", "map"], default="osem",
                   help="mlem, osem or map (MAP-EM with the relative difference prior)")
    p.add_argument("--iterations", type=int, default=4, help="full iterations (4)")
    p.add_argument("--subsets", type=int, default=12, help="view subsets for osem/map (12)")
    p.add_argument("--beta", type=float, default=None,
                   help="RDP strength for map (required there), counts per Bq/mL")
    p.add_argument("--gamma", type=float, default=2.0, help="RDP edge parameter (2)")
    p.add_argument("--postfilter-fwhm", type=float, default=0.0,
                   help="Gaussian post-filter FWHM, mm (0: none)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    p.add_argument("--out", type=Path, required=True, help="output image (.nii or .nii.gz)")
    p.add_argument("--sensitivity-cache", type=Path, default=os.environ.get("PET_DL_SENSITIVITY_CACHE"),
                   help="folder that keeps subset sensitivity images between runs, keyed by geometry,"
                        " normalisation and attenuation (default $PET_DL_SENSITIVITY_CACHE; unset: none)")
    p.set_defaults(run=run)


def _check_args(args: argparse.Namespace) -> None:
    from pet_dl.errors import InvalidInputError

    if not args.scan.is_file():
        raise InvalidInputError(f"{args.scan}: no such scan file")
    name = str(args.out)
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise InvalidInputError(f"--out must end in .nii or .nii.gz, got {args.out}")
    if str(args.out.parent) and not args.out.parent.is_dir():
        raise InvalidInputError(f"output folder {args.out.parent} does not exist")
    if args.iterations < 1:
        raise InvalidInputError(f"--iterations must be >= 1, got {args.iterations}")
    if args.subsets < 1:
        raise InvalidInputError(f"--subsets must be >= 1, got {args.subsets}")
    if args.algorithm == "map":
        if args.beta is None or not args.beta >= 0:
            raise InvalidInputError("--algorithm map needs --beta >= 0 (prior strength)")
    elif args.beta is not None:
        raise InvalidInputError(f"--beta is only used by --algorithm map, not {args.algorithm}")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        raise InvalidInputError(f"--device must be cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InvalidInputError("--device cuda was requested but no CUDA device is available")
    if not args.postfilter_fwhm >= 0:
        raise InvalidInputError(f"--postfilter-fwhm must be >= 0 mm, got {args.postfilter_fwhm}")


def run(args: argparse.Namespace) -> int:
    """Reconstruct and write the NIfTI; prints a one-line summary."""
    from pet_dl.io.nifti import save_nifti
    from pet_dl.io.scanfile import read_scan
    from pet_dl.recon import reconstruct_classical

    _check_args(args)
    scan = read_scan(args.scan)
    image = reconstruct_classical(
        scan,
        args.algorithm,
        num_iterations=args.iterations,
        num_subsets=1 if args.algorithm == "mlem" else args.subsets,
        beta=args.beta or 0.0,
        gamma=args.gamma,
        postfilter_fwhm_mm=args.postfilter_fwhm,
        progress=sys.stderr.isatty(),
        device=args.device,
        sensitivity_cache=args.sensitivity_cache,
    )
    save_nifti(args.out, image, scan.image, units="Bq/mL")
    print(
        f"{args.out}: {args.algorithm} {'x'.join(map(str, scan.image.shape))} image, "
        f"mean {float(image.mean()):.4g} Bq/mL, max {float(image.max()):.4g} Bq/mL",
        file=sys.stderr,
    )
    return 0
