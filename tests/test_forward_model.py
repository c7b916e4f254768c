"""Forward model: projector and resolution adjoints, attenuation, subsets, batching, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from pet_dl.errors import GeometryError
from pet_dl.forward_model import (
    FWHM_PER_SIGMA,
    GaussianResolution,
    PETForwardModel,
    SinogramProjector,
    attenuation_factors,
)
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.operators import adjointness_error

SCANNER = get_scanner("test")


def _geom_2d(tof: bool = False, num_radial: int = 65, n: int = 32, voxel: float = 4.0):
    sino = SinogramGeometry.two_d(SCANNER, num_radial=num_radial, tof=tof)
    return sino, ImageGeometry.centered((n, n, 1), (voxel, voxel, 4.0))


def _geom_3d():
    sino = SinogramGeometry(SCANNER, num_radial=33, span=1)
    return sino, ImageGeometry.centered((16, 16, 7), (6.0, 6.0, 2.0))


def _disc(image: ImageGeometry, radius_mm: float) -> torch.Tensor:
    x = torch.as_tensor(image.voxel_centers(0), dtype=torch.float64)
    y = torch.as_tensor(image.voxel_centers(1), dtype=torch.float64)
    inside = (x[:, None] ** 2 + y[None, :] ** 2) <= radius_mm**2
    return inside[..., None].expand(image.shape).to(torch.float64).contiguous()


@pytest.mark.parametrize("geom", ["2d", "2d-tof", "3d"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_projector_adjointness(geom: str, dtype, tol, generator: torch.Generator) -> None:
    sino, image = _geom_3d() if geom == "3d" else _geom_2d(tof=geom == "2d-tof")
    op = SinogramProjector(sino, image)
    assert op.out_shape == sino.shape and op.in_shape == image.shape
    assert adjointness_error(op, generator, dtype) <= tol


def test_tof_bins_sum_to_non_tof(generator: torch.Generator) -> None:
    sino, image = _geom_2d()
    tof = SinogramProjector(_geom_2d(tof=True)[0], image)
    x = torch.rand(image.shape, generator=generator, dtype=torch.float64) * _disc(image, 50.0)
    plain = SinogramProjector(sino, image)(x)
    summed = tof(x).sum(-1)
    central = plain > 0.5 * plain.max()  # LORs well inside: the TOF kernel is not truncated
    rel = (summed - plain).abs()[central] / plain[central]
    assert float(rel.max()) < 5e-3


def test_projector_subset_is_a_view_selection(generator: torch.Generator) -> None:
    sino, image = _geom_2d(tof=True)
    op = SinogramProjector(sino, image)
    views = torch.tensor([3, 10, 11, 40])
    sub = op.subset(views)
    assert sub.out_shape == (1, 4, 65, SCANNER.tof.num_bins)
    x = torch.rand(image.shape, generator=generator)
    torch.testing.assert_close(sub(x), op(x)[:, views], rtol=1e-6, atol=1e-6)
    assert adjointness_error(sub, generator, torch.float64) <= 1e-10
    torch.testing.assert_close(sub.subset(torch.tensor([1, 3])).views, torch.tensor([10, 40]))
    with pytest.raises(IndexError, match="view"):
        op.subset(torch.tensor([56]))


def test_projector_line_integral_through_a_uniform_disc() -> None:
    """Central LOR of view 0 through a disc of radius R: integral = 2 R (x 1)."""
    sino, image = _geom_2d(n=128, voxel=1.0)
    y = SinogramProjector(sino, image)(_disc(image, 40.0))
    centre = sino.num_radial // 2
    assert float(y[0, 0, centre]) == pytest.approx(80.0, rel=0.02)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_resolution_adjointness(dtype, tol, generator: torch.Generator) -> None:
    image = ImageGeometry.centered((20, 17, 9), (2.0, 2.5, 3.0))
    op = GaussianResolution(image, (5.0, 7.0, 4.0))
    assert adjointness_error(op, generator, dtype) <= tol
    # self-adjoint: A^T y == A y exactly
    y = torch.rand(image.shape, generator=generator, dtype=dtype)
    torch.testing.assert_close(op.adjoint(y), op(y), rtol=0, atol=0)


def test_resolution_preserves_sum_and_matches_fwhm() -> None:
    image = ImageGeometry.centered((41, 41, 31), (1.0, 1.5, 2.0))
    fwhm = (6.0, 9.0, 5.0)
    op = GaussianResolution(image, fwhm)
    point = torch.zeros(image.shape, dtype=torch.float64)
    point[20, 20, 15] = 1000.0
    out = op(point)
    assert float(out.sum()) == pytest.approx(1000.0, rel=1e-9)
    assert float(out.min()) >= 0
    for axis in range(3):
        profile = out.sum(dim=tuple(a for a in range(3) if a != axis))
        pos = (
            torch.arange(image.shape[axis], dtype=torch.float64) - (image.shape[axis] // 2)
        ) * image.voxel_size_mm[axis]
        mean = float((profile * pos).sum() / profile.sum())
        sigma = math.sqrt(float((profile * (pos - mean) ** 2).sum() / profile.sum()))
        assert mean == pytest.approx(0.0, abs=1e-9)
        assert sigma * FWHM_PER_SIGMA == pytest.approx(fwhm[axis], rel=0.01)


def test_resolution_leaves_single_voxel_axis_alone(generator: torch.Generator) -> None:
    image = ImageGeometry.centered((24, 24, 1), (2.0, 2.0, 2.0))
    op = GaussianResolution(image, 6.0)
    x = torch.rand(3, *image.shape, generator=generator, dtype=torch.float64)
    out = op(x)
    assert out.shape == x.shape
    # the z axis (1 voxel) is not blurred away: a flat image stays flat inside
    flat = op(torch.ones(image.shape, dtype=torch.float64))
    assert float(flat[12, 12, 0]) == pytest.approx(1.0, rel=1e-9)
    torch.testing.assert_close(out[1], op(x[1]))
    with pytest.raises(ValueError, match="fwhm_mm"):
        GaussianResolution(image, -1.0)


def test_attenuation_of_uniform_cylinder_matches_analytic_chords() -> None:
    sino, image = _geom_2d(n=160, voxel=1.0)
    radius, mu = 60.0, 0.0096
    factors = attenuation_factors(mu * _disc(image, radius), sino, image)
    assert factors.shape == sino.shape
    start, end = sino.lor_endpoints(dtype=torch.float64)
    d = end - start
    # distance of each LOR from the axis (2D: z = 0)
    cross = start[..., 0] * d[..., 1] - start[..., 1] * d[..., 0]
    dist = cross.abs() / d[..., :2].norm(dim=-1)
    chord = 2.0 * torch.sqrt((radius**2 - dist**2).clamp_min(0.0))
    inner = chord > 20.0
    measured = -torch.log(factors.double())[inner]
    rel = ((measured - mu * chord[inner]) / (mu * chord[inner])).abs()
    assert float(rel.median()) < 0.01
    assert float(factors[~(chord > 0)].min()) == 1.0  # LORs missing the cylinder


def test_attenuation_tof_repeats_over_bins() -> None:
    sino, image = _geom_2d(tof=True)
    mu = 0.0096 * _disc(image, 40.0).float()
    f = attenuation_factors(mu, sino, image)
    assert f.shape == sino.shape
    torch.testing.assert_close(f[..., 0], attenuation_factors(mu, _geom_2d()[0], image))
    torch.testing.assert_close(f[..., 0], f[..., -1])


def _model(generator, sino, image, batch=None, dtype=torch.float64):
    shape = sino.shape if batch is None else (batch, *sino.shape)
    m = torch.rand(shape, generator=generator, dtype=dtype) + 0.5
    a = torch.rand(shape, generator=generator, dtype=dtype)
    cal = 2.5 if batch is None else torch.rand(batch, generator=generator, dtype=dtype) + 1
    return (
        PETForwardModel(SinogramProjector(sino, image), m, a, GaussianResolution(image, 8.0), cal),
        m,
        a,
        cal,
    )


@pytest.mark.parametrize("tof", [False, True])
def test_forward_model_linear_adjointness(tof: bool, generator: torch.Generator) -> None:
    sino, image = _geom_2d(tof=tof)
    model, *_ = _model(generator, sino, image)
    assert adjointness_error(model.linear, generator, torch.float64) <= 1e-10
    model32, *_ = _model(generator, sino, image, dtype=torch.float32)
    assert adjointness_error(model32.linear, generator, torch.float32) <= 1e-5


def test_forward_model_equation(generator: torch.Generator) -> None:
    sino, image = _geom_2d()
    model, m, a, cal = _model(generator, sino, image)
    x = torch.rand(image.shape, generator=generator, dtype=torch.float64) * 1000
    proj = SinogramProjector(sino, image)
    expected = cal * m * proj(GaussianResolution(image, 8.0)(x)) + a
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(model(torch.zeros_like(x)), a)


def test_batched_factors_match_separate_models(generator: torch.Generator) -> None:
    sino, image = _geom_2d()
    model, m, a, cal = _model(generator, sino, image, batch=3)
    assert model.batch_size == 3
    x = torch.rand(3, *image.shape, generator=generator, dtype=torch.float64)
    y = model(x)
    sens = model.sensitivity()
    assert y.shape == (3, *sino.shape) and sens.shape == (3, *image.shape)
    for b in range(3):
        single = PETForwardModel(
            SinogramProjector(sino, image),
            m[b],
            a[b],
            GaussianResolution(image, 8.0),
            float(cal[b]),
        )
        torch.testing.assert_close(y[b], single(x[b]), rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(sens[b], single.sensitivity(), rtol=1e-12, atol=1e-9)
    assert adjointness_error(model.linear, generator, torch.float64) <= 1e-10


def test_gradcheck_forward_model(generator: torch.Generator) -> None:
    sino = SinogramGeometry.two_d(SCANNER, num_radial=9, view_mashing=4)
    image = ImageGeometry.centered((5, 5, 1), (8.0, 8.0, 4.0))
    model, *_ = _model(generator, sino, image)
    x = torch.rand(image.shape, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)
    # the gradient of <ybar, w> is the adjoint of w
    w = torch.rand(sino.shape, generator=generator, dtype=torch.float64)
    (grad,) = torch.autograd.grad((model(x) * w).sum(), x)
    torch.testing.assert_close(grad, model.adjoint(w), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tof", [False, True])
def test_subset_sensitivities_sum_to_full(tof: bool, generator: torch.Generator) -> None:
    sino, image = _geom_2d(tof=tof)
    model, *_ = _model(generator, sino, image)
    subsets = model.subsets(4)
    assert len(subsets) == 4 and model.subsets(4) is subsets  # cached
    total = sum(s.sensitivity() for s in subsets)
    torch.testing.assert_close(total, model.sensitivity(), rtol=1e-10, atol=1e-10)
    x = torch.rand(image.shape, generator=generator, dtype=torch.float64)
    y = model(x)
    for k, sub in enumerate(subsets):
        torch.testing.assert_close(sub(x), model.subset_data(y, k, 4), rtol=1e-12, atol=1e-10)
    parts = sum(model.subset_data(y, k, 4).sum() for k in range(4))
    assert float(parts) == pytest.approx(float(y.sum()), rel=1e-12)


def test_sensitivity_cached_and_forward_stateless(generator: torch.Generator) -> None:
    sino, image = _geom_2d()
    model, *_ = _model(generator, sino, image)
    s = model.sensitivity()
    assert model.sensitivity() is s
    assert float(s.min()) >= 0 and float(s.max()) > 0
    x = torch.rand(image.shape, generator=generator, dtype=torch.float64)
    first = model(x)
    torch.testing.assert_close(model(x), first, rtol=0, atol=0)


def test_model_moves_with_to(device: torch.device, generator: torch.Generator) -> None:
    sino, image = _geom_2d()
    model, *_ = _model(generator, sino, image, dtype=torch.float32)
    cpu_y = model(torch.ones(image.shape))
    moved = model.to(device)
    assert moved.projector.lor_start.device.type == device.type
    y = moved(torch.ones(image.shape, device=device))
    torch.testing.assert_close(y.cpu(), cpu_y, rtol=1e-4, atol=1e-3)


def test_bad_inputs_are_named(generator: torch.Generator) -> None:
    sino, image = _geom_2d()
    proj = SinogramProjector(sino, image)
    with pytest.raises(GeometryError, match="multiplicative"):
        PETForwardModel(proj, torch.ones(2, 3))
    with pytest.raises(ValueError, match="calibration"):
        PETForwardModel(proj, calibration=-1.0)
    with pytest.raises(GeometryError, match="batch sizes"):
        PETForwardModel(proj, torch.ones(2, *sino.shape), calibration=torch.ones(3))
    with pytest.raises(GeometryError, match=r"\(\*batch, 32, 32, 1\)"):
        proj(torch.ones(32, 32))
    with pytest.raises(ValueError, match="num_subsets"):
        PETForwardModel(proj).subsets(100)
