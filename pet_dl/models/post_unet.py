"""Post-reconstruction denoiser baseline: a MONAI UNet on the initial (MLEM/OSEM) image.

``x = relu(u0 + UNet([u0, dose])) * scale`` with ``u0 = x0 / scale``; the data are used
only through the initial image ``x0``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pet_dl.models.base import ReconNetwork
from pet_dl.models.batch import ReconBatch
from pet_dl.models.blocks import (
    PaddedUNet,
    dose_channel,
    from_channels,
    to_channels,
)


class PostUNet(ReconNetwork):
    """Dose-conditioned residual MONAI UNet applied to the initial reconstruction.

    Args:
        spatial_dims: 2 (images ``(nx, ny, 1)``) or 3.
        channels, strides, num_res_units: the MONAI UNet.
        init_iterations, init_subsets: OSEM of the initial image when the batch has none.
        checkpointing: accepted for a uniform interface (one network: no per-iteration
            checkpointing; the UNet is checkpointed as a whole when set).
        count_reference: see :class:`~pet_dl.models.base.ReconNetwork` (count-level conditioning).
        flip_ensemble: spatial axes (0 = x, 1 = y, 2 = z) over whose flips the UNet's
            output is averaged (:func:`pet_dl.models.blocks.flip_averaged`).
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
        count_reference: float | None = None,
        flip_ensemble: tuple[int, ...] = (),
    ) -> None:
        super().__init__(
            spatial_dims, init_iterations, init_subsets, checkpointing, count_reference
        )
        self.net = PaddedUNet(
            spatial_dims, 2, 1, channels, strides, num_res_units, flip_axes=flip_ensemble
        )

    def forward(self, batch: ReconBatch) -> torch.Tensor:
        """Denoise the initial image of ``batch``: returns ``(B, nx, ny, nz)`` in Bq/mL."""
        start = self.start(batch)
        scale = start.scale
        u = to_channels(start.initial / scale, self.spatial_dims)
        inp = torch.cat([u, dose_channel(start.dose, u)], dim=1)
        if self.checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            delta = checkpoint(self.net, inp, use_reentrant=False)
        else:
            delta = self.net(inp)
        return F.relu(from_channels(u + delta.float(), self.spatial_dims)) * scale
