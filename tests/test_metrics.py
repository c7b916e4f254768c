"""Tests of pet_dl.metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from pet_dl.metrics import (
    PEAK_SPHERE_RADIUS_MM,
    hot_spots,
    lesion_bias,
    nema_image_quality,
    nrmse,
    nrmse_range,
    poisson_deviance,
    psnr,
    ssim,
    suv_factor,
    to_suv,
)
from pet_dl.metrics.lesions import _ball_kernel


def _ramp() -> torch.Tensor:
    return torch.linspace(0.0, 10.0, 16 * 16, dtype=torch.float64).reshape(16, 16, 1)


def test_nrmse_of_known_perturbations() -> None:
    ref = _ramp() + 1.0
    assert float(nrmse(1.1 * ref, ref)) == pytest.approx(0.1, rel=1e-12)
    # range-normalised: range 10, constant error 1 -> 0.1
    assert float(nrmse_range(ref + 1.0, ref)) == pytest.approx(0.1, rel=1e-12)
    # one voxel off by d: ||e|| = d
    image = ref.clone()
    image[3, 4, 0] += 5.0
    expected = 5.0 / float(torch.linalg.vector_norm(ref))
    assert float(nrmse(image, ref)) == pytest.approx(expected, rel=1e-12)
    # a mask that excludes the perturbed voxel gives 0
    mask = torch.ones_like(ref, dtype=torch.bool)
    mask[3, 4, 0] = False
    assert float(nrmse(image, ref, mask)) == 0.0
    assert float(nrmse_range(image, ref, mask)) == 0.0


def test_batched_metrics_equal_per_image(generator: torch.Generator) -> None:
    ref = _ramp() + 1.0
    images = torch.stack([ref + torch.randn(ref.shape, generator=generator, dtype=torch.float64) * s for s in (0.1, 1.0)])
    refs = torch.stack([ref, ref])
    for fn in (nrmse, nrmse_range, psnr, ssim):
        batched = fn(images, refs)
        assert batched.shape == (2,)
        for b in range(2):
            assert float(batched[b]) == pytest.approx(float(fn(images[b], ref)), rel=1e-10)
    assert float(nrmse(images[0], ref)) < float(nrmse(images[1], ref))


def test_psnr_of_known_mse() -> None:
    ref = _ramp()  # max 10
    image = ref + 0.5  # MSE = 0.25
    expected = 20 * math.log10(10.0) - 10 * math.log10(0.25)
    assert float(psnr(image, ref)) == pytest.approx(expected, rel=1e-10)
    assert float(psnr(image, ref, data_range=20.0)) == pytest.approx(expected + 20 * math.log10(2), rel=1e-10)


def test_ssim_of_constant_images_by_hand() -> None:
    # constant images: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 L)^2
    a, b, L = 3.0, 5.0, 10.0
    ref = torch.full((16, 16, 1), a, dtype=torch.float64)
    image = torch.full((16, 16, 1), b, dtype=torch.float64)
    c1 = (0.01 * L) ** 2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert float(ssim(image, ref, data_range=L)) == pytest.approx(expected, rel=1e-4)
    assert float(ssim(ref, ref)) == pytest.approx(1.0, rel=1e-12)


def test_ssim_3d_and_slicewise(generator: torch.Generator) -> None:
    ref = 1 + torch.rand(16, 16, 12, generator=generator, dtype=torch.float64)
    noisy = ref + 0.3 * torch.randn(ref.shape, generator=generator, dtype=torch.float64)
    assert 0 < float(ssim(noisy, ref)) < 1
    thin = ref[..., :3]
    per_slice = [float(ssim(noisy[..., k : k + 1], thin[..., k : k + 1], data_range=float(thin.max()))) for k in range(3)]
    assert float(ssim(noisy[..., :3], thin)) == pytest.approx(sum(per_slice) / 3, rel=1e-6)  # MONAI works in float32


def test_suv_conversion_by_hand() -> None:
    # 370 MBq F-18, 70 kg, image 60 min after injection, 5000 Bq/mL
    # decayed dose = 370e6 * 2^(-3600/6586.2) = 253.32 MBq; SUV = 5000 * 70000 / 253.32e6
    image = torch.tensor([[[5000.0]]])
    suv = to_suv(image, 370e6, 70.0, decay_time_s=3600.0)
    assert float(suv) == pytest.approx(1.38166, rel=1e-4)
    assert suv_factor(1e6, 1.0) == pytest.approx(1e-3, rel=1e-12)  # 1 kg, 1 MBq: 1000 g / 1e6 Bq
    with pytest.raises(ValueError, match="weight"):
        suv_factor(370e6, 0.0)


def test_peak_sphere_is_one_millilitre() -> None:
    kernel = _ball_kernel(PEAK_SPHERE_RADIUS_MM, (0.5, 0.5, 0.5), depth=100)
    assert float(kernel.sum()) * 0.125 / 1000.0 == pytest.approx(1.0, rel=0.01)


def test_lesion_bias_of_scaled_lesions() -> None:
    voxel = (2.0, 2.0, 2.0)
    ref = torch.ones(24, 24, 12, dtype=torch.float64)
    labels = torch.zeros(24, 24, 12, dtype=torch.int64)
    labels[4:12, 4:12, 2:10] = 1  # 16 mm cube (4.1 mL): holds the 1 mL sphere
    labels[16:20, 16:20, 4:8] = 2  # 8 mm cube
    ref[labels == 1] = 10.0
    ref[labels == 2] = 8.0
    image = ref.clone()
    image[labels == 1] *= 0.9
    image[17, 17, 5] = 12.0  # one hot voxel in lesion 2
    res = lesion_bias(image, ref, labels, voxel, suv_scale=2.0)
    assert [r.label for r in res] == [1, 2]
    one, two = res
    assert one.volume_ml == pytest.approx(8 * 8 * 8 * 8 / 1000.0)
    assert one.mean == pytest.approx(18.0) and one.reference_mean == pytest.approx(20.0)
    for bias in (one.mean_bias, one.max_bias, one.peak_bias):
        assert bias == pytest.approx(-0.1, rel=1e-12)
    assert two.max_bias == pytest.approx(12.0 / 8.0 - 1.0)
    assert two.mean_bias == pytest.approx((12.0 - 8.0) / 64 / 8.0)
    assert 0 < two.peak_bias < two.max_bias


def _nema_2d(sphere_value: float, noise: float, generator: torch.Generator):
    """A 2D IEC-like slice: 200 mm disk of 1 Bq/mL with six hot disks (2 mm pixels)."""
    n, v = 128, 2.0
    coords = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * v
    xx, yy = torch.meshgrid(coords, coords, indexing="ij")
    body = xx**2 + yy**2 <= 110.0**2
    labels = torch.zeros(n, n, dtype=torch.int64)
    for k, d in enumerate((10.0, 13.0, 17.0, 22.0, 28.0, 37.0), start=1):
        ang = 2 * math.pi * k / 6
        cx, cy = 57.2 * math.cos(ang), 57.2 * math.sin(ang)
        labels[(xx - cx) ** 2 + (yy - cy) ** 2 <= (d / 2) ** 2] = k
    image = body.double() + (labels > 0) * (sphere_value - 1.0)
    image = image + noise * torch.randn(image.shape, generator=generator, dtype=torch.float64) * body
    background = body & (labels == 0)
    return image[..., None], labels[..., None], background[..., None], (v, v, v)


def test_nema_contrast_recovery_of_exact_and_partial_images(generator: torch.Generator) -> None:
    image, labels, background, voxel = _nema_2d(4.0, 0.0, generator)
    results = nema_image_quality(image, labels, background, voxel, activity_ratio=4.0)
    assert len(results) == 6
    for r in results:
        assert r.contrast_recovery == pytest.approx(1.0, rel=1e-12)
        assert r.background_variability == pytest.approx(0.0, abs=1e-12)
    assert [round(r.diameter_mm) for r in results] == [10, 13, 17, 22, 28, 37]
    image, labels, background, voxel = _nema_2d(2.5, 0.0, generator)
    for r in nema_image_quality(image, labels, background, voxel, activity_ratio=4.0):
        assert r.contrast_recovery == pytest.approx(0.5, rel=1e-12)


def test_nema_background_variability_falls_with_roi_size(generator: torch.Generator) -> None:
    image, labels, background, voxel = _nema_2d(4.0, 0.3, generator)
    results = nema_image_quality(image, labels, background, voxel)
    bv = [r.background_variability for r in results]
    assert bv[0] > bv[-1] > 0
    # white noise of sd 0.3: the ROI means vary by about 0.3 / sqrt(pixels in the ROI)
    pixels_10mm = math.pi * 5.0**2 / 4.0
    assert bv[0] == pytest.approx(0.3 / math.sqrt(pixels_10mm), rel=0.6)


def test_metric_input_errors() -> None:
    ref = _ramp()
    with pytest.raises(ValueError, match="shape"):
        nrmse(ref[:8], ref)
    with pytest.raises(ValueError, match="constant"):
        nrmse_range(ref, torch.ones_like(ref))
    with pytest.raises(TypeError, match="integer"):
        lesion_bias(ref, ref, torch.ones_like(ref), (1.0, 1.0, 1.0))


def test_nema_metrics_on_the_iec_phantom_truth(generator: torch.Generator) -> None:
    """On the phantom's own activity, CR is about 1 (partial volume only) and BV about 0."""
    from pet_dl.geometry import ImageGeometry
    from pet_dl.metrics import nema_regions
    from pet_dl.phantoms import SPHERE_DIAMETERS_MM, nema_phantom

    image = ImageGeometry.centered((160, 160, 1), (2.0, 2.0, 2.0))
    phantom = nema_phantom(image, generator)
    labels, background, ratio, diameters = nema_regions(phantom)
    assert ratio == pytest.approx(4.0)
    results = nema_image_quality(phantom.activity, labels, background, image.voxel_size_mm,
                                 activity_ratio=ratio, sphere_diameters_mm=diameters)
    assert [r.diameter_mm for r in results] == list(SPHERE_DIAMETERS_MM)
    assert results[-1].contrast_recovery == pytest.approx(1.0, abs=0.05)
    assert all(0.7 < r.contrast_recovery <= 1.01 for r in results)
    assert all(r.background_variability < 1e-3 for r in results)


def test_hot_spots_count_planted_blobs_outside_the_excluded_region() -> None:
    """3 x 3-voxel squares (= the 4 mm ball on 2.6 mm voxels) 100 % above a uniform
    reference are found once each, one inside ``exclude`` is not; 40 % is below the 50 %
    threshold; the reference itself and a smooth scaling by 1.3 have none."""
    voxel = (2.6, 2.6, 2.6)
    reference = torch.zeros(40, 40, 1)
    reference[4:36, 4:36] = 10.0
    image = reference.clone()
    for x, y in ((10, 10), (10, 28), (28, 10)):
        image[x - 1 : x + 2, y - 1 : y + 2] *= 2.0
    image[27:30, 27:30] *= 1.4  # too weak
    exclude = torch.zeros(40, 40, 1, dtype=torch.int64)
    exclude[26:31, 7:14] = 1  # covers the blob at (28, 10)
    found = hot_spots(image, reference, voxel, exclude)
    assert found.sum() == 2
    assert bool(found[10, 10, 0]) and bool(found[10, 28, 0])
    assert hot_spots(image, reference, voxel).sum() == 3
    assert hot_spots(image, reference, voxel, threshold=0.3).sum() == 4
    assert hot_spots(reference, reference, voxel).sum() == 0
    assert hot_spots(1.3 * reference, reference, voxel).sum() == 0
    with pytest.raises(ValueError, match="one shape"):
        hot_spots(image[:, :20], reference, voxel)


def test_poisson_deviance_is_zero_at_the_data_and_one_per_bin_for_poisson_counts(
    generator: torch.Generator,
) -> None:
    expected = 20.0 + 80.0 * torch.rand(2, 200, 500, generator=generator, dtype=torch.float64)
    assert float(poisson_deviance(expected, expected).abs().max()) < 1e-12
    counts = torch.poisson(expected, generator=generator)
    deviance = poisson_deviance(expected, counts)
    assert deviance.shape == (2,)
    # E[D] = 1 + 1 / (6 ybar) + O(ybar^-2) per bin; 1e5 bins: +-0.01
    assert torch.allclose(deviance, torch.full((2,), 1.003, dtype=torch.float64), atol=0.015)
    # an image the data contradict: 20 % too much activity everywhere
    assert bool((poisson_deviance(1.2 * expected, counts) > deviance + 1.0).all())
    with pytest.raises(ValueError, match="differ"):
        poisson_deviance(expected, counts[:1])
