"""File I/O: NIfTI round trips and orientation, STIR Interfile on real data, CT HU -> mu,
resampling, CT DICOM series, HDF5 scan files (round trip and corrupt files), atomic writes."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from pet_dl.errors import PetDLError, UnitsError
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.io import ImageFileError
from pet_dl.io.atomic import atomic_path
from pet_dl.io.ct import (
    check_mu_units,
    hu_to_mu,
    mu_per_cm_to_per_mm,
    read_ct_series,
    resample_to_grid,
)
from pet_dl.io.interfile import load_image, read_interfile_image, read_sinogram_header
from pet_dl.io.nifti import load_nifti, save_nifti
from pet_dl.io.scanfile import (
    MAX_SCAN_ELEMENTS_ENV,
    ScanFileError,
    ScanTooLargeError,
    read_scan,
    read_scan_bytes,
    read_truth,
    write_scan,
)
from pet_dl.scan import AcquisitionMetadata, Scan


# ----------------------------------------------------------------------------- NIfTI
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("shape", [(7, 5, 4), (6, 9, 1)])
def test_nifti_round_trip_keeps_data_and_affine(
    tmp_path: Path, generator: torch.Generator, suffix: str, shape: tuple
) -> None:
    geometry = ImageGeometry(
        shape=shape, voxel_size_mm=(2.5, 1.5, 3.25), origin_mm=(-12.0, 30.5, 7.0)
    )
    image = torch.rand(shape, generator=generator) * 1e4
    path = tmp_path / f"img{suffix}"
    save_nifti(path, image, geometry)
    back, g = load_nifti(path)
    assert torch.equal(back, image) and back.shape == shape
    assert g == geometry
    np.testing.assert_allclose(nib.load(path).affine, geometry.affine())
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


def test_nifti_flipped_and_permuted_axes_come_back_in_ras(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)  # axes (i, j, k)
    # LPS-like: i runs along -x, j along -y, k along +z; then swap i and j in the affine
    affine = np.array([[0, -2.0, 0, 10], [-3.0, 0, 0, 20], [0, 0, 4.0, -5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "lps.nii")
    image, g = load_nifti(tmp_path / "lps.nii")
    assert image.shape == (3, 2, 4) and g.voxel_size_mm == (2.0, 3.0, 4.0)
    # every voxel keeps its world position: compare centres through both affines
    for i, j, k in [(0, 0, 0), (1, 2, 3), (1, 0, 2)]:
        world = affine @ np.array([i, j, k, 1.0])
        idx = np.linalg.solve(g.affine(), world)[:3]
        assert np.allclose(idx, np.round(idx))
        assert float(image[tuple(int(v) for v in np.round(idx))]) == data[i, j, k]


def test_nifti_bad_files_give_clear_errors(tmp_path: Path) -> None:
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), rot), tmp_path / "oblique.nii")
    with pytest.raises(ImageFileError, match="oblique"):
        load_nifti(tmp_path / "oblique.nii")
    (tmp_path / "garbage.nii.gz").write_bytes(b"\x1f\x8b not really gzip" * 10)
    with pytest.raises(ImageFileError, match="cannot read"):
        load_nifti(tmp_path / "garbage.nii.gz")
    good = tmp_path / "good.nii"
    save_nifti(good, torch.ones(8, 8, 8), ImageGeometry.centered((8, 8, 8), 2.0))
    (tmp_path / "cut.nii").write_bytes(good.read_bytes()[:600])
    with pytest.raises(ImageFileError):
        load_nifti(tmp_path / "cut.nii")
    with pytest.raises(ValueError, match="shape"):
        save_nifti(tmp_path / "x.nii", torch.ones(3, 3, 3), ImageGeometry.centered((4, 4, 4), 1.0))
    assert not (tmp_path / "x.nii").exists()


# ----------------------------------------------------------------------------- Interfile
def test_sirf_brain_and_thorax_phantoms_load(test_data: Path) -> None:
    brain = test_data / "sirf_phantoms" / "brain"
    emission, g = load_image(brain / "emission.hv")
    assert emission.shape == (211, 211, 15)
    assert g.voxel_size_mm == (1.0, 1.0, 6.75)
    assert g.origin_mm[:2] == (-105.0, -105.0) and g.origin_mm[2] == pytest.approx(-7 * 6.75)
    raw = np.fromfile(brain / "emission.v", dtype="<f4").reshape(15, 211, 211)
    assert float(emission[30, 100, 7]) == raw[7, 100, 30]  # [z, y, x] on disk
    mu_cm, _ = load_image(brain / "attenuation.hv")
    assert float(mu_cm.max()) == pytest.approx(0.144, rel=1e-4)
    with pytest.raises(UnitsError, match="1/cm"):
        check_mu_units(mu_cm)
    mu = mu_per_cm_to_per_mm(mu_cm)
    check_mu_units(mu)
    assert float(mu.max()) == pytest.approx(0.0144, rel=1e-4)
    thorax, gt = load_image(test_data / "sirf_phantoms" / "thorax" / "emission.hv")
    assert thorax.shape == (155, 155, 1) and gt.voxel_size_mm[0] == pytest.approx(3.129)
    assert gt.origin_mm[:2] == pytest.approx((-240.933, -240.933))


def test_stir_sensitivity_and_mmr_mu_map(test_data: Path) -> None:
    sens, g = read_interfile_image(test_data / "stir_reference" / "RPTsens_seg4.hv")
    assert sens.shape == (97, 97, 31) and g.voxel_size_mm == (3.1088, 3.1088, 3.375)
    assert g.origin_mm[0] == pytest.approx(-48 * 3.1088)  # centred: no offsets in header
    # a backprojection of ones over full rings is symmetric under x -> -x
    torch.testing.assert_close(
        sens, torch.flip(sens, [0]), rtol=2e-2, atol=2e-2 * float(sens.max())
    )
    mu, gm = read_interfile_image(test_data / "mmr_scanner" / "mu_map.hv")
    assert mu.shape == (57, 57, 127) and gm.voxel_size_mm == pytest.approx(
        (13.0391, 13.0391, 2.03125)
    )
    assert 0.09 < float(mu.max()) < 0.12  # water-filled NEMA phantom, 1/cm
    with pytest.raises(UnitsError):
        check_mu_units(mu)


def test_sinogram_headers(test_data: Path) -> None:
    h = read_sinogram_header(test_data / "mmr_scanner" / "Siemens_mMR_seg2.hs")
    assert (h["num_segments"], h["num_views"], h["num_tangential"]) == (5, 252, 344)
    assert h["axial_per_segment"] == [62, 63, 64, 63, 62]
    assert h["min_ring_difference"] == [-2, -1, 0, 1, 2] == h["max_ring_difference"]
    assert h["scanner"]["num_rings"] == 64 and h["scanner"]["ring_spacing_mm"] == pytest.approx(
        4.0625
    )
    assert not h["arc_corrected"]
    u = read_sinogram_header(test_data / "stir_reference" / "Utahscat600k_ca_seg4.hs")
    assert u["num_views"] == 96 and u["axial_per_segment"] == [12, 13, 14, 15, 16, 15, 14, 13, 12]
    assert u["arc_corrected"]
    s11 = read_sinogram_header(test_data / "mmr_scanner" / "mMR_template_span11.hs")
    assert sum(s11["axial_per_segment"]) == 837  # the mMR span-11 plane count


def test_interfile_errors(tmp_path: Path, test_data: Path) -> None:
    src = test_data / "stir_reference"
    shutil.copy(src / "RPTsens_seg4.hv", tmp_path / "a.hv")
    (tmp_path / "RPTsens_seg4.v").write_bytes((src / "RPTsens_seg4.v").read_bytes()[:1000])
    with pytest.raises(ImageFileError, match="truncated"):
        read_interfile_image(tmp_path / "a.hv")
    text = (src / "RPTsens_seg4.hv").read_text().replace("scaling factor (mm/pixel) [2]", "x")
    (tmp_path / "b.hv").write_text(text)
    with pytest.raises(ImageFileError, match=r"missing 'scaling factor \(mm/pixel\) \[2\]'"):
        read_interfile_image(tmp_path / "b.hv")
    with pytest.raises(ImageFileError, match="unsupported image format"):
        load_image(tmp_path / "image.png")


# ----------------------------------------------------------------------------- CT
def test_hu_to_mu_known_points() -> None:
    hu = torch.tensor([-1200.0, -1000.0, -500.0, 0.0, 1000.0])
    mu = hu_to_mu(hu)
    assert float(mu[0]) == 0.0 and float(mu[1]) == 0.0
    assert float(mu[2]) == pytest.approx(0.0048, rel=1e-5)  # half water density
    assert float(mu[3]) == pytest.approx(0.0096, rel=1e-5)
    assert float(mu[4]) == pytest.approx(
        (5.10e-5 * 2000 + 4.71e-2) / 10, rel=1e-5
    )  # Carney 120 kVp
    fine = hu_to_mu(torch.linspace(-1000, 3000, 4001, dtype=torch.float64), kvp=140.0)
    assert (fine.diff() >= 0).all() and float(fine.diff().max()) < 1e-5  # monotone, continuous
    with pytest.raises(ValueError, match="kVp"):
        hu_to_mu(hu, kvp=60.0)
    with pytest.raises(UnitsError, match="Hounsfield"):
        check_mu_units(hu)


def test_resample_is_exact_for_linear_images() -> None:
    src = ImageGeometry(
        shape=(20, 18, 16), voxel_size_mm=(1.0, 1.2, 1.5), origin_mm=(-10.0, -10.0, -11.0)
    )
    coeff = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)

    def linear(g: ImageGeometry) -> torch.Tensor:
        axes = [torch.as_tensor(g.voxel_centers(k)) for k in range(3)]
        x, y, z = torch.meshgrid(*axes, indexing="ij")
        return coeff[0] * x + coeff[1] * y + coeff[2] * z + 7.0

    dst = ImageGeometry(
        shape=(6, 5, 4), voxel_size_mm=(2.1, 2.3, 2.6), origin_mm=(-5.3, -4.1, -4.0)
    )
    out = resample_to_grid(linear(src), src, dst, antialias=False)
    torch.testing.assert_close(out, linear(dst), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        resample_to_grid(linear(src), src, src), linear(src), rtol=1e-6, atol=1e-6
    )
    far = ImageGeometry(shape=(2, 2, 2), voxel_size_mm=(1.0, 1.0, 1.0), origin_mm=(100.0, 0.0, 0.0))
    assert float(resample_to_grid(linear(src), src, far).abs().max()) == 0.0  # outside: air


def test_ct_dicom_series_reads_hu_in_ras(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rows, cols, nz = 4, 5, 3
    raw = np.arange(nz * rows * cols, dtype=np.int16).reshape(nz, rows, cols) * 10
    series = generate_uid()
    for k in (2, 0, 1):  # written out of order
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID = "CT", series
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [0.8, 0.6]  # row spacing (y), column spacing (x)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-1.0, 2.0, -20.0 + 2.5 * k]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 2.0, -1024.0
        ds.PixelData = raw[k].tobytes()
        ds.save_as(tmp_path / f"slice{k}.dcm", enforce_file_format=True)
    (tmp_path / "README").write_text("not dicom")
    hu, g = read_ct_series(tmp_path)
    assert hu.shape == (cols, rows, nz) and g.voxel_size_mm == pytest.approx((0.6, 0.8, 2.5))
    # LPS voxel (row r, col c, slice k) at (-1 + 0.6 c, 2 + 0.8 r, z) -> RAS (1 - 0.6 c, -2 - 0.8 r, z)
    for r, c, k in [(0, 0, 0), (3, 4, 2), (1, 2, 1)]:
        world = np.array([1.0 - 0.6 * c, -2.0 - 0.8 * r, -20.0 + 2.5 * k, 1.0])
        idx = np.round(np.linalg.solve(g.affine(), world)[:3]).astype(int)
        assert np.allclose(g.affine() @ np.append(idx, 1.0), world)
        assert float(hu[tuple(idx)]) == 2.0 * raw[k, r, c] - 1024.0
    with pytest.raises(ImageFileError, match="no CT"):
        read_ct_series([tmp_path / "README"])


# ----------------------------------------------------------------------------- scan file
def _scan(generator: torch.Generator, integer: bool = True) -> Scan:
    sino = SinogramGeometry.two_d(get_scanner("test"), num_radial=33)
    shape = sino.shape
    prompts = torch.poisson(torch.full(shape, 5.0), generator=generator)
    if not integer:
        prompts = prompts + 0.25
    return Scan(
        sinogram=sino,
        image=ImageGeometry.centered((32, 32, 1), 4.0),
        prompts=prompts,
        multiplicative=torch.rand(shape, generator=generator) + 0.1,
        additive=torch.rand(shape, generator=generator),
        calibration=0.0123,
        psf_fwhm_mm=4.5,
        metadata=AcquisitionMetadata(
            duration_s=600.0,
            dose_fraction=0.05,
            patient_weight_kg=71.5,
            phantom="brain",
            seed=11,
            extra={"note": "test"},
        ),
    )


@pytest.mark.parametrize("integer", [True, False])
def test_scan_file_round_trip(tmp_path: Path, generator: torch.Generator, integer: bool) -> None:
    scan = _scan(generator, integer)
    truth = {
        "activity": torch.rand(32, 32, 1, generator=generator),
        "mu": torch.full((32, 32, 1), 0.0096),
        "labels": torch.zeros(32, 32, 1, dtype=torch.int64),
    }
    path = tmp_path / "scan.h5"
    write_scan(path, scan, truth=truth)
    back = read_scan(path)
    assert back.sinogram == scan.sinogram and back.image == scan.image
    for name in ("prompts", "multiplicative", "additive"):
        assert torch.equal(getattr(back, name), getattr(scan, name)), name
    assert back.calibration == scan.calibration and back.psf_fwhm_mm == scan.psf_fwhm_mm
    assert dataclasses.asdict(back.metadata) == dataclasses.asdict(scan.metadata)
    with h5py.File(path) as f:
        assert f["prompts"].dtype == (np.uint32 if integer else np.float32)
        assert f["prompts"].compression == "gzip"
        assert f.attrs["format_version"] == "1.0"
    t = read_truth(path)
    assert (
        t is not None
        and torch.equal(t["activity"], truth["activity"])
        and torch.equal(t["labels"], truth["labels"])
    )
    write_scan(tmp_path / "plain.h5", scan)
    assert read_truth(tmp_path / "plain.h5") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.h5", "scan.h5"]


def test_scan_file_keeps_phantom_lesions(tmp_path: Path, generator: torch.Generator) -> None:
    from pet_dl.phantoms import make_phantom

    scan = _scan(generator)
    scan.image = ImageGeometry.centered((80, 60, 1), 4.0)
    phantom = make_phantom("nema", scan.image, generator)
    write_scan(tmp_path / "s.h5", scan, truth=phantom)
    t = read_truth(tmp_path / "s.h5")
    assert t is not None and torch.equal(t["mu"], phantom.mu)
    assert [les["diameter_mm"] for les in t["lesions"]] == [10.0, 13.0, 17.0, 22.0, 28.0, 37.0]
    assert t["lesions"][0]["centre_mm"] == phantom.lesions[0].centre_mm


def test_corrupt_scan_files_give_one_line_errors(
    tmp_path: Path, generator: torch.Generator
) -> None:
    path = tmp_path / "scan.h5"
    write_scan(path, _scan(generator))
    data = path.read_bytes()

    def expect(target: Path, pattern: str) -> None:
        with pytest.raises(ScanFileError, match=pattern) as info:
            read_scan(target)
        assert "\n" not in str(info.value) and isinstance(info.value, PetDLError)

    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    expect(tmp_path / "cut.h5", "truncated or corrupt")
    (tmp_path / "junk.h5").write_bytes(bytes(range(256)) * 20)
    expect(tmp_path / "junk.h5", "not a readable HDF5")
    expect(tmp_path / "none.h5", "no such file")
    for name, edit, pattern in [
        (
            "newer.h5",
            lambda f: f.attrs.__setitem__("format_version", "2.0"),
            "version 2.0 is newer",
        ),
        ("minor.h5", lambda f: f.attrs.__setitem__("format_version", "1.7"), None),
        ("nokey.h5", lambda f: f.__delitem__("prompts"), "missing 'prompts'"),
        ("noattr.h5", lambda f: f.attrs.__delitem__("calibration"), "missing 'calibration'"),
        ("other.h5", lambda f: f.attrs.__delitem__("format"), "not a pet_dl scan file"),
        ("neg.h5", lambda f: f["additive"].__setitem__((0, 0, 0), -1.0), "negative"),
        ("nan.h5", lambda f: f["multiplicative"].__setitem__((0, 0, 0), np.nan), "NaN"),
    ]:
        shutil.copy(path, tmp_path / name)
        with h5py.File(tmp_path / name, "r+") as f:
            edit(f)
        if pattern is None:
            read_scan(tmp_path / name)  # a newer minor version still reads
        else:
            expect(tmp_path / name, pattern)
    bad = _scan(generator)
    bad.prompts = bad.prompts[:, :, :-1]
    with pytest.raises(ValueError, match="shape"):
        write_scan(tmp_path / "bad.h5", bad)
    assert not (tmp_path / "bad.h5").exists()


def _replace_dataset(path: Path, name: str, **kwargs: object) -> None:
    """Swap dataset ``name`` of a scan file for ``create_dataset(name, **kwargs)``."""
    with h5py.File(path, "r+") as f:
        del f[name]
        f.create_dataset(name, **kwargs)


def test_scan_datasets_are_checked_before_their_data_is_read(
    tmp_path: Path, generator: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan = _scan(generator)
    path = tmp_path / "scan.h5"
    write_scan(path, scan)
    size = int(np.prod(scan.sinogram.shape))
    # the bytes of a file read like the file, and errors name the label, not a path
    back = read_scan_bytes(path.read_bytes(), name="request body")
    assert torch.equal(back.prompts, scan.prompts) and back.sinogram == scan.sinogram
    with pytest.raises(ScanFileError, match="^request body: not a readable HDF5"):
        read_scan_bytes(path.read_bytes()[:2000], name="request body")
    with pytest.raises(ScanFileError, match="empty body"):
        read_scan_bytes(b"")
    # the cap counts elements of the declared geometry: one below the sinogram's is refused
    assert read_scan(path, max_elements=size).prompts.shape == scan.prompts.shape
    with pytest.raises(ScanTooLargeError, match=f"{size} elements.*cap of {size - 1}"):
        read_scan(path, max_elements=size - 1)
    monkeypatch.setenv(MAX_SCAN_ELEMENTS_ENV, str(size - 1))
    with pytest.raises(ScanTooLargeError):
        read_scan(path)
    monkeypatch.setenv(MAX_SCAN_ELEMENTS_ENV, "lots")
    with pytest.raises(PetDLError, match=MAX_SCAN_ELEMENTS_ENV):
        read_scan(path)
    monkeypatch.delenv(MAX_SCAN_ELEMENTS_ENV)
    shape = tuple(scan.sinogram.shape)
    cases = [
        ("text", {"data": np.array(["x"] * size, dtype="S4").reshape(shape)}, "dtype"),
        ("compound", {"shape": shape, "dtype": [("a", "f4"), ("b", "f4")]}, "dtype"),
        ("wide", {"shape": shape, "dtype": "f16" if hasattr(np, "float128") else "c16"}, "dtype"),
        ("flat", {"shape": (size,), "dtype": "f4"}, rf"shape \({size},\)"),
        ("huge", {"shape": (2**15, 2**15), "dtype": "f4", "chunks": (512, 512)}, "shape"),
        # a chunk may be larger than a resizable dataset: its decompression is capped too
        (
            "chunk",
            {"shape": shape, "maxshape": (None,) * 3, "dtype": "f4", "chunks": (64, 64, 64)},
            "a chunk of 'prompts'",
        ),
    ]
    for name, kwargs, pattern in cases:
        target = tmp_path / f"{name}.h5"
        shutil.copy(path, target)
        _replace_dataset(target, "prompts", **kwargs)
        error = ScanTooLargeError if name == "chunk" else ScanFileError
        with pytest.raises(error, match=pattern):
            read_scan(target, max_elements=2**17)
    shutil.copy(path, tmp_path / "group.h5")
    with h5py.File(tmp_path / "group.h5", "r+") as f:
        del f["additive"]
        f.create_group("additive")
    with pytest.raises(ScanFileError, match="'additive' is not a dataset"):
        read_scan(tmp_path / "group.h5")
    # other number types are converted to float32 without loss
    shutil.copy(path, tmp_path / "f64.h5")
    _replace_dataset(tmp_path / "f64.h5", "prompts", data=scan.prompts.double().numpy())
    assert torch.equal(read_scan(tmp_path / "f64.h5").prompts, scan.prompts)
    # truth arrays get the same checks
    write_scan(tmp_path / "truth.h5", scan, truth={"mu": torch.zeros(scan.image.shape)})
    _replace_dataset(tmp_path / "truth.h5", "truth/mu", shape=(2**20, 2**12), dtype="f4")
    with pytest.raises(ScanFileError, match="'truth/mu' has shape"):
        read_truth(tmp_path / "truth.h5")


def test_a_small_file_declaring_a_huge_array_is_refused_without_allocating_it(
    tmp_path: Path, generator: torch.Generator
) -> None:
    """A ~100 KB file whose prompts declare 4 GiB (never written: read as fill values),
    and one whose geometry declares a sinogram of 2**30 elements: both refused, and the
    reading process's peak resident memory grows by less than 64 MB."""
    path = tmp_path / "bomb.h5"
    write_scan(path, _scan(generator))
    _replace_dataset(
        path, "prompts", shape=(2**15, 2**15), dtype="f4", chunks=(1024, 1024), compression="gzip"
    )
    geometry = tmp_path / "geometry.h5"
    write_scan(geometry, _scan(generator))
    with h5py.File(geometry, "r+") as f:
        import json

        sino = json.loads(f["geometry"].attrs["sinogram_json"])
        sino["scanner"].update(crystals_per_ring=2**16, blocks_per_ring=2**13)
        sino["num_radial"] = 2**15  # 1 x 32768 views x 32768 bins = 2**30 elements
        f["geometry"].attrs["sinogram_json"] = json.dumps(sino)
    assert path.stat().st_size < 200_000
    code = f"""
import resource
from pet_dl.io.scanfile import read_scan, ScanFileError, ScanTooLargeError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for p, kind in (({str(path)!r}, ScanFileError), ({str(geometry)!r}, ScanTooLargeError)):
    try:
        read_scan(p)
    except kind as exc:
        print(type(exc).__name__, exc)
    else:
        raise SystemExit("read")
print("grew_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    out = run.stdout
    assert run.returncode == 0, run.stderr[-2000:]
    assert "'prompts' has shape (32768, 32768)" in out, out
    assert "ScanTooLargeError" in out and "above the cap" in out, out
    grew_kb = int(out.split("grew_kb")[1])
    assert grew_kb < 64 * 1024, out


def test_atomic_path_leaves_nothing_when_the_writer_raises(tmp_path: Path) -> None:
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        raise RuntimeError("again")
    assert target.read_bytes() == b"old"  # the previous file survives a failed rewrite
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and len(list(tmp_path.iterdir())) == 1
    with (
        pytest.raises(FileNotFoundError, match="does not exist"),
        atomic_path(tmp_path / "no" / "x.h5"),
    ):
        pass


# ----------------------------------------------------------------------------- DICOM folders
def test_dicom_series_folder_has_mkdir_mode_and_a_failure_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import stat

    pydicom = pytest.importorskip("pydicom")
    from pet_dl.io.dicom import write_pet_series

    geometry = ImageGeometry(shape=(4, 4, 3), voxel_size_mm=(1.0, 1.0, 2.0), origin_mm=(0, 0, 0))
    metadata = AcquisitionMetadata(
        duration_s=600.0,
        injection_time="2026-03-02T09:00:00",
        acquisition_start="2026-03-02T10:00:00",
    )
    old = os.umask(0o022)
    try:
        files = write_pet_series(tmp_path / "a" / "b" / "s", np.ones((4, 4, 3)), geometry, metadata)
        assert stat.S_IMODE((tmp_path / "a" / "b" / "s").stat().st_mode) == 0o755
        assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o644}
        os.umask(0o027)
        write_pet_series(tmp_path / "t", np.ones((4, 4, 3)), geometry, metadata)
        assert stat.S_IMODE((tmp_path / "t").stat().st_mode) == 0o750
    finally:
        os.umask(old)
    calls = []

    def fail_on_second(self: object, *args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return save_as(self, *args, **kwargs)

    save_as = pydicom.Dataset.save_as
    monkeypatch.setattr(pydicom.Dataset, "save_as", fail_on_second)
    with pytest.raises(OSError, match="No space"):
        write_pet_series(tmp_path / "new" / "deeper" / "s", np.ones((4, 4, 3)), geometry, metadata)
    assert len(calls) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["a", "t"]
