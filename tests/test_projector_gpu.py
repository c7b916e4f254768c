"""Triton GPU kernels: CUDA vs CPU agreement (``gpu``), and the kernels run by the Triton
interpreter on CPU tensors against the numba kernels (``slow``, needs triton installed),
including float32 LORs that end exactly on a sample plane (the t = 1 sample is kept) and
33-bin TOF (the kernels loop over the bins within reach only). ``bench/gpu_check.sh``
runs this file and the GPU benchmarks on a machine with a GPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from pet_dl.projector import (
    joseph_back,
    joseph_back_tof,
    joseph_back_tof_listmode,
    joseph_forward,
    joseph_forward_tof,
    joseph_forward_tof_listmode,
)


@dataclass(frozen=True)
class TOF:
    num_bins: int = 9
    bin_width_mm: float = 5.0
    fwhm_mm: float = 12.0
    center_offset_mm: float = 0.7
    num_sigmas: float = 3.0


SHAPE, ORIGIN, VS = (14, 12, 9), (-13.0, -11.0, -8.0), (2.0, 2.0, 2.0)


def random_lors(num: int, g: torch.Generator, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.randn(2, num, 3, generator=g, dtype=torch.float64)
    p = 30.0 * p / p.norm(dim=-1, keepdim=True)
    return p[0].to(dtype), p[1].to(dtype)


_INTERPRET_SCRIPT = r"""
import torch
from pet_dl.projector import numba_kernels as nk, triton_kernels as tk
from pet_dl.projector._checks import Geometry, TOFKernel
g = torch.Generator().manual_seed(5)
shape = (10, 9, 6)
origin, vs = (-9.0, -8.0, -5.5), (2.0, 2.0, 2.2)
# LORs that end exactly on a sample plane inside the image, where float32 gives t = 1 + 1.2e-7
# at that plane: the t = 1 sample must be kept (found by a search; float32-exact values)
ps = torch.tensor([[25.40328025817871, 0.9145245552062988, -1.996882438659668],
                   [55.911983489990234, -3.0696659088134766, 2.1562438011169434],
                   [56.01731491088867, -5.880515098571777, 2.27085542678833],
                   [63.7193717956543, 3.1530752182006836, -0.25260353088378906]], dtype=torch.float64)
pe = torch.tensor([[5.0, -5.1062493324279785, -1.8824577331542969],
                   [1.0, 3.3886642456054688, -3.0520009994506836],
                   [-1.0, -5.692119598388672, 3.9971799850463867],
                   [5.0, 2.621281623840332, -3.76045560836792]], dtype=torch.float64)
x = torch.rand(1, *shape, generator=g, dtype=torch.float64)
for dt in (torch.float32, torch.float64):
    geom = Geometry(shape, origin, vs)
    a = tk.forward(x.to(dt), ps.to(dt), pe.to(dt), geom, None)
    b = nk.forward(x.to(dt), ps.to(dt), pe.to(dt), geom, None)
    err = float(((a - b).abs() / b.abs()).max())
    print("plane-end", dt, err)
    assert err < 1e-5, err
p = torch.randn(2, 400, 3, generator=g, dtype=torch.float64)
p = 25.0 * p / p.norm(dim=-1, keepdim=True)
for dt, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
    for name, tof, lm in (("plain", None, False), ("tof", TOFKernel(7, 5.0, 4.0, 1.0, 3.0), False),
                          ("tof33", TOFKernel(33, 2.0, 3.0, -0.5, 3.0), False),
                          ("listmode", TOFKernel(7, 5.0, 4.0, 1.0, 3.0), True)):
        geom = Geometry(shape, origin, (2.0, 2.0, 2.2), tof, lm)
        s, e = p[0].to(dt), p[1].to(dt)
        xx = torch.rand(2, *shape, generator=g, dtype=dt)
        bins = torch.randint(0, tof.num_bins if tof else 1, (400,), generator=g) if lm else None
        a, b = tk.forward(xx, s, e, geom, bins), nk.forward(xx, s, e, geom, bins)
        y = torch.rand(a.shape, generator=g, dtype=dt)
        c, d = tk.back(y, s, e, geom, bins), nk.back(y, s, e, geom, bins)
        err = max(float((a - b).abs().max() / b.abs().max()), float((c - d).abs().max() / d.abs().max()))
        print(dt, name, err)
        assert err < tol, (dt, name, err)
print("OK")
"""


@pytest.mark.slow
def test_triton_kernels_in_interpreter_match_numba() -> None:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (pip install triton)")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _INTERPRET_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    return torch.allclose(a.cpu(), b, rtol=rtol, atol=rtol * float(b.abs().max()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_cuda_matches_cpu(dtype: torch.dtype, rtol: float, generator: torch.Generator) -> None:
    cuda = torch.device("cuda")
    start, end = random_lors(5000, generator, dtype)
    x = torch.rand(2, *SHAPE, generator=generator, dtype=dtype)
    y = torch.rand(2, 5000, generator=generator, dtype=dtype)
    sc, ec, xc, yc = start.to(cuda), end.to(cuda), x.to(cuda), y.to(cuda)
    assert _close(joseph_forward(xc, sc, ec, ORIGIN, VS), joseph_forward(x, start, end, ORIGIN, VS), rtol)
    assert _close(joseph_back(yc, sc, ec, SHAPE, ORIGIN, VS), joseph_back(y, start, end, SHAPE, ORIGIN, VS), rtol)
    tof = TOF()
    yt = torch.rand(2, 5000, tof.num_bins, generator=generator, dtype=dtype)
    assert _close(joseph_forward_tof(xc, sc, ec, ORIGIN, VS, tof), joseph_forward_tof(x, start, end, ORIGIN, VS, tof), rtol)
    assert _close(
        joseph_back_tof(yt.to(cuda), sc, ec, SHAPE, ORIGIN, VS, tof), joseph_back_tof(yt, start, end, SHAPE, ORIGIN, VS, tof), rtol
    )
    bins = torch.randint(0, tof.num_bins, (5000,), generator=generator)
    assert _close(
        joseph_forward_tof_listmode(xc, sc, ec, bins.to(cuda), ORIGIN, VS, tof),
        joseph_forward_tof_listmode(x, start, end, bins, ORIGIN, VS, tof), rtol,
    )
    assert _close(
        joseph_back_tof_listmode(yc, sc, ec, bins.to(cuda), SHAPE, ORIGIN, VS, tof),
        joseph_back_tof_listmode(y, start, end, bins, SHAPE, ORIGIN, VS, tof), rtol,
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_cuda_adjointness_and_gradient(dtype: torch.dtype, tol: float, generator: torch.Generator) -> None:
    cuda = torch.device("cuda")
    start, end = (t.to(cuda) for t in random_lors(20000, generator, dtype))
    x = torch.rand(*SHAPE, generator=generator, dtype=dtype).to(cuda).requires_grad_(True)
    y = torch.rand(20000, generator=generator, dtype=dtype).to(cuda)
    ax = joseph_forward(x, start, end, ORIGIN, VS)
    aty = joseph_back(y, start, end, SHAPE, ORIGIN, VS)
    lhs, rhs = (ax.double() * y.double()).sum(), (x.detach().double() * aty.double()).sum()
    assert float((lhs - rhs).abs() / lhs.abs()) <= tol
    (ax * y).sum().backward()
    assert torch.allclose(x.grad, aty, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("tof", [False, True])
def test_cuda_sinogram_projector_matches_cpu(tof: bool, generator: torch.Generator) -> None:
    """The factored sinogram path (plane blocks of endpoints for Triton) against numba."""
    from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
    from pet_dl.projector import SinogramLORs, sinogram_back, sinogram_forward

    scanner = get_scanner("vision").with_rings(4)
    sino = SinogramGeometry(scanner, num_radial=64, tof=tof)
    image = ImageGeometry.centered((40, 40, 4), (4.0, 4.0, 3.3))
    lors = SinogramLORs.from_geometry(sino, torch.arange(0, sino.num_views, 19))
    t = scanner.tof if tof else None
    x = torch.rand(image.shape, generator=generator)
    cpu = sinogram_forward(x, lors, image.origin_mm, image.voxel_size_mm, t)
    gpu = sinogram_forward(x.cuda(), lors.to("cuda"), image.origin_mm, image.voxel_size_mm, t)
    assert _close(gpu, cpu, 1e-4)
    y = torch.rand(cpu.shape, generator=generator)
    back_cpu = sinogram_back(y, lors, image.shape, image.origin_mm, image.voxel_size_mm, t)
    back_gpu = sinogram_back(y.cuda(), lors.to("cuda"), image.shape, image.origin_mm, image.voxel_size_mm, t)
    assert _close(back_gpu, back_cpu, 1e-4)
