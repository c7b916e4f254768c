"""PETSIRD listmode (the ETSINUC / SyneRBI raw-data standard) into a pet_dl scan.

:func:`read_petsird` reads a binary PETSIRD file with the ``petsird`` package (an
optional dependency: ``pip install pet_dl[petsird]``): the scanner description becomes a
:class:`~pet_dl.geometry.ScannerGeometry`, the coincidence events of the time blocks in
the frame are histogrammed into a sinogram of the project's geometry.

Scanner: one module type, detecting elements on rings around the z axis. Element
centres give the rings (distinct z, evenly spaced) and the angular slots (a regular grid
of pitch ``2 pi / N``; empty slots are gap crystals, regular per block). pet_dl's crystal
``i`` sits at angle ``-pi/2 + 2 pi i / N``; when PETSIRD's crystals are rotated against
that grid the rotation is recorded in ``metadata.extra['petsird_rotation_deg']`` (the
image is then rotated by it against PETSIRD's frame). Radius: the elements' inner face;
DOI: half the element depth. Energy bins are summed; TOF bins are summed (non-TOF).

Counts and factors (PETSIRD's definition of detection efficiencies): the expected trues
of a detection-bin pair are ``calibration_factor * eff_1 * eff_2 * module_pair_eff *
line integral of the annihilations``. With ``x`` in Bq/mL, a frame of ``T`` s and the
positron branching fraction ``b`` (F-18: 0.9686), the scan's ``calibration`` is
``calibration_factor * T * b / 1000`` and ``multiplicative`` is, per sinogram bin, the sum
of ``eff_1 * eff_2 * module_pair_eff`` over its crystal pairs and energy-bin pairs
(normalisation only: attenuation is not in PETSIRD). ``additive`` is the randoms estimate
from the delayed coincidences: their histogram smoothed over 7 x 7 views x radial bins
per plane, rescaled to the number of delayeds (zero when the file has none).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pet_dl.geometry import ImageGeometry, ScannerGeometry, SinogramGeometry
from pet_dl.io import ImageFileError
from pet_dl.scan import AcquisitionMetadata, Scan

#: Positron branching fraction of F-18 (the default radionuclide of a PETSIRD import).
F18_BRANCHING_FRACTION = 0.9686

_SLOT_TOLERANCE = 0.25  # of the crystal pitch


class PetsirdError(ImageFileError):
    """A PETSIRD file pet_dl cannot read (missing package, unsupported scanner, bad data)."""


def _petsird() -> Any:
    try:
        import petsird
    except ImportError:
        raise PetsirdError(
            "reading PETSIRD needs the 'petsird' package: pip install 'pet_dl[petsird]'"
        ) from None
    return petsird


# ---------------------------------------------------------------------------- scanner
@dataclass(frozen=True)
class PetsirdScanner:
    """A PETSIRD scanner description mapped to pet_dl.

    Attributes:
        scanner: the pet_dl scanner.
        ring: int64 ``(num_crystals,)``, ring of each PETSIRD crystal
            (``module * elements_per_module + element``).
        slot: int64 ``(num_crystals,)``, pet_dl crystal index in the ring.
        module: int64 ``(num_crystals,)`` module index of each crystal.
        element: int64 ``(num_crystals,)`` element index in its module.
        num_energy_bins: energy bins per element (detection bin = crystal x bins + energy).
        rotation_deg: angle of PETSIRD's crystal grid against pet_dl's, degrees.
    """

    scanner: ScannerGeometry
    ring: np.ndarray
    slot: np.ndarray
    module: np.ndarray
    element: np.ndarray
    num_energy_bins: int
    rotation_deg: float


def _transforms(items: list[Any]) -> np.ndarray:
    return np.stack([np.asarray(t.matrix, dtype=np.float64).reshape(3, 4) for t in items])


def _gap_layout(occupied: np.ndarray, num_modules: int) -> tuple[int, int, int, str]:
    """``(shift, per_block, gaps, position)`` so that ``roll(occupied, -shift)`` has
    ``gaps`` empty slots at the end of each ``per_block`` slots (position 'last')."""
    n = occupied.size
    if occupied.all():
        return 0, n // num_modules if n % num_modules == 0 else n, 0, "last"
    empty = ~occupied
    # start of the first run of occupied slots right after an empty one
    starts = np.flatnonzero(occupied & np.roll(empty, 1))
    blocks = starts.size
    if n % blocks:
        raise PetsirdError(f"gap slots are not regular: {blocks} runs of crystals in {n} slots")
    per_block = n // blocks
    rolled = np.roll(occupied, -int(starts[0]))
    pattern = rolled[:per_block]
    gaps = int((~pattern).sum())
    if not (
        np.array_equal(np.tile(pattern, blocks), rolled)
        and not pattern[per_block - gaps :].any()
        and pattern[: per_block - gaps].all()
    ):
        raise PetsirdError("gap slots are not the same in every block")
    return int(starts[0]), per_block, gaps, "last"


def scanner_from_header(header: Any, num_radial: int | None = None) -> PetsirdScanner:
    """Map a PETSIRD ``ScannerInformation`` (``header.scanner``) to a pet_dl scanner.

    Raises:
        PetsirdError: several module types, elements not on evenly spaced rings around z,
            or crystals off a regular angular grid.
    """
    info = header.scanner
    modules = info.scanner_geometry.replicated_modules
    if len(modules) != 1:
        raise PetsirdError(f"{len(modules)} module types; pet_dl reads scanners with one")
    rep = modules[0]
    det = rep.object.detecting_elements
    corners = np.array([np.asarray(c.c, dtype=np.float64) for c in det.object.shape.corners])
    mod_t = _transforms(rep.transforms)  # (M, 3, 4)
    el_t = _transforms(det.transforms)  # (E, 3, 4)
    rot = np.einsum("mij,ejk->meik", mod_t[:, :, :3], el_t[:, :, :3])
    shift = np.einsum("mij,ej->mei", mod_t[:, :, :3], el_t[:, :, 3]) + mod_t[:, None, :, 3]
    world = np.einsum("meij,cj->meci", rot, corners) + shift[:, :, None, :]  # (M, E, 8, 3)
    n_mod, n_el = world.shape[:2]
    world = world.reshape(n_mod * n_el, 8, 3)
    centre = world.mean(axis=1)
    r_corner = np.hypot(world[..., 0], world[..., 1])
    inner = np.sort(r_corner, axis=1)[:, :4].mean(axis=1)  # inner face (4 nearest corners)
    r_centre = np.hypot(centre[:, 0], centre[:, 1])
    if np.ptp(r_centre) > 0.01 * r_centre.mean():
        raise PetsirdError("detecting elements are not on one cylinder around the z axis")
    # rings: distinct z of the element centres, evenly spaced
    z_values = np.unique(np.round(centre[:, 2], 2))
    spacing = (
        float(np.diff(z_values).mean()) if z_values.size > 1 else float(np.ptp(world[0, :, 2]))
    )
    if z_values.size > 1 and np.ptp(np.diff(z_values)) > 1e-3 * spacing + 0.02:
        raise PetsirdError("element rings are not evenly spaced along z")
    ring = np.abs(np.round(centre[:, 2], 2)[:, None] - z_values[None, :]).argmin(axis=1)
    # angular slots: the regular grid of the closest neighbours in a ring
    theta = np.arctan2(centre[:, 1], centre[:, 0])
    first = np.sort(theta[ring == 0])
    pitch_est = np.diff(np.concatenate([first, first[:1] + 2 * np.pi])).min()
    n_slots = int(round(2 * np.pi / pitch_est))
    n_slots += n_slots % 2
    pitch = 2 * np.pi / n_slots
    rel = (theta + np.pi / 2) / pitch
    offset = float(np.angle(np.exp(2j * np.pi * rel).mean()) / (2 * np.pi))  # mean fractional slot
    slots_f = rel - offset
    slot = np.round(slots_f).astype(np.int64) % n_slots
    if np.abs(slots_f - np.round(slots_f)).max() > _SLOT_TOLERANCE:
        raise PetsirdError("crystal angles are not on a regular grid (pet_dl needs one)")
    occupied = np.zeros(n_slots, dtype=bool)
    occupied[slot[ring == 0]] = True
    rings_per_module = _axial_per_module(ring, n_el, n_mod)
    modules_around = max(1, n_mod * rings_per_module // int(z_values.size))
    roll, per_block, gaps, position = _gap_layout(occupied, modules_around)
    slot = (slot - roll) % n_slots
    rotation = (offset + roll) * pitch
    key = ring * n_slots + slot
    if np.unique(key).size != key.size:
        raise PetsirdError("two detecting elements share one ring and angular slot")
    radial_dir = centre[0, :2] / r_centre[0]
    proj = world[0, :, :2] @ radial_dir
    depth = float(np.ptp(proj))
    axial = float(np.ptp(world[0, :, 2]))
    radius = float(inner.mean())
    n_rings = int(z_values.size)
    scanner = ScannerGeometry(
        name=str(info.model_name or "petsird"),
        num_rings=n_rings,
        crystals_per_ring=n_slots,
        radius_mm=radius,
        ring_spacing_mm=spacing if n_rings > 1 else axial,
        crystal_size_mm=(2 * math.pi * radius / n_slots, axial, depth),
        doi_mm=depth / 2,
        blocks_per_ring=n_slots // per_block,
        crystals_per_block=(per_block, rings_per_module),
        gap_crystals_per_block=gaps,
        gap_position=position,
        default_num_radial=num_radial or _default_radial(n_slots),
    )
    crystal = np.arange(n_mod * n_el)
    return PetsirdScanner(
        scanner=scanner,
        ring=ring.astype(np.int64),
        slot=slot,
        module=crystal // n_el,
        element=crystal % n_el,
        num_energy_bins=int(info.event_energy_bin_edges[0].number_of_bins()),
        rotation_deg=float(np.degrees(rotation)),
    )


def _axial_per_module(ring: np.ndarray, n_el: int, n_mod: int) -> int:
    """Rings covered by one module (its elements' distinct rings)."""
    return max(1, int(np.unique(ring[:n_el]).size))


def _default_radial(n_slots: int) -> int:
    """About the mMR's ratio of radial bins to crystals (344 / 504), even."""
    return max(2, int(round(0.68 * n_slots / 2)) * 2)


# ---------------------------------------------------------------------------- binning
def crystal_pair_bins(
    sinogram: SinogramGeometry,
    ring_a: torch.Tensor,
    crystal_a: torch.Tensor,
    ring_b: torch.Tensor,
    crystal_b: torch.Tensor,
) -> torch.Tensor:
    """Flat sinogram bin of each crystal pair (either order), -1 where the sinogram has none.

    Inverts the crystal pairing of :class:`~pet_dl.geometry.SinogramGeometry` (view ``v``,
    radial offset ``k``: start ``v + floor(k/2)``, end ``v + N/2 - ceil(k/2)``), with the
    ring pair looked up in :meth:`~pet_dl.geometry.SinogramGeometry.plane_ring_pairs`
    and mashed views combined. Non-TOF, non-arc-corrected sinograms only.

    Args:
        ring_a, crystal_a, ring_b, crystal_b: int64 tensors of one shape.

    Returns:
        int64 tensor of that shape: index into the flattened ``sinogram.shape``.
    """
    if sinogram.arc_corrected:
        raise ValueError("crystal_pair_bins needs a non-arc-corrected sinogram")
    n = sinogram.scanner.crystals_per_ring
    rings = sinogram.scanner.num_rings
    plane_of = torch.full((rings, rings), -1, dtype=torch.int64)
    for p, pairs in enumerate(sinogram.plane_ring_pairs()):
        for ra, rb in pairs:
            plane_of[ra, rb] = p
    out = torch.full(ring_a.shape, -1, dtype=torch.int64)
    for start, end, r_start, r_end in (
        (crystal_a, crystal_b, ring_a, ring_b),
        (crystal_b, crystal_a, ring_b, ring_a),
    ):
        k0 = (start - end + n // 2) % n
        k = torch.where(k0 >= n // 2, k0 - n, k0)
        v = ((start + end - n // 2 + (k % 2)) % n) // 2
        ok = (v + torch.div(k, 2, rounding_mode="floor") - start) % n == 0
        r = k + sinogram.num_radial // 2
        ok &= (r >= 0) & (r < sinogram.num_radial) & (start != end)
        plane = plane_of[r_start.clamp(0, rings - 1), r_end.clamp(0, rings - 1)]
        ok &= plane >= 0
        flat = (plane * sinogram.num_views + v // sinogram.view_mashing) * sinogram.num_radial + r
        out = torch.where(ok & (out < 0), flat, out)
    return out


def _bin_efficiency_table(
    info: Any, mapped: PetsirdScanner
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``(detection-bin efficiencies (C, nE), SGID LUT (M, M), module-pair values
    (S, E*nE, E*nE), calibration_factor)``; absent components are ones."""
    n_crystals = mapped.ring.size
    n_en = mapped.num_energy_bins
    n_mod = int(mapped.module.max()) + 1
    n_el = int(mapped.element.max()) + 1
    eff = info.detection_efficiencies
    cal = float(getattr(eff, "calibration_factor", 1.0) or 1.0) if eff is not None else 1.0
    dbe = np.ones((n_crystals, n_en))
    if eff is not None and eff.detection_bin_efficiencies:
        values = np.asarray(eff.detection_bin_efficiencies[0], dtype=np.float64)
        if values.size == n_crystals * n_en:
            dbe = values.reshape(n_crystals, n_en)
    lut = np.zeros((n_mod, n_mod), dtype=np.int64)
    pair_values = np.ones((1, n_el * n_en, n_el * n_en))
    vectors = getattr(eff, "module_pair_efficiencies_vectors", None) if eff is not None else None
    if vectors and vectors[0] and vectors[0][0]:
        raw_lut = eff.module_pair_sgidlut[0][0]
        lut = np.full((n_mod, n_mod), -1, dtype=np.int64)
        for m1, row in enumerate(raw_lut):
            row = list(row)
            lut[m1, : len(row)] = row
        by_sgid = {int(v.sgid): np.asarray(v.values, dtype=np.float64) for v in vectors[0][0]}
        pair_values = np.stack([by_sgid[s] for s in range(len(by_sgid))])
    return dbe, lut, pair_values, cal


def _multiplicative(
    sinogram: SinogramGeometry, info: Any, mapped: PetsirdScanner
) -> tuple[torch.Tensor, float]:
    """Relative detection efficiency of each sinogram bin (sum over its crystal pairs and
    energy-bin pairs) and the file's calibration factor."""
    dbe, lut, pair_values, cal = _bin_efficiency_table(info, mapped)
    n = sinogram.scanner.crystals_per_ring
    crystal_of = np.full((sinogram.scanner.num_rings, n), -1, dtype=np.int64)
    crystal_of[mapped.ring, mapped.slot] = np.arange(mapped.ring.size)
    n_en = mapped.num_energy_bins
    total = np.zeros(sinogram.shape, dtype=np.float64)
    plane_pairs = sinogram.plane_ring_pairs()
    most = max(len(p) for p in plane_pairs)
    views = torch.arange(sinogram.num_views)
    k = torch.arange(sinogram.num_radial) - sinogram.num_radial // 2
    for member in range(sinogram.view_mashing):
        u = views * sinogram.view_mashing + member
        ca = ((u[:, None] + torch.div(k, 2, rounding_mode="floor")) % n).numpy()
        cb = ((u[:, None] + n // 2 - torch.div(k + 1, 2, rounding_mode="floor")) % n).numpy()
        for q in range(most):
            planes = [p for p, pairs in enumerate(plane_pairs) if len(pairs) > q]
            ra = np.array([plane_pairs[p][q][0] for p in planes])[:, None, None]
            rb = np.array([plane_pairs[p][q][1] for p in planes])[:, None, None]
            c1, c2 = crystal_of[ra, ca[None]], crystal_of[rb, cb[None]]
            valid = (c1 >= 0) & (c2 >= 0)
            hi, lo = np.maximum(c1, c2).clip(0), np.minimum(c1, c2).clip(0)
            sgid = lut[mapped.module[hi], mapped.module[lo]]
            coincident = valid & (sgid >= 0)
            e_hi, e_lo = mapped.element[hi], mapped.element[lo]
            value = np.zeros(valid.shape)
            for en1 in range(n_en):
                for en2 in range(n_en):
                    value += (
                        dbe[hi, en1]
                        * dbe[lo, en2]
                        * pair_values[sgid.clip(0), e_hi * n_en + en1, e_lo * n_en + en2]
                    )
            total[planes] += np.where(coincident, value, 0.0)
    return torch.from_numpy(total.astype(np.float32)), cal


def _smooth_randoms(delayeds: torch.Tensor, width: int = 7) -> torch.Tensor:
    """Box mean over ``width`` views x radial bins per plane (edges replicated), rescaled
    to the delayeds' total."""
    from torch.nn import functional as F

    total = float(delayeds.sum())
    if total == 0:
        return torch.zeros_like(delayeds)
    x = delayeds.to(torch.float64)[:, None]
    pad = width // 2
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    smooth = F.avg_pool2d(x, width, stride=1)[:, 0]
    return (smooth * (total / float(smooth.sum()))).to(torch.float32)


# ---------------------------------------------------------------------------- reading
def read_petsird(
    path: str | os.PathLike[str],
    sinogram: SinogramGeometry | None = None,
    *,
    span: int = 1,
    max_ring_difference: int | None = None,
    num_radial: int | None = None,
    frame_start_s: float = 0.0,
    frame_duration_s: float | None = None,
    image: ImageGeometry | None = None,
    branching_fraction: float = F18_BRANCHING_FRACTION,
) -> Scan:
    """Read a binary PETSIRD file into a scan: scanner, prompts, normalisation, randoms.

    Args:
        path: the PETSIRD file (binary yardl stream).
        sinogram: the layout to histogram into; it must be the file's scanner (default:
            a sinogram of the file's scanner with ``span``, ``max_ring_difference`` and
            ``num_radial``).
        frame_start_s, frame_duration_s: the frame, seconds from the acquisition start
            (default: all time blocks). Time blocks are kept whole (those that start in
            the frame).
        image: reconstruction grid (default: STIR's default grid for the sinogram).
        branching_fraction: positron fraction of the radionuclide (F-18 by default).

    Returns:
        A :class:`~pet_dl.scan.Scan`: prompts (counts, float32 ``sinogram.shape``),
        multiplicative = relative detection efficiencies, additive = smoothed delayeds,
        calibration from the file's calibration factor and the frame duration;
        ``metadata.extra`` records the event counts, the rotation against PETSIRD's
        frame and what was not applied.

    Raises:
        PetsirdError: no ``petsird`` package, an unreadable file, an unsupported scanner.
    """
    petsird = _petsird()
    p = Path(path)
    if not p.is_file():
        raise PetsirdError(f"PETSIRD file {p}: no such file")
    try:
        reader = petsird.BinaryPETSIRDReader(str(p))
        header = reader.read_header()
    except Exception as exc:  # the yardl reader raises plain exceptions on bad input
        raise PetsirdError(f"PETSIRD file {p}: not a readable PETSIRD stream ({exc})") from None
    mapped = scanner_from_header(header, num_radial)
    if sinogram is None:
        sinogram = SinogramGeometry(
            mapped.scanner,
            num_radial=mapped.scanner.default_num_radial or 2,
            span=span,
            max_ring_difference=max_ring_difference,
        )
    elif sinogram.scanner != mapped.scanner:
        raise PetsirdError(f"PETSIRD file {p}: its scanner differs from the sinogram's")
    shape = sinogram.shape
    prompts = torch.zeros(sinogram.num_bins, dtype=torch.float64)
    delayeds = torch.zeros(sinogram.num_bins, dtype=torch.float64)
    ring = torch.from_numpy(mapped.ring)
    slot = torch.from_numpy(mapped.slot)
    n_en = mapped.num_energy_bins
    start_ms = frame_start_s * 1000.0
    stop_ms = math.inf if frame_duration_s is None else start_ms + frame_duration_s * 1000.0
    counts = {"prompts": 0, "delayeds": 0, "prompts_outside_sinogram": 0, "time_blocks": 0}
    first_ms, last_ms = math.inf, -math.inf
    try:
        for block in reader.read_time_blocks():
            if not isinstance(block, petsird.TimeBlock.EventTimeBlock):
                continue
            etb = block.value
            t0, t1 = float(etb.time_interval.start), float(etb.time_interval.stop)
            if not start_ms <= t0 < stop_ms:
                continue
            first_ms, last_ms = min(first_ms, t0), max(last_ms, t1)
            counts["time_blocks"] += 1
            for name, lists, target in (
                ("prompts", etb.prompt_events, prompts),
                ("delayeds", etb.delayed_events, delayeds),
            ):
                events = lists[0][0] if lists and lists[0] else []
                if not events:
                    continue
                pairs = torch.tensor([e.detection_bins[:2] for e in events], dtype=torch.int64)
                c = pairs // n_en
                flat = crystal_pair_bins(
                    sinogram, ring[c[:, 0]], slot[c[:, 0]], ring[c[:, 1]], slot[c[:, 1]]
                )
                keep = flat >= 0
                counts[name] += len(events)
                if name == "prompts":
                    counts["prompts_outside_sinogram"] += int((~keep).sum())
                target += torch.bincount(flat[keep], minlength=sinogram.num_bins).to(torch.float64)
        reader.close()
    except PetsirdError:
        raise
    except Exception as exc:
        raise PetsirdError(f"PETSIRD file {p}: unreadable time blocks ({exc})") from None
    if counts["time_blocks"] == 0:
        raise PetsirdError(f"PETSIRD file {p}: no event time blocks in the frame")
    duration = (last_ms - first_ms) / 1000.0
    multiplicative, cal_factor = _multiplicative(sinogram, header.scanner, mapped)
    if image is None:
        from pet_dl.io.stir_sinogram import default_image

        image = default_image(sinogram)
    extra = {
        "source": f"PETSIRD {p.name}",
        "petsird_model": str(header.scanner.model_name),
        "petsird_rotation_deg": f"{mapped.rotation_deg:.6g}",
        "petsird_calibration_factor": f"{cal_factor:.9g}",
        "calibration": "PETSIRD calibration factor x duration x branching fraction / 1000",
        "attenuation": "not applied (multiplicative is the normalisation only)",
        "frame_start_s": f"{first_ms / 1000.0:.9g}",
        **{k: str(v) for k, v in counts.items()},
    }
    return Scan(
        sinogram=sinogram,
        image=image,
        prompts=prompts.reshape(shape).to(torch.float32),
        multiplicative=multiplicative,
        additive=_smooth_randoms(delayeds.reshape(shape).to(torch.float32)),
        calibration=cal_factor * duration * branching_fraction / 1000.0,
        psf_fwhm_mm=0.0,
        metadata=AcquisitionMetadata(duration_s=duration, extra=extra),
    )
