"""Compiled CPU Joseph kernels (numba, parallel over LORs).

Same algorithm and conventions as :mod:`pet_dl.projector.reference`; geometry is computed
in float64 and accumulated in float64, images and values keep their dtype (float32 or
float64). Forward projection runs one LOR per loop iteration (``prange``); backprojection
splits the LORs into contiguous blocks, one per thread, each with its own image buffer,
and sums the buffers at the end (no races, deterministic for a given thread count).

Called with the flat tensors of :mod:`pet_dl.projector._checks`: image ``(B, n0, n1, n2)``,
values ``(B, N)`` or ``(B, N, K)``, endpoints ``(N, 3)`` mm, ``tof_bin`` ``(N,)`` int64.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from pet_dl.projector._checks import Geometry

# Backprojection buffers (threads x batch x voxels) are capped at this many bytes.
_MAX_BUFFER_BYTES = 2 << 30


@njit(cache=True, inline="always")
def _setup(s, e, origin, vs, shape):  # noqa: ANN001, ANN202
    """Per-LOR stepping parameters.

    Returns ``(ax, k1, k2, i_lo, i_hi, weight, length, t0, dt, u1_0, du1, u2_0, du2)``: the
    principal axis and the two others, the range of planes whose sample lies on the
    segment and within one voxel of the image in the other axes (empty when
    ``i_lo > i_hi``), the path per plane (mm), the LOR length (mm), and the segment
    parameter ``t = t0 + i dt`` and continuous voxel indices ``u = u_0 + i du`` at plane ``i``.
    """
    d0, d1, d2 = e[0] - s[0], e[1] - s[1], e[2] - s[2]
    a0, a1, a2 = abs(d0), abs(d1), abs(d2)
    if a0 >= a1 and a0 >= a2:
        ax, k1, k2 = 0, 1, 2
    elif a1 >= a2:
        ax, k1, k2 = 1, 0, 2
    else:
        ax, k1, k2 = 2, 0, 1
    dd = e[ax] - s[ax]
    length = math.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
    t0 = (origin[ax] - s[ax]) / dd
    dt = vs[ax] / dd
    c1 = (e[k1] - s[k1]) / vs[k1]
    c2 = (e[k2] - s[k2]) / vs[k2]
    u1_0 = (s[k1] - origin[k1]) / vs[k1] + t0 * c1
    u2_0 = (s[k2] - origin[k2]) / vs[k2] + t0 * c2
    du1 = dt * c1
    du2 = dt * c2
    n1, n2 = shape[k1], shape[k2]
    # conservative range, then tightened with the exact per-plane tests
    lo_mm = min(s[ax], e[ax])
    hi_mm = max(s[ax], e[ax])
    i_lo = max(0, int(math.floor((lo_mm - origin[ax]) / vs[ax])) - 1)
    i_hi = min(shape[ax] - 1, int(math.ceil((hi_mm - origin[ax]) / vs[ax])) + 1)
    while i_lo <= i_hi:
        t = t0 + i_lo * dt
        u1 = u1_0 + i_lo * du1
        u2 = u2_0 + i_lo * du2
        if 0.0 <= t <= 1.0 and -1.0 < u1 < n1 and -1.0 < u2 < n2:
            break
        i_lo += 1
    while i_hi >= i_lo:
        t = t0 + i_hi * dt
        u1 = u1_0 + i_hi * du1
        u2 = u2_0 + i_hi * du2
        if 0.0 <= t <= 1.0 and -1.0 < u1 < n1 and -1.0 < u2 < n2:
            break
        i_hi -= 1
    return ax, k1, k2, i_lo, i_hi, vs[ax] * length / abs(dd), length, t0, dt, u1_0, du1, u2_0, du2


@njit(cache=True, inline="always")
def _tof_weight(diff, bw, scale, reach):  # noqa: ANN001, ANN202
    """Gaussian integrated over a bin whose centre is ``diff`` mm from the sample."""
    if abs(diff) > reach:
        return 0.0
    return 0.5 * (math.erf((diff + 0.5 * bw) * scale) - math.erf((diff - 0.5 * bw) * scale))


@njit(parallel=True, cache=True)
def _forward_plain(image, shape, start, end, origin, vs, out):  # noqa: ANN001, ANN202
    """Non-TOF projection of ``image (B, n0 n1 n2)`` (flat) into ``out (B, N)``; the hot path."""
    nb = image.shape[0]
    strides = (shape[1] * shape[2], shape[2], 1)
    for n in prange(start.shape[0]):
        ax, k1, k2, i_lo, i_hi, weight, length, t0, dt, u1_0, du1, u2_0, du2 = _setup(
            start[n], end[n], origin, vs, shape
        )
        n1, n2 = shape[k1], shape[k2]
        sa, s1, s2 = strides[ax], strides[k1], strides[k2]
        for b in range(nb):
            acc = 0.0
            for i in range(i_lo, i_hi + 1):
                u1 = u1_0 + i * du1
                u2 = u2_0 + i * du2
                j1 = int(u1 + 1.0) - 1  # floor, as u > -1 on the clipped range
                j2 = int(u2 + 1.0) - 1
                b1 = u1 - j1
                b2 = u2 - j2
                base = i * sa + j1 * s1 + j2 * s2
                lo1 = j1 >= 0
                hi1 = j1 + 1 < n1 and b1 != 0.0
                if j2 >= 0:
                    v = 0.0
                    if lo1:
                        v += (1.0 - b1) * image[b, base]
                    if hi1:
                        v += b1 * image[b, base + s1]
                    acc += (1.0 - b2) * v
                if j2 + 1 < n2 and b2 != 0.0:
                    v = 0.0
                    if lo1:
                        v += (1.0 - b1) * image[b, base + s2]
                    if hi1:
                        v += b1 * image[b, base + s1 + s2]
                    acc += b2 * v
            out[b, n] = acc * weight


@njit(parallel=True, cache=True)
def _back_plain(values, shape, start, end, origin, vs, buf):  # noqa: ANN001, ANN202
    """Adjoint of :func:`_forward_plain` into ``buf (num_blocks, B, n0 n1 n2)``."""
    nb = values.shape[0]
    strides = (shape[1] * shape[2], shape[2], 1)
    num = start.shape[0]
    blocks = buf.shape[0]
    for blk in prange(blocks):
        img = buf[blk]
        for n in range(blk * num // blocks, (blk + 1) * num // blocks):
            ax, k1, k2, i_lo, i_hi, weight, length, t0, dt, u1_0, du1, u2_0, du2 = _setup(
                start[n], end[n], origin, vs, shape
            )
            n1, n2 = shape[k1], shape[k2]
            sa, s1, s2 = strides[ax], strides[k1], strides[k2]
            for b in range(nb):
                val = values[b, n] * weight
                if val == 0.0:
                    continue
                for i in range(i_lo, i_hi + 1):
                    u1 = u1_0 + i * du1
                    u2 = u2_0 + i * du2
                    j1 = int(u1 + 1.0) - 1
                    j2 = int(u2 + 1.0) - 1
                    b1 = u1 - j1
                    b2 = u2 - j2
                    base = i * sa + j1 * s1 + j2 * s2
                    lo1 = j1 >= 0
                    hi1 = j1 + 1 < n1 and b1 != 0.0
                    if j2 >= 0:
                        v = val * (1.0 - b2)
                        if lo1:
                            img[b, base] += (1.0 - b1) * v
                        if hi1:
                            img[b, base + s1] += b1 * v
                    if j2 + 1 < n2 and b2 != 0.0:
                        v = val * b2
                        if lo1:
                            img[b, base + s2] += (1.0 - b1) * v
                        if hi1:
                            img[b, base + s1 + s2] += b1 * v


@njit(parallel=True, cache=True)
def _forward(image, shape, start, end, origin, vs, out, tof_bin, tof, mode):  # noqa: ANN001, ANN202
    """Project ``image (B, n0 n1 n2)`` (flat) into ``out (B, N, K)``.

    ``mode`` 0: non-TOF, 1: TOF sinogram, 2: TOF listmode (K = 1 but in mode 1).
    ``tof`` = (num_bins, bin_width, sigma, center_offset, num_sigmas), float64 (5,).
    """
    nb = image.shape[0]
    strides = (shape[1] * shape[2], shape[2], 1)
    num_bins = int(tof[0])
    bw, sigma, off = tof[1], tof[2], tof[3]
    reach = tof[4] * sigma + 0.5 * bw
    scale = 1.0 / (math.sqrt(2.0) * sigma) if sigma > 0 else 0.0
    half_k = 0.5 * (num_bins - 1)
    for n in prange(start.shape[0]):
        ax, k1, k2, i_lo, i_hi, weight, length, t0, dt, u1_0, du1, u2_0, du2 = _setup(
            start[n], end[n], origin, vs, shape
        )
        n1, n2 = shape[k1], shape[k2]
        sa, s1, s2 = strides[ax], strides[k1], strides[k2]
        for i in range(i_lo, i_hi + 1):
            u1 = u1_0 + i * du1
            u2 = u2_0 + i * du2
            f1 = math.floor(u1)
            f2 = math.floor(u2)
            b1 = u1 - f1
            b2 = u2 - f2
            j1 = int(f1)
            j2 = int(f2)
            ok1lo, ok1hi = j1 >= 0, j1 + 1 < n1 and b1 != 0.0
            ok2lo, ok2hi = j2 >= 0, j2 + 1 < n2 and b2 != 0.0
            w00 = (1.0 - b1) * (1.0 - b2)
            w10 = b1 * (1.0 - b2)
            w01 = (1.0 - b1) * b2
            w11 = b1 * b2
            base = i * sa + j1 * s1 + j2 * s2
            for b in range(nb):
                img = image[b]
                acc = 0.0
                if ok1lo and ok2lo:
                    acc += w00 * img[base]
                if ok1hi and ok2lo:
                    acc += w10 * img[base + s1]
                if ok1lo and ok2hi:
                    acc += w01 * img[base + s2]
                if ok1hi and ok2hi:
                    acc += w11 * img[base + s1 + s2]
                acc *= weight
                if mode == 0:
                    out[b, n, 0] += acc
                elif acc != 0.0:
                    dist = (t0 + i * dt - 0.5) * length
                    if mode == 2:
                        out[b, n, 0] += acc * _tof_weight(dist - ((tof_bin[n] - half_k) * bw + off), bw, scale, reach)
                    else:
                        k_lo = max(0, int(math.floor((dist - reach - off) / bw + half_k)))
                        k_hi = min(num_bins - 1, int(math.ceil((dist + reach - off) / bw + half_k)))
                        for k in range(k_lo, k_hi + 1):
                            out[b, n, k] += acc * _tof_weight(dist - ((k - half_k) * bw + off), bw, scale, reach)


@njit(parallel=True, cache=True)
def _back(values, shape, start, end, origin, vs, buf, tof_bin, tof, mode):  # noqa: ANN001, ANN202
    """Adjoint of :func:`_forward` into ``buf (num_blocks, B, n0 n1 n2)`` (summed by the caller)."""
    nb = values.shape[0]
    strides = (shape[1] * shape[2], shape[2], 1)
    num_bins = int(tof[0])
    bw, sigma, off = tof[1], tof[2], tof[3]
    reach = tof[4] * sigma + 0.5 * bw
    scale = 1.0 / (math.sqrt(2.0) * sigma) if sigma > 0 else 0.0
    half_k = 0.5 * (num_bins - 1)
    num = start.shape[0]
    blocks = buf.shape[0]
    for blk in prange(blocks):
        img_buf = buf[blk]
        for n in range(blk * num // blocks, (blk + 1) * num // blocks):
            ax, k1, k2, i_lo, i_hi, weight, length, t0, dt, u1_0, du1, u2_0, du2 = _setup(
                start[n], end[n], origin, vs, shape
            )
            n1, n2 = shape[k1], shape[k2]
            sa, s1, s2 = strides[ax], strides[k1], strides[k2]
            for i in range(i_lo, i_hi + 1):
                u1 = u1_0 + i * du1
                u2 = u2_0 + i * du2
                f1 = math.floor(u1)
                f2 = math.floor(u2)
                b1 = u1 - f1
                b2 = u2 - f2
                j1 = int(f1)
                j2 = int(f2)
                ok1lo, ok1hi = j1 >= 0, j1 + 1 < n1 and b1 != 0.0
                ok2lo, ok2hi = j2 >= 0, j2 + 1 < n2 and b2 != 0.0
                base = i * sa + j1 * s1 + j2 * s2
                dist = (t0 + i * dt - 0.5) * length
                for b in range(nb):
                    if mode == 0:
                        val = values[b, n, 0] * weight
                    elif mode == 2:
                        diff = dist - ((tof_bin[n] - half_k) * bw + off)
                        val = values[b, n, 0] * weight * _tof_weight(diff, bw, scale, reach)
                    else:
                        k_lo = max(0, int(math.floor((dist - reach - off) / bw + half_k)))
                        k_hi = min(num_bins - 1, int(math.ceil((dist + reach - off) / bw + half_k)))
                        val = 0.0
                        for k in range(k_lo, k_hi + 1):
                            val += values[b, n, k] * _tof_weight(dist - ((k - half_k) * bw + off), bw, scale, reach)
                        val *= weight
                    if val == 0.0:
                        continue
                    img = img_buf[b]
                    if ok1lo and ok2lo:
                        img[base] += val * (1.0 - b1) * (1.0 - b2)
                    if ok1hi and ok2lo:
                        img[base + s1] += val * b1 * (1.0 - b2)
                    if ok1lo and ok2hi:
                        img[base + s2] += val * (1.0 - b1) * b2
                    if ok1hi and ok2hi:
                        img[base + s1 + s2] += val * b1 * b2


def _tof_array(geom: Geometry) -> np.ndarray:
    t = geom.tof
    if t is None:
        return np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    return np.array([t.num_bins, t.bin_width, t.sigma, t.center_offset, t.num_sigmas])


def _mode(geom: Geometry) -> int:
    return 0 if geom.tof is None else (2 if geom.listmode else 1)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _lors(start: Tensor, end: Tensor) -> tuple[np.ndarray, np.ndarray]:
    return _np(start.to(torch.float64)), _np(end.to(torch.float64))


def _bins(tof_bin: Tensor | None) -> np.ndarray:
    return np.zeros(1, dtype=np.int64) if tof_bin is None else _np(tof_bin)


def _grid(geom: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.array(geom.image_shape, dtype=np.int64), np.array(geom.origin), np.array(geom.voxel_size)


def forward(image: Tensor, start: Tensor, end: Tensor, geom: Geometry, tof_bin: Tensor | None = None) -> Tensor:
    """Project ``image (B, n0, n1, n2)`` -> ``(B, N)`` or ``(B, N, K)`` (TOF sinogram)."""
    batch, num = image.shape[0], start.shape[0]
    mode = _mode(geom)
    out = torch.zeros((batch, num, geom.tof.num_bins if mode == 1 else 1), dtype=image.dtype)
    if num:
        shape, origin, vs = _grid(geom)
        s, e = _lors(start, end)
        flat = _np(image).reshape(batch, -1)
        if mode == 0:
            _forward_plain(flat, shape, s, e, origin, vs, out.numpy()[:, :, 0])
        else:
            _forward(flat, shape, s, e, origin, vs, out.numpy(), _bins(tof_bin), _tof_array(geom), mode)
    return out if mode == 1 else out[:, :, 0]


def back(values: Tensor, start: Tensor, end: Tensor, geom: Geometry, tof_bin: Tensor | None = None) -> Tensor:
    """Adjoint of :func:`forward`: values ``(B, N[, K])`` -> image ``(B, n0, n1, n2)``."""
    batch, num = values.shape[0], start.shape[0]
    mode = _mode(geom)
    image_bytes = batch * math.prod(geom.image_shape) * values.element_size()
    blocks = max(1, min(numba.get_num_threads(), num, _MAX_BUFFER_BYTES // max(1, image_bytes)))
    buf = torch.zeros((blocks, batch, math.prod(geom.image_shape)), dtype=values.dtype)
    if num:
        shape, origin, vs = _grid(geom)
        s, e = _lors(start, end)
        vals = _np(values)
        if mode == 0:
            _back_plain(vals, shape, s, e, origin, vs, buf.numpy())
        else:
            vals = vals.reshape(batch, num, -1)
            _back(vals, shape, s, e, origin, vs, buf.numpy(), _bins(tof_bin), _tof_array(geom), mode)
    out = buf[0] if blocks == 1 else buf.sum(0)
    return out.reshape(batch, *geom.image_shape)
