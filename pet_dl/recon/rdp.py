"""The relative difference prior (Nuyts et al. 2002): value, gradient and Hessian diagonal.

    R(x) = sum over unordered neighbour pairs {j, k} of
           w_jk * (x_j - x_k)^2 / (x_j + x_k + gamma * |x_j - x_k| + eps)

Neighbourhood: the 26 nearest voxels in 3D (the 8 in-plane ones when ``nz == 1``), with
weights ``w_jk = min(voxel_size) / distance_jk`` (face neighbours along the smallest voxel
edge weigh 1). ``x`` is in Bq/mL, so ``R`` is in Bq/mL; ``eps`` (Bq/mL) keeps the
potential smooth at ``x = 0``.

Per-pair derivatives (``d = x_j - x_k``, ``D = x_j + x_k + gamma |d| + eps``), as in STIR:

    d phi / d x_j     = d * (x_j + 3 x_k + gamma |d| + 2 eps) / D^2
    d2 phi / d x_j^2  = 2 * (2 x_k + eps)^2 / D^3
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import torch


def _offsets(nz: int) -> list[tuple[int, int, int]]:
    """Half of the neighbour offsets (one of each +/- pair), in voxels."""
    dz_range = (-1, 0, 1) if nz > 1 else (0,)
    half = []
    for o in itertools.product((-1, 0, 1), (-1, 0, 1), dz_range):
        if o > (0, 0, 0):  # lexicographic: keeps exactly one of o and -o
            half.append(o)
    return half


def _pairs(
    shape: Sequence[int], voxel_size_mm: Sequence[float]
) -> Iterator[tuple[tuple[slice, ...], tuple[slice, ...], float]]:
    """Yields ``(slices_j, slices_k, weight)`` for each half-neighbourhood offset."""
    vmin = min(voxel_size_mm)
    for o in _offsets(shape[2]):
        dist = math.sqrt(sum((oi * vi) ** 2 for oi, vi in zip(o, voxel_size_mm)))
        sl_j = tuple(slice(max(0, -oi), n - max(0, oi)) for oi, n in zip(o, shape))
        sl_k = tuple(slice(max(0, oi), n - max(0, -oi)) for oi, n in zip(o, shape))
        yield (Ellipsis, *sl_j), (Ellipsis, *sl_k), vmin / dist


def _check(x: torch.Tensor, gamma: float, eps: float, voxel_size_mm: Sequence[float]) -> None:
    if x.ndim < 3:
        raise ValueError(f"image must be (*batch, nx, ny, nz), got shape {tuple(x.shape)}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0 (Bq/mL), got {eps}")
    if len(voxel_size_mm) != 3 or min(voxel_size_mm) <= 0:
        raise ValueError(f"voxel_size_mm must be 3 positive values, got {voxel_size_mm}")


def rdp_value(
    x: torch.Tensor,
    gamma: float = 2.0,
    eps: float = 1e-3,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """The RDP value ``R(x)``.

    Args:
        x: image ``(*batch, nx, ny, nz)``, Bq/mL, non-negative.
        gamma: edge-preservation parameter (0: close to quadratic for small differences).
        eps: smoothing constant, Bq/mL, > 0.
        voxel_size_mm: voxel size (for neighbour weights), mm.

    Returns:
        ``(*batch)`` prior values, Bq/mL.
    """
    _check(x, gamma, eps, voxel_size_mm)
    total = x.new_zeros(x.shape[:-3])
    for sl_j, sl_k, w in _pairs(x.shape[-3:], voxel_size_mm):
        a, b = x[sl_j], x[sl_k]
        d = a - b
        phi = d * d / (a + b + gamma * d.abs() + eps)
        total = total + w * phi.sum(dim=(-3, -2, -1))
    return total


def rdp_gradient_and_curvature(
    x: torch.Tensor,
    gamma: float = 2.0,
    eps: float = 1e-3,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``R`` and the diagonal of its Hessian at ``x``.

    Args:
        x: image ``(*batch, nx, ny, nz)``, Bq/mL, non-negative.
        gamma, eps, voxel_size_mm: as in :func:`rdp_value`.

    Returns:
        ``(gradient, curvature)``, both shaped like ``x``: ``dR/dx_j`` (dimensionless)
        and ``d2R/dx_j^2`` (per Bq/mL), the latter non-negative.
    """
    _check(x, gamma, eps, voxel_size_mm)
    grad = torch.zeros_like(x)
    curv = torch.zeros_like(x)
    for sl_j, sl_k, w in _pairs(x.shape[-3:], voxel_size_mm):
        a, b = x[sl_j], x[sl_k]
        d = a - b
        denom = a + b + gamma * d.abs() + eps
        inv2 = 1.0 / (denom * denom)
        # derivative with respect to a (the j side) and to b (the k side: d -> -d, a <-> b)
        grad[sl_j] += w * d * (a + 3 * b + gamma * d.abs() + 2 * eps) * inv2
        grad[sl_k] -= w * d * (b + 3 * a + gamma * d.abs() + 2 * eps) * inv2
        inv3 = inv2 / denom
        curv[sl_j] += w * 2 * (2 * b + eps) ** 2 * inv3
        curv[sl_k] += w * 2 * (2 * a + eps) ** 2 * inv3
    return grad, curv
