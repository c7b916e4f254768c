"""Compiled CPU Joseph kernels (numba, parallel over LORs).

Same algorithm and conventions as :mod:`pet_dl.projector.reference`; geometry is computed
in float64 and accumulated in float64, images and values keep their dtype (float32 or
float64). Forward projection runs one LOR per loop iteration (``prange``); backprojection
splits the LORs into contiguous blocks, one per thread, each with its own image buffer,
and sums the buffers at the end (no races, deterministic for a given thread count).

LOR endpoints come in one of two forms, read (and cast to float64) inside the kernels,
never copied:

- flat: ``start``, ``end`` ``(N, 3)`` mm (:mod:`pet_dl.projector._checks`);
- factored (a sinogram, :class:`pet_dl.projector.factored.SinogramLORs`): LOR
  ``n = p * Q + q`` runs from ``(xy_start[q], z_start[p])`` to ``(xy_end[q], z_end[p])``,
  ``xy`` ``(Q, 2)`` with ``Q = views x radial bins``, ``z`` ``(P,)``.

TOF kernels evaluate the Gaussian's erf once per bin edge and sample (adjacent bins share
an edge), before the batch loop, and only for the bins within reach of the sample. For
float32 data the erf comes from a cubic Hermite table (error ~1e-9, below float32's
resolution, and several times cheaper than libm's); float64 data use libm's erf.

Called with images ``(B, n0, n1, n2)``, values ``(B, N)`` or ``(B, N, K)``, ``tof_bin``
``(N,)`` int64.
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

# erf table for float32 TOF: cubic Hermite on nodes i / _ERF_STEPS, 0 <= x < _ERF_MAX
# (erf(6) = 1 - 2e-17). Interpolation error <= h^4 / 384 * max |4th derivative| ~ 1e-9,
# far below float32's resolution; float64 projections call libm's erf instead.
_ERF_STEPS = 64
_ERF_MAX = 6.0


def _erf_table() -> np.ndarray:
    x = np.arange(int(_ERF_MAX * _ERF_STEPS) + 2) / _ERF_STEPS
    value = np.array([math.erf(v) for v in x])
    slope = 2.0 / math.sqrt(math.pi) * np.exp(-x * x) / _ERF_STEPS  # d erf / d node index
    return np.ascontiguousarray(np.stack([value, slope], axis=1))


_ERF_TABLE = _erf_table()


@njit(cache=True, inline="always")
def _endpoints(n, start, end, zs, ze, vr):  # noqa: ANN001, ANN202
    """Endpoints of LOR ``n`` as two float64 3-tuples (flat when ``vr == 0``, else factored)."""
    if vr > 0:
        p = n // vr
        q = n - p * vr
        s = (np.float64(start[q, 0]), np.float64(start[q, 1]), np.float64(zs[p]))
        e = (np.float64(end[q, 0]), np.float64(end[q, 1]), np.float64(ze[p]))
        return s, e
    s = (np.float64(start[n, 0]), np.float64(start[n, 1]), np.float64(start[n, 2]))
    e = (np.float64(end[n, 0]), np.float64(end[n, 1]), np.float64(end[n, 2]))
    return s, e


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
def _erf(x, table):  # noqa: ANN001, ANN202
    """erf(x): libm's when ``table`` has no rows, else the cubic Hermite table (float32 path)."""
    if table.shape[0] == 0:
        return math.erf(x)
    a = abs(x) * _ERF_STEPS
    i = int(a)
    if i >= table.shape[0] - 1:
        return 1.0 if x > 0 else -1.0
    t = a - i
    s = 1.0 - t
    v = (1.0 + 2.0 * t) * s * s * table[i, 0] + t * s * s * table[i, 1]
    v += t * t * (3.0 - 2.0 * t) * table[i + 1, 0] - t * t * s * table[i + 1, 1]
    return v if x >= 0 else -v


@njit(cache=True, inline="always")
def _tof_weight(diff, bw, scale, reach, table):  # noqa: ANN001, ANN202
    """Gaussian integrated over a bin whose centre is ``diff`` mm from the sample."""
    if abs(diff) > reach:
        return 0.0
    return 0.5 * (_erf((diff + 0.5 * bw) * scale, table) - _erf((diff - 0.5 * bw) * scale, table))


@njit(cache=True, inline="always")
def _tof_weights(dist, tw, num_bins, bw, scale, off, reach, half_k, table):  # noqa: ANN001, ANN202
    """TOF weights of the bins within reach of a sample ``dist`` mm from the LOR midpoint.

    Writes bins ``k_lo .. k_hi`` of ``tw`` and returns ``(k_lo, k_hi)`` (empty when
    ``k_lo > k_hi``). Bin ``k`` gets ``0.5 (erf((dist - lo_k) s) - erf((dist - hi_k) s))``
    with ``hi_k = lo_{k+1}``: one erf per edge, shared by the two bins beside it.
    """
    k_lo = max(0, int(math.floor((dist - reach - off) / bw + half_k)))
    k_hi = min(num_bins - 1, int(math.ceil((dist + reach - off) / bw + half_k)))
    # the bins with |dist - centre| <= reach exactly (the same test as _tof_weight)
    while k_lo <= k_hi and abs(dist - ((k_lo - half_k) * bw + off)) > reach:
        k_lo += 1
    while k_hi >= k_lo and abs(dist - ((k_hi - half_k) * bw + off)) > reach:
        k_hi -= 1
    if k_lo > k_hi:
        return k_lo, k_hi
    lower = (k_lo - half_k) * bw + off - 0.5 * bw  # lower edge of bin k_lo, mm
    e_prev = _erf((dist - lower) * scale, table)
    for k in range(k_lo, k_hi + 1):
        e_next = _erf((dist - (lower + (k - k_lo + 1) * bw)) * scale, table)
        tw[k] = 0.5 * (e_prev - e_next)
        e_prev = e_next
    return k_lo, k_hi


@njit(parallel=True, cache=True)
def _forward_plain(image, shape, start, end, zs, ze, vr, num, origin, vs, out):  # noqa: ANN001, ANN202
    """Non-TOF projection of ``image (B, n0 n1 n2)`` (flat) into ``out (B, N)``; the hot path."""
    nb = image.shape[0]
    strides = (shape[1] * shape[2], shape[2], 1)
    for n in prange(num):
        s, e = _endpoints(n, start, end, zs, ze, vr)
        ax, k1, k2, i_lo, i_hi, weight, length, t0, dt, u1_0, du1, u2_0, du2 = _setup(s, e, origin, vs, shape)
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
def _back_plain(values, shape, start, end, zs, ze, vr, num, origin, vs, buf):  # noqa: ANN001, ANN202
    """Adjoint of :func:`_forward_plain` into ``buf (num_blocks, B, n0 n1 n2)``."""
    nb = values.shape[0]
    strides = (shape[1] * shape[2], shape[2], 1)
    blocks = buf.shape[0]
    for blk in prange(blocks):
        img = buf[blk]
        for n in range(blk * num // blocks, (blk + 1) * num // blocks):
            s, e = _endpoints(n, start, end, zs, ze, vr)
            ax, k1, k2, i_lo, i_hi, weight, length, t0, dt, u1_0, du1, u2_0, du2 = _setup(s, e, origin, vs, shape)
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
def _forward(image, shape, start, end, zs, ze, vr, num, origin, vs, out, tof_bin, tof, mode, table):  # noqa: ANN001, ANN202
    """TOF projection of ``image (B, n0 n1 n2)`` (flat) into ``out (B, N, K)``.

    ``mode`` 1: TOF sinogram, 2: TOF listmode (``out (B, N, 1)``, bin ``tof_bin[n]``).
    ``tof`` = (num_bins, bin_width, sigma, center_offset, num_sigmas), float64 (5,);
    ``table``: :data:`_ERF_TABLE` (tabulated erf) or an empty ``(0, 2)`` array (libm erf).
    """
    nb = image.shape[0]
    strides = (shape[1] * shape[2], shape[2], 1)
    num_bins = int(tof[0])
    bw, sigma, off = tof[1], tof[2], tof[3]
    reach = tof[4] * sigma + 0.5 * bw
    scale = 1.0 / (math.sqrt(2.0) * sigma) if sigma > 0 else 0.0
    half_k = 0.5 * (num_bins - 1)
    for n in prange(num):
        tw = np.empty(num_bins)
        s, e = _endpoints(n, start, end, zs, ze, vr)
        ax, k1, k2, i_lo, i_hi, weight, length, t0, dt, u1_0, du1, u2_0, du2 = _setup(s, e, origin, vs, shape)
        n1, n2 = shape[k1], shape[k2]
        sa, s1, s2 = strides[ax], strides[k1], strides[k2]
        lm_centre = (tof_bin[n] - half_k) * bw + off if mode == 2 else 0.0
        for i in range(i_lo, i_hi + 1):
            u1 = u1_0 + i * du1
            u2 = u2_0 + i * du2
            j1 = int(u1 + 1.0) - 1
            j2 = int(u2 + 1.0) - 1
            b1 = u1 - j1
            b2 = u2 - j2
            ok1lo, ok1hi = j1 >= 0, j1 + 1 < n1 and b1 != 0.0
            ok2lo, ok2hi = j2 >= 0, j2 + 1 < n2 and b2 != 0.0
            base = i * sa + j1 * s1 + j2 * s2
            dist = (t0 + i * dt - 0.5) * length
            if mode == 2:
                w_lm = _tof_weight(dist - lm_centre, bw, scale, reach, table) * weight
                if w_lm == 0.0:
                    continue
                k_lo, k_hi = 0, -1
            else:
                k_lo, k_hi = _tof_weights(dist, tw, num_bins, bw, scale, off, reach, half_k, table)
                if k_lo > k_hi:
                    continue
                w_lm = 0.0
            for b in range(nb):
                acc = 0.0
                if ok1lo and ok2lo:
                    acc += (1.0 - b1) * (1.0 - b2) * image[b, base]
                if ok1hi and ok2lo:
                    acc += b1 * (1.0 - b2) * image[b, base + s1]
                if ok1lo and ok2hi:
                    acc += (1.0 - b1) * b2 * image[b, base + s2]
                if ok1hi and ok2hi:
                    acc += b1 * b2 * image[b, base + s1 + s2]
                if acc == 0.0:
                    continue
                if mode == 2:
                    out[b, n, 0] += acc * w_lm
                else:
                    acc *= weight
                    for k in range(k_lo, k_hi + 1):
                        out[b, n, k] += acc * tw[k]


@njit(parallel=True, cache=True)
def _back(values, shape, start, end, zs, ze, vr, num, origin, vs, buf, tof_bin, tof, mode, table):  # noqa: ANN001, ANN202
    """Adjoint of :func:`_forward` into ``buf (num_blocks, B, n0 n1 n2)`` (summed by the caller)."""
    nb = values.shape[0]
    strides = (shape[1] * shape[2], shape[2], 1)
    num_bins = int(tof[0])
    bw, sigma, off = tof[1], tof[2], tof[3]
    reach = tof[4] * sigma + 0.5 * bw
    scale = 1.0 / (math.sqrt(2.0) * sigma) if sigma > 0 else 0.0
    half_k = 0.5 * (num_bins - 1)
    blocks = buf.shape[0]
    for blk in prange(blocks):
        img_buf = buf[blk]
        tw = np.empty(num_bins)
        for n in range(blk * num // blocks, (blk + 1) * num // blocks):
            s, e = _endpoints(n, start, end, zs, ze, vr)
            ax, k1, k2, i_lo, i_hi, weight, length, t0, dt, u1_0, du1, u2_0, du2 = _setup(s, e, origin, vs, shape)
            n1, n2 = shape[k1], shape[k2]
            sa, s1, s2 = strides[ax], strides[k1], strides[k2]
            lm_centre = (tof_bin[n] - half_k) * bw + off if mode == 2 else 0.0
            for i in range(i_lo, i_hi + 1):
                u1 = u1_0 + i * du1
                u2 = u2_0 + i * du2
                j1 = int(u1 + 1.0) - 1
                j2 = int(u2 + 1.0) - 1
                b1 = u1 - j1
                b2 = u2 - j2
                ok1lo, ok1hi = j1 >= 0, j1 + 1 < n1 and b1 != 0.0
                ok2lo, ok2hi = j2 >= 0, j2 + 1 < n2 and b2 != 0.0
                base = i * sa + j1 * s1 + j2 * s2
                dist = (t0 + i * dt - 0.5) * length
                if mode == 2:
                    w_lm = _tof_weight(dist - lm_centre, bw, scale, reach, table) * weight
                    if w_lm == 0.0:
                        continue
                    k_lo, k_hi = 0, -1
                else:
                    k_lo, k_hi = _tof_weights(dist, tw, num_bins, bw, scale, off, reach, half_k, table)
                    if k_lo > k_hi:
                        continue
                    w_lm = 0.0
                for b in range(nb):
                    if mode == 2:
                        val = values[b, n, 0] * w_lm
                    else:
                        val = 0.0
                        for k in range(k_lo, k_hi + 1):
                            val += values[b, n, k] * tw[k]
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


_NO_TABLE = np.zeros((0, 2))


def _table(dtype: torch.dtype) -> np.ndarray:
    """The erf table for float32 data, none (libm's erf) for float64."""
    return _ERF_TABLE if dtype == torch.float32 else _NO_TABLE


def _mode(geom: Geometry) -> int:
    return 0 if geom.tof is None else (2 if geom.listmode else 1)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _bins(tof_bin: Tensor | None) -> np.ndarray:
    return np.zeros(1, dtype=np.int64) if tof_bin is None else _np(tof_bin)


def _grid(geom: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.array(geom.image_shape, dtype=np.int64), np.array(geom.origin), np.array(geom.voxel_size)


# (start, end, z_start, z_end, vr, num): the kernels' LOR arguments, flat or factored
_LORArgs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]


def _flat(start: Tensor, end: Tensor) -> _LORArgs:
    dummy = np.zeros(1, dtype=np.float64)
    s, e = _np(start), _np(end)
    return s, e, dummy, dummy, 0, s.shape[0]


def _factored(xy_start: Tensor, xy_end: Tensor, z_start: Tensor, z_end: Tensor) -> _LORArgs:
    xs, xe = _np(xy_start).reshape(-1, 2), _np(xy_end).reshape(-1, 2)
    zs, ze = _np(z_start), _np(z_end)
    return xs, xe, zs, ze, xs.shape[0], xs.shape[0] * zs.shape[0]


def _run_forward(image: Tensor, lors: _LORArgs, geom: Geometry, tof_bin: Tensor | None) -> Tensor:
    batch, num = image.shape[0], lors[5]
    mode = _mode(geom)
    out = torch.zeros((batch, num, geom.tof.num_bins if mode == 1 else 1), dtype=image.dtype)
    if num:
        shape, origin, vs = _grid(geom)
        flat = _np(image).reshape(batch, -1)
        if mode == 0:
            _forward_plain(flat, shape, *lors, origin, vs, out.numpy()[:, :, 0])
        else:
            _forward(flat, shape, *lors, origin, vs, out.numpy(), _bins(tof_bin), _tof_array(geom), mode,
                     _table(image.dtype))
    return out if mode == 1 else out[:, :, 0]


def _run_back(values: Tensor, lors: _LORArgs, geom: Geometry, tof_bin: Tensor | None) -> Tensor:
    batch, num = values.shape[0], lors[5]
    mode = _mode(geom)
    image_bytes = batch * math.prod(geom.image_shape) * values.element_size()
    blocks = max(1, min(numba.get_num_threads(), num, _MAX_BUFFER_BYTES // max(1, image_bytes)))
    buf = torch.zeros((blocks, batch, math.prod(geom.image_shape)), dtype=values.dtype)
    if num:
        shape, origin, vs = _grid(geom)
        vals = _np(values)
        if mode == 0:
            _back_plain(vals.reshape(batch, num), shape, *lors, origin, vs, buf.numpy())
        else:
            vals = vals.reshape(batch, num, -1)
            _back(vals, shape, *lors, origin, vs, buf.numpy(), _bins(tof_bin), _tof_array(geom), mode,
                  _table(values.dtype))
    out = buf[0] if blocks == 1 else buf.sum(0)
    return out.reshape(batch, *geom.image_shape)


def forward(image: Tensor, start: Tensor, end: Tensor, geom: Geometry, tof_bin: Tensor | None = None) -> Tensor:
    """Project ``image (B, n0, n1, n2)`` -> ``(B, N)`` or ``(B, N, K)`` (TOF sinogram)."""
    return _run_forward(image, _flat(start, end), geom, tof_bin)


def back(values: Tensor, start: Tensor, end: Tensor, geom: Geometry, tof_bin: Tensor | None = None) -> Tensor:
    """Adjoint of :func:`forward`: values ``(B, N[, K])`` -> image ``(B, n0, n1, n2)``."""
    return _run_back(values, _flat(start, end), geom, tof_bin)


def forward_factored(
    image: Tensor, xy_start: Tensor, xy_end: Tensor, z_start: Tensor, z_end: Tensor, geom: Geometry
) -> Tensor:
    """Project ``image (B, n0, n1, n2)`` along factored sinogram LORs -> ``(B, P Q[, K])``.

    ``xy_start``, ``xy_end``: ``(..., 2)`` mm, ``Q`` rows once flattened; ``z_start``,
    ``z_end``: ``(P,)`` mm (any float dtype; read as float64 in the kernel).
    """
    return _run_forward(image, _factored(xy_start, xy_end, z_start, z_end), geom, None)


def back_factored(
    values: Tensor, xy_start: Tensor, xy_end: Tensor, z_start: Tensor, z_end: Tensor, geom: Geometry
) -> Tensor:
    """Adjoint of :func:`forward_factored`: ``(B, P Q[, K])`` -> ``(B, n0, n1, n2)``."""
    return _run_back(values, _factored(xy_start, xy_end, z_start, z_end), geom, None)
