"""Single-scatter simulation: physics properties and agreement with STIR's
scatter_cylinder reference (PET_DL_TEST_DATA)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pet_dl.geometry import ImageGeometry, ScannerGeometry, SinogramGeometry
from pet_dl.scatter import (
    fit_tails,
    klein_nishina_511,
    klein_nishina_total,
    single_scatter,
    window_efficiency,
)


def _toy() -> SinogramGeometry:
    """The scanner of STIR's scatter_cylinder.hs: 8 rings x 64 detectors, inner radius
    443.1 mm + DOI 8.4 mm, ring spacing 19.62 mm, 35 non-arc-corrected bins, segment 0."""
    toy = ScannerGeometry(
        name="stir_scatter_toy", num_rings=8, crystals_per_ring=64, radius_mm=443.1,
        ring_spacing_mm=19.62, crystal_size_mm=(2 * math.pi * 451.5 / 64, 19.62, 20.0),
        doi_mm=8.4, blocks_per_ring=16, crystals_per_block=(4, 4),
    )
    return SinogramGeometry(toy, 35, span=1, max_ring_difference=0)


def _cylinder(activity: float = 1.0, mu: float = 0.0096) -> tuple[torch.Tensor, torch.Tensor, ImageGeometry]:
    """STIR's test cylinder (radius 100 mm, length 110 mm) on its 111 x 111 x 47 grid of
    3 x 3 x 3.27 mm, centred."""
    image = ImageGeometry.centered((111, 111, 47), (3.0, 3.0, 3.27))
    x = (torch.arange(111, dtype=torch.float64) - 55) * 3.0
    z = (torch.arange(47, dtype=torch.float64) - 23) * 3.27
    inside = ((x[:, None, None] ** 2 + x[None, :, None] ** 2) <= 100**2) & (z.abs() <= 55)[None, None]
    return inside.float() * activity, inside.float() * mu, image


def test_klein_nishina_values() -> None:
    # 511 keV: total cross-section 0.2867 barn per electron = 2 pi r_e^2 x 0.5737
    assert float(klein_nishina_total(torch.tensor(1.0))) == pytest.approx(
        0.2867e-24 / (2 * math.pi * (2.8179403e-13) ** 2), rel=2e-3)
    kn, p = klein_nishina_511(torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64))
    assert p.tolist() == pytest.approx([1.0, 0.5, 1 / 3])
    # the differential cross-section integrates to the total one over the sphere
    c = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    density, _ = klein_nishina_511(c)
    assert float(torch.trapezoid(density, c) * 2 * math.pi) == pytest.approx(1.0, rel=1e-6)
    assert float(kn[0]) > float(kn[1])  # forward scatter is the most likely
    eff = window_efficiency(torch.tensor([511.0, 300.0]), (350.0, 650.0), 0.22)
    sigma = 0.22 * 511 * math.sqrt(300 / 511) / 2.3548  # FWHM 86 keV at 300 keV
    expected = 0.5 * (math.erf(350 / (math.sqrt(2) * sigma)) - math.erf(50 / (math.sqrt(2) * sigma)))
    assert 0.99 < float(eff[0]) <= 1.0 and float(eff[1]) == pytest.approx(expected, rel=1e-5)


def test_single_scatter_physics() -> None:
    act, mu, image = _cylinder()
    sino = _toy()
    s = single_scatter(act, mu, image, sino, window_kev=(350, 650), energy_resolution=0.22,
                       scatter_spacing_mm=40.0, samples=48)
    assert s.shape == sino.shape and bool((s >= 0).all()) and float(s.sum()) > 0
    radial = s.sum((0, 1))
    assert torch.allclose(radial, radial.flip(0), rtol=1e-3)  # centred object: symmetric
    axial = s.sum((1, 2))  # symmetric up to the 4 coarse axial scatter-point layers
    assert torch.allclose(axial, axial.flip(0), rtol=0.05)
    double = single_scatter(2 * act, mu, image, sino, window_kev=(350, 650), energy_resolution=0.22,
                            scatter_spacing_mm=40.0, samples=48)
    assert torch.allclose(double, 2 * s, rtol=1e-5)
    assert float(single_scatter(act, 0 * mu, image, sino, scatter_spacing_mm=40.0).abs().max()) == 0.0


def test_fit_tails_recovers_the_scale(generator: torch.Generator) -> None:
    scatter = torch.rand(4, 10, 20, generator=generator) + 0.5
    attenuation = torch.ones(4, 10, 20)
    attenuation[..., 5:15] = 0.3  # the object
    trues = torch.zeros(4, 10, 20)
    trues[..., 5:15] = 50.0
    randoms = torch.full((4, 10, 20), 2.0)
    prompts = trues + 3.5 * scatter + randoms
    assert fit_tails(scatter, prompts, randoms, attenuation) == pytest.approx(3.5)


def test_single_scatter_agrees_with_stir_scatter_cylinder(test_data: Path) -> None:
    """STIR's SSS of its test cylinder (scatter_cylinder.s) against ours on the same
    scanner and object, shapes compared after scaling to the same total (the absolute
    scales differ by a constant). Measured: the radial profiles (summed over planes and
    views) agree within +-2.0 % over the bins above 10 % of the peak once ours is moved
    by 0.35 bin (STIR computes scatter on a sub-sampled detector set and interpolates),
    within +-25 % without; per bin the mean absolute difference is 4.6 % of the peak
    (20 mm scatter-point grid; 15 mm gives the same to 1 %). Tolerances here: 4 %,
    0.6 bin, 30 %, 6 %. The axial profiles are not compared: the reference's cylinder
    sits off-centre axially by an amount not recorded with the file."""
    ref = np.fromfile(test_data / "stir_reference" / "scatter_cylinder.s", "<f4")
    ref = ref.reshape(32, 8, 35).transpose(1, 0, 2)  # STIR: view, axial, tangential
    act, mu, image = _cylinder()
    mine = single_scatter(act, mu, image, _toy(), window_kev=(350, 650), energy_resolution=0.22,
                          scatter_spacing_mm=20.0).numpy()
    scaled = mine * ref.sum() / mine.sum()
    assert np.abs(scaled - ref).mean() < 0.06 * ref.max()
    r_ref = ref.sum((0, 1)) / ref.sum()
    r_mine = mine.sum((0, 1)) / mine.sum()
    band = r_ref > 0.1 * r_ref.max()
    assert np.abs(r_mine[band] / r_ref[band] - 1).max() < 0.3

    def moved(profile: np.ndarray, shift: float) -> np.ndarray:
        return np.interp(np.arange(35) - shift, np.arange(35), profile, left=0.0, right=0.0)

    shifts = np.linspace(-1, 1, 41)
    worst = [np.abs(moved(r_mine, d)[band] / r_ref[band] - 1).max() for d in shifts]
    best = int(np.argmin(worst))
    assert abs(shifts[best]) <= 0.6 and worst[best] < 0.04


@pytest.mark.slow
def test_estimate_scatter_recovers_simulated_single_scatter() -> None:
    """A noiseless 2D scan whose scatter is a known multiple of the single-scatter
    simulation of the true object: the estimate from OSEM + SSS + tail fit gets the
    scatter total within 20 % (measured: 14.6 % high: the first OSEM image absorbs the
    scatter, so its SSS is too large; one pass, no iteration of estimate and image) and
    its radial profile within 25 % where it is above 20 % of its peak."""
    from pet_dl.forward_model import SinogramProjector, attenuation_with
    from pet_dl.geometry import get_scanner
    from pet_dl.importing import estimate_scatter
    from pet_dl.scan import AcquisitionMetadata, Scan

    sino = SinogramGeometry.two_d(get_scanner("test"))
    image = ImageGeometry.centered((64, 64, 1), (3.0, 3.0, 4.0))
    x = (torch.arange(64, dtype=torch.float64) - 31.5) * 3.0
    disc = ((x[:, None] - 10) ** 2 + x[None, :] ** 2 <= 50**2)[..., None]
    activity = disc.float() * 1000.0
    mu = disc.float() * 0.0096
    projector = SinogramProjector(sino, image)
    att = attenuation_with(projector, mu, sino)
    calibration = 0.05
    trues = calibration * att * projector(activity)
    shape = single_scatter(activity, mu, image, sino, window_kev=(430, 610), energy_resolution=0.145)
    true_scatter = shape * (0.3 * float(trues.sum()) / float(shape.sum()))
    randoms = torch.full(sino.shape, 0.05 * float(trues.mean()))
    scan = Scan(sino, image, trues + true_scatter + randoms, att, randoms, calibration, 0.0,
                AcquisitionMetadata(duration_s=1.0))
    estimate, scale = estimate_scatter(scan, mu, att, window_kev=(430, 610), energy_resolution=0.145,
                                       num_iterations=3, num_subsets=4)
    assert scale > 0
    assert float(estimate.sum()) == pytest.approx(float(true_scatter.sum()), rel=0.20)
    p_true, p_est = true_scatter.sum((0, 1)), estimate.sum((0, 1))
    band = p_true > 0.2 * p_true.max()
    assert float((p_est[band] / p_true[band] - 1).abs().max()) < 0.25
