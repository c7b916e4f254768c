"""STIR Interfile projection data (``.hs`` header + ``.s`` raw data), read and written.

Layout mapping (STIR -> pet_dl, index for index, no resampling):

- STIR segments are ring-difference ranges; the header lists them in its own order (often
  ``0, -1, +1, ...`` in vendor files) and the data follow that order. pet_dl's planes are
  the segments in **ascending ring difference** (``-S .. 0 .. +S``), so segments are
  re-ordered on read and written ascending. Within a segment STIR's axial positions
  (ascending z) are pet_dl's planes (ascending ring sum).
- STIR view ``v`` (``phi = v * pi / num_views``, ``s = x cos(phi) + y sin(phi)``) is pet_dl
  view ``v``; STIR tangential position ``t`` (``-n/2 .. n/2 - 1``) is radial index
  ``t + n // 2``. Both data orders STIR writes are read: ``segment, view, axial coordinate,
  tangential coordinate`` (STIR's default, also written here) and ``segment, axial
  coordinate, view, tangential coordinate`` (sinogram by sinogram, the Siemens order).
- The scanner is taken from the header: a pet_dl preset when the header's name and
  parameters match one (``Siemens mMR`` -> ``mmr``; fewer rings: ``preset.with_rings``),
  otherwise a scanner built from the header's keys (radius, DOI, ring spacing, detectors
  per ring, crystals per block). The span follows from segment 0's ring-difference range
  and must reproduce the header's segments and axial sizes exactly.
- Files written by pet_dl carry one comment line ``; pet_dl := {json}`` with the exact
  pet_dl sinogram and image geometry and, for an exported scan, the calibration, PSF,
  metadata and the names of the multiplicative and additive sinograms written beside it.
  STIR ignores comments; :func:`read_stir_sinogram` uses the line only when the header's
  layout agrees with it, so ``export`` then ``import`` gives back the same scan.

Not supported (one-line error): TOF projection data, a view offset other than 0, segment
layouts that no (span, max ring difference) of :class:`~pet_dl.geometry.SinogramGeometry`
produces.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pet_dl.geometry import ImageGeometry, ScannerGeometry, SinogramGeometry, get_scanner
from pet_dl.geometry.presets import SCANNER_PRESETS
from pet_dl.io import ImageFileError
from pet_dl.io.atomic import atomic_path, atomic_write_text
from pet_dl.io.interfile import _dtype, read_interfile_header, read_sinogram_header
from pet_dl.scan import AcquisitionMetadata, Scan

#: Scanner type names STIR uses for pet_dl presets (lower case). STIR writes the first.
STIR_SCANNER_NAMES: dict[str, tuple[str, ...]] = {"mmr": ("siemens mmr", "mmr")}

#: STIR's own values for presets STIR knows (from the shared mMR templates).
STIR_SCANNER_KEYS: dict[str, dict[str, Any]] = {
    "mmr": {
        "stir_name": "Siemens mMR",
        "bin_cm": 0.208626,
        "lines": {
            "Number of blocks per bucket in transaxial direction": 1,
            "Number of blocks per bucket in axial direction": 2,
            "Number of detector layers": 1,
            "Number of crystals per singles unit in axial direction": 16,
            "Number of crystals per singles unit in transaxial direction": 9,
        },
    }
}

_COMMENT_KEY = "; pet_dl :="
_TOLERANCE_MM = 0.05


# ---------------------------------------------------------------------------- scanner
def _preset_for(info: dict[str, Any]) -> ScannerGeometry | None:
    """The preset (possibly with fewer rings) whose name and parameters match the header."""
    sc = info["scanner"]
    name = (sc.get("name") or "").strip().lower().removeprefix("pet_dl ")
    for preset in SCANNER_PRESETS:
        names = STIR_SCANNER_NAMES.get(preset, ()) + (preset,)
        if name not in names:
            continue
        scanner = get_scanner(preset)
        rings = sc.get("num_rings", scanner.num_rings)
        checks = [
            (sc.get("detectors_per_ring"), scanner.crystals_per_ring),
            (sc.get("inner_radius_mm"), scanner.radius_mm),
            (sc.get("ring_spacing_mm"), scanner.ring_spacing_mm),
            (sc.get("doi_mm"), scanner.doi_mm),
        ]
        if rings > scanner.num_rings or any(
            got is not None and abs(got - want) > _TOLERANCE_MM for got, want in checks
        ):
            continue
        return scanner if rings == scanner.num_rings else scanner.with_rings(rings)
    return None


def _scanner_from_header(
    info: dict[str, Any], header: dict[str, str], path: Path
) -> ScannerGeometry:
    preset = _preset_for(info)
    if preset is not None:
        return preset
    sc = info["scanner"]
    need = {
        "num_rings": "Number of rings",
        "detectors_per_ring": "Number of detectors per ring",
        "inner_radius_mm": "Inner ring diameter (cm)",
        "ring_spacing_mm": "Distance between rings (cm)",
    }
    for key, stir_key in need.items():
        if sc.get(key) is None:
            raise ImageFileError(
                f"STIR sinogram {path}: scanner is not a pet_dl preset and '{stir_key}' is missing"
            )
    n_det = int(sc["detectors_per_ring"])
    radius = float(sc["inner_radius_mm"])
    doi = max(float(sc.get("doi_mm", 0.0)), 0.0)
    per_block = int(
        float(header.get("number of crystals per block in transaxial direction", 1) or 1)
    )
    per_block_axial = int(
        float(header.get("number of crystals per block in axial direction", 1) or 1)
    )
    if per_block < 1 or n_det % per_block:
        per_block = 1
    spacing = float(sc["ring_spacing_mm"])
    return ScannerGeometry(
        name=(sc.get("name") or "stir").strip() or "stir",
        num_rings=int(sc["num_rings"]),
        crystals_per_ring=n_det,
        radius_mm=radius,
        ring_spacing_mm=spacing,
        # STIR headers do not give the crystal size: pitch x ring spacing x (2 x DOI or 20 mm)
        crystal_size_mm=(2 * math.pi * radius / n_det, spacing, 2 * doi if doi > 0 else 20.0),
        doi_mm=doi,
        blocks_per_ring=n_det // per_block,
        crystals_per_block=(per_block, max(per_block_axial, 1)),
        default_num_radial=info["num_tangential"],
    )


def _sinogram_from_header(
    info: dict[str, Any], header: dict[str, str], path: Path
) -> tuple[SinogramGeometry, list[int]]:
    """The pet_dl layout of a STIR header and the ascending order of its segments."""
    if info["num_tof_bins"] > 1:
        raise ImageFileError(f"STIR sinogram {path}: TOF projection data are not supported")
    offset = info["scanner"].get("view_offset_deg", 0.0)
    if abs(offset) > 1e-6:
        raise ImageFileError(f"STIR sinogram {path}: view offset {offset} degrees; pet_dl needs 0")
    scanner = _scanner_from_header(info, header, path)
    segs = list(
        zip(info["min_ring_difference"], info["max_ring_difference"], info["axial_per_segment"])
    )
    order = sorted(range(len(segs)), key=lambda i: segs[i][0])
    ascending = [segs[i] for i in order]
    zero = [s for s in ascending if s[0] <= 0 <= s[1]]
    if len(zero) != 1:
        raise ImageFileError(f"STIR sinogram {path}: no segment holds ring difference 0")
    span = zero[0][1] - zero[0][0] + 1
    max_rd = max(max(abs(s[0]), abs(s[1])) for s in ascending)
    half_views = scanner.crystals_per_ring // 2
    if half_views % info["num_views"]:
        raise ImageFileError(
            f"STIR sinogram {path}: {info['num_views']} views do not divide the "
            f"{half_views} views of {scanner.crystals_per_ring} detectors per ring"
        )
    kwargs: dict[str, Any] = {}
    if info["arc_corrected"]:
        raw = header.get("effective central bin size (cm)") or header.get("default bin size (cm)")
        kwargs = {"arc_corrected": True, "radial_bin_mm": float(raw or "nan") * 10.0}
    try:
        geometry = SinogramGeometry(
            scanner,
            num_radial=info["num_tangential"],
            span=span,
            max_ring_difference=max_rd,
            view_mashing=half_views // info["num_views"],
            **kwargs,
        )
    except (ValueError, TypeError) as exc:
        raise ImageFileError(f"STIR sinogram {path}: unsupported layout: {exc}") from None
    if list(geometry.segments) != [tuple(s) for s in ascending]:
        raise ImageFileError(
            f"STIR sinogram {path}: segments {ascending} (min rd, max rd, planes) are not those"
            f" of span {span} up to ring difference {max_rd} ({list(geometry.segments)})"
        )
    return geometry, order


def _pet_dl_comment(path: Path) -> dict[str, Any] | None:
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith(_COMMENT_KEY):
            try:
                return json.loads(line[len(_COMMENT_KEY) :])
            except json.JSONDecodeError:
                return None
    return None


# ---------------------------------------------------------------------------- reading
def read_stir_geometry(path: str | os.PathLike[str]) -> SinogramGeometry:
    """The pet_dl sinogram layout of a STIR ``.hs`` header (the data file is not needed).

    Raises:
        ImageFileError: missing keys or a layout pet_dl cannot represent.
    """
    p = Path(path)
    geometry, _ = _sinogram_from_header(read_sinogram_header(p), read_interfile_header(p), p)
    return geometry


def read_stir_projdata(
    path: str | os.PathLike[str],
) -> tuple[torch.Tensor, SinogramGeometry, dict[str, Any]]:
    """Read STIR projection data into pet_dl's sinogram layout.

    Args:
        path: the ``.hs`` header; its data file is found beside it.

    Returns:
        ``(sinogram, geometry, extra)``: float32 tensor ``geometry.shape`` =
        ``(num_planes, num_views, num_radial)`` in the file's units (counts for prompts),
        planes in ascending ring difference; the layout; and the ``; pet_dl`` comment of
        files pet_dl wrote (empty dict otherwise), plus ``duration_s`` when the header
        gives ``image duration (sec)``.

    Raises:
        ImageFileError: missing keys, an unsupported layout, a missing or truncated data file.
    """
    p = Path(path)
    info = read_sinogram_header(p)
    header = read_interfile_header(p)
    geometry, order = _sinogram_from_header(info, header, p)
    extra = _pet_dl_comment(p) or {}
    stored = extra.get("sinogram")
    if stored is not None:
        try:
            candidate = SinogramGeometry.from_dict(stored)
        except (ValueError, TypeError, KeyError):
            candidate = None
        if (
            candidate is not None
            and candidate.segments == geometry.segments
            and (candidate.shape == geometry.shape)
        ):
            geometry = candidate
        else:
            extra = {}
    dtype = _dtype(header, p)
    if not info["data_file"]:
        raise ImageFileError(f"STIR sinogram {p}: missing 'name of data file'")
    data_file = p.parent / info["data_file"]
    if not data_file.is_file():
        raise ImageFileError(f"STIR sinogram {p}: data file {data_file} not found")
    offset = int(
        float(
            header.get("data offset in bytes [1]", header.get("data offset in bytes[1]", "0")) or 0
        )
    )
    views, radial = info["num_views"], info["num_tangential"]
    count = sum(info["axial_per_segment"]) * views * radial
    needed = offset + count * dtype.itemsize
    if data_file.stat().st_size < needed:
        raise ImageFileError(
            f"STIR sinogram {p}: data file {data_file.name} is truncated "
            f"({data_file.stat().st_size} bytes, need {needed})"
        )
    raw = np.fromfile(data_file, dtype=dtype, count=count, offset=offset).astype(np.float32)
    labels = info["axis_labels"]
    view_major = labels[2] == "view"  # [3] view, [2] axial: STIR's Segment_View_AxialPos_TangPos
    if not view_major and labels[1:3] != ["view", "axial coordinate"]:
        raise ImageFileError(f"STIR sinogram {p}: unsupported axis order {labels}")
    blocks: list[np.ndarray] = []
    start = 0
    for planes in info["axial_per_segment"]:
        n = planes * views * radial
        chunk = raw[start : start + n]
        start += n
        blocks.append(
            chunk.reshape(views, planes, radial).transpose(1, 0, 2)
            if view_major
            else chunk.reshape(planes, views, radial)
        )
    data = np.concatenate([blocks[i] for i in order], axis=0)
    slope = float(header.get("data rescale slope", "1") or 1)
    if slope != 1.0:
        data = data * np.float32(slope)
    duration = header.get("image duration (sec)[1]") or header.get("image duration (sec) [1]")
    if duration:
        extra.setdefault("duration_s", float(duration))
    return torch.from_numpy(np.ascontiguousarray(data)), geometry, extra


def default_image(sinogram: SinogramGeometry) -> ImageGeometry:
    """STIR's default reconstruction grid for a sinogram (zoom 1), centred on the scanner.

    Transaxial voxels of the central radial bin size, as many as radial bins (made odd);
    axially half the ring spacing, ``2 * num_rings - 1`` planes (one plane for one ring).
    """
    positions = sinogram.radial_positions_mm()
    centre = sinogram.num_radial // 2
    if sinogram.num_radial > 1:
        bin_mm = (
            float(positions[min(centre + 1, sinogram.num_radial - 1)] - positions[centre - 1]) / 2
        )
    else:
        bin_mm = 2.0
    n_xy = sinogram.num_radial | 1
    rings = sinogram.scanner.num_rings
    spacing = sinogram.scanner.ring_spacing_mm
    z = (1, spacing) if rings == 1 else (2 * rings - 1, spacing / 2.0)
    return ImageGeometry.centered((n_xy, n_xy, z[0]), (abs(bin_mm), abs(bin_mm), z[1]))


def read_stir_sinogram(path: str | os.PathLike[str]) -> Scan:
    """Read a STIR Interfile sinogram (``.hs`` + ``.s``) as a :class:`~pet_dl.scan.Scan`.

    The file's data become ``prompts`` (counts, float32 ``sinogram.shape``). A file that
    ``python -m pet_dl export`` wrote also brings back its multiplicative and additive
    sinograms, calibration, PSF, image grid and metadata, so the scan equals the exported
    one. Any other STIR file gives multiplicative factors 1 and additive 0 (no
    corrections), STIR's default image grid (:func:`default_image`), the duration from
    ``image duration (sec)`` (1 s when absent) and the nominal calibration of the
    scanner's published sensitivity (``metadata.extra['calibration']`` says so;
    ``"relative units"`` and calibration 1 for a scanner without one).

    Raises:
        ImageFileError: see :func:`read_stir_projdata`; also negative or non-finite data.
    """
    p = Path(path)
    prompts, geometry, extra = read_stir_projdata(p)
    if not torch.isfinite(prompts).all() or (prompts < 0).any():
        raise ImageFileError(f"STIR sinogram {p}: data have negative or non-finite values")
    if "multiplicative" in extra:
        return _exported_scan(p, prompts, geometry, extra)
    duration = float(extra.get("duration_s", 1.0))
    note = {"source": f"STIR sinogram {p.name}"}
    if "duration_s" not in extra:
        note["duration"] = "not in the header: 1 s assumed"
    if geometry.scanner.sensitivity_cps_per_kbq is not None:
        from pet_dl.simulate import calibration_per_second  # lazily: a pure geometry formula

        calibration = calibration_per_second(geometry) * duration
        note["calibration"] = "nominal: the scanner's published sensitivity, no normalisation"
    else:
        calibration = 1.0
        note["calibration"] = "relative units: the scanner has no published sensitivity"
    return Scan(
        sinogram=geometry,
        image=default_image(geometry),
        prompts=prompts,
        multiplicative=torch.ones_like(prompts),
        additive=torch.zeros_like(prompts),
        calibration=calibration,
        psf_fwhm_mm=0.0,
        metadata=AcquisitionMetadata(duration_s=duration, extra=note),
    )


def _exported_scan(
    path: Path, prompts: torch.Tensor, geometry: SinogramGeometry, extra: dict[str, Any]
) -> Scan:
    parts = {}
    for key in ("multiplicative", "additive"):
        data, other, _ = read_stir_projdata(path.parent / extra[key])
        if other != geometry:
            raise ImageFileError(f"STIR sinogram {path}: {extra[key]} has another layout")
        parts[key] = data
    meta = dict(extra.get("metadata", {}))
    return Scan(
        sinogram=geometry,
        image=ImageGeometry.from_dict(extra["image"]),
        prompts=prompts,
        multiplicative=parts["multiplicative"],
        additive=parts["additive"],
        calibration=float(extra["calibration"]),
        psf_fwhm_mm=float(extra.get("psf_fwhm_mm", 0.0)),
        metadata=AcquisitionMetadata(**meta),
    )


# ---------------------------------------------------------------------------- writing
def _scanner_lines(scanner: ScannerGeometry, sinogram: SinogramGeometry) -> list[str]:
    known = STIR_SCANNER_KEYS.get(scanner.name)
    full = known is not None and get_scanner(scanner.name) == scanner
    # STIR checks a scanner it knows against its own table: only the full preset is named so
    if full:
        name = known["stir_name"]
    else:
        name = f"pet_dl {scanner.name}" if scanner.name in SCANNER_PRESETS else scanner.name
    bin_cm = (
        sinogram.radial_bin_mm / 10
        if sinogram.arc_corrected
        else (known or {}).get(
            "bin_cm", scanner.detector_radius_mm * math.pi / scanner.crystals_per_ring / 10
        )
    )
    extra = [f"{key} := {value}" for key, value in (known or {}).get("lines", {}).items()]
    return [
        "Scanner parameters:=",
        f"Scanner type := {name}",
        f"Number of rings := {scanner.num_rings}",
        f"Number of detectors per ring := {scanner.crystals_per_ring}",
        f"Inner ring diameter (cm) := {2 * scanner.radius_mm / 10:.6g}",
        f"Average depth of interaction (cm) := {scanner.doi_mm / 10:.6g}",
        f"Distance between rings (cm) := {scanner.ring_spacing_mm / 10:.8g}",
        f"Default bin size (cm) := {bin_cm:.6g}",
        "View offset (degrees) := 0",
        f"Maximum number of non-arc-corrected bins := {scanner.default_num_radial or sinogram.num_radial}",
        f"Default number of arc-corrected bins := {scanner.default_num_radial or sinogram.num_radial}",
        f"Number of crystals per block in axial direction := {scanner.crystals_per_block[1]}",
        f"Number of crystals per block in transaxial direction := {scanner.crystals_per_block[0]}",
        *extra,
        "end scanner parameters:=",
    ]


def stir_header_text(
    geometry: SinogramGeometry,
    data_file: str,
    duration_s: float | None = None,
    pet_dl: dict[str, Any] | None = None,
) -> str:
    """The text of a STIR ``.hs`` header for float32 little-endian data of ``geometry``
    in STIR's default order (segments ascending, then view, axial position, tangential)."""
    segs = geometry.segments
    lines = [
        "!INTERFILE :=",
        "!imaging modality := PT",
        f"name of data file := {data_file}",
        "originating system := pet_dl",
        "!version of keys := STIR4.0",
        "!GENERAL DATA :=",
        "!GENERAL IMAGE DATA :=",
        "!type of data := PET",
        "imagedata byte order := LITTLEENDIAN",
        "!PET STUDY (General) :=",
        "!PET data type := Emission",
        "applied corrections := {arc correction}"
        if geometry.arc_corrected
        else "applied corrections := {None}",
        "!number format := float",
        "!number of bytes per pixel := 4",
        "number of dimensions := 4",
        "matrix axis label [4] := segment",
        f"!matrix size [4] := {len(segs)}",
        "matrix axis label [3] := view",
        f"!matrix size [3] := {geometry.num_views}",
        "matrix axis label [2] := axial coordinate",
        "!matrix size [2] := { " + ",".join(str(s[2]) for s in segs) + "}",
        "matrix axis label [1] := tangential coordinate",
        f"!matrix size [1] := {geometry.num_radial}",
        "minimum ring difference per segment := { " + ",".join(str(s[0]) for s in segs) + "}",
        "maximum ring difference per segment := { " + ",".join(str(s[1]) for s in segs) + "}",
        *_scanner_lines(geometry.scanner, geometry),
    ]
    if geometry.arc_corrected:
        lines.append(f"effective central bin size (cm) := {geometry.radial_bin_mm / 10:.8g}")
    lines.append("number of time frames := 1")
    if duration_s is not None:
        lines += [
            "image relative start time (sec)[1] := 0",
            f"image duration (sec)[1] := {duration_s:.9g}",
        ]
    if pet_dl is not None:
        lines.append(_COMMENT_KEY + " " + json.dumps(pet_dl, separators=(",", ":")))
    lines.append("!END OF INTERFILE :=")
    return "\n".join(lines) + "\n"


def write_stir_sinogram(
    scan_or_tensor: Scan | torch.Tensor,
    geometry: SinogramGeometry | None,
    path: str | os.PathLike[str],
    *,
    duration_s: float | None = None,
    pet_dl: dict[str, Any] | None = None,
) -> Path:
    """Write a sinogram as STIR Interfile: ``path`` (``.hs``) and its data beside it (``.s``).

    Args:
        scan_or_tensor: a :class:`~pet_dl.scan.Scan` (its prompts are written) or a tensor
            ``geometry.shape`` = ``(num_planes, num_views, num_radial)`` in any units.
        geometry: the sinogram layout (None: the scan's).
        path: the header file; must end in ``.hs``. The data file is ``path`` with ``.s``.
        duration_s: frame duration written as ``image duration (sec)`` (default: the
            scan's duration; none for a bare tensor).
        pet_dl: extra entries for the ``; pet_dl`` comment line (used by ``export``).

    Returns:
        The header path. Both files are written atomically (data first).

    Raises:
        ValueError: a TOF geometry, a shape that does not match, a suffix other than ``.hs``.
    """
    if isinstance(scan_or_tensor, Scan):
        geometry = geometry or scan_or_tensor.sinogram
        tensor = scan_or_tensor.prompts
        if duration_s is None:
            duration_s = scan_or_tensor.metadata.duration_s
    else:
        tensor = scan_or_tensor
    if geometry is None:
        raise ValueError("write_stir_sinogram: give the sinogram geometry for a bare tensor")
    if geometry.tof:
        raise ValueError(
            "STIR export of TOF sinograms is not supported (pet_dl writes non-TOF only)"
        )
    if tuple(tensor.shape) != tuple(geometry.shape):
        raise ValueError(
            f"sinogram has shape {tuple(tensor.shape)}, the geometry needs {geometry.shape}"
        )
    header = Path(path)
    if header.suffix != ".hs":
        raise ValueError(f"STIR sinogram header must end in .hs, got {header.name}")
    data_path = header.with_suffix(".s")
    array = tensor.detach().to("cpu", torch.float32).numpy()
    blocks, start = [], 0
    for _, _, planes in geometry.segments:  # (planes, views, radial) -> (views, planes, radial)
        blocks.append(array[start : start + planes].transpose(1, 0, 2).astype("<f4").ravel())
        start += planes
    with atomic_path(data_path) as tmp:
        np.concatenate(blocks).tofile(tmp)
    comment = {"sinogram": geometry.to_dict(), **(pet_dl or {})}
    atomic_write_text(header, stir_header_text(geometry, data_path.name, duration_s, comment))
    return header


# ---------------------------------------------------------------------------- export
EXPORT_FILES: tuple[str, ...] = ("prompts", "multiplicative", "additive")


def export_scan_interfile(scan: Scan, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write a scan as three STIR sinograms in ``out_dir``: ``prompts``, ``multiplicative``
    and ``additive`` (``.hs`` + ``.s`` each).

    ``prompts.hs`` carries the ``; pet_dl`` comment with the image grid, calibration,
    PSF and metadata, so :func:`read_stir_sinogram` on it gives back an equal scan. The
    files appear together: they are written to a temporary folder inside ``out_dir``
    and moved in at the end (existing files of the same names are replaced).

    Args:
        scan: a non-TOF scan.
        out_dir: an existing folder, or a new one whose parent exists.

    Returns:
        The six paths written.

    Raises:
        ValueError: a TOF scan; FileNotFoundError: the parent folder does not exist.
    """
    import dataclasses
    import secrets
    import shutil

    out = Path(out_dir)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output folder {out.parent} does not exist")
    if scan.sinogram.tof:
        raise ValueError(
            "STIR export of TOF sinograms is not supported (pet_dl writes non-TOF only)"
        )
    out.mkdir(exist_ok=True)
    tmp = out / f".export-tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        info = {
            "image": scan.image.to_dict(),
            "calibration": float(scan.calibration),
            "psf_fwhm_mm": float(scan.psf_fwhm_mm),
            "metadata": dataclasses.asdict(scan.metadata),
            "multiplicative": "multiplicative.hs",
            "additive": "additive.hs",
        }
        duration = scan.metadata.duration_s
        write_stir_sinogram(
            scan.prompts, scan.sinogram, tmp / "prompts.hs", duration_s=duration, pet_dl=info
        )
        for name in EXPORT_FILES[1:]:
            write_stir_sinogram(
                getattr(scan, name), scan.sinogram, tmp / f"{name}.hs", duration_s=duration
            )
        written = []
        for name in EXPORT_FILES:
            for suffix in (".s", ".hs"):
                os.replace(tmp / f"{name}{suffix}", out / f"{name}{suffix}")
                written.append(out / f"{name}{suffix}")
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
