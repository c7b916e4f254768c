"""Reconstruct a :class:`pet_dl.scan.Scan` with a classical algorithm, in Bq/mL."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from pet_dl.recon.em import osem
from pet_dl.recon.filters import gaussian_postfilter
from pet_dl.recon.map import map_rdp

if TYPE_CHECKING:
    from pet_dl.scan import Scan

ALGORITHMS: tuple[str, ...] = ("mlem", "osem", "map")


def reconstruct_classical(
    scan: Scan,
    algorithm: str = "osem",
    num_iterations: int = 4,
    num_subsets: int = 12,
    beta: float = 0.0,
    gamma: float = 2.0,
    postfilter_fwhm_mm: float = 0.0,
    progress: bool = False,
    device: torch.device | str | None = None,
    sensitivity_cache: str | os.PathLike[str] | None = None,
) -> torch.Tensor:
    """Reconstruct a scan on its own image grid.

    The scan's forward model includes the calibration (counts per Bq/mL x mm) and, for a
    thinned low-dose scan, the dose fraction, so the image is in Bq/mL as it stands.

    Args:
        scan: the scan (prompts, multiplicative and additive terms, geometry).
        algorithm: ``"mlem"``, ``"osem"`` or ``"map"`` (MAP-EM with the relative
            difference prior, see :func:`pet_dl.recon.map_rdp`).
        num_iterations: full iterations.
        num_subsets: view subsets for ``"osem"`` and ``"map"`` (ignored by ``"mlem"``); must
            divide into the number of views at least once (``num_subsets <= num_views``).
        beta: prior strength for ``"map"`` (counts per Bq/mL), >= 0.
        gamma: RDP edge-preservation parameter for ``"map"``.
        postfilter_fwhm_mm: Gaussian post-filter FWHM in mm (0: none).
        progress: show a progress bar.
        device: where to compute (default: CPU).
        sensitivity_cache: directory of cached subset sensitivity images, keyed by
            geometry, normalisation and attenuation (:mod:`pet_dl.recon.sensitivity`);
            a later run on the same scanner setup and attenuation reads them instead of
            backprojecting. None: not kept (large 3D images on disk in a temporary folder
            while it runs, see :func:`pet_dl.recon.osem`).

    Returns:
        ``(nx, ny, nz)`` float32 image in Bq/mL on ``scan.image`` (on the CPU).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 1:
        raise ValueError(f"num_iterations must be a positive int, got {num_iterations!r}")
    if isinstance(num_subsets, bool) or not isinstance(num_subsets, int) or num_subsets < 1:
        raise ValueError(f"num_subsets must be a positive int, got {num_subsets!r}")
    num_views = scan.sinogram.num_views
    if algorithm != "mlem" and num_subsets > num_views:
        raise ValueError(f"num_subsets ({num_subsets}) cannot exceed the number of views ({num_views})")
    if algorithm != "map" and beta != 0:
        raise ValueError(f"beta is only used by algorithm 'map' (got beta={beta} with {algorithm!r})")
    model = scan.forward_model(device)
    y = scan.prompts.to(device=device, dtype=torch.float32)
    with torch.no_grad():
        if algorithm == "mlem":
            x = osem(model, y, num_iterations, 1, progress=progress, sensitivity_cache=sensitivity_cache)
        elif algorithm == "osem":
            x = osem(model, y, num_iterations, num_subsets, progress=progress, sensitivity_cache=sensitivity_cache)
        else:
            x = map_rdp(
                model, y, beta, gamma=gamma, num_iterations=num_iterations, num_subsets=num_subsets,
                voxel_size_mm=scan.image.voxel_size_mm, progress=progress,
                sensitivity_cache=sensitivity_cache,
            )
        if postfilter_fwhm_mm:
            x = gaussian_postfilter(x, scan.image, postfilter_fwhm_mm)
    return x.to(device="cpu", dtype=torch.float32)
