"""STIR Interfile images (``.hv`` + raw data) and sinogram headers (``.hs``), and
:func:`load_image` that reads any supported image by suffix.

Keys are matched case-insensitively, without the leading ``!`` and with runs of spaces
collapsed (``!matrix size [1]`` -> ``matrix size [1]``). Image data are raw, x fastest,
so a 3D image is ``[z, y, x]`` on disk and ``(nx, ny, nz)`` here.

World position: STIR's x, y, z image axes are taken as the world axes (no flips). The
transaxial position comes from ``first pixel offset (mm)`` when present (centred on the
axis otherwise); the grid is centred axially on z = 0, the scanner's axial centre in
pet_dl (STIR counts z from the first ring).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pet_dl.geometry import ImageGeometry
from pet_dl.io import ImageFileError

_NUMBER_FORMATS = {
    ("float", 4): "f4",
    ("float", 8): "f8",
    ("short float", 4): "f4",
    ("long float", 8): "f8",
    ("signed integer", 1): "i1",
    ("signed integer", 2): "i2",
    ("signed integer", 4): "i4",
    ("unsigned integer", 1): "u1",
    ("unsigned integer", 2): "u2",
    ("unsigned integer", 4): "u4",
}


def _norm_key(key: str) -> str:
    return re.sub(r"\s+", " ", key.strip().lstrip("!").strip().lower())


def read_interfile_header(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse an Interfile header into ``{normalised key: raw value string}``.

    Comment lines (``;``) and lines without ``:=`` are skipped; for a repeated key the
    last value wins.

    Raises:
        ImageFileError: the file is missing or is not an Interfile header.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageFileError(f"Interfile header {p}: no such file")
    try:
        text = p.read_text(encoding="latin-1")
    except OSError as exc:
        raise ImageFileError(f"Interfile header {p}: cannot read it: {exc}") from None
    header: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split(";", 1)[0] if line.lstrip().startswith(";") else line
        if ":=" not in line:
            continue
        key, value = line.split(":=", 1)
        header[_norm_key(key)] = value.strip()
    if "interfile" not in header:
        raise ImageFileError(
            f"Interfile header {p}: no '!INTERFILE :=' line; not an Interfile header"
        )
    return header


def _get(header: dict[str, str], key: str, path: Path) -> str:
    value = header.get(key)
    if value is None or value == "":
        raise ImageFileError(f"Interfile header {path}: missing '{key}'")
    return value


def _number(header: dict[str, str], key: str, path: Path, kind: type = float) -> Any:
    raw = _get(header, key, path)
    try:
        return kind(float(raw)) if kind is int else kind(raw)
    except ValueError:
        raise ImageFileError(f"Interfile header {path}: '{key}' is not a number: {raw!r}") from None


def _int_list(raw: str, key: str, path: Path) -> list[int]:
    try:
        return [int(v) for v in raw.strip().strip("{}").split(",") if v.strip()]
    except ValueError:
        raise ImageFileError(
            f"Interfile header {path}: '{key}' is not a list of ints: {raw!r}"
        ) from None


def _dtype(header: dict[str, str], path: Path) -> np.dtype:
    fmt = _get(header, "number format", path).lower()
    nbytes = _number(header, "number of bytes per pixel", path, int)
    code = _NUMBER_FORMATS.get((fmt, nbytes))
    if code is None:
        raise ImageFileError(
            f"Interfile header {path}: unsupported number format {fmt!r} with {nbytes} bytes"
        )
    order = header.get("imagedata byte order", "LITTLEENDIAN").upper()
    if order not in ("LITTLEENDIAN", "BIGENDIAN"):
        raise ImageFileError(f"Interfile header {path}: unknown byte order {order!r}")
    return np.dtype(("<" if order == "LITTLEENDIAN" else ">") + code)


def read_interfile_image(path: str | os.PathLike[str]) -> tuple[torch.Tensor, ImageGeometry]:
    """Read a STIR Interfile image (``.hv`` header and its raw data file).

    Returns:
        ``(image, geometry)``: float32 tensor ``(nx, ny, nz)`` in the file's units
        (attenuation images from STIR / SIRF are in 1/cm: convert with
        :func:`pet_dl.io.ct.mu_per_cm_to_per_mm`), and its grid (voxel sizes from
        ``scaling factor (mm/pixel) [k]``).

    Raises:
        ImageFileError: a missing key, a missing or truncated data file, several time
            frames, or a layout other than 2D / 3D.
    """
    p = Path(path)
    header = read_interfile_header(p)
    ndim = _number(header, "number of dimensions", p, int)
    if ndim not in (2, 3):
        raise ImageFileError(f"Interfile image {p}: need 2 or 3 dimensions, got {ndim}")
    frames = int(float(header.get("number of time frames", "1") or 1))
    if frames != 1:
        raise ImageFileError(f"Interfile image {p}: {frames} time frames; pet_dl reads one")
    sizes = [_number(header, f"matrix size [{k}]", p, int) for k in range(1, ndim + 1)]
    voxel = [_number(header, f"scaling factor (mm/pixel) [{k}]", p) for k in range(1, ndim + 1)]
    if ndim == 2:
        sizes.append(1)
        voxel.append(float(header.get("slice thickness (pixels)", "1") or 1) * voxel[0])
    if min(sizes) < 1 or min(voxel) <= 0:
        raise ImageFileError(f"Interfile image {p}: bad matrix size {sizes} or voxel size {voxel}")
    dtype = _dtype(header, p)
    data_file = p.parent / _get(header, "name of data file", p)
    if not data_file.is_file():
        raise ImageFileError(f"Interfile image {p}: data file {data_file} not found")
    offset = int(float(header.get("data offset in bytes [1]", "0") or 0))
    count = sizes[0] * sizes[1] * sizes[2]
    needed = offset + count * dtype.itemsize
    have = data_file.stat().st_size
    if have < needed:
        raise ImageFileError(
            f"Interfile image {p}: data file {data_file.name} is truncated "
            f"({have} bytes, need {needed} for {sizes[0]}x{sizes[1]}x{sizes[2]} {dtype})"
        )
    raw = np.fromfile(data_file, dtype=dtype, count=count, offset=offset)
    array = raw.reshape(sizes[2], sizes[1], sizes[0]).transpose(2, 1, 0).astype(np.float32)
    slope = float(header.get("data rescale slope", "1") or 1)
    inter = float(header.get("data rescale offset", "0") or 0)
    if slope != 1.0 or inter != 0.0:
        array = array * np.float32(slope) + np.float32(inter)
    origin = []
    for k in range(3):
        centred = -(sizes[k] - 1) / 2.0 * voxel[k]
        key = f"first pixel offset (mm) [{k + 1}]"
        origin.append(float(header[key]) if k < 2 and header.get(key) else centred)
    geometry = ImageGeometry(
        shape=tuple(sizes),  # type: ignore[arg-type]
        voxel_size_mm=tuple(voxel),  # type: ignore[arg-type]
        origin_mm=tuple(origin),  # type: ignore[arg-type]
    )
    return torch.from_numpy(np.ascontiguousarray(array)), geometry


def read_sinogram_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a STIR projection-data header (``.hs``) into a plain dict.

    Returns:
        ``num_segments``, ``num_views``, ``num_tangential``, ``axial_per_segment`` (list,
        planes of each segment), ``min_ring_difference`` / ``max_ring_difference`` (lists,
        per segment), ``axis_labels`` (matrix axis label of each dimension, ``[1]`` first),
        ``data_file``, ``number_format``, ``bytes_per_pixel``, ``byte_order``,
        ``arc_corrected``, ``num_tof_bins`` (1 without TOF) and ``scanner``: the scanner
        keys present, in mm (``num_rings``, ``detectors_per_ring``, ``ring_spacing_mm``,
        ``inner_radius_mm``, ``doi_mm``, ``bin_size_mm``, ``view_offset_deg``, ``name``).

    Raises:
        ImageFileError: missing header or key, or inconsistent per-segment lists.
    """
    p = Path(path)
    h = read_interfile_header(p)
    ndim = _number(h, "number of dimensions", p, int)
    labels = [h.get(f"matrix axis label [{k}]", "").lower() for k in range(1, ndim + 1)]

    def size_of(label: str) -> str:
        for k, name in enumerate(labels, start=1):
            if name == label:
                return _get(h, f"matrix size [{k}]", p)
        raise ImageFileError(f"Interfile header {p}: no matrix axis labelled {label!r}")

    num_segments = int(size_of("segment"))
    axial = _int_list(size_of("axial coordinate"), "axial coordinate sizes", p)
    min_rd = _int_list(
        _get(h, "minimum ring difference per segment", p), "minimum ring difference", p
    )
    max_rd = _int_list(
        _get(h, "maximum ring difference per segment", p), "maximum ring difference", p
    )
    if not len(axial) == len(min_rd) == len(max_rd) == num_segments:
        raise ImageFileError(
            f"Interfile header {p}: {num_segments} segments but {len(axial)} axial sizes and "
            f"{len(min_rd)}/{len(max_rd)} ring differences"
        )
    tof_bins = 1
    if "timing positions" in labels:
        tof_bins = int(size_of("timing positions"))
    corrections = h.get("applied corrections", "").lower()

    def cm(key: str, factor: float = 10.0) -> float | None:
        v = h.get(key)
        return float(v) * factor if v not in (None, "") else None

    scanner = {
        "name": h.get("scanner type") or h.get("originating system"),
        "num_rings": int(float(h["number of rings"])) if h.get("number of rings") else None,
        "detectors_per_ring": (
            int(float(h["number of detectors per ring"]))
            if h.get("number of detectors per ring")
            else None
        ),
        "ring_spacing_mm": cm("distance between rings (cm)"),
        "inner_radius_mm": cm("inner ring diameter (cm)", 5.0),
        "doi_mm": cm("average depth of interaction (cm)"),
        "bin_size_mm": cm("default bin size (cm)"),
        "view_offset_deg": cm("view offset (degrees)", 1.0),
    }
    return {
        "num_segments": num_segments,
        "num_views": int(size_of("view")),
        "num_tangential": int(size_of("tangential coordinate")),
        "axial_per_segment": axial,
        "min_ring_difference": min_rd,
        "max_ring_difference": max_rd,
        "axis_labels": labels,
        "data_file": h.get("name of data file"),
        "number_format": h.get("number format"),
        "bytes_per_pixel": int(float(h.get("number of bytes per pixel", "4") or 4)),
        "byte_order": h.get("imagedata byte order", "LITTLEENDIAN").upper(),
        "arc_corrected": "arc correction" in corrections,
        "num_tof_bins": tof_bins,
        "scanner": {k: v for k, v in scanner.items() if v is not None},
    }


def load_image(path: str | os.PathLike[str]) -> tuple[torch.Tensor, ImageGeometry]:
    """Read an image by suffix: ``.nii`` / ``.nii.gz`` (NIfTI) or ``.hv`` (STIR Interfile).

    Returns:
        ``(image, geometry)``: float32 ``(nx, ny, nz)`` in the file's units, and its grid.
    """
    name = str(path).lower()
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        from pet_dl.io.nifti import load_nifti

        return load_nifti(path)
    if name.endswith(".hv"):
        return read_interfile_image(path)
    raise ImageFileError(
        f"{path}: unsupported image format; use NIfTI (.nii, .nii.gz) or STIR Interfile (.hv)"
    )
