"""Input validation and normalisation shared by every projector backend.

Public functions check their arguments here once and hand the kernels flat, contiguous
tensors: images ``(B, n0, n1, n2)``, LOR endpoints ``(N, 3)``, values ``(B, N[, K])``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float64)


class TOFLike(Protocol):
    """What the projector reads from a TOF description (``pet_dl.geometry.TOFParameters``)."""

    num_bins: int
    bin_width_mm: float
    fwhm_mm: float
    center_offset_mm: float
    num_sigmas: float


@dataclass(frozen=True)
class TOFKernel:
    """Plain-float TOF kernel parameters, as the kernels use them (lengths in mm)."""

    num_bins: int
    bin_width: float
    sigma: float
    center_offset: float
    num_sigmas: float

    def bin_center(self, k: int) -> float:
        """Signed distance (mm) of bin ``k``'s centre from the LOR midpoint."""
        return (k - (self.num_bins - 1) / 2) * self.bin_width + self.center_offset


@dataclass(frozen=True)
class Geometry:
    """Everything about a projection except the tensors: grid, TOF and backend choice."""

    image_shape: tuple[int, int, int]
    origin: tuple[float, float, float]
    voxel_size: tuple[float, float, float]
    tof: TOFKernel | None = None
    listmode: bool = False
    backend: str | None = None


def tof_kernel(tof: TOFLike) -> TOFKernel:
    """Validate a TOF description and return its plain-float kernel parameters."""
    try:
        num_bins = int(tof.num_bins)
        bin_width = float(tof.bin_width_mm)
        fwhm = float(tof.fwhm_mm)
        offset = float(getattr(tof, "center_offset_mm", 0.0))
        num_sigmas = float(getattr(tof, "num_sigmas", 3.0))
    except AttributeError as err:
        raise TypeError(
            f"tof must be a TOFParameters (num_bins, bin_width_mm, fwhm_mm, ...), got {type(tof).__name__}"
        ) from err
    if num_bins < 1:
        raise ValueError(f"tof.num_bins must be >= 1, got {num_bins}")
    if not (bin_width > 0 and math.isfinite(bin_width)):
        raise ValueError(f"tof.bin_width_mm must be a positive finite number, got {bin_width}")
    if not (fwhm > 0 and math.isfinite(fwhm)):
        raise ValueError(f"tof.fwhm_mm must be a positive finite number, got {fwhm}")
    if not math.isfinite(offset):
        raise ValueError(f"tof.center_offset_mm must be finite, got {offset}")
    if not num_sigmas > 0:
        raise ValueError(f"tof.num_sigmas must be positive, got {num_sigmas}")
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return TOFKernel(num_bins, bin_width, sigma, offset, num_sigmas)


def vector3(value: Sequence[float] | Tensor, name: str, positive: bool = False) -> tuple[float, float, float]:
    """A sequence or ``(3,)`` tensor of mm as a tuple of 3 finite floats."""
    if isinstance(value, Tensor):
        if value.shape != (3,):
            raise ValueError(f"{name} must have shape (3,), got {tuple(value.shape)}")
        items = [float(v) for v in value.detach().cpu().tolist()]
    else:
        try:
            items = [float(v) for v in value]
        except TypeError as err:
            raise TypeError(f"{name} must be a sequence of 3 floats (mm), got {value!r}") from err
        if len(items) != 3:
            raise ValueError(f"{name} must have 3 entries (mm), got {len(items)}")
    if not all(math.isfinite(v) for v in items):
        raise ValueError(f"{name} must be finite, got {items}")
    if positive and not all(v > 0 for v in items):
        raise ValueError(f"{name} must be positive, got {items}")
    return items[0], items[1], items[2]


def image_shape3(shape: Sequence[int]) -> tuple[int, int, int]:
    """Validate an image shape ``(n0, n1, n2)``."""
    try:
        dims = tuple(int(n) for n in shape)
    except TypeError as err:
        raise TypeError(f"image_shape must be a sequence of 3 ints, got {shape!r}") from err
    if len(dims) != 3 or any(n < 1 for n in dims):
        raise ValueError(f"image_shape must be 3 positive ints (n0, n1, n2), got {dims}")
    return dims[0], dims[1], dims[2]


def check_float(t: Tensor, name: str) -> None:
    """Require a float32 / float64 tensor."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")


def check_lors(
    lor_start: Tensor, lor_end: Tensor, like: Tensor, name: str
) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Validate LOR endpoints ``(*lor_shape, 3)`` in mm against ``like`` (image or values).

    Returns the endpoints flattened to ``(N, 3)`` and ``lor_shape``.
    """
    for t, tname in ((lor_start, "lor_start"), (lor_end, "lor_end")):
        check_float(t, tname)
        if t.dim() < 1 or t.shape[-1] != 3:
            raise ValueError(f"{tname} must have shape (N, 3) (mm), got {tuple(t.shape)}")
        if t.device != like.device:
            raise ValueError(f"{tname} is on {t.device} but {name} is on {like.device}")
        if t.dtype != like.dtype:
            raise TypeError(
                f"{tname} is {t.dtype} but {name} is {like.dtype}; convert with .to({name}.dtype)"
            )
    if lor_start.shape != lor_end.shape:
        raise ValueError(
            f"lor_start {tuple(lor_start.shape)} and lor_end {tuple(lor_end.shape)} differ in shape"
        )
    lor_shape = tuple(lor_start.shape[:-1])
    start = lor_start.detach().reshape(-1, 3).contiguous()
    end = lor_end.detach().reshape(-1, 3).contiguous()
    if start.numel():
        if not bool(torch.isfinite(start).all() & torch.isfinite(end).all()):
            raise ValueError("LOR endpoints must be finite (found NaN or inf)")
        length = torch.linalg.vector_norm(end - start, dim=1)
        zero = length == 0
        if bool(zero.any()):
            i = int(torch.nonzero(zero)[0, 0])
            raise ValueError(f"zero-length LOR at flat index {i} (lor_start == lor_end)")
    return start, end, lor_shape


def check_tof_bin(tof_bin: Tensor, lor_shape: tuple[int, ...], device: torch.device, num_bins: int) -> Tensor:
    """Validate listmode TOF bin indices (shape ``lor_shape``); returns them flat int64."""
    if not isinstance(tof_bin, Tensor):
        raise TypeError(f"tof_bin must be an integer torch.Tensor, got {type(tof_bin).__name__}")
    if tof_bin.dtype.is_floating_point or tof_bin.dtype.is_complex or tof_bin.dtype == torch.bool:
        raise TypeError(f"tof_bin must be an integer tensor (int64), got {tof_bin.dtype}")
    if tuple(tof_bin.shape) != lor_shape:
        raise ValueError(f"tof_bin must have shape {lor_shape} (one per LOR), got {tuple(tof_bin.shape)}")
    if tof_bin.device != device:
        raise ValueError(f"tof_bin is on {tof_bin.device} but the LORs are on {device}")
    flat = tof_bin.reshape(-1).to(torch.int64).contiguous()
    if flat.numel() and bool(((flat < 0) | (flat >= num_bins)).any()):
        raise ValueError(f"tof_bin values must lie in [0, {num_bins - 1}]")
    return flat
