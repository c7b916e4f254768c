"""OSEM for reading beside the network (``infer.py --osem``): the settings follow the count
level measured from the scan, not its metadata, and the image is ``recon``'s with them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pet_dl.geometry import ImageGeometry, SinogramGeometry
from pet_dl.simulate import simulate_scan, thin_scan


@pytest.fixture(scope="module")
def brain_scan():
    """A brain slice on the shipped model's own layout, full dose (600 s, the evaluations' scan)."""
    from pet_dl.inference import load_model
    from pet_dl.phantoms import make_phantom

    meta = load_model(None, torch.device("cpu")).metadata
    sino, image = SinogramGeometry.from_dict(meta["sinogram"]), ImageGeometry.from_dict(meta["image"])
    g = torch.Generator().manual_seed(5)
    phantom = make_phantom("brain", image, g)
    return simulate_scan(
        phantom.activity, phantom.mu, sino, image, duration_s=600.0, scatter_fraction=0.3,
        randoms_fraction=0.2, psf_fwhm_mm=4.5, crystal_efficiency_sigma=0.05, generator=g,
    )


def test_settings_follow_the_measured_count_level_and_the_image_is_recons(brain_scan) -> None:
    from pet_dl.inference import load_model
    from pet_dl.models.anchor import nearest_row
    from pet_dl.models.batch import initial_image
    from pet_dl.models.blocks import count_level
    from pet_dl.reading_osem import osem_for_reading, reading_settings
    from pet_dl.recon import gaussian_postfilter, reconstruct_classical

    loaded = load_model(None, torch.device("cpu"))
    model = loaded.model
    blend, _ = reading_settings(loaded)
    g = torch.Generator().manual_seed(6)
    readings = {}
    for factor in (1, 20, 100):
        scan = brain_scan if factor == 1 else thin_scan(brain_scan, 1.0 / factor, g)
        # a low-dose scan whose metadata claims full dose (a real scan carries no dose field)
        scan = dataclasses.replace(scan, metadata=dataclasses.replace(scan.metadata, dose_fraction=1.0))
        reading = osem_for_reading(scan, device="cpu")
        readings[factor] = reading
        # the level is the network's own: measured on its start (init_iterations x init_subsets)
        prompts = scan.prompts.float()[None]
        start = initial_image(scan.forward_model(), prompts, model.init_iterations, model.init_subsets)
        network_level = count_level(prompts, scan.additive.float()[None], start, scan.image.voxel_size_mm,
                                    model.count_reference)
        assert reading.count_level == pytest.approx(float(network_level[0]), rel=1e-5)
        assert tuple(nearest_row(blend.rows, reading.count_level)[:3]) == (
            reading.dose_factor, reading.iterations, reading.postfilter_fwhm_mm)
        expected = gaussian_postfilter(
            reconstruct_classical(scan, "osem", reading.iterations, reading.subsets), scan.image,
            reading.postfilter_fwhm_mm,
        )
        torch.testing.assert_close(reading.image, expected, rtol=1e-5, atol=1e-5 * float(expected.max()))
    # the level is measured from the counts: thinning divides it by the factor (Poisson
    # thinning keeps the object's support), whatever the metadata says
    for factor in (20, 100):
        assert readings[factor].count_level * factor == pytest.approx(readings[1].count_level, rel=0.1)
    # fewer counts: fewer iterations and at least as much smoothing
    assert readings[1].iterations > readings[20].iterations >= readings[100].iterations
    assert readings[1].postfilter_fwhm_mm <= readings[20].postfilter_fwhm_mm <= readings[100].postfilter_fwhm_mm


def test_infer_writes_the_osem_beside_the_network_image(brain_scan, tmp_path: Path, capsys) -> None:
    import infer
    from pet_dl.io.dicom import read_pet_series
    from pet_dl.io.nifti import load_nifti
    from pet_dl.io.scanfile import write_scan
    from pet_dl.reading_osem import osem_for_reading

    low = thin_scan(brain_scan, 1.0 / 20, torch.Generator().manual_seed(7))
    write_scan(tmp_path / "slice.h5", low)
    out = tmp_path / "out"
    assert infer.main([str(tmp_path / "slice.h5"), "--out", str(out), "--osem", "--device", "cpu"]) == 0
    reading = osem_for_reading(low, device="cpu")
    written, grid = load_nifti(out / "slice_osem.nii.gz")
    assert grid.shape == low.image.shape
    torch.testing.assert_close(written.float(), reading.image, rtol=1e-5, atol=1e-4 * float(reading.image.max()))
    dicom, _, info = read_pet_series(out / "slice_osem_dicom")
    assert abs(dicom - reading.image.double().numpy()).max() < 1e-3 * float(reading.image.max())
    # one study, one frame of reference, two series: a viewer shows them side by side
    _, _, beside = read_pet_series(out / "slice_dicom")
    assert (info.study_uid, info.frame_of_reference_uid) == (beside.study_uid, beside.frame_of_reference_uid)
    assert info.series_uid != beside.series_uid
    network, _ = load_nifti(out / "slice.nii.gz")
    assert not torch.allclose(network.float(), reading.image)  # two images, not one written twice
    line = capsys.readouterr().out
    assert f"OSEM {reading.iterations} x {reading.subsets}" in line and "1/20 dose" in line


def test_a_model_without_osem_settings_is_refused_before_any_scan(tmp_path: Path, capsys) -> None:
    """A checkpoint without an OSEM mix or count reference: one line, exit 2, nothing written."""
    from test_inference import make_checkpoint, make_scan

    import infer
    from pet_dl.io.scanfile import write_scan

    g = torch.Generator().manual_seed(8)
    scan = make_scan(g)
    write_scan(tmp_path / "small.h5", scan)
    ckpt = make_checkpoint(tmp_path, g, scan)
    out = tmp_path / "out"
    status = infer.main([str(tmp_path / "small.h5"), "--checkpoint", str(ckpt), "--out", str(out), "--osem",
                         "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "no OSEM settings per count level" in err[0]
    assert not out.exists()


def test_a_3d_scan_gets_its_osem_in_3d_on_its_own_grid(monkeypatch) -> None:
    """A 17-ring span-11 scan: the OSEM runs on the 3D sinogram (its subset sensitivities
    computed once for both calls) and is ``recon``'s with the same settings, chosen for the
    level at which the network reads most of the counts: the count-weighted median of the
    levels of the planes it reads (here 1.36; measured in 3D, 1.14)."""
    from test_rebin import expected_scan, geometry, phantom

    from pet_dl.inference import load_model, reconstruct_with_network
    from pet_dl.reading_osem import osem_for_reading, weighted_median
    from pet_dl.recon import gaussian_postfilter, reconstruct_classical

    sino, image = geometry(num_radial=96, view_mashing=2)
    act, mu = phantom(image, axial=True)
    scan = expected_scan(sino, image, act, mu)
    loaded = load_model(None, torch.device("cpu"))
    levels: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    conditioning = loaded.model.conditioning

    def spy(batch, start):  # noqa: ANN001, ANN202
        level = conditioning(batch, start)
        levels.append(level.float())
        counts.append(batch.prompts.flatten(1).sum(1).float())
        return level

    with monkeypatch.context() as patch:
        patch.setattr(loaded.model, "conditioning", spy)
        reconstruct_with_network(scan, loaded, "cpu")
    read = torch.cat(levels)
    assert float(read.max() / read.min()) > 3  # the hot band's planes read far more than the ends'
    reading = osem_for_reading(scan, loaded, device="cpu")
    assert reading.count_level == pytest.approx(weighted_median(read, torch.cat(counts)), rel=1e-4)
    assert reading.image.shape == image.shape
    expected = gaussian_postfilter(
        reconstruct_classical(scan, "osem", reading.iterations, reading.subsets), image, reading.postfilter_fwhm_mm
    )
    torch.testing.assert_close(reading.image, expected, rtol=1e-5, atol=1e-5 * float(expected.max()))
    # the hot band in the middle third is there: the planes are not one plane repeated
    inside = act[..., act.shape[2] // 2] > 0
    middle, end = reading.image[..., image.shape[2] // 2][inside].mean(), reading.image[..., 2][inside].mean()
    assert float(middle / end) > 1.3


def test_weighted_median_counts_weights_not_entries() -> None:
    from pet_dl.reading_osem import weighted_median

    values = torch.tensor([3.0, 1.0, 2.0, 10.0])
    assert weighted_median(values, torch.ones(4)) == 2.0
    assert weighted_median(values, torch.tensor([1.0, 1.0, 1.0, 5.0])) == 10.0  # half the weight is at 10
    assert weighted_median(values, torch.tensor([0.0, 9.0, 0.0, 1.0])) == 1.0


def test_torchserve_zip_carries_the_osem_when_asked(brain_scan, tmp_path: Path) -> None:
    """The handler (no server: its inference and postprocess steps): with ``X-PET-DL-OSEM: 1``
    and ``Accept: application/zip`` the zip holds ``osem.nii.gz`` (infer.py --osem's image)
    and its settings in check.json; without the header it does not; the header without a
    zip is a 400."""
    pytest.importorskip("ts", reason="needs the serve extra (TorchServe)")
    import io
    import json
    import zipfile

    from test_consistency import _Context
    from ts.utils.util import PredictionException

    from pet_dl.inference import load_model
    from pet_dl.io.nifti import load_nifti
    from pet_dl.reading_osem import osem_for_reading
    from pet_dl.serving import handler as serving

    low = thin_scan(brain_scan, 1.0 / 20, torch.Generator().manual_seed(9))
    worker = serving.PetReconHandler()
    worker.loaded = load_model(None, torch.device("cpu"))
    worker.device = torch.device("cpu")
    reading = osem_for_reading(low, device="cpu")
    for osem in (False, True):
        worker.context = _Context("application/zip")
        if osem:
            worker.context.request["X-PET-DL-OSEM"] = "1"
        body = worker.postprocess(worker.inference([low]))[0]
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            names = sorted(archive.namelist())
            check = json.loads(archive.read("check.json"))
            if osem:
                (tmp_path / "osem.nii.gz").write_bytes(archive.read("osem.nii.gz"))
        if not osem:
            assert "osem.nii.gz" not in names and "reading_osem" not in check
            continue
        assert names == ["check.json", "consistency.nii.gz", "image.nii.gz", "osem.nii.gz"]
        served, grid = load_nifti(tmp_path / "osem.nii.gz")
        assert grid.shape == low.image.shape and grid.voxel_size_mm == pytest.approx(low.image.voxel_size_mm)
        torch.testing.assert_close(torch.as_tensor(served).float(), reading.image, rtol=1e-5,
                                   atol=1e-4 * float(reading.image.max()))
        assert check["reading_osem"]["iterations"] == reading.iterations == 4
    worker.context = _Context(None)
    worker.context.request["X-PET-DL-OSEM"] = "true"
    with pytest.raises(PredictionException) as info:
        worker.inference([low])
    assert info.value.error_code == 400 and "Accept: application/zip" in info.value.message


def test_a_native_layout_scan_gets_the_level_the_network_reads(monkeypatch) -> None:
    """On the mMR's native layout and another grid the network reads the level after the
    relayout; the reading OSEM's settings follow that level (one iteration's or the scan's own
    grid's read it 1.3-1.5 x higher on this grid, docs/inference.md)."""
    from pet_dl.geometry import get_scanner
    from pet_dl.inference import load_model, reconstruct_with_network
    from pet_dl.phantoms import make_phantom
    from pet_dl.reading_osem import osem_for_reading

    grid = ImageGeometry.centered((128, 128, 1), (2.0, 2.0, 2.0))
    g = torch.Generator().manual_seed(1)
    phantom = make_phantom("brain", grid, g)
    full = simulate_scan(
        phantom.activity, phantom.mu, SinogramGeometry.two_d(get_scanner("mmr")), grid, duration_s=600.0,
        scatter_fraction=0.3, randoms_fraction=0.2, psf_fwhm_mm=4.5, crystal_efficiency_sigma=0.05, generator=g,
    )
    scan = thin_scan(full, 1.0 / 4, g)
    loaded = load_model(None, torch.device("cpu"))
    read: list[float] = []
    conditioning = loaded.model.conditioning

    def spy(batch, start):  # noqa: ANN001, ANN202
        level = conditioning(batch, start)
        read.append(float(level[0]))
        return level

    with monkeypatch.context() as patch:
        patch.setattr(loaded.model, "conditioning", spy)
        reconstruct_with_network(scan, loaded, "cpu")
    reading = osem_for_reading(scan, loaded, "cpu")
    assert len(read) == 1
    assert reading.count_level == pytest.approx(read[0], rel=1e-4)
    assert 0.15 < reading.count_level < 0.4  # a quarter dose of the training's count level, about
