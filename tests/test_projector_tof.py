"""TOF Joseph projector (sinogram and listmode): adjointness, bin sums, listmode picks, kernel."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from pet_dl.projector import (
    joseph_back_tof,
    joseph_back_tof_listmode,
    joseph_forward,
    joseph_forward_tof,
    joseph_forward_tof_listmode,
)

CPU_BACKENDS = ["reference", "numba"]


@dataclass(frozen=True)
class TOF:
    """Stand-in with the fields of ``pet_dl.geometry.TOFParameters`` (mm)."""

    num_bins: int
    bin_width_mm: float
    fwhm_mm: float
    center_offset_mm: float = 0.0
    num_sigmas: float = 3.0


def random_lors(num: int, radius: float, g: torch.Generator, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    def points() -> torch.Tensor:
        p = torch.randn(num, 3, generator=g, dtype=torch.float64)
        return (radius * p / p.norm(dim=1, keepdim=True)).to(dtype)

    return points(), points()


SHAPE, ORIGIN, VS = (12, 10, 8), (-11.0, -9.0, -7.0), (2.0, 2.0, 2.0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_tof_adjointness(backend: str, dtype: torch.dtype, tol: float, generator: torch.Generator) -> None:
    tof = TOF(num_bins=9, bin_width_mm=6.0, fwhm_mm=15.0, center_offset_mm=1.5)
    start, end = random_lors(1500, 25.0, generator, dtype)
    x = torch.rand(2, *SHAPE, generator=generator, dtype=torch.float64).to(dtype)
    y = torch.rand(2, 1500, 9, generator=generator, dtype=torch.float64).to(dtype)
    ax = joseph_forward_tof(x, start, end, ORIGIN, VS, tof, backend=backend)
    aty = joseph_back_tof(y, start, end, SHAPE, ORIGIN, VS, tof, backend=backend)
    assert ax.shape == (2, 1500, 9) and aty.shape == (2, *SHAPE)
    lhs, rhs = (ax.double() * y.double()).sum(), (x.double() * aty.double()).sum()
    assert float((lhs - rhs).abs() / lhs.abs()) <= tol
    # listmode, with random bins
    bins = torch.randint(0, 9, (1500,), generator=generator)
    yl = y[:, :, 0]
    axl = joseph_forward_tof_listmode(x, start, end, bins, ORIGIN, VS, tof, backend=backend)
    atyl = joseph_back_tof_listmode(yl, start, end, bins, SHAPE, ORIGIN, VS, tof, backend=backend)
    lhs, rhs = (axl.double() * yl.double()).sum(), (x.double() * atyl.double()).sum()
    assert float((lhs - rhs).abs() / lhs.abs()) <= tol


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tof_bins_sum_to_non_tof(backend: str, generator: torch.Generator) -> None:
    """Bins covering the whole LOR with a 3-sigma kernel lose < 0.5 % of the line integral."""
    tof = TOF(num_bins=41, bin_width_mm=4.0, fwhm_mm=12.0)  # covers +-82 mm, LORs <= 50 mm
    start, end = random_lors(800, 25.0, generator, torch.float64)
    x = torch.rand(SHAPE, generator=generator, dtype=torch.float64)
    tof_sum = joseph_forward_tof(x, start, end, ORIGIN, VS, tof, backend=backend).sum(-1)
    plain = joseph_forward(x, start, end, ORIGIN, VS, backend=backend)
    hit = plain > 1.0
    assert hit.sum() > 200
    rel = ((tof_sum[hit] - plain[hit]) / plain[hit]).abs()
    assert float(rel.max()) < 0.005
    # without truncation it is exact to the erf tails beyond the outer bins
    wide = TOF(num_bins=41, bin_width_mm=4.0, fwhm_mm=12.0, num_sigmas=20.0)
    tof_sum = joseph_forward_tof(x, start, end, ORIGIN, VS, wide, backend=backend).sum(-1)
    assert torch.allclose(tof_sum, plain, rtol=1e-9, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_listmode_equals_sinogram_pick(backend: str, generator: torch.Generator) -> None:
    tof = TOF(num_bins=7, bin_width_mm=5.0, fwhm_mm=10.0, center_offset_mm=-2.0)
    start, end = random_lors(600, 25.0, generator, torch.float64)
    x = torch.rand(3, *SHAPE, generator=generator, dtype=torch.float64)
    bins = torch.randint(0, 7, (600,), generator=generator)
    sino = joseph_forward_tof(x, start, end, ORIGIN, VS, tof, backend=backend)
    lm = joseph_forward_tof_listmode(x, start, end, bins, ORIGIN, VS, tof, backend=backend)
    picked = sino.gather(-1, bins.expand(3, 600)[..., None])[..., 0]
    assert torch.allclose(lm, picked, rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tof_kernel_of_a_single_voxel(backend: str) -> None:
    """A single hot voxel on an x-ray: bin k gets vs x the Gaussian integral over bin k.

    The voxel sits 3 mm from the midpoint towards ``lor_end``, so its signed distance is +3.
    """
    shape, vs = (21, 1, 1), (1.0, 1.0, 1.0)
    image = torch.zeros(shape, dtype=torch.float64)
    image[13, 0, 0] = 1.0  # x = 3 with origin -10
    s = torch.tensor([[-40.0, 0.0, 0.0]], dtype=torch.float64)
    e = torch.tensor([[40.0, 0.0, 0.0]], dtype=torch.float64)
    tof = TOF(num_bins=5, bin_width_mm=3.0, fwhm_mm=6.0, center_offset_mm=0.5, num_sigmas=10.0)
    got = joseph_forward_tof(image, s, e, (-10.0, 0.0, 0.0), vs, tof, backend=backend)[0]
    sigma = 6.0 / (2 * math.sqrt(2 * math.log(2)))
    expected = []
    for k in range(5):
        c = (k - 2) * 3.0 + 0.5
        lo, hi = (c - 1.5 - 3.0) / (sigma * math.sqrt(2)), (c + 1.5 - 3.0) / (sigma * math.sqrt(2))
        expected.append(0.5 * (math.erf(hi) - math.erf(lo)))
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12)
    # reversing the LOR mirrors the TOF profile around the centre offset
    flipped = joseph_forward_tof(image, e, s, (-10.0, 0.0, 0.0), vs, tof, backend=backend)[0]
    assert float(flipped.argmax()) != float(got.argmax())


def test_tof_gradcheck() -> None:
    g = torch.Generator().manual_seed(3)
    tof = TOF(num_bins=3, bin_width_mm=2.0, fwhm_mm=3.0)
    shape, origin, vs = (3, 3, 2), (-1.0, -1.0, -0.5), (1.0, 1.0, 1.0)
    start, end = random_lors(8, 4.0, g, torch.float64)
    bins = torch.randint(0, 3, (8,), generator=g)
    image = torch.rand(shape, generator=g, dtype=torch.float64, requires_grad=True)
    values = torch.rand(8, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: joseph_forward_tof(x, start, end, origin, vs, tof), (image,))
    assert torch.autograd.gradgradcheck(lambda v: joseph_back_tof(v, start, end, shape, origin, vs, tof), (values,))
    assert torch.autograd.gradcheck(
        lambda x: joseph_forward_tof_listmode(x, start, end, bins, origin, vs, tof), (image,)
    )


def test_tof_bad_input() -> None:
    img = torch.ones(4, 4, 4)
    s, e = torch.zeros(2, 3), torch.ones(2, 3)
    o, v = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    tof = TOF(num_bins=3, bin_width_mm=2.0, fwhm_mm=3.0)
    with pytest.raises(TypeError, match="tof must be a TOFParameters"):
        joseph_forward_tof(img, s, e, o, v, object())
    with pytest.raises(ValueError, match="fwhm_mm must be a positive"):
        joseph_forward_tof(img, s, e, o, v, TOF(3, 2.0, 0.0))
    with pytest.raises(ValueError, match="values must have shape"):
        joseph_back_tof(torch.ones(2, 4), s, e, (4, 4, 4), o, v, tof)
    with pytest.raises(TypeError, match="tof_bin must be an integer"):
        joseph_forward_tof_listmode(img, s, e, torch.zeros(2), o, v, tof)
    with pytest.raises(ValueError, match=r"tof_bin values must lie in \[0, 2\]"):
        joseph_forward_tof_listmode(img, s, e, torch.tensor([0, 3]), o, v, tof)
    with pytest.raises(ValueError, match="tof_bin must have shape"):
        joseph_forward_tof_listmode(img, s, e, torch.tensor([0, 1, 2]), o, v, tof)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-11), (torch.float32, 1e-5)])
def test_numba_tof_matches_reference(dtype: torch.dtype, rtol: float, generator: torch.Generator) -> None:
    """The numba TOF kernels (samples first, then one sum per bin; tabulated weights for float32)
    give the reference's projections: sinogram and listmode, a batch of 2, LORs from outside
    and from inside the image, bins narrower and wider than the kernel's reach."""
    start, end = random_lors(1200, 25.0, generator, torch.float64)
    start[::2] *= torch.rand(600, 1, generator=generator, dtype=torch.float64)  # half start inside
    start, end = start.to(dtype), end.to(dtype)
    x = torch.rand(2, *SHAPE, generator=generator, dtype=torch.float64).to(dtype)
    for tof in (TOF(num_bins=9, bin_width_mm=6.0, fwhm_mm=15.0, center_offset_mm=1.5),
                TOF(num_bins=21, bin_width_mm=2.5, fwhm_mm=4.0, center_offset_mm=-0.7, num_sigmas=4.0)):
        y = torch.rand(2, 1200, tof.num_bins, generator=generator, dtype=torch.float64).to(dtype)
        bins = torch.randint(0, tof.num_bins, (1200,), generator=generator)
        pairs = [
            (joseph_forward_tof(x, start, end, ORIGIN, VS, tof, backend=b) for b in ("reference", "numba")),
            (joseph_back_tof(y, start, end, SHAPE, ORIGIN, VS, tof, backend=b) for b in ("reference", "numba")),
            (joseph_forward_tof_listmode(x, start, end, bins, ORIGIN, VS, tof, backend=b)
             for b in ("reference", "numba")),
            (joseph_back_tof_listmode(y[..., 0], start, end, bins, SHAPE, ORIGIN, VS, tof, backend=b)
             for b in ("reference", "numba")),
        ]
        for ref, fast in map(tuple, pairs):
            assert float(ref.abs().max()) > 0
            assert torch.allclose(fast, ref, rtol=rtol, atol=rtol * float(ref.abs().max()))
