"""Time-of-flight parameters: TOF bins along a LOR and the timing resolution in mm."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

#: Speed of light in mm/ps. A coincidence time difference ``dt`` places the event
#: ``c * dt / 2`` from the LOR midpoint, so 1 ps of timing is 0.1499 mm along the LOR.
SPEED_OF_LIGHT_MM_PER_PS = 0.299792458
MM_PER_PS = SPEED_OF_LIGHT_MM_PER_PS / 2.0

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class TOFParameters:
    """TOF binning of a LOR, all lengths in mm along the LOR.

    TOF bin ``k`` (0-based) has its centre at signed distance
    ``(k - (num_bins - 1) / 2) * bin_width_mm + center_offset_mm`` from the LOR midpoint,
    positive towards the LOR end. The TOF kernel is a Gaussian of FWHM ``fwhm_mm``
    truncated at ``num_sigmas`` standard deviations.
    """

    num_bins: int
    bin_width_mm: float
    fwhm_mm: float
    center_offset_mm: float = 0.0
    num_sigmas: float = 3.0

    def __post_init__(self) -> None:
        if isinstance(self.num_bins, bool) or not isinstance(self.num_bins, int):
            raise TypeError(f"TOF num_bins must be an int, got {type(self.num_bins).__name__}")
        if self.num_bins < 1:
            raise ValueError(f"TOF num_bins must be >= 1, got {self.num_bins}")
        for name in ("bin_width_mm", "fwhm_mm", "num_sigmas"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"TOF {name} must be a positive finite number, got {value}")
            object.__setattr__(self, name, value)
        offset = float(self.center_offset_mm)
        if not math.isfinite(offset):
            raise ValueError(f"TOF center_offset_mm must be finite, got {offset}")
        object.__setattr__(self, "center_offset_mm", offset)

    @classmethod
    def from_picoseconds(
        cls,
        num_bins: int,
        bin_width_ps: float,
        fwhm_ps: float,
        center_offset_ps: float = 0.0,
        num_sigmas: float = 3.0,
    ) -> TOFParameters:
        """Build from timing values in ps (coincidence time difference), converted to mm
        along the LOR with ``mm = ps * c / 2``."""
        return cls(
            num_bins=num_bins,
            bin_width_mm=bin_width_ps * MM_PER_PS,
            fwhm_mm=fwhm_ps * MM_PER_PS,
            center_offset_mm=center_offset_ps * MM_PER_PS,
            num_sigmas=num_sigmas,
        )

    @property
    def sigma_mm(self) -> float:
        """Standard deviation of the Gaussian TOF kernel, mm."""
        return self.fwhm_mm / _FWHM_PER_SIGMA

    @property
    def fwhm_ps(self) -> float:
        """Timing resolution FWHM in ps."""
        return self.fwhm_mm / MM_PER_PS

    def bin_centers_mm(self) -> list[float]:
        """Signed distance of each TOF bin centre from the LOR midpoint, mm (towards the end)."""
        half = (self.num_bins - 1) / 2.0
        return [(k - half) * self.bin_width_mm + self.center_offset_mm for k in range(self.num_bins)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TOFParameters:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)
