"""NIfTI images <-> ``(nx, ny, nz)`` tensors on an :class:`ImageGeometry` (RAS+, mm).

The world frame is NIfTI RAS+ (see ``docs/architecture.md``), so a grid's affine is
``diag(voxel_size) + origin``. On reading, axis permutations and flips (e.g. LPS files
from DICOM converters) are undone so that the array is in that orientation; rotated or
oblique affines are refused rather than silently resampled.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from pet_dl.geometry import ImageGeometry
from pet_dl.io import ImageFileError
from pet_dl.io.atomic import atomic_path

_LENGTH_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 1e-3, "unknown": 1.0}


def _orient(data: np.ndarray, affine: np.ndarray, path: Path) -> tuple[np.ndarray, ImageGeometry]:
    """Permute / flip ``data`` (3D) so that its affine becomes diagonal with positive steps."""
    m = affine[:3, :3]
    scale = np.abs(m).max()
    nonzero = np.abs(m) > 1e-4 * scale
    if not (nonzero.sum(axis=0) == 1).all() or not (nonzero.sum(axis=1) == 1).all():
        raise ImageFileError(
            f"NIfTI {path}: rotated or oblique affine {np.round(m, 4).tolist()}; pet_dl needs "
            "axis-aligned grids -- resample it to an axis-aligned RAS grid first"
        )
    # world axis of each array axis
    world_of = [int(np.nonzero(nonzero[:, k])[0][0]) for k in range(3)]
    origin = affine[:3, 3].astype(np.float64).copy()
    steps = np.array([m[world_of[k], k] for k in range(3)])
    for k in range(3):
        if steps[k] < 0:
            origin[world_of[k]] += steps[k] * (data.shape[k] - 1)
            data = np.flip(data, axis=k)
            steps[k] = -steps[k]
    order = [world_of.index(w) for w in range(3)]
    data = np.transpose(data, order)
    voxel = tuple(float(steps[order[w]]) for w in range(3))
    geometry = ImageGeometry(
        shape=tuple(int(n) for n in data.shape),  # type: ignore[arg-type]
        voxel_size_mm=voxel,  # type: ignore[arg-type]
        origin_mm=tuple(float(v) for v in origin),  # type: ignore[arg-type]
    )
    return data, geometry


def load_nifti(path: str | os.PathLike[str]) -> tuple[torch.Tensor, ImageGeometry]:
    """Read a NIfTI-1/2 image (``.nii`` or ``.nii.gz``).

    Scale slope / intercept are applied. A 2D file, or a 3D file with one slice, becomes
    ``(nx, ny, 1)``; a 4D file must have a single volume. Lengths in metres or microns
    are converted to mm.

    Returns:
        ``(image, geometry)``: float32 tensor ``(nx, ny, nz)`` in the file's units (Bq/mL
        for activity, 1/mm for mu-maps written by pet_dl), and its grid.

    Raises:
        ImageFileError: missing, truncated or corrupt file, several volumes, non-finite
            values, or a rotated / oblique affine.
    """
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise ImageFileError(f"NIfTI {p}: no such file")
    try:
        img = nib.load(str(p))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # nibabel raises many types for bad files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageFileError(
            f"NIfTI {p}: cannot read it (truncated or corrupt?): {first}"
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise ImageFileError(f"NIfTI {p}: need one 2D or 3D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ImageFileError(f"NIfTI {p}: contains NaN or infinite values")
    affine = np.asarray(img.affine, dtype=np.float64)
    try:
        unit = img.header.get_xyzt_units()[0]
    except Exception:  # NIfTI-2 headers and odd files: assume mm
        unit = "mm"
    affine[:3, :] *= _LENGTH_TO_MM.get(str(unit), 1.0)
    data, geometry = _orient(data, affine, p)
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), geometry


def save_nifti(
    path: str | os.PathLike[str],
    image: torch.Tensor | np.ndarray,
    geometry: ImageGeometry,
    units: str = "Bq/mL",
) -> None:
    """Write ``image`` ``(nx, ny, nz)`` as NIfTI-1 (gzip when ``path`` ends in ``.gz``), atomically.

    The affine is ``geometry.affine()`` (RAS+, mm) in both the sform and the qform; data
    are float32; ``units`` goes into the header's description field.

    Raises:
        ValueError: the image shape differs from ``geometry.shape`` or it has NaN / Inf.
    """
    if isinstance(image, torch.Tensor):
        array = image.detach().to("cpu", torch.float32).numpy()
    else:
        array = np.asarray(image, dtype=np.float32)
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"image shape {tuple(array.shape)} != grid shape {geometry.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"image for {path} contains NaN or infinite values")
    name = str(path)
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise ValueError(f"NIfTI file name must end in .nii or .nii.gz, got {name}")
    import nibabel as nib

    affine = geometry.affine()
    img = nib.Nifti1Image(np.ascontiguousarray(array), affine)
    img.set_sform(affine, code=1)  # scanner-based
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    img.header["descrip"] = units.encode()[:79]
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
