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
