"""Tests of ``python -m pet_dl`` simulate / recon: round trip, units, bad input, no partial output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pet_dl.cli import main

SHAPE = (40, 40, 1)
VOXEL = 3.0


def _inputs(folder: Path, mu_scale: float = 1.0, activity_offset: float = 0.0, z0: float = 0.0):
    """A 2D water disk (radius 45 mm, 2000 Bq/mL) on a 40x40 grid of 3 mm, as NIfTI files."""
    from dataclasses import replace

    from pet_dl.geometry import ImageGeometry
    from pet_dl.io.nifti import save_nifti

    image = ImageGeometry.centered(SHAPE, VOXEL)
    image = replace(image, origin_mm=(image.origin_mm[0], image.origin_mm[1], z0))
    c = torch.as_tensor(image.voxel_centers(0), dtype=torch.float32)
    disk = (c[:, None] ** 2 + c[None, :] ** 2 <= 45.0**2).float()[..., None]
    activity, mu = folder / "act.nii.gz", folder / "mu.nii.gz"
    save_nifti(activity, 2000.0 * disk + activity_offset, image)
    save_nifti(mu, 0.0096 * mu_scale * disk, image, units="1/mm")
    return activity, mu, disk


def _simulate(tmp_path: Path, *extra: str, out: str = "scan.h5", **kw) -> tuple[int, Path]:
    activity, mu, _ = _inputs(tmp_path, **kw)
    path = tmp_path / out
    argv = ["simulate", "--activity", str(activity), "--mu", str(mu), "--scanner", "test",
            "--duration", "600", "--seed", "1", "--out", str(path), *extra]
    return main(argv), path


def _assert_one_line_error(capsys: pytest.CaptureFixture[str], code: int, *words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


def test_simulate_and_recon_round_trip(tmp_path: Path) -> None:
    """The image comes back in Bq/mL on the scan's grid, with that grid's affine."""
    import nibabel as nib

    from pet_dl.io.scanfile import read_scan

    code, scan_path = _simulate(tmp_path, "--psf-fwhm", "0", z0=7.5)
    assert code == 0
    scan = read_scan(scan_path)
    assert scan.sinogram.num_planes == 1  # one slice -> 2D (direct plane)
    assert scan.image.origin_mm[2] == 0.0  # the slice is placed at z = 0
    out = tmp_path / "img.nii.gz"
    assert main(["recon", str(scan_path), "--algorithm", "osem", "--iterations", "5",
                 "--subsets", "4", "--postfilter-fwhm", "6", "--out", str(out)]) == 0
    img = nib.load(str(out))
    np.testing.assert_allclose(img.affine, scan.image.affine(), rtol=0, atol=1e-5)
    data = np.asarray(img.get_fdata())
    assert data.shape == SHAPE
    centre = data[14:26, 14:26, 0]  # well inside the disk
    assert centre.mean() == pytest.approx(2000.0, rel=0.05)


def test_dose_fraction_thins_the_same_acquisition(tmp_path: Path) -> None:
    from pet_dl.io.scanfile import read_scan

    assert _simulate(tmp_path, out="full.h5")[0] == 0
    assert _simulate(tmp_path, "--dose-fraction", "0.25", out="low.h5")[0] == 0
    assert _simulate(tmp_path, "--scan-time", "0.5", out="short.h5")[0] == 0
    full, low, short = (read_scan(tmp_path / n) for n in ("full.h5", "low.h5", "short.h5"))
    assert bool((low.prompts <= full.prompts).all())  # binomial thinning of one realisation
    assert float(low.prompts.sum()) == pytest.approx(0.25 * float(full.prompts.sum()), rel=0.02)
    assert low.metadata.dose_fraction == pytest.approx(0.25)
    assert low.calibration == pytest.approx(0.25 * full.calibration, rel=1e-9)
    assert short.metadata.duration_s == pytest.approx(300.0)
    assert short.metadata.dose_fraction == 1.0


def test_recon_mlem_and_map_write_images(tmp_path: Path) -> None:
    import nibabel as nib

    _, scan_path = _simulate(tmp_path)
    for algo, extra in (("mlem", []), ("map", ["--beta", "0.01"])):
        out = tmp_path / f"{algo}.nii"
        assert main(["recon", str(scan_path), "--algorithm", algo, "--iterations", "3", *extra,
                     "--out", str(out)]) == 0
        data = np.asarray(nib.load(str(out)).get_fdata())
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() > 0


@pytest.mark.parametrize(
    ("extra", "kwargs", "words"),
    [
        (["--dose-fraction", "1.5"], {}, ["dose-fraction"]),
        (["--dose-fraction", "0"], {}, ["dose-fraction"]),
        (["--scan-time", "-1"], {}, ["scan-time"]),
        (["--scatter-fraction", "1.2"], {}, ["scatter_fraction"]),
        ([], {"mu_scale": 10.0}, ["1/cm"]),
        ([], {"activity_offset": -5.0}, ["negative"]),
        (["--scanner", "nosuch"], {}, ["nosuch"]),
    ],
)
def test_simulate_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra, kwargs, words
) -> None:
    code, out = _simulate(tmp_path, *extra, **kwargs)
    _assert_one_line_error(capsys, code, *words)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".h5" or ".tmp" in p.name] == []


def test_simulate_rejects_hounsfield_and_missing_files(tmp_path: Path, capsys) -> None:
    from pet_dl.geometry import ImageGeometry
    from pet_dl.io.nifti import save_nifti

    activity, _, disk = _inputs(tmp_path)
    hu = tmp_path / "hu.nii.gz"
    save_nifti(hu, -1000.0 + 1000.0 * disk, ImageGeometry.centered(SHAPE, VOXEL))
    out = tmp_path / "scan.h5"
    code = main(["simulate", "--activity", str(activity), "--mu", str(hu), "--scanner", "test",
                 "--out", str(out)])
    _assert_one_line_error(capsys, code, "hounsfield")
    code = main(["simulate", "--activity", str(tmp_path / "missing.nii.gz"), "--mu", str(hu),
                 "--out", str(out)])
    _assert_one_line_error(capsys, code, "missing.nii.gz")
    assert not out.exists()


def test_recon_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, scan_path = _simulate(tmp_path)
    capsys.readouterr()  # the summary line of the good simulation
    out = tmp_path / "img.nii.gz"
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(scan_path.read_bytes()[:2000])  # truncated file
    cases = [
        ([str(corrupt)], []),
        ([str(tmp_path / "nosuch.h5")], ["nosuch.h5"]),
        ([str(scan_path), "--algorithm", "map"], ["beta"]),
        ([str(scan_path), "--subsets", "0"], ["subsets"]),
        ([str(scan_path), "--subsets", "5000"], ["subsets"]),
        ([str(scan_path), "--device", "tpu"], ["device"]),
    ]
    for argv, words in cases:
        code = main(["recon", *argv, "--out", str(out)])
        _assert_one_line_error(capsys, code, *words)
        assert not out.exists()
    code = main(["recon", str(scan_path), "--out", str(tmp_path / "img.png")])
    _assert_one_line_error(capsys, code, ".nii")
    assert not any(".tmp" in p.name for p in tmp_path.iterdir())


def test_recon_into_a_read_only_folder_and_out_of_memory_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    _, scan_path = _simulate(tmp_path)
    capsys.readouterr()
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: the rename into the folder fails as it would
        import pet_dl.io.atomic

        def refuse(src: object, dst: object) -> None:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src))

        monkeypatch.setattr(pet_dl.io.atomic.os, "replace", refuse)
    code = main(["recon", str(scan_path), "--iterations", "1", "--out", str(folder / "img.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {folder / 'img.nii.gz'}: {os.strerror(errno.EACCES)}\n"
    monkeypatch.undo()
    folder.chmod(0o755)
    assert list(folder.iterdir()) == []  # the temporary file is gone too

    import pet_dl.recon

    def exhausted(*args: object, **kwargs: object) -> None:
        raise MemoryError()

    monkeypatch.setattr(pet_dl.recon, "reconstruct_classical", exhausted)
    code = main(["recon", str(scan_path), "--out", str(tmp_path / "img.nii.gz")])
    _assert_one_line_error(capsys, code, "out of memory")
    assert not (tmp_path / "img.nii.gz").exists()
    # torch's CPU allocator says so with a RuntimeError: the same one line
    message = "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"

    def torch_exhausted(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"{message}: you tried to allocate 140737488355328 bytes.")

    monkeypatch.setattr(pet_dl.recon, "reconstruct_classical", torch_exhausted)
    code = main(["recon", str(scan_path), "--out", str(tmp_path / "img.nii.gz")])
    _assert_one_line_error(capsys, code, "out of memory", "can't allocate")

    def bug(*args: object, **kwargs: object) -> None:
        raise RuntimeError("an internal error")

    monkeypatch.setattr(pet_dl.recon, "reconstruct_classical", bug)
    with pytest.raises(RuntimeError, match="internal"):  # anything else is still a bug
        main(["recon", str(scan_path), "--out", str(tmp_path / "img.nii.gz")])


def test_module_entry_point_help() -> None:
    done = subprocess.run([sys.executable, "-m", "pet_dl", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0
    for command in ("simulate", "recon", "demo"):
        assert command in done.stdout
    done = subprocess.run([sys.executable, "-m", "pet_dl", "recon", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--postfilter-fwhm" in done.stdout


def test_simulate_can_make_a_scan_the_shipped_model_accepts(tmp_path: Path) -> None:
    """--num-radial / --view-mashing / grid options reproduce the shipped model's geometry."""
    from pet_dl.inference import check_compatible, shipped_checkpoint
    from pet_dl.io.checkpoint import read_checkpoint_header
    from pet_dl.io.scanfile import read_scan

    out = tmp_path / "scan.h5"
    assert main(["simulate", "--phantom", "brain", "--image-shape", "96", "96", "1",
                 "--voxel-size", "2.6", "--num-radial", "128", "--view-mashing", "2",
                 "--psf-fwhm", "4.5", "--dose-fraction", "0.05", "--seed", "3",
                 "--out", str(out)]) == 0
    scan = read_scan(out)
    assert scan.sinogram.shape == (1, 126, 128)
    check_compatible(scan, read_checkpoint_header(shipped_checkpoint())[1])
    # and without them, the default full mMR layout is refused with the mismatch named
    default = tmp_path / "default.h5"
    assert main(["simulate", "--phantom", "brain", "--image-shape", "96", "96", "1",
                 "--voxel-size", "2.6", "--seed", "3", "--out", str(default)]) == 0
    with pytest.raises(ValueError, match="views"):
        check_compatible(read_scan(default), read_checkpoint_header(shipped_checkpoint())[1])


def test_infer_leaves_no_output_folder_after_a_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "pet_dl_infer_cli", Path(__file__).resolve().parents[1] / "infer.py"
    )
    assert spec is not None and spec.loader is not None
    infer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(infer)
    _, scan_path = _simulate(tmp_path)  # the test scanner: the shipped model refuses it
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(scan_path.read_bytes()[:2000])
    capsys.readouterr()
    for scan, words in ((scan_path, "model was trained for"), (corrupt, "truncated or corrupt")):
        out = tmp_path / "new" / "deeper" / "out"
        assert infer.main([str(scan), "--out", str(out), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
        assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert infer.main([str(corrupt), "--out", str(kept / "out"), "--device", "cpu"]) == 2
    assert kept.is_dir() and list(kept.iterdir()) == []  # a folder that was there stays
