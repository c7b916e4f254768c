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

Factored non-TOF sinograms with more than one plane go through row kernels
(:func:`_forward_rows`, :func:`_back_rows`): one row ``q`` (view, radial bin) per iteration.
A row's LORs share their in-plane path whenever x or y is their principal axis, so the
row's loop over the principal axis ``i`` computes the in-plane index and weight once and
runs over all planes inside, reading the two z-columns ``(i, j1)`` and ``(i, j1 + 1)``
(z is the image's fastest axis; they stay in cache) instead of fetching each LOR's path
from the whole image. Same samples, same per-sample arithmetic and, per LOR, the same
summation order as the per-LOR kernels: the forward is bit-identical, the backprojection
equal up to summation order. LORs whose principal axis is z take the per-LOR body.

TOF kernels work per LOR in two steps. Forward: the non-TOF samples (the interpolated
image value at each plane) go into a per-thread scratch row once; then, bins outer and
samples inner, each bin within reach sums the samples within its reach times their TOF
weights in a register and stores once. Back projection is the exact transpose: each bin
adds its value times the same weights to a scratch row of samples, then each sample is
spread into the image once. The weight of a sample for a bin (the Gaussian integrated
over the bin) comes for float32 data from one lookup in a cubic Hermite table of that
integral (error ~2e-9, below float32's resolution; two erf per weight otherwise); float64
data use libm's erf, one per bin edge and sample (adjacent bins share an edge).

Called with images ``(B, n0, n1, n2)``, values ``(B, N)`` or ``(B, N, K)``, ``tof_bin``
``(N,)`` int64.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from pet_dl.projector._checks import Geometry

# Backprojection buffers (threads x batch x voxels) are capped at this many bytes.
_MAX_BUFFER_BYTES = 2 << 30

# TOF bin-weight table for float32 data: the Gaussian integrated over one bin,
# w(z) = (erf(z + a) - erf(z - a)) / 2 with z = |distance to the bin centre| / (sqrt(2) sigma),
# a = bin_width / (2 sqrt(2) sigma), as cubic Hermite interpolation on nodes z = j / _W_STEPS
# (stored per interval as the cubic's coefficients). Error <= h^4 / 384 * max |d4w/dz4| ~ 2e-9,
# far below float32's resolution; float64 projections call libm's erf instead.
_W_STEPS = 64


@functools.lru_cache(maxsize=16)
def _weight_table(bin_width: float, sigma: float, num_sigmas: float) -> tuple[np.ndarray, float]:
    """The bin-weight table ``(rows, 4)`` and its scale ``tsc`` (table index per mm of distance).

    Row ``j`` holds ``c0..c3`` with ``w = c0 + t (c1 + t (c2 + t c3))`` at index ``j + t``
    (``0 <= t < 1``), index = distance (mm) x ``tsc``; rows cover the kernel's reach
    (``num_sigmas sigma + bin_width / 2``) and more.
    """
    scale = 1.0 / (math.sqrt(2.0) * sigma)
    a = 0.5 * bin_width * scale
    rows = int(math.ceil((num_sigmas * sigma + 0.5 * bin_width) * scale * _W_STEPS)) + 2
    z = np.arange(rows + 1) / _W_STEPS
    value = 0.5 * np.array([math.erf(v + a) - math.erf(v - a) for v in z])
    slope = (np.exp(-((z + a) ** 2)) - np.exp(-((z - a) ** 2))) / math.sqrt(math.pi) / _W_STEPS  # dw / d index
    v0, v1, m0, m1 = value[:-1], value[1:], slope[:-1], slope[1:]
    coef = np.stack([v0, m0, 3.0 * (v1 - v0) - 2.0 * m0 - m1, 2.0 * (v0 - v1) + m0 + m1], axis=1)
    return np.ascontiguousarray(coef), scale * _W_STEPS


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
def _sample_range(sa, ea, oa, va, na, t0, dt, u1_0, du1, n1, u2_0, du2, n2):  # noqa: ANN001, ANN202
    """The planes ``i_lo .. i_hi`` of the principal axis (ends ``sa``, ``ea`` mm, origin ``oa``,
    voxel ``va``, ``na`` planes) whose sample lies on the segment (``0 <= t <= 1``) and within
    one voxel of the image across it (``-1 < u1 < n1``, ``-1 < u2 < n2``): a conservative range
    from the ends, tightened with the exact tests (empty when ``i_lo > i_hi``)."""
    i_lo = max(0, int(math.floor((min(sa, ea) - oa) / va)) - 1)
    i_hi = min(na - 1, int(math.ceil((max(sa, ea) - oa) / va)) + 1)
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
    return i_lo, i_hi


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
    i_lo, i_hi = _sample_range(s[ax], e[ax], origin[ax], vs[ax], shape[ax], t0, dt, u1_0, du1, shape[k1],
                               u2_0, du2, shape[k2])
    return ax, k1, k2, i_lo, i_hi, vs[ax] * length / abs(dd), length, t0, dt, u1_0, du1, u2_0, du2


# The bilinear read of a sample (and its transpose) is written out in each kernel below:
# one shared inline helper (``_gather`` / ``_scatter``, bit-identical results) was measured
# 4-6 % slower in the forward projections (row kernels 0.63 -> 0.66-0.67 s, per-LOR 1.92-1.98
# -> 2.02-2.05 s on 4 mMR span-11 views at the native grid, 2 threads, old and new alternating
# in one process, 2026-12-06), and without inlining twice as slow.
@njit(cache=True, inline="always")
def _lor_forward(image, out, n, s, e, origin, vs, shape):  # noqa: ANN001, ANN202
    """Non-TOF projection of LOR ``n`` (ends ``s``, ``e``) into ``out[:, n]``: one LOR's
    samples over increasing ``i``, summed in float64 (the body of :func:`_forward_plain`)."""
    nb = image.shape[0]
    strides = (shape[1] * shape[2], shape[2], 1)
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


@njit(cache=True, inline="always")
def _lor_back(values, img, n, s, e, origin, vs, shape):  # noqa: ANN001, ANN202
    """Adjoint of :func:`_lor_forward`: adds ``values[:, n]`` along LOR ``n`` into ``img (B, voxels)``."""
    nb = values.shape[0]
    strides = (shape[1] * shape[2], shape[2], 1)
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
def _forward_plain(image, shape, start, end, zs, ze, vr, num, origin, vs, out):  # noqa: ANN001, ANN202
    """Non-TOF projection of ``image (B, n0 n1 n2)`` (flat) into ``out (B, N)``, one LOR per
    iteration: flat LORs, and factored ones with a single plane."""
    for n in prange(num):
        s, e = _endpoints(n, start, end, zs, ze, vr)
        _lor_forward(image, out, n, s, e, origin, vs, shape)


@njit(parallel=True, cache=True)
def _back_plain(values, shape, start, end, zs, ze, vr, num, origin, vs, buf):  # noqa: ANN001, ANN202
    """Adjoint of :func:`_forward_plain` into ``buf (num_blocks, B, n0 n1 n2)``."""
    blocks = buf.shape[0]
    for blk in prange(blocks):
        img = buf[blk]
        for n in range(blk * num // blocks, (blk + 1) * num // blocks):
            s, e = _endpoints(n, start, end, zs, ze, vr)
            _lor_back(values, img, n, s, e, origin, vs, shape)


@njit(cache=True)
def _row(xs, xe, q, origin, vs, shape):  # noqa: ANN001, ANN202
    """In-plane stepping parameters of the factored LORs of row ``q`` (a view and radial bin).

    The principal axis of LOR ``(p, q)`` is ``x`` or ``y`` for every plane ``p`` whose
    ``|dz|`` is at most ``amax = max(|dx|, |dy|)`` (:func:`_setup`'s tie rules), and then
    :func:`_setup` gives it the same ``ax``, ``dd``, ``t0``, ``dt``, ``u1_0``, ``du1`` and the
    same in-plane tests for all those planes. Returns ``(s, e, d01, amax, ax, k1, dd, t0, dt,
    u1_0, du1, i_lo, i_hi)``: the row's (x, y) ends, ``dx^2 + dy^2``, and the planes ``i``
    whose sample has ``0 <= t <= 1`` and ``-1 < u1 < n1`` (empty when ``i_lo > i_hi``); each
    plane adds its own z test.
    """
    s = (np.float64(xs[q, 0]), np.float64(xs[q, 1]))
    e = (np.float64(xe[q, 0]), np.float64(xe[q, 1]))
    d0, d1 = e[0] - s[0], e[1] - s[1]
    a0, a1 = abs(d0), abs(d1)
    ax, k1 = (0, 1) if a0 >= a1 else (1, 0)
    amax = max(a0, a1)
    dd = e[ax] - s[ax]
    i_lo, i_hi = 0, -1
    t0 = dt = u1_0 = du1 = 0.0
    if amax > 0.0:
        t0 = (origin[ax] - s[ax]) / dd
        dt = vs[ax] / dd
        c1 = (e[k1] - s[k1]) / vs[k1]
        u1_0 = (s[k1] - origin[k1]) / vs[k1] + t0 * c1
        du1 = dt * c1
        # no z test here (u2 = 0 on a one-voxel axis passes): each plane adds its own
        i_lo, i_hi = _sample_range(s[ax], e[ax], origin[ax], vs[ax], shape[ax], t0, dt, u1_0, du1, shape[k1],
                                   0.0, 0.0, 1)
    return s, e, d0 * d0 + d1 * d1, amax, ax, k1, dd, t0, dt, u1_0, du1, i_lo, i_hi


@njit(cache=True)
def _row_planes(zs, ze, zrel, c2, amax, d01, t0, dt, vsa, dd, u2_0, du2, wt, live, axial):  # noqa: ANN001, ANN202
    """Sorts the planes of one row: those stepped along x or y go to ``live[:num_live]``
    with their ``u2_0``, ``du2`` and path per plane ``wt`` (as :func:`_setup` computes them);
    the others (``|dz| > amax``: z is their principal axis) to ``axial[:num_axial]``.
    Returns ``(num_live, num_axial)``."""
    num_live = 0
    num_axial = 0
    for p in range(zs.shape[0]):
        d2 = np.float64(ze[p]) - np.float64(zs[p])
        if abs(d2) > amax:
            axial[num_axial] = p
            num_axial += 1
            continue
        live[num_live] = p
        u2_0[num_live] = zrel[p] + t0 * c2[p]
        du2[num_live] = dt * c2[p]
        wt[num_live] = vsa * math.sqrt(d01 + d2 * d2) / abs(dd)
        num_live += 1
    return num_live, num_axial


@njit(cache=True)
def _plane_terms(zs, ze, origin, vs):  # noqa: ANN001, ANN202
    """Per plane: ``(z_start - origin_z) / vs_z`` and ``dz / vs_z`` (terms of :func:`_setup`'s u2)."""
    zrel = np.empty(zs.shape[0])
    c2 = np.empty(zs.shape[0])
    for p in range(zs.shape[0]):
        z0 = np.float64(zs[p])
        zrel[p] = (z0 - origin[2]) / vs[2]
        c2[p] = (np.float64(ze[p]) - z0) / vs[2]
    return zrel, c2


@njit(parallel=True, cache=True)
def _forward_rows(image, shape, xs, xe, zs, ze, origin, vs, out):  # noqa: ANN001, ANN202
    """Non-TOF projection of ``image (B, n0 n1 n2)`` along factored LORs into ``out (B, P Q)``,
    one row ``q`` (view, radial bin) per iteration: the row's in-plane path (``j1``, ``b1``
    per ``i``) is computed once and each sample reads the two z-columns ``(i, j1)`` and
    ``(i, j1 + 1)`` for all of the row's planes, which stay in cache. Same samples, same
    arithmetic and same per-LOR summation order as :func:`_forward_plain` (bit-identical);
    LORs whose principal axis is z go through :func:`_lor_forward`.
    """
    nb = image.shape[0]
    nq = xs.shape[0]
    npl = zs.shape[0]
    n2 = shape[2]
    zrel, c2 = _plane_terms(zs, ze, origin, vs)
    for q in prange(nq):
        u2_0 = np.empty(npl)
        du2 = np.empty(npl)
        wt = np.empty(npl)
        acc = np.empty(npl)
        live = np.empty(npl, dtype=np.int64)
        axial = np.empty(npl, dtype=np.int64)
        s, e, d01, amax, ax, k1, dd, t0, dt, u1_0, du1, i_lo, i_hi = _row(xs, xe, q, origin, vs, shape)
        num_live, num_axial = _row_planes(zs, ze, zrel, c2, amax, d01, t0, dt, vs[ax], dd, u2_0, du2, wt, live,
                                          axial)
        for m in range(num_axial):
            p = axial[m]
            _lor_forward(image, out, p * nq + q, (s[0], s[1], np.float64(zs[p])),
                         (e[0], e[1], np.float64(ze[p])), origin, vs, shape)
        if num_live == 0:
            continue
        n1 = shape[k1]
        sa = shape[1] * shape[2] if ax == 0 else shape[2]
        s1 = shape[2] if ax == 0 else shape[1] * shape[2]
        for b in range(nb):
            for m in range(num_live):
                acc[m] = 0.0
            for i in range(i_lo, i_hi + 1):
                u1 = u1_0 + i * du1
                j1 = int(u1 + 1.0) - 1  # floor, as u1 > -1 on the row's range
                b1 = u1 - j1
                col = i * sa + j1 * s1
                lo1 = j1 >= 0
                hi1 = j1 + 1 < n1 and b1 != 0.0
                for m in range(num_live):
                    u2 = u2_0[m] + i * du2[m]
                    if not -1.0 < u2 < n2:
                        continue
                    j2 = int(u2 + 1.0) - 1
                    b2 = u2 - j2
                    base = col + j2
                    a = acc[m]
                    if j2 >= 0:
                        v = 0.0
                        if lo1:
                            v += (1.0 - b1) * image[b, base]
                        if hi1:
                            v += b1 * image[b, base + s1]
                        a += (1.0 - b2) * v
                    if j2 + 1 < n2 and b2 != 0.0:
                        v = 0.0
                        if lo1:
                            v += (1.0 - b1) * image[b, base + 1]
                        if hi1:
                            v += b1 * image[b, base + s1 + 1]
                        a += b2 * v
                    acc[m] = a
            for m in range(num_live):
                out[b, live[m] * nq + q] = acc[m] * wt[m]


@njit(parallel=True, cache=True)
def _back_rows(values, shape, xs, xe, zs, ze, origin, vs, buf):  # noqa: ANN001, ANN202
    """Adjoint of :func:`_forward_rows` into ``buf (num_blocks, B, n0 n1 n2)``: each block
    (thread) takes a contiguous range of rows into its own image buffer."""
    nb = values.shape[0]
    nq = xs.shape[0]
    npl = zs.shape[0]
    n2 = shape[2]
    zrel, c2 = _plane_terms(zs, ze, origin, vs)
    blocks = buf.shape[0]
    for blk in prange(blocks):
        img = buf[blk]
        u2_0 = np.empty(npl)
        du2 = np.empty(npl)
        wt = np.empty(npl)
        live = np.empty(npl, dtype=np.int64)
        axial = np.empty(npl, dtype=np.int64)
        pu = np.empty(npl)
        pdu = np.empty(npl)
        pval = np.empty(npl)
        for q in range(blk * nq // blocks, (blk + 1) * nq // blocks):
            s, e, d01, amax, ax, k1, dd, t0, dt, u1_0, du1, i_lo, i_hi = _row(xs, xe, q, origin, vs, shape)
            num_live, num_axial = _row_planes(zs, ze, zrel, c2, amax, d01, t0, dt, vs[ax], dd, u2_0, du2, wt,
                                              live, axial)
            for m in range(num_axial):
                p = axial[m]
                _lor_back(values, img, p * nq + q, (s[0], s[1], np.float64(zs[p])),
                          (e[0], e[1], np.float64(ze[p])), origin, vs, shape)
            if num_live == 0 or i_lo > i_hi:
                continue
            n1 = shape[k1]
            sa = shape[1] * shape[2] if ax == 0 else shape[2]
            s1 = shape[2] if ax == 0 else shape[1] * shape[2]
            for b in range(nb):
                im = img[b]
                num = 0  # the planes with a nonzero value, packed
                for m in range(num_live):
                    val = values[b, live[m] * nq + q] * wt[m]
                    if val != 0.0:
                        pu[num] = u2_0[m]
                        pdu[num] = du2[m]
                        pval[num] = val
                        num += 1
                for i in range(i_lo, i_hi + 1):
                    u1 = u1_0 + i * du1
                    j1 = int(u1 + 1.0) - 1
                    b1 = u1 - j1
                    col = i * sa + j1 * s1
                    lo1 = j1 >= 0
                    hi1 = j1 + 1 < n1 and b1 != 0.0
                    for m in range(num):
                        u2 = pu[m] + i * pdu[m]
                        if not -1.0 < u2 < n2:
                            continue
                        j2 = int(u2 + 1.0) - 1
                        b2 = u2 - j2
                        base = col + j2
                        val = pval[m]
                        if j2 >= 0:
                            v = val * (1.0 - b2)
                            if lo1:
                                im[base] += (1.0 - b1) * v
                            if hi1:
                                im[base + s1] += b1 * v
                        if j2 + 1 < n2 and b2 != 0.0:
                            v = val * b2
                            if lo1:
                                im[base + 1] += (1.0 - b1) * v
                            if hi1:
                                im[base + s1 + 1] += b1 * v


@njit(cache=True, inline="always")
def _bin_weight(diff, hb, scale, tsc, table):  # noqa: ANN001, ANN202
    """Gaussian integrated over a bin whose centre is ``diff`` mm from the sample.

    ``0.5 (erf((diff + hb) scale) - erf((diff - hb) scale))``, ``hb`` the half bin width (mm):
    libm's erf when ``table`` has no rows (float64), else one lookup in the cubic table of
    :func:`_weight_table` at ``|diff| tsc`` (float32; ``|diff|`` within the table's reach).
    """
    if table.shape[0] == 0:
        return 0.5 * (math.erf((diff + hb) * scale) - math.erf((diff - hb) * scale))
    q = abs(diff) * tsc
    j = min(int(q), table.shape[0] - 1)
    t = q - j
    return table[j, 0] + t * (table[j, 1] + t * (table[j, 2] + t * table[j, 3]))


@njit(cache=True, inline="always")
def _fill_weights(wbuf, edge, ia, ib, i_lo, pa, pb, d0, ddl, hb, scale, tsc, table):  # noqa: ANN001, ANN202
    """One bin's weights for planes ``ia..ib`` into ``wbuf[i - i_lo]``; ``d0 + i ddl`` is the
    sample's distance (mm) from the bin centre.

    Without a table (float64): libm's erf at the bin's two edges, the lower one taken from
    ``edge[i - i_lo]`` for planes ``pa..pb`` (the previous bin, ``k - 1``, left its upper edge
    there; pass an empty range otherwise); the upper edge is left in ``edge`` for the next bin.
    """
    if table.shape[0] > 0:
        for i in range(ia, ib + 1):
            wbuf[i - i_lo] = _bin_weight(d0 + i * ddl, hb, scale, tsc, table)
        return
    for i in range(ia, ib + 1):
        d = d0 + i * ddl
        if pa <= i <= pb:
            e_lo = edge[i - i_lo]
        else:
            e_lo = math.erf((d + hb) * scale)
        e_hi = math.erf((d - hb) * scale)
        edge[i - i_lo] = e_hi
        wbuf[i - i_lo] = 0.5 * (e_lo - e_hi)


@njit(cache=True, inline="always")
def _bin_range(c, reach, t0, dt, length, i_lo, i_hi):  # noqa: ANN001, ANN202
    """The planes ``i_lo <= i <= i_hi`` whose sample lies within ``reach`` mm of a bin centre ``c``.

    A sample's signed distance from the LOR midpoint, ``(t0 + i dt - 0.5) length``, is
    monotonic in ``i``, so they are one range ``(ia, ib)`` (empty when ``ia > ib``): a
    conservative estimate tightened with the exact test ``|dist - c| <= reach``.
    """
    dd = dt * length
    d00 = (t0 - 0.5) * length
    lo = (c - reach - d00) / dd
    hi = (c + reach - d00) / dd
    if dd < 0.0:
        lo, hi = hi, lo
    lo = max(float(i_lo), min(float(i_hi + 1), lo))
    hi = max(float(i_lo - 1), min(float(i_hi), hi))
    ia = max(i_lo, int(math.floor(lo)) - 1)
    ib = min(i_hi, int(math.ceil(hi)) + 1)
    while ia <= ib and abs((t0 + ia * dt - 0.5) * length - c) > reach:
        ia += 1
    while ib >= ia and abs((t0 + ib * dt - 0.5) * length - c) > reach:
        ib -= 1
    return ia, ib


@njit(cache=True, inline="always")
def _bins_in_reach(n, t0, dt, length, i_lo, i_hi, num_bins, bw, off, reach, half_k, tof_bin, mode):  # noqa: ANN001, ANN202
    """Bins ``k_first .. k_last`` that may reach a sample of LOR ``n`` (mode 2: its listmode bin)."""
    if mode == 2:
        return tof_bin[n], tof_bin[n]
    d_a = (t0 + i_lo * dt - 0.5) * length
    d_b = (t0 + i_hi * dt - 0.5) * length
    d_min, d_max = min(d_a, d_b), max(d_a, d_b)
    k_first = max(0, int(math.floor((d_min - reach - off) / bw + half_k)))
    k_last = min(num_bins - 1, int(math.ceil((d_max + reach - off) / bw + half_k)))
    return k_first, k_last


@njit(parallel=True, cache=True)
def _forward(image, shape, start, end, zs, ze, vr, num, origin, vs, out, tof_bin, tof, mode, table, tsc):  # noqa: ANN001, ANN202
    """TOF projection of ``image (B, n0 n1 n2)`` (flat) into ``out (B, N, K)`` (zeros on entry).

    ``mode`` 1: TOF sinogram, 2: TOF listmode (``out (B, N, 1)``, bin ``tof_bin[n]``).
    ``tof`` = (num_bins, bin_width, sigma, center_offset, num_sigmas), float64 (5,);
    ``table``: :func:`_weight_table` of ``tof`` scaled by ``tsc`` (float32 data), or an empty
    ``(0, 4)`` array (libm erf). Per LOR, the non-TOF samples (interpolated image values at
    each plane) go into a scratch row once; then each bin in reach sums the samples within
    its reach times their TOF weights and stores once.
    """
    nb = image.shape[0]
    strides = (shape[1] * shape[2], shape[2], 1)
    num_bins = int(tof[0])
    bw, sigma, off = tof[1], tof[2], tof[3]
    reach = tof[4] * sigma + 0.5 * bw
    hb = 0.5 * bw
    scale = 1.0 / (math.sqrt(2.0) * sigma) if sigma > 0 else 0.0
    half_k = 0.5 * (num_bins - 1)
    max_planes = max(shape[0], max(shape[1], shape[2]))
    fused = table.shape[0] > 0 and nb == 1  # one tabulated weight per (bin, sample), no scratch
    for n in prange(num):
        samp = np.empty((nb, max_planes))
        wbuf = np.empty(max_planes)
        edge = np.empty(max_planes)
        s, e = _endpoints(n, start, end, zs, ze, vr)
        ax, k1, k2, i_lo, i_hi, weight, length, t0, dt, u1_0, du1, u2_0, du2 = _setup(s, e, origin, vs, shape)
        if i_lo > i_hi:
            continue
        n1, n2 = shape[k1], shape[k2]
        sa, s1, s2 = strides[ax], strides[k1], strides[k2]
        k_first, k_last = _bins_in_reach(n, t0, dt, length, i_lo, i_hi, num_bins, bw, off, reach, half_k, tof_bin,
                                         mode)
        g_lo, g_hi = i_lo, i_hi
        if mode == 2:  # only the samples within reach of the one bin
            g_lo, g_hi = _bin_range((k_first - half_k) * bw + off, reach, t0, dt, length, i_lo, i_hi)
        for b in range(nb):
            for i in range(g_lo, g_hi + 1):
                u1 = u1_0 + i * du1
                u2 = u2_0 + i * du2
                j1 = int(u1 + 1.0) - 1  # floor, as u > -1 on the clipped range
                j2 = int(u2 + 1.0) - 1
                b1 = u1 - j1
                b2 = u2 - j2
                base = i * sa + j1 * s1 + j2 * s2
                lo1 = j1 >= 0
                hi1 = j1 + 1 < n1 and b1 != 0.0
                acc = 0.0
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
                samp[b, i - i_lo] = acc
        pa, pb = 1, 0  # planes whose edge[] holds the previous bin's upper-edge erf (none yet)
        for k in range(k_first, k_last + 1):
            c = (k - half_k) * bw + off
            ia, ib = _bin_range(c, reach, t0, dt, length, g_lo, g_hi)
            if ia > ib:
                pa, pb = 1, 0
                continue
            col = 0 if mode == 2 else k
            d0 = (t0 - 0.5) * length - c  # distance of plane 0's sample from the bin centre
            ddl = dt * length
            if fused:
                acc = 0.0
                for i in range(ia, ib + 1):
                    acc += samp[0, i - i_lo] * _bin_weight(d0 + i * ddl, hb, scale, tsc, table)
                out[0, n, col] = acc * weight
            else:
                _fill_weights(wbuf, edge, ia, ib, i_lo, pa, pb, d0, ddl, hb, scale, tsc, table)
                pa, pb = ia, ib
                for b in range(nb):
                    acc = 0.0
                    for i in range(ia, ib + 1):
                        acc += samp[b, i - i_lo] * wbuf[i - i_lo]
                    out[b, n, col] = acc * weight


@njit(parallel=True, cache=True)
def _back(values, shape, start, end, zs, ze, vr, num, origin, vs, buf, tof_bin, tof, mode, table, tsc):  # noqa: ANN001, ANN202
    """Adjoint of :func:`_forward` into ``buf (num_blocks, B, n0 n1 n2)`` (summed by the caller).

    The transpose, per LOR: each bin in reach adds its value times the TOF weights to the
    samples within its reach (a scratch row), then each sample is spread into the image once.
    """
    nb = values.shape[0]
    strides = (shape[1] * shape[2], shape[2], 1)
    num_bins = int(tof[0])
    bw, sigma, off = tof[1], tof[2], tof[3]
    reach = tof[4] * sigma + 0.5 * bw
    hb = 0.5 * bw
    scale = 1.0 / (math.sqrt(2.0) * sigma) if sigma > 0 else 0.0
    half_k = 0.5 * (num_bins - 1)
    max_planes = max(shape[0], max(shape[1], shape[2]))
    fused = table.shape[0] > 0 and nb == 1  # one tabulated weight per (bin, sample), no scratch
    blocks = buf.shape[0]
    for blk in prange(blocks):
        img_buf = buf[blk]
        sv = np.empty((nb, max_planes))
        wbuf = np.empty(max_planes)
        edge = np.empty(max_planes)
        for n in range(blk * num // blocks, (blk + 1) * num // blocks):
            s, e = _endpoints(n, start, end, zs, ze, vr)
            ax, k1, k2, i_lo, i_hi, weight, length, t0, dt, u1_0, du1, u2_0, du2 = _setup(s, e, origin, vs, shape)
            if i_lo > i_hi:
                continue
            n1, n2 = shape[k1], shape[k2]
            sa, s1, s2 = strides[ax], strides[k1], strides[k2]
            k_first, k_last = _bins_in_reach(n, t0, dt, length, i_lo, i_hi, num_bins, bw, off, reach, half_k,
                                             tof_bin, mode)
            g_lo, g_hi = i_lo, i_hi
            if mode == 2:
                g_lo, g_hi = _bin_range((k_first - half_k) * bw + off, reach, t0, dt, length, i_lo, i_hi)
            for b in range(nb):
                for i in range(g_lo, g_hi + 1):
                    sv[b, i - i_lo] = 0.0
            pa, pb = 1, 0
            for k in range(k_first, k_last + 1):
                c = (k - half_k) * bw + off
                ia, ib = _bin_range(c, reach, t0, dt, length, g_lo, g_hi)
                if ia > ib:
                    pa, pb = 1, 0
                    continue
                col = 0 if mode == 2 else k
                d0 = (t0 - 0.5) * length - c
                ddl = dt * length
                if fused:
                    v = values[0, n, col]
                    if v == 0.0:
                        continue
                    for i in range(ia, ib + 1):
                        sv[0, i - i_lo] += v * _bin_weight(d0 + i * ddl, hb, scale, tsc, table)
                else:
                    _fill_weights(wbuf, edge, ia, ib, i_lo, pa, pb, d0, ddl, hb, scale, tsc, table)
                    pa, pb = ia, ib
                    for b in range(nb):
                        v = values[b, n, col]
                        if v == 0.0:
                            continue
                        for i in range(ia, ib + 1):
                            sv[b, i - i_lo] += v * wbuf[i - i_lo]
            for b in range(nb):
                img = img_buf[b]
                for i in range(g_lo, g_hi + 1):
                    val = sv[b, i - i_lo] * weight
                    if val == 0.0:
                        continue
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
                            img[base] += (1.0 - b1) * v
                        if hi1:
                            img[base + s1] += b1 * v
                    if j2 + 1 < n2 and b2 != 0.0:
                        v = val * b2
                        if lo1:
                            img[base + s2] += (1.0 - b1) * v
                        if hi1:
                            img[base + s1 + s2] += b1 * v


def _tof_array(geom: Geometry) -> np.ndarray:
    t = geom.tof
    if t is None:
        return np.array([1.0, 1.0, 0.0, 0.0, 0.0])
    return np.array([t.num_bins, t.bin_width, t.sigma, t.center_offset, t.num_sigmas])


_NO_TABLE = np.zeros((0, 4))


def _table(geom: Geometry, dtype: torch.dtype) -> tuple[np.ndarray, float]:
    """The bin-weight table and its scale for float32 data, none (libm's erf) for float64."""
    t = geom.tof
    if t is None or dtype != torch.float32 or not t.sigma > 0:
        return _NO_TABLE, 0.0
    return _weight_table(float(t.bin_width), float(t.sigma), float(t.num_sigmas))


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


def _by_rows(lors: _LORArgs, geom: Geometry) -> bool:
    """Whether a projection takes the row kernels: non-TOF, factored, more than one plane."""
    return geom.tof is None and lors[4] > 0 and lors[2].shape[0] > 1


def _run_forward(image: Tensor, lors: _LORArgs, geom: Geometry, tof_bin: Tensor | None, rows: bool = False) -> Tensor:
    batch, num = image.shape[0], lors[5]
    mode = _mode(geom)
    out = torch.zeros((batch, num, geom.tof.num_bins if mode == 1 else 1), dtype=image.dtype)
    if num:
        shape, origin, vs = _grid(geom)
        flat = _np(image).reshape(batch, -1)
        if mode == 0 and rows:
            _forward_rows(flat, shape, *lors[:4], origin, vs, out.numpy()[:, :, 0])
        elif mode == 0:
            _forward_plain(flat, shape, *lors, origin, vs, out.numpy()[:, :, 0])
        else:
            _forward(flat, shape, *lors, origin, vs, out.numpy(), _bins(tof_bin), _tof_array(geom), mode,
                     *_table(geom, image.dtype))
    return out if mode == 1 else out[:, :, 0]


def _run_back(values: Tensor, lors: _LORArgs, geom: Geometry, tof_bin: Tensor | None, rows: bool = False) -> Tensor:
    batch, num = values.shape[0], lors[5]
    mode = _mode(geom)
    image_bytes = batch * math.prod(geom.image_shape) * values.element_size()
    units = lors[4] if rows and mode == 0 else num  # what the blocks split: rows or LORs
    blocks = max(1, min(numba.get_num_threads(), units, _MAX_BUFFER_BYTES // max(1, image_bytes)))
    buf = torch.zeros((blocks, batch, math.prod(geom.image_shape)), dtype=values.dtype)
    if num:
        shape, origin, vs = _grid(geom)
        vals = _np(values)
        if mode == 0 and rows:
            _back_rows(vals.reshape(batch, num), shape, *lors[:4], origin, vs, buf.numpy())
        elif mode == 0:
            _back_plain(vals.reshape(batch, num), shape, *lors, origin, vs, buf.numpy())
        else:
            vals = vals.reshape(batch, num, -1)
            _back(vals, shape, *lors, origin, vs, buf.numpy(), _bins(tof_bin), _tof_array(geom), mode,
                  *_table(geom, values.dtype))
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
    ``z_end``: ``(P,)`` mm (any float dtype; read as float64 in the kernel). Non-TOF with
    more than one plane: :func:`_forward_rows` (bit-identical to the per-LOR kernel).
    """
    lors = _factored(xy_start, xy_end, z_start, z_end)
    return _run_forward(image, lors, geom, None, rows=_by_rows(lors, geom))


def back_factored(
    values: Tensor, xy_start: Tensor, xy_end: Tensor, z_start: Tensor, z_end: Tensor, geom: Geometry
) -> Tensor:
    """Adjoint of :func:`forward_factored`: ``(B, P Q[, K])`` -> ``(B, n0, n1, n2)``."""
    lors = _factored(xy_start, xy_end, z_start, z_end)
    return _run_back(values, lors, geom, None, rows=_by_rows(lors, geom))


def _forward_factored_per_lor(
    image: Tensor, xy_start: Tensor, xy_end: Tensor, z_start: Tensor, z_end: Tensor, geom: Geometry
) -> Tensor:
    """:func:`forward_factored` through the per-LOR kernel (:func:`_forward_plain`), for tests and benchmarks."""
    return _run_forward(image, _factored(xy_start, xy_end, z_start, z_end), geom, None)


def _back_factored_per_lor(
    values: Tensor, xy_start: Tensor, xy_end: Tensor, z_start: Tensor, z_end: Tensor, geom: Geometry
) -> Tensor:
    """:func:`back_factored` through the per-LOR kernel (:func:`_back_plain`), for tests and benchmarks."""
    return _run_back(values, _factored(xy_start, xy_end, z_start, z_end), geom, None)
