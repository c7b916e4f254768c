"""Measured data in: mMR normalisation, randoms from delayeds, mu-maps and attenuation,
``python -m pet_dl import`` (real files when PET_DL_TEST_DATA is set)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pet_dl.cli import main
from pet_dl.corrections import (
    fan_matrices,
    mu_map_to_per_mm,
    randoms_from_delayeds,
    rebinned_attenuation,
    resample_image,
    singles_from_fan_sums,
)
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.io.listmode import PetlinkLayout


def _mmr(test_data: Path) -> Path:
    return test_data / "mmr_scanner"


# ---------------------------------------------------------------------- normalisation
def test_span11_index_matches_the_vendor_segment_table() -> None:
    from pet_dl.io.mmr_norm import siemens_span11_index

    idx = siemens_span11_index(PetlinkLayout())
    assert sorted(np.unique(idx[idx >= 0]).tolist()) == list(range(837))
    # header's segment table {127,115,115,93,93,71,71,49,49,27,27}: sinograms per segment
    sizes = [127, 115, 115, 93, 93, 71, 71, 49, 49, 27, 27]
    starts = np.cumsum([0] + sizes)
    d = np.subtract.outer(np.arange(64), np.arange(64)).T  # d[a, b] = b - a
    order = [0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5]
    for s, lo, hi in zip(order, starts[:-1], starts[1:], strict=True):
        inside = (d >= 11 * s - 5) & (d <= 11 * s + 5)
        assert idx[inside].min() == lo and idx[inside].max() == hi - 1
    assert (idx[np.abs(d) > 60] == -1).all()


def test_real_norm_components_and_block_pattern(test_data: Path) -> None:
    from pet_dl.importing import mmr_sinogram
    from pet_dl.io.listmode import histogram_listmode
    from pet_dl.io.mmr_norm import expand_mmr_norm, read_mmr_norm

    norm = read_mmr_norm(_mmr(test_data) / "norm.n.hdr")
    assert norm.geometric.shape == (127, 344) and norm.efficiencies.shape == (64, 504)
    assert norm.quantification_factor == pytest.approx(1.98459e7)
    gaps = get_scanner("mmr").is_gap_crystal().numpy()
    assert (norm.efficiencies[:, gaps] == 0).all() and (norm.efficiencies[:, ~gaps] > 0.5).all()
    sino = mmr_sinogram("2d")
    factors = expand_mmr_norm(norm, sino)
    assert factors.shape == sino.shape and np.isfinite(factors).all()
    _, crystals = sino.crystal_pairs()
    gap_bin = torch.as_tensor(gaps)[crystals[0]].any(-1).numpy()
    assert (factors[0][gap_bin] == 0).all() and (factors[0][~gap_bin] > 0).all()
    assert factors.mean() == pytest.approx(1.0, rel=1e-5)
    # block pattern: the mean factor of the bins whose start crystal sits at block
    # position 1..8 (relative to their mean) follows the real prompts' pattern within
    # 5 % at every position (measured: 3.8 %); interference factors one view off would
    # miss it by 16 %
    prompts = histogram_listmode(_mmr(test_data) / "small_listmode_file.l", sino).prompts[0]
    position = (crystals[0][..., 0] % 9).numpy()
    ok = ~gap_bin

    def pattern(values: np.ndarray) -> np.ndarray:
        means = np.array([values[ok & (position == m)].mean() for m in range(1, 9)])
        return means / means.mean()

    data = pattern(prompts.astype(float))
    assert data[[0, 7]].max() < 0.95 * data[[3, 4]].min()  # edge crystals see fewer
    np.testing.assert_allclose(pattern(factors[0]), data, rtol=0.05)
    norm.interference = np.roll(norm.interference, 1, axis=1)
    assert np.abs(pattern(expand_mmr_norm(norm, sino)[0]) / data - 1).max() > 0.1


def test_norm_file_errors(tmp_path: Path) -> None:
    from pet_dl.io.mmr_norm import NormFileError, read_mmr_norm

    with pytest.raises(NormFileError, match="no such file"):
        read_mmr_norm(tmp_path / "norm.n")
    hdr = tmp_path / "norm.n.hdr"
    hdr.write_text("!INTERFILE:=\nname of data file:=norm.n\n")
    (tmp_path / "norm.n").write_bytes(b"\0" * 16)
    with pytest.raises(NormFileError, match="data offset in bytes \\[1\\]"):
        read_mmr_norm(hdr)


# ---------------------------------------------------------------------- randoms
def test_singles_recovered_from_exact_fan_sums(generator: torch.Generator) -> None:
    layout = PetlinkLayout()
    w, m = fan_matrices(layout)
    q = torch.rand(64, 504, generator=generator, dtype=torch.float64).numpy() + 0.5
    q[:, get_scanner("mmr").is_gap_crystal().numpy()] = 0.0
    fans = q * (w @ q @ m)
    est = singles_from_fan_sums(fans, layout, iterations=500, tol=1e-12)
    np.testing.assert_allclose(est, q, rtol=1e-6, atol=1e-12)


def test_real_randoms_are_smooth_and_keep_the_delayeds(test_data: Path) -> None:
    from pet_dl.importing import mmr_sinogram
    from pet_dl.io.listmode import histogram_listmode

    sino = mmr_sinogram("2d")
    h = histogram_listmode(_mmr(test_data) / "small_listmode_file.l", sino)
    randoms = randoms_from_delayeds(h.delayed_singles, sino)
    assert randoms.sum() == pytest.approx(35_320, rel=1e-4)
    assert np.isfinite(randoms).all() and (randoms >= 0).all()
    # smooth: far less bin-to-bin spread than the raw delayeds (between real bins)
    d = h.delayeds[0].astype(float)
    _, crystals = sino.crystal_pairs()
    real = ~get_scanner("mmr").is_gap_crystal()[crystals[0]].any(-1).numpy()
    both = real[:, 1:] & real[:, :-1]
    spread_r = np.abs(np.diff(randoms[0], axis=1))[both].mean()
    assert spread_r < 0.2 * np.abs(np.diff(d, axis=1))[both].mean()
    assert (randoms[0][~real] == 0).all()
    # unbiased on a coarse scale: radial profiles (summed over views, 8 bins wide)
    # agree within 4 Poisson standard deviations
    prof_r = randoms[0].sum(0).reshape(43, 8).sum(1)
    prof_d = d.sum(0).reshape(43, 8).sum(1)
    z = (prof_d - prof_r) / np.sqrt(np.maximum(prof_r, 1.0))
    assert np.abs(z).max() < 4.5


# ---------------------------------------------------------------------- mu-maps
def test_mu_units_and_resampling() -> None:
    water_cm = torch.full((8, 8, 4), 0.096)
    per_mm, units = mu_map_to_per_mm(water_cm)
    assert units == "1/cm" and torch.allclose(per_mm, torch.full_like(water_cm, 0.0096))
    assert mu_map_to_per_mm(per_mm)[1] == "1/mm"
    grid = ImageGeometry.centered((9, 7, 5), (2.0, 3.0, 4.0))
    x = torch.arange(9 * 7 * 5, dtype=torch.float32).reshape(9, 7, 5)
    assert torch.allclose(resample_image(x, grid, grid), x, atol=1e-4)
    # half a voxel along x: the mean of the neighbours
    shifted = ImageGeometry((8, 7, 5), grid.voxel_size_mm,
                            (grid.origin_mm[0] + 1.0, grid.origin_mm[1], grid.origin_mm[2]))
    assert torch.allclose(resample_image(x, grid, shifted), (x[:-1] + x[1:]) / 2, atol=1e-4)
    # outside the source: zero
    far = ImageGeometry((3, 3, 3), (1.0, 1.0, 1.0), (500.0, 0.0, 0.0))
    assert float(resample_image(x, grid, far).abs().max()) == 0.0


def test_rebinned_attenuation_of_a_water_cylinder() -> None:
    radius, mu = 100.0, 0.0096
    src = ImageGeometry.centered((101, 101, 3), (2.5, 2.5, 200.0))
    xy = (torch.arange(101, dtype=torch.float64) - 50) * 2.5
    inside = (xy[:, None] ** 2 + xy[None, :] ** 2) <= radius**2
    mu_map = (inside[..., None].expand(101, 101, 3) * mu).float()
    sino = SinogramGeometry.two_d(get_scanner("mmr"))
    image = ImageGeometry.centered((160, 160, 1), (2.0, 2.0, 4.0))
    att = rebinned_attenuation(mu_map, src, sino, image, axial_fov_mm=200.0, num_slices=4)
    centre = sino.num_radial // 2
    assert float(att[0, :, centre].mean()) == pytest.approx(math.exp(-mu * 2 * radius), rel=0.02)
    assert float(att[0, :, :40].min()) == pytest.approx(1.0)  # LORs outside the cylinder


# ---------------------------------------------------------------------- command line
def test_import_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--norm", "--mu-map", "--frame-start", "--frame-duration", "--span", "--out"):
        assert option in out


def test_import_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pet_dl.commands.import_scan import _reader
    from pet_dl.errors import InvalidInputError

    odd = tmp_path / "x.txt"
    odd.write_text("x")
    assert main(["import", str(odd), "--out", str(tmp_path / "s.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "unknown input type" in err and err.count("\n") == 1
    assert main(["import", str(tmp_path / "missing.l"), "--out", str(tmp_path / "s.h5")]) == 2
    assert "no such file" in capsys.readouterr().err
    lm = tmp_path / "acq.l"
    lm.write_bytes(b"\0" * 8)
    assert main(["import", str(lm), "--scatter", "--out", str(tmp_path / "s.h5")]) == 2
    assert "--scatter needs --mu-map and --span 2d" in capsys.readouterr().err
    with pytest.raises(InvalidInputError, match="lacks"):
        _reader("pet_dl.io.no_such_reader", "read", "PETSIRD")
    assert not (tmp_path / "s.h5").exists()


def test_import_real_listmode_2d(test_data: Path, tmp_path: Path, capsys) -> None:
    from pet_dl.io.scanfile import read_scan

    d = _mmr(test_data)
    out = tmp_path / "real.h5"
    assert main(["import", str(d / "small_listmode_file.l"), "--span", "2d",
                 "--norm", str(d / "norm.n.hdr"), "--frame-duration", "0.3", "--out", str(out)]) == 0
    assert "randoms" in capsys.readouterr().err
    scan = read_scan(out)
    assert scan.sinogram.shape == (1, 252, 344) and scan.image.shape == (172, 172, 1)
    assert scan.metadata.duration_s == pytest.approx(0.3)
    assert scan.metadata.tracer == "FDG" and scan.metadata.injected_activity_bq == 4.65e7
    assert scan.metadata.acquisition_start == "2017-03-27T17:00:35"
    assert scan.metadata.injection_time == "2017-03-27T16:07:00"
    assert float(scan.additive.sum()) == pytest.approx(float(scan.metadata.extra["delayeds"]), rel=1e-4)
    # prompts are zero wherever the multiplicative factor is (gap bins) and the factor is
    # positive elsewhere
    zero = scan.multiplicative == 0
    assert float(scan.prompts[zero].sum()) == 0.0 and bool((scan.multiplicative[~zero] > 0).all())
    # calibration: one span-1 LOR of the simulator's sensitivity model for 0.3 s
    from pet_dl.importing import mmr_sinogram
    from pet_dl.simulate import calibration_per_second

    assert scan.calibration == pytest.approx(calibration_per_second(mmr_sinogram("1")) * 0.3)


@pytest.mark.slow
def test_demo_real_writes_its_report(test_data: Path, tmp_path: Path) -> None:
    from pet_dl.demo_real import run_demo_real

    d = _mmr(test_data)
    result = run_demo_real(d / "small_listmode_file.l", tmp_path, norm=d / "norm.n.hdr", network=False)
    for name in ("scan_real.h5", "osem.nii.gz", "real_images.png", "real_sinograms.png", "report.md"):
        assert (tmp_path / name).is_file()
    assert result["prompts"] == 218_881 and result["delayeds"] == 35_320
    assert 0.0 < result["randoms_fraction"] < 0.35
    assert result["images"]["OSEM"]["mean_bqml"] > 0
    assert "218,881" in (tmp_path / "report.md").read_text()
