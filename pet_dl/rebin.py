"""Rebinning of a 3D scan to direct planes (single-slice rebinning, SSRB).

A 3D sinogram plane whose LORs join rings ``a`` and ``b`` is added to the direct plane
at their axial midpoint, the ring sum ``a + b``: ``2 N - 1`` planes (``N`` rings) spaced
by half the ring pitch, the direct planes at even sums and the cross planes at odd ones.
Every plane of a span > 1 sinogram holds ring pairs of one ring sum, so a plane moves
as a whole (Daube-Witherspoon and Muehllehner, J Nucl Med 28:1717, 1987).

The data terms move with the counts so that the rebinned scan keeps the forward model
``ybar = c m P(G x) + a`` of :mod:`pet_dl.scan` with the same calibration ``c``:

* prompts and the additive term (randoms + scatter) are summed;
* the multiplicative factors are summed with the weight ``1 / cos(theta)`` of each
  plane's representative LOR (polar angle ``theta`` to the transaxial plane): through
  an object constant along z over the LOR's axial extent the oblique line integral is
  ``P_2D x / cos(theta)``, so ``sum_i c m_i P_i x = c (sum_i m_i / cos(theta_i)) P_2D x``
  exactly there. Axial structure finer than the LOR's axial extent is blurred (SSRB's
  known off-axis axial blur, docs/inference.md).

The rebinned scan is itself a scan of the same scanner on the layout of
:func:`direct_planes_geometry` (span 3, ring differences -1..1: one horizontal LOR per
plane), so its own forward model is the 2D forward model of every plane; optionally
radial bins are cropped (non-arc-corrected bins are crystal pairs, so a bin is the same
LOR at any ``num_radial``) and views mashed (summed) to another 2D layout on the way.
TOF bins are summed first (the rebinned planes are non-TOF).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.nn import functional as F

from pet_dl.errors import GeometryError
from pet_dl.geometry import ImageGeometry, SinogramGeometry
from pet_dl.scan import Scan

__all__ = [
    "direct_planes_geometry",
    "plane_geometry",
    "plane_ring_sums",
    "plane_scan",
    "plane_secants",
    "ssrb",
    "stack_planes",
]


def direct_planes_geometry(
    sinogram: SinogramGeometry, num_radial: int | None = None, view_mashing: int | None = None
) -> SinogramGeometry:
    """The ``2 N - 1`` direct and cross planes of ``sinogram``'s scanner (non-TOF).

    Span 3 with ring differences -1..1: plane ``s`` (ring sum ``s``) sits at
    ``z = (s / 2 - (N - 1) / 2) * ring_spacing`` and its representative LOR is horizontal.

    Args:
        sinogram: the 3D layout (scanner with at least 2 rings).
        num_radial, view_mashing: of the result (default: ``sinogram``'s).
    """
    if sinogram.scanner.num_rings < 2:
        raise GeometryError("rebinning needs a scanner with at least 2 rings")
    return replace(
        sinogram,
        num_radial=sinogram.num_radial if num_radial is None else num_radial,
        view_mashing=sinogram.view_mashing if view_mashing is None else view_mashing,
        span=3,
        max_ring_difference=1,
        tof=False,
    )


def plane_geometry(sinogram: SinogramGeometry) -> SinogramGeometry:
    """The 2D layout (one ring at z = 0) of each plane of a direct-planes ``sinogram``."""
    return replace(sinogram, scanner=sinogram.scanner.with_rings(1), span=1, max_ring_difference=0)


def plane_ring_sums(sinogram: SinogramGeometry) -> torch.Tensor:
    """Ring sum ``a + b`` of every plane (its direct plane after SSRB), int64 ``(P,)``."""
    return torch.tensor([p[0][0] + p[0][1] for p in sinogram.plane_ring_pairs()], dtype=torch.int64)


def plane_secants(sinogram: SinogramGeometry) -> torch.Tensor:
    """``1 / cos(theta)`` of each plane's representative LOR per radial bin, float64 ``(P, R)``.

    ``theta`` is the LOR's angle to the transaxial plane: ``tan(theta) = dz / L`` with
    ``dz`` the axial and ``L`` the transaxial length between its endpoints (the same for
    every view of a radial bin).
    """
    start, end = sinogram.transaxial_endpoints(torch.tensor([0]))
    length = (end[0] - start[0]).norm(dim=-1)  # (R,) mm
    z_start, z_end = sinogram.plane_z()
    dz = (z_end - z_start)[:, None]
    return torch.sqrt(1.0 + (dz / length[None, :]) ** 2)


def radial_window(source: int, target: int) -> tuple[int, int, int]:
    """(first source bin, first target bin, count) of the radial bins that a layout of
    ``source`` bins and one of ``target`` bins share (both centred as everywhere)."""
    # bin r has offset r - n // 2 in both layouts
    lo = max(-(source // 2), -(target // 2))
    hi = min(source - source // 2, target - target // 2)
    return lo + source // 2, lo + target // 2, max(0, hi - lo)


def ssrb(
    scan: Scan,
    num_radial: int | None = None,
    view_mashing: int | None = None,
    chunk_planes: int = 64,
) -> Scan:
    """Single-slice rebinning of a 3D scan to its ``2 N - 1`` direct planes.

    Args:
        scan: a scan on any layout of a scanner with ``N >= 2`` rings (TOF bins summed).
        num_radial: radial bins of the result, centred as everywhere (bins beyond the
            scan's are empty, with zero multiplicative factors); default the scan's.
        view_mashing: of the result, a multiple of the scan's (views summed); default
            the scan's.
        chunk_planes: 3D planes processed at once (bounds the temporary memory).

    Returns:
        A :class:`Scan` on :func:`direct_planes_geometry` (``(2N - 1, V', R')`` float32
        prompts, multiplicative, additive), the same image grid, calibration, PSF and
        metadata: its forward model is the 2D one of every plane (module docstring).
    """
    sino = scan.sinogram
    target = direct_planes_geometry(sino, num_radial, view_mashing)
    if target.view_mashing % sino.view_mashing:
        raise GeometryError(
            f"view_mashing {target.view_mashing} is not a multiple of the scan's {sino.view_mashing}"
        )
    if chunk_planes < 1:
        raise ValueError(f"chunk_planes must be >= 1, got {chunk_planes}")
    f = target.view_mashing // sino.view_mashing
    r_src, r_dst, count = radial_window(sino.num_radial, target.num_radial)
    sums = plane_ring_sums(sino)
    sec = plane_secants(sino)[:, r_src : r_src + count]
    out = {
        name: torch.zeros(target.shape, dtype=torch.float64)
        for name in ("prompts", "multiplicative", "additive")
    }
    for p0 in range(0, sino.num_planes, chunk_planes):
        p1 = min(sino.num_planes, p0 + chunk_planes)
        index = sums[p0:p1]
        for name in out:
            t = getattr(scan, name)[p0:p1]
            if sino.tof:
                t = t.sum(-1)
            t = t[..., r_src : r_src + count].double()
            if name == "multiplicative":
                t = t * sec[p0:p1, None, :]
            t = t.reshape(p1 - p0, target.num_views, f, count).sum(2)
            out[name][..., r_dst : r_dst + count].index_add_(0, index, t)
    return replace(scan, sinogram=target, **{k: v.float() for k, v in out.items()})


def relayout_2d(scan: Scan, num_radial: int, view_mashing: int) -> Scan:
    """A one-ring (2D) scan on another transaxial layout of its scanner.

    The radial bins the two layouts share are kept (centred as everywhere; bins beyond the
    scan's are empty, with zero multiplicative factors), and views are mashed by
    ``view_mashing / scan's``: prompts, additive and multiplicative terms summed over the
    mashed views, as :func:`ssrb` does, so the expected counts of every kept bin stay those
    of the forward model on the new layout. The native mMR 2D scan (252 views x 344 bins)
    becomes the shipped model's 126 x 128 this way.

    Raises:
        GeometryError: the scan has several rings, or ``view_mashing`` is not a multiple of
            the scan's.
    """
    sino = scan.sinogram
    if sino.scanner.num_rings != 1:
        raise GeometryError("relayout_2d needs a one-ring scan (rebin a 3D scan with ssrb)")
    if view_mashing % sino.view_mashing:
        raise GeometryError(f"view_mashing {view_mashing} is not a multiple of the scan's {sino.view_mashing}")
    f = view_mashing // sino.view_mashing
    target = replace(sino, num_radial=num_radial, view_mashing=view_mashing, tof=False)
    r_src, r_dst, count = radial_window(sino.num_radial, num_radial)
    out = {}
    for name in ("prompts", "multiplicative", "additive"):
        t = getattr(scan, name)
        if sino.tof:
            t = t.sum(-1)
        t = t[..., r_src : r_src + count].double()
        t = t.reshape(t.shape[0], target.num_views, f, count).sum(2)
        o = torch.zeros(target.shape, dtype=torch.float64)
        o[..., r_dst : r_dst + count] = t
        out[name] = o.float()
    return replace(scan, sinogram=target, **out)


def plane_scan(rebinned: Scan, planes: slice | int, image: ImageGeometry) -> Scan:
    """Planes of a rebinned scan as 2D scans: one ring at z = 0 on the 2D grid ``image``.

    Args:
        rebinned: a scan on :func:`direct_planes_geometry` (from :func:`ssrb`).
        planes: a plane index (the result is a :class:`Scan` of
            :func:`plane_geometry`, shape ``(1, V, R)``) or a slice (the result's
            tensors are ``(n, V, R)``: a stack of such scans, for batching).
        image: a one-slice grid ``(nx, ny, 1)`` (z origin 0).
    """
    if image.shape[2] != 1:
        raise GeometryError(f"a plane's image grid must have one slice, got {image.shape}")
    sel = slice(planes, planes + 1) if isinstance(planes, int) else planes
    return replace(
        rebinned,
        sinogram=plane_geometry(rebinned.sinogram),
        image=image,
        prompts=rebinned.prompts[sel],
        multiplicative=rebinned.multiplicative[sel],
        additive=rebinned.additive[sel],
    )


def stack_planes(
    planes: torch.Tensor, plane_image: ImageGeometry, plane_z_mm: torch.Tensor, target: ImageGeometry
) -> torch.Tensor:
    """Resample a stack of 2D images at axial positions onto a 3D grid (trilinear).

    Transaxially bilinear on ``plane_image``'s grid (zero outside it), axially linear
    between the planes (uniformly spaced), the end planes extended by half a spacing.

    Args:
        planes: ``(Z, nx, ny)`` images (e.g. Bq/mL) on ``plane_image``'s transaxial grid.
        plane_image: their grid, ``(nx, ny, 1)``.
        plane_z_mm: ``(Z,)`` axial positions, uniformly spaced, increasing, mm.
        target: the output grid.

    Returns:
        ``(nx', ny', nz')`` float32 on ``target``; a copy of the planes when ``target``
        has their transaxial grid and its slices sit on the planes.
    """
    z_count = planes.shape[0]
    if tuple(planes.shape[1:]) != tuple(plane_image.shape[:2]) or plane_z_mm.numel() != z_count:
        raise GeometryError(
            f"planes {tuple(planes.shape)} do not match the grid {plane_image.shape} "
            f"and {plane_z_mm.numel()} positions"
        )

    def normalised(centres: torch.Tensor, first: float, step: float, n: int) -> torch.Tensor:
        index = (centres - first) / step
        return 2.0 * index / (n - 1) - 1.0 if n > 1 else torch.zeros_like(index)

    axes = [torch.as_tensor(target.voxel_centers(k), dtype=torch.float64) for k in range(3)]
    ox, oy, _ = plane_image.origin_mm
    vx, vy, _ = plane_image.voxel_size_mm
    nx, ny = plane_image.shape[:2]
    gx = normalised(axes[0], ox, vx, nx)
    gy = normalised(axes[1], oy, vy, ny)
    z0 = float(plane_z_mm[0])
    dz = float(plane_z_mm[1] - plane_z_mm[0]) if z_count > 1 else 1.0
    zi = (axes[2] - z0) / dz
    inside = (zi >= -0.5) & (zi <= z_count - 0.5)
    zi = zi.clamp(0, z_count - 1)
    gz = 2.0 * zi / (z_count - 1) - 1.0 if z_count > 1 else torch.zeros_like(zi)
    # grid_sample on (1, 1, D=Z, H=nx, W=ny): grid's last axis is (W, H, D) = (y, x, z)
    grid = torch.stack(
        torch.broadcast_tensors(gy[None, None, :], gx[None, :, None], gz[:, None, None]), dim=-1
    )
    vol = planes.to(torch.float64)[None, None]
    out = F.grid_sample(vol, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out[0, 0] * inside[:, None, None]  # (nz', nx', ny')
    return out.permute(1, 2, 0).float().contiguous()
