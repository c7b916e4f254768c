"""A residual UNet and convolution block, weight-compatible with MONAI's, without importing MONAI.

``import monai`` loads every MONAI subpackage (data, apps, transforms, matplotlib through
its Jupyter helpers): about 1.5 s of a 2D ``infer.py`` run that reconstructs in 0.2 s.
These modules rebuild :class:`monai.networks.nets.UNet` and
:class:`monai.networks.blocks.Convolution` for the options pet_dl uses (PReLU activation,
instance / batch / no norm, kernel 3, no dropout) with the same module tree, so their
``state_dict`` keys, shapes and outputs are MONAI's (tested against MONAI) and existing
checkpoints load unchanged. Training code may keep using MONAI for losses and metrics.

Layout (MONAI's): ``Convolution`` = ``conv`` (+ ``adn`` = ``N`` norm, ``D`` dropout, ``A``
PReLU, in that order); ``ResidualUnit`` = ``conv`` (``unit0``, ``unit1``, ...) +
``residual``; ``UNet.model`` = ``Sequential(down, SkipConnection(sub), up)`` recursively.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Convolution", "ResidualUnit", "SkipConnection", "UNet"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORMS = {
    "instance": {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d},
    "batch": {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d},
}


def _norm_layer(norm: str | None, spatial_dims: int, channels: int) -> nn.Module | None:
    if norm is None:
        return None
    key = str(norm).lower()
    if key not in _NORMS:
        raise ValueError(f"norm must be one of {sorted(_NORMS)} or None, got {norm!r}")
    return _NORMS[key][spatial_dims](channels)


class Convolution(nn.Sequential):
    """Convolution (or transposed convolution) + norm / dropout / PReLU (MONAI's ``Convolution``).

    Input ``(B, in_channels, *spatial)``; output ``(B, out_channels, *spatial / strides)``
    (``* strides`` when transposed). ``padding = (kernel_size - 1) // 2``; transposed
    convolutions add ``output_padding = strides - 1``.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels, out_channels: channels.
        strides: stride of the convolution.
        kernel_size: odd kernel size.
        act: a PReLU after the norm (MONAI's ``act="PRELU"``); False: none.
        norm: ``"instance"``, ``"batch"`` or None.
        dropout: a dropout layer of this rate between norm and activation (MONAI adds
            one, inactive, when ``dropout=0.0`` is passed, as its UNet does); None: none.
        conv_only: the convolution alone.
        is_transposed: a transposed convolution.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        strides: int = 1,
        kernel_size: int = 3,
        act: bool = True,
        norm: str | None = "instance",
        dropout: float | None = None,
        conv_only: bool = False,
        is_transposed: bool = False,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        padding = (kernel_size - 1) // 2
        if is_transposed:
            conv: nn.Module = _CONV_T[spatial_dims](
                in_channels, out_channels, kernel_size, stride=strides, padding=padding,
                output_padding=strides - 1,
            )
        else:
            conv = _CONV[spatial_dims](in_channels, out_channels, kernel_size, stride=strides, padding=padding)
        self.add_module("conv", conv)
        if conv_only or (not act and norm is None and dropout is None):
            return
        adn = nn.Sequential()
        layer = _norm_layer(norm, spatial_dims, out_channels)
        if layer is not None:
            adn.add_module("N", layer)
        if dropout is not None:
            adn.add_module("D", nn.Dropout(dropout))
        if act:
            adn.add_module("A", nn.PReLU())
        self.add_module("adn", adn)


class ResidualUnit(nn.Module):
    """``subunits`` convolutions plus a residual path (MONAI's ``ResidualUnit``).

    The residual is the identity when shape and channels are kept, else a convolution
    (kernel 1 when only the channels change).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        strides: int = 1,
        kernel_size: int = 3,
        subunits: int = 2,
        norm: str | None = "instance",
        dropout: float | None = None,
        last_conv_only: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        channels, stride = in_channels, strides
        subunits = max(1, subunits)
        for k in range(subunits):
            self.conv.add_module(
                f"unit{k}",
                Convolution(
                    spatial_dims, channels, out_channels, stride, kernel_size, norm=norm,
                    dropout=dropout, conv_only=last_conv_only and k == subunits - 1,
                ),
            )
            channels, stride = out_channels, 1
        self.residual: nn.Module = nn.Identity()
        if strides != 1 or in_channels != out_channels:
            size, pad = (kernel_size, (kernel_size - 1) // 2) if strides != 1 else (1, 0)
            self.residual = _CONV[spatial_dims](in_channels, out_channels, size, strides, pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.residual(x)


class SkipConnection(nn.Module):
    """``cat([x, submodule(x)], dim=1)``."""

    def __init__(self, submodule: nn.Module) -> None:
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.submodule(x)], dim=1)


class UNet(nn.Module):
    """Residual UNet (MONAI's ``UNet`` with ``num_res_units``, PReLU, kernel 3, dropout 0).

    Input ``(B, in_channels, *spatial)`` with every spatial size a multiple of
    ``prod(strides)``; output ``(B, out_channels, *spatial)``.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels, out_channels: channels.
        channels: channels per level, top first (at least 2).
        strides: down-sampling stride per level (``len(channels) - 1`` values).
        num_res_units: residual sub-units per block (0: plain convolutions).
        norm: ``"instance"``, ``"batch"`` or None.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        strides: Sequence[int],
        num_res_units: int = 0,
        norm: str | None = "instance",
    ) -> None:
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        if len(channels) < 2 or len(strides) != len(channels) - 1:
            raise ValueError(
                f"UNet needs >= 2 channels and len(strides) == len(channels) - 1, got {channels}, {strides}"
            )
        self.spatial_dims = spatial_dims
        self.num_res_units = num_res_units
        self.norm = norm

        def block(inc: int, outc: int, chans: Sequence[int], strs: Sequence[int], top: bool) -> nn.Module:
            c, s = chans[0], strs[0]
            if len(chans) > 2:
                sub, upc = block(c, c, chans[1:], strs[1:], False), 2 * c
            else:
                sub, upc = self._down(c, chans[1], 1), c + chans[1]
            return nn.Sequential(self._down(inc, c, s), SkipConnection(sub), self._up(upc, outc, s, top))

        self.model = block(in_channels, out_channels, list(channels), list(strides), True)

    def _down(self, inc: int, outc: int, strides: int) -> nn.Module:
        d = self.spatial_dims
        if self.num_res_units > 0:
            return ResidualUnit(d, inc, outc, strides, subunits=self.num_res_units, norm=self.norm, dropout=0.0)
        return Convolution(d, inc, outc, strides, norm=self.norm, dropout=0.0)

    def _up(self, inc: int, outc: int, strides: int, top: bool) -> nn.Module:
        d = self.spatial_dims
        conv = Convolution(
            d, inc, outc, strides, norm=self.norm, dropout=0.0,
            conv_only=top and self.num_res_units == 0, is_transposed=True,
        )
        if self.num_res_units == 0:
            return conv
        unit = ResidualUnit(d, outc, outc, 1, subunits=1, norm=self.norm, dropout=0.0, last_conv_only=top)
        return nn.Sequential(conv, unit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
