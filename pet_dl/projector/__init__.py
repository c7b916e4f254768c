"""Joseph projector: line integrals of an image along LORs, and the exact transpose.

See ``docs/projector.md`` for the conventions (mm, voxel centres, TOF bins) and backends.
"""

from pet_dl.projector.factored import SinogramLORs, sinogram_back, sinogram_forward
from pet_dl.projector.joseph import (
    BACKENDS,
    joseph_back,
    joseph_back_tof,
    joseph_back_tof_listmode,
    joseph_forward,
    joseph_forward_tof,
    joseph_forward_tof_listmode,
)

__all__ = [
    "BACKENDS",
    "SinogramLORs",
    "joseph_back",
    "joseph_back_tof",
    "joseph_back_tof_listmode",
    "joseph_forward",
    "joseph_forward_tof",
    "joseph_forward_tof_listmode",
    "sinogram_back",
    "sinogram_forward",
]
