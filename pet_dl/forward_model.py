"""The PET forward model: projector, resolution, attenuation, normalisation, background.

    ybar = calibration * multiplicative * P(G x) + additive

``x``: activity ``(nx, ny, nz)`` in Bq/mL; ``G``: :class:`GaussianResolution` (image
space, dimensionless); ``P``: :class:`SinogramProjector` (Joseph line integrals, mm);
``multiplicative``: attenuation x normalisation (dimensionless); ``calibration``:
expected counts per (Bq/mL x mm); ``additive``: expected scatter + randoms counts.
See ``docs/forward-model.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from pet_dl.errors import GeometryError
from pet_dl.operators import CompositeOperator, DiagonalOperator, LinearOperator

if TYPE_CHECKING:
    from pet_dl.geometry import ImageGeometry, SinogramGeometry
    from pet_dl.projector import SinogramLORs

__all__ = [
    "GaussianResolution",
    "PETForwardModel",
    "SinogramProjector",
    "attenuation_factors",
    "attenuation_with",
    "gaussian_kernel_1d",
]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


# --------------------------------------------------------------------------- projector
class SinogramProjector(LinearOperator):
    """Joseph projector from an image grid to a sinogram layout (optionally TOF).

    Maps ``(*batch, nx, ny, nz)`` (image units, e.g. Bq/mL) to line integrals
    ``(*batch, num_planes, num_views, num_radial[, num_tof_bins])`` (image units x mm).
    The LORs come from the geometry (crystal pairs, DOI included) as a
    :class:`pet_dl.projector.SinogramLORs`: the views' transaxial endpoints ``(V, R, 2)``
    and the planes' z ``(P,)``, non-persistent buffers (``.to(device)`` moves them),
    validated once here. They are float64 (about 1 MB for the mMR): float32 endpoints
    flip the principal axis of LORs at 45 degrees, changing their projection by up to
    0.5 % (tests/test_sinogram_lors.py). No full ``(P, V, R, 3)`` endpoint array is
    stored: a subset of views copies only its views' ``(v, R, 2)`` rows. Projections
    run in the input's dtype. TOF is used when ``sinogram.tof`` is true.

    Args:
        sinogram: the sinogram layout.
        image: the image grid.
        views: optional view indices (LongTensor) to keep, in this order (a subset).
    """

    def __init__(
        self,
        sinogram: SinogramGeometry,
        image: ImageGeometry,
        views: torch.Tensor | Sequence[int] | None = None,
    ) -> None:
        from pet_dl.projector import SinogramLORs

        view_index = None
        if views is not None:
            view_index = torch.as_tensor(views, dtype=torch.long).reshape(-1)
            n = sinogram.num_views
            if view_index.numel() == 0:
                raise ValueError("SinogramProjector: views must not be empty")
            if int(view_index.min()) < 0 or int(view_index.max()) >= n:
                raise IndexError(f"SinogramProjector: view indices must lie in [0, {n})")
        lors = SinogramLORs.from_geometry(sinogram, view_index, dtype=torch.float64)
        self.tof = sinogram.scanner.tof if sinogram.tof else None
        if sinogram.tof and self.tof is None:
            raise GeometryError("sinogram.tof is set but the scanner has no TOF parameters")
        shape = lors.shape + ((self.tof.num_bins,) if self.tof is not None else ())
        super().__init__(tuple(image.shape), shape)
        self.sinogram = sinogram
        self.image = image
        self.views = view_index
        for name, t in zip(("xy_start", "xy_end", "z_start", "z_end"), lors.parts()):
            self.register_buffer(name, t.contiguous(), persistent=False)
        self._lors_cache = lors
        self._origin = tuple(float(v) for v in image.origin_mm)
        self._voxel = tuple(float(v) for v in image.voxel_size_mm)

    @property
    def lors(self) -> SinogramLORs:
        """The LORs as a :class:`pet_dl.projector.SinogramLORs` (this module's buffers)."""
        from pet_dl.projector import SinogramLORs

        parts = (self.xy_start, self.xy_end, self.z_start, self.z_end)
        cached = self._lors_cache
        if not all(a is b for a, b in zip(parts, cached.parts())):  # moved or cast by .to()
            cached = SinogramLORs(*parts)
            self._lors_cache = cached
        return cached

    @property
    def lor_start(self) -> torch.Tensor:
        """Materialised LOR starts ``(P, V, R, 3)``, mm, float32 (a new tensor: large in 3D)."""
        return self.lors.endpoints(dtype=torch.float32)[0]

    @property
    def lor_end(self) -> torch.Tensor:
        """Materialised LOR ends ``(P, V, R, 3)``, mm, float32 (a new tensor: large in 3D)."""
        return self.lors.endpoints(dtype=torch.float32)[1]

    def reference(self) -> tuple[torch.dtype, torch.device]:
        """float32 (the working dtype; the float64 LOR parts are geometry, not data) and
        the device of the LORs."""
        return torch.float32, self.xy_start.device

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        from pet_dl.projector import sinogram_forward

        lors = self.lors.to(device=x.device)
        return sinogram_forward(x, lors, self._origin, self._voxel, self.tof)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        from pet_dl.projector import sinogram_back

        lors = self.lors.to(device=y.device)
        return sinogram_back(y, lors, self.in_shape, self._origin, self._voxel, self.tof)

    @property
    def view_dim(self) -> int:
        """The (negative) dimension of views in a sinogram: -2 non-TOF, -3 TOF."""
        return -3 if self.tof is not None else -2

    def subset(self, views: torch.Tensor | Sequence[int]) -> SinogramProjector:
        """The projector restricted to ``views`` (indices into this projector's views).

        Copies only those views' transaxial endpoints (``(v, R, 2)``, kilobytes).
        """
        views = torch.as_tensor(views, dtype=torch.long).reshape(-1)
        n = self.out_shape[1]
        if views.numel() == 0 or int(views.min()) < 0 or int(views.max()) >= n:
            raise IndexError(f"SinogramProjector.subset: view indices must lie in [0, {n})")
        absolute = views if self.views is None else self.views[views]
        return SinogramProjector(self.sinogram, self.image, absolute).to(self.xy_start.device)

    def without_tof(self) -> SinogramProjector:
        """The same LORs without TOF (``self`` when already non-TOF), on the same device."""
        if self.tof is None:
            return self
        return SinogramProjector(replace(self.sinogram, tof=False), self.image, self.views).to(
            self.xy_start.device
        )

    def extra_repr(self) -> str:
        tof = f", tof_bins={self.tof.num_bins}" if self.tof is not None else ""
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}{tof}"


# --------------------------------------------------------------------------- resolution
def gaussian_kernel_1d(sigma_voxels: float, max_radius: int | None = None) -> torch.Tensor:
    """Point-sampled Gaussian, normalised to sum 1, float64, length ``2 r + 1``.

    Args:
        sigma_voxels: standard deviation in voxels (> 0).
        max_radius: crop the kernel to this radius (after normalising; taps further out
            never reach another voxel of an axis of ``max_radius + 1`` voxels).
    """
    radius = max(1, math.ceil(4.0 * sigma_voxels))
    i = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (i / sigma_voxels) ** 2)
    k = k / k.sum()
    if max_radius is not None and radius > max_radius:
        k = k[radius - max_radius : radius + max_radius + 1]
    return k


def fwhm_per_axis(fwhm_mm: float | Sequence[float]) -> tuple[float, float, float]:
    """One FWHM (mm) for all three axes, or three; each finite and >= 0.

    Raises:
        ValueError: not one or three values, or a negative / non-finite one.
    """
    if isinstance(fwhm_mm, (int, float)):
        fwhm = (float(fwhm_mm),) * 3
    else:
        fwhm = tuple(float(f) for f in fwhm_mm)
        if len(fwhm) != 3:
            raise ValueError(f"fwhm_mm must be one number or 3 (per axis), got {fwhm_mm!r}")
    if any(not math.isfinite(f) or f < 0 for f in fwhm):
        raise ValueError(f"fwhm_mm must be finite and >= 0, got {fwhm_mm!r}")
    return fwhm  # type: ignore[return-value]


class GaussianResolution(LinearOperator):
    """Separable image-space Gaussian blur, per-axis FWHM in mm; exactly self-adjoint.

    Maps ``(*batch, nx, ny, nz)`` to the same shape (units unchanged). Kernels are
    point-sampled Gaussians normalised to sum 1 (so an interior image keeps its sum),
    truncated at 4 sigma, applied with zero padding; the operator is a symmetric matrix.
    Axes with one voxel or zero FWHM are left alone. The kernels are float64 buffers,
    cast to the input's dtype on use.

    Args:
        image: the image grid (shape and voxel size in mm).
        fwhm_mm: FWHM in mm, one value for all axes or one per axis (>= 0).
    """

    def __init__(self, image: ImageGeometry, fwhm_mm: float | Sequence[float]) -> None:
        shape = tuple(int(s) for s in image.shape)
        super().__init__(shape, shape)
        fwhm = fwhm_per_axis(fwhm_mm)
        self.fwhm_mm = fwhm
        self.image = image
        self._axes: list[int] = []
        for axis, (n, f, v) in enumerate(zip(shape, fwhm, image.voxel_size_mm)):
            if n == 1 or f == 0:
                continue
            k = gaussian_kernel_1d(f / FWHM_PER_SIGMA / float(v), max_radius=n - 1)
            self.register_buffer(f"kernel{axis}", k, persistent=False)  # float64
            self._axes.append(axis)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-3]
        out = x.reshape(-1, 1, *self.in_shape)
        for axis in self._axes:
            k = getattr(self, f"kernel{axis}").to(dtype=x.dtype, device=x.device)
            r = (k.numel() - 1) // 2
            view = [1, 1, 1, 1, 1]
            view[2 + axis] = k.numel()
            padding = [0, 0, 0]
            padding[axis] = r
            out = F.conv3d(out, k.reshape(view), padding=tuple(padding))
        return out.reshape(*batch, *self.in_shape)

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._forward(y)

    def extra_repr(self) -> str:
        return f"shape={self.in_shape}, fwhm_mm={self.fwhm_mm}"


# --------------------------------------------------------------------------- attenuation
def attenuation_factors(
    mu_per_mm: torch.Tensor, sinogram: SinogramGeometry, image: ImageGeometry
) -> torch.Tensor:
    """Attenuation factors ``exp(-P mu)`` with the same Joseph projector.

    Args:
        mu_per_mm: linear attenuation coefficients at 511 keV, ``(nx, ny, nz)``, 1/mm.
        sinogram: the sinogram layout (for TOF, the factors are repeated over TOF bins).
        image: the grid of ``mu_per_mm``.

    Returns:
        Survival probabilities in (0, 1], shape ``sinogram.shape``, dtype of ``mu_per_mm``.
    """
    if not isinstance(mu_per_mm, torch.Tensor):
        raise TypeError(f"mu_per_mm must be a torch.Tensor, got {type(mu_per_mm).__name__}")
    projector = SinogramProjector(replace(sinogram, tof=False), image)
    return attenuation_with(projector.to(mu_per_mm.device), mu_per_mm, sinogram)


def attenuation_with(
    projector: SinogramProjector, mu_per_mm: torch.Tensor, sinogram: SinogramGeometry
) -> torch.Tensor:
    """:func:`attenuation_factors` with an existing projector (its LORs are reused; TOF
    is ignored): ``exp(-P mu)`` of shape ``sinogram.shape``."""
    if not mu_per_mm.is_floating_point():
        mu_per_mm = mu_per_mm.float()
    projector = projector.without_tof()
    with torch.no_grad():
        factors = torch.exp(-projector(mu_per_mm))
    if sinogram.tof:
        factors = factors.unsqueeze(-1).expand(*sinogram.shape).contiguous()
    return factors


# --------------------------------------------------------------------------- the model
def _as_buffer(t: torch.Tensor | None, shape: tuple[int, ...], name: str) -> torch.Tensor | None:
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"PETForwardModel {name} must be a tensor or None, got {type(t).__name__}")
    n = len(shape)
    ok = t.dim() in (n, n + 1) and all(a in (b, 1) for a, b in zip(t.shape[t.dim() - n :], shape))
    if not ok:
        raise GeometryError(
            f"PETForwardModel {name} must have shape {shape} or (B, *{shape}), got {tuple(t.shape)}"
        )
    return t


class PETForwardModel(nn.Module):
    """``ybar = calibration * multiplicative * P(G x) + additive`` (x in Bq/mL).

    Args:
        projector: image ``(nx, ny, nz)`` -> sinogram ``(*sino)`` operator, usually a
            :class:`SinogramProjector` (line integrals in mm); subsets need ``subset``.
        multiplicative: attenuation x normalisation, ``(*sino)`` or ``(B, *sino)``
            (dimensionless); None: ones.
        additive: expected scatter + randoms counts, ``(*sino)`` or ``(B, *sino)``;
            None: zero.
        resolution: image-space resolution model ``G`` or None.
        calibration: expected counts per (Bq/mL x mm), a number or a ``(B,)`` tensor.

    A model holds no state that ``forward`` changes; to change attenuation build a new
    one. Its tensors are non-persistent buffers (``.to(device)`` moves them).
    """

    def __init__(
        self,
        projector: LinearOperator,
        multiplicative: torch.Tensor | None = None,
        additive: torch.Tensor | None = None,
        resolution: LinearOperator | None = None,
        calibration: float | torch.Tensor = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(projector, LinearOperator):
            raise TypeError(f"projector must be a LinearOperator, got {type(projector).__name__}")
        sino = projector.out_shape
        if resolution is not None and resolution.out_shape != projector.in_shape:
            raise GeometryError(
                f"resolution model shape {resolution.out_shape} does not match the projector's "
                f"image shape {projector.in_shape}"
            )
        multiplicative = _as_buffer(multiplicative, sino, "multiplicative")
        additive = _as_buffer(additive, sino, "additive")
        _, device = projector.reference()
        dtype = multiplicative.dtype if multiplicative is not None else torch.get_default_dtype()
        cal = torch.as_tensor(calibration, dtype=dtype)
        if cal.dim() > 1 or not bool(torch.isfinite(cal).all()) or bool((cal <= 0).any()):
            raise ValueError(
                "calibration must be a positive finite number or a (B,) tensor of them"
            )
        batch_sizes = {
            t.shape[0] for t in (multiplicative, additive) if t is not None and t.dim() > len(sino)
        }
        if cal.dim() == 1:
            batch_sizes.add(cal.shape[0])
        if len(batch_sizes) > 1:
            raise GeometryError(f"PETForwardModel: inconsistent batch sizes {sorted(batch_sizes)}")
        self.batch_size: int | None = batch_sizes.pop() if batch_sizes else None
        self.projector = projector
        self.resolution = resolution
        self.in_shape = projector.in_shape
        self.out_shape = sino
        self.register_buffer("multiplicative", multiplicative, persistent=False)
        self.register_buffer("additive", additive, persistent=False)
        self.register_buffer("calibration", cal.to(device), persistent=False)
        # calibration and multiplicative factors as two diagonals: c * m is never stored
        # (one sinogram less; subsets share views of m, see subsets())
        scale = cal.reshape(cal.shape + (1,) * len(sino)).to(device)
        inner: LinearOperator = (
            projector if resolution is None else CompositeOperator(projector, resolution)
        )
        if multiplicative is not None:
            inner = CompositeOperator(DiagonalOperator(multiplicative.to(device), sino), inner)
        self.linear: LinearOperator = CompositeOperator(DiagonalOperator(scale, sino), inner)
        self.register_buffer("_sensitivity", None, persistent=False)
        self._subsets: dict[tuple[int, str], list[PETForwardModel]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expected counts ``(B?, *sino)`` from activity ``x (B?, nx, ny, nz)`` in Bq/mL."""
        ybar = self.linear(x)
        if self.additive is not None:
            ybar = ybar + self.additive
        return ybar

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint of the linear part: ``(B?, *sino) -> (B?, nx, ny, nz)``."""
        return self.linear.adjoint(y)

    def sensitivity(self) -> torch.Tensor:
        """``adjoint(ones)``: ``(nx, ny, nz)`` or ``(B, nx, ny, nz)``, counts per Bq/mL.

        Computed once per model instance (without autograd) and cached.
        """
        if self._sensitivity is None:
            dtype, device = self.linear.reference()
            with torch.no_grad():
                ones = torch.ones(self.out_shape, dtype=dtype, device=device)
                self._sensitivity = self.adjoint(ones)
        return self._sensitivity

    @property
    def view_dim(self) -> int:
        """Dimension of views in the sinogram (negative index): -2, or -3 for TOF."""
        return getattr(self.projector, "view_dim", -2)

    def _subset_views(self, num_subsets: int) -> list[torch.Tensor]:
        proj = self.projector
        if not isinstance(proj, SinogramProjector):
            raise TypeError(
                f"subsets need a SinogramProjector, this model's projector is {type(proj).__name__}"
            )
        num_views = proj.out_shape[1]
        if isinstance(num_subsets, bool) or not isinstance(num_subsets, int):
            raise TypeError(f"num_subsets must be an int, got {type(num_subsets).__name__}")
        if not 1 <= num_subsets <= num_views:
            raise ValueError(f"num_subsets must be in [1, {num_views}] (views), got {num_subsets}")
        if proj.views is None:
            return [v.to(torch.long) for v in proj.sinogram.view_subsets(num_subsets)]
        return [torch.arange(k, num_views, num_subsets) for k in range(num_subsets)]

    def subsets(self, num_subsets: int) -> list[PETForwardModel]:
        """``num_subsets`` models, each restricted to an interleaved subset of views.

        The list is cached per number of subsets and device, so each subset's
        :meth:`sensitivity` is computed once. The sum of the subset sensitivities is the
        full sensitivity. Subset ``k`` holds views ``k, k + S, ...``: its multiplicative
        and additive terms are strided views of this model's (no copies), and its
        projector copies only its views' transaxial LOR endpoints.
        """
        key = (num_subsets, str(self.calibration.device))
        if key in self._subsets:
            return self._subsets[key]
        dim = self.view_dim
        out = []
        for views in self._subset_views(num_subsets):

            def take(t: torch.Tensor | None, views: torch.Tensor = views) -> torch.Tensor | None:
                if t is None:
                    return None
                if t.shape[dim] == 1:  # broadcast over views
                    return t
                return _view_slice(t, dim, views)

            out.append(
                PETForwardModel(
                    self.projector.subset(views),  # type: ignore[union-attr]
                    multiplicative=take(self.multiplicative),
                    additive=take(self.additive),
                    resolution=self.resolution,
                    calibration=self.calibration,
                )
            )
        self._subsets[key] = out
        return out

    def subset_data(self, y: torch.Tensor, k: int, num_subsets: int) -> torch.Tensor:
        """Sinogram ``y (B?, *sino)`` restricted to subset ``k`` of ``num_subsets`` (views)."""
        views = self._subset_views(num_subsets)
        if not 0 <= k < num_subsets:
            raise IndexError(f"subset index {k} out of range for {num_subsets} subsets")
        if (
            y.dim() < len(self.out_shape)
            or tuple(y.shape[y.dim() - len(self.out_shape) :]) != self.out_shape
        ):
            raise GeometryError(
                f"subset_data expects a sinogram (*batch, {self.out_shape}), got {tuple(y.shape)}"
            )
        return _view_slice(y, self.view_dim, views[k])


def _view_slice(t: torch.Tensor, dim: int, views: torch.Tensor) -> torch.Tensor:
    """``t`` restricted to ``views`` along dimension ``dim`` (negative): a strided view (no
    copy) when the views are evenly spaced, as interleaved subsets are; else a copy."""
    n = views.numel()
    first = int(views[0]) if n else 0
    step = int(views[1] - views[0]) if n > 1 else 1
    if n and step > 0 and bool((views == first + step * torch.arange(n)).all()):
        index = (slice(None),) * (t.dim() + dim) + (slice(first, first + step * (n - 1) + 1, step),)
        return t[index]
    return t.index_select(t.dim() + dim, views.to(t.device))
