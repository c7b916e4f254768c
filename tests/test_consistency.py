"""pet_dl.consistency: the data-consistency map, its regions, and its way out of infer.py."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pet_dl.consistency import (
    CONSISTENCY_THRESHOLD,
    ConsistencyMap,
    consistency_map,
    excess_z,
    find_regions,
    object_support,
    pearson_residual,
)
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.scan import AcquisitionMetadata, Scan

ROOT = Path(__file__).resolve().parents[1]


def test_pearson_residual_by_hand() -> None:
    y = torch.tensor([[4.0, 0.0, 9.0, 3.0]])
    ybar = torch.tensor([[1.0, 4.0, 9.0, 0.0]])
    torch.testing.assert_close(pearson_residual(y, ybar), torch.tensor([[3.0, -2.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="differ"):
        pearson_residual(y, ybar[:, :3])


def test_find_regions_counts_locates_and_respects_support() -> None:
    grid = ImageGeometry.centered((20, 20, 1), (2.0, 2.0, 2.0))
    z = torch.zeros(20, 20, 1)
    z[4:7, 4:7, 0] = 5.0  # a 3 x 3 region centred on voxel (5, 5)
    z[5, 5, 0] = 9.0
    z[14:16, 12, 0] = 6.0  # two voxels, centred on (14.5, 12)
    z[18, 2, 0] = 8.0  # a single voxel: below MIN_REGION_VOXELS
    regions = find_regions(z, grid, threshold=4.0)
    assert len(regions) == 2
    first, second = regions
    assert first.peak == pytest.approx(9.0) and first.voxels == 9 and second.voxels == 2
    x0, y0, _ = grid.origin_mm
    assert first.centre_mm[:2] == pytest.approx((x0 + 5 * 2.0, y0 + 5 * 2.0))
    assert first.peak_mm[:2] == pytest.approx((x0 + 5 * 2.0, y0 + 5 * 2.0))
    assert second.centre_mm[:2] == pytest.approx((x0 + 14.5 * 2.0, y0 + 12 * 2.0))
    assert len(find_regions(z, grid, threshold=5.5)) == 1  # 6 and 9 pass; the 6s are 2 voxels
    assert len(find_regions(z, grid, threshold=7.0)) == 0  # only single voxels above 7
    support = torch.zeros(20, 20, 1, dtype=torch.bool)
    support[10:, :, 0] = True
    only = find_regions(z, grid, threshold=4.0, support=support)
    assert len(only) == 1 and only[0].voxels == 2


def _disk_scan(generator: torch.Generator, counts: float, image: torch.Tensor) -> Scan:
    """A 2D test-scanner scan of ``image`` with Poisson counts, PSF 6 mm, 20 % background."""
    sinogram = SinogramGeometry.two_d(get_scanner("test"), num_radial=65)
    grid = ImageGeometry.centered((32, 32, 1), (3.0, 3.0, 3.0))
    base = Scan(
        sinogram=sinogram, image=grid, prompts=torch.zeros(sinogram.shape),
        multiplicative=torch.full(sinogram.shape, 0.6), additive=torch.zeros(sinogram.shape),
        calibration=1.0, psf_fwhm_mm=6.0, metadata=AcquisitionMetadata(duration_s=300.0),
    )
    ybar = base.forward_model()(image)
    calibration = counts / float(ybar.sum())
    additive = torch.full(sinogram.shape, 0.2 * counts / ybar.numel())
    prompts = torch.poisson(ybar * calibration + additive, generator=generator)
    return replace(base, prompts=prompts, additive=additive, calibration=calibration)


def _disk(grid_shape: tuple[int, int], radius: float = 0.75) -> torch.Tensor:
    x = torch.linspace(-1, 1, grid_shape[0])
    return ((x[:, None] ** 2 + x[None, :] ** 2 < radius**2) * 1000.0).unsqueeze(-1).float()


def _blob(grid: ImageGeometry, centre_mm: tuple[float, float], fwhm_mm: float, peak: float) -> torch.Tensor:
    xs = grid.origin_mm[0] + torch.arange(grid.shape[0]) * grid.voxel_size_mm[0]
    ys = grid.origin_mm[1] + torch.arange(grid.shape[1]) * grid.voxel_size_mm[1]
    sigma = fwhm_mm / (2 * math.sqrt(2 * math.log(2)))
    r2 = (xs[:, None] - centre_mm[0]) ** 2 + (ys[None, :] - centre_mm[1]) ** 2
    return (peak * torch.exp(-r2 / (2 * sigma**2))).unsqueeze(-1).float()


def test_truth_map_is_unit_noise_and_a_false_blob_stands_out(generator: torch.Generator) -> None:
    """Where the image is the truth the map is noise of SD ~1 at every count level; a false
    blob of 10 mm at 2 x the local activity gives a region on the blob."""
    truth = _disk((32, 32))
    for counts in (2e4, 2e6):
        scan = _disk_scan(generator, counts, truth)
        model = scan.forward_model()
        z, _ = excess_z(model, scan.prompts, truth, scan.image, scan.psf_fwhm_mm)
        inside = object_support(truth, scan.image)
        assert 0.75 < float(z[inside].std()) < 1.3, counts
        assert abs(float(z[inside].mean())) < 0.5
        clean = consistency_map(model, scan.prompts, truth, scan.image, scan.psf_fwhm_mm)
        assert clean.count == 0 and clean.threshold == CONSISTENCY_THRESHOLD
    centre = (15.0, -12.0)
    false = truth + _blob(scan.image, centre, 10.0, 1000.0)
    flagged = consistency_map(model, scan.prompts, false, scan.image, scan.psf_fwhm_mm, reference=truth)
    assert flagged.count >= 1
    assert math.dist(flagged.regions[0].centre_mm[:2], centre) < 5.0
    assert flagged.reference_z is not None and float(flagged.reference_z.max()) < CONSISTENCY_THRESHOLD
    with pytest.raises(ValueError, match="shape"):
        consistency_map(model, scan.prompts, truth[:4], scan.image, scan.psf_fwhm_mm)


def test_planted_blob_in_the_shipped_network_at_1_20_dose() -> None:
    """A validation phantom of the shipped model's recipe (seed 101650, not a test seed) at
    1/20 dose: the truth is not flagged; a false blob (FWHM 10 mm, the image 2.5 x the
    local truth there, in grey matter) planted in the network's image is flagged within
    5 mm of its centre, where the network's own image has no region. (In white matter, at
    a quarter of grey matter's activity, such a blob reaches z ~ 2-4 at 1/20 dose: see
    docs/inference.md for the detection rates.)"""
    from pet_dl.data_check import check_consistency, reference_osem
    from pet_dl.inference import load_model, scan_batch
    from pet_dl.recipes import full_dose_scan, load_recipe, phantom_of_seed
    from pet_dl.recon.filters import gaussian_postfilter
    from pet_dl.simulate import thin_scan

    recipe = load_recipe(ROOT / "data" / "brain2d.yaml")
    phantom = phantom_of_seed(recipe, 101650)
    g = torch.Generator().manual_seed(7)
    scan = thin_scan(full_dose_scan(recipe, phantom, 101650, g), 1 / 20, g)
    osem = reference_osem(scan, "cpu")
    with torch.no_grad():  # the network as reconstruct_with_network() runs it, without the geometry check
        network = load_model(None, torch.device("cpu")).model(scan_batch(scan, "cpu", osem))[0]
    assert check_consistency(scan, phantom.activity, "cpu", osem_image=osem).count == 0

    grid = scan.image
    local = gaussian_postfilter(phantom.activity, grid, scan.psf_fwhm_mm)
    centre_index = (30, 40)  # grey matter, no lesion of this seed there
    assert int(phantom.labels[centre_index[0], centre_index[1], 0]) == 0
    centre = tuple(grid.origin_mm[k] + centre_index[k] * grid.voxel_size_mm[k] for k in range(2))
    peak = 1.5 * float(local[centre_index[0], centre_index[1], 0])
    planted = network + _blob(grid, centre, 10.0, peak)

    before = check_consistency(scan, network, "cpu", osem_image=osem)
    after = check_consistency(scan, planted, "cpu", osem_image=osem)
    assert all(math.dist(r.centre_mm[:2], centre) > 10.0 for r in before.regions)
    near = [r for r in after.regions if math.dist(r.centre_mm[:2], centre) < 5.0]
    assert len(near) == 1 and near[0].peak > CONSISTENCY_THRESHOLD
    assert after.count == before.count + 1


def _infer_module():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("pet_dl_infer_cli_c", ROOT / "infer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_infer_writes_the_map_and_one_warning_line(
    tmp_path: Path, generator: torch.Generator, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """infer.py writes <scan>_consistency.nii.gz (the z map of reconstruct_and_check, on
    the scan's grid) and one warning line naming the count of flagged regions;
    --no-data-check writes neither. The network's image is replaced by the truth with a
    false blob (the network itself is not under test here), so the map must flag it."""
    from pet_dl import inference
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.io.nifti import load_nifti
    from pet_dl.io.scanfile import write_scan
    from pet_dl.models import build_model

    truth = _disk((32, 32))
    scan = _disk_scan(generator, 5e5, truth)
    planted = truth + _blob(scan.image, (-15.0, 9.0), 10.0, 1500.0)
    config = {"name": "unrolled_em", "spatial_dims": 2, "num_iterations": 1, "channels": [4, 8],
              "strides": [2], "init_iterations": 2}
    torch.manual_seed(0)
    meta = {"sinogram": scan.sinogram.to_dict(), "image": scan.image.to_dict()}
    ckpt = save_checkpoint(tmp_path / "model.safetensors", build_model(config), config, meta)
    write_scan(tmp_path / "p1.h5", scan)
    monkeypatch.setattr(inference, "reconstruct_with_network", lambda *a, **k: planted.clone())

    args = [str(tmp_path / "p1.h5"), "--checkpoint", str(ckpt), "--device", "cpu", "--format", "nifti"]
    assert _infer_module().main([*args, "--out", str(tmp_path / "a")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    image, fit = inference.reconstruct_and_check(scan, inference.load_model(ckpt, torch.device("cpu")), device="cpu")
    maps = fit.consistency
    assert isinstance(maps, ConsistencyMap) and maps.count >= 1
    assert math.dist(maps.regions[0].centre_mm[:2], (-15.0, 9.0)) < 5.0
    z, geometry = load_nifti(tmp_path / "a" / "p1_consistency.nii.gz")
    assert geometry == scan.image
    torch.testing.assert_close(torch.as_tensor(z).float(), maps.z, rtol=1e-5, atol=1e-5)
    assert len(warnings) == 1
    assert warnings[0].startswith(f"warning: p1: {maps.count} region")
    assert "p1_consistency.nii.gz" in warnings[0]
    assert _infer_module().main([*args, "--out", str(tmp_path / "b"), "--no-data-check"]) == 0
    assert "warning:" not in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["p1.nii.gz"]


class _Context:
    """The part of TorchServe's Context that the handler's respond() uses."""

    def __init__(self, accept: str | None = None) -> None:
        self.request = {} if accept is None else {"Accept": accept}
        self.headers: dict[str, str] = {}

    def get_all_request_header(self, index: int) -> dict[str, str]:
        return self.request

    def set_response_header(self, index: int, key: str, value: str) -> None:
        self.headers[key] = value

    def set_response_content_type(self, index: int, value: str) -> None:
        self.headers["content-type"] = value


def test_handler_response_carries_the_count(
    tmp_path: Path, generator: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TorchServe handler (no server: its inference and postprocess steps) answers with
    the image and headers naming the flagged-region count of reconstruct_and_check; with
    Accept: application/zip, a zip whose consistency.nii.gz is the map."""
    pytest.importorskip("ts", reason="needs the serve extra (TorchServe)")
    import io
    import json
    import zipfile

    from pet_dl import inference
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.io.nifti import load_nifti
    from pet_dl.models import build_model
    from pet_dl.serving import handler as serving

    truth = _disk((32, 32))
    scan = _disk_scan(generator, 5e5, truth)
    planted = truth + _blob(scan.image, (12.0, 15.0), 10.0, 1500.0)
    config = {"name": "unrolled_em", "spatial_dims": 2, "num_iterations": 1, "channels": [4, 8],
              "strides": [2], "init_iterations": 2}
    torch.manual_seed(0)
    meta = {"sinogram": scan.sinogram.to_dict(), "image": scan.image.to_dict()}
    path = save_checkpoint(tmp_path / "m.safetensors", build_model(config), config, meta)
    loaded = inference.load_model(path, torch.device("cpu"))
    monkeypatch.setattr(inference, "reconstruct_with_network", lambda *a, **k: planted.clone())
    _, fit = inference.reconstruct_and_check(scan, loaded, device="cpu")
    assert fit.consistency is not None and fit.consistency.count >= 1

    worker = serving.PetReconHandler()
    worker.loaded = loaded
    for accept in (None, "application/zip"):
        worker.context = _Context(accept)
        body = worker.postprocess(worker.inference([scan]))[0]
        headers = worker.context.headers
        assert headers["X-PET-DL-Flagged-Regions"] == str(fit.consistency.count)
        assert float(headers["X-PET-DL-Data-Fit"]) == pytest.approx(fit.ratio, rel=1e-3)
        regions = json.loads(headers["X-PET-DL-Regions"])
        assert math.dist(regions[0]["centre_mm"][:2], (12.0, 15.0)) < 5.0
        assert headers["X-PET-DL-Warning"].startswith(f"warning: scan: {fit.consistency.count} region")
        if accept is None:
            assert headers["content-type"] == serving.NIFTI_CONTENT_TYPE
            (tmp_path / "served.nii.gz").write_bytes(body)
            image, _ = load_nifti(tmp_path / "served.nii.gz")
            torch.testing.assert_close(torch.as_tensor(image).float(), planted)
        else:
            assert headers["content-type"] == "application/zip"
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                assert sorted(archive.namelist()) == ["check.json", "consistency.nii.gz", "image.nii.gz"]
                (tmp_path / "map.nii.gz").write_bytes(archive.read("consistency.nii.gz"))
                check = json.loads(archive.read("check.json"))
            z, geometry = load_nifti(tmp_path / "map.nii.gz")
            assert geometry == scan.image and check["flagged_regions"] == fit.consistency.count
            torch.testing.assert_close(torch.as_tensor(z).float(), fit.consistency.z)


def test_warning_line_names_the_count() -> None:
    """data_check_warning: one line; the region count and the strongest region; the global
    ratio only when above its limit; None when both pass."""
    from pet_dl.consistency import Region
    from pet_dl.data_check import DataFit, data_check_warning
    region = Region((10.0, -20.0, 0.0), 6.5, (10.0, -20.0, 0.0), 5)
    maps = ConsistencyMap(torch.zeros(2, 2, 1), (region, region), 4.0)
    line = data_check_warning("s1", DataFit(1.0, 1.0, 1.0, consistency=maps))
    assert line is not None and "\n" not in line
    assert line.startswith("warning: s1: 2 regions") and "z 6.5 at (10, -20, 0) mm" in line
    assert "worse than OSEM" not in line
    both = data_check_warning("s1", DataFit(2.0, 1.0, 2.0, consistency=maps))
    assert "2 regions" in both and "2.00 x worse than OSEM" in both
    empty = ConsistencyMap(torch.zeros(2, 2, 1), (), 4.0)
    assert data_check_warning("s1", DataFit(1.0, 1.0, 1.0, consistency=empty)) is None
