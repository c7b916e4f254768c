"""A 2D scan on the mMR's native layout (252 views x 344 bins) or another image grid goes
through the shipped model: brought onto the model's 126 x 128 layout and 2.6 mm grid
(:func:`pet_dl.rebin.relayout_2d`), reconstructed, resampled onto the scan's grid."""

from __future__ import annotations

from dataclasses import replace

import torch

from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.phantoms import make_phantom
from pet_dl.rebin import relayout_2d
from pet_dl.simulate import simulate_scan, thin_scan

NATIVE_GRID = ImageGeometry.centered((128, 128, 1), (2.0, 2.0, 2.0))


def _native_scan(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    phantom = make_phantom("brain", NATIVE_GRID, g)
    sino = SinogramGeometry.two_d(get_scanner("mmr"))
    scan = simulate_scan(
        phantom.activity, phantom.mu, sino, NATIVE_GRID, duration_s=600.0, scatter_fraction=0.3,
        randoms_fraction=0.2, psf_fwhm_mm=4.5, crystal_efficiency_sigma=0.05, generator=g,
    )
    return phantom, scan, g


def test_relayout_keeps_the_counts_and_the_forward_model() -> None:
    from pet_dl.forward_model import GaussianResolution, PETForwardModel, SinogramProjector

    phantom, scan, _ = _native_scan()
    assert scan.sinogram.shape == (1, 252, 344)
    moved = relayout_2d(scan, 128, 2)
    assert moved.sinogram.shape == (1, 126, 128)
    # prompts: exactly the native counts of the kept radial bins, summed over view pairs
    lo = 344 // 2 - 64
    assert torch.equal(moved.prompts.sum(), scan.prompts[..., lo : lo + 128].sum())
    # the forward model on the new layout with the summed factors predicts the summed
    # expected counts of the native layout (the mashed LOR is the pair's mean)
    def expected(s, image):
        model = PETForwardModel(
            SinogramProjector(s.sinogram, image), multiplicative=s.multiplicative.float(),
            additive=s.additive.float(), resolution=GaussianResolution(image, 4.5),
            calibration=torch.tensor(float(s.calibration)),
        )
        return model(phantom.activity.float())

    native = expected(scan, NATIVE_GRID)
    moved_expected = relayout_2d(replace(scan, prompts=native), 128, 2).prompts
    direct = expected(moved, NATIVE_GRID)
    err = float((direct - moved_expected).abs().sum() / moved_expected.abs().sum())
    assert err < 0.02, err


def test_native_scan_is_reconstructed_by_the_shipped_model_on_its_grid(tmp_path) -> None:
    from pet_dl.inference import reconstruct_with_network
    from pet_dl.metrics import nrmse
    from pet_dl.recon import gaussian_postfilter, reconstruct_classical

    phantom, scan, g = _native_scan()
    low = thin_scan(scan, 0.05, g)
    image = reconstruct_with_network(low)
    assert image.shape == NATIVE_GRID.shape  # the scan's grid, not the model's 96 x 96
    osem = gaussian_postfilter(reconstruct_classical(low, "osem", num_iterations=4, num_subsets=7), NATIVE_GRID, 6.0)
    net_err = float(nrmse(image[None], phantom.activity[None])[0])
    osem_err = float(nrmse(osem[None], phantom.activity[None])[0])
    assert net_err < osem_err, (net_err, osem_err)
    # activity is kept: the network's total within 10 % of the truth's
    assert abs(float(image.sum() / phantom.activity.sum()) - 1.0) < 0.1
