"""File formats: NIfTI and STIR Interfile images, HDF5 scan files, CT (DICOM, HU -> mu).

Everything is importable from here (``from pet_dl.io import load_image, read_scan``);
the submodules are imported on first use, so ``import pet_dl.io`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from pet_dl.errors import PetDLError


class ImageFileError(PetDLError):
    """An image file is missing, truncated, corrupt or in an unsupported layout."""


_EXPORTS = {
    "atomic_path": "atomic",
    "atomic_write_bytes": "atomic",
    "atomic_write_text": "atomic",
    "load_nifti": "nifti",
    "save_nifti": "nifti",
    "load_image": "interfile",
    "read_interfile_header": "interfile",
    "read_interfile_image": "interfile",
    "read_sinogram_header": "interfile",
    "read_petsird": "petsird",
    "read_stir_geometry": "stir_sinogram",
    "read_stir_sinogram": "stir_sinogram",
    "write_stir_sinogram": "stir_sinogram",
    "ScanFileError": "scanfile",
    "SCAN_FORMAT_VERSION": "scanfile",
    "read_scan": "scanfile",
    "read_truth": "scanfile",
    "write_scan": "scanfile",
    "check_mu_units": "ct",
    "hu_to_mu": "ct",
    "mu_per_cm_to_per_mm": "ct",
    "read_ct_series": "ct",
    "resample_to_grid": "ct",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pet_dl.io' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pet_dl.io.{module}"), name)


__all__ = ["ImageFileError", *_EXPORTS]
