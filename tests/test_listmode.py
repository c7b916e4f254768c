"""PETLINK 32-bit listmode decoding (synthetic words, and the real mMR file when
PET_DL_TEST_DATA is set) and the mMR gap position it measures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pet_dl.geometry import SinogramGeometry, get_scanner
from pet_dl.io.listmode import (
    ListmodeError,
    PetlinkLayout,
    count_events,
    decode_words,
    iter_listmode,
)

PROMPT = 1 << 30
TAG = 1 << 31


def _listmode(test_data: Path) -> Path:
    return test_data / "mmr_scanner" / "small_listmode_file.l"


def test_decode_words_kinds_and_times() -> None:
    words = np.array(
        [PROMPT | 7, TAG | 0, PROMPT | 5, 9, TAG | (1 << 29) | 3, TAG | 1, 11, PROMPT | 12],
        dtype=np.uint32,
    )
    c = decode_words(words, last_time_ms=-1)
    assert c.prompts.tolist() == [7, 5, 12]
    assert c.delayeds.tolist() == [9, 11]
    assert c.time_tags_ms.tolist() == [0, 1]
    assert c.other_tags == 1
    assert c.prompt_times_ms.tolist() == [-1, 0, 1]
    assert c.delayed_times_ms.tolist() == [0, 1]
    # a time carried in from the previous chunk
    assert decode_words(np.array([PROMPT | 1], dtype=np.uint32), 41).prompt_times_ms.tolist() == [41]


def test_chunking_does_not_change_the_result(tmp_path: Path, generator: torch.Generator) -> None:
    rng = np.random.default_rng(3)
    n = 5000
    words = rng.integers(0, 1 << 30, n, dtype=np.uint32) | (rng.random(n) < 0.8).astype(np.uint32) << 30
    tags = np.arange(0, n, 37)
    words[tags] = TAG | np.arange(tags.size, dtype=np.uint32)
    path = tmp_path / "x.l"
    words.astype("<u4").tofile(path)
    whole = decode_words(words)
    for chunk_words in (1, 36, 37, 1000, n):
        chunks = list(iter_listmode(path, chunk_words=chunk_words))
        assert np.array_equal(np.concatenate([c.prompts for c in chunks]), whole.prompts)
        assert np.array_equal(np.concatenate([c.prompt_times_ms for c in chunks]), whole.prompt_times_ms)
        assert np.array_equal(np.concatenate([c.delayed_times_ms for c in chunks]), whole.delayed_times_ms)
    counts = count_events(path, chunk_words=100)
    assert (counts.prompts, counts.delayeds, counts.time_tags) == (
        whole.prompts.size, whole.delayeds.size, tags.size
    )
    assert (counts.first_time_ms, counts.last_time_ms) == (0, tags.size - 1)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ListmodeError, match="no such file"):
        list(iter_listmode(tmp_path / "missing.l"))
    odd = tmp_path / "odd.l"
    odd.write_bytes(b"12345")
    with pytest.raises(ListmodeError, match="32-bit words"):
        list(iter_listmode(odd))
    with pytest.raises(ListmodeError, match="beyond"):
        PetlinkLayout().decode(np.array([PetlinkLayout().num_addresses]))


def test_petlink_layout_segments() -> None:
    lay = PetlinkLayout()
    assert lay.num_sinograms == 4084
    ring_a, ring_b = lay.sinogram_rings()
    # segment 0 (64 sinograms), then ring difference -1 (63), then +1 (63)
    assert np.array_equal(ring_a[:64], np.arange(64)) and np.array_equal(ring_b[:64], np.arange(64))
    assert np.all(ring_b[64:127] - ring_a[64:127] == -1) and ring_a[64] == 1 and ring_b[64] == 0
    assert np.all(ring_b[127:190] - ring_a[127:190] == 1) and ring_a[127] == 0
    assert np.abs(ring_b - ring_a).max() == 60 and ring_a.min() == 0 and ring_b.max() == 63
    # every ring pair with |difference| <= 60 appears exactly once
    pairs = set(zip(ring_a.tolist(), ring_b.tolist(), strict=True))
    assert len(pairs) == 4084
    a = np.array([5 * 252 * 344 + 17 * 344 + 200])
    assert [x.tolist() for x in lay.decode(a)] == [[5], [5], [17], [200]]


# ---------------------------------------------------------------------- real mMR file
def test_real_mmr_counts(test_data: Path) -> None:
    counts = count_events(_listmode(test_data), chunk_words=50_000)
    assert counts.prompts == 218_881
    assert counts.delayeds == 35_320
    assert counts.time_tags == 613
    assert (counts.first_time_ms, counts.last_time_ms) == (0, 612)


def test_real_mmr_prompts_never_in_gap_bins(test_data: Path) -> None:
    """The mMR preset's gap crystals record none of the real prompts (issue 19)."""
    sino = SinogramGeometry.two_d(get_scanner("mmr"))
    _, crystals = sino.crystal_pairs()
    gap = sino.scanner.is_gap_crystal()[crystals[0]].any(-1).numpy()  # (views, radial)
    lay = PetlinkLayout()
    in_gap = total = 0
    hits = np.zeros(sino.scanner.crystals_per_ring, dtype=np.int64)
    for chunk in iter_listmode(_listmode(test_data), chunk_words=50_000):
        ring_a, ring_b, v, t = lay.decode(chunk.prompts)
        in_gap += int(gap[v, t].sum())
        total += v.size
        a, b = crystals[0][v, t, 0].numpy(), crystals[0][v, t, 1].numpy()
        hits += np.bincount(np.concatenate([a, b]), minlength=hits.size)
    assert total == 218_881
    assert in_gap == 0
    # and the gap bins are where the data are empty, not an over-wide mask: every real
    # crystal sees counts, every gap crystal none
    is_gap = sino.scanner.is_gap_crystal().numpy()
    assert hits[is_gap].sum() == 0 and hits[~is_gap].min() > 0
    # the old position (gap last in each block) would hold about a fifth of the prompts
    old = np.arange(sino.scanner.crystals_per_ring) % 9 == 8
    assert hits[old].min() > 0


# ---------------------------------------------------------------------- histogramming
_HEADER = """!INTERFILE:=
%SMS-MI header name space:=PETLINK bin address
name of data file := {name}
data format:=CoincidenceList
isotope name:=F-18
radiopharmaceutical:=FDG
tracer activity at time of injection (Bq):=4.65e+007
%study date (yyyy:mm:dd):=2017:03:27
%study time (hh:mm:ss GMT+00:00):=17:00:35
%tracer injection date (yyyy:mm:dd):=2017:03:27
%tracer injection time (hh:mm:ss GMT+00:00):=16:07:00
number of rings:=64
%LM event and tag words format (bits):=32
%timing tagwords interval (msec):=1
%axial compression:=1
%maximum ring difference:=60
%number of projections:=344
%number of views:=252
"""


def _address(z: int, v: int, t: int) -> int:
    return (z * 252 + v) * 344 + t


def _write_listmode(tmp_path: Path, words: list[int]) -> Path:
    data = tmp_path / "acq.l"
    np.array(words, dtype="<u4").tofile(data)
    (tmp_path / "acq.l.hdr").write_text(_HEADER.format(name="acq.l"))
    return data


def test_header_and_synthetic_histogram(tmp_path: Path) -> None:
    from pet_dl.io.listmode import histogram_listmode, read_listmode_header

    ring_a, ring_b = PetlinkLayout().sinogram_rings()
    z_pair = {(a, b): z for z, (a, b) in enumerate(zip(ring_a.tolist(), ring_b.tolist(), strict=True))}
    events = [
        TAG | 0,
        PROMPT | _address(z_pair[(3, 3)], 5, 172),
        PROMPT | _address(z_pair[(10, 13)], 7, 100),   # ring difference +3: span-11 segment 0
        PROMPT | _address(z_pair[(20, 2)], 9, 200),    # -18: span-11 segment -2
        _address(z_pair[(3, 3)], 5, 172),              # a delayed
        TAG | 1,
        PROMPT | _address(z_pair[(3, 3)], 5, 172),
        PROMPT | _address(z_pair[(0, 0)], 0, 0),       # outermost radial bin
    ]
    path = _write_listmode(tmp_path, events)
    h = read_listmode_header(path)
    assert h.header_path.name == "acq.l.hdr" and h.tracer == "FDG"
    assert h.study_start == "2017-03-27T17:00:35" and h.injection_time == "2017-03-27T16:07:00"
    mmr = get_scanner("mmr")
    two_d = histogram_listmode(path, SinogramGeometry.two_d(mmr))
    assert two_d.prompts.sum() == 5 and two_d.delayeds.sum() == 1
    assert two_d.prompts[0, 5, 172] == 2 and two_d.prompts[0, 7, 100] == 1 and two_d.prompts[0, 0, 0] == 1
    assert two_d.duration_s == pytest.approx(0.002)
    span11 = SinogramGeometry(mmr, 344, span=11, max_ring_difference=60)
    h11 = histogram_listmode(path, span11)
    pairs = span11.plane_ring_pairs()
    where = np.argwhere(h11.prompts)
    found = {(int(p), int(v), int(t)): int(h11.prompts[p, v, t]) for p, v, t in where}
    expected = {}
    for (a, b), v, t, n in (((3, 3), 5, 172, 2), ((10, 13), 7, 100, 1), ((20, 2), 9, 200, 1), ((0, 0), 0, 0, 1)):
        plane = next(i for i, pl in enumerate(pairs) if (a, b) in pl)
        expected[(plane, v, t)] = n
    assert found == expected
    # frames: the second tag's events only; 128 centred radial bins keep vendor bins
    # 108..235 (t = 100 and t = 0 are dropped)
    late = histogram_listmode(path, SinogramGeometry.two_d(mmr), frame_start_s=0.001)
    assert late.prompts.sum() == 2 and late.frame_start_s == pytest.approx(0.001)
    small = histogram_listmode(path, SinogramGeometry.two_d(mmr, num_radial=128, view_mashing=2))
    assert small.prompts.sum() == 3 and small.dropped_prompts == 2
    assert small.prompts[0, 2, 172 - 172 + 64] == 2  # view 5 -> mashed view 2, centre bin
    with pytest.raises(ListmodeError, match="no time tag"):
        histogram_listmode(path, SinogramGeometry.two_d(mmr), frame_start_s=5.0)


def test_header_refuses_other_files(tmp_path: Path) -> None:
    from pet_dl.io.listmode import read_listmode_header

    norm = tmp_path / "norm.n.hdr"
    norm.write_text("!INTERFILE:=\n%SMS-MI header name space:=normalization header\nname of data file:=norm.n\n")
    (tmp_path / "norm.n").write_bytes(b"\0" * 8)
    with pytest.raises(ListmodeError, match="not a PETLINK listmode header"):
        read_listmode_header(norm)
    lone = tmp_path / "lone.l"
    lone.write_bytes(b"\0" * 8)
    with pytest.raises(ListmodeError, match="no listmode header found"):
        read_listmode_header(lone)
    path = _write_listmode(tmp_path, [TAG])
    (tmp_path / "acq.l.hdr").write_text(_HEADER.format(name="acq.l").replace(
        "%axial compression:=1", "%axial compression:=11"))
    with pytest.raises(ListmodeError, match="axial compression 11"):
        read_listmode_header(path)


@pytest.mark.parametrize("span", ["2d", "11"])
def test_real_mmr_histogram_keeps_every_count(test_data: Path, span: str) -> None:
    from pet_dl.importing import mmr_sinogram
    from pet_dl.io.listmode import histogram_listmode

    h = histogram_listmode(_listmode(test_data), mmr_sinogram(span), chunk_words=100_000)
    assert int(h.prompts.sum()) == 218_881 and int(h.delayeds.sum()) == 35_320
    assert h.dropped_prompts == 0 and int(h.delayed_singles.sum()) == 2 * 35_320
    assert h.duration_s == pytest.approx(0.613)


@pytest.mark.slow
def test_real_mmr_span1_keeps_every_count_and_rebins_to_span11(test_data: Path) -> None:
    from pet_dl.importing import mmr_sinogram
    from pet_dl.io.listmode import histogram_listmode

    s1, s11 = mmr_sinogram("1"), mmr_sinogram("11")
    h1 = histogram_listmode(_listmode(test_data), s1)
    assert int(h1.prompts.sum()) == 218_881 and int(h1.delayeds.sum()) == 35_320
    h11 = histogram_listmode(_listmode(test_data), s11)
    # a span-11 plane holds exactly the span-1 planes of its ring pairs
    index1 = {pl[0]: i for i, pl in enumerate(s1.plane_ring_pairs())}
    for p, pairs in enumerate(s11.plane_ring_pairs()):
        rows = [index1[pair] for pair in pairs]
        assert np.array_equal(h1.prompts[rows].sum(0), h11.prompts[p])


def test_real_mmr_frames_split_the_counts(test_data: Path) -> None:
    from pet_dl.importing import mmr_sinogram
    from pet_dl.io.listmode import histogram_listmode

    two_d = mmr_sinogram("2d")
    first = histogram_listmode(_listmode(test_data), two_d, 0.0, 0.3)
    rest = histogram_listmode(_listmode(test_data), two_d, 0.3)
    assert first.duration_s == pytest.approx(0.3) and rest.duration_s == pytest.approx(0.313)
    assert rest.frame_start_s == pytest.approx(0.3)
    assert int(first.prompts.sum() + rest.prompts.sum()) == 218_881
    assert int(first.delayeds.sum() + rest.delayeds.sum()) == 35_320
    # by rate: the frames' counts are proportional to their lengths within Poisson noise
    rate = 218_881 / 0.613
    assert abs(int(first.prompts.sum()) - 0.3 * rate) < 5 * np.sqrt(0.3 * rate)
