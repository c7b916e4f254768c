"""Sinogram LORs stored as a transaxial and an axial part, projected without copies.

The LOR of sinogram bin ``(p, v, r)`` runs from ``(xy_start[v, r], z_start[p])`` to
``(xy_end[v, r], z_end[p])`` (mm): every plane shares the views' transaxial endpoints.
Storing the two parts takes ``(V R + P)`` points instead of ``P V R`` (2.8 MB in float64 instead of
1.7 GB for the Siemens mMR span-11 sinogram), a subset of views is a small copy of
``xy``, and the endpoints are validated once, when :class:`SinogramLORs` is built; the
projections check only the image or values.

The numba backend reads the two parts inside its kernels. The other backends (reference,
Triton) get the endpoints of a block of planes at a time (about 4 M LORs, 100 MB in
float32), built in the data's dtype on its device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pet_dl.projector._checks import (
    Geometry,
    TOFLike,
    check_float,
    image_shape3,
    tof_kernel,
    vector3,
)

# LORs per block for the backends that take materialised endpoints.
_BLOCK_LORS = 1 << 22

Vec3 = Sequence[float] | Tensor


@dataclass(frozen=True, eq=False)
class SinogramLORs:
    """LOR endpoints of a sinogram ``(P, V, R)`` as transaxial and axial parts, in mm.

    Attributes:
        xy_start, xy_end: ``(V, R, 2)`` (x, y) of each view's and radial bin's LOR ends.
        z_start, z_end: ``(P,)`` z of each plane's LOR ends.

    All four share one float dtype and device. Built once (validated here: finite, no
    zero-length LOR); :func:`sinogram_forward` and :func:`sinogram_back` trust them.
    """

    xy_start: Tensor
    xy_end: Tensor
    z_start: Tensor
    z_end: Tensor

    def __post_init__(self) -> None:
        parts = {"xy_start": self.xy_start, "xy_end": self.xy_end, "z_start": self.z_start, "z_end": self.z_end}
        for name, t in parts.items():
            check_float(t, name)
            if t.device != self.xy_start.device or t.dtype != self.xy_start.dtype:
                raise ValueError(
                    f"SinogramLORs: {name} is {t.dtype} on {t.device}, xy_start {self.xy_start.dtype} on"
                    f" {self.xy_start.device}; give all parts one dtype and device"
                )
        if self.xy_start.dim() != 3 or self.xy_start.shape[-1] != 2 or self.xy_end.shape != self.xy_start.shape:
            raise ValueError(
                f"xy_start and xy_end must both have shape (V, R, 2) (mm), got {tuple(self.xy_start.shape)}"
                f" and {tuple(self.xy_end.shape)}"
            )
        if self.z_start.dim() != 1 or self.z_end.shape != self.z_start.shape:
            raise ValueError(
                f"z_start and z_end must both have shape (P,) (mm), got {tuple(self.z_start.shape)} and"
                f" {tuple(self.z_end.shape)}"
            )
        if not all(bool(torch.isfinite(t).all()) for t in parts.values()):
            raise ValueError("SinogramLORs: endpoints must be finite (found NaN or inf)")
        if self.xy_start.numel() and self.z_start.numel():
            flat_xy = torch.linalg.vector_norm((self.xy_end - self.xy_start).double(), dim=-1) == 0
            flat_z = (self.z_end - self.z_start) == 0
            if bool(flat_xy.any()) and bool(flat_z.any()):
                v, r = (int(i) for i in torch.nonzero(flat_xy)[0])
                p = int(torch.nonzero(flat_z)[0, 0])
                raise ValueError(f"zero-length LOR at plane {p}, view {v}, radial bin {r} (start == end)")

    # ------------------------------------------------------------------ sizes
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(P, V, R)``: planes, views, radial bins."""
        return (self.z_start.shape[0], self.xy_start.shape[0], self.xy_start.shape[1])

    @property
    def num_lors(self) -> int:
        """``P * V * R``."""
        p, v, r = self.shape
        return p * v * r

    @property
    def dtype(self) -> torch.dtype:
        return self.xy_start.dtype

    @property
    def device(self) -> torch.device:
        return self.xy_start.device

    # ------------------------------------------------------------------ derived
    @classmethod
    def from_geometry(
        cls, sinogram: Any, views: Tensor | Sequence[int] | None = None, dtype: torch.dtype = torch.float32
    ) -> SinogramLORs:
        """The LORs of a :class:`pet_dl.geometry.SinogramGeometry` (DOI included).

        Args:
            sinogram: the layout (its ``transaxial_endpoints`` and ``plane_z``).
            views: optional view indices (a subset, in this order).
            dtype: float32 (the projectors' default; endpoints within ~2e-5 mm of the
                float64 ones at a 330 mm radius) or float64.
        """
        if views is not None:
            views = torch.as_tensor(views, dtype=torch.int64).reshape(-1)
        xy_start, xy_end = sinogram.transaxial_endpoints(views)
        z_start, z_end = sinogram.plane_z()
        return cls(xy_start.to(dtype), xy_end.to(dtype), z_start.to(dtype), z_end.to(dtype))

    def select_views(self, views: Tensor) -> SinogramLORs:
        """The LORs of views ``views`` (int64 indices into this object's views), in that order."""
        views = torch.as_tensor(views, dtype=torch.int64, device=self.device).reshape(-1)
        return SinogramLORs(
            self.xy_start.index_select(0, views), self.xy_end.index_select(0, views), self.z_start, self.z_end
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SinogramLORs:
        """A copy on ``device`` in ``dtype`` (the same object when nothing changes)."""
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        if device == self.device and dtype == self.dtype:
            return self
        return SinogramLORs(*(t.to(device=device, dtype=dtype) for t in self.parts()))

    def parts(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(xy_start, xy_end, z_start, z_end)``."""
        return self.xy_start, self.xy_end, self.z_start, self.z_end

    def endpoints(
        self, planes: slice | None = None, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor]:
        """Materialised start and end points ``(p, V, R, 3)`` of ``planes`` (default all), mm."""
        planes = planes if planes is not None else slice(None)
        dtype = dtype or self.dtype
        out = []
        for xy, z in ((self.xy_start, self.z_start), (self.xy_end, self.z_end)):
            zp = z[planes].to(device=device, dtype=dtype)
            t = torch.empty((zp.shape[0], *xy.shape[:2], 3), dtype=dtype, device=zp.device)
            t[..., :2] = xy.to(device=zp.device, dtype=dtype)[None]
            t[..., 2] = zp[:, None, None]
            out.append(t)
        return out[0], out[1]

    def plane_blocks(self, max_lors: int = _BLOCK_LORS) -> Iterator[slice]:
        """Slices of planes, each of at most ``max_lors`` LORs (at least one plane)."""
        p, v, r = self.shape
        step = max(1, max_lors // max(1, v * r))
        for p0 in range(0, p, step):
            yield slice(p0, min(p, p0 + step))


# --------------------------------------------------------------------------- kernels
def _resolve(geom: Geometry, device: torch.device) -> str:
    from pet_dl.projector.joseph import _resolve_backend

    return _resolve_backend(geom.backend, device)


def _run_forward(image: Tensor, lors: SinogramLORs, geom: Geometry) -> Tensor:
    """``image (B, n0, n1, n2)`` -> ``(B, P V R[, K])``."""
    backend = _resolve(geom, image.device)
    if backend == "numba":
        from pet_dl.projector import numba_kernels

        return numba_kernels.forward_factored(image, *lors.parts(), geom)
    from pet_dl.projector.joseph import _kernels

    kernels = _kernels(backend)
    rows = lors.shape[1] * lors.shape[2]
    parts = []
    for planes in lors.plane_blocks():
        start, end = lors.endpoints(planes, dtype=image.dtype, device=image.device)
        parts.append(kernels.forward(image, start.reshape(-1, 3), end.reshape(-1, 3), geom, None))
    out = torch.cat(parts, dim=1)
    assert out.shape[1] == lors.shape[0] * rows
    return out


def _run_back(values: Tensor, lors: SinogramLORs, geom: Geometry) -> Tensor:
    """``(B, P V R[, K])`` -> ``(B, n0, n1, n2)``."""
    backend = _resolve(geom, values.device)
    if backend == "numba":
        from pet_dl.projector import numba_kernels

        return numba_kernels.back_factored(values, *lors.parts(), geom)
    from pet_dl.projector.joseph import _kernels

    kernels = _kernels(backend)
    rows = lors.shape[1] * lors.shape[2]
    image = None
    for planes in lors.plane_blocks():
        start, end = lors.endpoints(planes, dtype=values.dtype, device=values.device)
        part = values[:, planes.start * rows : planes.stop * rows].contiguous()
        img = kernels.back(part, start.reshape(-1, 3), end.reshape(-1, 3), geom, None)
        image = img if image is None else image + img
    assert image is not None
    return image


class _Forward(torch.autograd.Function):
    """image (B, n0, n1, n2) -> values (B, N[, K]); backward is :class:`_Back`."""

    @staticmethod
    def forward(ctx, image, lors, geom):  # noqa: ANN001, ANN205
        ctx.lors, ctx.geom = lors, geom
        return _run_forward(image, lors, geom)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        grad_image = _Back.apply(grad, ctx.lors, ctx.geom) if ctx.needs_input_grad[0] else None
        return grad_image, None, None


class _Back(torch.autograd.Function):
    """values (B, N[, K]) -> image (B, n0, n1, n2); backward is :class:`_Forward`."""

    @staticmethod
    def forward(ctx, values, lors, geom):  # noqa: ANN001, ANN205
        ctx.lors, ctx.geom = lors, geom
        return _run_back(values, lors, geom)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        grad_values = _Forward.apply(grad, ctx.lors, ctx.geom) if ctx.needs_input_grad[0] else None
        return grad_values, None, None


def _geometry(
    image_shape: Sequence[int], origin: Vec3, voxel_size: Vec3, tof: TOFLike | None, backend: str | None
) -> Geometry:
    kernel = tof_kernel(tof) if tof is not None else None
    return Geometry(
        image_shape3(image_shape), vector3(origin, "image_origin"), vector3(voxel_size, "voxel_size", positive=True),
        kernel, False, backend,
    )


def _same_device(lors: SinogramLORs, t: Tensor, name: str) -> SinogramLORs:
    if lors.device != t.device:
        raise ValueError(f"the LORs are on {lors.device} but {name} is on {t.device}; move them with lors.to()")
    return lors


def sinogram_forward(
    image: Tensor,
    lors: SinogramLORs,
    image_origin: Vec3,
    voxel_size: Vec3,
    tof: TOFLike | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """:func:`pet_dl.projector.joseph_forward` (or ``joseph_forward_tof``) of a sinogram.

    Args:
        image: ``(..., n0, n1, n2)`` float32/float64 (e.g. Bq/mL).
        lors: the sinogram's LORs (validated when built), on the image's device.
        image_origin, voxel_size: mm, as in ``joseph_forward``.
        tof: optional TOF description (``pet_dl.geometry.TOFParameters``).
        backend: ``"numba"``, ``"triton"``, ``"reference"`` or None (device default).

    Returns:
        ``(..., P, V, R)`` line integrals (image units x mm), ``(..., P, V, R, K)`` with TOF;
        equal to ``joseph_forward`` of the materialised endpoints.
    """
    check_float(image, "image")
    if image.dim() < 3 or image.numel() == 0:
        raise ValueError(f"image must have shape (..., n0, n1, n2), got {tuple(image.shape)}")
    geom = _geometry(image.shape[-3:], image_origin, voxel_size, tof, backend)
    _same_device(lors, image, "image")
    _resolve(geom, image.device)
    batch = image.shape[:-3]
    out = _Forward.apply(image.reshape(-1, *geom.image_shape).contiguous(), lors, geom)
    tail = (geom.tof.num_bins,) if geom.tof is not None else ()
    return out.reshape(*batch, *lors.shape, *tail)


def sinogram_back(
    values: Tensor,
    lors: SinogramLORs,
    image_shape: Sequence[int],
    image_origin: Vec3,
    voxel_size: Vec3,
    tof: TOFLike | None = None,
    *,
    backend: str | None = None,
) -> Tensor:
    """The exact transpose of :func:`sinogram_forward`.

    Args:
        values: ``(..., P, V, R)`` (``(..., P, V, R, K)`` with TOF), float32/float64.
        lors, image_origin, voxel_size, tof, backend: as in :func:`sinogram_forward`.
        image_shape: ``(n0, n1, n2)``.

    Returns:
        ``(..., n0, n1, n2)`` image, values units x mm.
    """
    check_float(values, "values")
    geom = _geometry(image_shape, image_origin, voxel_size, tof, backend)
    _same_device(lors, values, "values")
    tail = (geom.tof.num_bins,) if geom.tof is not None else ()
    core = (*lors.shape, *tail)
    if values.dim() < len(core) or tuple(values.shape[values.dim() - len(core) :]) != core:
        raise ValueError(
            f"values must have shape (..., {', '.join(map(str, core))}) to match the LORs, got {tuple(values.shape)}"
        )
    _resolve(geom, values.device)
    batch = values.shape[: values.dim() - len(core)]
    flat = values.reshape(-1, lors.num_lors, *tail).contiguous()
    out = _Back.apply(flat, lors, geom)
    return out.reshape(*batch, *geom.image_shape)
