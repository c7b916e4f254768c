"""GPU Joseph kernels in Triton (imported lazily, only for CUDA tensors).

One program handles a block of LORs for one batch entry and loops over the planes of
each LOR's principal axis; backprojection scatters with ``tl.atomic_add``. Per-LOR
stepping parameters (principal axis, exact plane range, increments) are computed first
with vectorised torch in float64, with the numba kernels' formulas and per-plane tests,
then cast to the data's dtype; the kernels loop over exactly those planes. TOF sinogram
kernels evaluate only the bins within reach of each sample (``NR``, about 6 of 33 for
the Siemens Vision), not all of them.

Same flat tensors as the other backends: image ``(B, n0, n1, n2)``, values ``(B, N)`` or
``(B, N, K)``, endpoints ``(N, 3)`` mm, ``tof_bin`` ``(N,)`` int64. Setting
``TRITON_INTERPRET=1`` before import runs the kernels on CPU tensors (for tests).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pet_dl.projector._checks import Geometry

try:
    import triton
    import triton.language as tl
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the GPU projector needs Triton: pip install triton (or pip install 'pet_dl[gpu]'), "
        "or pass backend='reference'"
    ) from err

_BLOCK = 64
_CHUNK = 1 << 22  # LORs per launch: bounds the per-LOR parameter arrays
_NF, _NI = 8, 7  # float / int parameters per LOR


def _planes(a: Tensor, b: Tensor, lo: float | Tensor, hi: float | Tensor, strict: bool) -> tuple[Tensor, Tensor]:
    """Real bounds of the planes ``i`` with ``lo <= a + i b <= hi`` (``<`` when strict)."""
    inf = torch.full_like(a, math.inf)
    safe = torch.where(b == 0, torch.ones_like(b), b)
    x1, x2 = (lo - a) / safe, (hi - a) / safe
    first, last = torch.minimum(x1, x2), torch.maximum(x1, x2)
    inside = (a > lo) & (a < hi) if strict else (a >= lo) & (a <= hi)
    first = torch.where(b == 0, torch.where(inside, -inf, inf), first)
    last = torch.where(b == 0, torch.where(inside, inf, -inf), last)
    return first, last


def _setup(start: Tensor, end: Tensor, geom: Geometry, dtype: torch.dtype) -> tuple[Tensor, Tensor, int]:
    """Per-LOR parameters: floats ``(N, 8)`` = weight (mm), length (mm), t0, dt, u1_0,
    du1, u2_0, du2 (in ``dtype``); ints ``(N, 7)`` = plane stride, k1 stride, k2 stride,
    n1, n2, first plane, number of planes; and the largest number of planes.

    Computed in float64 with the numba kernels' formulas, including their exact per-plane
    tests (``0 <= t <= 1``, ``-1 < u < n``): the kernels loop over exactly these planes and
    test nothing in their own dtype. (In float32 the kernel's own ``t`` of an LOR ending
    on a plane came out above 1 and dropped that sample.)
    """
    start, end = start.to(torch.float64), end.to(torch.float64)
    dev = start.device
    shape = torch.tensor(geom.image_shape, device=dev)
    strides = torch.tensor([geom.image_shape[1] * geom.image_shape[2], geom.image_shape[2], 1], device=dev)
    origin = torch.tensor(geom.origin, dtype=torch.float64, device=dev)
    vs = torch.tensor(geom.voxel_size, dtype=torch.float64, device=dev)
    delta = end - start
    mag = delta.abs()
    # principal axis as numba picks it (ties: the lower axis)
    ax = torch.where((mag[:, 0] >= mag[:, 1]) & (mag[:, 0] >= mag[:, 2]), 0, torch.where(mag[:, 1] >= mag[:, 2], 1, 2))
    others = torch.tensor([[1, 2], [0, 2], [0, 1]], device=dev)[ax]
    k1, k2 = others[:, 0], others[:, 1]

    def pick(t: Tensor, k: Tensor) -> Tensor:
        return t.gather(-1, k[:, None])[:, 0] if t.dim() == 2 else t[k]

    dd = pick(delta, ax)
    length = torch.sqrt(delta[:, 0] * delta[:, 0] + delta[:, 1] * delta[:, 1] + delta[:, 2] * delta[:, 2])
    t0 = (pick(origin, ax) - pick(start, ax)) / dd
    dt = pick(vs, ax) / dd
    c1 = pick(delta, k1) / pick(vs, k1)
    c2 = pick(delta, k2) / pick(vs, k2)
    u1_0 = (pick(start, k1) - pick(origin, k1)) / pick(vs, k1) + t0 * c1
    u2_0 = (pick(start, k2) - pick(origin, k2)) / pick(vs, k2) + t0 * c2
    du1, du2 = dt * c1, dt * c2
    n1, n2 = pick(shape, k1), pick(shape, k2)
    n_ax = pick(shape, ax)
    lo_mm = torch.minimum(pick(start, ax), pick(end, ax))
    hi_mm = torch.maximum(pick(start, ax), pick(end, ax))
    i_lo = (torch.floor((lo_mm - pick(origin, ax)) / pick(vs, ax)) - 1).clamp(min=0)
    i_hi = torch.minimum(torch.ceil((hi_mm - pick(origin, ax)) / pick(vs, ax)) + 1, (n_ax - 1).to(torch.float64))
    # the planes passing every test form an interval: bounds from the three conditions...
    for a, b, lo, hi, strict in ((t0, dt, 0.0, 1.0, False), (u1_0, du1, -1.0, n1, True), (u2_0, du2, -1.0, n2, True)):
        first, last = _planes(a, b, lo, hi, strict)
        i_lo = torch.maximum(i_lo, torch.floor(first.clamp(-1.0, 1e9)) - 1)
        i_hi = torch.minimum(i_hi, torch.ceil(last.clamp(-1e9, 1e9)) + 1)
    i_lo, i_hi = i_lo.clamp(min=0), torch.minimum(i_hi, (n_ax - 1).to(torch.float64))

    def ok(i: Tensor) -> Tensor:  # numba's exact per-plane test, same float64 arithmetic
        t, u1, u2 = t0 + i * dt, u1_0 + i * du1, u2_0 + i * du2
        return (t >= 0.0) & (t <= 1.0) & (u1 > -1.0) & (u1 < n1) & (u2 > -1.0) & (u2 < n2)

    # ...then moved plane by plane to numba's exact ends (a few steps at most)
    for _ in range(4):
        step = (i_lo <= i_hi) & ~ok(i_lo)
        i_lo = i_lo + step.to(i_lo.dtype)
        step = (i_hi >= i_lo) & ~ok(i_hi)
        i_hi = i_hi - step.to(i_hi.dtype)
    assert bool((((i_lo > i_hi) | ok(i_lo)) & ((i_lo > i_hi) | ok(i_hi))).all()), "plane range did not settle"
    count = (i_hi - i_lo + 1).clamp(min=0)
    weight = pick(vs, ax) * length / dd.abs()
    floats = torch.stack([weight, length, t0, dt, u1_0, du1, u2_0, du2], dim=1).to(dtype).contiguous()
    ints = torch.stack(
        [strides[ax], strides[k1], strides[k2], n1, n2, i_lo.long(), count.long()], dim=1
    ).contiguous()
    max_steps = int(count.max()) if count.numel() else 0
    return floats, ints, max_steps


@triton.jit
def _sample(fp_ptr, ip_ptr, offs, m, p):
    """The p-th plane sample of each LOR in the block: corner index, weights and masks."""
    weight = tl.load(fp_ptr + offs * 8 + 0, mask=m, other=0.0)
    length = tl.load(fp_ptr + offs * 8 + 1, mask=m, other=0.0)
    t0 = tl.load(fp_ptr + offs * 8 + 2, mask=m, other=0.0)
    dt = tl.load(fp_ptr + offs * 8 + 3, mask=m, other=0.0)
    u1_0 = tl.load(fp_ptr + offs * 8 + 4, mask=m, other=0.0)
    du1 = tl.load(fp_ptr + offs * 8 + 5, mask=m, other=0.0)
    u2_0 = tl.load(fp_ptr + offs * 8 + 6, mask=m, other=0.0)
    du2 = tl.load(fp_ptr + offs * 8 + 7, mask=m, other=0.0)
    sa = tl.load(ip_ptr + offs * 7 + 0, mask=m, other=0)
    s1 = tl.load(ip_ptr + offs * 7 + 1, mask=m, other=0)
    s2 = tl.load(ip_ptr + offs * 7 + 2, mask=m, other=0)
    n1 = tl.load(ip_ptr + offs * 7 + 3, mask=m, other=0)
    n2 = tl.load(ip_ptr + offs * 7 + 4, mask=m, other=0)
    i_lo = tl.load(ip_ptr + offs * 7 + 5, mask=m, other=0)
    count = tl.load(ip_ptr + offs * 7 + 6, mask=m, other=0)
    i = i_lo + p
    fi = i.to(weight.dtype)
    t = t0 + fi * dt
    active = m & (p < count)  # the setup's exact plane range: no test of t in this dtype
    u1 = u1_0 + fi * du1
    u2 = u2_0 + fi * du2
    f1 = tl.floor(u1)
    f2 = tl.floor(u2)
    b1 = u1 - f1
    b2 = u2 - f2
    j1 = f1.to(tl.int64)
    j2 = f2.to(tl.int64)
    base = i * sa + j1 * s1 + j2 * s2
    lo1 = (j1 >= 0) & (j1 < n1)
    hi1 = (j1 + 1 >= 0) & (j1 + 1 < n1) & (b1 != 0.0)
    lo2 = (j2 >= 0) & (j2 < n2)
    hi2 = (j2 + 1 >= 0) & (j2 + 1 < n2) & (b2 != 0.0)
    dist = (t - 0.5) * length
    return base, s1, s2, b1, b2, active, lo1, hi1, lo2, hi2, weight, dist


@triton.jit
def _tof_weight(diff, bw, scale, reach):
    w = 0.5 * (tl.erf((diff + 0.5 * bw) * scale) - tl.erf((diff - 0.5 * bw) * scale))
    return tl.where(tl.abs(diff) <= reach, w, 0.0)


@triton.jit
def _first_bin(dist, bw, off, reach, half_k):
    """Lowest bin whose centre may lie within ``reach`` of ``dist`` (may be < 0)."""
    return tl.floor((dist - reach - off) / bw + half_k).to(tl.int32)


@triton.jit
def _forward_kernel(img_ptr, fp_ptr, ip_ptr, bin_ptr, out_ptr, num, nvox, max_steps,
                    bw, scale, off, reach, half_k,
                    MODE: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, NR: tl.constexpr,
                    BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    m = offs < num
    img = img_ptr + b * nvox
    dtype = img_ptr.dtype.element_ty
    kk = tl.arange(0, KP)
    if MODE == 1:
        acc = tl.zeros((BLOCK, KP), dtype=dtype)
    else:
        acc = tl.zeros((BLOCK,), dtype=dtype)
    if MODE == 2:
        lm_centre = (tl.load(bin_ptr + offs, mask=m, other=0).to(dtype) - half_k) * bw + off
    for p in range(0, max_steps):
        base, s1, s2, b1, b2, active, lo1, hi1, lo2, hi2, weight, dist = _sample(fp_ptr, ip_ptr, offs, m, p)
        v = (1.0 - b1) * (1.0 - b2) * tl.load(img + base, mask=active & lo1 & lo2, other=0.0)
        v += b1 * (1.0 - b2) * tl.load(img + base + s1, mask=active & hi1 & lo2, other=0.0)
        v += (1.0 - b1) * b2 * tl.load(img + base + s2, mask=active & lo1 & hi2, other=0.0)
        v += b1 * b2 * tl.load(img + base + s1 + s2, mask=active & hi1 & hi2, other=0.0)
        v = v * weight
        if MODE == 0:
            acc += v
        elif MODE == 2:
            acc += v * _tof_weight(dist - lm_centre, bw, scale, reach)
        else:
            # only the NR bins that can be within reach of this sample
            k0 = _first_bin(dist, bw, off, reach, half_k)
            for j in tl.static_range(NR):
                k = k0 + j
                w = _tof_weight(dist - ((k.to(dtype) - half_k) * bw + off), bw, scale, reach)
                w = tl.where((k >= 0) & (k < K), w, 0.0)
                acc += tl.where(kk[None, :] == k[:, None], (v * w)[:, None], 0.0)
    if MODE == 1:
        tl.store(out_ptr + b * num * K + offs[:, None] * K + kk[None, :], acc, mask=m[:, None] & (kk[None, :] < K))
    else:
        tl.store(out_ptr + b * num + offs, acc, mask=m)


@triton.jit
def _back_kernel(val_ptr, fp_ptr, ip_ptr, bin_ptr, img_ptr, num, nvox, max_steps,
                 bw, scale, off, reach, half_k,
                 MODE: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, NR: tl.constexpr,
                 BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    m = offs < num
    img = img_ptr + b * nvox
    dtype = img_ptr.dtype.element_ty
    if MODE != 1:
        vals = tl.load(val_ptr + b * num + offs, mask=m, other=0.0)
    if MODE == 2:
        lm_centre = (tl.load(bin_ptr + offs, mask=m, other=0).to(dtype) - half_k) * bw + off
    for p in range(0, max_steps):
        base, s1, s2, b1, b2, active, lo1, hi1, lo2, hi2, weight, dist = _sample(fp_ptr, ip_ptr, offs, m, p)
        if MODE == 0:
            v = vals * weight
        elif MODE == 2:
            v = vals * weight * _tof_weight(dist - lm_centre, bw, scale, reach)
        else:
            # only the NR bins that can be within reach of this sample, read where needed
            k0 = _first_bin(dist, bw, off, reach, half_k)
            v = tl.zeros((BLOCK,), dtype=dtype)
            for j in tl.static_range(NR):
                k = k0 + j
                ok = active & (k >= 0) & (k < K)
                w = _tof_weight(dist - ((k.to(dtype) - half_k) * bw + off), bw, scale, reach)
                v += w * tl.load(val_ptr + b * num * K + offs * K + k, mask=ok, other=0.0)
            v = v * weight
        active = active & (v != 0.0)
        tl.atomic_add(img + base, v * (1.0 - b1) * (1.0 - b2), mask=active & lo1 & lo2)
        tl.atomic_add(img + base + s1, v * b1 * (1.0 - b2), mask=active & hi1 & lo2)
        tl.atomic_add(img + base + s2, v * (1.0 - b1) * b2, mask=active & lo1 & hi2)
        tl.atomic_add(img + base + s1 + s2, v * b1 * b2, mask=active & hi1 & hi2)


def _mode_args(geom: Geometry) -> tuple[int, int, int, int, tuple[float, float, float, float, float]]:
    """``(mode, K, KP, NR, (bw, scale, off, reach, half_k))``: NR bins can lie within reach
    of one sample (the TOF sinogram kernels loop over those only)."""
    t = geom.tof
    if t is None:
        return 0, 1, 1, 1, (1.0, 1.0, 0.0, 0.0, 0.0)
    mode = 2 if geom.listmode else 1
    scale = 1.0 / (math.sqrt(2.0) * t.sigma)
    reach = t.num_sigmas * t.sigma + 0.5 * t.bin_width
    kp = triton.next_power_of_2(t.num_bins) if mode == 1 else 1
    nr = min(t.num_bins, int(math.floor(2.0 * reach / t.bin_width)) + 2) if mode == 1 else 1
    return mode, t.num_bins, kp, nr, (t.bin_width, scale, t.center_offset, reach, 0.5 * (t.num_bins - 1))


def forward(image: Tensor, start: Tensor, end: Tensor, geom: Geometry, tof_bin: Tensor | None = None) -> Tensor:
    """Project ``image (B, n0, n1, n2)`` -> ``(B, N)`` or ``(B, N, K)`` (TOF sinogram)."""
    batch, num = image.shape[0], start.shape[0]
    mode, k, kp, nr, tof_args = _mode_args(geom)
    out = torch.zeros((batch, num, k) if mode == 1 else (batch, num), dtype=image.dtype, device=image.device)
    nvox = math.prod(geom.image_shape)
    bins = tof_bin if tof_bin is not None else torch.zeros(1, dtype=torch.int64, device=image.device)
    for c0 in range(0, num, _CHUNK):
        c1 = min(num, c0 + _CHUNK)
        floats, ints, max_steps = _setup(start[c0:c1], end[c0:c1], geom, image.dtype)
        part = torch.empty((batch, c1 - c0, k) if mode == 1 else (batch, c1 - c0), dtype=image.dtype,
                           device=image.device)
        grid = (triton.cdiv(c1 - c0, _BLOCK), batch)
        _forward_kernel[grid](image, floats, ints, bins[c0:c1] if tof_bin is not None else bins, part,
                              c1 - c0, nvox, max_steps, *tof_args, MODE=mode, K=k, KP=kp, NR=nr, BLOCK=_BLOCK)
        out[:, c0:c1] = part
    return out


def back(values: Tensor, start: Tensor, end: Tensor, geom: Geometry, tof_bin: Tensor | None = None) -> Tensor:
    """Adjoint of :func:`forward`: values ``(B, N[, K])`` -> image ``(B, n0, n1, n2)``."""
    batch, num = values.shape[0], start.shape[0]
    mode, k, kp, nr, tof_args = _mode_args(geom)
    nvox = math.prod(geom.image_shape)
    image = torch.zeros((batch, *geom.image_shape), dtype=values.dtype, device=values.device)
    bins = tof_bin if tof_bin is not None else torch.zeros(1, dtype=torch.int64, device=values.device)
    for c0 in range(0, num, _CHUNK):
        c1 = min(num, c0 + _CHUNK)
        floats, ints, max_steps = _setup(start[c0:c1], end[c0:c1], geom, values.dtype)
        part = values[:, c0:c1].contiguous()
        grid = (triton.cdiv(c1 - c0, _BLOCK), batch)
        _back_kernel[grid](part, floats, ints, bins[c0:c1] if tof_bin is not None else bins, image,
                           c1 - c0, nvox, max_steps, *tof_args, MODE=mode, K=k, KP=kp, NR=nr, BLOCK=_BLOCK)
    return image
