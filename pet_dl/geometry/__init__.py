"""Scanner, sinogram, TOF and image geometry (the lowest layer of pet_dl)."""

from .image import ImageGeometry
from .presets import SCANNER_PRESETS, get_scanner
from .resample import resample_to_grid
from .scanner import ScannerGeometry
from .sinogram import SinogramGeometry, network_geometry_key
from .tof import TOFParameters

__all__ = [
    "SCANNER_PRESETS",
    "ImageGeometry",
    "ScannerGeometry",
    "SinogramGeometry",
    "network_geometry_key",
    "TOFParameters",
    "get_scanner",
    "resample_to_grid",
]
