"""Resampling a volume from one image grid onto another (trilinear, box-filtered when shrinking).

Used for CT mu-maps on the PET grid (:mod:`pet_dl.io.ct`) and for phantoms built from
given volumes (:mod:`pet_dl.phantoms.from_image`); a geometry operation, so it sits in the
lowest layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .image import ImageGeometry


def _normalised(world: torch.Tensor, source: ImageGeometry, axis: int) -> torch.Tensor:
    """World coordinates along ``axis`` -> grid_sample coordinates (align_corners=True)."""
    n = source.shape[axis]
    idx = (world - source.origin_mm[axis]) / source.voxel_size_mm[axis]
    if n == 1:  # a single slice is a slab one voxel thick
        return torch.where(idx.abs() <= 0.5, torch.zeros_like(idx), torch.full_like(idx, 3.0))
    return 2.0 * idx / (n - 1) - 1.0


def resample_to_grid(
    volume: torch.Tensor,
    source: ImageGeometry,
    target: ImageGeometry,
    *,
    antialias: bool = True,
) -> torch.Tensor:
    """Trilinear resampling of ``volume`` from the ``source`` grid to the ``target`` grid.

    Both grids are in the same world frame (mm). Points outside the source get 0 (air,
    when resampling mu), blending linearly over the last half voxel. With ``antialias``,
    a box filter as wide as the target voxel is applied first along axes where the target
    voxels are at least twice as large (CT 1 mm -> PET 4 mm), so the result is a local
    average rather than a point sample.

    Args:
        volume: ``(nx, ny, nz)`` on ``source``.
        source, target: grids.

    Returns:
        ``target.shape`` tensor, dtype of ``volume``.
    """
    if tuple(volume.shape) != tuple(source.shape):
        raise ValueError(f"volume shape {tuple(volume.shape)} != source grid {source.shape}")
    x = volume.to(torch.float32 if not torch.is_floating_point(volume) else volume.dtype)
    x = x[None, None]  # (1, 1, nx, ny, nz) = (N, C, D, H, W)
    if antialias:
        kernel = [
            max(1, int(math.floor(target.voxel_size_mm[k] / source.voxel_size_mm[k])))
            if source.shape[k] > 1
            else 1
            for k in range(3)
        ]
        kernel = [k if k >= 2 else 1 for k in kernel]
        if max(kernel) > 1:
            kernel = [k + 1 - k % 2 for k in kernel]  # odd, centred
            x = F.avg_pool3d(
                x, kernel, stride=1, padding=[k // 2 for k in kernel], count_include_pad=False
            )
    axes = [
        torch.as_tensor(target.voxel_centers(k), dtype=x.dtype, device=x.device) for k in range(3)
    ]
    g = [_normalised(axes[k], source, k) for k in range(3)]
    gx, gy, gz = torch.meshgrid(*g, indexing="ij")
    # grid_sample's last dim is (W, H, D) = (z, y, x) for our (x, y, z) tensor
    grid = torch.stack((gz, gy, gx), dim=-1)[None]
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, 0].to(volume.dtype if torch.is_floating_point(volume) else torch.float32)
