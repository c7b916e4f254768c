"""The demo (``make demo``) runs in the suite on a reduced size, so it cannot rot."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from pet_dl.demo import DemoSettings, run_demo


def test_demo_writes_readable_outputs_and_full_dose_wins(tmp_path: Path) -> None:
    import nibabel as nib
    from matplotlib.image import imread

    from pet_dl.io.scanfile import read_scan

    settings = DemoSettings(image_shape=(48, 48, 1), voxel_size_mm=5.2, view_mashing=4,
                            num_iterations=3, num_subsets=3)
    result = run_demo(tmp_path / "demo", settings, network=False)
    names = {p.name for p in result.files}
    assert {"truth.nii.gz", "osem_full.nii.gz", "osem_dose20.nii.gz", "scan_full.h5",
            "scan_dose20.h5", "comparison.png", "sinograms.png", "metrics.md",
            "metrics.csv"} <= names
    for p in result.files:
        assert p.is_file() and p.stat().st_size > 0
    assert not any(".tmp" in p.name for p in (tmp_path / "demo").iterdir())

    # images read back on the phantom's grid, in Bq/mL
    truth_img = nib.load(str(tmp_path / "demo" / "truth.nii.gz"))
    truth = np.asarray(truth_img.get_fdata())
    full = np.asarray(nib.load(str(tmp_path / "demo" / "osem_full.nii.gz")).get_fdata())
    assert truth.shape == full.shape == (48, 48, 1)
    np.testing.assert_allclose(truth_img.affine[:3, :3], np.diag([5.2] * 3), rtol=1e-6)
    assert full.sum() == pytest.approx(truth.sum(), rel=0.1)  # Bq/mL, no rescaling

    # the two scans are one acquisition at two count levels
    scan_full = read_scan(tmp_path / "demo" / "scan_full.h5")
    scan_low = read_scan(tmp_path / "demo" / "scan_dose20.h5")
    assert scan_low.metadata.dose_fraction == pytest.approx(0.05)
    assert float(scan_low.prompts.sum()) == pytest.approx(0.05 * float(scan_full.prompts.sum()), rel=0.05)

    # PNG: one panel per image
    png = imread(str(tmp_path / "demo" / "comparison.png"))
    assert png.shape[1] > 2 * png.shape[0]
    sino_png = imread(str(tmp_path / "demo" / "sinograms.png"))  # two sinograms side by side
    assert sino_png.shape[1] > 1.5 * sino_png.shape[0]

    # metrics: the table agrees with the images; full dose beats 1/20 dose
    with open(tmp_path / "demo" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["dose"]) for r in rows] == [("OSEM", "full"), ("OSEM", "1/20")]
    nrmse_full, nrmse_low = (float(r["nrmse"]) for r in rows)
    assert nrmse_full < nrmse_low
    assert nrmse_full == pytest.approx(np.linalg.norm(full - truth) / np.linalg.norm(truth), rel=1e-4)
    assert float(rows[0]["psnr_db"]) > float(rows[1]["psnr_db"])
    assert "| OSEM | 1/20 |" in (tmp_path / "demo" / "metrics.md").read_text()


@pytest.mark.slow
def test_demo_command_full_size(tmp_path: Path) -> None:
    """``python -m pet_dl demo`` as ``make demo`` runs it (with the network when installed)."""
    from pet_dl.cli import main

    out = tmp_path / "demo_out"
    assert main(["demo", "--out", str(out)]) == 0
    with open(out / "metrics.csv") as f:
        rows = {(r["method"], r["dose"]): float(r["nrmse"]) for r in csv.DictReader(f)}
    assert rows[("OSEM", "full")] < rows[("OSEM", "1/20")]
    if ("network", "1/20") in rows:  # the shipped model is installed
        assert (out / "network_dose20.nii.gz").is_file()
        assert rows[("network", "1/20")] < rows[("OSEM", "1/20")]


def test_demo_adds_network_columns_when_a_model_is_installed(tmp_path: Path, monkeypatch) -> None:
    """With ``pet_dl.inference.reconstruct_with_network`` and a shipped model, both doses get a network column."""
    import pet_dl.demo as demo
    from pet_dl.recon import reconstruct_classical

    calls = []

    def fake_network(scan, checkpoint, device):  # stands in for pet_dl.inference.reconstruct_with_network
        calls.append((float(scan.metadata.dose_fraction), checkpoint, device))
        return reconstruct_classical(scan, "osem", num_iterations=2, num_subsets=3, postfilter_fwhm_mm=10.0)

    monkeypatch.setattr(demo, "_network", lambda: (fake_network, ""))
    settings = DemoSettings(image_shape=(48, 48, 1), voxel_size_mm=5.2, view_mashing=4,
                            num_iterations=2, num_subsets=3)
    result = run_demo(tmp_path, settings)
    assert calls == [(1.0, None, "cpu"), (0.05, None, "cpu")]  # the shipped model, both doses
    assert [(r["method"], r["dose"]) for r in result.rows] == [
        ("OSEM", "full"), ("OSEM", "1/20"), ("network", "full"), ("network", "1/20")]
    for name in ("network_full.nii.gz", "network_dose20.nii.gz"):
        assert (tmp_path / name).is_file()
    assert not any("network" in note for note in result.notes)
    with pytest.raises(ValueError, match="network"):
        monkeypatch.setattr(demo, "_network", lambda: (None, "network column skipped: no model"))
        run_demo(tmp_path / "again", settings, network=True)


def test_demo_shows_a_held_out_brainweb_subject(tmp_path: Path, monkeypatch, test_data: Path) -> None:
    """With the BrainWeb files the demo's truth is a slice of test subject 04 (real folding:
    grey matter in many thin pieces), and says so; without them, the synthetic brain and a note."""
    monkeypatch.setenv("PET_DL_BRAINWEB", str(test_data / "brainweb"))
    settings = DemoSettings(image_shape=(48, 48, 1), voxel_size_mm=5.2, view_mashing=4,
                            num_iterations=2, num_subsets=3)
    result = run_demo(tmp_path / "bw", settings, network=False)
    assert any("BrainWeb subject 04" in note for note in result.notes)
    synthetic = run_demo(tmp_path / "syn", DemoSettings(**{**settings.__dict__, "phantom": "brain"}), network=False)
    assert not torch.equal(result.images["truth"], synthetic.images["truth"])
    monkeypatch.delenv("PET_DL_BRAINWEB")
    monkeypatch.delenv("PET_DL_TEST_DATA", raising=False)
    fallback = run_demo(tmp_path / "fb", settings, network=False)
    assert any("synthetic brain phantom shown" in note for note in fallback.notes)
    assert torch.equal(fallback.images["truth"], synthetic.images["truth"])
    with pytest.raises(ValueError, match="PET_DL_BRAINWEB"):
        run_demo(tmp_path / "no", DemoSettings(**{**settings.__dict__, "phantom": "brainweb"}), network=False)
