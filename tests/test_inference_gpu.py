"""The shipped model on CUDA against its CPU path: the images and the data check agree.

``infer.py --device cuda`` runs the same network and data check as on CPU, in float32
(convolutions may use TF32, PyTorch's default on recent GPUs) or, with ``amp``, under
bfloat16 autocast. No CI machine has a GPU, so these tests are skipped there;
``bench/gpu_check.sh`` runs them on the first machine with one. Three scans, one per path
through :mod:`pet_dl.inference`: a brain on the model's own layout at 1/20 dose; the NEMA IEC
phantom on the mMR's native 2D layout at 1/4 (wider than the model's grid: the grown grid,
:mod:`pet_dl.plane_inference`); a 17-ring span-11 3D scan, rebinned to planes.

What must hold on the GPU, against the CPU on the same scan: the image within 1 % (relative
L2), its NRMSE against the truth within 0.2 point, the global data check's ratio within
0.001, the consistency map within 0.25 standard deviations of the noise and the same count
of flagged regions; under bfloat16 autocast the image within 5 % and the NRMSE within 0.5
point.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.simulate import simulate_scan, thin_scan

CASES = ("brain, model layout, 1/20", "NEMA, native layout, 1/4", "3D span 11, rebinned, 1/4")
# the scan's simulation, as the evaluations' (data/brainweb2d.yaml)
SCAN = dict(duration_s=600.0, scatter_fraction=0.3, randoms_fraction=0.2, psf_fwhm_mm=4.5,
            crystal_efficiency_sigma=0.05)


def make_case(name: str) -> tuple:
    """``(scan, truth)`` of one case: a Poisson scan and its true activity ``(nx, ny, nz)`` Bq/mL."""
    from pet_dl.inference import load_model
    from pet_dl.phantoms import make_phantom
    from pet_dl.phantoms.nema import nema_phantom

    g = torch.Generator().manual_seed(20261207)
    if name.startswith("brain"):
        meta = load_model(None, torch.device("cpu")).metadata
        sino, image = SinogramGeometry.from_dict(meta["sinogram"]), ImageGeometry.from_dict(meta["image"])
        phantom, dose = make_phantom("brain", image, g), 1 / 20
    elif name.startswith("NEMA"):
        sino, image = SinogramGeometry.two_d(get_scanner("mmr")), ImageGeometry.centered((128, 128, 1), 2.6)
        phantom, dose = nema_phantom(image, g), 1 / 4
    else:
        rings = 17
        sino = SinogramGeometry(get_scanner("mmr").with_rings(rings), num_radial=344, span=11)
        image = ImageGeometry.centered((96, 96, 2 * rings - 1), (2.6, 2.6, sino.scanner.ring_spacing_mm / 2))
        phantom, dose = make_phantom("brain", image, g), 1 / 4
    full = simulate_scan(phantom.activity, phantom.mu, sino, image, generator=g, **SCAN)
    return thin_scan(full, dose, g), phantom.activity.float()


@dataclass
class DeviceComparison:
    """One scan reconstructed and checked on CPU and on another device (NRMSE as fractions)."""

    relative_difference: float
    relative_difference_amp: float
    nrmse_cpu: float
    nrmse: float
    nrmse_amp: float
    ratio_cpu: float
    ratio: float
    regions_cpu: int
    regions: int
    z_difference: float


def compare_devices(scan, truth: torch.Tensor, device: str) -> DeviceComparison:  # noqa: ANN001
    """The shipped model's image and data check of ``scan`` on CPU and on ``device``
    (float32, then bfloat16 autocast)."""
    from pet_dl.inference import reconstruct_and_check, reconstruct_with_network
    from pet_dl.metrics import nrmse

    ref, ref_fit = reconstruct_and_check(scan, None, "cpu")
    image, fit = reconstruct_and_check(scan, None, device, amp=False)
    half = reconstruct_with_network(scan, None, device, amp=True)
    inside = truth > 0

    def rel(a: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(a - ref) / torch.linalg.vector_norm(ref))

    return DeviceComparison(
        relative_difference=rel(image), relative_difference_amp=rel(half),
        nrmse_cpu=float(nrmse(ref, truth, inside)), nrmse=float(nrmse(image, truth, inside)),
        nrmse_amp=float(nrmse(half, truth, inside)),
        ratio_cpu=ref_fit.ratio, ratio=fit.ratio,
        regions_cpu=ref_fit.consistency.count, regions=fit.consistency.count,
        z_difference=float((fit.consistency.z.cpu() - ref_fit.consistency.z.cpu()).abs().max()),
    )


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_shipped_model_on_cuda_matches_the_cpu_path(case: str) -> None:
    scan, truth = make_case(case)
    got = compare_devices(scan, truth, "cuda")
    assert got.relative_difference < 0.01, got
    assert abs(got.nrmse - got.nrmse_cpu) < 0.002, got
    assert abs(got.ratio - got.ratio_cpu) < 0.001, got
    assert got.z_difference < 0.25 and got.regions == got.regions_cpu, got
    assert got.relative_difference_amp < 0.05, got
    assert abs(got.nrmse_amp - got.nrmse_cpu) < 0.005, got
