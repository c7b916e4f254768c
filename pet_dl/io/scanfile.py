"""HDF5 scan files (format "pet_dl scan", version 1.0): write and read a :class:`Scan`.

The layout, units and the version rule are documented in ``docs/scan-format.md``.
Writers are atomic (temporary name, then rename); readers check the version, every
required key, each dataset's kind, dtype, shape and element count against the stored
geometry and a cap (:data:`MAX_SCAN_ELEMENTS`) before reading a byte of its data, then the
values, and turn any failure into a one-line :class:`ScanFileError`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pet_dl.errors import PetDLError
from pet_dl.geometry import ImageGeometry, SinogramGeometry
from pet_dl.io.atomic import atomic_path
from pet_dl.scan import AcquisitionMetadata, Scan

SCAN_FORMAT = "pet_dl scan"
SCAN_FORMAT_VERSION = "1.0"
SINOGRAM_DATASETS = ("prompts", "multiplicative", "additive")
TRUTH_DATASETS = {
    "activity": ("Bq/mL", np.float32),
    "mu": ("1/mm", np.float32),
    "labels": ("", np.int32),
}
_COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
# Largest number of elements a reader accepts in one sinogram or image (and in one HDF5
# chunk): 2**28 = 1 GiB per float32 dataset, enough for an mMR span-1 sinogram (4096 x 252 x
# 252 = 260 M). The environment variable PET_DL_MAX_SCAN_ELEMENTS overrides it.
MAX_SCAN_ELEMENTS = 2**28
MAX_SCAN_ELEMENTS_ENV = "PET_DL_MAX_SCAN_ELEMENTS"


class ScanFileError(PetDLError):
    """A scan file is missing, corrupt, truncated, of an unsupported version or inconsistent."""


class ScanTooLargeError(ScanFileError):
    """A scan file declares a sinogram, image or chunk above the element cap (HTTP 413)."""


def max_scan_elements(max_elements: int | None = None) -> int:
    """The element cap in force: ``max_elements``, else ``$PET_DL_MAX_SCAN_ELEMENTS``, else
    :data:`MAX_SCAN_ELEMENTS`.

    Raises:
        InvalidInputError: the environment variable is not a positive integer.
    """
    if max_elements is not None:
        return int(max_elements)
    text = os.environ.get(MAX_SCAN_ELEMENTS_ENV, "").strip()
    if not text:
        return MAX_SCAN_ELEMENTS
    from pet_dl.errors import InvalidInputError

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidInputError(f"{MAX_SCAN_ELEMENTS_ENV} must be a positive integer, got {text!r}")
    return value


def _check_size(what: str, shape: tuple[int, ...], cap: int, where: str) -> None:
    """Refuse a declared ``shape`` of more than ``cap`` elements (nothing read yet)."""
    count = math.prod(int(n) for n in shape)
    if count > cap:
        raise ScanTooLargeError(
            f"{where}: {what} of shape {tuple(shape)} has {count} elements "
            f"({count * 4 / 2**30:.3g} GiB as float32), above the cap of {cap} "
            f"({MAX_SCAN_ELEMENTS_ENV})"
        )


def _checked_dataset(
    group: Any, name: str, shape: tuple[int, ...], cap: int, where: str, label: str | None = None
) -> Any:
    """The HDF5 dataset ``group[name]`` after checking its kind, dtype, shape and chunking
    against ``shape`` and ``cap``: nothing of its data has been read."""
    import h5py

    label = label or name
    obj = _required(group, name, where)
    if not isinstance(obj, h5py.Dataset):
        raise ScanFileError(f"{where}: '{label}' is not a dataset")
    dtype = obj.dtype
    if dtype.kind not in "uif" or dtype.itemsize > 8 or dtype.shape:
        raise ScanFileError(
            f"{where}: '{label}' has dtype {dtype}, needs a number type "
            "(float32 or uint32; other integer / float types of up to 8 bytes are converted)"
        )
    declared = tuple(int(n) for n in obj.shape or ())
    if declared != tuple(shape):
        raise ScanFileError(
            f"{where}: '{label}' has shape {declared}, the geometry needs {tuple(shape)}"
        )
    if obj.chunks is not None:
        _check_size(f"a chunk of '{label}'", tuple(obj.chunks), cap, where)
    return obj


def _read_float32(dataset: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Read a checked dataset straight into a float32 array (no second copy)."""
    out = np.empty(shape, dtype=np.float32)
    if out.size:
        dataset.read_direct(out)
    return out


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu").numpy()


def _check_values(
    name: str, array: np.ndarray, shape: tuple[int, ...], where: str, error: type
) -> None:
    if tuple(array.shape) != tuple(shape):
        raise error(
            f"{where}: '{name}' has shape {tuple(array.shape)}, the geometry needs {tuple(shape)}"
        )
    if not np.isfinite(array).all():
        raise error(f"{where}: '{name}' contains NaN or infinite values")
    if (array < 0).any():
        raise error(f"{where}: '{name}' has negative values (min {array.min():g})")


def _check_scalars(calibration: float, psf: float, where: str, error: type) -> None:
    if not (math.isfinite(calibration) and calibration > 0):
        raise error(f"{where}: calibration must be finite and > 0, got {calibration}")
    if not (math.isfinite(psf) and psf >= 0):
        raise error(f"{where}: psf_fwhm_mm must be finite and >= 0, got {psf}")


def _geometry_attrs(group: Any, sinogram: SinogramGeometry, image: ImageGeometry) -> None:
    """The authoritative JSON plus flat attributes for people reading with h5dump / HDFView."""
    sd = sinogram.to_dict()
    group.attrs["sinogram_json"] = json.dumps(sd)
    group.attrs["image_json"] = json.dumps(image.to_dict())
    sc = sinogram.scanner
    group.attrs["scanner_name"] = sc.name
    group.attrs["num_rings"] = sc.num_rings
    group.attrs["crystals_per_ring"] = sc.crystals_per_ring
    group.attrs["radius_mm"] = sc.radius_mm
    group.attrs["ring_spacing_mm"] = sc.ring_spacing_mm
    group.attrs["sinogram_shape"] = np.asarray(sinogram.shape, dtype=np.int64)
    group.attrs["num_radial"] = sinogram.num_radial
    group.attrs["num_views"] = sinogram.num_views
    group.attrs["num_planes"] = sinogram.num_planes
    group.attrs["span"] = sinogram.span
    group.attrs["tof"] = bool(sinogram.tof)
    if sinogram.tof and sc.tof is not None:
        group.attrs["tof_num_bins"] = sc.tof.num_bins
        group.attrs["tof_bin_width_mm"] = sc.tof.bin_width_mm
        group.attrs["tof_fwhm_mm"] = sc.tof.fwhm_mm
    group.attrs["image_shape"] = np.asarray(image.shape, dtype=np.int64)
    group.attrs["voxel_size_mm"] = np.asarray(image.voxel_size_mm, dtype=np.float64)
    group.attrs["origin_mm"] = np.asarray(image.origin_mm, dtype=np.float64)


def _truth_arrays(truth: Any) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Tensors and lesion records of a Phantom (or a mapping with the same keys)."""
    get = truth.get if isinstance(truth, Mapping) else (lambda k: getattr(truth, k, None))
    arrays = {}
    for key, (_, dtype) in TRUTH_DATASETS.items():
        value = get(key)
        if value is not None:
            arr = _numpy(value) if isinstance(value, torch.Tensor) else np.asarray(value)
            arrays[key] = arr.astype(dtype)
    lesions = []
    for les in get("lesions") or ():
        lesions.append(dataclasses.asdict(les) if dataclasses.is_dataclass(les) else dict(les))
    return arrays, lesions


def write_scan(path: str | os.PathLike[str], scan: Scan, truth: Any = None) -> None:
    """Write ``scan`` (and optionally the simulation truth) to an HDF5 scan file, atomically.

    Args:
        path: output file (``.h5``); its folder must exist.
        scan: the scan; its tensors must match ``scan.sinogram.shape`` and be finite and
            non-negative.
        truth: for simulated scans, a :class:`~pet_dl.phantoms.Phantom` or a mapping with
            any of ``activity`` (Bq/mL), ``mu`` (1/mm), ``labels`` (int) on ``scan.image``
            and ``lesions`` (Lesion records or dicts).

    Raises:
        ValueError: inconsistent shapes or invalid values (nothing is written).
    """
    import h5py

    shape = tuple(scan.sinogram.shape)
    data = {name: _numpy(getattr(scan, name)) for name in SINOGRAM_DATASETS}
    for name, array in data.items():
        _check_values(name, array, shape, "scan", ValueError)
    _check_scalars(float(scan.calibration), float(scan.psf_fwhm_mm), "scan", ValueError)
    prompts = data["prompts"].astype(np.float32)
    if prompts.size and prompts.max() < 2**32 and np.array_equal(prompts, np.round(prompts)):
        prompts_out = prompts.astype(np.uint32)  # integer counts compress better
    else:
        prompts_out = prompts
    truth_arrays, lesions = _truth_arrays(truth) if truth is not None else ({}, [])
    for key, arr in truth_arrays.items():
        if tuple(arr.shape) != tuple(scan.image.shape):
            raise ValueError(
                f"truth '{key}' has shape {tuple(arr.shape)}, image grid is {scan.image.shape}"
            )
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = SCAN_FORMAT
        f.attrs["format_version"] = SCAN_FORMAT_VERSION
        f.attrs["calibration"] = float(scan.calibration)
        f.attrs["psf_fwhm_mm"] = float(scan.psf_fwhm_mm)
        _geometry_attrs(f.create_group("geometry"), scan.sinogram, scan.image)
        ds = f.create_dataset("prompts", data=prompts_out, **_COMPRESSION)
        ds.attrs["units"] = "counts"
        ds = f.create_dataset(
            "multiplicative", data=data["multiplicative"].astype(np.float32), **_COMPRESSION
        )
        ds.attrs["units"] = "1"
        ds = f.create_dataset("additive", data=data["additive"].astype(np.float32), **_COMPRESSION)
        ds.attrs["units"] = "counts"
        meta = f.create_group("metadata")
        for field in dataclasses.fields(AcquisitionMetadata):
            value = getattr(scan.metadata, field.name)
            if value is None:
                continue
            if field.name == "extra":
                meta.attrs["extra_json"] = json.dumps(value)
            elif isinstance(value, bool) or not isinstance(value, (int, float, str)):
                meta.attrs[field.name] = json.dumps(value)
            else:
                meta.attrs[field.name] = value
        if truth_arrays or lesions:
            g = f.create_group("truth")
            for key, arr in truth_arrays.items():
                ds = g.create_dataset(key, data=arr, **_COMPRESSION)
                ds.attrs["units"] = TRUTH_DATASETS[key][0]
            g.attrs["lesions_json"] = json.dumps(lesions)


def _scalar(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _open(source: Path | bytes, where: str) -> Any:
    """Open a scan file (a path, or the bytes of one) and check its format and version."""
    import h5py

    if isinstance(source, Path) and not source.is_file():
        raise ScanFileError(f"{where}: no such file")
    try:
        f = h5py.File(io.BytesIO(source) if isinstance(source, bytes) else source, "r")
    except OSError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "unreadable"
        raise ScanFileError(
            f"{where}: not a readable HDF5 file (truncated or corrupt): {reason}"
        ) from None
    fmt = _scalar(f.attrs.get("format"))
    version = _scalar(f.attrs.get("format_version"))
    if fmt != SCAN_FORMAT or version is None:
        f.close()
        raise ScanFileError(
            f"{where}: not a pet_dl scan file (no format / format_version attributes)"
        )
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        f.close()
        raise ScanFileError(f"{where}: unreadable format_version {version!r}") from None
    ours = int(SCAN_FORMAT_VERSION.split(".")[0])
    if major != ours:
        f.close()
        newer = "newer than" if major > ours else "older than"
        raise ScanFileError(
            f"{where}: format version {version} is {newer} the versions this pet_dl reads "
            f"({ours}.x); use a matching pet_dl release"
        )
    return f


def _required(f: Any, key: str, where: str) -> Any:
    if key not in f:
        raise ScanFileError(f"{where}: missing '{key}'")
    return f[key]


def _attr(obj: Any, key: str, where: str) -> Any:
    if key not in obj.attrs:
        name = obj.name.strip("/")
        raise ScanFileError(f"{where}: missing '{(name + '/') if name else ''}{key}' attribute")
    return _scalar(obj.attrs[key])


def read_scan(path: str | os.PathLike[str], max_elements: int | None = None) -> Scan:
    """Read a scan file written by :func:`write_scan` (any 1.x version).

    Before reading a byte of a dataset's data, its kind, dtype, shape (against the stored
    geometry) and element count are checked, so a small file that declares a huge array
    is refused without allocating it.

    Args:
        path: the ``.h5`` file.
        max_elements: the largest sinogram / image / HDF5 chunk accepted, in elements
            (default :func:`max_scan_elements`: ``$PET_DL_MAX_SCAN_ELEMENTS`` or 2**28).

    Returns:
        The :class:`Scan`, tensors float32 on the CPU.

    Raises:
        ScanFileError: missing, truncated or corrupt file, another major version, a
            missing key, a dataset that is not a number array, shapes that do not match
            the geometry, or invalid values (NaN / Inf, negative counts or factors,
            calibration <= 0).
        ScanTooLargeError: the geometry or a chunk is above ``max_elements``.
    """
    p = Path(path)
    return _read_scan(p, f"scan file {p}", max_scan_elements(max_elements))


def read_scan_bytes(data: bytes, name: str = "scan", max_elements: int | None = None) -> Scan:
    """:func:`read_scan` of the bytes of a scan file (an HTTP request body, say).

    Nothing is written to disk; error messages name ``name`` instead of a path.

    Raises:
        ScanFileError, ScanTooLargeError: as :func:`read_scan`.
    """
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise ScanFileError(f"{name}: empty body; send the bytes of a pet_dl scan file")
    return _read_scan(bytes(data), name, max_scan_elements(max_elements))


def _read_scan(source: Path | bytes, where: str, cap: int) -> Scan:
    f = _open(source, where)
    try:
        with f:
            geometry = _required(f, "geometry", where)
            try:
                sinogram = SinogramGeometry.from_dict(
                    json.loads(_attr(geometry, "sinogram_json", where))
                )
                image = ImageGeometry.from_dict(json.loads(_attr(geometry, "image_json", where)))
            except ScanFileError:
                raise
            except (ValueError, TypeError, KeyError) as exc:
                raise ScanFileError(f"{where}: invalid geometry: {exc}") from None
            shape = tuple(sinogram.shape)
            _check_size("the sinogram", shape, cap, where)
            _check_size("the image", tuple(image.shape), cap, where)
            datasets = {
                name: _checked_dataset(f, name, shape, cap, where) for name in SINOGRAM_DATASETS
            }
            calibration = float(_attr(f, "calibration", where))
            psf = float(_attr(f, "psf_fwhm_mm", where))
            _check_scalars(calibration, psf, where, ScanFileError)
            metadata = _read_metadata(_required(f, "metadata", where), where)
            tensors = {}
            for name, dataset in datasets.items():
                array = _read_float32(dataset, shape)
                _check_values(name, array, shape, where, ScanFileError)
                tensors[name] = torch.from_numpy(array)
    except ScanFileError:
        raise
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScanFileError(f"{where}: corrupt or truncated data: {reason}") from None
    return Scan(
        sinogram=sinogram,
        image=image,
        prompts=tensors["prompts"],
        multiplicative=tensors["multiplicative"],
        additive=tensors["additive"],
        calibration=calibration,
        psf_fwhm_mm=psf,
        metadata=metadata,
    )


def _read_metadata(group: Any, where: str) -> AcquisitionMetadata:
    kwargs: dict[str, Any] = {}
    names = {field.name for field in dataclasses.fields(AcquisitionMetadata)}
    for key, raw in group.attrs.items():
        value = _scalar(raw)
        if key == "extra_json":
            kwargs["extra"] = json.loads(value)
        elif key in names:
            kwargs[key] = value
    if "duration_s" not in kwargs:
        raise ScanFileError(f"{where}: missing 'metadata/duration_s' attribute")
    return AcquisitionMetadata(**kwargs)


def read_truth(
    path: str | os.PathLike[str], max_elements: int | None = None
) -> dict[str, Any] | None:
    """The simulation truth stored with a scan, or None when the file has none.

    Returns:
        dict with the stored ones of ``activity`` (float32 ``(nx, ny, nz)``, Bq/mL),
        ``mu`` (float32, 1/mm), ``labels`` (int64), and ``lesions`` (list of dicts:
        label, name, centre_mm, diameter_mm, activity_bqml, background_bqml).

    Raises:
        ScanFileError: as :func:`read_scan` for the file itself, or truth arrays whose
            kind, dtype or shape do not fit the image grid (checked before reading).
        ScanTooLargeError: the image grid or a chunk is above ``max_elements``.
    """
    p = Path(path)
    where = f"scan file {p}"
    cap = max_scan_elements(max_elements)
    f = _open(p, where)
    try:
        with f:
            if "truth" not in f:
                return None
            image = ImageGeometry.from_dict(
                json.loads(_attr(_required(f, "geometry", where), "image_json", where))
            )
            _check_size("the image", tuple(image.shape), cap, where)
            g = f["truth"]
            out: dict[str, Any] = {}
            for key in TRUTH_DATASETS:
                if key in g:
                    dataset = _checked_dataset(
                        g, key, tuple(image.shape), cap, where, label=f"truth/{key}"
                    )
                    array = np.asarray(dataset[()])
                    dtype = torch.int64 if key == "labels" else torch.float32
                    out[key] = torch.from_numpy(array).to(dtype)
            out["lesions"] = json.loads(_scalar(g.attrs.get("lesions_json", "[]")))
            for les in out["lesions"]:
                if "centre_mm" in les:
                    les["centre_mm"] = tuple(les["centre_mm"])
            return out
    except ScanFileError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScanFileError(f"{where}: corrupt or truncated truth data: {reason}") from None
