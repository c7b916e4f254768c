"""Simulation: calibration, Poisson statistics, thinning, scatter/randoms fractions, bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from pet_dl.errors import GeometryError, InvalidInputError, PetDLError, UnitsError
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.scan import AcquisitionMetadata
from pet_dl.simulate import (
    calibration_per_second,
    crystal_normalisation,
    expected_counts,
    simulate_pair,
    simulate_scan,
    thin_scan,
)

TEST = get_scanner("test")
SINO = SinogramGeometry.two_d(TEST, num_radial=65)
IMAGE = ImageGeometry.centered((32, 32, 1), (4.0, 4.0, 4.0))
WATER = 0.0096  # 1/mm at 511 keV


def _disc(image: ImageGeometry, radius_mm: float, centre=(0.0, 0.0)) -> torch.Tensor:
    x = torch.as_tensor(image.voxel_centers(0), dtype=torch.float32) - centre[0]
    y = torch.as_tensor(image.voxel_centers(1), dtype=torch.float32) - centre[1]
    inside = (x[:, None] ** 2 + y[None, :] ** 2) <= radius_mm**2
    return inside[..., None].expand(image.shape).float().contiguous()


def _phantom(image: ImageGeometry = IMAGE, level: float = 5000.0):
    body = _disc(image, 50.0)
    activity = level * (body + 3.0 * _disc(image, 12.0, (15.0, -10.0)))
    return activity, WATER * body


def _slab_activity_bq(activity: torch.Tensor, image: ImageGeometry, thickness_mm: float) -> float:
    vx, vy, _ = image.voxel_size_mm
    return float(activity.double().sum()) * vx * vy * thickness_mm / 1000.0


@pytest.mark.parametrize("preset, n, voxel", [("test", 32, 4.0), ("mmr", 96, 3.0)])
def test_calibration_reproduces_published_sensitivity(preset: str, n: int, voxel: float) -> None:
    """Without attenuation a 2D slab source gives S (cps/kBq) x activity summed over bins."""
    scanner = get_scanner(preset)
    sino = SinogramGeometry.two_d(scanner)
    image = ImageGeometry.centered((n, n, 1), (voxel, voxel, voxel))
    activity = 1000.0 * _disc(image, 0.35 * n * voxel)
    cal = calibration_per_second(sino)
    exp = expected_counts(
        activity,
        torch.zeros_like(activity),
        sino,
        image,
        calibration=cal,
        scatter_fraction=0.0,
        randoms_fraction=0.0,
    )
    expected_cps = (
        scanner.sensitivity_cps_per_kbq
        / 1000.0
        * _slab_activity_bq(activity, image, scanner.ring_spacing_mm)
    )
    assert float(exp.trues.sum()) == pytest.approx(expected_cps, rel=0.03)
    assert float(exp.scatter.sum()) == 0.0 and float(exp.randoms.sum()) == 0.0


def test_calibration_3d_cylinder_filling_the_axial_fov() -> None:
    sino = SinogramGeometry(TEST, num_radial=65)
    image = ImageGeometry.centered((32, 32, 8), (4.0, 4.0, 2.0))  # 16 mm = 4 rings x 4 mm
    activity = 1000.0 * _disc(image, 40.0)
    exp = expected_counts(
        activity,
        torch.zeros_like(activity),
        sino,
        image,
        calibration=calibration_per_second(sino),
        scatter_fraction=0.0,
        randoms_fraction=0.0,
    )
    expected_cps = TEST.sensitivity_cps_per_kbq / 1000.0 * _slab_activity_bq(activity, image, 2.0)
    assert float(exp.trues.sum()) == pytest.approx(expected_cps, rel=0.05)
    # per-LOR calibration scales as 1 / num_rings relative to the 2D direct plane
    ratio = calibration_per_second(SINO) / calibration_per_second(sino)
    assert ratio == pytest.approx(TEST.num_rings, rel=0.02)


def test_scatter_and_randoms_fractions_as_configured() -> None:
    activity, mu = _phantom()
    exp = expected_counts(
        activity,
        mu,
        SINO,
        IMAGE,
        calibration=1e-3,
        scatter_fraction=0.35,
        randoms_fraction=0.15,
        psf_fwhm_mm=5.0,
    )
    t, s, r = (float(v.double().sum()) for v in (exp.trues, exp.scatter, exp.randoms))
    assert s / (t + s) == pytest.approx(0.35, rel=1e-5)
    assert r / (t + s + r) == pytest.approx(0.15, rel=1e-5)
    assert float(exp.scatter.min()) >= 0 and float(exp.randoms.min()) >= 0

    # scatter is smooth: its radial curvature is far smaller than the trues'
    def roughness(v: torch.Tensor) -> float:
        return float(v.diff(n=2, dim=-1).abs().sum() / v.sum())

    assert roughness(exp.scatter) < 0.1 * roughness(exp.trues)
    # scatter has tails outside the object, where there are no trues
    outside = exp.trues == 0
    assert float(exp.scatter[outside].sum()) > 0.01 * s
    # randoms are flat without crystal efficiencies
    assert float(exp.randoms.std() / exp.randoms.mean()) < 1e-5


def test_scan_forward_model_reproduces_the_expectation() -> None:
    activity, mu = _phantom()
    scan = simulate_scan(
        activity,
        mu,
        SINO,
        IMAGE,
        duration_s=300.0,
        psf_fwhm_mm=6.0,
        crystal_efficiency_sigma=0.1,
        generator=torch.Generator().manual_seed(3),
    )
    norm = crystal_normalisation(SINO, 0.1, torch.Generator().manual_seed(3))
    exp = expected_counts(
        activity,
        mu,
        SINO,
        IMAGE,
        calibration=scan.calibration,
        psf_fwhm_mm=6.0,
        normalisation=norm,
    )
    ybar = scan.forward_model()(activity)
    torch.testing.assert_close(ybar, exp.total, rtol=1e-4, atol=1e-4)
    assert scan.calibration == pytest.approx(calibration_per_second(SINO) * 300.0)
    assert scan.metadata.duration_s == 300.0


def _poisson_z_scores(stack: torch.Tensor, ybar: torch.Tensor) -> tuple[float, float]:
    """Pooled checks of Poisson(ybar) samples ``(K, *sino)``: returns the z-scores of the
    mean of ``(y - l) / sqrt(l)`` (0, variance 1/M) and of the mean of its square
    (1, variance (2 + 1/l) / M) over the M = K x bins with l > 0."""
    live = ybar > 0
    lam = ybar[live]
    z = (stack[:, live] - lam) / lam.sqrt()
    m = z.numel()
    z_mean = float(z.mean()) * math.sqrt(m)
    z_var = float(z.pow(2).mean() - 1) / math.sqrt(float((2 + 1 / lam).mean()) / m)
    return z_mean, z_var


def test_poisson_mean_and_variance() -> None:
    activity, mu = _phantom()
    gen = torch.Generator().manual_seed(11)
    scans = [
        simulate_scan(activity, mu, SINO, IMAGE, duration_s=60.0, generator=gen) for _ in range(12)
    ]
    ybar = scans[0].forward_model()(activity).double()
    stack = torch.stack([s.prompts.double() for s in scans])
    assert bool((stack == stack.round()).all()) and float(stack.min()) >= 0
    assert bool((stack[:, ybar == 0] == 0).all())
    z_mean, z_var = _poisson_z_scores(stack, ybar)
    assert abs(z_mean) < 4.0 and abs(z_var) < 4.0
    # a wrong variance would be caught: Poisson(2 l) / 2 has the right mean, half the variance
    half = torch.poisson(2 * ybar.expand_as(stack), generator=gen) / 2
    assert abs(_poisson_z_scores(half, ybar)[1]) > 10.0
    assert float(ybar.sum()) > 1e4  # enough counts for the test to mean something


def test_same_seed_same_scan_and_different_seed_differs() -> None:
    activity, mu = _phantom()

    def run(seed: int):
        return simulate_scan(
            activity,
            mu,
            SINO,
            IMAGE,
            duration_s=30.0,
            crystal_efficiency_sigma=0.05,
            generator=torch.Generator().manual_seed(seed),
        )

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a.prompts, b.prompts) and torch.equal(a.multiplicative, b.multiplicative)
    assert not torch.equal(a.prompts, c.prompts)
    meta = AcquisitionMetadata(duration_s=1.0, seed=9)
    d = simulate_scan(activity, mu, SINO, IMAGE, duration_s=30.0, metadata=meta)
    e = simulate_scan(activity, mu, SINO, IMAGE, duration_s=30.0, metadata=meta)
    assert torch.equal(d.prompts, e.prompts) and d.metadata.duration_s == 30.0


def test_thinning_scales_counts_and_is_binomial() -> None:
    activity, mu = _phantom()
    gen = torch.Generator().manual_seed(21)
    full = simulate_scan(activity, mu, SINO, IMAGE, duration_s=600.0, generator=gen)
    n = float(full.prompts.sum())
    for f in (0.25, 0.05, 0.01):
        low = thin_scan(full, f, gen)
        assert bool((low.prompts <= full.prompts).all())
        assert bool((low.prompts == low.prompts.round()).all())
        total = float(low.prompts.sum())
        assert abs(total - f * n) < 5 * math.sqrt(n * f * (1 - f))
        assert low.calibration == pytest.approx(f * full.calibration, rel=1e-12)
        torch.testing.assert_close(low.additive, f * full.additive)
        assert low.metadata.dose_fraction == pytest.approx(f)
        assert low.metadata.duration_s == full.metadata.duration_s
    assert torch.equal(
        full.prompts,
        simulate_scan(
            activity, mu, SINO, IMAGE, duration_s=600.0, generator=torch.Generator().manual_seed(21)
        ).prompts,
    )  # thinning never modified the full scan
    short = thin_scan(full, 0.5, gen, kind="time")
    assert short.metadata.duration_s == pytest.approx(300.0) and short.metadata.dose_fraction == 1.0
    same = thin_scan(full, 1.0, gen)
    assert torch.equal(same.prompts, full.prompts)


def test_thinned_counts_are_poisson_with_scaled_mean() -> None:
    """Thinning a Poisson(lambda) realisation with p gives Poisson(p lambda)."""
    activity, mu = _phantom()
    gen = torch.Generator().manual_seed(4)
    f = 0.1
    full = [
        simulate_scan(activity, mu, SINO, IMAGE, duration_s=600.0, generator=gen) for _ in range(8)
    ]
    low = [thin_scan(s, f, gen) for s in full]
    ybar = low[0].forward_model()(activity).double()  # c and a already scaled by f
    expected_full = full[0].forward_model()(activity).double()
    torch.testing.assert_close(ybar, f * expected_full, rtol=1e-5, atol=1e-6)
    z_mean, z_var = _poisson_z_scores(torch.stack([s.prompts.double() for s in low]), ybar)
    assert abs(z_mean) < 4.0 and abs(z_var) < 4.0


def test_simulate_pair_reduction_factors() -> None:
    activity, mu = _phantom()
    full, low = simulate_pair(
        activity, mu, SINO, IMAGE, duration_s=300.0, generator=torch.Generator().manual_seed(2)
    )
    assert list(low) == [4, 10, 20, 50, 100]
    for r, scan in low.items():
        assert scan.metadata.dose_fraction == pytest.approx(1.0 / r)
        assert scan.calibration == pytest.approx(full.calibration / r)
        assert bool((scan.prompts <= full.prompts).all())
        assert scan.multiplicative is full.multiplicative or torch.equal(
            scan.multiplicative, full.multiplicative
        )
    totals = [float(low[r].prompts.sum()) for r in (4, 10, 20, 50, 100)]
    assert totals == sorted(totals, reverse=True)


def test_tof_simulation_sums_to_non_tof() -> None:
    activity, mu = _phantom()
    kw = dict(calibration=1e-3, scatter_fraction=0.3, randoms_fraction=0.2)
    plain = expected_counts(activity, mu, SINO, IMAGE, **kw)
    tof = expected_counts(activity, mu, replace(SINO, tof=True), IMAGE, **kw)
    assert tof.trues.shape == (*SINO.shape, TEST.tof.num_bins)
    assert float(tof.trues.sum()) == pytest.approx(float(plain.trues.sum()), rel=5e-3)
    torch.testing.assert_close(tof.randoms.sum(-1), plain.randoms, rtol=1e-3, atol=1e-6)
    t, s = float(tof.trues.sum()), float(tof.scatter.sum())
    assert s / (t + s) == pytest.approx(0.3, rel=1e-5)


def test_normalisation_gaps_and_efficiencies() -> None:
    mmr = SinogramGeometry.two_d(get_scanner("mmr"))
    norm = crystal_normalisation(mmr)
    assert norm.shape == mmr.shape
    assert float(norm.mean()) == pytest.approx(1.0, rel=1e-5)
    rings, crystals = mmr.crystal_pairs()
    gap = mmr.scanner.is_gap_crystal()[crystals].any(-1)
    assert bool((norm[gap] == 0).all()) and bool((norm[~gap] > 0).all())
    gen = torch.Generator().manual_seed(0)
    varied = crystal_normalisation(SINO, 0.2, gen)
    assert float(varied.mean()) == pytest.approx(1.0, rel=1e-5)
    # product of two log-normals with sigma 0.2: log spread sqrt(2) * 0.2
    assert float(varied.log().std()) == pytest.approx(math.sqrt(2) * 0.2, rel=0.15)
    torch.testing.assert_close(crystal_normalisation(SINO), torch.ones(SINO.shape))


def test_mmr_2d_counts_are_realistic() -> None:
    """20 cm water cylinder, 5.3 kBq/mL (370 MBq in 70 kg), 10 min, mMR direct plane.

    Assumed: the 2D plane holds the slab's share of the 3D counts (15 cps/kBq NEMA
    sensitivity), so trues ~ S x A_slab x survival x T: about 0.015 x 0.68 MBq x 0.2 x 600
    ~ 1.2e6, and prompts = trues / ((1 - SF)(1 - RF)) ~ 2e6 for SF 0.3, RF 0.2.
    """
    sino = SinogramGeometry.two_d(get_scanner("mmr"))
    image = ImageGeometry.centered((100, 100, 1), (2.5, 2.5, 2.5))
    body = _disc(image, 100.0)
    scan = simulate_scan(
        5300.0 * body,
        WATER * body,
        sino,
        image,
        duration_s=600.0,
        psf_fwhm_mm=4.5,
        generator=torch.Generator().manual_seed(0),
    )
    prompts = float(scan.prompts.sum())
    assert 1e6 < prompts < 5e6
    assert float(scan.prompts.max()) < 500  # per-bin counts of a clinical slice


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(activity=-1.0), InvalidInputError, "negative"),
        (dict(activity=float("nan")), InvalidInputError, "non-finite"),
        (dict(mu=0.096), UnitsError, "1/cm"),
        (dict(mu=1000.0), UnitsError, "Hounsfield"),
        (dict(mu=-1000.0), UnitsError, "Hounsfield"),
        (dict(mu=-0.001), InvalidInputError, "negative"),
        (dict(scatter_fraction=1.0), InvalidInputError, "scatter_fraction"),
        (dict(randoms_fraction=-0.1), InvalidInputError, "randoms_fraction"),
        (dict(duration_s=0.0), InvalidInputError, "duration_s"),
        (dict(dose=1.5), InvalidInputError, "dose_fraction"),
        (
            dict(image=ImageGeometry.centered((32, 32, 1), (12.0, 12.0, 4.0))),
            GeometryError,
            "radius",
        ),
        (dict(image=ImageGeometry.centered((16, 16, 1), (4.0, 4.0, 4.0))), GeometryError, "shape"),
    ],
)
def test_bad_input_gives_one_line_errors(change: dict, error: type, match: str) -> None:
    activity, mu = _phantom()
    if "activity" in change:
        activity = activity.clone()
        activity[16, 16, 0] = change["activity"]
    if "mu" in change:
        mu = mu.clone()
        mu[10, 10, 0] = change["mu"]
    meta = AcquisitionMetadata(duration_s=1.0, dose_fraction=change.get("dose", 1.0))
    with pytest.raises(error, match=match) as info:
        simulate_scan(
            activity,
            mu,
            SINO,
            change.get("image", IMAGE),
            duration_s=change.get("duration_s", 10.0),
            scatter_fraction=change.get("scatter_fraction", 0.3),
            randoms_fraction=change.get("randoms_fraction", 0.2),
            metadata=meta,
        )
    assert isinstance(info.value, (PetDLError, ValueError))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan")])
def test_thin_scan_rejects_bad_fractions(fraction: float) -> None:
    activity, mu = _phantom()
    scan = simulate_scan(activity, mu, SINO, IMAGE, duration_s=10.0)
    with pytest.raises(InvalidInputError, match=r"fraction must be in \(0, 1\]"):
        thin_scan(scan, fraction)
    with pytest.raises(InvalidInputError, match="kind"):
        thin_scan(scan, 0.5, kind="counts")


def test_blockwise_sinogram_terms_match_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """The normalisation and the scatter smoothing are formed a block of views / planes at
    a time (bounded memory for 3D scans); the blocks must not change the result."""
    import pet_dl.simulate as simulate

    scanner = get_scanner("mmr").with_rings(4)
    sino = SinogramGeometry(scanner, num_radial=127, span=1, max_ring_difference=3)
    image = ImageGeometry.centered((32, 32, 4), (8.0, 8.0, 4.0))
    activity = 5000.0 * _disc(image, 60.0) * torch.linspace(0.5, 1.5, 4)
    mu = WATER * _disc(image, 60.0)

    def run() -> tuple[torch.Tensor, simulate.ExpectedCounts]:
        norm = crystal_normalisation(sino, 0.1, torch.Generator().manual_seed(2))
        return norm, expected_counts(activity, mu, sino, image, calibration=1e-3, normalisation=norm)

    norm, exp = run()  # one block: the whole 16 x 252 x 127 sinogram
    assert norm.numel() < simulate._BLOCK_BINS
    monkeypatch.setattr(simulate, "_BLOCK_BINS", 3 * 252 * 127 + 5)  # 3 planes, 7 views
    norm_b, exp_b = run()
    torch.testing.assert_close(norm_b, norm, rtol=1e-6, atol=0)
    assert float(exp.scatter[:, :, 63].sum()) > float(exp.scatter[:, :, 5].sum()) > 0
    for name in ("trues", "scatter", "randoms", "attenuation", "normalisation"):
        torch.testing.assert_close(getattr(exp_b, name), getattr(exp, name), rtol=1e-6, atol=0)
