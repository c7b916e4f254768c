"""Image grid: shape, voxel size and origin in the world frame (mm), NIfTI RAS+ affine."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .scanner import ScannerGeometry


@dataclass(frozen=True)
class ImageGeometry:
    """A regular voxel grid in the world frame.

    Tensor axis ``k`` of an image ``(nx, ny, nz)`` is world axis ``k``. Voxel
    ``(i, j, k)`` has its centre at ``origin_mm + (i, j, k) * voxel_size_mm`` (mm), so
    ``origin_mm`` is the centre of voxel ``(0, 0, 0)``. A 2D image is ``(nx, ny, 1)`` in
    the plane z = 0.

    Example::

        >>> from pet_dl.geometry import ImageGeometry
        >>> grid = ImageGeometry.centered((4, 4, 1), (2.0, 2.0, 2.0))
        >>> grid
        ImageGeometry(shape=(4, 4, 1), voxel_size_mm=(2.0, 2.0, 2.0), origin_mm=(-3.0, -3.0, 0.0))
        >>> grid.voxel_centers(0)
        array([-3., -1.,  1.,  3.])
        >>> grid.affine()[:3, 3]   # NIfTI RAS+: voxel index -> world mm
        array([-3., -3.,  0.])
    """

    shape: tuple[int, int, int]
    voxel_size_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        shape = _triple("shape", self.shape)
        for n in shape:
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"image shape must be 3 positive ints, got {tuple(shape)}")
        object.__setattr__(self, "shape", tuple(int(n) for n in shape))
        vox = tuple(float(v) for v in _triple("voxel_size_mm", self.voxel_size_mm))
        if not all(math.isfinite(v) and v > 0 for v in vox):
            raise ValueError(f"voxel_size_mm must be 3 positive finite numbers, got {vox}")
        object.__setattr__(self, "voxel_size_mm", vox)
        origin = tuple(float(v) for v in _triple("origin_mm", self.origin_mm))
        if not all(math.isfinite(v) for v in origin):
            raise ValueError(f"origin_mm must be 3 finite numbers, got {origin}")
        object.__setattr__(self, "origin_mm", origin)

    @classmethod
    def centered(
        cls, shape: Sequence[int], voxel_size_mm: float | Sequence[float]
    ) -> ImageGeometry:
        """A grid whose centre is the world origin (the scanner centre).

        Args:
            shape: (nx, ny, nz).
            voxel_size_mm: one size for all axes or (dx, dy, dz), mm.
        """
        shape = tuple(shape)
        if isinstance(voxel_size_mm, (int, float)):
            vox = (float(voxel_size_mm),) * 3
        else:
            vox = tuple(float(v) for v in voxel_size_mm)
        if len(shape) != 3 or len(vox) != 3:
            raise ValueError(f"need 3 values for shape and voxel size, got {shape} and {vox}")
        origin = tuple(-(n - 1) / 2.0 * v for n, v in zip(shape, vox))
        return cls(shape=shape, voxel_size_mm=vox, origin_mm=origin)  # type: ignore[arg-type]

    @property
    def num_voxels(self) -> int:
        """nx * ny * nz."""
        return self.shape[0] * self.shape[1] * self.shape[2]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (cm^3)."""
        dx, dy, dz = self.voxel_size_mm
        return dx * dy * dz / 1000.0

    def voxel_centers(self, axis: int) -> np.ndarray:
        """Centres of the voxels along ``axis`` (0, 1 or 2), mm, shape ``(shape[axis],)``."""
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        return self.origin_mm[axis] + np.arange(self.shape[axis]) * self.voxel_size_mm[axis]

    def bounds_mm(self) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        """(low, high) outer voxel edges along each axis, mm."""
        out = []
        for k in range(3):
            half = self.voxel_size_mm[k] / 2.0
            lo = self.origin_mm[k] - half
            out.append((lo, lo + self.shape[k] * self.voxel_size_mm[k]))
        return tuple(out)  # type: ignore[return-value]

    def affine(self) -> np.ndarray:
        """Voxel index -> world mm, (4, 4) float64; the world frame is NIfTI RAS+ here."""
        a = np.eye(4)
        a[0, 0], a[1, 1], a[2, 2] = self.voxel_size_mm
        a[:3, 3] = self.origin_mm
        return a

    def check_fits(self, scanner: ScannerGeometry) -> None:
        """Raise ValueError when this grid does not fit the scanner's field of view.

        Voxels outside the detector cylinder are never crossed by a LOR, so grids a bit
        larger than the bore are allowed (the vendors' own mMR grid, 344 voxels of
        2.086 mm, is wider than the bore). Rejected: a grid with a voxel farther than
        twice the detector radius from the axis (a unit mistake or a far off-centre
        grid), a grid with no voxel centre inside the detector cylinder, and voxel centres
        axially outside the rings' extent (``num_rings * ring_spacing_mm``, centred on 0)
        by more than half a voxel.
        """
        radius = scanner.detector_radius_mm
        (x0, x1), (y0, y1), _ = self.bounds_mm()
        corner = math.hypot(max(abs(x0), abs(x1)), max(abs(y0), abs(y1)))
        if corner > 2.0 * radius:
            raise ValueError(
                f"image grid reaches {corner:.1f} mm from the axis, more than twice the"
                f" detector radius of scanner {scanner.name!r} ({radius:.1f} mm): check the"
                " voxel size (mm) and origin"
            )
        # nearest voxel centre to the axis
        nearest = []
        for axis in (0, 1):
            c = self.voxel_centers(axis)
            nearest.append(float(np.min(np.abs(c))) if (c.min() > 0 or c.max() < 0) else 0.0)
        if math.hypot(*nearest) >= radius:
            raise ValueError(
                f"image grid has no voxel inside the detector cylinder of scanner"
                f" {scanner.name!r} (radius {radius:.1f} mm): check origin_mm"
            )
        half_axial = scanner.axial_fov_mm / 2.0 + self.voxel_size_mm[2] / 2.0
        z = self.voxel_centers(2)
        if z.min() < -half_axial - 1e-6 or z.max() > half_axial + 1e-6:
            raise ValueError(
                f"image grid spans z = {z.min():.2f} .. {z.max():.2f} mm (voxel centres), outside"
                f" the axial field of view of scanner {scanner.name!r}"
                f" ({scanner.num_rings} rings: +-{scanner.axial_fov_mm / 2:.2f} mm)"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return {
            "shape": list(self.shape),
            "voxel_size_mm": list(self.voxel_size_mm),
            "origin_mm": list(self.origin_mm),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageGeometry:
        """Inverse of :meth:`to_dict`."""
        return cls(
            shape=tuple(d["shape"]),
            voxel_size_mm=tuple(d["voxel_size_mm"]),
            origin_mm=tuple(d["origin_mm"]),
        )


def _triple(name: str, value: object) -> tuple:
    try:
        out = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be a sequence of 3 values, got {value!r}") from None
    if len(out) != 3:
        raise ValueError(f"{name} must have 3 values, got {len(out)}: {out}")
    return out
