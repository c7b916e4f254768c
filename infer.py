"""Reconstruct scan files with a trained network: NIfTI and DICOM PET out.

    python infer.py scan.h5 [scan2.h5 ...] [--checkpoint model.safetensors] --out DIR
                    [--format nifti,dicom] [--device cpu|cuda] [--metadata side.json]

Writes ``DIR/<scan name>.nii.gz`` (RAS affine from the scan's image grid) and
``DIR/<scan name>_dicom/`` (PET Image Storage series, Bq/mL). A 3D scan (several rings) given to
a 2D model is rebinned to its direct planes (SSRB), reconstructed plane by plane and written
as one volume on the scan's image grid (docs/inference.md). Each image is checked against
its scan's data (:func:`pet_dl.inference.reconstruct_and_check`): the data-consistency map
``DIR/<scan name>_consistency.nii.gz`` (z, noise SDs; positive where the image has more
activity than the counts support) is written beside it, and where regions are flagged, or
the whole image explains the counts much worse than OSEM does, one ``warning: ...`` line on
stderr names their count; the images are still written (``--no-data-check`` skips it).
``--osem`` also writes an OSEM of each scan for reading beside the network's image
(``DIR/<scan name>_osem.nii.gz`` and ``_osem_dicom/``, in the same formats), at the
settings chosen on validation for the scan's measured count level
(:func:`pet_dl.reading_osem.osem_for_reading`; at low dose the network fades hot lesions
of 10 mm and less), and prints the settings on one line. Exit codes: 0 success,
2 bad input (one line ``error: ...`` on stderr), 1 unexpected failure. Every output is
written under a temporary name and renamed, so a failure leaves no partial file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

# Before torch loads: idle OpenMP threads sleep instead of spinning against numba's.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FORMATS = ("nifti", "dicom")
# Side-file keys that may override the scan's acquisition metadata (patient / tracer facts).
_OVERRIDABLE = (
    "patient_weight_kg",
    "patient_id",
    "patient_name",
    "injected_activity_bq",
    "injection_time",
    "acquisition_start",
    "radionuclide",
    "half_life_s",
    "tracer",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infer.py",
        description="Reconstruct pet_dl scan files (HDF5) with a trained network.",
    )
    parser.add_argument("scans", nargs="+", type=Path, help="scan files (.h5)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="model .safetensors (default: shipped 2D model)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--format", default="nifti,dicom", help="comma-separated: nifti, dicom (default both)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument(
        "--metadata", type=Path, default=None, help="JSON side file: patient / tracer facts"
    )
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast on CUDA (default: on for 3D scans on CUDA)",
    )
    parser.add_argument(
        "--data-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write <scan>_consistency.nii.gz and warn where the image has more activity than "
        "the counts support, or fits them much worse than OSEM (default: on)",
    )
    parser.add_argument(
        "--osem",
        action="store_true",
        help="also write <scan>_osem (OSEM at the settings chosen for the scan's count level) "
        "to read small lesions beside the network's image",
    )
    return parser


def parse_formats(text: str) -> tuple[str, ...]:
    """``"nifti,dicom"`` -> ``("nifti", "dicom")``; unknown names are an error."""
    from pet_dl.errors import InvalidInputError

    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise InvalidInputError(
            f"unknown --format {text!r}; use one or both of {', '.join(FORMATS)}"
        )
    return formats


def read_side_metadata(path: Path | None) -> dict[str, Any]:
    """The JSON side file as a dict of metadata overrides (checked keys and types)."""
    from pet_dl.errors import InvalidInputError

    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InvalidInputError(f"metadata file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"metadata file {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"metadata file {path} must hold a JSON object")
    unknown = sorted(set(data) - set(_OVERRIDABLE))
    if unknown:
        raise InvalidInputError(
            f"metadata file {path}: unknown key(s) {unknown}; valid: {list(_OVERRIDABLE)}"
        )
    for key in ("patient_weight_kg", "injected_activity_bq", "half_life_s"):
        value = data.get(key)
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise InvalidInputError(f"metadata file {path}: {key} must be a positive number")
    return data


def scan_name(path: Path) -> str:
    """``/a/b/patient1.h5`` -> ``patient1``."""
    name = path.name
    for suffix in (".hdf5", ".h5"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# Hidden while MONAI loads (see _import_monai_networks): optional dependencies of MONAI
# that infer.py never uses.
_HIDDEN_FROM_MONAI = ("matplotlib", "matplotlib.pyplot", "requests")


def _import_monai_networks() -> None:
    """Import MONAI (its networks build the model) without its plotting and download helpers.

    ``import monai`` loads every MONAI submodule, and some of them import matplotlib.pyplot
    (its Jupyter and visualisation helpers) and requests (its dataset downloads) through
    MONAI's ``optional_import``: about 0.3 CPU s of infer.py's start-up on 2 cores
    (docs/performance.md). infer.py draws and downloads nothing, so those packages are
    hidden while MONAI loads and put back afterwards: MONAI's code is imported unchanged,
    only its helpers that need them report them missing in this process. Does nothing when
    MONAI or matplotlib is already imported.
    """
    if "monai" in sys.modules or any(name in sys.modules for name in _HIDDEN_FROM_MONAI):
        return
    for name in _HIDDEN_FROM_MONAI:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        import monai.networks.nets  # noqa: F401
    finally:
        for name in _HIDDEN_FROM_MONAI:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def _write_outputs(
    out_dir: Path, name: str, image: Any, scan: Any, formats: tuple[str, ...], checkpoint: str,
    consistency: Any = None, reading: Any = None,
) -> list[Path]:
    """Write the requested outputs of one scan (and ``<name>_consistency.nii.gz``, the
    data-consistency map's z ``(nx, ny, nz)``, when given, and ``<name>_osem`` in the same
    formats, the :class:`~pet_dl.reading_osem.ReadingOSEM`'s image, when given); on failure
    remove what this scan wrote."""
    from pet_dl.io.dicom import write_pet_series
    from pet_dl.io.nifti import save_nifti

    written: list[Path] = []
    try:
        if consistency is not None:
            path = out_dir / f"{name}_consistency.nii.gz"
            save_nifti(path, consistency.z, scan.image, units="z (noise SD)")
            written.append(path)
        images = [(name, image, f"pet_dl {name}", f"pet_dl {checkpoint}")]
        if reading is not None:
            method = f"OSEM {reading.iterations}x{reading.subsets} {reading.postfilter_fwhm_mm:g}mm"
            images.append((f"{name}_osem", reading.image, f"pet_dl {name} OSEM", method))
        # one study and frame of reference for the scan's series (network 1, OSEM 2), so a
        # viewer shows them side by side, registered
        from pydicom.uid import generate_uid

        study, frame = generate_uid(), generate_uid()
        for number, (stem, pixels, description, method) in enumerate(images, start=1):
            if "nifti" in formats:
                path = out_dir / f"{stem}.nii.gz"
                save_nifti(path, pixels, scan.image)
                written.append(path)
            if "dicom" in formats:
                path = out_dir / f"{stem}_dicom"
                write_pet_series(
                    path,
                    pixels,
                    scan.image,
                    scan.metadata,
                    series_description=description,
                    reconstruction_method=method[:64],
                    series_number=number,
                    study_uid=study,
                    frame_of_reference_uid=frame,
                )
                written.append(path)
    except BaseException:
        for path in written:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(
                missing_ok=True
            )
        raise
    return written


def run(args: argparse.Namespace) -> int:
    """Reconstruct every scan of ``args``; raises on the first bad one, after removing the
    output folders this run created while they are still empty."""
    created = [p for p in (args.out, *args.out.parents) if not p.exists()]  # deepest first
    try:
        return _run(args)
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _run(args: argparse.Namespace) -> int:
    """Reconstruct every scan of ``args``; raises on the first bad one."""
    from tqdm import tqdm

    from pet_dl.data_check import data_check_warning
    from pet_dl.errors import InvalidInputError
    from pet_dl.inference import (
        load_model,
        reconstruct_and_check,
        reconstruct_with_network,
        resolve_device,
    )
    from pet_dl.io.scanfile import read_scan
    from pet_dl.reading_osem import osem_for_reading, reading_settings

    formats = parse_formats(args.format)
    overrides = read_side_metadata(args.metadata)
    missing = [str(p) for p in args.scans if not p.is_file()]
    if missing:
        raise InvalidInputError(f"scan file(s) not found: {', '.join(missing)}")
    names = [scan_name(p) for p in args.scans]
    if len(set(names)) != len(names):
        raise InvalidInputError("two scans have the same name; their outputs would collide")
    device = resolve_device(args.device)
    _import_monai_networks()
    loaded = load_model(args.checkpoint, device)
    if args.osem:  # before any scan: a model without the settings is refused at once
        reading_settings(loaded)
    label = args.checkpoint.name if args.checkpoint else "shipped model"
    args.out.mkdir(parents=True, exist_ok=True)
    for path, name in zip(tqdm(args.scans, desc="infer", unit="scan", disable=None), names):
        scan = read_scan(path)
        if overrides:
            scan = dataclasses.replace(
                scan, metadata=dataclasses.replace(scan.metadata, **overrides)
            )
        if args.data_check:
            image, fit = reconstruct_and_check(scan, loaded, device=device, amp=args.amp)
        else:
            image, fit = reconstruct_with_network(scan, loaded, device=device, amp=args.amp), None
        consistency = None if fit is None else fit.consistency
        reading = osem_for_reading(scan, loaded, device) if args.osem else None
        _write_outputs(args.out, name, image, scan, formats, label, consistency, reading)
        if reading is not None:
            print(f"{name}: wrote {name}_osem for reading beside the network: {reading.describe()}")
        line = None if fit is None else data_check_warning(name, fit)
        if line:
            print(line, file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 ok, 2 bad input, 1 unexpected error."""
    args = build_parser().parse_args(argv)
    try:
        from pet_dl.errors import PetDLError

        return run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (PetDLError, ValueError, OSError, MemoryError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, MemoryError):
            message = f"out of memory: {exc}" if str(exc) else "out of memory"
        print(f"error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else is a bug: still one line, exit 1
        print(
            f"error: unexpected {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr
        )
        return 1


def _exit_now(status: int) -> None:
    """Leave the process without the interpreter's teardown.

    Clearing the modules of torch, MONAI and numba and collecting their objects takes about
    0.6 CPU s once the work is done (docs/performance.md, "infer.py start-up"). Every
    output is written, closed and renamed by then, so the exit handlers (logging, h5py,
    numba, temporary files' finalizers, ...) run as usual, the streams are flushed, and the
    process ends with ``status``.
    """
    import atexit

    run_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython's, as at normal exit
    if run_handlers is None:
        sys.exit(status)
    run_handlers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    _exit_now(main())
