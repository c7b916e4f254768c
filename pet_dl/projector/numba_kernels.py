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
    """Principal axis, the two others, plane range, path per plane (mm) and length (mm)."""
    d0, d1, d2 = e[0] - s[0], e[1] - s[1], e[2] - s[2]
    a0, a1, a2 = abs(d0), abs(d1), abs(d2)
    if a0 >= a1 and a0 >= a2:
        ax, k1, k2, dd = 0, 1, 2, d0
    elif a1 >= a2:
        ax, k1, k2, dd = 1, 0, 2, d1
    else:
        ax, k1, k2, dd = 2, 0, 1, d2
    length = math.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
    lo_mm = min(s[ax], e[ax])
    hi_mm = max(s[ax], e[ax])
    # conservative plane range; the exact test 0 <= t <= 1 is done per plane
    i_lo = max(0, int(math.floor((lo_mm - origin[ax]) / vs[ax])))
    i_hi = min(shape[ax] - 1, int(math.ceil((hi_mm - origin[ax]) / vs[ax])))
    return ax, k1, k2, dd, i_lo, i_hi, vs[ax] * length / abs(dd), length


@njit(parallel=True, cache=True)
def _forward(image, start, end, origin, vs, out, tof_bin, tof, mode):  # noqa: ANN001, ANN202
    """mode 0: non-TOF, 1: TOF sinogram, 2: TOF listmode; ``out`` is ``(B, N, K)``, K = 1 but in mode 1.

    ``tof`` = (num_bins, bin_width, sigma, center_offset, num_sigmas), float64 (5,).
    """
    nb = image.shape[0]
    shape = (image.shape[1], image.shape[2], image.shape[3])
    num_bins = int(tof[0])
    bw, sigma, off = tof[1], tof[2], tof[3]
    reach = tof[4] * sigma + 0.5 * bw
    scale = 1.0 / (math.sqrt(2.0) * sigma) if sigma > 0 else 0.0
    half_k = 0.5 * (num_bins - 1)
    for n in prange(start.shape[0]):
        s = start[n]
        e = end[n]
        ax, k1, k2, dd, i_lo, i_hi, weight, length = _setup(s, e, origin, vs, shape)
        n1, n2 = shape[k1], shape[k2]
        for i in range(i_lo, i_hi + 1):
            t = (origin[ax] + i * vs[ax] - s[ax]) / dd
            if t < 0.0 or t > 1.0:
                continue
            u1 = (s[k1] + t * (e[k1] - s[k1]) - origin[k1]) / vs[k1]
            u2 = (s[k2] + t * (e[k2] - s[k2]) - origin[k2]) / vs[k2]
            f1 = math.floor(u1)
            f2 = math.floor(u2)
            j1 = int(f1)
            j2 = int(f2)
            if j1 < -1 or j1 >= n1 or j2 < -1 or j2 >= n2:
                continue
            b1 = u1 - f1
            b2 = u2 - f2
            for b in range(nb):
                img = image[b]
                acc = 0.0
                for o1 in range(2):
                    jj1 = j1 + o1
                    if jj1 < 0 or jj1 >= n1:
                        continue
                    w1 = b1 if o1 else 1.0 - b1
                    for o2 in range(2):
                        jj2 = j2 + o2
                        if jj2 < 0 or jj2 >= n2:
                            continue
                        w = w1 * (b2 if o2 else 1.0 - b2)
                        if ax == 0:
                            v = img[i, jj1, jj2]
                        elif ax == 1:
                            v = img[jj1, i, jj2]
                        else:
                            v = img[jj1, jj2, i]
                        acc += w * v
                if acc == 0.0:
                    continue
                acc *= weight
                if mode == 0:
                    out[b, n, 0] += acc
                else:
                    dist = (t - 0.5) * length
                    if mode == 2:
                        diff = dist - ((tof_bin[n] - half_k) * bw + off)
                        if abs(diff) <= reach:
                            tw = 0.5 * (math.erf((diff + 0.5 * bw) * scale) - math.erf((diff - 0.5 * bw) * scale))
                            out[b, n, 0] += acc * tw
                    else:
                        k_lo = max(0, int(math.floor((dist - reach - off) / bw + half_k)))
                        k_hi = min(num_bins - 1, int(math.ceil((dist + reach - off) / bw + half_k)))
                        for k in range(k_lo, k_hi + 1):
                            diff = dist - ((k - half_k) * bw + off)
                            if abs(diff) <= reach:
                                tw = 0.5 * (math.erf((diff + 0.5 * bw) * scale) - math.erf((diff - 0.5 * bw) * scale))
                                out[b, n, k] += acc * tw


@njit(parallel=True, cache=True)
def _back(values, start, end, origin, vs, buf, tof_bin, tof, mode):  # noqa: ANN001, ANN202
    """Adjoint of :func:`_forward` into ``buf (num_blocks, B, n0, n1, n2)`` (summed by the caller)."""
    nb = values.shape[0]
    shape = (buf.shape[2], buf.shape[3], buf.shape[4])
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
            s = start[n]
            e = end[n]
            ax, k1, k2, dd, i_lo, i_hi, weight, length = _setup(s, e, origin, vs, shape)
            n1, n2 = shape[k1], shape[k2]
            for i in range(i_lo, i_hi + 1):
                t = (origin[ax] + i * vs[ax] - s[ax]) / dd
                if t < 0.0 or t > 1.0:
                    continue
                u1 = (s[k1] + t * (e[k1] - s[k1]) - origin[k1]) / vs[k1]
                u2 = (s[k2] + t * (e[k2] - s[k2]) - origin[k2]) / vs[k2]
                f1 = math.floor(u1)
                f2 = math.floor(u2)
                j1 = int(f1)
                j2 = int(f2)
                if j1 < -1 or j1 >= n1 or j2 < -1 or j2 >= n2:
                    continue
                b1 = u1 - f1
                b2 = u2 - f2
                dist = (t - 0.5) * length
                for b in range(nb):
                    if mode == 0:
                        val = values[b, n, 0] * weight
                    elif mode == 2:
                        diff = dist - ((tof_bin[n] - half_k) * bw + off)
                        if abs(diff) > reach:
                            continue
                        tw = 0.5 * (math.erf((diff + 0.5 * bw) * scale) - math.erf((diff - 0.5 * bw) * scale))
                        val = values[b, n, 0] * weight * tw
                    else:
                        k_lo = max(0, int(math.floor((dist - reach - off) / bw + half_k)))
                        k_hi = min(num_bins - 1, int(math.ceil((dist + reach - off) / bw + half_k)))
                        val = 0.0
                        for k in range(k_lo, k_hi + 1):
                            diff = dist - ((k - half_k) * bw + off)
                            if abs(diff) <= reach:
                                tw = 0.5 * (math.erf((diff + 0.5 * bw) * scale) - math.erf((diff - 0.5 * bw) * scale))
                                val += values[b, n, k] * tw
                        val *= weight
                    if val == 0.0:
                        continue
                    img = img_buf[b]
                    for o1 in range(2):
                        jj1 = j1 + o1
                        if jj1 < 0 or jj1 >= n1:
                            continue
                        w1 = b1 if o1 else 1.0 - b1
                        for o2 in range(2):
                            jj2 = j2 + o2
                            if jj2 < 0 or jj2 >= n2:
                                continue
                            w = val * w1 * (b2 if o2 else 1.0 - b2)
                            if ax == 0:
                                img[i, jj1, jj2] += w
                            elif ax == 1:
                                img[jj1, i, jj2] += w
                            else:
                                img[jj1, jj2, i] += w


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


def forward(image: Tensor, start: Tensor, end: Tensor, geom: Geometry, tof_bin: Tensor | None = None) -> Tensor:
    """Project ``image (B, n0, n1, n2)`` -> ``(B, N)`` or ``(B, N, K)`` (TOF sinogram)."""
    batch, num = image.shape[0], start.shape[0]
    mode = _mode(geom)
    out_shape = (batch, num, geom.tof.num_bins) if mode == 1 else (batch, num)
    out = torch.zeros(out_shape, dtype=image.dtype)
    if num:
        s, e = _lors(start, end)
        out3 = out.numpy().reshape(batch, num, -1)
        _forward(_np(image), s, e, np.array(geom.origin), np.array(geom.voxel_size), out3,
                 _bins(tof_bin), _tof_array(geom), mode)
    return out


def back(values: Tensor, start: Tensor, end: Tensor, geom: Geometry, tof_bin: Tensor | None = None) -> Tensor:
    """Adjoint of :func:`forward`: values ``(B, N[, K])`` -> image ``(B, n0, n1, n2)``."""
    batch, num = values.shape[0], start.shape[0]
    image_bytes = batch * math.prod(geom.image_shape) * values.element_size()
    blocks = max(1, min(numba.get_num_threads(), num, _MAX_BUFFER_BYTES // max(1, image_bytes)))
    buf = torch.zeros((blocks, batch, *geom.image_shape), dtype=values.dtype)
    if num:
        s, e = _lors(start, end)
        _back(_np(values).reshape(batch, num, -1), s, e, np.array(geom.origin), np.array(geom.voxel_size), buf.numpy(),
              _bins(tof_bin), _tof_array(geom), _mode(geom))
    return buf[0] if blocks == 1 else buf.sum(0)
