"""MAP reconstruction with the relative difference prior: De Pierro's modified EM.

Objective (maximised): ``L(y | x) - beta * R(x)`` with ``L`` the Poisson log-likelihood
(counts) and ``R`` the relative difference prior (:mod:`pet_dl.recon.rdp`, Bq/mL).

Each (sub-)iteration minimises, voxel by voxel, a separable surrogate: the EM surrogate
of the negative log-likelihood (``s_j x_j - s_j x^EM_j log x_j``) plus a quadratic
surrogate of the prior around the current image with gradient ``g_j`` and curvature
``2 * H_jj`` (the factor 2 is De Pierro's decoupling of the pairwise terms). Setting the
derivative to zero gives ``a x^2 + b x - c = 0`` with

    a = beta' * 2 H_jj,   b = s_j + beta' * g_j - a * x_j,   c = s_j * x^EM_j >= 0,

whose non-negative root is the update, so the image stays non-negative without any
clipping (``beta' = beta / num_subsets`` spreads the prior over the subsets). With
``beta = 0`` the update is exactly the (OS)EM update. With subsets the algorithm is not
guaranteed to converge (as for OSEM); use ``num_subsets=1`` for a monotone-in-practice
MAP estimate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from pet_dl.recon.em import OrderedSubsets, _check_data, _check_iterations, _initial, em_ratio
from pet_dl.recon.rdp import rdp_gradient_and_curvature

if TYPE_CHECKING:
    from pet_dl.forward_model import PETForwardModel


def _positive_root(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The non-negative root of ``a x^2 + b x - c = 0`` for ``a, c >= 0`` (stable forms)."""
    disc = torch.sqrt(b * b + 4 * a * c)
    denom_pos = b + disc  # used when b > 0: x = 2c / (b + sqrt(.))
    safe_pos = torch.where(denom_pos > 0, denom_pos, torch.ones_like(denom_pos))
    root_pos = torch.where(denom_pos > 0, 2 * c / safe_pos, torch.zeros_like(c))
    safe_a = torch.where(a > 0, a, torch.ones_like(a))
    root_neg = torch.where(a > 0, (disc - b) / (2 * safe_a), torch.zeros_like(c))
    return torch.where(b > 0, root_pos, root_neg)


def map_rdp(
    model: PETForwardModel,
    y: torch.Tensor,
    beta: float,
    gamma: float = 2.0,
    num_iterations: int = 10,
    num_subsets: int = 1,
    eps: float | None = None,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    x0: torch.Tensor | None = None,
    progress: bool = False,
    sensitivity_cache: str | os.PathLike[str] | None = None,
) -> torch.Tensor:
    """MAP-EM with the relative difference prior (De Pierro's modified EM, ordered subsets).

    Args:
        model: forward model of the scan.
        y: measured counts ``(*batch, *sino)``, non-negative.
        beta: prior strength, >= 0 (counts per Bq/mL; scales with the count level: a
            scan with 1/20 of the counts needs about 1/20 of the beta for the same
            balance). 0 gives OSEM.
        gamma: RDP edge-preservation parameter, >= 0.
        num_iterations: full iterations (each visits every subset).
        num_subsets: number of view subsets.
        eps: RDP smoothing constant in Bq/mL; default ``1e-3`` times the mean of the
            start image.
        voxel_size_mm: voxel size, for the neighbour weights.
        x0: start image ``(*batch, nx, ny, nz)`` Bq/mL; default: uniform, matched to counts.
        progress: show a tqdm progress bar.
        sensitivity_cache: directory of cached subset sensitivities (see
            :func:`pet_dl.recon.osem`); None: not kept after the call (3D: on disk in a
            temporary folder while it runs).

    Returns:
        ``(*batch, nx, ny, nz)`` image in Bq/mL, non-negative.
    """
    if not beta >= 0 or beta != beta:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    _check_iterations(num_iterations, num_subsets)
    _check_data(y)
    with OrderedSubsets.of_scan(model, y, num_subsets, cache_dir=sensitivity_cache) as subsets:
        total_sens = subsets.total_sensitivity
        x = _initial(x0, model, y, total_sens)
        if eps is None:
            eps = 1e-3 * float(x.mean()) if float(x.mean()) > 0 else 1e-6
        if eps <= 0:
            raise ValueError(f"eps must be > 0 (Bq/mL), got {eps}")
        beta_sub = beta / num_subsets
        with tqdm(
            total=num_iterations * num_subsets, desc="MAP-RDP", unit="update",
            disable=not progress, leave=False,
        ) as bar:
            for _ in range(num_iterations):
                for sub_model, sub_y, s in zip(subsets.models, subsets.data, subsets.sensitivities):
                    c = x * sub_model.adjoint(em_ratio(sub_y, sub_model(x)))  # = s * x_EM
                    if beta_sub > 0:
                        g, h = rdp_gradient_and_curvature(x, gamma, eps, voxel_size_mm)
                        a = beta_sub * 2 * h
                        b = s + beta_sub * g - a * x
                        x_new = _positive_root(a, b, c)
                    else:
                        safe_s = torch.where(s > 0, s, torch.ones_like(s))
                        x_new = c / safe_s
                    # Voxels no LOR of this subset sees keep their value (0 if no LOR sees them).
                    x = torch.where(s > 0, x_new, torch.where(total_sens > 0, x, torch.zeros_like(x)))
                    bar.update(1)
    return x
