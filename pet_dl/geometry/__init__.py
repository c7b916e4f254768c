"""Scanner, sinogram, TOF and image geometry (the lowest layer of pet_dl)."""

from .image import ImageGeometry
from .presets import SCANNER_PRESETS, get_scanner
from .resample import resample_to_grid
from .scanner import ScannerGeometry
from .sinogram import SinogramGeometry
from .tof import TOFParameters

__all__ = [
    "SCANNER_PRESETS",
    "ImageGeometry",
    "ScannerGeometry",
    "SinogramGeometry",
    "TOFParameters",
    "get_scanner",
    "resample_to_grid",
]
