"""Sinogram layout: radial bins, views, segments (span / axial compression), TOF bins.

Layout of a sinogram tensor: ``(num_planes, num_views, num_radial)`` non-TOF,
``(num_planes, num_views, num_radial, num_tof_bins)`` TOF. Planes are the segments
concatenated in the order of ascending ring difference ``-S .. 0 .. +S`` (as STIR headers
list them); within a segment, planes are ordered by ascending axial position (ring sum).

Non-arc-corrected bins (the default) are real crystal pairs. With ``N`` crystals per
ring, view ``v`` (unmashed) and radial index ``r`` with offset ``k = r - num_radial // 2``
join crystal ``a = v + floor(k / 2)`` (LOR start) and ``b = v + N/2 - ceil(k / 2)`` (LOR
end), modulo N. The LOR's normal is at angle ``v * pi / num_views`` for even ``k`` and
half a crystal pitch (``pi / N``) less for odd ``k`` (the two crystal-pair parities
interleave, as in scanners), its signed distance from the axis is
``(radius + doi) * sin(pi * k / N)`` along the normal ``(cos phi, sin phi)``. View 0
has vertical LORs (along y) from crystal 0 at the bottom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from .scanner import ScannerGeometry

Segment = tuple[int, int, int]  # (min ring difference, max ring difference, num planes)


@dataclass(frozen=True)
class SinogramGeometry:
    """How LORs of a scanner are binned into a sinogram.

    Attributes:
        scanner: the scanner.
        num_radial: radial (tangential) bins, centred on the axis: radial index ``r`` has
            offset ``k = r - num_radial // 2`` (STIR's ``-n/2 .. n/2 - 1`` for even n).
        span: axial compression (odd, >= 1). Segment 0 holds ring differences
            ``-(span-1)/2 .. (span-1)/2``; segment ``s`` the ``span`` differences centred on
            ``s * span``. Span 1: one ring difference per segment.
        max_ring_difference: largest |ring difference| kept (None: all that the span
            allows). For span > 1 it must be ``(span-1)/2 + m * span``.
        view_mashing: member views per stored view; a mashed view's LOR is the average of
            its member views' endpoints.
        tof: add a trailing TOF dimension (needs ``scanner.tof``).
        arc_corrected: parallel LORs at uniform radial spacing ``radial_bin_mm`` instead
            of crystal pairs, endpoints on the detector cylinder (STIR's arc-corrected
            data). View ``v``'s normal is then exactly at ``v * pi / num_views``.
        radial_bin_mm: radial bin size for arc-corrected data, mm.
    """

    scanner: ScannerGeometry
    num_radial: int
    span: int = 1
    max_ring_difference: int | None = None
    view_mashing: int = 1
    tof: bool = False
    arc_corrected: bool = False
    radial_bin_mm: float | None = None

    def __post_init__(self) -> None:
        sc = self.scanner
        if isinstance(sc, dict):
            object.__setattr__(self, "scanner", sc := ScannerGeometry.from_dict(sc))
        if not isinstance(sc, ScannerGeometry):
            raise TypeError(f"scanner must be a ScannerGeometry, got {type(sc).__name__}")
        for name in ("num_radial", "span", "view_mashing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.span % 2 == 0:
            raise ValueError(f"span must be odd, got {self.span}")
        n_det = sc.crystals_per_ring
        if (n_det // 2) % self.view_mashing:
            raise ValueError(
                f"view_mashing {self.view_mashing} does not divide the {n_det // 2} views of"
                f" scanner {sc.name!r}"
            )
        self._check_axial()
        if self.arc_corrected:
            if self.radial_bin_mm is None:
                raise ValueError("arc_corrected=True needs radial_bin_mm (mm)")
            bin_mm = float(self.radial_bin_mm)
            if not math.isfinite(bin_mm) or bin_mm <= 0:
                raise ValueError(f"radial_bin_mm must be positive, got {self.radial_bin_mm}")
            object.__setattr__(self, "radial_bin_mm", bin_mm)
            s_max = max(self.num_radial // 2, self.num_radial - 1 - self.num_radial // 2) * bin_mm
            if s_max >= sc.detector_radius_mm:
                raise ValueError(
                    f"num_radial {self.num_radial} x radial_bin_mm {bin_mm} reaches {s_max:.1f} mm,"
                    f" beyond the detector radius {sc.detector_radius_mm:.1f} mm"
                )
        else:
            if self.radial_bin_mm is not None:
                raise ValueError(
                    "radial_bin_mm is only for arc_corrected=True; non-arc-corrected bins are"
                    " crystal pairs"
                )
            if self.num_radial > n_det - 1:
                raise ValueError(
                    f"num_radial {self.num_radial} is larger than possible for"
                    f" {n_det} crystals per ring (at most {n_det - 1})"
                )
        if not isinstance(self.tof, bool) or not isinstance(self.arc_corrected, bool):
            raise TypeError("tof and arc_corrected must be bool")
        if self.tof and sc.tof is None:
            raise ValueError(f"tof=True but scanner {sc.name!r} has no TOF parameters")

    def _check_axial(self) -> None:
        rings, span = self.scanner.num_rings, self.span
        half = (span - 1) // 2
        mrd = self.max_ring_difference
        if span > 1 and half > rings - 1:
            raise ValueError(
                f"span {span} is too large for {rings} rings (segment 0 alone spans ring"
                f" differences -{half}..{half})"
            )
        if mrd is None:
            mrd = rings - 1 if span == 1 else half + ((rings - 1 - half) // span) * span
            object.__setattr__(self, "max_ring_difference", mrd)
            return
        if isinstance(mrd, bool) or not isinstance(mrd, int) or mrd < 0:
            raise ValueError(f"max_ring_difference must be a non-negative int, got {mrd!r}")
        if mrd > rings - 1:
            raise ValueError(
                f"max_ring_difference {mrd} is beyond the {rings} rings of scanner"
                f" {self.scanner.name!r} (at most {rings - 1})"
            )
        if span > 1 and (mrd < half or (mrd - half) % span):
            lower = half + max(0, (mrd - half) // span) * span
            raise ValueError(
                f"max_ring_difference {mrd} does not fit span {span}: it must be"
                f" {half} + a multiple of {span} (e.g. {lower} or {lower + span})"
            )

    # ------------------------------------------------------------------ sizes
    @property
    def num_views(self) -> int:
        """Stored views: ``crystals_per_ring / 2 / view_mashing``."""
        return self.scanner.crystals_per_ring // 2 // self.view_mashing

    @property
    def num_tof_bins(self) -> int:
        """TOF bins per LOR (1 when ``tof`` is False)."""
        return self.scanner.tof.num_bins if self.tof and self.scanner.tof else 1

    @cached_property
    def segments(self) -> tuple[Segment, ...]:
        """(min ring difference, max ring difference, num planes) per segment, -S..S."""
        rings, span = self.scanner.num_rings, self.span
        assert self.max_ring_difference is not None
        if span == 1:
            return tuple(
                (d, d, rings - abs(d))
                for d in range(-self.max_ring_difference, self.max_ring_difference + 1)
            )
        half = (span - 1) // 2
        num_seg = (self.max_ring_difference - half) // span
        out = []
        for s in range(-num_seg, num_seg + 1):
            lo, hi = s * span - half, s * span + half
            smallest = 0 if s == 0 else min(abs(lo), abs(hi))
            out.append((lo, hi, 2 * rings - 1 - 2 * smallest))
        return tuple(out)

    @property
    def num_planes(self) -> int:
        """Total planes over all segments."""
        return sum(seg[2] for seg in self.segments)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(num_planes, num_views, num_radial)`` plus ``(num_tof_bins,)`` with TOF."""
        base = (self.num_planes, self.num_views, self.num_radial)
        return base + (self.num_tof_bins,) if self.tof else base

    @property
    def num_bins(self) -> int:
        """Number of sinogram bins (product of :attr:`shape`)."""
        return math.prod(self.shape)

    # ------------------------------------------------------------------ axial
    @cached_property
    def _plane_pairs(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        rings = self.scanner.num_rings
        planes = []
        for lo, hi, _ in self.segments:
            sums = sorted({2 * ra + d for d in range(lo, hi + 1) for ra in range(rings)
                           if 0 <= ra + d < rings})
            for sigma in sums:
                pairs = tuple(
                    ((sigma - d) // 2, (sigma + d) // 2)
                    for d in range(lo, hi + 1)
                    if (sigma - d) % 2 == 0 and 0 <= (sigma - d) // 2 < rings
                    and 0 <= (sigma + d) // 2 < rings
                )
                planes.append(pairs)
        return tuple(planes)

    def plane_ring_pairs(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Ring pairs ``(ring of LOR start, ring of LOR end)`` of every plane.

        One pair per plane for span 1; all pairs combined into the plane for span > 1.
        Ring difference = end ring - start ring.
        """
        return self._plane_pairs

    def plane_ring_difference_range(self) -> torch.Tensor:
        """(min, max) ring difference of each plane's ring pairs, int64 ``(num_planes, 2)``."""
        return torch.tensor(
            [(min(b - a for a, b in p), max(b - a for a, b in p)) for p in self._plane_pairs],
            dtype=torch.int64,
        )

    def plane_z(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Axial position of the start and end of each plane's representative LOR, mm.

        The representative LOR of a plane with several ring pairs (span > 1) uses the
        mean z of each end over the pairs. Returns two float64 tensors ``(num_planes,)``.
        """
        z = self.scanner.ring_z().tolist()
        zs = [sum(z[a] for a, _ in p) / len(p) for p in self._plane_pairs]
        ze = [sum(z[b] for _, b in p) / len(p) for p in self._plane_pairs]
        return torch.tensor(zs, dtype=torch.float64), torch.tensor(ze, dtype=torch.float64)

    # ------------------------------------------------------------------ transaxial
    def _radial_offsets(self) -> torch.Tensor:
        return torch.arange(self.num_radial, dtype=torch.int64) - self.num_radial // 2

    def _view_indices(self, views: torch.Tensor | None) -> torch.Tensor:
        if views is None:
            return torch.arange(self.num_views, dtype=torch.int64)
        views = torch.as_tensor(views, dtype=torch.int64).reshape(-1).cpu()
        if views.numel() and (views.min() < 0 or views.max() >= self.num_views):
            raise ValueError(f"view indices must be in 0..{self.num_views - 1}")
        return views

    def _crystal_indices(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Crystal index of start and end, int64 ``(len(views), view_mashing, num_radial)``."""
        n_det = self.scanner.crystals_per_ring
        unmashed = views[:, None] * self.view_mashing + torch.arange(self.view_mashing)
        k = self._radial_offsets()
        a = unmashed[..., None] + torch.div(k, 2, rounding_mode="floor")
        b = unmashed[..., None] + n_det // 2 - torch.div(k + 1, 2, rounding_mode="floor")
        return a % n_det, b % n_det

    def view_angles(self) -> torch.Tensor:
        """Angle of each stored view's LOR normal, radians, float64 ``(num_views,)``.

        ``v * pi / num_views``; for non-arc-corrected mashed views, the mean over member
        views (``(view_mashing - 1) * pi / crystals_per_ring`` more).
        """
        v = torch.arange(self.num_views, dtype=torch.float64)
        phi = v * math.pi / self.num_views
        if not self.arc_corrected:
            phi = phi + (self.view_mashing - 1) * math.pi / self.scanner.crystals_per_ring
        return phi

    def transaxial_endpoints(
        self, views: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of LOR start and end for each view and radial bin, mm.

        Args:
            views: optional int64 view indices (default: all views).

        Returns:
            (start, end), float64 ``(len(views), num_radial, 2)``, on the circle of radius
            ``scanner.detector_radius_mm`` (mashed views: the mean of member endpoints).
        """
        views = self._view_indices(views)
        radius = self.scanner.detector_radius_mm
        if self.arc_corrected:
            phi = views.to(torch.float64) * math.pi / self.num_views
            s = self._radial_offsets().to(torch.float64) * self.radial_bin_mm
            normal = torch.stack((torch.cos(phi), torch.sin(phi)), dim=-1)[:, None, :]
            direction = torch.stack((-torch.sin(phi), torch.cos(phi)), dim=-1)[:, None, :]
            half = torch.sqrt(radius**2 - s**2)[None, :, None]
            mid = s[None, :, None] * normal
            return mid - half * direction, mid + half * direction
        a, b = self._crystal_indices(views)
        angles = self.scanner.crystal_angles()
        circle = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1) * radius
        return circle[a].mean(dim=1), circle[b].mean(dim=1)

    def radial_positions_mm(self) -> torch.Tensor:
        """Signed distance of each radial bin's LOR from the axis in view 0, mm,
        float64 ``(num_radial,)`` (increasing with the radial index)."""
        start, end = self.transaxial_endpoints(torch.tensor([0]))
        start, end = start[0], end[0]
        d = end - start
        # signed distance along the normal (d rotated by -90 degrees)
        normal = torch.stack((d[:, 1], -d[:, 0]), dim=-1) / d.norm(dim=-1, keepdim=True)
        return (start * normal).sum(-1)

    def field_of_view_radius_mm(self) -> float:
        """Radius of the transaxial field of view, mm: how far from the axis the outermost
        radial bins reach. A point within it is seen in every view; beyond it, in some
        views or none."""
        return float(self.radial_positions_mm().abs().max())

    # ------------------------------------------------------------------ LORs
    def lor_endpoints(
        self,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        views: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LOR start and end points of every sinogram bin, mm (DOI included).

        Args:
            dtype, device: of the result.
            views: optional int64 view indices, to build a subset only.

        Returns:
            (start, end), each ``(num_planes, num_views or len(views), num_radial, 3)``.
            TOF bins share their LOR.
        """
        xy_start, xy_end = self.transaxial_endpoints(views)
        z_start, z_end = self.plane_z()
        shape = (z_start.numel(), xy_start.shape[0], self.num_radial, 3)
        out = []
        for xy, z in ((xy_start, z_start), (xy_end, z_end)):
            t = torch.empty(shape, dtype=dtype, device=device)
            t[..., :2] = xy.to(dtype=dtype, device=device)[None]
            t[..., 2] = z.to(dtype=dtype, device=device)[:, None, None]
            out.append(t)
        return out[0], out[1]

    def crystal_pairs(self, views: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Detector indices of each bin's LOR ends (non-arc-corrected only).

        Returns:
            (rings, crystals), int64, each ``(num_planes, num_views or len(views),
            num_radial, 2)``; the last axis is (LOR start, LOR end). For span 1 and no view
            mashing these are the bin's only crystal pair. For span > 1 the plane's
            representative ring pair is the middle one of :meth:`plane_ring_pairs` (all
            pairs of the plane are listed there); with view mashing the crystals are
            those of the first member view.
        """
        if self.arc_corrected:
            raise ValueError("crystal_pairs() is undefined for arc-corrected sinograms")
        views = self._view_indices(views)
        a, b = self._crystal_indices(views)
        crystals = torch.stack((a[:, 0], b[:, 0]), dim=-1)  # (V, R, 2)
        rep = [p[(len(p) - 1) // 2] for p in self._plane_pairs]
        rings = torch.tensor(rep, dtype=torch.int64)  # (P, 2)
        shape = (len(rep), views.numel(), self.num_radial, 2)
        return rings[:, None, None, :].expand(shape).clone(), crystals[None].expand(shape).clone()

    def view_subsets(self, num_subsets: int) -> list[torch.Tensor]:
        """Interleaved view indices for OSEM: subset ``k`` holds views ``k, k+n, k+2n, ...``.

        Returns:
            ``num_subsets`` int64 tensors.
        """
        if isinstance(num_subsets, bool) or not isinstance(num_subsets, int):
            raise TypeError(f"num_subsets must be an int, got {type(num_subsets).__name__}")
        if not 1 <= num_subsets <= self.num_views:
            raise ValueError(f"num_subsets must be in 1..{self.num_views}, got {num_subsets}")
        return [torch.arange(k, self.num_views, num_subsets) for k in range(num_subsets)]

    # ------------------------------------------------------------------ constructors / io
    @classmethod
    def two_d(
        cls, scanner: ScannerGeometry, num_radial: int | None = None, **kwargs: Any
    ) -> SinogramGeometry:
        """One direct plane at z = 0: the scanner reduced to a single ring.

        Args:
            scanner: any scanner (its rings are dropped, ``scanner.with_rings(1)``).
            num_radial: radial bins (default ``scanner.default_num_radial``).
            kwargs: other fields (``view_mashing``, ``tof``, ``arc_corrected``, ...).
        """
        if num_radial is None:
            num_radial = scanner.default_num_radial
            if num_radial is None:
                raise ValueError(f"scanner {scanner.name!r} has no default_num_radial; pass num_radial")
        return cls(scanner.with_rings(1), num_radial=num_radial, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the scanner nested as its own dict)."""
        return {
            "scanner": self.scanner.to_dict(),
            "num_radial": self.num_radial,
            "span": self.span,
            "max_ring_difference": self.max_ring_difference,
            "view_mashing": self.view_mashing,
            "tof": self.tof,
            "arc_corrected": self.arc_corrected,
            "radial_bin_mm": self.radial_bin_mm,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SinogramGeometry:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["scanner"] = ScannerGeometry.from_dict(d["scanner"])
        return cls(**d)


def network_geometry_key(geometry: Any) -> Any:
    """A geometry dict (``to_dict()`` form) without what a network does not depend on.

    Where the gap crystals sit in a block (``ScannerGeometry.gap_position``) is part of each
    scan's multiplicative factors, not of a trained network: models trained before the mMR's
    gap position was corrected (gap last) read scans with the gap first. Compare
    ``network_geometry_key(a) == network_geometry_key(b)`` to check a scan against a model.
    """
    if isinstance(geometry, dict) and isinstance(geometry.get("scanner"), dict):
        scanner = {k: v for k, v in geometry["scanner"].items() if k != "gap_position"}
        return {**geometry, "scanner": scanner}
    return geometry
