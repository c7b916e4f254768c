"""Cylindrical PET scanner: rings of crystals, their positions and module layout.

World frame (mm): scanner axis along z, axial centre at z = 0, transaxial centre at
x = y = 0. Crystal ``i`` of a ring sits at the angle ``-pi/2 + 2 pi i / crystals_per_ring``
(crystal 0 at the bottom, -y; indices increase counter-clockwise seen from +z), ring ``r``
at ``z = (r - (num_rings - 1) / 2) * ring_spacing_mm``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from .tof import TOFParameters


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_float(name: str, value: object, *, positive: bool = True) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out) or (out <= 0 if positive else out < 0):
        kind = "positive" if positive else "non-negative"
        raise ValueError(f"{name} must be a {kind} finite number, got {value!r}")
    return out


@dataclass(frozen=True)
class ScannerGeometry:
    """A cylindrical PET scanner.

    Attributes:
        name: preset name or a free label.
        num_rings: number of crystal rings.
        crystals_per_ring: crystals per ring, including virtual gap crystals where the
            vendor counts them (mMR: 56 blocks x (8 + 1 gap) = 504). Must be even.
        radius_mm: inner radius of the detector ring (crystal front face), mm.
        ring_spacing_mm: axial distance between ring centres, mm.
        crystal_size_mm: (transaxial, axial, depth) of one crystal, mm.
        doi_mm: average depth of interaction, mm. LOR endpoints sit at
            ``radius_mm + doi_mm`` (:attr:`detector_radius_mm`).
        blocks_per_ring: detector blocks (modules) around a ring.
        crystals_per_block: (transaxial, axial) crystals per block; the transaxial count
            includes the gap crystals, so ``blocks_per_ring * crystals_per_block[0] ==
            crystals_per_ring``. None: ``(crystals_per_ring // blocks_per_ring, 1)``.
        gap_crystals_per_block: virtual crystals per block (transaxial) that model the gap
            between blocks; they record no counts.
        gap_position: where the virtual crystals sit in each block of crystal indices:
            ``"last"`` (indices ``per_block - gap .. per_block - 1`` of each block) or
            ``"first"`` (indices ``0 .. gap - 1``). The mMR's are first: with the
            sinogram's crystal numbering (vendor view = view, vendor tangential bin =
            radial bin) crystals ``0, 9, 18, ...`` record none of a real acquisition's
            prompts.
        tof: TOF parameters, or None for a non-TOF scanner.
        sensitivity_cps_per_kbq: published NEMA NU-2 system sensitivity (counts/s per kBq
            in the 70 cm line source at the centre), used by the simulator for realistic
            counts; None when unknown.
        default_num_radial: number of radial bins the vendor's sinograms use.
    """

    name: str
    num_rings: int
    crystals_per_ring: int
    radius_mm: float
    ring_spacing_mm: float
    crystal_size_mm: tuple[float, float, float]
    doi_mm: float = 0.0
    blocks_per_ring: int = 1
    crystals_per_block: tuple[int, int] | None = None
    gap_crystals_per_block: int = 0
    gap_position: str = "last"
    tof: TOFParameters | None = None
    sensitivity_cps_per_kbq: float | None = None
    default_num_radial: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"scanner name must be a str, got {type(self.name).__name__}")
        _check_int("num_rings", self.num_rings, 1)
        _check_int("crystals_per_ring", self.crystals_per_ring, 4)
        if self.crystals_per_ring % 2:
            raise ValueError(f"crystals_per_ring must be even, got {self.crystals_per_ring}")
        for name in ("radius_mm", "ring_spacing_mm"):
            object.__setattr__(self, name, _check_float(name, getattr(self, name)))
        object.__setattr__(self, "doi_mm", _check_float("doi_mm", self.doi_mm, positive=False))
        size = tuple(self.crystal_size_mm)
        if len(size) != 3:
            raise ValueError(f"crystal_size_mm must have 3 values (transaxial, axial, depth), got {size}")
        object.__setattr__(
            self, "crystal_size_mm", tuple(_check_float("crystal_size_mm", s) for s in size)
        )
        _check_int("blocks_per_ring", self.blocks_per_ring, 1)
        if self.crystals_per_block is None:
            # no module layout given: blocks_per_ring equal blocks of one axial crystal
            object.__setattr__(
                self, "crystals_per_block", (self.crystals_per_ring // self.blocks_per_ring, 1)
            )
        block = tuple(self.crystals_per_block)
        if len(block) != 2:
            raise ValueError(f"crystals_per_block must be (transaxial, axial), got {block}")
        for b in block:
            _check_int("crystals_per_block", b, 1)
        object.__setattr__(self, "crystals_per_block", block)
        if self.blocks_per_ring * block[0] != self.crystals_per_ring:
            raise ValueError(
                f"blocks_per_ring x crystals_per_block[0] = {self.blocks_per_ring} x {block[0]}"
                f" must equal crystals_per_ring = {self.crystals_per_ring}"
            )
        _check_int("gap_crystals_per_block", self.gap_crystals_per_block, 0)
        if self.gap_crystals_per_block >= block[0]:
            raise ValueError(
                f"gap_crystals_per_block ({self.gap_crystals_per_block}) must be smaller than"
                f" the transaxial crystals per block ({block[0]})"
            )
        if self.gap_position not in ("first", "last"):
            raise ValueError(f"gap_position must be 'first' or 'last', got {self.gap_position!r}")
        if isinstance(self.tof, dict):
            object.__setattr__(self, "tof", TOFParameters.from_dict(self.tof))
        if self.tof is not None and not isinstance(self.tof, TOFParameters):
            raise TypeError(f"tof must be TOFParameters or None, got {type(self.tof).__name__}")
        if self.sensitivity_cps_per_kbq is not None:
            object.__setattr__(
                self,
                "sensitivity_cps_per_kbq",
                _check_float("sensitivity_cps_per_kbq", self.sensitivity_cps_per_kbq),
            )
        if self.default_num_radial is not None:
            _check_int("default_num_radial", self.default_num_radial, 1)

    # ------------------------------------------------------------------ derived values
    @property
    def detector_radius_mm(self) -> float:
        """Radius of the LOR endpoints: ``radius_mm + doi_mm``, mm."""
        return self.radius_mm + self.doi_mm

    @property
    def axial_fov_mm(self) -> float:
        """Axial extent covered by the rings, ``num_rings * ring_spacing_mm``, mm."""
        return self.num_rings * self.ring_spacing_mm

    @property
    def crystal_pitch_rad(self) -> float:
        """Angle between neighbouring crystals of a ring, radians."""
        return 2.0 * math.pi / self.crystals_per_ring

    def crystal_angles(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Angle of each crystal of a ring, radians, shape ``(crystals_per_ring,)``."""
        i = torch.arange(self.crystals_per_ring, dtype=torch.float64)
        return (-0.5 * math.pi + i * self.crystal_pitch_rad).to(dtype)

    def ring_z(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Axial position of each ring centre, mm, shape ``(num_rings,)``, centred on 0."""
        r = torch.arange(self.num_rings, dtype=torch.float64)
        return ((r - (self.num_rings - 1) / 2.0) * self.ring_spacing_mm).to(dtype)

    def crystal_positions(self) -> torch.Tensor:
        """LOR endpoint of every crystal (at radius + DOI), mm.

        Returns:
            float64 tensor ``(num_rings, crystals_per_ring, 3)`` of (x, y, z) in mm.
        """
        angles = self.crystal_angles()
        r = self.detector_radius_mm
        xy = torch.stack((r * torch.cos(angles), r * torch.sin(angles)), dim=-1)
        z = self.ring_z()
        out = torch.empty(self.num_rings, self.crystals_per_ring, 3, dtype=torch.float64)
        out[..., :2] = xy
        out[..., 2] = z[:, None]
        return out

    def is_gap_crystal(self) -> torch.Tensor:
        """Bool mask ``(crystals_per_ring,)``: True for virtual gap crystals."""
        per_block = self.crystals_per_block[0]
        index_in_block = torch.arange(self.crystals_per_ring) % per_block
        if self.gap_position == "first":
            return index_in_block < self.gap_crystals_per_block
        return index_in_block >= per_block - self.gap_crystals_per_block

    def with_rings(self, num_rings: int) -> ScannerGeometry:
        """The same scanner with ``num_rings`` rings, still centred on z = 0.

        ``with_rings(1)`` is a single ring in the plane z = 0 (2D).
        """
        _check_int("num_rings", num_rings, 1)
        if num_rings > self.num_rings:
            raise ValueError(
                f"with_rings({num_rings}): scanner {self.name!r} has only {self.num_rings} rings"
            )
        return replace(self, num_rings=num_rings)

    def with_tof(self, tof: TOFParameters | None) -> ScannerGeometry:
        """The same scanner with other TOF parameters (None: non-TOF)."""
        return replace(self, tof=tof)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists, TOF a nested dict or None)."""
        d = asdict(self)
        d["crystal_size_mm"] = list(self.crystal_size_mm)
        d["crystals_per_block"] = list(self.crystals_per_block)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScannerGeometry:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        if d.get("tof") is not None:
            d["tof"] = TOFParameters.from_dict(d["tof"])
        d["crystal_size_mm"] = tuple(d["crystal_size_mm"])
        if d.get("crystals_per_block") is not None:
            d["crystals_per_block"] = tuple(d["crystals_per_block"])
        return cls(**d)
