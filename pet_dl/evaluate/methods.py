"""The reconstructions compared: OSEM (every iteration), MAP-RDP and learned models.

Each takes a :class:`pet_dl.models.ReconBatch` of ``B`` scans (from
:meth:`pet_dl.evaluate.EvalSet.batch`) and returns images ``(B, nx, ny, nz)`` in Bq/mL;
the iterations themselves are :func:`pet_dl.recon.osem` and :func:`pet_dl.recon.map_rdp`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from pet_dl.models import ReconBatch


@torch.no_grad()
def osem_trajectory(batch: ReconBatch, max_iterations: int, subsets: int) -> list[torch.Tensor]:
    """OSEM images after 1 .. ``max_iterations`` full iterations (uniform start).

    Args:
        batch: ``B`` scans.
        max_iterations: iterations to run (>= 1).
        subsets: view subsets.

    Returns:
        ``max_iterations`` images ``(B, nx, ny, nz)``, Bq/mL; entry ``k`` after ``k + 1``.

    Raises:
        ValueError: ``max_iterations < 1``.
    """
    from pet_dl.recon import osem

    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    images: list[torch.Tensor] = []
    osem(batch.forward_model(), batch.prompts.float(), max_iterations, subsets,
         callback=lambda _, x: images.append(x))
    return images


@torch.no_grad()
def map_reconstruction(
    batch: ReconBatch, beta_rel: float, iterations: int, subsets: int, gamma: float = 2.0
) -> torch.Tensor:
    """MAP-RDP of every scan in ``batch`` with ``beta = beta_rel * calibration``.

    The log-likelihood scales with the counts, i.e. with the calibration (counts per
    Bq/mL x mm, proportional to dose and scan time), so one ``beta_rel`` (mm) keeps the
    same balance at every dose level and scanner sensitivity.

    Args:
        batch: ``B`` scans of one calibration (one count level).
        beta_rel: prior weight relative to the calibration, mm.
        iterations, subsets: :func:`pet_dl.recon.map_rdp` iterations and view subsets.
        gamma: RDP edge-preservation parameter.

    Returns:
        ``(B, nx, ny, nz)`` Bq/mL.

    Raises:
        ValueError: the scans of ``batch`` have different calibrations.
    """
    from pet_dl.recon import map_rdp

    cal = batch.calibration.double()
    if not bool(torch.allclose(cal, cal[0].expand_as(cal), rtol=1e-6)):
        raise ValueError("map_reconstruction needs one calibration (count level) per batch")
    beta = float(beta_rel) * float(cal[0])
    return map_rdp(
        batch.forward_model(), batch.prompts.float(), beta, gamma=gamma,
        num_iterations=iterations, num_subsets=subsets,
        voxel_size_mm=batch.image.voxel_size_mm,
    )


@torch.no_grad()
def network_reconstruction(model: nn.Module, batch: ReconBatch, chunk: int = 8) -> torch.Tensor:
    """Run a learned model (``model(ReconBatch) -> images``) on ``batch``, ``chunk`` scans at a time.

    Returns:
        ``(B, nx, ny, nz)`` float32, Bq/mL.
    """
    model.eval()
    outs = []
    for i in range(0, batch.batch_size, chunk):
        sl = slice(i, i + chunk)
        part = replace(
            batch, prompts=batch.prompts[sl], multiplicative=batch.multiplicative[sl],
            additive=batch.additive[sl], calibration=batch.calibration[sl],
            dose_fraction=batch.dose_fraction[sl],
            initial=None if batch.initial is None else batch.initial[sl],
        )
        outs.append(model(part).float())
    return torch.cat(outs)
