"""pet_dl.inference.reconstruct_with_network: physics consistency, units, geometry refusal, bad data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from pet_dl.errors import GeometryError, InvalidInputError
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.inference import check_scan, reconstruct_with_network
from pet_dl.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pet_dl.models import build_model
from pet_dl.scan import AcquisitionMetadata, Scan

CONFIG: dict[str, Any] = {
    "name": "unrolled_em",
    "spatial_dims": 2,
    "num_iterations": 2,
    "channels": [4, 8],
    "strides": [2],
    "init_iterations": 2,
    # softplus(-40) ~ 4e-18: the CNN has no say, the network is exactly EM (tested below).
    "initial_fusion_weight": -40.0,
}


def disk_with_hot_spot(image: ImageGeometry, spot_x: float = 0.3) -> torch.Tensor:
    """``(nx, ny, 1)`` Bq/mL: a 1000 Bq/mL disk with a 3000 Bq/mL spot at ``x = spot_x``."""
    x = torch.linspace(-1, 1, image.shape[0])
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    spot = (x[:, None] - spot_x) ** 2 + x[None, :] ** 2 < 0.02
    return ((r2 < 0.6) * 1000.0 + spot * 3000.0).unsqueeze(-1).float()


def make_scan(
    generator: torch.Generator,
    sinogram: SinogramGeometry | None = None,
    image: ImageGeometry | None = None,
    counts: float = 2e5,
) -> Scan:
    """A small 2D scan of a disk with a hot spot, Poisson counts (test scanner)."""
    sinogram = sinogram or SinogramGeometry.two_d(get_scanner("test"), num_radial=65)
    image = image or ImageGeometry.centered((24, 24, 1), (4.0, 4.0, 4.0))
    activity = disk_with_hot_spot(image)
    mult = 0.5 + 0.5 * torch.rand(sinogram.shape, generator=generator)
    base = Scan(
        sinogram=sinogram,
        image=image,
        prompts=torch.zeros(sinogram.shape),
        multiplicative=mult,
        additive=torch.zeros(sinogram.shape),
        calibration=1.0,
        psf_fwhm_mm=0.0,
        metadata=AcquisitionMetadata(duration_s=300.0, patient_weight_kg=70.0),
    )
    ybar = base.forward_model()(activity)
    calibration = counts / float(ybar.sum())
    additive = torch.full(sinogram.shape, 0.2 * counts / ybar.numel())
    ybar = ybar * calibration + additive
    prompts = torch.poisson(ybar, generator=generator)
    return replace(base, prompts=prompts, additive=additive, calibration=calibration)


def make_checkpoint(
    tmp_path: Path, generator: torch.Generator, scan: Scan, config: dict[str, Any] = CONFIG
) -> Path:
    torch.manual_seed(0)  # MONAI layers initialise from the global generator
    model = build_model(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "fusion" not in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    meta = {"sinogram": scan.sinogram.to_dict(), "image": scan.image.to_dict()}
    return save_checkpoint(tmp_path / "model.safetensors", model, config, meta)


def test_network_without_regulariser_is_mlem(
    tmp_path: Path, generator: torch.Generator, device: torch.device
) -> None:
    """Fusion weight ~ 0: the unrolled net is MLEM on the scan's own forward model, so every
    physics input (multiplicative, additive, calibration) must reach the model intact."""
    from pet_dl.models import initial_image
    from pet_dl.recon import mlem

    scan = make_scan(generator)
    path = make_checkpoint(tmp_path, generator, scan)
    got = reconstruct_with_network(scan, path, device=device)
    assert got.shape == scan.image.shape and got.dtype == torch.float32
    assert got.device.type == "cpu"
    model = scan.forward_model()
    with torch.no_grad():
        x0 = initial_image(model, scan.prompts.unsqueeze(0), CONFIG["init_iterations"])
        ref = mlem(model, scan.prompts, CONFIG["num_iterations"], x0=x0[0])
    torch.testing.assert_close(got, ref.float(), rtol=1e-4, atol=1e-4 * float(ref.max()))
    # Bq/mL: the 1000 Bq/mL disk background comes back near 1000 (few EM iterations).
    x = torch.linspace(-1, 1, scan.image.shape[0])
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    background = (r2 < 0.4) & ((x[:, None] - 0.3) ** 2 + x[None, :] ** 2 > 0.1)
    assert float(got[..., 0][background].mean()) == pytest.approx(1000.0, rel=0.15)


def test_result_is_in_bq_per_ml(tmp_path: Path, generator: torch.Generator) -> None:
    """Doubling the calibration (counts per Bq/mL) with the same counts halves the image."""
    scan = make_scan(generator)
    loaded = load_checkpoint(
        make_checkpoint(tmp_path, generator, scan, dict(CONFIG, initial_fusion_weight=0.5)), builder=build_model
    )
    a = reconstruct_with_network(scan, loaded, device="cpu")
    b = reconstruct_with_network(replace(scan, calibration=2.0 * scan.calibration), loaded, device="cpu")
    torch.testing.assert_close(b, a / 2.0, rtol=1e-4, atol=1e-4 * float(a.max()))
    assert float((a - reconstruct_with_network(scan, loaded, device="cpu")).abs().max()) == 0.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_radial": 33}, "scan has 33 radial bins, model was trained for 65"),
        ({"view_mashing": 2}, "scan has 28 views, model was trained for 56"),
        ({"scanner": "mmr"}, "scanner 'mmr'"),
    ],
)
def test_other_sinogram_geometry_is_refused(
    tmp_path: Path, generator: torch.Generator, change: dict[str, Any], message: str
) -> None:
    scan = make_scan(generator)
    path = make_checkpoint(tmp_path, generator, scan)
    scanner = get_scanner(change.pop("scanner", "test"))
    kw = {"num_radial": 65, **change}
    sino = SinogramGeometry.two_d(scanner, **kw)
    image = ImageGeometry.centered((24, 24, 1), (4.0, 4.0, 4.0))
    other = make_scan(generator, sino, image)
    with pytest.raises(GeometryError, match=message):
        reconstruct_with_network(other, path, device="cpu")


def test_other_image_grid_is_reconstructed_on_the_models_and_resampled(
    tmp_path: Path, generator: torch.Generator
) -> None:
    """A scan asking for another grid (issue 18: any grid) gets the model's reconstruction
    resampled onto it: the scan's shape, and the same activity where both grids cover it."""
    scan = make_scan(generator)
    path = make_checkpoint(tmp_path, generator, scan)
    same = reconstruct_with_network(scan, path, device="cpu")
    other = replace(scan, image=ImageGeometry.centered((20, 20, 1), (4.0, 4.0, 4.0)))
    got = reconstruct_with_network(other, path, device="cpu")
    assert got.shape == (20, 20, 1)
    # the 20 x 20 grid is the central part of the model's 24 x 24 one at the same voxel size
    torch.testing.assert_close(got[..., 0], same[2:22, 2:22, 0], rtol=0.05, atol=0.05 * float(same.max()))


def test_checkpoint_without_geometry_is_refused(tmp_path: Path, generator: torch.Generator) -> None:
    scan = make_scan(generator)
    path = save_checkpoint(tmp_path / "m.safetensors", build_model(CONFIG), CONFIG, {})
    with pytest.raises(CheckpointError, match="training sinogram/image geometry"):
        reconstruct_with_network(scan, path, device="cpu")


def _with(scan: Scan, **kw: Any) -> Scan:
    return replace(scan, **kw)


def test_bad_scan_data(generator: torch.Generator) -> None:
    scan = make_scan(generator)
    nan = scan.prompts.clone()
    nan[0, 0, 0] = float("nan")
    neg = scan.prompts.clone()
    neg[0, 1, 2] = -1.0
    inf = scan.multiplicative.clone()
    inf[0, 0, 1] = float("inf")
    cases = [
        (_with(scan, prompts=nan), "prompts has NaN or Inf"),
        (_with(scan, prompts=neg), "prompts has negative values"),
        (_with(scan, multiplicative=inf), "multiplicative has NaN or Inf"),
        (_with(scan, prompts=torch.zeros_like(scan.prompts)), "no counts"),
        (_with(scan, additive=scan.additive[:, :10]), "additive has shape"),
        (_with(scan, calibration=0.0), "calibration must be positive"),
        (_with(scan, metadata=replace(scan.metadata, dose_fraction=1.5)), "dose_fraction"),
    ]
    for bad, message in cases:
        with pytest.raises(InvalidInputError, match=message):
            check_scan(bad)


def test_cuda_request_without_cuda(generator: torch.Generator, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    scan = make_scan(generator)
    with pytest.raises(InvalidInputError, match="no CUDA device"):
        reconstruct_with_network(scan, make_checkpoint(tmp_path, generator, scan), device="cuda")


# ------------------------------------------------------------------ infer.py (command line)

ROOT = Path(__file__).resolve().parents[1]


def _infer_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("pet_dl_infer_cli", ROOT / "infer.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _replace_dataset(path: Path, name: str, values: Any) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        del f[name]
        f.create_dataset(name, data=values)


@pytest.fixture
def scan_files(tmp_path: Path, generator: torch.Generator) -> tuple[Path, Path, Scan]:
    """A checkpoint and a scan file for it (and the in-memory scan)."""
    from pet_dl.io.scanfile import write_scan

    scan = make_scan(generator)
    ckpt = make_checkpoint(tmp_path, generator, scan, dict(CONFIG, initial_fusion_weight=0.5))
    write_scan(tmp_path / "patient1.h5", scan)
    return ckpt, tmp_path / "patient1.h5", scan


def test_infer_cli_writes_nifti_and_dicom(
    tmp_path: Path, scan_files: tuple[Path, Path, Scan]
) -> None:
    import json
    import shutil
    import sys

    from pet_dl.io.dicom import read_pet_series
    from pet_dl.io.nifti import load_nifti
    from pet_dl.io.scanfile import read_scan

    ckpt, scan_path, _ = scan_files
    shutil.copy(scan_path, tmp_path / "patient2.h5")
    side = tmp_path / "side.json"
    side.write_text(json.dumps({"patient_weight_kg": 81.5, "patient_id": "ID42"}))
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "infer.py"), str(scan_path), str(tmp_path / "patient2.h5")]
    cmd += [
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--metadata",
        str(side),
    ]
    assert _infer_module().main(cmd[2:]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "patient1.nii.gz",
        "patient1_consistency.nii.gz",  # the data check's map (tests/test_consistency.py)
        "patient1_dicom",
        "patient2.nii.gz",
        "patient2_consistency.nii.gz",
        "patient2_dicom",
    ]
    expected = reconstruct_with_network(read_scan(scan_path), ckpt, device="cpu")
    image, geometry = load_nifti(out / "patient1.nii.gz")
    torch.testing.assert_close(
        torch.as_tensor(image).float(), expected, rtol=1e-5, atol=1e-5 * float(expected.max())
    )
    assert geometry == read_scan(scan_path).image
    activity, dgeo, info = read_pet_series(out / "patient1_dicom")
    peak = float(expected.abs().max())
    assert (
        float((torch.from_numpy(activity) - expected.double()).abs().max())
        <= 0.5 * peak / 32767 * 1.001
    )
    assert (
        dgeo.shape == geometry.shape
        and info.patient_weight_kg == 81.5
        and info.patient_id == "ID42"
    )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "corrupt or truncated|not a readable|scan file"),
        ("nan", "NaN"),
        ("negative", "negative"),
        ("empty", "no counts"),
    ],
)
def test_infer_cli_bad_scan_files(
    tmp_path: Path,
    scan_files: tuple[Path, Path, Scan],
    capsys: pytest.CaptureFixture[str],
    damage: str,
    message: str,
) -> None:
    import numpy as np

    ckpt, scan_path, scan = scan_files
    prompts = scan.prompts.numpy().copy()
    if damage == "truncate":
        data = scan_path.read_bytes()
        scan_path.write_bytes(data[: len(data) // 2])
    elif damage == "nan":
        prompts[0, 0, 0] = np.nan
        _replace_dataset(scan_path, "prompts", prompts)
    elif damage == "negative":
        prompts[0, 0, 0] = -3.0
        _replace_dataset(scan_path, "prompts", prompts)
    else:
        _replace_dataset(scan_path, "prompts", np.zeros_like(prompts))
    out = tmp_path / "out"
    code = _infer_module().main(
        [str(scan_path), "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err
    assert pytest.importorskip("re").search(message, err), err
    assert not out.exists() or list(out.iterdir()) == []


def test_infer_cli_bad_arguments(
    tmp_path: Path,
    scan_files: tuple[Path, Path, Scan],
    generator: torch.Generator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pet_dl.io.checkpoint import save_checkpoint as save

    ckpt, scan_path, scan = scan_files
    # a model of more radial bins than the scan has: no layout of the scan covers it
    # (fewer views would be mashed onto it: pet_dl.rebin.relayout_2d)
    other = SinogramGeometry.two_d(get_scanner("test"), num_radial=99)
    foreign = save(
        tmp_path / "other.safetensors",
        build_model(CONFIG),
        CONFIG,
        {"sinogram": other.to_dict(), "image": scan.image.to_dict()},
    )
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(ckpt.read_bytes()[:100])
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"patient_weight_kg": -5}')
    out = tmp_path / "out"
    base = [str(scan_path), "--out", str(out), "--device", "cpu"]
    cases = [
        (["--checkpoint", str(foreign)], "scan has 65 radial bins, model was trained for 99"),
        (["--checkpoint", str(corrupt)], "not a readable safetensors"),
        (["--checkpoint", str(tmp_path / "none.safetensors")], "does not exist"),
        (["--checkpoint", str(ckpt), "--format", "png"], "unknown --format"),
        (
            ["--checkpoint", str(ckpt), "--metadata", str(bad_json)],
            "patient_weight_kg must be a positive",
        ),
    ]
    infer = _infer_module()
    for extra, message in cases:
        assert infer.main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert (
        infer.main([str(tmp_path / "missing.h5"), "--out", str(out), "--checkpoint", str(ckpt)])
        == 2
    )
    assert "not found" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


def test_infer_script_exit_codes(tmp_path: Path) -> None:
    """The script itself (subprocess): --help exits 0, a missing scan exits 2, one line."""
    import subprocess
    import sys

    script = [sys.executable, str(ROOT / "infer.py")]
    ok = subprocess.run([*script, "--help"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "--checkpoint" in ok.stdout
    bad = subprocess.run(
        [*script, str(tmp_path / "nope.h5"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_infer_script_leaves_complete_outputs(
    tmp_path: Path, scan_files: tuple[Path, Path, Scan]
) -> None:
    """infer.py as a process ends without the interpreter's teardown (infer._exit_now): exit
    0, the image equals the in-process one, and its warning line reached stderr."""
    import subprocess
    import sys

    from pet_dl.io.nifti import load_nifti

    ckpt, scan_path, scan = scan_files
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(ROOT / "infer.py"), str(scan_path), "--checkpoint", str(ckpt),
         "--out", str(out), "--device", "cpu", "--format", "nifti"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert [line[:18] for line in run.stderr.splitlines() if line.startswith("warning:")] == [
        "warning: patient1:"
    ]
    image, _ = load_nifti(out / "patient1.nii.gz")
    expected = reconstruct_with_network(scan, ckpt, device="cpu")
    torch.testing.assert_close(torch.as_tensor(image).float(), expected, rtol=1e-5, atol=1e-6)
    assert (out / "patient1_consistency.nii.gz").is_file()


def test_infer_accepts_a_lightning_ckpt(
    tmp_path: Path, scan_files: tuple[Path, Path, Scan]
) -> None:
    """`infer.py scan.h5 --checkpoint model.ckpt` (issue 4 contract): same image as the
    .safetensors of the same weights."""
    from pet_dl.io.nifti import load_nifti

    ckpt, scan_path, scan = scan_files
    loaded = load_checkpoint(ckpt, builder=build_model)
    lightning = {
        "state_dict": {f"net.{k}": v for k, v in loaded.model.state_dict().items()},
        "hyper_parameters": {"network": loaded.config},
        "pet_dl_metadata": loaded.metadata,
    }
    torch.save(lightning, tmp_path / "model.ckpt")
    out = tmp_path / "out"
    args = [str(scan_path), "--checkpoint", str(tmp_path / "model.ckpt"), "--out", str(out)]
    assert _infer_module().main([*args, "--format", "nifti", "--device", "cpu"]) == 0
    image, _ = load_nifti(out / "patient1.nii.gz")
    expected = reconstruct_with_network(scan, loaded, device="cpu")
    torch.testing.assert_close(torch.as_tensor(image).float(), expected, rtol=1e-5, atol=1e-6)


def test_data_fit_accepts_the_truth_and_flags_an_image_the_data_contradict(
    generator: torch.Generator,
) -> None:
    """The true activity explains the counts about as well as OSEM (ratio ~ 1); the same
    disk with its hot spot on the other side (an anatomy error) is flagged."""
    from pet_dl.data_check import DATA_FIT_LIMIT, data_fit

    scan = make_scan(generator)
    truth = data_fit(scan, disk_with_hot_spot(scan.image), device="cpu")
    assert 0.9 < truth.ratio < DATA_FIT_LIMIT and not truth.suspect
    assert truth.deviance == pytest.approx(truth.ratio * truth.osem_deviance)
    moved = data_fit(scan, disk_with_hot_spot(scan.image, spot_x=-0.3), device="cpu")
    assert moved.ratio > 2.0 and moved.suspect
    with pytest.raises(InvalidInputError, match="shape"):
        data_fit(scan, torch.ones(4, 4, 1), device="cpu")


@pytest.mark.parametrize("init", [(4, 7), (2, 1)])
def test_reconstruct_and_check_equals_the_two_steps(
    tmp_path: Path, generator: torch.Generator, init: tuple[int, int]
) -> None:
    """One OSEM shared by the network's start (when it starts from the same 4 x 7 OSEM) and
    the check: the same image and the same fit as reconstruct, then data_fit."""
    from pet_dl.data_check import data_fit
    from pet_dl.inference import reconstruct_and_check

    scan = make_scan(generator)
    config = dict(CONFIG, initial_fusion_weight=0.5, init_iterations=init[0], init_subsets=init[1])
    loaded = load_checkpoint(make_checkpoint(tmp_path, generator, scan, config), builder=build_model)
    image, fit = reconstruct_and_check(scan, loaded, device="cpu")
    expected = reconstruct_with_network(scan, loaded, device="cpu")
    torch.testing.assert_close(image, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    two_step = data_fit(scan, expected, device="cpu")
    assert fit.osem_deviance == pytest.approx(two_step.osem_deviance, rel=1e-6)
    assert fit.ratio == pytest.approx(two_step.ratio, rel=1e-4)


def test_infer_cli_warns_when_the_image_contradicts_the_data(
    tmp_path: Path, scan_files: tuple[Path, Path, Scan], capsys: pytest.CaptureFixture[str]
) -> None:
    """The fixture's network has random weights: its image does not explain the data. The
    outputs are still written; one warning line names the scan; --no-data-check skips it."""
    ckpt, scan_path, _ = scan_files
    args = [str(scan_path), "--checkpoint", str(ckpt), "--device", "cpu", "--format", "nifti"]
    assert _infer_module().main([*args, "--out", str(tmp_path / "a")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "patient1" in warnings[0] and "worse than OSEM" in warnings[0]
    assert (tmp_path / "a" / "patient1.nii.gz").is_file()
    assert _infer_module().main([*args, "--out", str(tmp_path / "b"), "--no-data-check"]) == 0
    assert "warning:" not in capsys.readouterr().err
