"""STIR Interfile sinograms (.hs + .s): layout mapping, round trips, the shared STIR files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pet_dl.geometry import SinogramGeometry, get_scanner
from pet_dl.io import ImageFileError
from pet_dl.io.stir_sinogram import (
    read_stir_geometry,
    read_stir_projdata,
    read_stir_sinogram,
    stir_header_text,
    write_stir_sinogram,
)


def _random(geometry: SinogramGeometry, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(geometry.shape, generator=generator, dtype=torch.float32) * 100


@pytest.mark.parametrize(
    "kwargs",
    [
        {"span": 1},  # 7 segments of one ring difference each
        {"span": 3, "view_mashing": 2},
        {"span": 1, "max_ring_difference": 2, "arc_corrected": True, "radial_bin_mm": 3.0},
    ],
)
def test_round_trip_equal(tmp_path: Path, generator: torch.Generator, kwargs: dict) -> None:
    geometry = SinogramGeometry(get_scanner("test"), num_radial=31, **kwargs)
    data = _random(geometry, generator)
    header = write_stir_sinogram(data, geometry, tmp_path / "sino.hs")
    assert (tmp_path / "sino.s").stat().st_size == 4 * geometry.num_bins
    back, back_geometry, _ = read_stir_projdata(header)
    assert back_geometry == geometry
    assert torch.equal(back, data)


def test_header_alone_gives_the_layout(tmp_path: Path, generator: torch.Generator) -> None:
    """Without pet_dl's comment line the header's own keys rebuild the same layout."""
    geometry = SinogramGeometry(get_scanner("mmr").with_rings(3), num_radial=21, view_mashing=4)
    data = _random(geometry, generator)
    header = write_stir_sinogram(data, geometry, tmp_path / "a.hs")
    text = "\n".join(line for line in header.read_text().splitlines() if not line.startswith(";"))
    header.write_text(text + "\n")
    back, back_geometry, extra = read_stir_projdata(header)
    assert extra == {}
    assert back_geometry == geometry  # the mMR preset with 3 rings, found by name
    assert torch.equal(back, data)


def test_segment_order_and_axial_major_data(tmp_path: Path, generator: torch.Generator) -> None:
    """Vendor order: segments 0, -1, +1 ... on disk, sinogram by sinogram; read into -S..S."""
    geometry = SinogramGeometry(get_scanner("test"), num_radial=9, span=1, max_ring_difference=1)
    data = _random(geometry, generator)
    segs = geometry.segments  # (-1, -1, 3), (0, 0, 4), (1, 1, 3)
    starts = np.cumsum([0] + [s[2] for s in segs])
    disk_order = [1, 0, 2]
    blocks = [
        data[starts[i] : starts[i + 1]].numpy() for i in disk_order
    ]  # (planes, views, radial)
    np.concatenate([b.ravel() for b in blocks]).astype("<f4").tofile(tmp_path / "v.s")
    text = stir_header_text(geometry, "v.s")
    text = text.replace(
        "matrix axis label [3] := view", "matrix axis label [3] := axial coordinate"
    )
    text = text.replace(
        "matrix axis label [2] := axial coordinate", "matrix axis label [2] := view"
    )
    text = text.replace(f"!matrix size [3] := {geometry.num_views}", "!matrix size [3] := { 4,3,3}")
    text = text.replace("!matrix size [2] := { 3,4,3}", f"!matrix size [2] := {geometry.num_views}")
    text = text.replace("per segment := { -1,0,1}", "per segment := { 0,-1,1}")
    (tmp_path / "v.hs").write_text(text)
    back, back_geometry, _ = read_stir_projdata(tmp_path / "v.hs")
    assert back_geometry == geometry
    assert torch.equal(back, data)


def test_truncated_data_and_tof_are_refused(tmp_path: Path, generator: torch.Generator) -> None:
    geometry = SinogramGeometry.two_d(get_scanner("test"), num_radial=15)
    header = write_stir_sinogram(_random(geometry, generator), geometry, tmp_path / "t.hs")
    data = (tmp_path / "t.s").read_bytes()
    (tmp_path / "t.s").write_bytes(data[:-4])
    with pytest.raises(ImageFileError, match="truncated"):
        read_stir_projdata(header)
    tof = SinogramGeometry.two_d(get_scanner("test"), num_radial=15, tof=True)
    with pytest.raises(ValueError, match="TOF"):
        write_stir_sinogram(torch.zeros(tof.shape), tof, tmp_path / "tof.hs")
    with pytest.raises(ValueError, match="shape"):
        write_stir_sinogram(torch.zeros(3, 4, 5), geometry, tmp_path / "bad.hs")


def test_foreign_file_is_an_uncorrected_scan(tmp_path: Path, generator: torch.Generator) -> None:
    """A STIR file with no pet_dl line: prompts = data, m = 1, a = 0, nominal calibration."""
    from pet_dl.simulate import calibration_per_second

    geometry = SinogramGeometry.two_d(get_scanner("mmr"), num_radial=101)
    counts = torch.poisson(torch.full(geometry.shape, 3.0), generator=generator)
    text = stir_header_text(geometry, "p.s", duration_s=30.0)
    write_stir_sinogram(counts, geometry, tmp_path / "p.hs")
    (tmp_path / "p.hs").write_text(text)  # the same data, a plain STIR header with a duration
    scan = read_stir_sinogram(tmp_path / "p.hs")
    assert scan.sinogram == geometry
    assert torch.equal(scan.prompts, counts)
    assert torch.all(scan.multiplicative == 1) and torch.all(scan.additive == 0)
    assert scan.metadata.duration_s == 30.0
    assert scan.calibration == pytest.approx(calibration_per_second(geometry) * 30.0, rel=1e-12)
    scan.image.check_fits(geometry.scanner)


# ---------------------------------------------------------------------------- shared data
def test_mmr_templates_match_the_preset(test_data: Path) -> None:
    mmr = get_scanner("mmr")
    seg2 = read_stir_geometry(test_data / "mmr_scanner" / "Siemens_mMR_seg2.hs")
    assert seg2 == SinogramGeometry(mmr, num_radial=344, span=1, max_ring_difference=2)
    assert seg2.shape == (62 + 63 + 64 + 63 + 62, 252, 344)
    span11 = read_stir_geometry(test_data / "mmr_scanner" / "mMR_template_span11.hs")
    assert span11 == SinogramGeometry(mmr, num_radial=344, span=11)
    assert span11.num_planes == 837 and span11.max_ring_difference == 60
    assert [s[2] for s in span11.segments] == [27, 49, 71, 93, 115, 127, 115, 93, 71, 49, 27]


def test_reads_stir_scatter_cylinder(test_data: Path) -> None:
    """STIR's single-scatter estimate of a uniform cylinder: 8 planes x 32 views x 35 bins,
    smooth in every direction (a wrong axis order would interleave planes and views)."""
    scan = read_stir_sinogram(test_data / "stir_reference" / "scatter_cylinder.hs")
    sino = scan.sinogram
    assert sino.shape == (8, 32, 35)
    assert sino.scanner.crystals_per_ring == 64 and sino.scanner.num_rings == 8
    assert not sino.arc_corrected
    y = scan.prompts.double()
    assert y.min() >= 0 and y.max() > 0
    peak = float(y.max())
    assert float((y[:, 1:] - y[:, :-1]).abs().max()) < 0.05 * peak  # neighbouring views
    assert float((y[1:] - y[:-1]).abs().max()) < 0.15 * peak  # neighbouring planes
    # the scatter hump is centred: its centroid within 1.5 bins of the axis in every sinogram
    k = torch.arange(35, dtype=torch.float64) - 17
    centroid = (y * k).sum(-1) / y.sum(-1)
    assert float(centroid.abs().max()) < 1.5
    # the data file holds exactly these values (float32, segment/view/axial/tangential order)
    raw = np.fromfile(test_data / "stir_reference" / "scatter_cylinder.s", dtype="<f4")
    assert raw.size == y.numel()
    assert np.array_equal(raw.reshape(32, 8, 35).transpose(1, 0, 2), scan.prompts.numpy())


def test_written_mmr_header_matches_the_vendor_template(test_data: Path, tmp_path: Path) -> None:
    """pet_dl's span-11 mMR header says what the shared STIR template says."""
    from pet_dl.io.interfile import read_interfile_header, read_sinogram_header

    template = test_data / "mmr_scanner" / "mMR_template_span11.hs"
    geometry = SinogramGeometry(get_scanner("mmr"), num_radial=344, span=11)
    (tmp_path / "m.hs").write_text(stir_header_text(geometry, "m.s"))
    ours, theirs = read_sinogram_header(tmp_path / "m.hs"), read_sinogram_header(template)
    for key in (
        "num_segments",
        "num_views",
        "num_tangential",
        "axial_per_segment",
        "min_ring_difference",
        "max_ring_difference",
        "axis_labels",
    ):
        assert ours[key] == theirs[key], key
    for key, value in theirs["scanner"].items():
        assert (
            ours["scanner"][key] == pytest.approx(value)
            if key != "name"
            else ours["scanner"][key] == value
        )
    raw_ours, raw_theirs = read_interfile_header(tmp_path / "m.hs"), read_interfile_header(template)
    for key, value in raw_theirs.items():
        if key.startswith("number of") and "per" in key:
            assert raw_ours.get(key) == value, key
