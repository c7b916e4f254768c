"""Non-TOF Joseph projector: adjointness, hand-derived line integrals, chords, autograd, errors."""

from __future__ import annotations

import math

import pytest
import torch

from pet_dl.projector import joseph_back, joseph_forward

CPU_BACKENDS = ["reference", "numba"]


def random_lors(
    num: int, radius: float, generator: torch.Generator, dtype: torch.dtype = torch.float64, z_max: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random LORs with both endpoints on a sphere (or a cylinder when ``z_max`` is set), mm."""

    def points() -> torch.Tensor:
        if z_max is None:
            p = torch.randn(num, 3, generator=generator, dtype=torch.float64)
            return radius * p / p.norm(dim=1, keepdim=True)
        phi = 2 * math.pi * torch.rand(num, generator=generator, dtype=torch.float64)
        z = (2 * torch.rand(num, generator=generator, dtype=torch.float64) - 1) * z_max
        return torch.stack([radius * phi.cos(), radius * phi.sin(), z], dim=1)

    return points().to(dtype), points().to(dtype)


def rel_adjoint_error(x: torch.Tensor, y: torch.Tensor, ax: torch.Tensor, aty: torch.Tensor) -> float:
    lhs = (ax * y).sum()
    rhs = (x * aty).sum()
    return float((lhs - rhs).abs() / lhs.abs())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_adjointness_random_lors_batched(backend: str, dtype: torch.dtype, tol: float, generator: torch.Generator) -> None:
    shape, origin, vs = (13, 11, 7), (-11.0, -9.5, -6.0), (2.0, 1.9, 2.1)
    start, end = random_lors(3000, 30.0, generator, dtype)
    x = torch.rand(2, *shape, generator=generator, dtype=torch.float64).to(dtype)
    y = torch.rand(2, 3000, generator=generator, dtype=torch.float64).to(dtype)
    ax = joseph_forward(x, start, end, origin, vs, backend=backend)
    aty = joseph_back(y, start, end, shape, origin, vs, backend=backend)
    assert ax.shape == (2, 3000) and aty.shape == (2, *shape)
    assert (ax > 0).sum() > 1000  # most LORs hit the image
    assert rel_adjoint_error(x.double(), y.double(), ax.double(), aty.double()) <= tol
    # batch entries are independent projections
    assert torch.allclose(ax[1], joseph_forward(x[1], start, end, origin, vs, backend=backend), rtol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_axis_aligned_ray_through_voxel_centres(backend: str, axis: int, generator: torch.Generator) -> None:
    """A ray along axis k through voxel centres integrates to sum x voxel_size[k]."""
    shape, vs = (6, 7, 5), (1.5, 2.0, 2.5)
    origin = (-3.0, 4.0, 10.0)
    image = torch.rand(shape, generator=generator, dtype=torch.float64)
    idx = [2, 3, 1]
    centre = [origin[k] + idx[k] * vs[k] for k in range(3)]
    start, end = list(centre), list(centre)
    start[axis] = origin[axis] - 50.0
    end[axis] = origin[axis] + 50.0 + shape[axis] * vs[axis]
    s = torch.tensor([start], dtype=torch.float64)
    e = torch.tensor([end], dtype=torch.float64)
    line = image.movedim(axis, 0)[(slice(None), *[idx[k] for k in range(3) if k != axis])]
    expected = line.sum() * vs[axis]
    got = joseph_forward(image, s, e, origin, vs, backend=backend)
    assert torch.allclose(got, expected.reshape(1), rtol=1e-12)
    # reversed direction gives the same integral
    assert torch.allclose(joseph_forward(image, e, s, origin, vs, backend=backend), got, rtol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ray_halfway_between_rows_is_mean(backend: str, generator: torch.Generator) -> None:
    shape, vs, origin = (8, 6, 1), (2.0, 2.0, 2.0), (-7.0, -5.0, 0.0)
    image = torch.rand(shape, generator=generator, dtype=torch.float64)
    y = origin[1] + 2.5 * vs[1]  # halfway between rows 2 and 3
    s = torch.tensor([[-100.0, y, 0.0]], dtype=torch.float64)
    e = torch.tensor([[100.0, y, 0.0]], dtype=torch.float64)
    expected = 0.5 * (image[:, 2, 0] + image[:, 3, 0]).sum() * vs[0]
    got = joseph_forward(image, s, e, origin, vs, backend=backend)
    assert torch.allclose(got, expected.reshape(1), rtol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_segment_is_clipped_to_endpoints(backend: str) -> None:
    """Only planes between the endpoints count: a segment over 3 voxel centres gives 3 x vs."""
    image = torch.ones(10, 1, 1, dtype=torch.float64)
    s = torch.tensor([[1.9, 0.0, 0.0]], dtype=torch.float64)
    e = torch.tensor([[4.1, 0.0, 0.0]], dtype=torch.float64)
    got = joseph_forward(image, s, e, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), backend=backend)
    assert float(got) == pytest.approx(3.0, rel=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_two_d_image_exact(backend: str, generator: torch.Generator) -> None:
    """A (nx, ny, 1) image with in-plane LORs: diagonal through centres = sum x sqrt(2) x vs."""
    n, vs = 9, 3.0
    origin = (-(n - 1) * vs / 2, -(n - 1) * vs / 2, 0.0)
    image = torch.rand(n, n, 1, generator=generator, dtype=torch.float64)
    s = torch.tensor([[-50.0, -50.0, 0.0], [-50.0, 50.0, 0.0]], dtype=torch.float64)
    e = -s
    got = joseph_forward(image, s, e, origin, (vs, vs, 2.0), backend=backend)
    diag = image[:, :, 0].diagonal().sum()
    anti = image[:, :, 0].flip(1).diagonal().sum()
    expected = torch.stack([diag, anti]) * vs * math.sqrt(2)
    assert torch.allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_lors_that_miss_give_zero(backend: str) -> None:
    image = torch.ones(5, 5, 5, dtype=torch.float32)
    s = torch.tensor([[-100.0, 50.0, 0.0], [0.0, 0.0, 100.0], [-30.0, 0.0, 0.0]])
    e = torch.tensor([[100.0, 50.0, 0.0], [0.0, 10.0, 200.0], [-20.0, 0.0, 0.0]])
    got = joseph_forward(image, s, e, (-2.0, -2.0, -2.0), (1.0, 1.0, 1.0), backend=backend)
    assert torch.equal(got, torch.zeros(3))
    back = joseph_back(torch.ones(3), s, e, (5, 5, 5), (-2.0, -2.0, -2.0), (1.0, 1.0, 1.0), backend=backend)
    assert torch.equal(back, torch.zeros(5, 5, 5))


def ellipsoid_chords(start: torch.Tensor, end: torch.Tensor, axes: tuple[float, float, float]) -> torch.Tensor:
    """Analytic chord length (mm) of each segment through the ellipsoid sum (x_k/a_k)^2 <= 1."""
    a = torch.tensor(axes, dtype=torch.float64)
    p, d = start / a, (end - start) / a
    qa, qb, qc = (d * d).sum(1), 2 * (p * d).sum(1), (p * p).sum(1) - 1
    disc = (qb * qb - 4 * qa * qc).clamp(min=0)
    t0 = ((-qb - disc.sqrt()) / (2 * qa)).clamp(0, 1)
    t1 = ((-qb + disc.sqrt()) / (2 * qa)).clamp(0, 1)
    return (t1 - t0) * (end - start).norm(dim=1)


def test_ellipsoid_chord_lengths(generator: torch.Generator) -> None:
    axes = (22.0, 16.0, 12.0)
    n, vs, sub = (50, 36, 28), 1.0, 3
    origin = tuple(-(k - 1) * vs / 2 for k in n)
    # indicator sampled on a sub x sub x sub grid per voxel -> volume fraction
    grids = [origin[k] + (torch.arange(n[k] * sub, dtype=torch.float64) + 0.5) * vs / sub - vs / 2 for k in range(3)]
    x, y, z = torch.meshgrid(*grids, indexing="ij")
    inside = ((x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2 <= 1).double()
    image = inside.reshape(n[0], sub, n[1], sub, n[2], sub).mean(dim=(1, 3, 5))
    start, end = random_lors(4000, 60.0, generator)
    chords = ellipsoid_chords(start, end, axes)
    keep = chords > 8.0
    assert keep.sum() > 300
    got = joseph_forward(image, start[keep], end[keep], origin, (vs, vs, vs))
    rel = ((got - chords[keep]) / chords[keep]).abs()
    assert float(rel.median()) < 0.01


def test_gradcheck_and_gradgradcheck() -> None:
    g = torch.Generator().manual_seed(7)
    shape, origin, vs = (4, 3, 2), (-1.5, -1.0, -0.5), (1.0, 1.0, 1.0)
    start, end = random_lors(12, 5.0, g)
    image = torch.rand(shape, generator=g, dtype=torch.float64, requires_grad=True)
    values = torch.rand(12, generator=g, dtype=torch.float64, requires_grad=True)

    def fwd(x: torch.Tensor) -> torch.Tensor:
        return joseph_forward(x, start, end, origin, vs)

    def bwd(v: torch.Tensor) -> torch.Tensor:
        return joseph_back(v, start, end, shape, origin, vs)

    assert torch.autograd.gradcheck(fwd, (image,))
    assert torch.autograd.gradcheck(bwd, (values,))
    assert torch.autograd.gradgradcheck(fwd, (image,))
    assert torch.autograd.gradgradcheck(bwd, (values,))


def test_gradient_is_backprojection(generator: torch.Generator) -> None:
    shape, origin, vs = (6, 5, 4), (-2.5, -2.0, -1.5), (1.0, 1.0, 1.0)
    start, end = random_lors(50, 8.0, generator)
    image = torch.rand(shape, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(50, generator=generator, dtype=torch.float64)
    (joseph_forward(image, start, end, origin, vs) * weights).sum().backward()
    assert torch.allclose(image.grad, joseph_back(weights, start, end, shape, origin, vs), rtol=1e-12)


def test_lor_shape_is_kept(generator: torch.Generator) -> None:
    start, end = random_lors(24, 10.0, generator, torch.float32)
    image = torch.rand(3, 4, 4, 4, generator=generator)
    args = ((-1.5, -1.5, -1.5), (1.0, 1.0, 1.0))
    out = joseph_forward(image, start.reshape(2, 3, 4, 3), end.reshape(2, 3, 4, 3), *args)
    assert out.shape == (3, 2, 3, 4)
    assert torch.allclose(out.reshape(3, 24), joseph_forward(image, start, end, *args))
    back = joseph_back(out, start.reshape(2, 3, 4, 3), end.reshape(2, 3, 4, 3), (4, 4, 4), *args)
    assert back.shape == (3, 4, 4, 4)


def test_bad_input_errors() -> None:
    img = torch.ones(4, 4, 4)
    s = torch.zeros(2, 3)
    e = torch.ones(2, 3)
    o, v = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        joseph_forward(img.half(), s.half(), e.half(), o, v)
    with pytest.raises(TypeError, match="float32 or float64"):
        joseph_forward(img.long(), s, e, o, v)
    with pytest.raises(TypeError, match="lor_start is torch.float64"):
        joseph_forward(img, s.double(), e.double(), o, v)
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        joseph_forward(img, torch.zeros(2, 2), torch.ones(2, 2), o, v)
    with pytest.raises(ValueError, match="differ in shape"):
        joseph_forward(img, s, torch.ones(3, 3), o, v)
    with pytest.raises(ValueError, match="finite"):
        joseph_forward(img, s, torch.tensor([[1.0, 1.0, float("nan")], [1.0, 1.0, 1.0]]), o, v)
    with pytest.raises(ValueError, match="zero-length LOR at flat index 1"):
        joseph_forward(img, s, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), o, v)
    with pytest.raises(ValueError, match="voxel_size must be positive"):
        joseph_forward(img, s, e, o, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="image_origin must have 3 entries"):
        joseph_forward(img, s, e, (0.0, 0.0), v)
    with pytest.raises(ValueError, match=r"image must have shape \(\.\.\., n0, n1, n2\)"):
        joseph_forward(torch.ones(4, 4), s, e, o, v)
    with pytest.raises(ValueError, match="values must have shape"):
        joseph_back(torch.ones(3), s, e, (4, 4, 4), o, v)
    with pytest.raises(ValueError, match="image_shape must be 3 positive ints"):
        joseph_back(torch.ones(2), s, e, (4, 4), o, v)
    with pytest.raises(ValueError, match="backend must be one of"):
        joseph_forward(img, s, e, o, v, backend="astra")
    with pytest.raises(ValueError, match="triton backend needs CUDA"):
        joseph_forward(img, s, e, o, v, backend="triton")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="is on cuda"):
            joseph_forward(img, s.cuda(), e.cuda(), o, v)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-11), (torch.float32, 1e-4)])
def test_numba_matches_reference(dtype: torch.dtype, rtol: float, generator: torch.Generator) -> None:
    shape, origin, vs = (10, 9, 6), (-9.0, -8.0, -5.5), (2.0, 2.0, 2.2)
    start, end = random_lors(2000, 25.0, generator, dtype)
    x = torch.rand(2, *shape, generator=generator, dtype=torch.float64).to(dtype)
    y = torch.rand(2, 2000, generator=generator, dtype=torch.float64).to(dtype)
    ref = joseph_forward(x, start, end, origin, vs, backend="reference")
    fast = joseph_forward(x, start, end, origin, vs, backend="numba")
    assert torch.allclose(fast, ref, rtol=rtol, atol=rtol * float(ref.abs().max()))
    ref = joseph_back(y, start, end, shape, origin, vs, backend="reference")
    fast = joseph_back(y, start, end, shape, origin, vs, backend="numba")
    assert torch.allclose(fast, ref, rtol=rtol, atol=rtol * float(ref.abs().max()))
