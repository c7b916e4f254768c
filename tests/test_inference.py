"""pet_dl.inference.reconstruct: physics consistency, units, geometry refusal, bad data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from pet_dl.errors import GeometryError, InvalidInputError
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.inference import check_scan, reconstruct
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


def make_scan(
    generator: torch.Generator,
    sinogram: SinogramGeometry | None = None,
    image: ImageGeometry | None = None,
    counts: float = 2e5,
) -> Scan:
    """A small 2D scan of a disk with a hot spot, Poisson counts (test scanner)."""
    sinogram = sinogram or SinogramGeometry.two_d(get_scanner("test"), num_radial=65)
    image = image or ImageGeometry.centered((24, 24, 1), (4.0, 4.0, 4.0))
    x = torch.linspace(-1, 1, image.shape[0])
    r2 = x[:, None] ** 2 + x[None, :] ** 2
    activity = (r2 < 0.6) * 1000.0 + ((x[:, None] - 0.3) ** 2 + x[None, :] ** 2 < 0.02) * 3000.0
    activity = activity.unsqueeze(-1).float()
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
    got = reconstruct(scan, path, device=device)
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
        make_checkpoint(tmp_path, generator, scan, dict(CONFIG, initial_fusion_weight=0.5))
    )
    a = reconstruct(scan, loaded, device="cpu")
    b = reconstruct(replace(scan, calibration=2.0 * scan.calibration), loaded, device="cpu")
    torch.testing.assert_close(b, a / 2.0, rtol=1e-4, atol=1e-4 * float(a.max()))
    assert float((a - reconstruct(scan, loaded, device="cpu")).abs().max()) == 0.0


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
        reconstruct(other, path, device="cpu")


def test_other_image_grid_is_refused(tmp_path: Path, generator: torch.Generator) -> None:
    scan = make_scan(generator)
    path = make_checkpoint(tmp_path, generator, scan)
    other = make_scan(generator, image=ImageGeometry.centered((20, 20, 1), (4.0, 4.0, 4.0)))
    with pytest.raises(
        GeometryError, match=r"image shape \[20, 20, 1\], model was trained for \[24, 24, 1\]"
    ):
        reconstruct(other, path, device="cpu")
    shifted = replace(scan, image=ImageGeometry((24, 24, 1), (4.0, 4.0, 4.0), (-44.0, -46.0, 0.0)))
    with pytest.raises(GeometryError, match="origin_mm"):
        reconstruct(shifted, path, device="cpu")


def test_checkpoint_without_geometry_is_refused(tmp_path: Path, generator: torch.Generator) -> None:
    scan = make_scan(generator)
    path = save_checkpoint(tmp_path / "m.safetensors", build_model(CONFIG), CONFIG, {})
    with pytest.raises(CheckpointError, match="training sinogram/image geometry"):
        reconstruct(scan, path, device="cpu")


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
        reconstruct(scan, make_checkpoint(tmp_path, generator, scan), device="cuda")
