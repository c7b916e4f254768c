"""``python -m pet_dl export``: a scan file out to STIR / SIRF (Interfile sinograms).

Example::

    python -m pet_dl export scan.h5 --format interfile --out stir_scan/

writes ``prompts.hs/.s``, ``multiplicative.hs/.s`` (attenuation x normalisation, the
bin efficiencies of SIRF's ``AcquisitionSensitivityModel``; STIR's
``BinNormalisationFromProjData`` takes their reciprocal) and ``additive.hs/.s``
(expected randoms + scatter counts) in ``--out``, float32 in STIR's layout. STIR reads
them as they are; ``python -m pet_dl import stir_scan/prompts.hs`` gives back the same
scan (the calibration, image grid and metadata ride in a comment line of
``prompts.hs``). The scan's calibration (counts per Bq/mL x mm) is printed: STIR's
projectors have their own scale, so a STIR image needs that factor to be in Bq/mL.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

FORMATS = ("interfile",)


def add_parser(subparsers: Any) -> None:
    """Register the ``export`` sub-command."""
    p = subparsers.add_parser(
        "export",
        help="write a scan file as STIR Interfile sinograms (for STIR / SIRF)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scan", type=Path, help="scan file (.h5)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="interfile",
        help="output format: interfile (STIR .hs + .s sinograms)",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output folder (created when its parent exists)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Export and print a one-line summary."""
    from pet_dl.errors import InvalidInputError
    from pet_dl.io.scanfile import read_scan
    from pet_dl.io.stir_sinogram import export_scan_interfile

    if not args.scan.is_file():
        raise InvalidInputError(f"{args.scan}: no such scan file")
    if args.out.exists() and not args.out.is_dir():
        raise InvalidInputError(f"--out {args.out} is a file, not a folder")
    if str(args.out.parent) and not args.out.parent.is_dir():
        raise InvalidInputError(f"output folder {args.out.parent} does not exist")
    scan = read_scan(args.scan)
    if scan.sinogram.tof:
        raise InvalidInputError(
            f"{args.scan}: TOF scans cannot be exported to STIR Interfile by pet_dl (non-TOF only)"
        )
    export_scan_interfile(scan, args.out)
    print(
        f"{args.out}: prompts, multiplicative, additive (.hs + .s), "
        f"{'x'.join(map(str, scan.sinogram.shape))} sinograms; calibration "
        f"{scan.calibration:.6g} counts per Bq/mL x mm",
        file=sys.stderr,
    )
    return 0
