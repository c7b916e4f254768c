"""Geometry: value semantics, presets against real mMR headers, LOR geometry, image grid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import pet_dl.geometry as geometry
from pet_dl.geometry import (
    SCANNER_PRESETS,
    ImageGeometry,
    ScannerGeometry,
    SinogramGeometry,
    TOFParameters,
    get_scanner,
)
from pet_dl.io.interfile import read_interfile_header, read_sinogram_header


def _geometries() -> list[object]:
    mmr = get_scanner("mmr")
    return [
        get_scanner("test").tof,
        *(get_scanner(name) for name in SCANNER_PRESETS),
        SinogramGeometry(mmr, 344, span=11, max_ring_difference=60),
        SinogramGeometry.two_d(get_scanner("test"), tof=True, view_mashing=2),
        SinogramGeometry(get_scanner("test"), 31, arc_corrected=True, radial_bin_mm=2.5),
        ImageGeometry.centered((344, 344, 127), (2.08626, 2.08626, 2.03125)),
        ImageGeometry((3, 4, 5), (1.0, 2.0, 3.0), (-1.5, 0.25, 7.0)),
    ]


# --------------------------------------------------------------------- value semantics
@pytest.mark.parametrize("obj", _geometries(), ids=lambda o: type(o).__name__)
def test_repr_evaluates_to_equal_object(obj: object) -> None:
    namespace = {name: getattr(geometry, name) for name in geometry.__all__}
    again = eval(repr(obj), namespace)
    assert again == obj and again is not obj
    assert hash(again) == hash(obj)


@pytest.mark.parametrize("obj", _geometries(), ids=lambda o: type(o).__name__)
def test_to_dict_json_round_trip(obj: object) -> None:
    text = json.dumps(obj.to_dict())  # plain JSON: no tuples or tensors needed
    again = type(obj).from_dict(json.loads(text))
    assert again == obj


def test_frozen_and_equality() -> None:
    a, b = get_scanner("mmr"), get_scanner("mmr")
    assert a == b and a != get_scanner("vision") and a != a.with_rings(1)
    with pytest.raises(AttributeError):
        a.num_rings = 3  # type: ignore[misc]
    sino = SinogramGeometry(a, 344)
    assert sino == SinogramGeometry(b, 344, max_ring_difference=63)
    assert sino != SinogramGeometry(a, 344, max_ring_difference=62)


# --------------------------------------------------------------------- presets
def test_mmr_preset_matches_header_scanner_block(test_data: Path) -> None:
    h = read_interfile_header(test_data / "mmr_scanner" / "Siemens_mMR_seg2.hs")
    s = get_scanner("mmr")
    assert s.num_rings == int(h["number of rings"])
    assert s.crystals_per_ring == int(h["number of detectors per ring"])
    assert 2 * s.radius_mm == pytest.approx(10 * float(h["inner ring diameter (cm)"]))
    assert s.doi_mm == pytest.approx(10 * float(h["average depth of interaction (cm)"]))
    assert s.ring_spacing_mm == pytest.approx(10 * float(h["distance between rings (cm)"]))
    assert s.default_num_radial == int(h["maximum number of non-arc-corrected bins"])
    assert s.crystals_per_block == (
        int(h["number of crystals per block in transaxial direction"]),
        int(h["number of crystals per block in axial direction"]),
    )
    # 56 blocks x (1 gap + 8 real crystals): the gap is the first of each block
    gaps = s.is_gap_crystal()
    assert int(gaps.sum()) == 56 and bool(gaps[0]) and bool(gaps[9]) and not bool(gaps[1:9].any())
    # STIR's "effective central bin size" = (radius + DOI) * pi / crystals per ring
    sino = SinogramGeometry(s, 344)
    r = sino.radial_positions_mm()
    central = float(r[s.default_num_radial // 2 + 1] - r[s.default_num_radial // 2])
    assert central == pytest.approx(10 * float(h["effective central bin size (cm)"]), rel=1e-5)
    assert central == pytest.approx(10 * float(h["default bin size (cm)"]), rel=2e-3)


@pytest.mark.parametrize(
    ("header", "span", "max_rd"),
    [("Siemens_mMR_seg2.hs", 1, 2), ("mMR_template_span11.hs", 11, 60)],
)
def test_mmr_sinogram_sizes_match_header(test_data: Path, header: str, span: int, max_rd: int) -> None:
    h = read_sinogram_header(test_data / "mmr_scanner" / header)
    sino = SinogramGeometry(get_scanner("mmr"), 344, span=span, max_ring_difference=max_rd)
    assert len(sino.segments) == h["num_segments"]
    assert [seg[2] for seg in sino.segments] == h["axial_per_segment"]
    assert [seg[0] for seg in sino.segments] == h["min_ring_difference"]
    assert [seg[1] for seg in sino.segments] == h["max_ring_difference"]
    assert sino.num_views == h["num_views"]
    assert sino.num_radial == h["num_tangential"]
    assert sino.shape == (sum(h["axial_per_segment"]), 252, 344)


def test_mmr_span11_sizes_without_data() -> None:
    # the same numbers as the header, so the check also runs without PET_DL_TEST_DATA
    sino = SinogramGeometry(get_scanner("mmr"), 344, span=11, max_ring_difference=60)
    assert [s[2] for s in sino.segments] == [27, 49, 71, 93, 115, 127, 115, 93, 71, 49, 27]
    assert sino.num_planes == 837


@pytest.mark.parametrize("name", SCANNER_PRESETS)
def test_presets_consistent(name: str) -> None:
    s = get_scanner(name)
    assert s.name == name and get_scanner(name.upper()) == s
    pos = s.crystal_positions()
    assert pos.shape == (s.num_rings, s.crystals_per_ring, 3) and pos.dtype == torch.float64
    radius = torch.linalg.norm(pos[..., :2], dim=-1)
    torch.testing.assert_close(radius, torch.full_like(radius, s.detector_radius_mm))
    z = pos[:, 0, 2]
    assert abs(float(z.mean())) < 1e-9 * s.axial_fov_mm  # axial centre at z = 0
    torch.testing.assert_close(torch.diff(z), torch.full_like(z[1:], s.ring_spacing_mm))
    assert s.sensitivity_cps_per_kbq is not None and s.sensitivity_cps_per_kbq > 0
    sino = SinogramGeometry.two_d(s)
    assert sino.shape == (1, s.crystals_per_ring // 2, s.default_num_radial)
    # the default radial bins cover a transaxial FOV inside the ring
    r = sino.radial_positions_mm()
    assert 0.5 * s.radius_mm < float(r.max()) < s.radius_mm


def test_preset_published_values() -> None:
    assert get_scanner("mmr").tof is None
    fwhm = {"vision": 210.0, "dmi": 375.4, "uexplorer": 430.0}
    for name, ps in fwhm.items():
        tof = get_scanner(name).tof
        assert tof is not None and tof.fwhm_ps == pytest.approx(ps)
    ux = get_scanner("uexplorer")
    assert ux.axial_fov_mm == pytest.approx(1940.0)
    assert ux.num_rings * ux.crystals_per_ring == 564_480
    assert get_scanner("vision").num_rings * get_scanner("vision").crystals_per_ring == 60_800
    with pytest.raises(ValueError, match="unknown scanner"):
        get_scanner("nonexistent")


def test_tof_units() -> None:
    tof = TOFParameters.from_picoseconds(num_bins=5, bin_width_ps=100.0, fwhm_ps=400.0)
    # 1 ps of coincidence time = c/2 = 0.1499 mm along the LOR
    assert tof.fwhm_mm == pytest.approx(400.0 * 0.299792458 / 2)
    assert tof.sigma_mm == pytest.approx(tof.fwhm_mm / (2 * math.sqrt(2 * math.log(2))))
    centers = tof.bin_centers_mm()
    assert centers[2] == 0.0 and centers[4] == pytest.approx(2 * tof.bin_width_mm)
    with pytest.raises(ValueError, match="num_bins"):
        TOFParameters(0, 1.0, 1.0)


def test_with_rings_keeps_centre() -> None:
    s = get_scanner("mmr")
    one = s.with_rings(1)
    assert one.num_rings == 1 and float(one.crystal_positions()[0, 0, 2]) == 0.0
    four = s.with_rings(4).ring_z()
    torch.testing.assert_close(four, torch.tensor([-1.5, -0.5, 0.5, 1.5], dtype=torch.float64) * 4.0625)
    with pytest.raises(ValueError, match="only 64 rings"):
        s.with_rings(65)


# --------------------------------------------------------------------- LOR geometry
def _direction_angle(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Angle of the LOR normal (direction rotated by -90 deg), in [0, pi)."""
    d = end[..., :2] - start[..., :2]
    return torch.remainder(torch.atan2(-d[..., 0], d[..., 1]), math.pi)


def test_lor_angles_and_radial_offsets_mmr() -> None:
    s = get_scanner("mmr")
    sino = SinogramGeometry.two_d(s)
    start, end = sino.lor_endpoints(dtype=torch.float64)
    assert start.shape == end.shape == (1, 252, 344, 3)
    phi = _direction_angle(start[0], end[0])  # (views, radial)
    expected = torch.arange(252, dtype=torch.float64)[:, None] * math.pi / 252
    diff = torch.remainder(phi - expected + math.pi / 2, math.pi) - math.pi / 2
    half_pitch = s.crystal_pitch_rad / 2
    assert float(diff.abs().max()) <= half_pitch * (1 + 1e-9)
    # even radial offsets are exactly at v*pi/num_views, odd ones half a pitch off
    k = torch.arange(344) - 172
    assert float(diff[:, k % 2 == 0].abs().max()) < 1e-9
    # signed distance from the axis along the normal: monotonic, symmetric, R sin(pi k / N)
    normal = torch.stack((torch.cos(phi), torch.sin(phi)), dim=-1)
    dist = (start[0, :, :, :2] * normal).sum(-1)
    # the normal taken in [0, pi) flips the sign for some views: compare |distance|
    expected_s = s.detector_radius_mm * torch.sin(math.pi * k.double() / 504)
    torch.testing.assert_close(dist.abs(), expected_s.abs().expand(252, -1), rtol=1e-9, atol=1e-9)
    r = sino.radial_positions_mm()
    assert bool((torch.diff(r) > 0).all())
    torch.testing.assert_close(r[172 - 100], -r[172 + 100])
    # central bins pass within a crystal pitch of the axis
    pitch_mm = s.detector_radius_mm * s.crystal_pitch_rad
    assert float(dist[:, 171:174].abs().max()) < pitch_mm


def test_endpoints_on_cylinder_and_ring_differences() -> None:
    s = get_scanner("test")
    for sino in (
        SinogramGeometry(s, 65),
        SinogramGeometry(s, 64, span=3, max_ring_difference=1),
        SinogramGeometry(s, 31, arc_corrected=True, radial_bin_mm=4.0),
    ):
        start, end = sino.lor_endpoints(dtype=torch.float64)
        assert start.shape == (*sino.shape, 3)
        for p in (start, end):
            radius = torch.linalg.norm(p[..., :2], dim=-1)
            torch.testing.assert_close(radius, torch.full_like(radius, s.detector_radius_mm))
        rd_range = sino.plane_ring_difference_range()
        first = 0
        for lo, hi, n in sino.segments:
            assert bool((rd_range[first : first + n, 0] >= lo).all())
            assert bool((rd_range[first : first + n, 1] <= hi).all())
            first += n
        # z difference of each plane = mean ring difference x ring spacing
        dz = end[:, 0, 0, 2] - start[:, 0, 0, 2]
        mean_rd = torch.tensor(
            [sum(b - a for a, b in p) / len(p) for p in sino.plane_ring_pairs()], dtype=torch.float64
        )
        torch.testing.assert_close(dz, mean_rd * s.ring_spacing_mm)
        # segments ascend in ring difference
        assert [seg[0] for seg in sino.segments] == sorted(seg[0] for seg in sino.segments)


def test_span11_planes_partition_ring_pairs() -> None:
    rings = 64
    sino = SinogramGeometry(get_scanner("mmr"), 344, span=11, max_ring_difference=60)
    pairs = [pair for plane in sino.plane_ring_pairs() for pair in plane]
    # every ring pair with |ring difference| <= 60 is in exactly one plane
    expected = {(a, b) for a in range(rings) for b in range(rings) if abs(b - a) <= 60}
    assert len(pairs) == len(set(pairs)) == len(expected) and set(pairs) == expected
    # within a segment, planes ascend in z (ring sum); representative z is the mean per end
    z_start, z_end = sino.plane_z()
    mid = (z_start + z_end) / 2
    first = 0
    for _, _, n in sino.segments:
        assert bool((torch.diff(mid[first : first + n]) > 0).all())
        first += n
    ring_z = get_scanner("mmr").ring_z()
    plane = sino.plane_ring_pairs()[100]
    assert float(z_start[100]) == pytest.approx(float(ring_z[[a for a, _ in plane]].mean()))
    assert float(z_end[100]) == pytest.approx(float(ring_z[[b for _, b in plane]].mean()))


def test_crystal_pairs_match_endpoints() -> None:
    s = get_scanner("test")
    sino = SinogramGeometry(s, 65, max_ring_difference=2)
    rings, crystals = sino.crystal_pairs()
    assert rings.shape == crystals.shape == (*sino.shape, 2)
    pos = s.crystal_positions()
    start, end = sino.lor_endpoints(dtype=torch.float64)
    torch.testing.assert_close(pos[rings[..., 0], crystals[..., 0]], start)
    torch.testing.assert_close(pos[rings[..., 1], crystals[..., 1]], end)
    # each unordered crystal pair of a ring appears at most once per plane
    c = crystals[0].reshape(-1, 2)
    keys = torch.minimum(c[:, 0], c[:, 1]) * 1000 + torch.maximum(c[:, 0], c[:, 1])
    assert keys.unique().numel() == keys.numel()
    with pytest.raises(ValueError, match="arc-corrected"):
        SinogramGeometry(s, 31, arc_corrected=True, radial_bin_mm=4.0).crystal_pairs()


def test_view_mashing_averages_member_views() -> None:
    s = get_scanner("test")
    full = SinogramGeometry.two_d(s)
    mashed = SinogramGeometry.two_d(s, view_mashing=2)
    assert mashed.num_views == full.num_views // 2
    fs, fe = full.lor_endpoints(dtype=torch.float64)
    ms, me = mashed.lor_endpoints(dtype=torch.float64)
    torch.testing.assert_close(ms[:, 3], (fs[:, 6] + fs[:, 7]) / 2)
    torch.testing.assert_close(me[:, 3], (fe[:, 6] + fe[:, 7]) / 2)


def test_arc_corrected_parallel_lines() -> None:
    s = get_scanner("test")
    sino = SinogramGeometry.two_d(s, num_radial=31, arc_corrected=True, radial_bin_mm=5.0)
    start, end = sino.lor_endpoints(dtype=torch.float64)
    phi = _direction_angle(start[0], end[0])
    expected = torch.arange(sino.num_views, dtype=torch.float64)[:, None] * math.pi / sino.num_views
    torch.testing.assert_close(phi, expected.expand_as(phi), atol=1e-9, rtol=0)
    torch.testing.assert_close(sino.radial_positions_mm(), (torch.arange(31) - 15).double() * 5.0)


def test_tof_shape_and_two_d() -> None:
    s = get_scanner("test")
    sino = SinogramGeometry.two_d(s, tof=True)
    assert sino.shape == (1, 56, 65, 9) and sino.num_bins == 56 * 65 * 9
    start, _ = sino.lor_endpoints()
    assert start.dtype == torch.float32 and float(start[..., 2].abs().max()) == 0.0


def test_view_subsets_interleaved() -> None:
    sino = SinogramGeometry.two_d(get_scanner("test"))
    subsets = sino.view_subsets(4)
    assert [int(v[0]) for v in subsets] == [0, 1, 2, 3]
    assert bool((subsets[1][1:] - subsets[1][:-1] == 4).all())
    assert sorted(torch.cat(subsets).tolist()) == list(range(sino.num_views))
    start_all, _ = sino.lor_endpoints()
    start_sub, _ = sino.lor_endpoints(views=subsets[2])
    torch.testing.assert_close(start_sub, start_all[:, subsets[2]])
    with pytest.raises(ValueError, match="num_subsets"):
        sino.view_subsets(0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_radial": 65, "span": 2}, "span must be odd"),
        ({"num_radial": 65, "span": 0}, "span"),
        ({"num_radial": 65, "max_ring_difference": 4}, "beyond the 4 rings"),
        ({"num_radial": 65, "span": 3, "max_ring_difference": 2}, "does not fit span 3"),
        ({"num_radial": 65, "span": 9}, "span 9 is too large"),
        ({"num_radial": 112}, "larger than possible"),
        ({"num_radial": 65, "view_mashing": 5}, "view_mashing"),
        ({"num_radial": 65, "tof": True, "scanner": "mmr"}, "no TOF"),
        ({"num_radial": 65, "arc_corrected": True}, "radial_bin_mm"),
        ({"num_radial": 65, "arc_corrected": True, "radial_bin_mm": 10.0}, "beyond the detector"),
        ({"num_radial": 65, "radial_bin_mm": 2.0}, "only for arc_corrected"),
    ],
)
def test_bad_sinogram_input(kwargs: dict, match: str) -> None:
    kwargs = dict(kwargs)
    scanner = get_scanner(kwargs.pop("scanner", "test"))
    with pytest.raises(ValueError, match=match):
        SinogramGeometry(scanner, **kwargs)


def test_bad_scanner_input() -> None:
    base = get_scanner("test").to_dict()
    with pytest.raises(ValueError, match="even"):
        ScannerGeometry.from_dict({**base, "crystals_per_ring": 111, "blocks_per_ring": 1,
                                   "crystals_per_block": [111, 4]})
    with pytest.raises(ValueError, match="must equal crystals_per_ring"):
        ScannerGeometry.from_dict({**base, "blocks_per_ring": 13})
    with pytest.raises(ValueError, match="radius_mm"):
        ScannerGeometry.from_dict({**base, "radius_mm": -1.0})
    with pytest.raises(TypeError, match="num_rings"):
        ScannerGeometry.from_dict({**base, "num_rings": 2.0})
    with pytest.raises(ValueError, match="gap_position"):
        ScannerGeometry.from_dict({**base, "gap_crystals_per_block": 1, "gap_position": "middle"})


@pytest.mark.parametrize(("position", "gaps_in_block"), [("last", [6, 7]), ("first", [0, 1])])
def test_gap_position(position: str, gaps_in_block: list[int]) -> None:
    base = get_scanner("test").to_dict()
    s = ScannerGeometry.from_dict({**base, "gap_crystals_per_block": 2, "gap_position": position})
    gaps = s.is_gap_crystal()
    expected = torch.tensor([i % 8 in gaps_in_block for i in range(112)])
    assert torch.equal(gaps, expected)
    # scan files written before the field existed read with the old default
    old = s.to_dict()
    del old["gap_position"]
    assert ScannerGeometry.from_dict(old).gap_position == "last"


# --------------------------------------------------------------------- image grid
def test_image_affine_maps_voxel_centres(generator: torch.Generator) -> None:
    img = ImageGeometry((7, 5, 3), (2.0, 3.0, 4.0), (-6.0, 1.0, -4.0))
    idx = torch.randint(0, 3, (20, 3), generator=generator).numpy()
    homog = np.concatenate([idx, np.ones((20, 1))], axis=1)
    world = (img.affine() @ homog.T).T[:, :3]
    expected = np.stack([img.voxel_centers(k)[idx[:, k]] for k in range(3)], axis=1)
    np.testing.assert_allclose(world, expected)
    c = ImageGeometry.centered((4, 5, 1), 2.5)
    assert c.voxel_centers(0).mean() == 0.0 and c.voxel_centers(1)[2] == 0.0
    assert c.voxel_centers(2).tolist() == [0.0]
    assert c.bounds_mm()[0] == (-5.0, 5.0)


def test_image_check_fits() -> None:
    mmr = get_scanner("mmr")
    ImageGeometry.centered((344, 344, 127), (2.08626, 2.08626, 2.03125)).check_fits(mmr)
    ImageGeometry.centered((128, 128, 1), 2.0).check_fits(mmr.with_rings(1))
    with pytest.raises(ValueError, match="twice the detector radius"):
        ImageGeometry.centered((344, 344, 127), 20.0).check_fits(mmr)  # cm instead of mm
    with pytest.raises(ValueError, match="axial field of view"):
        ImageGeometry.centered((128, 128, 200), 2.0).check_fits(mmr)
    with pytest.raises(ValueError, match="no voxel inside"):
        ImageGeometry((10, 10, 1), (2.0, 2.0, 2.0), (400.0, 0.0, 0.0)).check_fits(mmr.with_rings(1))
    with pytest.raises(ValueError, match="shape"):
        ImageGeometry((0, 3, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
