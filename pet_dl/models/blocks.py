"""Building blocks shared by the learned models: layout, normalisation, dose, CNNs.

Images enter and leave the models as ``(B, nx, ny, nz)`` in Bq/mL. Internally the CNNs
see channel-first tensors ``(B, C, nx, ny)`` (2D, the singleton z squeezed) or
``(B, C, nx, ny, nz)`` (3D) of O(1) values: each image is divided by a per-scan scale
(the mean of the initial image over the sensitive region).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def check_spatial_dims(spatial_dims: int) -> int:
    """Validate ``spatial_dims`` (2 or 3)."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims


def to_channels(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """``(B, nx, ny, nz)`` -> ``(B, 1, nx, ny)`` (2D, needs nz == 1) or ``(B, 1, nx, ny, nz)``."""
    if x.dim() != 4:
        raise ValueError(f"expected images (B, nx, ny, nz), got shape {tuple(x.shape)}")
    if spatial_dims == 2:
        if x.shape[-1] != 1:
            raise ValueError(f"a 2D model needs images with nz == 1, got shape {tuple(x.shape)}")
        return x[:, None, :, :, 0]
    return x[:, None]


def from_channels(x: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Inverse of :func:`to_channels` for one channel: ``(B, 1, ...)`` -> ``(B, nx, ny, nz)``."""
    x = x[:, 0]
    return x[..., None] if spatial_dims == 2 else x


def image_scale(initial: torch.Tensor, sensitivity: torch.Tensor) -> torch.Tensor:
    """Per-scan intensity scale: mean of ``initial`` where the sensitivity is positive.

    Args:
        initial: ``(B, nx, ny, nz)`` Bq/mL.
        sensitivity: ``(B, nx, ny, nz)`` or ``(nx, ny, nz)``.

    Returns:
        ``(B, 1, 1, 1)`` Bq/mL, strictly positive.
    """
    mask = (sensitivity > 0).to(initial.dtype).expand_as(initial)
    mean = (initial * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)
    return mean.clamp_min(1e-12).view(-1, 1, 1, 1)


#: How far above the peak of the initial image with its isolated spikes removed (a 3 x 3
#: median per plane, then the 5-voxel box) the peak that sets the object's support may be.
#: A 4 x 7 OSEM can hold single hot voxels where the sensitivity is all but zero: with the
#: plain maximum one of them (in a grown grid's corner, since zeroed in the network's start
#: by pet_dl.plane_inference) shrank a whole ACRIN slice's support at 1/50 dose to itself,
#: the level read 94 x what its counts say, and the network painted 20 false hot spots. At
#: 1.5 the cap leaves the level of every one of 480 validation scans of the training families
#: (BrainWeb and FLT-like windows, full to 1/100 dose) and 142 of 144 whole ACRIN scans as it
#: was, and brings those two to 1.75 and 1.45 x (experiments/scripts/count_level_peak.py;
#: docs/experiments.md, "After v43").
SPIKE_CAP = 1.5


def count_density(
    prompts: torch.Tensor, additive: torch.Tensor, initial: torch.Tensor,
    voxel_size_mm: tuple[float, float, float], spike_cap: float | None = SPIKE_CAP,
) -> torch.Tensor:
    """Net counts per mL of the imaged object, measured from the scan itself.

    The count level that sets a reconstruction's noise: the estimated trues (prompts less
    the additive randoms + scatter expectation, summed over the sinogram) divided by the
    volume of the object, which is the support of the initial image after a 5-voxel box
    filter (voxels above 10 % of its peak: its maximum, but at most ``spike_cap`` times the
    maximum of the same image with isolated spikes removed, :data:`SPIKE_CAP`). It needs no
    dose metadata, so a real scan gets the same treatment as a simulated one.

    Args:
        prompts, additive: ``(B, *sino)`` counts.
        initial: ``(B, nx, ny, nz)`` initial image (any unit; only its support is used).
        voxel_size_mm: the image grid's voxel size, mm.
        spike_cap: :data:`SPIKE_CAP`; ``None``: the plain maximum (as before the cap).

    Returns:
        ``(B,)`` counts per mL (float32, positive).
    """
    trues = (prompts.float() - additive.float()).flatten(1).sum(1).clamp_min(1.0)
    x = initial.float().clamp_min(0.0)
    smooth = _box5(x)
    flat = smooth.flatten(1)
    peak = flat.amax(1)
    if spike_cap is not None:  # a noise spike may not set the peak: at most cap x that of the despiked image
        despiked = _box5(_median3_planes(x)).flatten(1).amax(1)
        peak = torch.minimum(peak, float(spike_cap) * despiked)
    peak = peak.clamp_min(1e-30)
    support = (flat > 0.1 * peak[:, None]).sum(1).clamp_min(1)
    voxel_ml = float(voxel_size_mm[0]) * float(voxel_size_mm[1]) * float(voxel_size_mm[2]) / 1000.0
    return trues / (support.float() * voxel_ml)


def _box5(x: torch.Tensor) -> torch.Tensor:
    """``(B, nx, ny, nz)`` -> ``(B, 1, nx, ny[, nz])``: the 5-voxel box mean (2D for one plane)."""
    if x.shape[-1] == 1:
        return F.avg_pool2d(x[..., 0].unsqueeze(1), 5, stride=1, padding=2, count_include_pad=False)
    return F.avg_pool3d(x.unsqueeze(1), 5, stride=1, padding=2, count_include_pad=False)


def _median3_planes(x: torch.Tensor) -> torch.Tensor:
    """``(B, nx, ny, nz)`` -> the same, each z-plane 3 x 3 median-filtered (edges replicated)."""
    b, nx, ny, nz = x.shape
    planes = x.permute(0, 3, 1, 2).reshape(b * nz, 1, nx, ny)
    padded = F.pad(planes, (1, 1, 1, 1), mode="replicate")
    patches = F.unfold(padded, 3)  # (b nz, 9, nx ny)
    med = patches.median(dim=1).values.reshape(b, nz, nx, ny)
    return med.permute(0, 2, 3, 1)


def count_level(
    prompts: torch.Tensor, additive: torch.Tensor, initial: torch.Tensor,
    voxel_size_mm: tuple[float, float, float], reference_density: float,
) -> torch.Tensor:
    """The scan's count level relative to a full-dose reference, ``(B,)`` in [1e-3, 10].

    :func:`count_density` divided by ``reference_density`` (the median full-dose density of a
    model's training scans): about the dose fraction for scans like the training ones, and
    the right conditioning for a scan of unknown dose (a real acquisition, a short frame).
    """
    if reference_density <= 0:
        raise ValueError(f"reference_density must be positive, got {reference_density}")
    density = count_density(prompts, additive, initial, voxel_size_mm)
    return (density / float(reference_density)).clamp(1e-3, 10.0)


def dose_channel(dose_fraction: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A constant channel holding ``log(dose_fraction) / log(100)`` (0 at full dose, -1 at 1/100).

    Args:
        dose_fraction: ``(B,)`` positive: the dose fraction, or a measured count level
            (:func:`count_level`, which may exceed 1).
        like: channel-first tensor ``(B, C, *spatial)`` whose layout the result copies.

    Returns:
        ``(B, 1, *spatial)`` of the dtype and device of ``like``.
    """
    code = torch.log(dose_fraction.to(like.dtype)) / math.log(100.0)
    shape = (like.shape[0], 1) + (1,) * (like.dim() - 2)
    return code.view(shape).expand(like.shape[0], 1, *like.shape[2:])


def check_flip_axes(flip_axes: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """Validate spatial axes to flip (0 = x, 1 = y, 2 = z; distinct, < ``spatial_dims``)."""
    axes = tuple(int(a) for a in flip_axes)
    if len(set(axes)) != len(axes) or any(not 0 <= a < spatial_dims for a in axes):
        raise ValueError(
            f"flip axes must be distinct spatial axes in [0, {spatial_dims - 1}], got {list(flip_axes)}"
        )
    return axes


def flip_averaged(
    net: nn.Module, x: torch.Tensor, flip_axes: Sequence[int]
) -> torch.Tensor:
    """``net``'s output averaged over the flips of ``x`` along ``flip_axes`` (self-ensemble).

    For every subset ``F`` of ``flip_axes`` the input is flipped along ``F``, passed through
    ``net`` and flipped back; the ``2^len(flip_axes)`` outputs are averaged. The flipped
    copies go through ``net`` as one batch (exact for per-sample layers such as instance
    norm). For a network that should treat mirror images alike (a brain's left and right)
    this removes the part of its output that depends on orientation, e.g. the half-voxel
    offsets of strided convolutions and the noise the network copies from one side only.

    Args:
        net: maps ``(N, C_in, *spatial)`` to ``(N, C_out, *spatial)``.
        x: ``(B, C_in, *spatial)``.
        flip_axes: spatial axes (0 = the first spatial dimension); empty: ``net(x)``.

    Returns:
        ``(B, C_out, *spatial)``.
    """
    if not flip_axes:
        return net(x)
    subsets: list[tuple[int, ...]] = [()]
    for axis in flip_axes:
        subsets += [s + (axis + 2,) for s in subsets]
    copies = [x.flip(dims) if dims else x for dims in subsets]
    out = net(torch.cat(copies, dim=0)).chunk(len(subsets), dim=0)
    total = sum(o.flip(dims) if dims else o for o, dims in zip(out, subsets))
    return total / len(subsets)


class PaddedUNet(nn.Module):
    """MONAI ``UNet`` that accepts any spatial size (pads to a multiple of its stride).

    Input ``(B, in_channels, *spatial)``, output ``(B, out_channels, *spatial)``. With
    ``flip_axes`` the output is averaged over the input's flips along those spatial axes
    (:func:`flip_averaged`; no parameters, ``2^len(flip_axes)`` times the compute).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64),
        strides: Sequence[int] = (2, 2),
        num_res_units: int = 1,
        norm: str | None = "instance",
        flip_axes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        if len(strides) != len(channels) - 1:
            raise ValueError(
                f"UNet needs len(strides) == len(channels) - 1, got {len(strides)} and {len(channels)}"
            )
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.flip_axes = check_flip_axes(flip_axes, spatial_dims)
        self.multiple = int(math.prod(strides))
        self.net = UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
            norm=norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flip_averaged(self._padded, x, self.flip_axes)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        pad: list[int] = []
        for n in reversed(spatial):
            extra = (-n) % self.multiple
            pad += [extra // 2, extra - extra // 2]
        if any(pad):
            x = F.pad(x, pad, mode="replicate")
        y = self.net(x)
        if any(pad):
            index = tuple(slice(pad[2 * k], pad[2 * k] + n) for k, n in enumerate(reversed(spatial)))
            y = y[(..., *reversed(index))]
        return y


class ConvStack(nn.Module):
    """A few MONAI convolution blocks (conv + PReLU) and a linear last conv.

    Input ``(B, in_channels, *spatial)``, output ``(B, out_channels, *spatial)``; any size.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, width: int = 32, depth: int = 3
    ) -> None:
        super().__init__()
        from monai.networks.blocks import Convolution

        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(depth - 1):
            layers.append(Convolution(spatial_dims, c, width, kernel_size=3, act="PRELU", norm=None))
            c = width
        layers.append(
            Convolution(spatial_dims, c, out_channels, kernel_size=3, conv_only=True)
        )
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
