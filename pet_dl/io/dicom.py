"""PET Image Storage series: writer, reader, and body-weight SUV (CT series: pet_dl.io.ct).

Frames: pet_dl images are ``(nx, ny, nz)`` in the world frame, used as NIfTI RAS+
(axis k -> world axis k, mm). DICOM patient coordinates are LPS, so a point
``(x, y, z)`` RAS is ``(-x, -y, z)`` LPS. The writer stores each slice with the standard
axial orientation ``ImageOrientationPatient = [1, 0, 0, 0, 1, 0]``: the column index
runs towards patient left (-x RAS) and the row index towards posterior (-y RAS), so a
slice's pixel ``[r, c]`` is ``image[nx - 1 - c, ny - 1 - r, k]``.

Pixel data are int16 with a per-slice ``RescaleSlope`` (intercept 0), values in Bq/mL
(``Units = BQML``), decay corrected to the acquisition start (``DecayCorrection = START``,
``SeriesDate/Time`` = acquisition start, the SUV reference time).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pet_dl.errors import PetDLError

if TYPE_CHECKING:
    import torch

    from pet_dl.geometry import ImageGeometry
    from pet_dl.scan import AcquisitionMetadata

PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
_INT16_MAX = 32767
# (code value, scheme, meaning) per radionuclide, DICOM CID 4020 (SNOMED CT); others get
# an empty (Type 2) RadionuclideCodeSequence.
_RADIONUCLIDE_CODES = {
    "F-18": ("77004003", "SCT", "^18^Fluorine"),
    "C-11": ("21576001", "SCT", "^11^Carbon"),
}


class DicomError(PetDLError, ValueError):
    """A DICOM file or series is unreadable, inconsistent, or lacks a needed attribute."""


@dataclass(frozen=True)
class PetSeriesInfo:
    """What a PET series says about units, timing and the patient (for SUV).

    Attributes:
        units: ``Units`` (0054,1001), e.g. ``"BQML"``.
        decay_correction: ``DecayCorrection`` (0054,1102): ``"START"``, ``"ADMIN"``, ``"NONE"``.
        patient_weight_kg: ``PatientWeight`` in kg, or None when absent.
        injected_dose_bq: ``RadionuclideTotalDose`` in Bq, or None.
        half_life_s: ``RadionuclideHalfLife`` in s, or None.
        injection_time: radiopharmaceutical start date/time, or None.
        series_time: ``SeriesDate`` + ``SeriesTime`` (the SUV decay reference), or None.
        patient_id, patient_name, series_uid, study_uid, frame_of_reference_uid: as stored.
    """

    units: str
    decay_correction: str
    patient_weight_kg: float | None
    injected_dose_bq: float | None
    half_life_s: float | None
    injection_time: dt.datetime | None
    series_time: dt.datetime | None
    patient_id: str = ""
    patient_name: str = ""
    series_uid: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""


# ----------------------------------------------------------------------------- SUV


def suv_bw(
    activity_bqml: Any,
    patient_weight_kg: float,
    injected_dose_bq: float,
    half_life_s: float,
    injection_time: dt.datetime,
    scan_time: dt.datetime,
) -> Any:
    """Body-weight SUV of an image decay corrected to ``scan_time``.

    ``SUVbw = A * weight_g / (dose * 2 ** (-(scan_time - injection_time) / half_life))``,
    taking 1 g/mL tissue density (the usual convention; SUV is dimensionless).

    Args:
        activity_bqml: activity concentration, any shape (array or tensor), Bq/mL.
        patient_weight_kg: body weight, kg (> 0).
        injected_dose_bq: injected activity at ``injection_time``, Bq (> 0).
        half_life_s: radionuclide half-life, s (> 0).
        injection_time: time of injection (the dose's reference time).
        scan_time: the image's decay-correction reference (series / acquisition start).

    Returns:
        SUVbw with the shape and type of ``activity_bqml``.
    """
    for name, value in (
        ("patient_weight_kg", patient_weight_kg),
        ("injected_dose_bq", injected_dose_bq),
        ("half_life_s", half_life_s),
    ):
        if value is None or not math.isfinite(float(value)) or float(value) <= 0:
            raise DicomError(f"SUVbw needs a positive {name}, got {value!r}")
    elapsed = (scan_time - injection_time).total_seconds()
    if elapsed < 0:
        raise DicomError(
            f"scan time {scan_time.isoformat()} is before injection {injection_time.isoformat()}"
        )
    decayed_dose = float(injected_dose_bq) * 2.0 ** (-elapsed / float(half_life_s))
    return activity_bqml * (float(patient_weight_kg) * 1000.0 / decayed_dose)


def suv_bw_from_info(activity_bqml: Any, info: PetSeriesInfo) -> Any:
    """SUVbw of a series read by :func:`read_pet_series` (needs BQML and START decay)."""
    if info.units.upper() != "BQML":
        raise DicomError(f"SUVbw needs Units BQML, the series has {info.units!r}")
    if info.decay_correction.upper() != "START":
        raise DicomError(
            f"SUVbw here needs DecayCorrection START, the series has {info.decay_correction!r}"
        )
    if info.injection_time is None or info.series_time is None:
        raise DicomError("SUVbw needs the radiopharmaceutical start time and the series time")
    return suv_bw(
        activity_bqml,
        info.patient_weight_kg,  # type: ignore[arg-type]
        info.injected_dose_bq,  # type: ignore[arg-type]
        info.half_life_s,  # type: ignore[arg-type]
        info.injection_time,
        info.series_time,
    )


# ----------------------------------------------------------------------------- writer


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a core dependency
        raise ImportError("DICOM output needs pydicom: pip install pydicom") from exc
    return pydicom


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for ``value``."""
    for digits in range(12, 3, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise DicomError(f"cannot encode {value!r} as a DICOM decimal string")


def _parse_iso(text: str, what: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{what} {text!r} is not an ISO 8601 date-time") from exc


def _code_item(value: str, scheme: str, meaning: str) -> Any:
    pydicom = _pydicom()
    item = pydicom.Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _slice_pixels(image: np.ndarray, k: int) -> np.ndarray:
    """Slice ``k`` of a RAS ``(nx, ny, nz)`` image as DICOM ``(rows, columns)`` (LPS axial)."""
    return np.ascontiguousarray(image[::-1, ::-1, k].T)


def _quantise(slice_values: np.ndarray) -> tuple[np.ndarray, str]:
    """int16 pixels and the slope (as stored, a DS string) for one slice, intercept 0."""
    peak = float(np.max(np.abs(slice_values))) if slice_values.size else 0.0
    slope_text = _ds(peak / _INT16_MAX) if peak > 0 else "1"
    slope = float(slope_text)
    pixels = np.clip(np.rint(slice_values / slope), -_INT16_MAX, _INT16_MAX).astype(np.int16)
    return pixels, slope_text


def write_pet_series(
    out_dir: str | os.PathLike[str],
    image_bqml: torch.Tensor | np.ndarray,
    geometry: ImageGeometry,
    metadata: AcquisitionMetadata,
    *,
    series_description: str = "pet_dl reconstruction",
    reconstruction_method: str = "pet_dl unrolled",
    series_number: int = 1,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> list[Path]:
    """Write a PET Image Storage series, one file per axial slice, atomically.

    The series is written into a temporary sibling folder and renamed to ``out_dir`` at
    the end (an existing ``out_dir`` is replaced), so a failure leaves no partial series
    (and no parent folder it created). The folder gets the mode ``mkdir`` would give it
    (0755 under the usual umask 022), its files the umask's file mode (0644).

    Args:
        out_dir: folder to create (``<out_dir>/slice_0000.dcm`` ...).
        image_bqml: activity, shape ``geometry.shape`` = ``(nx, ny, nz)``, Bq/mL, finite.
        geometry: the image grid (voxel sizes and origin in mm, RAS).
        metadata: patient, tracer and timing facts (injected activity in Bq at
            ``injection_time``; the image is decay corrected to ``acquisition_start``).
        series_description, reconstruction_method, series_number: written as given.
        study_uid, frame_of_reference_uid: reuse these UIDs (new ones when None).

    Returns:
        The written file paths, in slice order (k = 0 .. nz - 1).
    """
    pydicom = _pydicom()
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    image = np.asarray(
        image_bqml.detach().cpu().numpy() if hasattr(image_bqml, "detach") else image_bqml,
        dtype=np.float64,
    )
    shape = tuple(int(s) for s in geometry.shape)
    if image.shape != shape:
        raise DicomError(f"image has shape {image.shape}, its geometry says {shape}")
    if not np.all(np.isfinite(image)):
        raise DicomError("image has NaN or Inf values; refusing to write DICOM")
    nx, ny, nz = shape
    vx, vy, vz = (float(v) for v in geometry.voxel_size_mm)
    ox, oy, oz = (float(v) for v in geometry.origin_mm)
    injection = _parse_iso(metadata.injection_time, "injection_time")
    start = _parse_iso(metadata.acquisition_start, "acquisition_start")
    if start < injection:
        raise DicomError("acquisition_start is before injection_time")
    now = dt.datetime.now()
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    half_life = float(metadata.half_life_s)
    duration = float(metadata.duration_s)
    # Decay of the activity over the frame, relative to its start (DecayFactor, C.8.9.4).
    lam = math.log(2.0) / half_life
    decay_factor = lam * duration / (1.0 - math.exp(-lam * duration)) if duration > 0 else 1.0
    nuclide = metadata.radionuclide
    code = _RADIONUCLIDE_CODES.get(nuclide)

    out = Path(out_dir)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except BaseException:
        _remove_empty(created)
        raise
    try:
        names = []
        for k in range(nz):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = PET_IMAGE_STORAGE
            sop_uid = generate_uid()
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["DERIVED", "PRIMARY"]
            ds.SOPClassUID = PET_IMAGE_STORAGE
            ds.SOPInstanceUID = sop_uid
            ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = start.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = start.strftime("%H%M%S.%f")
            ds.ContentDate = now.strftime("%Y%m%d")
            ds.ContentTime = now.strftime("%H%M%S.%f")
            ds.AccessionNumber = ""
            ds.Modality = "PT"
            ds.Manufacturer = "pet_dl"
            ds.ManufacturerModelName = "pet_dl"
            ds.SoftwareVersions = _package_version()
            ds.ReferringPhysicianName = ""
            ds.StudyDescription = "pet_dl"
            ds.SeriesDescription = series_description[:64]
            ds.PatientName = metadata.patient_name or ""
            ds.PatientID = metadata.patient_id or ""
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            if metadata.patient_weight_kg is not None:
                ds.PatientWeight = _ds(float(metadata.patient_weight_kg))
            ds.SliceThickness = _ds(vz)
            ds.ActualFrameDuration = str(round(duration * 1000.0))
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = "1"
            ds.Laterality = ""
            ds.SeriesNumber = str(series_number)
            ds.AcquisitionNumber = "1"
            ds.InstanceNumber = str(k + 1)
            # Pixel [0, 0] is voxel (nx-1, ny-1, k): RAS -> LPS flips x and y.
            ds.ImagePositionPatient = [
                _ds(-(ox + (nx - 1) * vx)),
                _ds(-(oy + (ny - 1) * vy)),
                _ds(oz + k * vz),
            ]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.FrameOfReferenceUID = for_uid
            ds.PositionReferenceIndicator = ""
            ds.SliceLocation = _ds(oz + k * vz)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = ny
            ds.Columns = nx
            ds.PixelSpacing = [_ds(vy), _ds(vx)]  # row spacing (along y), column spacing (x)
            ds.CorrectedImage = ["NORM", "ATTN", "SCAT", "RAN", "DECY"]
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            pixels, slope = _quantise(_slice_pixels(image, k))
            ds.RescaleIntercept = "0"
            ds.RescaleSlope = slope
            ds.LossyImageCompression = "00"
            rp = pydicom.Dataset()
            rp.Radiopharmaceutical = metadata.tracer[:64]
            rp.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S.%f")
            rp.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S.%f")
            rp.RadionuclideTotalDose = _ds(float(metadata.injected_activity_bq))
            rp.RadionuclideHalfLife = _ds(half_life)
            rp.RadionuclideCodeSequence = [_code_item(*code)] if code else []
            ds.RadiopharmaceuticalInformationSequence = [rp]
            ds.NumberOfSlices = nz
            ds.PatientOrientationCodeSequence = [_code_item("102538003", "SCT", "recumbent")]
            ds.PatientOrientationCodeSequence[0].PatientOrientationModifierCodeSequence = [
                _code_item("40199007", "SCT", "supine")
            ]
            ds.PatientGantryRelationshipCodeSequence = [_code_item("102540008", "SCT", "headfirst")]
            ds.SeriesType = ["STATIC", "IMAGE"]
            ds.Units = "BQML"
            ds.CountsSource = "EMISSION"
            ds.CollimatorType = "NONE"
            ds.RandomsCorrectionMethod = "DLYD"
            ds.AttenuationCorrectionMethod = "measured"
            ds.DecayCorrection = "START"
            ds.ReconstructionMethod = reconstruction_method[:64]
            ds.ScatterCorrectionMethod = "model-based"
            ds.FrameReferenceTime = _ds(_frame_reference_time_ms(duration, half_life))
            ds.DecayFactor = _ds(decay_factor)
            ds.ImageIndex = k + 1
            ds.PixelData = pixels.tobytes()
            name = f"slice_{k:04d}.dcm"
            ds.save_as(tmp / name, enforce_file_format=True)
            names.append(name)
        os.chmod(tmp, _folder_mode())  # mkdtemp's 0700 -> what mkdir gives (0755)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    return [out / name for name in names]


def _folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder: 0777 less the process umask (0755 for 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o777 & ~mask


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove the folders this writer created (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _frame_reference_time_ms(duration_s: float, half_life_s: float) -> float:
    """Time from the frame start at which the mean activity equals the activity, ms."""
    if duration_s <= 0:
        return 0.0
    lam = math.log(2.0) / half_life_s
    mean = (1.0 - math.exp(-lam * duration_s)) / (lam * duration_s)
    return -math.log(mean) / lam * 1000.0


def _package_version() -> str:
    from pet_dl import __version__

    return f"pet_dl {__version__}"


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing an existing ``out``."""
    if out.exists() and not out.is_dir():
        raise DicomError(f"{out} exists and is not a folder")
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


# ----------------------------------------------------------------------------- reader


def _list_files(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_file():
            return [path]
        if not path.is_dir():
            raise DicomError(f"{path} is neither a DICOM file nor a folder")
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        files = [Path(p) for p in source]
    if not files:
        raise DicomError(f"no DICOM files in {source}")
    return files


def _read_slices(files: Sequence[Path], sop_class: str, what: str) -> list[Any]:
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            raise DicomError(f"{f} is not a readable DICOM file ({exc})") from exc
        if ds.get("SOPClassUID") != sop_class:
            raise DicomError(f"{f} is not a {what} image (SOP class {ds.get('SOPClassUID')})")
        slices.append(ds)
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in slices}
    if len(series) > 1:
        raise DicomError(f"the files belong to {len(series)} different series; pass one series")
    return slices


def _axis_of(vector: np.ndarray, what: str) -> tuple[int, float]:
    axis = int(np.argmax(np.abs(vector)))
    if not np.isclose(abs(vector[axis]), 1.0, atol=1e-4) or np.sum(np.abs(vector) > 1e-4) != 1:
        raise DicomError(f"{what} {vector.tolist()} is oblique; only axis-aligned is supported")
    return axis, float(np.sign(vector[axis]))


def _stack(slices: list[Any]) -> tuple[np.ndarray, ImageGeometry]:
    """Rescaled pixel values as a RAS ``(nx, ny, nz)`` array and its grid."""
    from pet_dl.geometry import ImageGeometry

    first = slices[0]
    try:
        iop = np.array([float(v) for v in first.ImageOrientationPatient])
        row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    except (AttributeError, TypeError, ValueError) as exc:
        raise DicomError(f"series lacks a valid image plane ({exc})") from exc
    col_dir, row_dir = iop[:3], iop[3:]  # along a row (column index), along a column
    normal = np.cross(col_dir, row_dir)
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    if len(slices) > 1:
        steps = np.diff(positions @ normal)
        slice_step = float(np.mean(steps))
        if slice_step <= 0 or not np.allclose(steps, slice_step, rtol=1e-3, atol=1e-3):
            raise DicomError("slice positions are not evenly spaced (missing or duplicate slices)")
        direction = (positions[-1] - positions[0]) / (slice_step * (len(slices) - 1))
    else:
        slice_step = float(first.get("SliceThickness") or 1.0)
        direction = normal
    for ds in slices:
        if [float(v) for v in ds.ImageOrientationPatient] != iop.tolist():
            raise DicomError("slices have different orientations")
    try:
        volume = np.stack(
            [
                ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1)
                + float(ds.get("RescaleIntercept", 0) or 0)
                for ds in slices
            ],
            axis=-1,
        )  # (rows, columns, slices)
    except (AttributeError, ValueError, TypeError) as exc:
        raise DicomError(f"unreadable pixel data ({exc})") from exc
    if volume.shape[:2] != (int(first.Rows), int(first.Columns)):
        raise DicomError("slices have different sizes")
    # Array axes (row index, column index, slice index): LPS steps -> RAS steps.
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    steps_ras = [
        row_dir * lps_to_ras * row_spacing,
        col_dir * lps_to_ras * col_spacing,
        direction * lps_to_ras * slice_step,
    ]
    origin = positions[0] * lps_to_ras
    perm = [0, 0, 0]
    spacing = [0.0, 0.0, 0.0]
    for array_axis, step in enumerate(steps_ras):
        world_axis, sign = _axis_of(step / np.linalg.norm(step), "slice direction")
        perm[world_axis] = array_axis
        if sign < 0:  # flip so that the index runs along +world
            volume = np.flip(volume, axis=array_axis)
            origin = origin + step * (volume.shape[array_axis] - 1)
        spacing[world_axis] = float(np.linalg.norm(step))
    if sorted(perm) != [0, 1, 2]:
        raise DicomError("slice axes are not independent")
    volume = np.ascontiguousarray(np.transpose(volume, perm))
    geometry = ImageGeometry(
        shape=tuple(int(s) for s in volume.shape),
        voxel_size_mm=tuple(spacing),
        origin_mm=tuple(float(v) for v in origin),
    )
    return volume, geometry


def _dicom_datetime(date: Any, time: Any) -> dt.datetime | None:
    if not date or not time:
        return None
    time_text = str(time).strip()
    whole, _, frac = time_text.partition(".")
    whole = whole.ljust(6, "0")
    try:
        value = dt.datetime.strptime(str(date).strip() + whole[:6], "%Y%m%d%H%M%S")
    except ValueError as exc:
        raise DicomError(f"bad DICOM date/time {date!r} {time!r}") from exc
    return value + dt.timedelta(microseconds=int((frac + "000000")[:6]) if frac else 0)


def _optional_float(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def _series_info(ds: Any) -> PetSeriesInfo:
    rp = ds.get("RadiopharmaceuticalInformationSequence")
    item = rp[0] if rp else None
    injection = None
    if item is not None:
        start_dt = str(item.get("RadiopharmaceuticalStartDateTime", "") or "")
        if start_dt:
            injection = _dicom_datetime(start_dt[:8], start_dt[8:])
        else:
            injection = _dicom_datetime(
                ds.get("SeriesDate") or ds.get("StudyDate"),
                item.get("RadiopharmaceuticalStartTime"),
            )
    return PetSeriesInfo(
        units=str(ds.get("Units", "")),
        decay_correction=str(ds.get("DecayCorrection", "")),
        patient_weight_kg=_optional_float(ds.get("PatientWeight")),
        injected_dose_bq=_optional_float(item.get("RadionuclideTotalDose")) if item else None,
        half_life_s=_optional_float(item.get("RadionuclideHalfLife")) if item else None,
        injection_time=injection,
        series_time=_dicom_datetime(ds.get("SeriesDate"), ds.get("SeriesTime")),
        patient_id=str(ds.get("PatientID", "")),
        patient_name=str(ds.get("PatientName", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
    )


def read_pet_series(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> tuple[np.ndarray, ImageGeometry, PetSeriesInfo]:
    """Read one PET Image Storage series (a folder, one file, or a list of files).

    Returns:
        ``(activity, geometry, info)``: ``activity`` is a float64 ``(nx, ny, nz)`` RAS
        array in the series' units (Bq/mL for ``Units = BQML``; rescale slope and
        intercept applied), ``geometry`` its grid in mm, ``info`` the SUV facts.
    """
    slices = _read_slices(_list_files(source), PET_IMAGE_STORAGE, "PET")
    volume, geometry = _stack(slices)
    return volume, geometry, _series_info(slices[0])
