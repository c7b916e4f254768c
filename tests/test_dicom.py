"""PET DICOM series: real ACRIN files, write/read round trip, LPS frame, SUVbw, dciodvfy."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from pet_dl.geometry import ImageGeometry
from pet_dl.io.dicom import (
    DicomError,
    read_pet_series,
    suv_bw,
    suv_bw_from_info,
    write_pet_series,
)
from pet_dl.scan import AcquisitionMetadata

ACRIN = "acrin_pet_dicom"


def _metadata(**kw: object) -> AcquisitionMetadata:
    base = dict(
        duration_s=600.0,
        injected_activity_bq=250e6,
        patient_weight_kg=72.5,
        patient_id="P001",
        patient_name="Test^Patient",
        injection_time="2026-03-02T09:15:30",
        acquisition_start="2026-03-02T10:20:00.500000",
    )
    base.update(kw)
    return AcquisitionMetadata(**base)  # type: ignore[arg-type]


def _image(generator: torch.Generator, shape: tuple[int, int, int]) -> torch.Tensor:
    """A positive image with slice-varying peaks (exercises per-slice RescaleSlope)."""
    x = torch.rand(shape, generator=generator, dtype=torch.float64) * 5000.0
    return x * torch.linspace(0.2, 3.0, shape[2], dtype=torch.float64)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ACRIN-FLT-Breast_PT_wholebody_slice60.dcm", 7.19),
        ("ACRIN-FLT-Breast_PT_dynamic_slice3890.dcm", 6.16),
    ],
)
def test_acrin_suvbw_max(test_data: Path, name: str, expected: float) -> None:
    activity, geometry, info = read_pet_series(test_data / ACRIN / name)
    assert geometry.shape == (168, 168, 1)
    assert geometry.voxel_size_mm[0] == pytest.approx(4.07283)
    assert info.units == "BQML" and info.decay_correction == "START"
    suv = suv_bw_from_info(activity, info)
    assert float(suv.max()) == pytest.approx(expected, rel=2e-3)


def test_acrin_position_matches_file(test_data: Path) -> None:
    path = test_data / ACRIN / "ACRIN-FLT-Breast_PT_wholebody_slice60.dcm"
    ds = pydicom.dcmread(path)
    activity, geometry, _ = read_pet_series(path)
    # IOP [1,0,0,0,1,0]: pixel [r, c] sits at LPS IPP + (c*dx, r*dy, 0) = RAS (-, -, z).
    raw = ds.pixel_array * float(ds.RescaleSlope)
    r, c = np.unravel_index(np.argmax(raw), raw.shape)
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    dx, dy = (float(v) for v in ds.PixelSpacing)
    lps = ipp + np.array([c * dy, r * dx, 0.0])
    i, j, k = np.unravel_index(np.argmax(activity), activity.shape)
    ras = np.asarray(geometry.affine()) @ np.array([i, j, k, 1.0])
    np.testing.assert_allclose(ras[:3], lps * np.array([-1, -1, 1]), rtol=0, atol=1e-6)


def test_reading_two_series_is_refused(test_data: Path) -> None:
    with pytest.raises(DicomError, match="2 different series"):
        read_pet_series(test_data / ACRIN)


def test_round_trip_values_geometry_and_suv(tmp_path: Path, generator: torch.Generator) -> None:
    geometry = ImageGeometry(
        shape=(7, 5, 4), voxel_size_mm=(2.0, 2.5, 3.0), origin_mm=(-6.0, 4.0, -4.5)
    )
    image = _image(generator, geometry.shape)
    meta = _metadata()
    files = write_pet_series(tmp_path / "series", image, geometry, meta)
    assert len(files) == 4 and all(f.is_file() for f in files)
    activity, geo, info = read_pet_series(tmp_path / "series")
    assert geo.shape == geometry.shape
    np.testing.assert_allclose(geo.voxel_size_mm, geometry.voxel_size_mm, rtol=1e-9)
    np.testing.assert_allclose(geo.origin_mm, geometry.origin_mm, rtol=1e-9, atol=1e-9)
    # int16 quantisation: error at most half a slope step per slice.
    peaks = image.abs().amax(dim=(0, 1)).numpy()
    err = np.abs(activity - image.numpy()).max(axis=(0, 1))
    assert np.all(err <= 0.5 * peaks / 32767 * (1 + 1e-6))
    # SUV from the written files equals SUV from the image and the metadata.
    injection = dt.datetime.fromisoformat(meta.injection_time)
    start = dt.datetime.fromisoformat(meta.acquisition_start)
    expected = suv_bw(image.numpy(), 72.5, 250e6, meta.half_life_s, injection, start)
    got = suv_bw_from_info(activity, info)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.max()))
    # Distinct UIDs per file, one series, one frame of reference.
    sets = [pydicom.dcmread(f) for f in files]
    assert len({d.SOPInstanceUID for d in sets}) == 4
    assert len({d.SeriesInstanceUID for d in sets}) == 1
    assert sets[0].Units == "BQML" and sets[0].DecayCorrection == "START"
    assert len({str(d.RescaleSlope) for d in sets}) == 4
    # A second write gets a new series UID, and the same study when asked.
    write_pet_series(tmp_path / "again", image, geometry, meta, study_uid=sets[0].StudyInstanceUID)
    other = pydicom.dcmread(next((tmp_path / "again").iterdir()))
    assert other.SeriesInstanceUID != sets[0].SeriesInstanceUID
    assert other.StudyInstanceUID == sets[0].StudyInstanceUID


def test_hot_voxel_lands_at_its_lps_position(tmp_path: Path) -> None:
    geometry = ImageGeometry(
        shape=(6, 4, 3), voxel_size_mm=(1.5, 2.0, 4.0), origin_mm=(-3.75, -3.0, -4.0)
    )
    image = np.zeros(geometry.shape)
    i, j, k = 1, 3, 2
    image[i, j, k] = 100.0
    write_pet_series(tmp_path / "s", image, geometry, _metadata())
    ds = next(
        d for d in map(pydicom.dcmread, sorted((tmp_path / "s").iterdir())) if d.pixel_array.any()
    )
    r, c = np.unravel_index(np.argmax(ds.pixel_array), ds.pixel_array.shape)
    row_dir = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
    col_dir = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
    dr, dc = (float(v) for v in ds.PixelSpacing)
    lps = (
        np.array([float(v) for v in ds.ImagePositionPatient]) + c * dc * row_dir + r * dr * col_dir
    )
    ras = np.asarray(geometry.affine()) @ np.array([i, j, k, 1.0])
    np.testing.assert_allclose(lps, ras[:3] * np.array([-1, -1, 1]), atol=1e-9)
    assert float(ds.pixel_array.max()) * float(ds.RescaleSlope) == pytest.approx(100.0, rel=1e-4)


def test_suv_bw_analytic() -> None:
    t0 = dt.datetime(2026, 1, 1, 9, 0, 0)
    suv = suv_bw(np.array([1000.0]), 70.0, 370e6, 6586.2, t0, t0 + dt.timedelta(seconds=6586.2))
    assert float(suv[0]) == pytest.approx(1000.0 * 70000.0 / 185e6, rel=1e-12)
    with pytest.raises(DicomError, match="patient_weight_kg"):
        suv_bw(np.ones(1), None, 1e8, 6586.2, t0, t0)  # type: ignore[arg-type]
    with pytest.raises(DicomError, match="before injection"):
        suv_bw(np.ones(1), 70.0, 1e8, 6586.2, t0, t0 - dt.timedelta(seconds=1))


def test_bad_inputs_leave_nothing(tmp_path: Path) -> None:
    geometry = ImageGeometry(
        shape=(4, 4, 2), voxel_size_mm=(1.0, 1.0, 1.0), origin_mm=(0.0, 0.0, 0.0)
    )
    bad = np.ones(geometry.shape)
    bad[1, 1, 1] = np.nan
    with pytest.raises(DicomError, match="NaN"):
        write_pet_series(tmp_path / "nan", bad, geometry, _metadata())
    with pytest.raises(DicomError, match="shape"):
        write_pet_series(tmp_path / "shape", np.ones((4, 4, 3)), geometry, _metadata())
    assert list(tmp_path.iterdir()) == []
    files = write_pet_series(tmp_path / "ok", np.ones(geometry.shape), geometry, _metadata())
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) // 3])  # truncated file
    with pytest.raises(DicomError):
        read_pet_series(tmp_path / "ok")
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file at all")
    with pytest.raises(DicomError, match="not a readable DICOM"):
        read_pet_series(tmp_path / "junk.dcm")


def test_missing_slice_is_refused(tmp_path: Path) -> None:
    geometry = ImageGeometry(
        shape=(4, 4, 4), voxel_size_mm=(1.0, 1.0, 2.0), origin_mm=(0.0, 0.0, 0.0)
    )
    files = write_pet_series(tmp_path / "s", np.ones(geometry.shape), geometry, _metadata())
    files[2].unlink()
    with pytest.raises(DicomError, match="evenly spaced"):
        read_pet_series(tmp_path / "s")


def test_ct_reader_agrees_on_the_frame(tmp_path: Path, generator: torch.Generator) -> None:
    """Our PET series relabelled as CT reads back through pet_dl.io.ct on the same grid:
    the two DICOM readers agree on RAS <-> LPS."""
    from pet_dl.io.ct import read_ct_series

    geometry = ImageGeometry(
        shape=(6, 5, 3), voxel_size_mm=(1.5, 2.0, 2.5), origin_mm=(-4.0, 3.0, -2.5)
    )
    image = _image(generator, geometry.shape)
    files = write_pet_series(tmp_path / "pet", image, geometry, _metadata())
    (tmp_path / "ct").mkdir()
    for f in files:
        ds = pydicom.dcmread(f)
        ds.Modality = "CT"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.save_as(tmp_path / "ct" / f.name, enforce_file_format=True)
    hu, ct_geometry = read_ct_series(tmp_path / "ct")
    pet, pet_geometry, _ = read_pet_series(tmp_path / "pet")
    assert ct_geometry.shape == pet_geometry.shape == geometry.shape
    np.testing.assert_allclose(ct_geometry.origin_mm, geometry.origin_mm, atol=1e-6)
    np.testing.assert_allclose(ct_geometry.voxel_size_mm, geometry.voxel_size_mm, rtol=1e-9)
    np.testing.assert_allclose(hu.numpy(), pet, rtol=1e-5, atol=1e-3)
    with pytest.raises(DicomError, match="not a PET"):
        read_pet_series(tmp_path / "ct")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_reports_no_errors(tmp_path: Path, generator: torch.Generator) -> None:
    geometry = ImageGeometry(
        shape=(8, 8, 2), voxel_size_mm=(2.0, 2.0, 2.0), origin_mm=(-7.0, -7.0, -1.0)
    )
    files = write_pet_series(
        tmp_path / "s", _image(generator, geometry.shape), geometry, _metadata()
    )
    for f in files:
        result = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
        report = result.stdout + result.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, report
