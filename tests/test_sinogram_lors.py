"""Factored sinogram LORs: same projections as the materialised endpoints, validated once,
float32 storage accurate against float64, subsets without copies, and the TOF kernel's
tabulated bin weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pet_dl.forward_model import PETForwardModel, SinogramProjector
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.projector import (
    SinogramLORs,
    _checks,
    joseph_back,
    joseph_back_tof,
    joseph_forward,
    joseph_forward_tof,
    sinogram_back,
    sinogram_forward,
)


def small_3d(tof: bool = False) -> tuple[SinogramGeometry, ImageGeometry]:
    scanner = get_scanner("vision").with_rings(5)
    return SinogramGeometry(scanner, num_radial=48, span=3, tof=tof), ImageGeometry.centered((24, 24, 5), (6.0, 6.0, 3.3))


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("tof", [False, True])
def test_factored_equals_materialised_endpoints(backend: str, tof: bool, generator: torch.Generator) -> None:
    sino, image = small_3d(tof)
    views = torch.arange(0, sino.num_views, 37)
    lors = SinogramLORs.from_geometry(sino, views, dtype=torch.float64)
    start, end = lors.endpoints()
    assert start.shape == (sino.num_planes, views.numel(), sino.num_radial, 3)
    ref_start, ref_end = sino.lor_endpoints(dtype=torch.float64, views=views)
    assert torch.equal(start, ref_start) and torch.equal(end, ref_end)
    x = torch.rand(2, *image.shape, generator=generator, dtype=torch.float64)
    o, v = image.origin_mm, image.voxel_size_mm
    t = sino.scanner.tof if tof else None
    got = sinogram_forward(x, lors, o, v, t, backend=backend)
    want = (joseph_forward_tof(x, start, end, o, v, t, backend=backend) if tof
            else joseph_forward(x, start, end, o, v, backend=backend))
    assert got.shape == want.shape and float(want.abs().max()) > 0
    assert torch.allclose(got, want, rtol=1e-12, atol=0)
    y = torch.rand(got.shape, generator=generator, dtype=torch.float64)
    back = sinogram_back(y, lors, image.shape, o, v, t, backend=backend)
    want_back = (joseph_back_tof(y, start, end, image.shape, o, v, t, backend=backend) if tof
                 else joseph_back(y, start, end, image.shape, o, v, backend=backend))
    assert torch.allclose(back, want_back, rtol=1e-12, atol=1e-12 * float(want_back.abs().max()))
    # adjointness of the factored pair
    lhs, rhs = (got * y).sum(), (x * back).sum()
    assert float((lhs - rhs).abs() / lhs.abs()) < 1e-12


def test_float32_lors_against_float64(generator: torch.Generator) -> None:
    """float32 LOR parts match float64 to < 1e-5 except at 45 degrees, where rounding flips
    the principal axis (0.5 % on the mMR): why SinogramProjector keeps them in float64."""
    sino = SinogramGeometry.two_d(get_scanner("mmr"))
    image = ImageGeometry.centered((344, 344, 1), (2.08626, 2.08626, 2.03125))
    x = torch.rand(image.shape, generator=generator, dtype=torch.float64)
    views = torch.arange(0, sino.num_views, 3)  # includes view 63 (45 degrees) and 189
    lors64 = SinogramLORs.from_geometry(sino, views, torch.float64)
    y64 = sinogram_forward(x, lors64, image.origin_mm, image.voxel_size_mm)
    y32 = sinogram_forward(x, SinogramLORs.from_geometry(sino, views, torch.float32), image.origin_mm, image.voxel_size_mm)
    d = (lors64.xy_end - lors64.xy_start).abs()
    tie = ((d[..., 0] - d[..., 1]).abs() < 1e-4 * d.max())[None]  # |dx| = |dy|: axis is a coin toss
    hit = y64 > 0.05 * float(y64.max())
    rel = ((y32 - y64) / y64.clamp_min(1e-30)).abs()
    assert int((hit & ~tie).sum()) > 10000 and int((hit & tie).sum()) > 100
    assert float(rel[hit & ~tie].max()) < 1e-5
    assert float(rel[hit & tie].max()) > 1e-3  # the flip is real: float32 is not enough there
    projector = SinogramProjector(sino, image)
    assert projector.xy_start.dtype == torch.float64
    assert torch.equal(projector(x.float()).double(), projector(x.float()).double())


def test_lors_are_validated_once_when_built(monkeypatch: pytest.MonkeyPatch, generator: torch.Generator) -> None:
    xy = torch.zeros(2, 3, 2)
    xy_end = torch.ones(2, 3, 2)
    with pytest.raises(ValueError, match="finite"):
        SinogramLORs(xy, xy_end.clone().fill_(math.nan), torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="zero-length LOR at plane 1, view 0, radial bin 2"):
        bad_end = xy_end.clone()
        bad_end[0, 2] = 0.0
        SinogramLORs(xy, bad_end, torch.tensor([0.0, 1.0]), torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        SinogramLORs(xy, xy_end[:1], torch.zeros(4), torch.zeros(4))
    # projecting never re-checks the endpoints (the per-call check_lors is not used)
    sino, image = small_3d()
    projector = SinogramProjector(sino, image)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("check_lors called on a projection")

    monkeypatch.setattr(_checks, "check_lors", fail)
    x = torch.rand(image.shape, generator=generator)
    y = projector(x)
    assert y.shape == sino.shape and float(y.max()) > 0
    assert projector.adjoint(y).shape == image.shape


def test_projector_memory_is_the_lor_parts_and_subsets_share_sinograms() -> None:
    """The 3D mMR span-11 projector holds 2.8 MB of LOR parts, not the 1.7 GB of endpoints;
    subset models' multiplicative and additive terms are views of the full model's."""
    sino = SinogramGeometry(get_scanner("mmr"), num_radial=344, span=11, max_ring_difference=60)
    image = ImageGeometry.centered((344, 344, 127), (2.08626, 2.08626, 2.03125))
    projector = SinogramProjector(sino, image)
    nbytes = sum(b.numel() * b.element_size() for b in projector.buffers())
    assert projector.out_shape == (837, 252, 344)
    assert nbytes < 3 * 2**20
    sub = projector.subset(torch.arange(3, 252, 21))
    assert sub.out_shape == (837, 12, 344)
    assert torch.equal(sub.xy_start, projector.xy_start[3::21])
    # a small model: subsets are strided views of the full sinograms
    small, grid = small_3d()
    mult = torch.rand(small.shape, generator=torch.Generator().manual_seed(1)) + 0.5
    add = torch.rand(small.shape, generator=torch.Generator().manual_seed(2))
    model = PETForwardModel(SinogramProjector(small, grid), mult, add, calibration=2.0)
    for k, m in enumerate(model.subsets(4)):
        assert m.multiplicative.untyped_storage().data_ptr() == mult.untyped_storage().data_ptr()
        assert m.additive.untyped_storage().data_ptr() == add.untyped_storage().data_ptr()
        assert torch.equal(m.multiplicative, mult[:, k::4])
    y = torch.rand(small.shape)
    assert torch.equal(model.subset_data(y, 2, 4), y[:, 2::4])


def test_tabulated_tof_bin_weight_is_accurate() -> None:
    """float32 TOF projections take a sample's bin weight (the Gaussian integrated over the bin)
    from a cubic Hermite table: < 1e-9 from libm's erf over the kernel's whole reach."""
    from numba import njit

    from pet_dl.projector import numba_kernels as nk

    @njit
    def evaluate(ds: np.ndarray, hb: float, scale: float, tsc: float, table: np.ndarray) -> np.ndarray:
        out = np.empty_like(ds)
        for i in range(ds.size):
            out[i] = nk._bin_weight(ds[i], hb, scale, tsc, table)
        return out

    # (bin width, FWHM, num_sigmas) mm: the Vision, narrow and wide kernels, bins wider than the kernel
    for bw, fwhm, num_sigmas in [(21.4, 31.5, 3.0), (3.0, 6.0, 10.0), (50.0, 5.0, 3.0)]:
        sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
        scale = 1 / (math.sqrt(2) * sigma)
        ds = np.linspace(-1, 1, 100_001) * (num_sigmas * sigma + bw / 2)
        exact = np.array([0.5 * (math.erf((d + bw / 2) * scale) - math.erf((d - bw / 2) * scale)) for d in ds])
        table, tsc = nk._weight_table(bw, sigma, num_sigmas)
        assert np.abs(evaluate(ds, bw / 2, scale, tsc, table) - exact).max() < 1e-9
        assert np.abs(evaluate(ds, bw / 2, scale, 0.0, nk._NO_TABLE) - exact).max() == 0.0


def test_float32_tof_matches_float64(generator: torch.Generator) -> None:
    """The float32 TOF path (tabulated bin weights) agrees with float64 (libm erf) to float32
    precision (the tests' 1e-5)."""
    sino, image = small_3d(tof=True)
    lors = SinogramLORs.from_geometry(sino, torch.arange(0, sino.num_views, 23), dtype=torch.float64)
    x = torch.rand(image.shape, generator=generator, dtype=torch.float64)
    tof = sino.scanner.tof
    y64 = sinogram_forward(x, lors, image.origin_mm, image.voxel_size_mm, tof)
    y32 = sinogram_forward(x.float(), lors, image.origin_mm, image.voxel_size_mm, tof)
    assert float((y32.double() - y64).abs().max() / y64.abs().max()) < 1e-5
    v = torch.rand(y64.shape, generator=generator, dtype=torch.float64)
    b64 = sinogram_back(v, lors, image.shape, image.origin_mm, image.voxel_size_mm, tof)
    b32 = sinogram_back(v.float(), lors, image.shape, image.origin_mm, image.voxel_size_mm, tof)
    assert float((b32.double() - b64).abs().max() / b64.abs().max()) < 1e-5


def test_sinogram_projection_gradients() -> None:
    sino = SinogramGeometry(get_scanner("mmr").with_rings(2), num_radial=8)
    image = ImageGeometry.centered((4, 4, 2), (40.0, 40.0, 4.0))
    lors = SinogramLORs.from_geometry(sino, torch.tensor([0, 50, 100]), dtype=torch.float64)
    x = torch.rand(image.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    o, v = image.origin_mm, image.voxel_size_mm
    assert torch.autograd.gradcheck(lambda t: sinogram_forward(t, lors, o, v), (x,))
    y = torch.rand(lors.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: sinogram_back(t, lors, image.shape, o, v), (y,))
