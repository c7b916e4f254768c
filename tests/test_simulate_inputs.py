"""``simulate`` with Interfile and DICOM inputs: recentring off-axis grids, mu units, and the
warning for activity outside the field of view."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pet_dl.cli import main
from pet_dl.commands.simulate import activity_outside_fov, load_inputs, recentre_shift
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner

ACRIN = "acrin_pet_dicom/ACRIN-FLT-Breast_PT_wholebody_slice60.dcm"


def _args(activity: Path, mu: Path, mu_units: str = "per-mm") -> argparse.Namespace:
    return argparse.Namespace(activity=activity, mu=mu, mu_units=mu_units, phantom=None)


def test_outside_fov_fraction_by_hand() -> None:
    """Two equal voxels, one inside and one outside the 2D FOV: fraction 1/2; a third
    voxel with twice the activity inside: 1/4."""
    sino = SinogramGeometry.two_d(get_scanner("mmr"), num_radial=128)
    radius = float(sino.radial_positions_mm().abs().max())
    image = ImageGeometry.centered((101, 101, 1), 4.0)  # x = -200 .. 200 mm
    activity = torch.zeros(image.shape)
    activity[50, 50, 0] = 1.0  # the centre
    activity[100, 50, 0] = 1.0  # x = 200 mm
    assert radius < 200.0
    fraction, r = activity_outside_fov(activity, image, sino)
    assert r == pytest.approx(radius) and fraction == pytest.approx(0.5)
    activity[60, 50, 0] = 2.0
    assert activity_outside_fov(activity, image, sino)[0] == pytest.approx(0.25)


def test_recentre_shift() -> None:
    centred = ImageGeometry.centered((64, 64, 9), (2.0, 2.0, 3.0))
    assert recentre_shift(centred) == (0.0, 0.0, 0.0)
    moved = ImageGeometry(
        centred.shape, centred.voxel_size_mm, (-63.0 + 1.5, -63.0 + 150.0, -12.0 + 40.0)
    )
    assert recentre_shift(moved) == pytest.approx((-1.5, -150.0, -40.0))
    near = ImageGeometry(centred.shape, centred.voxel_size_mm, (-63.0 + 1.5, -63.0, -12.0 + 2.0))
    assert recentre_shift(near) == (0.0, 0.0, 0.0)  # within one voxel: left alone
    one_slice = ImageGeometry((64, 64, 1), (2.0, 2.0, 3.0), (-63.0, -63.0, -278.5))
    assert recentre_shift(one_slice) == (0.0, 0.0, 278.5)


def test_dicom_slice_is_recentred_and_nothing_is_dropped_silently(
    test_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The ACRIN whole-body slice sits 189 mm off the axis in patient coordinates: taken as
    it is, a sixth of its activity lies outside the mMR's FOV; recentred, under 1 %."""
    from pet_dl.io.dicom import read_pet_series
    from pet_dl.io.nifti import save_nifti
    from pet_dl.io.scanfile import read_scan, read_truth

    volume, grid, _ = read_pet_series(test_data / ACRIN)
    activity = torch.from_numpy(volume.astype("float32"))
    mu = torch.where(activity > 0.05 * activity.max(), 0.0096, 0.0)
    save_nifti(tmp_path / "mu.nii.gz", mu, grid, units="1/mm")  # same patient coordinates
    mmr_2d = SinogramGeometry.two_d(get_scanner("mmr"))
    as_is = ImageGeometry(grid.shape, grid.voxel_size_mm, (*grid.origin_mm[:2], 0.0))
    assert activity_outside_fov(activity, as_is, mmr_2d)[0] > 0.10

    args = _args(test_data / ACRIN, tmp_path / "mu.nii.gz")
    act, mu_back, image, _, _ = load_inputs(args)
    assert "recentred" in capsys.readouterr().err
    centre = [
        o + (n - 1) / 2 * v for o, n, v in zip(image.origin_mm, image.shape, image.voxel_size_mm)
    ]
    assert centre == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    assert torch.equal(act, activity) and torch.equal(mu_back, mu)  # moved together
    assert activity_outside_fov(activity, image, mmr_2d)[0] < 0.01

    # end to end with a small FOV (128 radial bins): the warning states the lost fraction
    out = tmp_path / "slice.h5"
    argv = [
        "simulate",
        "--activity",
        str(test_data / ACRIN),
        "--mu",
        str(tmp_path / "mu.nii.gz"),
        "--num-radial",
        "128",
        "--view-mashing",
        "2",
        "--duration",
        "60",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "recentred" in err
    scan = read_scan(out)
    expected, _ = activity_outside_fov(activity, scan.image, scan.sinogram)
    assert expected > 0.2
    match = re.search(r"warning: ([0-9.]+) % of the activity lies outside", err)
    assert match is not None and float(match.group(1)) == pytest.approx(100 * expected, rel=2e-3)
    truth = read_truth(out)
    assert float(truth["activity"].sum()) == pytest.approx(float(activity.sum()), rel=1e-6)


def test_sirf_brain_interfile_with_mu_in_per_cm(
    test_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from pet_dl.io.interfile import read_interfile_image

    brain = test_data / "sirf_phantoms" / "brain"
    emission, grid = read_interfile_image(brain / "emission.hv")
    attenuation, _ = read_interfile_image(brain / "attenuation.hv")
    act, mu, image, _, _ = load_inputs(
        _args(brain / "emission.hv", brain / "attenuation.hv", "per-cm")
    )
    assert image == grid  # centred already: not moved
    assert "recentred" not in capsys.readouterr().err
    assert torch.equal(act, emission)
    assert torch.allclose(mu, attenuation / 10.0) and float(mu.max()) == pytest.approx(
        0.0144, rel=1e-3
    )
    # mu in 1/cm without --mu-units: one line naming the option, nothing written
    out = tmp_path / "b.h5"
    argv = [
        "simulate",
        "--activity",
        str(brain / "emission.hv"),
        "--mu",
        str(brain / "attenuation.hv"),
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--mu-units per-cm" in err[0] and not out.exists()


@pytest.mark.slow
def test_sirf_brain_simulates_in_3d(test_data: Path, tmp_path: Path) -> None:
    from pet_dl.io.scanfile import read_scan, read_truth

    brain = test_data / "sirf_phantoms" / "brain"
    out = tmp_path / "b.h5"
    argv = [
        "simulate",
        "--activity",
        str(brain / "emission.hv"),
        "--mu",
        str(brain / "attenuation.hv"),
        "--mu-units",
        "per-cm",
        "--span",
        "11",
        "--max-ring-difference",
        "5",
        "--view-mashing",
        "4",
        "--num-radial",
        "128",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    scan = read_scan(out)
    assert scan.sinogram.shape == (127, 63, 128) and float(scan.prompts.sum()) > 0
    assert float(read_truth(out)["mu"].max()) == pytest.approx(0.0144, rel=1e-3)


def test_dicom_in_other_units_is_refused(
    test_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pydicom = pytest.importorskip("pydicom")
    ds = pydicom.dcmread(test_data / ACRIN)
    ds.Units = "CNTS"
    ds.save_as(tmp_path / "cnts.dcm")
    argv = [
        "simulate",
        "--activity",
        str(tmp_path / "cnts.dcm"),
        "--mu",
        str(tmp_path / "cnts.dcm"),
        "--out",
        str(tmp_path / "x.h5"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "BQML" in err[0]


def _write_ct_slice(path: Path, centre_lps: np.ndarray, disk_lps: np.ndarray) -> None:
    """One axial CT slice of 200 x 200 pixels of 2 mm centred on ``centre_lps``: a water
    disk (0 HU, radius 40 mm) at ``disk_lps`` in air (-1000 HU)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    n, step = 200, 2.0
    origin = centre_lps - np.array([(n - 1) / 2 * step, (n - 1) / 2 * step, 0.0])
    x = origin[0] + step * np.arange(n)  # along a row (columns)
    y = origin[1] + step * np.arange(n)  # down the rows
    inside = (x[None, :] - disk_lps[0]) ** 2 + (y[:, None] - disk_lps[1]) ** 2 <= 40.0**2
    hu = np.where(inside, 0, -1000).astype(np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "CT", generate_uid()
    ds.Rows = ds.Columns = n
    ds.PixelSpacing = [step, step]
    ds.SliceThickness = 3.0
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [float(v) for v in origin]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, 0.0
    ds.KVP = 120
    ds.PixelData = hu.tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_ct_mu_is_resampled_and_moves_with_the_activity(test_data: Path, tmp_path: Path) -> None:
    """A CT slice in the PET slice's patient coordinates, water disk 50 mm to the patient's
    left (LPS +x, RAS -x) of the PET grid's centre: after recentring, water at x = -50 mm,
    air at x = +100 mm on the activity's grid."""
    from pet_dl.io.dicom import read_pet_series

    _, grid, _ = read_pet_series(test_data / ACRIN)
    centre_ras = np.array(
        [o + (n - 1) / 2 * v for o, n, v in zip(grid.origin_mm, grid.shape, grid.voxel_size_mm)]
    )
    centre_lps = centre_ras * np.array([-1.0, -1.0, 1.0])
    _write_ct_slice(tmp_path / "ct.dcm", centre_lps, centre_lps + np.array([50.0, 0.0, 0.0]))
    _, mu, image, _, _ = load_inputs(_args(test_data / ACRIN, tmp_path / "ct.dcm"))
    assert mu.shape == image.shape

    def at(x_mm: float) -> float:
        i = int(round((x_mm - image.origin_mm[0]) / image.voxel_size_mm[0]))
        j = int(round((0.0 - image.origin_mm[1]) / image.voxel_size_mm[1]))
        return float(mu[i, j, 0])

    assert at(-50.0) == pytest.approx(0.0096, rel=0.05)
    assert at(100.0) == pytest.approx(0.0, abs=1e-6)
    assert at(50.0) == pytest.approx(0.0, abs=1e-6)  # not mirrored
