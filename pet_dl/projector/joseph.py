"""Public Joseph projector: validation, batching, backend choice and autograd.

``joseph_forward`` and ``joseph_back`` are each other's exact transpose; their autograd
functions call each other in ``backward``, so gradients use the exact adjoint and double
backward works. LOR endpoints are not differentiable (their gradient is None).

Backends: ``"numba"`` (compiled CPU kernel, default for CPU tensors), ``"triton"``
(GPU kernel, default for CUDA tensors) and ``"reference"`` (pure torch, any device).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pet_dl.projector import reference
from pet_dl.projector._checks import (
    Geometry,
    TOFLike,
    check_float,
    check_lors,
    check_tof_bin,
    image_shape3,
    tof_kernel,
    vector3,
)

BACKENDS = ("reference", "numba", "triton")

Vec3 = Sequence[float] | Tensor


def _cpu_default() -> str:
    return "numba"


def _resolve_backend(backend: str | None, device: torch.device) -> str:
    if backend is None:
        return "triton" if device.type == "cuda" else _cpu_default()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"the numba backend needs CPU tensors, got {device}")
    if backend == "triton" and device.type != "cuda":
        raise ValueError(f"the triton backend needs CUDA tensors, got {device}")
    return backend


def _kernels(backend: str):  # noqa: ANN202 - returns a module
    if backend == "numba":
        from pet_dl.projector import numba_kernels

        return numba_kernels
    if backend == "triton":
        from pet_dl.projector import triton_kernels

        return triton_kernels
    return reference


def _run_forward(image: Tensor, start: Tensor, end: Tensor, geom: Geometry, tof_bin: Tensor | None) -> Tensor:
    backend = _resolve_backend(geom.backend, image.device)
    return _kernels(backend).forward(image.contiguous(), start, end, geom, tof_bin)


def _run_back(values: Tensor, start: Tensor, end: Tensor, geom: Geometry, tof_bin: Tensor | None) -> Tensor:
    backend = _resolve_backend(geom.backend, values.device)
    return _kernels(backend).back(values.contiguous(), start, end, geom, tof_bin)


class _Forward(torch.autograd.Function):
    """image (B, n0, n1, n2) -> values (B, N[, K]); backward is :class:`_Back`."""

    @staticmethod
    def forward(ctx, image, start, end, tof_bin, geom):  # noqa: ANN001, ANN205
        ctx.geom = geom
        ctx.save_for_backward(start, end, tof_bin)
        return _run_forward(image, start, end, geom, tof_bin)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        start, end, tof_bin = ctx.saved_tensors
        grad_image = _Back.apply(grad, start, end, tof_bin, ctx.geom) if ctx.needs_input_grad[0] else None
        return grad_image, None, None, None, None


class _Back(torch.autograd.Function):
    """values (B, N[, K]) -> image (B, n0, n1, n2); backward is :class:`_Forward`."""

    @staticmethod
    def forward(ctx, values, start, end, tof_bin, geom):  # noqa: ANN001, ANN205
        ctx.geom = geom
        ctx.save_for_backward(start, end, tof_bin)
        return _run_back(values, start, end, geom, tof_bin)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        start, end, tof_bin = ctx.saved_tensors
        grad_values = _Forward.apply(grad, start, end, tof_bin, ctx.geom) if ctx.needs_input_grad[0] else None
        return grad_values, None, None, None, None


def _project(
    image: Tensor,
    lor_start: Tensor,
    lor_end: Tensor,
    image_origin: Vec3,
    voxel_size: Vec3,
    tof: TOFLike | None,
    tof_bin: Tensor | None,
    backend: str | None,
) -> Tensor:
    check_float(image, "image")
    if image.dim() < 3:
        raise ValueError(f"image must have shape (..., n0, n1, n2), got {tuple(image.shape)}")
    if image.numel() == 0:
        raise ValueError(f"image is empty, shape {tuple(image.shape)}")
    start, end, lor_shape = check_lors(lor_start, lor_end, image, "image")
    kernel = tof_kernel(tof) if tof is not None else None
    flat_bin = check_tof_bin(tof_bin, lor_shape, image.device, kernel.num_bins) if tof_bin is not None else None
    geom = Geometry(
        image_shape3(image.shape[-3:]),
        vector3(image_origin, "image_origin"),
        vector3(voxel_size, "voxel_size", positive=True),
        kernel,
        tof_bin is not None,
        backend,
    )
    _resolve_backend(backend, image.device)
    batch = image.shape[:-3]
    out = _Forward.apply(image.reshape(-1, *geom.image_shape), start, end, flat_bin, geom)
    tail = (kernel.num_bins,) if kernel is not None and tof_bin is None else ()
    return out.reshape(*batch, *lor_shape, *tail)


def _backproject(
    values: Tensor,
    lor_start: Tensor,
    lor_end: Tensor,
    image_shape: Sequence[int],
    image_origin: Vec3,
    voxel_size: Vec3,
    tof: TOFLike | None,
    tof_bin: Tensor | None,
    backend: str | None,
) -> Tensor:
    check_float(values, "values")
    start, end, lor_shape = check_lors(lor_start, lor_end, values, "values")
    kernel = tof_kernel(tof) if tof is not None else None
    flat_bin = check_tof_bin(tof_bin, lor_shape, values.device, kernel.num_bins) if tof_bin is not None else None
    tail = (kernel.num_bins,) if kernel is not None and tof_bin is None else ()
    core = (*lor_shape, *tail)
    if tuple(values.shape[values.dim() - len(core) :]) != core or values.dim() < len(core):
        what = "(..., N, num_bins)" if tail else "(..., N)"
        raise ValueError(
            f"values must have shape {what} = (..., {', '.join(map(str, core))}) to match the LORs, "
            f"got {tuple(values.shape)}"
        )
    geom = Geometry(
        image_shape3(image_shape),
        vector3(image_origin, "image_origin"),
        vector3(voxel_size, "voxel_size", positive=True),
        kernel,
        tof_bin is not None,
        backend,
    )
    _resolve_backend(backend, values.device)
    batch = values.shape[: values.dim() - len(core)]
    flat = values.reshape(-1, start.shape[0], *tail)
    out = _Back.apply(flat, start, end, flat_bin, geom)
    return out.reshape(*batch, *geom.image_shape)


def joseph_forward(
    image: Tensor,
    lor_start: Tensor,
    lor_end: Tensor,
    image_origin: Vec3,
    voxel_size: Vec3,
    *,
    backend: str | None = None,
) -> Tensor:
    """Line integrals of an image along LORs (Joseph's method).

    Args:
        image: ``(..., n0, n1, n2)`` float32/float64 (e.g. Bq/mL); axis k is world axis k.
        lor_start, lor_end: ``(N, 3)`` (or ``(*lor_shape, 3)``) LOR endpoints in mm, same
            dtype and device as ``image``.
        image_origin: centre of voxel (0, 0, 0) in mm, 3 floats or a ``(3,)`` tensor.
        voxel_size: voxel size in mm, 3 positive floats or a ``(3,)`` tensor.
        backend: ``"numba"``, ``"triton"``, ``"reference"``, or None for the device default.

    Returns:
        ``(..., N)`` (or ``(..., *lor_shape)``) line integrals, image units x mm. LORs that
        miss the image give 0.
    """
    return _project(image, lor_start, lor_end, image_origin, voxel_size, None, None, backend)


def joseph_back(
    values: Tensor,
    lor_start: Tensor,
    lor_end: Tensor,
    image_shape: Sequence[int],
    image_origin: Vec3,
    voxel_size: Vec3,
    *,
    backend: str | None = None,
) -> Tensor:
    """Backprojection, the exact transpose of :func:`joseph_forward`.

    Args:
        values: ``(..., N)`` (or ``(..., *lor_shape)``) values per LOR.
        lor_start, lor_end: ``(N, 3)`` LOR endpoints in mm, dtype and device of ``values``.
        image_shape: ``(n0, n1, n2)``.
        image_origin, voxel_size: as in :func:`joseph_forward` (mm).

    Returns:
        ``(..., n0, n1, n2)`` image, values units x mm.
    """
    return _backproject(values, lor_start, lor_end, image_shape, image_origin, voxel_size, None, None, backend)


def joseph_forward_tof(
    image: Tensor,
    lor_start: Tensor,
    lor_end: Tensor,
    image_origin: Vec3,
    voxel_size: Vec3,
    tof: TOFLike,
    *,
    backend: str | None = None,
) -> Tensor:
    """TOF sinogram projection: :func:`joseph_forward` split into TOF bins.

    Each sample is weighted by the Gaussian TOF kernel (sigma = fwhm / 2.355) integrated
    over each bin, evaluated at the sample's signed distance from the LOR midpoint
    (positive towards ``lor_end``); bin ``k``'s centre is at
    ``(k - (num_bins - 1) / 2) * bin_width_mm + center_offset_mm``. Bins lying entirely
    beyond ``num_sigmas`` sigmas from a sample get nothing from it.

    Returns:
        ``(..., N, tof.num_bins)``, image units x mm; summed over bins it equals the
        non-TOF projection up to the kernel truncation and the bins' coverage.
    """
    return _project(image, lor_start, lor_end, image_origin, voxel_size, tof, None, backend)


def joseph_back_tof(
    values: Tensor,
    lor_start: Tensor,
    lor_end: Tensor,
    image_shape: Sequence[int],
    image_origin: Vec3,
    voxel_size: Vec3,
    tof: TOFLike,
    *,
    backend: str | None = None,
) -> Tensor:
    """Transpose of :func:`joseph_forward_tof`: values ``(..., N, num_bins)`` -> ``(..., n0, n1, n2)``."""
    return _backproject(values, lor_start, lor_end, image_shape, image_origin, voxel_size, tof, None, backend)


def joseph_forward_tof_listmode(
    image: Tensor,
    lor_start: Tensor,
    lor_end: Tensor,
    tof_bin: Tensor,
    image_origin: Vec3,
    voxel_size: Vec3,
    tof: TOFLike,
    *,
    backend: str | None = None,
) -> Tensor:
    """TOF listmode projection: for each event, only its own TOF bin.

    Args:
        tof_bin: ``(N,)`` integer bin index of each event, in ``[0, tof.num_bins)``.

    Returns:
        ``(..., N)``: equal to ``joseph_forward_tof(...)[..., n, tof_bin[n]]``.
    """
    return _project(image, lor_start, lor_end, image_origin, voxel_size, tof, tof_bin, backend)


def joseph_back_tof_listmode(
    values: Tensor,
    lor_start: Tensor,
    lor_end: Tensor,
    tof_bin: Tensor,
    image_shape: Sequence[int],
    image_origin: Vec3,
    voxel_size: Vec3,
    tof: TOFLike,
    *,
    backend: str | None = None,
) -> Tensor:
    """Transpose of :func:`joseph_forward_tof_listmode`: ``(..., N)`` -> ``(..., n0, n1, n2)``."""
    return _backproject(values, lor_start, lor_end, image_shape, image_origin, voxel_size, tof, tof_bin, backend)
