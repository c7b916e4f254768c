"""Attenuation maps from CT: Hounsfield units -> mu at 511 keV, resampling to the PET
grid (:func:`pet_dl.geometry.resample_to_grid`), reading a CT DICOM series; and unit
checks for mu-maps.

HU -> mu uses the bilinear model of Carney et al. (2006), "Method for transforming CT
images for attenuation correction in PET/CT imaging", Med. Phys. 33(4):976-983,
doi:10.1118/1.2174132 (the kVp-dependent refinement of Kinahan et al. 1998, Med. Phys.
25(10):2046-2053, and Burger et al. 2002). Below the break point the voxel is taken as an
air-water mixture, ``mu = mu_water * (HU + 1000) / 1000``, so -1000 HU -> 0 and
0 HU -> mu_water = 0.0096 /mm; above it as a water-bone mixture whose slope depends on
the tube voltage: ``mu = a * (HU + 1000) + b`` (Carney's Table I, in 1/cm). The break
point (about +50 HU) is where the two lines meet.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pet_dl.errors import UnitsError
from pet_dl.geometry import ImageGeometry
from pet_dl.geometry.resample import resample_to_grid  # noqa: F401  (also pet_dl.io.ct.resample_to_grid)
from pet_dl.io import ImageFileError

MU_WATER_PER_CM = 0.096
# kVp -> (a [1/cm per HU], b [1/cm]) of the bone line, Carney et al. 2006, Table I.
CARNEY_BONE_LINE = {
    80.0: (3.64e-5, 6.26e-2),
    100.0: (4.43e-5, 5.44e-2),
    110.0: (4.92e-5, 4.88e-2),
    120.0: (5.10e-5, 4.71e-2),
    130.0: (5.51e-5, 4.24e-2),
    140.0: (5.64e-5, 4.08e-2),
}


def _bone_line(kvp: float) -> tuple[float, float]:
    kvps = sorted(CARNEY_BONE_LINE)
    if not kvps[0] <= kvp <= kvps[-1]:
        raise ValueError(
            f"tube voltage {kvp} kVp outside the model's range {kvps[0]:g}-{kvps[-1]:g}"
        )
    for lo, hi in zip(kvps, kvps[1:]):
        if lo <= kvp <= hi:
            t = (kvp - lo) / (hi - lo)
            (a0, b0), (a1, b1) = CARNEY_BONE_LINE[lo], CARNEY_BONE_LINE[hi]
            return a0 + t * (a1 - a0), b0 + t * (b1 - b0)
    return CARNEY_BONE_LINE[kvps[-1]]  # pragma: no cover


def hu_to_mu(hu: torch.Tensor, kvp: float = 120.0) -> torch.Tensor:
    """CT numbers (HU) -> linear attenuation at 511 keV (1/mm), bilinear (Carney 2006).

    Args:
        hu: any shape, Hounsfield units.
        kvp: CT tube voltage, 80-140 kV (table values interpolated linearly).

    Returns:
        Same shape, 1/mm, >= 0 (values below -1000 HU clip to 0).
    """
    if not torch.is_floating_point(hu):
        hu = hu.to(torch.float32)
    a, b = _bone_line(float(kvp))
    x = hu + 1000.0
    soft = MU_WATER_PER_CM / 1000.0 * x
    bone = a * x + b
    break_x = b / (MU_WATER_PER_CM / 1000.0 - a)
    mu_per_cm = torch.where(x <= break_x, soft, bone)
    return mu_per_cm.clamp_min(0.0) / 10.0


def mu_per_cm_to_per_mm(mu_per_cm: torch.Tensor) -> torch.Tensor:
    """mu in 1/cm (STIR, SIRF, many vendors) -> 1/mm (pet_dl)."""
    return mu_per_cm / 10.0


def check_mu_units(mu: torch.Tensor, name: str = "mu-map") -> None:
    """Raise :class:`UnitsError` unless ``mu`` looks like a 511 keV mu-map in 1/mm.

    Flags NaN / Inf, values typical of Hounsfield units (below -1 or above 5), negative
    values, and a 1/cm map: water is 0.0096 /mm but 0.096 /cm, so a map whose 95th
    percentile of positive voxels exceeds 0.04 is taken as 1/cm.
    """
    if not torch.isfinite(mu).all():
        raise UnitsError(f"{name} contains NaN or infinite values")
    lo, hi = float(mu.min()), float(mu.max())
    if lo < -1.0 or hi > 5.0:
        raise UnitsError(
            f"{name} ranges {lo:g}..{hi:g}: looks like Hounsfield units; convert with "
            "pet_dl.io.ct.hu_to_mu (mu must be in 1/mm at 511 keV)"
        )
    if lo < 0.0:
        raise UnitsError(f"{name} has negative values (min {lo:g}); mu must be >= 0 in 1/mm")
    positive = mu[mu > 0]
    if positive.numel() == 0:
        return
    q = float(
        torch.quantile(positive.flatten()[:: max(1, positive.numel() // 1_000_000)].float(), 0.95)
    )
    if q > 0.04:
        raise UnitsError(
            f"{name}: typical value {q:.3g} looks like 1/cm (water is 0.096 /cm = 0.0096 /mm); "
            "convert with pet_dl.io.ct.mu_per_cm_to_per_mm"
        )


def read_ct_series(
    files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> tuple[torch.Tensor, ImageGeometry]:
    """Read an axial CT DICOM series into Hounsfield units on an RAS+ grid.

    Pixel values are mapped with RescaleSlope / RescaleIntercept. DICOM patient
    coordinates (LPS) become pet_dl world coordinates (RAS+: x and y negated); slices are
    sorted by position along z.

    Args:
        files: a folder (every file in it that pydicom reads) or a list of files.

    Returns:
        ``(hu, geometry)``: float32 ``(nx, ny, nz)`` in HU, and the grid (mm).

    Raises:
        ImageFileError: no CT slices, several series, non-axial or oblique orientation,
            different slice sizes, or uneven slice spacing.
    """
    import pydicom

    if isinstance(files, (str, os.PathLike)):
        folder = Path(files)
        if not folder.is_dir():
            raise ImageFileError(f"CT series {folder}: not a folder")
        paths = sorted(p for p in folder.iterdir() if p.is_file())
        where = str(folder)
    else:
        paths = [Path(p) for p in files]
        where = f"{len(paths)} files"
    slices = []
    for p in paths:
        try:
            ds = pydicom.dcmread(p)
        except Exception:
            continue  # not DICOM (README, DICOMDIR parts, ...)
        if getattr(ds, "Modality", None) == "CT" and "PixelData" in ds:
            slices.append(ds)
    if not slices:
        raise ImageFileError(f"CT series {where}: no CT DICOM slices found")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in slices}
    if len(series) > 1:
        raise ImageFileError(f"CT series {where}: {len(series)} series mixed; pass one series")
    for ds in slices:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        if not np.allclose(iop, [1, 0, 0, 0, 1, 0], atol=1e-4):
            raise ImageFileError(
                f"CT series {where}: orientation {iop.tolist()} is not axial [1,0,0,0,1,0]; "
                "oblique or rotated series are not supported"
            )
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    rows, cols = int(slices[0].Rows), int(slices[0].Columns)
    dr, dc = (float(v) for v in slices[0].PixelSpacing)  # row spacing (y), column spacing (x)
    z = np.array([float(ds.ImagePositionPatient[2]) for ds in slices])
    xy = np.array([[float(v) for v in ds.ImagePositionPatient[:2]] for ds in slices])
    if any(int(ds.Rows) != rows or int(ds.Columns) != cols for ds in slices):
        raise ImageFileError(f"CT series {where}: slices have different sizes")
    if not np.allclose(xy, xy[0], atol=1e-3):
        raise ImageFileError(f"CT series {where}: slices are not aligned (x/y positions differ)")
    if len(z) > 1:
        dz = np.diff(z)
        if dz.min() <= 0 or not np.allclose(dz, dz.mean(), rtol=1e-3, atol=1e-3):
            raise ImageFileError(
                f"CT series {where}: uneven or duplicate slice spacing {np.unique(np.round(dz, 3))}"
            )
        spacing = float(dz.mean())
    else:
        spacing = float(getattr(slices[0], "SliceThickness", 1.0) or 1.0)
    volume = np.empty((cols, rows, len(slices)), dtype=np.float32)
    for k, ds in enumerate(slices):
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        inter = float(getattr(ds, "RescaleIntercept", 0.0))
        pix = ds.pixel_array.astype(np.float32) * slope + inter  # [row (+y LPS), col (+x LPS)]
        volume[:, :, k] = pix.T[::-1, ::-1]  # -> [x RAS, y RAS]
    origin = (
        -(xy[0, 0] + (cols - 1) * dc),
        -(xy[0, 1] + (rows - 1) * dr),
        float(z[0]),
    )
    geometry = ImageGeometry(shape=volume.shape, voxel_size_mm=(dc, dr, spacing), origin_mm=origin)  # type: ignore[arg-type]
    return torch.from_numpy(np.ascontiguousarray(volume)), geometry
