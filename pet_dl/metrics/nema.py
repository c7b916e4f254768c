"""NEMA NU 2 image quality of the IEC body phantom: hot-sphere contrast recovery, background variability.

Definitions and the choices NEMA leaves open: ``docs/metrics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

#: Inner diameters of the NEMA NU-2 IEC body phantom spheres, mm.
NEMA_SPHERE_DIAMETERS_MM: tuple[float, ...] = (10.0, 13.0, 17.0, 22.0, 28.0, 37.0)


@dataclass(frozen=True)
class NemaSphereResult:
    """NEMA NU-2 image-quality values for one hot sphere (fractions, not %)."""

    label: int
    diameter_mm: float
    contrast_recovery: float
    background_variability: float


def _disk(shape2d: tuple[int, int], centre: tuple[int, int], radius_mm: float, voxel: Sequence[float]) -> torch.Tensor:
    ix = (torch.arange(shape2d[0], dtype=torch.float64) - centre[0]) * voxel[0]
    iy = (torch.arange(shape2d[1], dtype=torch.float64) - centre[1]) * voxel[1]
    return (ix[:, None] ** 2 + iy[None, :] ** 2) <= radius_mm**2 + 1e-9


def background_roi_centres(
    background: torch.Tensor, slice_index: int, radius_mm: float, voxel_size_mm: Sequence[float], count: int = 12
) -> list[tuple[int, int]]:
    """Centres of up to ``count`` well-spread disks of ``radius_mm`` inside ``background``.

    Candidates are voxels of slice ``slice_index`` whose disk lies wholly in the background;
    the centres are then picked by farthest-point sampling (deterministic).
    """
    plane = background[:, :, slice_index].double()
    half = [int(radius_mm // v) for v in voxel_size_mm[:2]]
    kernel = _disk((2 * half[0] + 1, 2 * half[1] + 1), (half[0], half[1]), radius_mm, voxel_size_mm).double()
    inside = F.conv2d(plane[None, None], kernel[None, None], padding=half)[0, 0]
    candidates = torch.nonzero(inside >= kernel.sum() - 0.5).double()
    if len(candidates) == 0:
        return []
    scale = torch.tensor(voxel_size_mm[:2], dtype=torch.float64)
    pos = candidates * scale
    centroid = pos.mean(0)
    chosen = [int(torch.argmax(((pos - centroid) ** 2).sum(1)))]
    dist = ((pos - pos[chosen[0]]) ** 2).sum(1)
    while len(chosen) < min(count, len(candidates)):
        nxt = int(torch.argmax(dist))
        if float(dist[nxt]) == 0:
            break
        chosen.append(nxt)
        dist = torch.minimum(dist, ((pos - pos[nxt]) ** 2).sum(1))
    return [(int(candidates[i, 0]), int(candidates[i, 1])) for i in chosen]


def nema_regions(phantom: Any) -> tuple[torch.Tensor, torch.Tensor, float, dict[int, float]]:
    """Sphere labels, background mask, activity ratio and diameters of a NEMA phantom.

    Args:
        phantom: a :class:`pet_dl.phantoms.Phantom` from ``nema_phantom`` (``labels``,
            ``tissue``, ``tissues["background"]``, ``lesions``).

    Returns:
        ``(sphere_labels (nx, ny, nz) int, background (nx, ny, nz) bool, activity_ratio,
        {label: diameter_mm})``, ready for :func:`nema_image_quality`.
    """
    if "background" not in phantom.tissues or not phantom.lesions:
        raise ValueError("phantom has no background tissue or no spheres: not a NEMA phantom")
    background = (phantom.tissue == phantom.tissues["background"]) & (phantom.labels == 0)
    ratio = float(phantom.lesions[0].contrast)
    diameters = {int(lesion.label): float(lesion.diameter_mm) for lesion in phantom.lesions}
    return phantom.labels, background, ratio, diameters


def nema_image_quality(
    image: torch.Tensor,
    sphere_labels: torch.Tensor,
    background: torch.Tensor,
    voxel_size_mm: Sequence[float],
    activity_ratio: float = 4.0,
    sphere_diameters_mm: dict[int, float] | None = None,
    num_background_rois: int = 12,
    margin_mm: float = 15.0,
) -> list[NemaSphereResult]:
    """NEMA NU-2 contrast recovery and background variability of hot spheres.

    For hot sphere ``j``: ``CR_j = (C_H,j / C_B,j - 1) / (activity_ratio - 1)`` and
    ``BV_j = SD_j / C_B,j``. ``C_H,j`` is the mean over the sphere's voxels on its central
    slice (the slice where it is largest). Background ROIs are disks of the sphere's
    diameter at ``num_background_rois`` well-spread positions inside ``background`` (at
    least ``margin_mm`` from its edge where possible) on the
    central slice of the spheres and, in 3D, on the slices 10 and 20 mm above and below;
    ``C_B,j`` is their mean and ``SD_j`` the sample standard deviation of their means.

    Args:
        image: ``(nx, ny, nz)`` reconstruction of the IEC phantom, Bq/mL.
        sphere_labels: ``(nx, ny, nz)`` int, 0 = none, ``k`` = hot sphere ``k``.
        background: ``(nx, ny, nz)`` bool, the warm background compartment (no spheres,
            no lung insert).
        voxel_size_mm: voxel size, mm.
        activity_ratio: true sphere-to-background activity ratio (NEMA: 4).
        sphere_diameters_mm: diameter of each label, mm; default: from the label's
            volume (equivalent sphere, or disk in a single-slice image).
        num_background_rois: background ROIs per slice (NEMA: 12).
        margin_mm: least distance from a background ROI of the largest sphere's size to
            the edge of ``background`` (NEMA: 15 mm); halved, then 0, when fewer than
            ``num_background_rois`` positions fit.

    Returns:
        One :class:`NemaSphereResult` per sphere label, increasing label order.
    """
    if image.ndim != 3 or sphere_labels.shape != image.shape or background.shape != image.shape:
        raise ValueError("image, sphere_labels and background must all be (nx, ny, nz) of one shape")
    if not activity_ratio > 1:
        raise ValueError(f"activity_ratio must be > 1, got {activity_ratio}")
    x = image.detach().double()
    background = background.bool().cpu()
    sphere_labels = sphere_labels.cpu()
    x = x.cpu()
    labels = sorted(int(v) for v in torch.unique(sphere_labels) if int(v) != 0)
    if not labels:
        raise ValueError("sphere_labels has no sphere (all zero)")
    nz = image.shape[2]
    areas = torch.stack([(sphere_labels == k).sum(dim=(0, 1)) for k in labels]).sum(0)
    centre_slice = int(torch.argmax(areas))
    slices = [centre_slice]
    for off_mm in (-20.0, -10.0, 10.0, 20.0):
        s = centre_slice + round(off_mm / voxel_size_mm[2])
        if nz > 1 and 0 <= s < nz and s not in slices:
            slices.append(s)
    diameters = {}
    for k in labels:
        n = float((sphere_labels == k).sum())
        if sphere_diameters_mm and k in sphere_diameters_mm:
            diameters[k] = float(sphere_diameters_mm[k])
        elif nz == 1:
            diameters[k] = 2 * math.sqrt(n * voxel_size_mm[0] * voxel_size_mm[1] / math.pi)
        else:
            diameters[k] = 2 * (3 * n * math.prod(voxel_size_mm) / (4 * math.pi)) ** (1 / 3)
    largest = max(diameters.values()) / 2
    centres: list[tuple[int, int]] = []
    for margin in (margin_mm, margin_mm / 2, 0.0):  # NEMA's 15 mm, less if it cannot fit
        centres = background_roi_centres(
            background, centre_slice, largest + margin, voxel_size_mm, num_background_rois
        )
        if len(centres) >= num_background_rois:
            break
    if len(centres) < 2:
        raise ValueError("the background is too small for NEMA background ROIs of the largest sphere")
    results = []
    for k in labels:
        m = sphere_labels == k
        sl = int(torch.argmax(m.sum(dim=(0, 1))))
        hot = float(x[:, :, sl][m[:, :, sl]].mean())
        radius = diameters[k] / 2
        roi_means = []
        for s in slices:
            for c in centres:
                disk = _disk(tuple(x.shape[:2]), c, radius, voxel_size_mm)
                if bool((background[:, :, s] | ~disk).all()):
                    roi_means.append(x[:, :, s][disk].mean())
        means = torch.stack(roi_means)
        c_b = float(means.mean())
        if c_b <= 0:
            raise ValueError("background mean is <= 0: cannot compute contrast recovery")
        results.append(
            NemaSphereResult(
                label=k,
                diameter_mm=diameters[k],
                contrast_recovery=(hot / c_b - 1.0) / (activity_ratio - 1.0),
                background_variability=float(means.std(unbiased=True)) / c_b,
            )
        )
    return results
