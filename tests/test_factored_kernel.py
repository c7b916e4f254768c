"""The row kernels of factored non-TOF sinograms (``numba_kernels._forward_rows`` /
``_back_rows``: one view and radial bin per iteration, all planes inside) against the
per-LOR kernels they replace: the forward bit for bit, the backprojection to rounding,
and the pair adjoint. The geometry is built to reach every branch: a 20 mm ring inside a
48 mm image (LORs end inside the image), ring differences up to 28 mm against chords down
to 12 mm (LORs whose principal axis is z), exact ties |dx| = |dy| and |dz| = max(|dx|, |dy|),
and a row with no in-plane extent (purely axial LORs)."""

from __future__ import annotations

import math

import pytest
import torch

from pet_dl.projector import numba_kernels as nk
from pet_dl.projector._checks import Geometry

GEOM = Geometry((16, 16, 10), (-22.5, -22.5, -13.5), (3.0, 3.0, 3.0))


def rows_and_planes(axial_row: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(xy_start, xy_end)`` ``(Q, 2)`` and ``(z_start, z_end)`` ``(P,)`` in mm, float64.

    7 views x 9 radial bins on a circle of radius 20 mm, two 45-degree rows of
    ``|dx| = |dy| = 20``; the planes are every pair of 8 rings 4 mm apart (ring differences
    0 to 28 mm) and two of ``|dz| = 20``. ``axial_row``: one more row with equal (x, y) ends,
    and only the planes with ``dz != 0`` (no zero-length LOR).
    """
    views, bins, radius = 7, 9, 20.0
    phi = torch.arange(views, dtype=torch.float64) * math.pi / views
    s = torch.linspace(-19.0, 19.0, bins, dtype=torch.float64)[None, :, None]
    normal = torch.stack([torch.cos(phi), torch.sin(phi)], -1)[:, None]
    along = torch.stack([-torch.sin(phi), torch.cos(phi)], -1)[:, None]
    half = torch.sqrt(radius**2 - s**2)
    xy_start = torch.cat([(s * normal - half * along).reshape(-1, 2), torch.tensor([[-10.0, -10.0], [10.0, -10.0]])])
    xy_end = torch.cat([(s * normal + half * along).reshape(-1, 2), torch.tensor([[10.0, 10.0], [-10.0, 10.0]])])
    rings = torch.arange(8, dtype=torch.float64) * 4.0 - 14.0
    z_start = torch.cat([rings[:, None].expand(8, 8).reshape(-1), torch.tensor([-10.0, 10.0])])
    z_end = torch.cat([rings[None, :].expand(8, 8).reshape(-1), torch.tensor([10.0, -10.0])])
    if axial_row:
        xy_start = torch.cat([xy_start, torch.tensor([[1.0, 2.0]])])
        xy_end = torch.cat([xy_end, torch.tensor([[1.0, 2.0]])])
        keep = z_start != z_end
        z_start, z_end = z_start[keep], z_end[keep]
    return xy_start, xy_end, z_start, z_end


def test_geometry_reaches_every_branch() -> None:
    """What the tests below rely on: LORs stepped along z, LORs ending inside the image, ties."""
    xs, xe, zs, ze = rows_and_planes()
    amax = (xe - xs).abs().max(-1).values
    dz = (ze - zs).abs()
    assert int((dz[:, None] > amax[None]).sum()) > 100  # principal axis z
    assert int((dz[:, None] == amax[None]).sum()) >= 4  # tie: stays in-plane
    assert int(((xe - xs)[:, 0].abs() == (xe - xs)[:, 1].abs()).sum()) == 2
    half_width = 8 * 3.0  # the image spans +-24 mm in x and y, the ring 20 mm
    assert float(xs.abs().max()) < half_width and float(xe.abs().max()) < half_width


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("axial_row", [False, True])
def test_row_forward_is_bit_identical_to_per_lor(dtype: torch.dtype, axial_row: bool,
                                                 generator: torch.Generator) -> None:
    lors = rows_and_planes(axial_row)
    x = torch.rand(2, *GEOM.image_shape, generator=generator, dtype=torch.float64).to(dtype) - 0.2
    got = nk.forward_factored(x, *lors, GEOM)
    want = nk._forward_factored_per_lor(x, *lors, GEOM)
    assert got.shape == want.shape == (2, lors[2].numel() * lors[0].shape[0])
    assert int((want != 0).sum()) > 0.9 * want.numel()
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("axial_row", [False, True])
def test_row_back_matches_per_lor(dtype: torch.dtype, axial_row: bool, generator: torch.Generator) -> None:
    lors = rows_and_planes(axial_row)
    y = torch.rand(2, lors[2].numel() * lors[0].shape[0], generator=generator, dtype=torch.float64)
    y[:, ::7] = 0.0  # the zero values skipped
    y = y.to(dtype)
    got = nk.back_factored(y, *lors, GEOM)
    want = nk._back_factored_per_lor(y, *lors, GEOM)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5  # summation order only
    assert int((want > 0).sum()) > 0.6 * want.numel()  # the corners outside the ring get nothing
    assert float((got - want).abs().max()) <= rtol * float(want.abs().max())


def test_row_kernels_are_adjoint(generator: torch.Generator) -> None:
    lors = rows_and_planes(axial_row=True)
    x = torch.rand(3, *GEOM.image_shape, generator=generator, dtype=torch.float64)
    y = torch.rand(3, lors[2].numel() * lors[0].shape[0], generator=generator, dtype=torch.float64)
    lhs = (nk.forward_factored(x, *lors, GEOM) * y).sum()
    rhs = (x * nk.back_factored(y, *lors, GEOM)).sum()
    assert float((lhs - rhs).abs() / lhs.abs()) < 1e-12


def test_factored_projections_take_the_row_kernels_for_several_planes(monkeypatch: pytest.MonkeyPatch,
                                                                      generator: torch.Generator) -> None:
    """Several planes, non-TOF: the row kernels (so the tests above compare two kernels);
    one plane (2D): the per-LOR kernels."""
    calls: list[str] = []
    for name in ("_forward_rows", "_back_rows", "_forward_plain", "_back_plain"):
        kernel = getattr(nk, name)
        monkeypatch.setattr(nk, name, lambda *a, _k=kernel, _n=name: (calls.append(_n), _k(*a))[1])
    xs, xe, zs, ze = rows_and_planes()
    x = torch.rand(1, *GEOM.image_shape, generator=generator, dtype=torch.float64)
    nk.back_factored(nk.forward_factored(x, xs, xe, zs, ze, GEOM), xs, xe, zs, ze, GEOM)
    assert calls == ["_forward_rows", "_back_rows"]
    calls.clear()
    nk.back_factored(nk.forward_factored(x, xs, xe, zs[:1], ze[:1], GEOM), xs, xe, zs[:1], ze[:1], GEOM)
    assert calls == ["_forward_plain", "_back_plain"]
