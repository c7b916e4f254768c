"""Pure-torch reference Joseph projector (vectorised, chunked over LORs).

Slow but simple: every sample point of a chunk of LORs is materialised, so this path is
the ground truth that the numba and Triton kernels are tested against. It works on the
flat tensors that :mod:`pet_dl.projector._checks` produces:

- image ``(B, n0, n1, n2)``, values ``(B, N)`` (non-TOF and listmode) or ``(B, N, K)``
  (TOF sinogram), LOR endpoints ``(N, 3)`` in mm, ``tof_bin`` ``(N,)`` int64.

Algorithm (parallelproj's convention): for each LOR the principal axis ``d`` is the
largest component of ``end - start``; for each image plane ``i`` of axis ``d`` whose
centre lies on the segment, the image is interpolated bilinearly (between voxel
centres, neighbours outside the image count as 0) in the two other axes, and weighted by
``voxel_size[d] * |end - start| / |end_d - start_d|`` (mm of path per plane).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from pet_dl.projector._checks import Geometry, TOFKernel

# Sample points (x 4 corners) materialised at once; bounds memory to ~ a few hundred MB.
_SAMPLES_PER_CHUNK = 1 << 21


def _samples(
    start: Tensor, end: Tensor, geom: Geometry
) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Yield ``(lor_index, voxel_index, weight_mm, signed_distance_mm)``, each ``(M,)``.

    One entry per (LOR, plane, in-image interpolation corner) with a non-zero weight;
    ``signed_distance_mm`` is the sample's distance from the LOR midpoint, positive
    towards ``end``.
    """
    shape = geom.image_shape
    strides = (shape[1] * shape[2], shape[2], 1)
    delta = end - start
    length = torch.linalg.vector_norm(delta, dim=1)
    principal = delta.abs().argmax(dim=1)
    for axis in range(3):
        (lor_ids,) = torch.nonzero(principal == axis, as_tuple=True)
        if lor_ids.numel() == 0:
            continue
        k1, k2 = [k for k in range(3) if k != axis]
        planes = torch.arange(shape[axis], device=start.device, dtype=start.dtype)
        plane_pos = geom.origin[axis] + planes * geom.voxel_size[axis]
        chunk = max(1, _SAMPLES_PER_CHUNK // (4 * shape[axis]))
        for c0 in range(0, lor_ids.numel(), chunk):
            ids = lor_ids[c0 : c0 + chunk]
            s, dl, ln = start[ids], delta[ids], length[ids]
            t = (plane_pos[None, :] - s[:, axis, None]) / dl[:, axis, None]  # (L, P)
            on_segment = (t >= 0) & (t <= 1)
            weight = (geom.voxel_size[axis] * ln / dl[:, axis].abs())[:, None].expand_as(t)
            dist = (t - 0.5) * ln[:, None]
            u1 = (s[:, k1, None] + t * dl[:, k1, None] - geom.origin[k1]) / geom.voxel_size[k1]
            u2 = (s[:, k2, None] + t * dl[:, k2, None] - geom.origin[k2]) / geom.voxel_size[k2]
            f1, f2 = torch.floor(u1), torch.floor(u2)
            a1, a2 = u1 - f1, u2 - f2
            i1, i2 = f1.long(), f2.long()
            plane_idx = torch.arange(shape[axis], device=start.device)[None, :].expand_as(t)
            lor_idx = ids[:, None].expand_as(t)
            for o1, o2, w in (
                (0, 0, (1 - a1) * (1 - a2)),
                (1, 0, a1 * (1 - a2)),
                (0, 1, (1 - a1) * a2),
                (1, 1, a1 * a2),
            ):
                j1, j2 = i1 + o1, i2 + o2
                keep = (
                    on_segment
                    & (j1 >= 0) & (j1 < shape[k1])
                    & (j2 >= 0) & (j2 < shape[k2])
                    & (w > 0)
                )
                vox = plane_idx * strides[axis] + j1 * strides[k1] + j2 * strides[k2]
                yield lor_idx[keep], vox[keep], (weight * w)[keep], dist[keep]


def tof_weights(dist: Tensor, bins: Tensor | None, tof: TOFKernel) -> Tensor:
    """Gaussian TOF kernel integrated over bins.

    Args:
        dist: ``(M,)`` signed distance (mm) of each sample from the LOR midpoint.
        bins: ``(M,)`` int64 bin per sample (listmode), or None for all bins.
        tof: kernel parameters.

    Returns:
        ``(M, K)`` (all bins) or ``(M,)`` (listmode) dimensionless weights; zero where the
        bin lies entirely beyond ``num_sigmas`` sigmas of the sample.
    """
    if bins is None:
        k = torch.arange(tof.num_bins, device=dist.device, dtype=dist.dtype)[None, :]
        diff = dist[:, None] - ((k - (tof.num_bins - 1) / 2) * tof.bin_width + tof.center_offset)
    else:
        centre = (bins.to(dist.dtype) - (tof.num_bins - 1) / 2) * tof.bin_width + tof.center_offset
        diff = dist - centre
    scale = 1.0 / (math.sqrt(2.0) * tof.sigma)
    half = 0.5 * tof.bin_width
    w = 0.5 * (torch.erf((diff + half) * scale) - torch.erf((diff - half) * scale))
    return torch.where(diff.abs() <= tof.num_sigmas * tof.sigma + half, w, torch.zeros_like(w))


def forward(image: Tensor, start: Tensor, end: Tensor, geom: Geometry, tof_bin: Tensor | None = None) -> Tensor:
    """Project ``image (B, n0, n1, n2)`` along LORs ``(N, 3)`` (mm).

    Returns ``(B, N)`` (non-TOF, listmode) or ``(B, N, K)`` (TOF sinogram), image units x mm.
    """
    batch, num = image.shape[0], start.shape[0]
    flat = image.reshape(batch, -1)
    tof = geom.tof
    tof_sino = tof is not None and not geom.listmode
    out_shape = (batch, num, tof.num_bins) if tof_sino else (batch, num)
    out = torch.zeros(out_shape, dtype=image.dtype, device=image.device)
    for lor, vox, w, dist in _samples(start, end, geom):
        vals = flat[:, vox] * w
        if tof is None:
            out.index_add_(1, lor, vals)
        elif geom.listmode:
            out.index_add_(1, lor, vals * tof_weights(dist, tof_bin[lor], tof))
        else:
            out.index_add_(1, lor, vals[:, :, None] * tof_weights(dist, None, tof))
    return out


def back(values: Tensor, start: Tensor, end: Tensor, geom: Geometry, tof_bin: Tensor | None = None) -> Tensor:
    """Adjoint of :func:`forward`: values ``(B, N[, K])`` -> image ``(B, n0, n1, n2)``."""
    batch = values.shape[0]
    n = geom.image_shape[0] * geom.image_shape[1] * geom.image_shape[2]
    out = torch.zeros((batch, n), dtype=values.dtype, device=values.device)
    tof = geom.tof
    for lor, vox, w, dist in _samples(start, end, geom):
        if tof is None:
            vals = values[:, lor] * w
        elif geom.listmode:
            vals = values[:, lor] * (w * tof_weights(dist, tof_bin[lor], tof))
        else:
            vals = (values[:, lor, :] * tof_weights(dist, None, tof)).sum(-1) * w
        out.index_add_(1, vox, vals)
    return out.reshape(batch, *geom.image_shape)
