"""``python -m pet_dl import``: measured data in, scan file (HDF5) out.

Examples::

    python -m pet_dl import PET_ACQ.l.hdr --norm norm.n.hdr --mu-map mu_map.hv \\
        --span 11 --out scan.h5
    python -m pet_dl import acq.l --span 2d --frame-start 60 --frame-duration 30 --out f.h5
    python -m pet_dl import sino.hs --out scan.h5          # STIR Interfile sinogram
    python -m pet_dl import data.petsird --out scan.h5     # PETSIRD

Inputs, by name: Siemens mMR PETLINK 32-bit listmode (``.l`` with its Interfile header
``.l.hdr``, or the header itself): prompts and delayeds of one time frame histogrammed
into the mMR sinogram (``--span 11``, ``1`` or ``2d``: every ring pair rebinned into one
direct plane), streamed in chunks (memory does not grow with the file); randoms from the
delayeds' fan sums (smooth, not the raw delayeds); the component normalisation
(``--norm``) and attenuation from a mu-map (``--mu-map``, Interfile ``.hv`` or NIfTI,
1/cm or 1/mm, resampled to the image grid). ``.hs``: a STIR sinogram; ``.petsird`` /
``.bin``: a PETSIRD file. The scan file is read by ``recon``, ``infer.py`` and the server
like a simulated one (docs/scan-format.md: "Imported scans").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

_LISTMODE = (".l", ".l.hdr", ".hdr", ".hdr.stir")
_STIR = (".hs",)
_PETSIRD = (".petsird", ".bin")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_parser(subparsers: Any) -> None:
    """Register the ``import`` sub-command."""
    p = subparsers.add_parser(
        "import", help="measured data (mMR listmode, STIR sinogram, PETSIRD) -> scan file",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path,
                   help="mMR listmode (.l or .l.hdr), STIR sinogram (.hs) or PETSIRD (.petsird, .bin)")
    p.add_argument("--out", type=Path, required=True, help="the scan file (.h5)")
    lm = p.add_argument_group("listmode options")
    lm.add_argument("--norm", type=Path,
                    help="mMR component normalisation (norm.n.hdr or norm.n); none: unit efficiencies")
    lm.add_argument("--mu-map", type=Path,
                    help="mu-map at 511 keV: Interfile (.hv) or NIfTI; resampled to the image grid")
    lm.add_argument("--mu-units", choices=["auto", "per-cm", "per-mm"], default="auto",
                    help="units of the mu-map (auto: per-cm when water-like values are ~0.1)")
    lm.add_argument("--frame-start", type=_non_negative, default=0.0,
                    help="frame start after the acquisition start, s (0)")
    lm.add_argument("--frame-duration", type=_positive, default=None,
                    help="frame length, s (to the end of the file)")
    lm.add_argument("--span", choices=["11", "1", "2d"], default="11",
                    help="sinogram: span 11 or span 1 (ring differences up to 60), or 2d: all "
                         "ring pairs rebinned into one direct plane (11)")
    lm.add_argument("--num-radial", type=int, default=344,
                    help="radial bins kept, centred (344: all)")
    lm.add_argument("--view-mashing", type=int, default=1, help="views summed into one (1)")
    lm.add_argument("--image-shape", type=int, nargs=3, metavar=("NX", "NY", "NZ"),
                    help="reconstruction grid (172 172 127; 2d: 172 172 1)")
    lm.add_argument("--voxel-size", type=_positive, nargs="+",
                    help="voxel size, mm: one value or three (4.1725 4.1725 2.03125)")
    lm.add_argument("--psf-fwhm", type=_non_negative, default=0.0,
                    help="image-space resolution model stored in the scan, mm (0)")
    lm.add_argument("--scatter", action="store_true",
                    help="estimate scatter: single-scatter simulation of a first OSEM image, "
                         "tail-fitted (needs --mu-map and --span 2d)")
    p.set_defaults(run=run)


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_STIR):
        return "stir"
    if name.endswith(_PETSIRD):
        return "petsird"
    if name.endswith(_LISTMODE) or ".l.hdr" in name:
        return "listmode"
    from pet_dl.errors import InvalidInputError

    raise InvalidInputError(
        f"{path}: unknown input type; use mMR listmode (.l, .l.hdr), a STIR sinogram (.hs)"
        " or PETSIRD (.petsird, .bin)"
    )


def _reader(module: str, function: str, what: str) -> Any:
    """``module.function``, imported only now (another part of pet_dl provides it)."""
    import importlib

    from pet_dl.errors import InvalidInputError

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            raise InvalidInputError(
                f"{what} input needs {module}, which this installation of pet_dl lacks"
            ) from None
        raise
    reader = getattr(mod, function, None)
    if reader is None:
        raise InvalidInputError(f"{what} input needs {module}.{function}, which is missing")
    return reader


def _check_args(args: argparse.Namespace, kind: str) -> None:
    from pet_dl.errors import InvalidInputError

    if not args.input.exists():
        raise InvalidInputError(f"{args.input}: no such file")
    if not str(args.out).endswith(".h5"):
        raise InvalidInputError(f"--out must end in .h5, got {args.out}")
    if str(args.out.parent) and not args.out.parent.is_dir():
        raise InvalidInputError(f"output folder {args.out.parent} does not exist")
    if kind != "listmode":
        given = [opt for opt, value in (
            ("--norm", args.norm), ("--mu-map", args.mu_map),
            ("--frame-duration", args.frame_duration), ("--image-shape", args.image_shape),
            ("--voxel-size", args.voxel_size), ("--scatter", args.scatter or None),
        ) if value is not None]
        if given or args.frame_start or args.span != "11":
            raise InvalidInputError(
                f"{', '.join(given) or '--frame-start/--span'} only apply to listmode input;"
                f" {args.input.name} is a {kind} file"
            )
        return
    for opt, path in (("--norm", args.norm), ("--mu-map", args.mu_map)):
        if path is not None and not path.exists():
            raise InvalidInputError(f"{opt} {path}: no such file")
    if not 1 <= args.num_radial <= 344:
        raise InvalidInputError(f"--num-radial must be in 1..344, got {args.num_radial}")
    if args.view_mashing < 1 or 252 % args.view_mashing:
        raise InvalidInputError(f"--view-mashing must divide 252, got {args.view_mashing}")
    if args.voxel_size is not None and len(args.voxel_size) not in (1, 3):
        raise InvalidInputError(f"--voxel-size takes one or three values, got {len(args.voxel_size)}")
    if args.scatter and (args.mu_map is None or args.span != "2d"):
        raise InvalidInputError("--scatter needs --mu-map and --span 2d (3D scatter: not yet)")
    if args.image_shape is not None and min(args.image_shape) < 1:
        raise InvalidInputError(f"--image-shape must be positive, got {args.image_shape}")


def _import_listmode(args: argparse.Namespace) -> tuple[Any, str]:
    from pet_dl.geometry import ImageGeometry
    from pet_dl.importing import default_image, import_listmode, mmr_sinogram

    sinogram = mmr_sinogram(args.span, args.num_radial, args.view_mashing)
    image = default_image(sinogram)
    if args.image_shape is not None or args.voxel_size is not None:
        shape = tuple(args.image_shape) if args.image_shape is not None else image.shape
        vox = args.voxel_size or image.voxel_size_mm
        vox = tuple(vox) * 3 if len(vox) == 1 else tuple(vox)
        image = ImageGeometry.centered(shape, vox)
    scan, report = import_listmode(
        args.input, span=args.span, norm_path=args.norm, mu_path=args.mu_map,
        mu_units={"auto": "auto", "per-cm": "1/cm", "per-mm": "1/mm"}[args.mu_units],
        frame_start_s=args.frame_start, frame_duration_s=args.frame_duration,
        num_radial=args.num_radial, view_mashing=args.view_mashing, image=image,
        psf_fwhm_mm=args.psf_fwhm, scatter=args.scatter, progress=sys.stderr.isatty(),
    )
    text = (
        f"{report.prompts:,} prompts, {report.delayeds:,} delayeds in {report.duration_s:g} s"
        f" from {report.frame_start_s:g} s; randoms {100 * report.randoms_fraction:.1f} % of"
        f" the prompts"
    )
    if report.scatter:
        text += f"; scatter {100 * report.scatter_fraction:.1f} % of prompts - randoms"
    if report.prompts_kept != report.prompts:
        text += f"; {report.prompts - report.prompts_kept:,} prompts outside the sinogram"
    if report.notes:
        text += "; " + "; ".join(report.notes)
    return scan, text


def run(args: argparse.Namespace) -> int:
    """Import the input and write the scan file; prints a one-line summary on stderr."""
    from pet_dl.io.scanfile import write_scan

    kind = _kind(args.input)
    _check_args(args, kind)
    if kind == "listmode":
        scan, text = _import_listmode(args)
    elif kind == "stir":
        scan = _reader("pet_dl.io.stir_sinogram", "read_stir_sinogram", "STIR sinogram")(args.input)
        text = f"STIR sinogram {args.input.name}"
    else:
        scan = _reader("pet_dl.io.petsird", "read_petsird", "PETSIRD")(args.input)
        text = f"PETSIRD {args.input.name}"
    write_scan(args.out, scan)
    shape = "x".join(map(str, scan.sinogram.shape))
    print(f"{args.out}: sinogram {shape}; {text}", file=sys.stderr)
    return 0
