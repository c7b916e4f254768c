"""PETSIRD in: the scanner description, coincidences histogrammed, efficiencies, frames.

The PETSIRD files are written here with the ``petsird`` package's own writer, for a
scanner laid out like pet_dl's "test" preset (crystal i at -pi/2 + 2 pi i / N, per the
geometry docs), so the expected sinogram follows from pet_dl's crystal pairs alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pet_dl.geometry import SinogramGeometry, get_scanner
from pet_dl.io.petsird import F18_BRANCHING_FRACTION, crystal_pair_bins

N, RINGS, PER_BLOCK, RADIUS, DEPTH, WIDTH, SPACING, N_EN = 112, 4, 8, 110.0, 10.0, 4.0, 4.0, 2


def test_crystal_pair_bins_invert_the_sinogram_pairs() -> None:
    sino = SinogramGeometry(get_scanner("test"), num_radial=65, span=1)
    rings, crystals = sino.crystal_pairs()
    expected = torch.arange(sino.num_bins).reshape(sino.shape)
    args = (rings[..., 0], crystals[..., 0], rings[..., 1], crystals[..., 1])
    assert torch.equal(crystal_pair_bins(sino, *args), expected)
    swapped = (rings[..., 1], crystals[..., 1], rings[..., 0], crystals[..., 0])
    assert torch.equal(crystal_pair_bins(sino, *swapped), expected)
    # neighbours (radial offset beyond the bins kept) and one crystal with itself: no bin
    c = torch.tensor([0, 5, 7])
    r = torch.zeros(3, dtype=torch.int64)
    assert torch.all(crystal_pair_bins(sino, r, c, r, c + 1) == -1)
    assert torch.all(crystal_pair_bins(sino, r, c, r, c) == -1)


def test_crystal_pair_bins_with_span_and_mashing() -> None:
    """Span 3 with 2 views mashed: every bin collects 2 x (its ring pairs) crystal pairs."""
    sino = SinogramGeometry(get_scanner("test"), num_radial=41, span=3, view_mashing=2)
    flat = SinogramGeometry(get_scanner("test"), num_radial=41, span=1)
    _, crystals = flat.crystal_pairs()  # (planes, 56 views, 41, 2): every view unmashed
    ca, cb = crystals[0, ..., 0].reshape(-1), crystals[0, ..., 1].reshape(-1)
    counts = torch.zeros(sino.num_bins, dtype=torch.int64)
    for ra, rb in [(a, b) for a in range(RINGS) for b in range(RINGS)]:
        bins = crystal_pair_bins(sino, torch.full_like(ca, ra), ca, torch.full_like(ca, rb), cb)
        counts += torch.bincount(bins[bins >= 0], minlength=sino.num_bins)
    per_plane = torch.tensor([len(p) for p in sino.plane_ring_pairs()])
    assert torch.equal(
        counts.reshape(sino.shape), (2 * per_plane)[:, None, None].expand(sino.shape)
    )


# ---------------------------------------------------------------------------- files
def _box(petsird):  # noqa: ANN001, ANN202
    corners = [
        (x, y, z)
        for x in (0.0, DEPTH)
        for y in (-WIDTH / 2, WIDTH / 2)
        for z in (-SPACING / 2, SPACING / 2)
    ]
    shape = petsird.BoxShape(
        corners=[petsird.Coordinate(c=np.array(c, dtype=np.float32)) for c in corners]
    )
    return petsird.BoxSolidVolume(shape=shape, material_id=1)


def _rz(angle: float, t: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0, t[0]], [s, c, 0, t[1]], [0, 0, 1, t[2]]], dtype=np.float32)


def _header(petsird, rng: np.random.Generator, rotation: float = 0.0, slots: int = PER_BLOCK):  # noqa: ANN001, ANN202
    """The scanner: 14 modules of 8 x 4 elements; element j = ring * 8 + t; module m holds
    pet_dl crystals 8 m + t; detection bin = (m * 32 + j) * 2 + energy."""
    from petsird.helpers.create import initialize_scanner_information_dimensions

    n_slots = N // PER_BLOCK * slots  # slots > PER_BLOCK: empty gap slots after each block
    pitch = 2 * math.pi / n_slots
    elements = petsird.ReplicatedBoxSolidVolume(object=_box(petsird))
    for ring in range(RINGS):
        for t in range(PER_BLOCK):
            phi = (t - (PER_BLOCK - 1) / 2) * pitch
            z = (ring - (RINGS - 1) / 2) * SPACING
            matrix = _rz(phi, (RADIUS * math.cos(phi), RADIUS * math.sin(phi), z))
            elements.transforms.append(petsird.RigidTransformation(matrix=matrix))
    modules = petsird.ReplicatedDetectorModule(
        object=petsird.DetectorModule(detecting_elements=elements)
    )
    for m in range(N // PER_BLOCK):
        theta = -math.pi / 2 + (slots * m + (PER_BLOCK - 1) / 2) * pitch + rotation
        modules.transforms.append(petsird.RigidTransformation(matrix=_rz(theta)))
    geometry = petsird.ScannerGeometry(replicated_modules=[modules])
    info = petsird.ScannerInformation(model_name="pet_dl test ring", scanner_geometry=geometry)
    initialize_scanner_information_dimensions(info, 1, True, True)
    info.event_energy_bin_edges[0] = petsird.BinEdges(
        edges=np.linspace(430, 650, N_EN + 1, dtype=np.float32)
    )
    info.tof_bin_edges[0][0] = petsird.BinEdges(edges=np.linspace(-300, 300, 4, dtype=np.float32))
    info.tof_resolution[0][0] = 60.0
    eff = info.detection_efficiencies
    eff.calibration_factor = 2.5
    n_bins = N * RINGS * N_EN
    eff.detection_bin_efficiencies[0] = rng.uniform(0.5, 1.5, n_bins).astype(np.float32)
    n_mod, n_el = N // PER_BLOCK, PER_BLOCK * RINGS
    eff.module_pair_sgidlut[0][0] = [
        [-1 if m1 - m2 in (0, 7) else 0 for m2 in range(m1 + 1)] for m1 in range(n_mod)
    ]
    values = rng.uniform(0.8, 1.2, (n_el * N_EN, n_el * N_EN)).astype(np.float32)
    eff.module_pair_efficiencies_vectors[0][0] = [
        petsird.ModulePairEfficiencies(values=values, sgid=0)
    ]
    info.prompt_event_policy = petsird.CoincidencePolicy.REJECT_HIGHER_MULTIPLES
    info.delayed_event_policy = petsird.CoincidencePolicy.REJECT_HIGHER_MULTIPLES
    return petsird.Header(scanner=info)


def _detection_bin(ring: torch.Tensor, crystal: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    module, t = crystal // PER_BLOCK, crystal % PER_BLOCK
    return ((module * PER_BLOCK * RINGS + ring * PER_BLOCK + t) * N_EN) + energy


def _events(petsird, bins: torch.Tensor, sino: SinogramGeometry, gen: torch.Generator) -> list:  # noqa: ANN001
    rings, crystals = sino.crystal_pairs()
    rings, crystals = rings.reshape(-1, 2)[bins], crystals.reshape(-1, 2)[bins]
    energy = torch.randint(0, N_EN, (bins.numel(), 2), generator=gen)
    d1 = _detection_bin(rings[:, 0], crystals[:, 0], energy[:, 0])
    d2 = _detection_bin(rings[:, 1], crystals[:, 1], energy[:, 1])
    hi, lo = torch.maximum(d1, d2), torch.minimum(d1, d2)  # PETSIRD orders the pair
    tof = torch.randint(0, 3, (bins.numel(),), generator=gen)
    return [
        petsird.CoincidenceEvent(detection_bins=[int(a), int(b)], tof_idx=int(t))
        for a, b, t in zip(hi, lo, tof)
    ]


def _write(path: Path, rotation: float = 0.0) -> dict:
    """Three 1-ms time blocks of prompts and delayeds on known bins (+ 5 prompts between
    neighbouring crystals, outside every sinogram bin, in the first block)."""
    petsird = pytest.importorskip(
        "petsird", reason="the optional 'petsird' package is not installed"
    )
    gen = torch.Generator().manual_seed(7)
    sino = SinogramGeometry(get_scanner("test"), num_radial=65, span=1)
    header = _header(petsird, np.random.default_rng(3), rotation)
    truth = {"sinogram": sino, "header": header, "prompts": [], "delayeds": []}
    with petsird.BinaryPETSIRDWriter(str(path)) as writer:
        writer.write_header(header)
        blocks = []
        for t in range(3):
            prompts = torch.randint(0, sino.num_bins, (400,), generator=gen)
            delayeds = torch.randint(0, sino.num_bins, (60,), generator=gen)
            truth["prompts"].append(prompts)
            truth["delayeds"].append(delayeds)
            prompt_events = _events(petsird, prompts, sino, gen)
            if t == 0:
                for c in range(5):
                    lo, hi = _detection_bin(torch.tensor(0), torch.tensor(c), torch.tensor(0)), None
                    hi = _detection_bin(torch.tensor(0), torch.tensor(c + 1), torch.tensor(0))
                    prompt_events.append(
                        petsird.CoincidenceEvent(detection_bins=[int(hi), int(lo)])
                    )
            block = petsird.EventTimeBlock(
                time_interval=petsird.TimeInterval(start=t, stop=t + 1),
                prompt_events=[[prompt_events]],
                delayed_events=[[_events(petsird, delayeds, sino, gen)]],
            )
            blocks.append(petsird.TimeBlock.EventTimeBlock(block))
        writer.write_time_blocks(blocks)
    return truth


def test_read_petsird_histograms_every_event(tmp_path: Path) -> None:
    from pet_dl.io.petsird import read_petsird

    truth = _write(tmp_path / "scan.petsird")
    scan = read_petsird(tmp_path / "scan.petsird", num_radial=65)
    sino = truth["sinogram"]
    sc, ref = scan.sinogram.scanner, get_scanner("test")
    assert (sc.num_rings, sc.crystals_per_ring, sc.blocks_per_ring, sc.crystals_per_block) == (
        ref.num_rings,
        ref.crystals_per_ring,
        ref.blocks_per_ring,
        ref.crystals_per_block,
    )
    assert sc.radius_mm == pytest.approx(RADIUS, abs=0.05)  # inner face (flat: +w^2/8R)
    assert sc.ring_spacing_mm == pytest.approx(SPACING, rel=1e-5)
    assert sc.doi_mm == pytest.approx(DEPTH / 2, rel=1e-3)
    assert scan.sinogram.shape == sino.shape
    expected = torch.bincount(torch.cat(truth["prompts"]), minlength=sino.num_bins).reshape(
        sino.shape
    )
    assert torch.equal(scan.prompts, expected.to(torch.float32))
    extra = scan.metadata.extra
    assert extra["prompts"] == str(3 * 400 + 5) and extra["prompts_outside_sinogram"] == "5"
    assert extra["delayeds"] == str(3 * 60) and float(
        extra["petsird_rotation_deg"]
    ) == pytest.approx(0, abs=1e-3)
    assert float(scan.additive.sum()) == pytest.approx(180.0, rel=1e-5)
    assert scan.metadata.duration_s == pytest.approx(0.003)
    assert scan.calibration == pytest.approx(2.5 * 0.003 * F18_BRANCHING_FRACTION / 1000, rel=1e-6)


def test_read_petsird_efficiencies_match_the_package(tmp_path: Path) -> None:
    """multiplicative = sum over energy-bin pairs of petsird.helpers.get_detection_efficiency
    (without the calibration factor), on a few bins; modules out of coincidence give 0."""
    petsird = pytest.importorskip("petsird", reason="the optional 'petsird' package is not installed")
    from petsird.helpers import get_detection_efficiency

    from pet_dl.io.petsird import read_petsird

    truth = _write(tmp_path / "scan.petsird")
    scan = read_petsird(tmp_path / "scan.petsird", num_radial=65)
    sino, header = truth["sinogram"], truth["header"]
    rings, crystals = sino.crystal_pairs()
    gen = torch.Generator().manual_seed(11)
    for b in torch.randint(0, sino.num_bins, (12,), generator=gen).tolist():
        r, c = rings.reshape(-1, 2)[b], crystals.reshape(-1, 2)[b]
        total = 0.0
        for e1 in range(N_EN):
            for e2 in range(N_EN):
                d1 = int(_detection_bin(r[0], c[0], torch.tensor(e1)))
                d2 = int(_detection_bin(r[1], c[1], torch.tensor(e2)))
                hi, lo = max(d1, d2), min(d1, d2)
                total += get_detection_efficiency(
                    header.scanner,
                    petsird.TypeOfModulePair((0, 0)),
                    hi,
                    lo,
                    with_calibration_factor=False,
                )
        assert float(scan.multiplicative.reshape(-1)[b]) == pytest.approx(total, rel=1e-5)
    apart = ((crystals[..., 0] // PER_BLOCK) - (crystals[..., 1] // PER_BLOCK)).abs()
    opposite = apart == 7  # the file puts opposite modules out of coincidence (SGID -1)
    assert opposite.any() and torch.all(scan.multiplicative[opposite] == 0)
    assert torch.all(scan.multiplicative[~opposite] > 0)


def test_read_petsird_frame_and_rotation(tmp_path: Path) -> None:
    from pet_dl.io.petsird import read_petsird

    truth = _write(tmp_path / "scan.petsird")
    frame = read_petsird(
        tmp_path / "scan.petsird", num_radial=65, frame_start_s=0.001, frame_duration_s=0.001
    )
    sino = truth["sinogram"]
    expected = torch.bincount(truth["prompts"][1], minlength=sino.num_bins).reshape(sino.shape)
    assert torch.equal(frame.prompts, expected.to(torch.float32))
    assert frame.metadata.duration_s == pytest.approx(0.001)
    assert frame.metadata.extra["frame_start_s"] == "0.001"
    # the whole scanner turned by 0.3 crystal pitch: same bins, the rotation recorded
    pitch = 2 * math.pi / N
    truth = _write(tmp_path / "turned.petsird", rotation=0.3 * pitch)
    turned = read_petsird(tmp_path / "turned.petsird", num_radial=65)
    expected = torch.bincount(torch.cat(truth["prompts"]), minlength=sino.num_bins).reshape(
        sino.shape
    )
    assert torch.equal(turned.prompts, expected.to(torch.float32))
    assert float(turned.metadata.extra["petsird_rotation_deg"]) == pytest.approx(
        0.3 * 360 / N, rel=1e-3
    )


def test_read_petsird_bad_file(tmp_path: Path) -> None:
    pytest.importorskip("petsird", reason="the optional 'petsird' package is not installed")
    from pet_dl.io.petsird import PetsirdError, read_petsird

    (tmp_path / "x.petsird").write_bytes(b"not a petsird stream")
    with pytest.raises(PetsirdError, match="not a readable PETSIRD"):
        read_petsird(tmp_path / "x.petsird")
    with pytest.raises(PetsirdError, match="no such file"):
        read_petsird(tmp_path / "missing.petsird")


def test_scanner_with_gap_slots() -> None:
    """Blocks of 8 crystals in 9 angular slots (the mMR's layout): 126 slots, one gap
    crystal at the end of each block, element (module m, t) in slot 9 m + t."""
    petsird = pytest.importorskip(
        "petsird", reason="the optional 'petsird' package is not installed"
    )
    from pet_dl.io.petsird import scanner_from_header

    mapped = scanner_from_header(_header(petsird, np.random.default_rng(0), slots=9))
    sc = mapped.scanner
    assert (sc.crystals_per_ring, sc.blocks_per_ring, sc.crystals_per_block) == (126, 14, (9, 4))
    assert sc.gap_crystals_per_block == 1 and sc.gap_position == "last"
    t = mapped.element % PER_BLOCK
    assert np.array_equal(mapped.slot, 9 * mapped.module + t)
    assert np.array_equal(mapped.ring, mapped.element // PER_BLOCK)
    assert not sc.is_gap_crystal()[torch.from_numpy(mapped.slot)].any()
