"""FBSEM-style unrolled EM network (Mehranian & Reader, IEEE TRPMS 2021).

Each of ``K`` iterations runs

1. an EM data step ``x_em = em_update(x)`` through the scan's forward model
   (:func:`pet_dl.recon.em_update`, the same code as MLEM/OSEM), or one OSEM pass over
   ``data_subsets`` view subsets (as many EM updates for the projection cost of one), in
   float32 even under mixed precision; gradients flow through the projector's exact
   adjoint;
2. a CNN regulariser ``x_reg = x + CNN([x / s, dose])`` (MONAI UNet, dose-conditioned);
3. the closed-form fusion of the two (maximiser of the EM surrogate plus a quadratic
   penalty ``beta_k / 2 |x - x_reg|^2``)::

       x_new = 2 x_em / (1 - b x_reg + sqrt((1 - b x_reg)^2 + 4 b x_em)),
       b = beta_k * mean(sens) / (sens * scale)

   with a learned weight ``beta_k = softplus(fusion_weight[k] + fusion_dose_slope[k] * d)``
   (``d`` the dose code). Everything is done in units of the per-scan scale, so
   ``beta_k`` is dimensionless and independent of the count level.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pet_dl.models.anchor import LowFrequencyAnchor, OSEMBlend
from pet_dl.models.base import ReconNetwork
from pet_dl.models.batch import ReconBatch
from pet_dl.models.blocks import (
    PaddedUNet,
    dose_channel,
    from_channels,
    to_channels,
)
from pet_dl.recon import OrderedSubsets, em_update


def fbsem_fusion(
    x_em: torch.Tensor, x_reg: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Closed-form fusion of an EM image and a regularised image (FBSEM).

    Maximises ``sum_j s_j (x_em_j log x_j - x_j) - beta/2 (x_j - x_reg_j)^2`` per voxel,
    written with ``weight = beta / s`` (any unit as long as ``weight * x`` is
    dimensionless).

    Args:
        x_em: EM image ``(B, nx, ny, nz)``, non-negative.
        x_reg: regularised image, same shape (any sign).
        weight: ``beta / s``, broadcastable to the image, non-negative.

    Returns:
        the fused image, same shape, non-negative; ``x_em`` where ``weight`` is 0.
    """
    a = 1.0 - weight * x_reg
    x_em = x_em.clamp_min(0)
    root = torch.sqrt(a * a + 4.0 * weight * x_em + 1e-30)
    # a >= 0: 2 x_em / (a + root); a < 0 (then weight > 0): the equal (root - a) / (2 w),
    # which has no cancellation. Safe operands keep the unused branch finite for autograd.
    neg = a < 0
    w_safe = torch.where(neg, weight, torch.ones_like(weight))
    d_safe = torch.where(neg, torch.ones_like(a), a + root)
    return torch.where(neg, (root - a) / (2.0 * w_safe), 2.0 * x_em / d_safe.clamp_min(1e-30))


class UnrolledEM(ReconNetwork):
    """Unrolled EM with a dose-conditioned CNN regulariser and learned fusion (FBSEM).

    Args:
        spatial_dims: 2 (images ``(nx, ny, 1)``) or 3.
        num_iterations: number of unrolled iterations ``K``.
        channels, strides, num_res_units: MONAI UNet of the regulariser.
        share_weights: one CNN for all iterations (FBSEM) or one per iteration.
        init_iterations, init_subsets: OSEM of the initial image when the batch has none.
        initial_fusion_weight: starting value of ``softplus^-1(beta_k)``.
        checkpointing: recompute each iteration in the backward pass (saves memory).
        count_reference: see :class:`~pet_dl.models.base.ReconNetwork` (count-level conditioning).
        data_subsets: view subsets of each iteration's data step: 1 is one MLEM update
            (FBSEM), ``S > 1`` one OSEM pass of ``S`` updates (faster data fidelity for
            the same projections). The parameters do not depend on it, so a network can
            be fine-tuned with another value.
        norm: normalisation layers of the UNet (MONAI name: ``"instance"``, ``"batch"``,
            or ``None`` for none). Instance norm removes each feature map's mean (the
            constant dose channel reaches the UNet through its residual shortcuts), but
            without it the 32-64-128 UNet did not train at lr 2e-3 (docs/results.md,
            "Experiment v4").
        anchor: ``{"sigma_voxels", "osem", "subsets"}`` of a
            :class:`~pet_dl.models.anchor.LowFrequencyAnchor` applied to the output in eval
            mode (no parameter depends on it), or None.
        anchor_in_training: apply the anchor in training mode as well, so that the loss
            sees the anchored image and the network learns only the content above the
            anchor's scale (the gradient reaches it through ``I - G_s``). Each step then
            also runs the anchor's OSEM (up to its row's iterations, continued from the
            initial image). Needs ``anchor``.
        final_em_steps: plain MLEM updates on the scan's counts (one subset, the exact
            adjoint) after the last iteration and the anchor, from the image with negative
            voxels set to zero, in training and in eval mode alike: the output ends on a
            pure data step instead of the fusion's compromise with the regulariser. No
            parameter depends on it. 0 (the default) is none.
        osem_blend: ``{"rows": [[factor, iterations, fwhm_mm, weight], ...], "subsets"}`` of
            an :class:`~pet_dl.models.anchor.OSEMBlend`: in eval mode the output (after the
            anchor and the final EM updates) is mixed with OSEM of the same scan,
            ``(1 - w) x + w o``, at the row of the scan's measured count level; or None.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        num_iterations: int = 6,
        channels: tuple[int, ...] = (16, 32, 64),
        strides: tuple[int, ...] = (2, 2),
        num_res_units: int = 1,
        share_weights: bool = True,
        init_iterations: int = 10,
        init_subsets: int = 1,
        initial_fusion_weight: float = 0.0,
        checkpointing: bool = False,
        count_reference: float | None = None,
        norm: str | None = "instance",
        data_subsets: int = 1,
        flip_ensemble: tuple[int, ...] = (),
        anchor: Mapping[str, Any] | None = None,
        anchor_in_training: bool = False,
        final_em_steps: int = 0,
        osem_blend: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            spatial_dims, init_iterations, init_subsets, checkpointing, count_reference
        )
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
        if data_subsets < 1:
            raise ValueError(f"data_subsets must be >= 1, got {data_subsets}")
        if final_em_steps < 0:
            raise ValueError(f"final_em_steps must be >= 0, got {final_em_steps}")
        self.final_em_steps = int(final_em_steps)
        self.num_iterations = num_iterations
        self.data_subsets = data_subsets
        num_nets = 1 if share_weights else num_iterations
        self.regularisers = nn.ModuleList(
            PaddedUNet(
                spatial_dims, 2, 1, channels, strides, num_res_units, norm=norm,
                flip_axes=flip_ensemble,
            )
            for _ in range(num_nets)
        )
        self.fusion_weight = nn.Parameter(torch.full((num_iterations,), initial_fusion_weight))
        self.fusion_dose_slope = nn.Parameter(torch.zeros(num_iterations))
        self.anchor = None if anchor is None else LowFrequencyAnchor.from_config(anchor)
        if anchor_in_training and self.anchor is None:
            raise ValueError("anchor_in_training needs an anchor (sigma_voxels, osem, subsets)")
        self.anchor_in_training = bool(anchor_in_training)
        self.osem_blend = None if osem_blend is None else OSEMBlend.from_config(osem_blend)

    def _iteration(
        self,
        k: int,
        u: torch.Tensor,
        subsets: OrderedSubsets,
        sens: torch.Tensor,
        scale: torch.Tensor,
        dose: torch.Tensor,
    ) -> torch.Tensor:
        """One unrolled iteration on the normalised image ``u = x / scale`` (B, nx, ny, nz)."""
        with torch.autocast(device_type=u.device.type, enabled=False):
            u_em = subsets.osem_pass(u.float() * scale) / scale
        net = self.regularisers[k % len(self.regularisers)]
        feats = to_channels(u, self.spatial_dims)
        inp = torch.cat([feats, dose_channel(dose, feats)], dim=1)
        u_reg = u + from_channels(net(inp), self.spatial_dims).float()
        code = torch.log(dose.float()) / torch.log(torch.tensor(100.0, device=u.device))
        beta = F.softplus(self.fusion_weight[k] + self.fusion_dose_slope[k] * code).view(-1, 1, 1, 1)
        rel_sens = sens / sens.flatten(1).mean(1).view(-1, 1, 1, 1)
        weight = torch.where(sens > 0, beta / rel_sens.clamp_min(1e-6), torch.zeros_like(sens))
        return fbsem_fusion(u_em.float(), u_reg.float(), weight)

    def forward(self, batch: ReconBatch) -> torch.Tensor:
        """Reconstruct ``batch``: returns ``(B, nx, ny, nz)`` in Bq/mL."""
        model, prompts, sens, x0, scale, dose = self.start(batch)
        with torch.autocast(device_type=prompts.device.type, enabled=False):
            subsets = OrderedSubsets.of_scan(model, prompts, self.data_subsets)
        u = x0 / scale
        for k in range(self.num_iterations):
            if self.checkpointing and torch.is_grad_enabled():
                u = checkpoint(
                    self._iteration, k, u, subsets, sens, scale, dose,
                    use_reentrant=False,
                )
            else:
                u = self._iteration(k, u, subsets, sens, scale, dose)
        x = u * scale
        if self.anchor is not None and (self.anchor_in_training or not self.training):
            x = self.anchor(x, model, prompts, dose, batch.image,
                            start=(x0, self.init_iterations, self.init_subsets))
        if self.final_em_steps:
            with torch.autocast(device_type=x.device.type, enabled=False):
                x = x.float().clamp_min(0.0)  # the anchored image may dip below zero
                for _ in range(self.final_em_steps):
                    x = em_update(x, model, prompts.float(), sens)
        if self.osem_blend is not None and not self.training:
            x = self.osem_blend(x, model, prompts, dose, batch.image,
                                start=(x0, self.init_iterations, self.init_subsets))
        return x
