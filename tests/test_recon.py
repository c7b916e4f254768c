"""Tests of pet_dl.recon: EM step, MLEM, OSEM, MAP-RDP, post-filter, reconstruct_classical.

Algorithm tests use a small forward model built from a dense random non-negative matrix
(``DenseModel``, the PETForwardModel interface) with numpy reference implementations;
geometry tests use the real forward model on the test scanner.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pet_dl.recon import (
    em_update,
    gaussian_postfilter,
    map_rdp,
    mlem,
    osem,
    rdp_gradient_and_curvature,
    rdp_value,
)
from pet_dl.recon.rdp import _offsets

IMAGE = (5, 4, 1)
SINO = (1, 8, 9)  # planes, views, radial


class _Linear:
    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        self.in_shape, self.out_shape = in_shape, out_shape


class DenseModel(nn.Module):
    """``ybar = A x + a`` with a dense matrix; views are sinogram axis -2."""

    def __init__(
        self,
        matrix: torch.Tensor,
        additive: torch.Tensor | None,
        image_shape: tuple[int, int, int] = IMAGE,
        sino_shape: tuple[int, int, int] = SINO,
        views: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.full_sino = sino_shape
        self.views = torch.arange(sino_shape[1]) if views is None else views
        self.sino = (sino_shape[0], len(self.views), sino_shape[2])
        rows = torch.arange(math.prod(sino_shape)).reshape(sino_shape)[:, self.views, :].reshape(-1)
        self.matrix = matrix[rows]
        self.full_matrix = matrix
        self.image_shape = image_shape
        self.full_additive = additive
        self.additive = None if additive is None else additive[..., self.views, :]
        self.linear = _Linear(image_shape, self.sino)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-3]
        y = (x.reshape(*batch, -1) @ self.matrix.T).reshape(*batch, *self.sino)
        return y if self.additive is None else y + self.additive

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        batch = y.shape[:-3]
        return (y.reshape(*batch, -1) @ self.matrix).reshape(*batch, *self.image_shape)

    def sensitivity(self) -> torch.Tensor:
        return self.adjoint(torch.ones(self.sino, dtype=self.matrix.dtype))

    def subsets(self, n: int) -> list[DenseModel]:
        return [
            DenseModel(self.full_matrix, self.full_additive, self.image_shape, self.full_sino,
                       torch.arange(k, self.full_sino[1], n))
            for k in range(n)
        ]

    def subset_data(self, y: torch.Tensor, k: int, n: int) -> torch.Tensor:
        return y[..., k::n, :]


def _problem(generator: torch.Generator, background: float = 0.0, dtype=torch.float64):
    n, m = math.prod(IMAGE), math.prod(SINO)
    matrix = torch.rand(m, n, generator=generator, dtype=dtype)
    matrix = matrix * (torch.rand(m, n, generator=generator, dtype=dtype) < 0.5)
    x_true = 10 + 40 * torch.rand(IMAGE, generator=generator, dtype=dtype)
    additive = torch.full(SINO, background, dtype=dtype) if background else None
    model = DenseModel(matrix, additive)
    return model, x_true


def _numpy_osem(matrix, additive, y, x0, iterations, subsets, views):
    """Reference OSEM on the flattened problem (row blocks chosen by view)."""
    a = matrix.numpy()
    yv = y.numpy().reshape(-1)
    bg = np.zeros_like(yv) if additive is None else additive.numpy().reshape(-1)
    x = x0.numpy().reshape(-1).copy()
    view_of_row = np.broadcast_to(np.arange(views)[None, :, None], SINO).reshape(-1)
    for _ in range(iterations):
        for k in range(subsets):
            rows = (view_of_row % subsets) == k
            ak = a[rows]
            ybar = ak @ x + bg[rows]
            x = x / ak.sum(0) * (ak.T @ (yv[rows] / ybar))
    return x.reshape(IMAGE)


def test_em_update_handles_zero_expectation_and_zero_sensitivity() -> None:
    """ybar == 0 gives ratio 0 (no NaN), zero sensitivity keeps the voxel at 0 (float32)."""
    matrix = torch.zeros(math.prod(SINO), math.prod(IMAGE))
    matrix[:20, :10] = 1.0  # voxels 10.. are seen by no LOR; bins 20.. see nothing
    model = DenseModel(matrix, None)
    y = torch.full(SINO, 10.0)  # bins 20.. have counts but expectation 0
    x = torch.ones(IMAGE)
    x_new = em_update(x, model, y, model.sensitivity())
    assert torch.isfinite(x_new).all()
    flat = x_new.reshape(-1)
    assert torch.equal(flat[10:], torch.zeros(10))
    # the seen voxels: ybar = 10 = y on the first 20 bins, so x stays 1
    torch.testing.assert_close(flat[:10], torch.ones(10))


def test_mlem_keeps_total_counts_without_background(generator: torch.Generator) -> None:
    model, x_true = _problem(generator)
    y = torch.poisson(model(x_true), generator=generator)
    x = None
    for _ in range(5):
        x = mlem(model, y, 1, x0=x)
        assert float(model(x).sum()) == pytest.approx(float(y.sum()), rel=1e-10)


def test_mlem_error_on_noiseless_data_falls(generator: torch.Generator) -> None:
    model, x_true = _problem(generator)
    y = model(x_true)
    x = mlem(model, y, 0)  # the uniform start image
    errors = [float(torch.linalg.vector_norm(x - x_true))]
    for _ in range(10):
        x = mlem(model, y, 1, x0=x)
        errors.append(float(torch.linalg.vector_norm(x - x_true)))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0], errors


@pytest.mark.parametrize("subsets", [1, 4])
def test_osem_matches_reference(generator: torch.Generator, subsets: int) -> None:
    """OSEM (and, with one subset, MLEM) equal an independent numpy implementation."""
    model, x_true = _problem(generator, background=2.0)
    y = torch.poisson(model(x_true), generator=generator)
    x0 = torch.full(IMAGE, 7.0, dtype=torch.float64)
    got = osem(model, y, 3, subsets, x0=x0)
    ref = _numpy_osem(model.matrix, model.additive, y, x0, 3, subsets, SINO[1])
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10)
    if subsets == 1:
        torch.testing.assert_close(mlem(model, y, 3, x0=x0), got, rtol=1e-12, atol=0)


def test_default_start_image_matches_counts(generator: torch.Generator) -> None:
    """The default uniform start predicts the measured true counts (Bq/mL scale)."""
    model, x_true = _problem(generator, background=3.0)
    y = model(x_true)
    x1 = mlem(model, y, 0)
    assert float(x1.std()) == 0.0
    trues = float(y.sum()) - 3.0 * math.prod(SINO)
    assert float(model(x1).sum()) - 3.0 * math.prod(SINO) == pytest.approx(trues, rel=1e-10)


def test_batched_reconstruction_equals_single(generator: torch.Generator) -> None:
    model, x_true = _problem(generator, background=1.0)
    y = torch.stack([torch.poisson(model(s * x_true), generator=generator) for s in (1.0, 0.1)])
    batched = osem(model, y, 2, 2)
    for b in range(2):
        torch.testing.assert_close(batched[b], osem(model, y[b], 2, 2), rtol=1e-12, atol=0)
    batched_map = map_rdp(model, y, beta=5.0, num_iterations=2, num_subsets=2, eps=0.1)
    single = map_rdp(model, y[1], beta=5.0, num_iterations=2, num_subsets=2, eps=0.1)
    torch.testing.assert_close(batched_map[1], single, rtol=1e-12, atol=0)


def test_all_algorithms_keep_positivity_in_float32(generator: torch.Generator) -> None:
    model, x_true = _problem(generator, background=5.0, dtype=torch.float32)
    y = torch.poisson(0.05 * model(x_true), generator=generator)  # very noisy, many zeros
    for x in (
        mlem(model, y, 10),
        osem(model, y, 10, 4),
        map_rdp(model, y, beta=50.0, num_iterations=10, num_subsets=4),
    ):
        assert torch.isfinite(x).all()
        assert float(x.min()) >= 0.0


def test_map_with_zero_beta_equals_osem(generator: torch.Generator) -> None:
    model, x_true = _problem(generator, background=1.0)
    y = torch.poisson(model(x_true), generator=generator)
    torch.testing.assert_close(
        map_rdp(model, y, beta=0.0, num_iterations=3, num_subsets=4), osem(model, y, 3, 4),
        rtol=1e-12, atol=0,
    )


def test_larger_beta_gives_smoother_images(generator: torch.Generator) -> None:
    model, _ = _problem(generator, background=1.0)
    x_true = torch.full(IMAGE, 20.0, dtype=torch.float64)
    y = torch.poisson(model(x_true), generator=generator)
    stds = [
        float(map_rdp(model, y, beta=beta, num_iterations=20, num_subsets=1).std())
        for beta in (0.0, 10.0, 100.0, 1000.0)
    ]
    assert all(b < a for a, b in zip(stds, stds[1:])), stds
    assert stds[-1] < 0.2 * stds[0]


def test_map_increases_the_penalised_likelihood(generator: torch.Generator) -> None:
    model, x_true = _problem(generator, background=1.0)
    y = torch.poisson(model(x_true), generator=generator)
    beta, eps = 20.0, 0.1

    def objective(x: torch.Tensor) -> float:
        ybar = model(x)
        return float((y * torch.log(ybar) - ybar).sum() - beta * rdp_value(x, eps=eps))

    x = None
    values = []
    for _ in range(8):
        x = map_rdp(model, y, beta=beta, num_iterations=1, eps=eps, x0=x)
        values.append(objective(x))
    assert all(b >= a - 1e-9 * abs(a) for a, b in zip(values, values[1:])), values


def test_rdp_gradient_and_curvature_match_autograd(generator: torch.Generator) -> None:
    voxel = (2.0, 2.0, 3.0)
    x = (0.1 + torch.rand(4, 3, 3, generator=generator, dtype=torch.float64)).requires_grad_()
    value = rdp_value(x, gamma=2.0, eps=0.01, voxel_size_mm=voxel)
    (grad_auto,) = torch.autograd.grad(value, x, create_graph=True)
    grad, curv = rdp_gradient_and_curvature(x.detach(), gamma=2.0, eps=0.01, voxel_size_mm=voxel)
    torch.testing.assert_close(grad, grad_auto.detach(), rtol=1e-10, atol=1e-12)
    flat_grad = grad_auto.reshape(-1)
    for j in (0, 7, 20, 35):
        (row,) = torch.autograd.grad(flat_grad[j], x, retain_graph=True)
        assert float(curv.reshape(-1)[j]) == pytest.approx(float(row.reshape(-1)[j]), rel=1e-10)


def test_rdp_neighbourhood_is_in_plane_for_2d_images() -> None:
    assert len(_offsets(1)) == 4  # 8 neighbours, one of each +/- pair
    assert len(_offsets(5)) == 13  # 26 neighbours
    # a uniform image has zero prior value and gradient
    x = torch.full((2, 6, 6, 1), 3.0)
    assert torch.equal(rdp_value(x), torch.zeros(2))
    assert float(rdp_gradient_and_curvature(x)[0].abs().max()) == 0.0


def test_gaussian_postfilter_width_and_conservation() -> None:
    from pet_dl.geometry import ImageGeometry

    image = ImageGeometry.centered((41, 41, 1), (2.0, 2.0, 2.0))
    x = torch.zeros((2, *image.shape), dtype=torch.float64)
    x[:, 20, 20, 0] = 1.0
    x[1] *= 5.0
    fwhm = 8.0
    y = gaussian_postfilter(x, image, fwhm)
    torch.testing.assert_close(y.sum(dim=(1, 2, 3)), torch.tensor([1.0, 5.0], dtype=torch.float64))
    offsets_mm = (torch.arange(41, dtype=torch.float64) - 20) * 2.0
    profile = y[0, :, :, 0].sum(dim=1)
    variance = float((profile * offsets_mm**2).sum())
    expected = (fwhm / (2 * math.sqrt(2 * math.log(2)))) ** 2 + 2.0**2 / 12  # + voxel width
    assert variance == pytest.approx(expected, rel=0.01)
    assert torch.equal(gaussian_postfilter(x, image, 0.0), x)
    with pytest.raises(ValueError, match="fwhm_mm"):
        gaussian_postfilter(x, image, -1.0)


def test_bad_inputs_raise_clear_errors(generator: torch.Generator) -> None:
    model, x_true = _problem(generator)
    y = model(x_true)
    with pytest.raises(ValueError, match="negative"):
        mlem(model, -y, 2)
    with pytest.raises(ValueError, match="num_subsets"):
        osem(model, y, 2, 0)
    with pytest.raises(ValueError, match="beta"):
        map_rdp(model, y, beta=-1.0)
    with pytest.raises(ValueError, match="x0"):
        mlem(model, y, 1, x0=torch.ones(3, 3, 1, dtype=torch.float64))


# ---------------------------------------------------------------- real forward model (2D)


def _small_nema(sphere_ratio: float = 4.0):
    """A small 2D IEC-like slice for the test scanner: 130 mm disk, spheres 12-24 mm."""
    from pet_dl.geometry import ImageGeometry

    image = ImageGeometry.centered((48, 48, 1), (3.0, 3.0, 3.0))
    coords = torch.as_tensor(image.voxel_centers(0), dtype=torch.float64)
    xx, yy = torch.meshgrid(coords, torch.as_tensor(image.voxel_centers(1), dtype=torch.float64), indexing="ij")
    body = xx**2 + yy**2 <= 65.0**2
    labels = torch.zeros(image.shape[:2], dtype=torch.int64)
    for k, d in enumerate((12.0, 18.0, 24.0), start=1):
        ang = 2 * math.pi * k / 3
        labels[(xx - 33 * math.cos(ang)) ** 2 + (yy - 33 * math.sin(ang)) ** 2 <= (d / 2) ** 2] = k
    activity = 1000.0 * (body.double() + (sphere_ratio - 1.0) * (labels > 0))
    mu = 0.0096 * body.double()
    return image, activity[..., None].float(), mu[..., None].float(), labels[..., None], body[..., None]


def _scan_of(image, activity, mu, calibration=1e-3, background_fraction=0.1, generator=None):
    from pet_dl.forward_model import PETForwardModel, SinogramProjector, attenuation_factors
    from pet_dl.geometry import SinogramGeometry, get_scanner
    from pet_dl.scan import AcquisitionMetadata, Scan

    sino = SinogramGeometry.two_d(get_scanner("test"))
    mult = attenuation_factors(mu, sino, image)
    trues = PETForwardModel(SinogramProjector(sino, image), mult, None, calibration=calibration)(activity)
    additive = torch.full(sino.shape, background_fraction * float(trues.mean()))
    expected = trues + additive
    prompts = expected if generator is None else torch.poisson(expected, generator=generator)
    return Scan(sino, image, prompts.float(), mult.float(), additive, calibration, 0.0,
                AcquisitionMetadata(duration_s=600.0))


def test_nema_contrast_recovery_rises_with_iterations() -> None:
    from pet_dl.metrics import nema_image_quality
    from pet_dl.recon import reconstruct_classical

    image, activity, mu, labels, body = _small_nema()
    scan = _scan_of(image, activity, mu)  # noiseless
    background = body & (labels == 0)
    cr = []
    for iterations in (1, 3, 10):
        x = reconstruct_classical(scan, "osem", num_iterations=iterations, num_subsets=4)
        res = nema_image_quality(x, labels, background, image.voxel_size_mm, activity_ratio=4.0)
        cr.append([r.contrast_recovery for r in res])
    for sphere in range(3):
        values = [c[sphere] for c in cr]
        assert values[0] < values[1] < values[2], values
    assert 0.5 < cr[-1][-1] < 1.1  # the largest sphere recovers most of its contrast


def test_reconstruct_classical_is_in_bqml_at_any_dose(generator: torch.Generator) -> None:
    """Full and 1/10-count scans (calibration and background scaled) both give Bq/mL."""
    from pet_dl.recon import reconstruct_classical

    image, activity, mu, labels, body = _small_nema()
    coords = torch.as_tensor(image.voxel_centers(0))
    centre = (coords[:, None] ** 2 + coords[None, :] ** 2 <= 15.0**2)[..., None]  # uniform, 1000
    for fraction in (1.0, 0.1):
        scan = _scan_of(image, activity, mu, calibration=5e-2 * fraction, generator=generator)
        for algorithm, kw in (
            ("osem", {"num_iterations": 6}),
            ("mlem", {"num_iterations": 60}),
            ("map", {"num_iterations": 6, "beta": 1e-3 * fraction}),
        ):
            x = reconstruct_classical(scan, algorithm, postfilter_fwhm_mm=6.0, **kw)
            assert x.shape == image.shape and x.dtype == torch.float32
            got = (float(x.sum()), float(x[centre].mean()))
            assert got[0] == pytest.approx(float(activity.sum()), rel=0.03), (fraction, algorithm)
            assert got[1] == pytest.approx(1000.0, rel=0.05), (fraction, algorithm)


def test_reconstruct_classical_rejects_bad_parameters() -> None:
    from pet_dl.recon import reconstruct_classical

    image, activity, mu, _, _ = _small_nema()
    scan = _scan_of(image, activity, mu)
    with pytest.raises(ValueError, match="algorithm"):
        reconstruct_classical(scan, "fbp")
    with pytest.raises(ValueError, match="views"):
        reconstruct_classical(scan, "osem", num_subsets=1000)
    with pytest.raises(ValueError, match="beta"):
        reconstruct_classical(scan, "osem", beta=1.0)


def test_osem_callback_sees_each_iteration_as_separate_runs_would(generator) -> None:
    """The callback's image after iteration k equals a fresh OSEM run of k iterations."""
    model, x_true = _problem(generator, background=2.0)
    y = torch.poisson(model(x_true), generator=generator)
    seen: dict[int, torch.Tensor] = {}
    osem(model, y, 3, 2, callback=lambda k, x: seen.__setitem__(k, x.clone()))
    assert sorted(seen) == [1, 2, 3]
    for k in (1, 2, 3):
        torch.testing.assert_close(seen[k], osem(model, y, k, 2), rtol=1e-12, atol=0)
