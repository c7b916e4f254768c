"""Post-reconstruction denoiser baseline: a MONAI UNet on the initial (MLEM/OSEM) image.

``x = relu(u0 + UNet([u0, dose])) * scale`` with ``u0 = x0 / scale``; the data are used
only through the initial image ``x0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pet_dl.models.batch import ReconBatch, initial_image
from pet_dl.models.blocks import (
    PaddedUNet,
    check_spatial_dims,
    dose_channel,
    from_channels,
    image_scale,
    to_channels,
)


class PostUNet(nn.Module):
    """Dose-conditioned residual MONAI UNet applied to the initial reconstruction.

    Args:
        spatial_dims: 2 (images ``(nx, ny, 1)``) or 3.
        channels, strides, num_res_units: the MONAI UNet.
        init_iterations, init_subsets: OSEM of the initial image when the batch has none.
        checkpointing: accepted for a uniform interface (one network: no per-iteration
            checkpointing; the UNet is checkpointed as a whole when set).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        channels: tuple[int, ...] = (16, 32, 64, 128),
        strides: tuple[int, ...] = (2, 2, 2),
        num_res_units: int = 1,
        init_iterations: int = 10,
        init_subsets: int = 1,
        checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.init_iterations = init_iterations
        self.init_subsets = init_subsets
        self.checkpointing = checkpointing
        self.net = PaddedUNet(spatial_dims, 2, 1, channels, strides, num_res_units)

    def forward(self, batch: ReconBatch) -> torch.Tensor:
        """Denoise the initial image of ``batch``: returns ``(B, nx, ny, nz)`` in Bq/mL."""
        model = batch.forward_model()
        prompts = batch.prompts.float()
        with torch.autocast(device_type=prompts.device.type, enabled=False):
            sens = model.sensitivity()
            x0 = batch.initial
            if x0 is None:
                x0 = initial_image(model, prompts, self.init_iterations, self.init_subsets)
            x0 = x0.float().detach()
            scale = image_scale(x0, sens)
        u = to_channels(x0 / scale, self.spatial_dims)
        inp = torch.cat([u, dose_channel(batch.dose_fraction, u)], dim=1)
        if self.checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            delta = checkpoint(self.net, inp, use_reentrant=False)
        else:
            delta = self.net(inp)
        return F.relu(from_channels(u + delta.float(), self.spatial_dims)) * scale
