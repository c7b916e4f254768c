"""What every pet_dl reconstruction network shares: its settings and its starting point.

Each network is called as ``net(batch)`` with a :class:`~pet_dl.models.batch.ReconBatch`
and first builds the scan's forward model, its sensitivity image, the initial OSEM image
and the per-scan intensity scale, all in float32 outside autocast (the Poisson data terms
must not run in bf16 / fp16). :meth:`ReconNetwork.start` does that once for all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from pet_dl.models.batch import ReconBatch, initial_image
from pet_dl.models.blocks import check_spatial_dims, count_level, image_scale

if TYPE_CHECKING:
    from pet_dl.forward_model import PETForwardModel


class Start(NamedTuple):
    """The float32 starting point of a network's reconstruction of a batch of ``B`` scans.

    Attributes:
        model: the batch's forward model (``ybar = c m P(G x) + a``).
        prompts: measured counts ``(B, *sino)``, float32.
        sensitivity: ``(B, nx, ny, nz)`` counts per Bq/mL.
        initial: the initial image ``(B, nx, ny, nz)`` Bq/mL (detached).
        scale: per-scan intensity scale ``(B, 1, 1, 1)`` Bq/mL.
        dose: ``(B,)`` what the network is conditioned on: the count level measured from
            the scan (:func:`pet_dl.models.blocks.count_level`) when the network has a
            ``count_reference``, else the batch's ``dose_fraction`` (older networks).
    """

    model: PETForwardModel
    prompts: torch.Tensor
    sensitivity: torch.Tensor
    initial: torch.Tensor
    scale: torch.Tensor
    dose: torch.Tensor


class ReconNetwork(nn.Module):
    """Base class of the learned reconstructions (no parameters of its own).

    Args:
        spatial_dims: 2 (images ``(nx, ny, 1)``) or 3.
        init_iterations, init_subsets: OSEM of the initial image when the batch has none
            (must match the data's, see :mod:`pet_dl.datasets`).
        checkpointing: recompute each iteration's activations in backward
            (``torch.utils.checkpoint``) to save memory.
        count_reference: full-dose count density (counts per mL of object,
            :func:`pet_dl.models.blocks.count_density`) of the training scans: the network is
            then conditioned on the count level measured from each scan, not on the
            ``dose_fraction`` its metadata claims. None: on ``dose_fraction`` (older networks).
    """

    def __init__(
        self, spatial_dims: int, init_iterations: int, init_subsets: int, checkpointing: bool,
        count_reference: float | None = None,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.init_iterations = init_iterations
        self.init_subsets = init_subsets
        self.checkpointing = checkpointing
        if count_reference is not None and not count_reference > 0:
            raise ValueError(f"count_reference must be positive, got {count_reference}")
        self.count_reference = None if count_reference is None else float(count_reference)

    def conditioning(self, batch: ReconBatch, initial: torch.Tensor) -> torch.Tensor:
        """``(B,)`` the dose code's input: measured count level, or the batch's dose fraction."""
        if self.count_reference is None:
            return batch.dose_fraction
        return count_level(
            batch.prompts, batch.additive, initial, batch.image.voxel_size_mm, self.count_reference
        )

    def start(self, batch: ReconBatch) -> Start:
        """Forward model, float32 prompts, sensitivity, initial image and scale of ``batch``."""
        model = batch.forward_model()
        prompts = batch.prompts.float()
        with torch.autocast(device_type=prompts.device.type, enabled=False):
            sens = model.sensitivity()
            if sens.dim() == 3:
                sens = sens.expand(batch.batch_size, *sens.shape)
            x0 = batch.initial
            if x0 is None:
                x0 = initial_image(model, prompts, self.init_iterations, self.init_subsets)
            x0 = x0.float().detach()
            scale = image_scale(x0, sens)
            dose = self.conditioning(batch, x0).to(prompts.device)
        return Start(model, prompts, sens, x0, scale, dose)
