"""Learned Primal-Dual (Adler & Oktem 2018) adapted to PET's Poisson data.

Primal memory ``u`` (image, ``num_primal`` channels) and dual memory ``h`` (sinogram,
``num_dual`` channels). Each of ``K`` iterations:

- dual: ``h <- h + Gamma_k([h, ybar / s_y, y / s_y, dose])`` where ``ybar`` is the full
  forward model of primal channel 0 (``c m P(G x) + additive``, so the network sees the
  Poisson mean including background) and ``s_y`` is the per-scan mean count;
- primal: ``u <- u + Lambda_k([u, A^T(h_0) / mean(sens), dose])``.

The projections run in float32 outside autocast. The output is ``relu(u_0) * scale``.
TOF sinograms are not supported (the dual CNN works on ``(planes, views, radial)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pet_dl.models.base import ReconNetwork
from pet_dl.models.batch import ReconBatch
from pet_dl.models.blocks import (
    ConvStack,
    dose_channel,
    from_channels,
    to_channels,
)


class LearnedPrimalDual(ReconNetwork):
    """Learned Primal-Dual for PET (Poisson data, additive background), dose-conditioned.

    Args:
        spatial_dims: 2 (images ``(nx, ny, 1)``, sinograms with one plane) or 3.
        num_iterations: unrolled iterations ``K``.
        num_primal, num_dual: memory channels of the primal and dual variables.
        width, depth: size of each per-iteration convolution stack.
        init_iterations, init_subsets: OSEM of the initial image when the batch has none.
        checkpointing: recompute each iteration in the backward pass.
        count_reference: see :class:`~pet_dl.models.base.ReconNetwork` (count-level conditioning).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        num_iterations: int = 6,
        num_primal: int = 4,
        num_dual: int = 4,
        width: int = 32,
        depth: int = 3,
        init_iterations: int = 10,
        init_subsets: int = 1,
        checkpointing: bool = False,
        count_reference: float | None = None,
    ) -> None:
        super().__init__(
            spatial_dims, init_iterations, init_subsets, checkpointing, count_reference
        )
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        self.num_iterations = num_iterations
        self.num_primal = num_primal
        self.num_dual = num_dual
        self.dual_nets = nn.ModuleList(
            ConvStack(spatial_dims, num_dual + 3, num_dual, width, depth)
            for _ in range(num_iterations)
        )
        self.primal_nets = nn.ModuleList(
            ConvStack(spatial_dims, num_primal + 2, num_primal, width, depth)
            for _ in range(num_iterations)
        )

    def _sino_channels(self, s: torch.Tensor) -> torch.Tensor:
        """``(B, planes, views, radial)`` -> ``(B, 1, views, radial)`` (2D) or ``(B, 1, P, V, R)``."""
        if s.dim() != 4:
            raise ValueError(
                f"LearnedPrimalDual needs non-TOF sinograms (B, planes, views, radial), got {tuple(s.shape)}"
            )
        if self.spatial_dims == 2:
            if s.shape[1] != 1:
                raise ValueError(f"a 2D LearnedPrimalDual needs one sinogram plane, got {s.shape[1]}")
            return s[:, :1]
        return s[:, None]

    def _sino_from_channels(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.spatial_dims == 2 else h[:, 0]

    def _iteration(self, k, u, h, y_n, y_scale, scale, sens_mean, dose, model):
        with torch.autocast(device_type=u.device.type, enabled=False):
            x = from_channels(u[:, :1].float(), self.spatial_dims) * scale
            ybar = self._sino_channels(model(x) / y_scale)
        dual_in = torch.cat([h, ybar.to(h.dtype), y_n, dose_channel(dose, h)], dim=1)
        h = h + self.dual_nets[k](dual_in)
        with torch.autocast(device_type=u.device.type, enabled=False):
            back = model.adjoint(self._sino_from_channels(h[:, :1].float())) / sens_mean
            back = to_channels(back, self.spatial_dims)
        primal_in = torch.cat([u, back.to(u.dtype), dose_channel(dose, u)], dim=1)
        u = u + self.primal_nets[k](primal_in)
        return u, h

    def forward(self, batch: ReconBatch) -> torch.Tensor:
        """Reconstruct ``batch``: returns ``(B, nx, ny, nz)`` in Bq/mL."""
        model, prompts, sens, x0, scale, dose = self.start(batch)
        b = batch.batch_size
        with torch.autocast(device_type=prompts.device.type, enabled=False):
            sens_mean = sens.flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            y_scale = prompts.flatten(1).mean(1).clamp_min(1e-3).view(b, *([1] * (prompts.dim() - 1)))
        y_n = self._sino_channels(prompts / y_scale)
        u = to_channels(x0 / scale, self.spatial_dims).repeat(1, self.num_primal, *([1] * self.spatial_dims))
        h = torch.zeros(b, self.num_dual, *y_n.shape[2:], device=u.device, dtype=u.dtype)
        args = (y_n, y_scale, scale, sens_mean, dose, model)
        for k in range(self.num_iterations):
            if self.checkpointing and torch.is_grad_enabled():
                u, h = checkpoint(self._iteration, k, u, h, *args, use_reentrant=False)
            else:
                u, h = self._iteration(k, u, h, *args)
        return F.relu(from_channels(u[:, :1], self.spatial_dims).float()) * scale
