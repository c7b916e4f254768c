"""Siemens PETLINK 32-bit listmode (Biograph mMR ``.l`` + Interfile header ``.l.hdr``).

Every 32-bit little-endian word is one record:

- bit 31 = 0: a coincidence event. Bit 30 is 1 for a prompt, 0 for a delayed
  coincidence; bits 0-29 are the event's *bin address*, an offset into the vendor's
  span-1 sinogram (tangential bin fastest, then view, then sinogram).
- bit 31 = 1 and bits 29-30 = 0: a time tag; bits 0-28 are the milliseconds since the
  start of the acquisition (one tag per ``timing tagwords interval``, 1 ms on the mMR).
- bit 31 = 1 otherwise: other tags (dead time, gating, bed motion), counted and skipped.

Bin address ``A`` (the layout read from STIR's and NiftyPET's documentation of the
format): ``t = A % num_projections`` (tangential bin, 0..343), ``v = (A // 344) % 252``
(view), ``z = A // (344 * 252)`` (sinogram). Sinograms are the segments of single ring
differences in the order ``0, -1, +1, -2, +2, ... , -max, +max``; segment ``d`` holds
``num_rings - |d|`` sinograms ordered by the lower ring. Ring difference ``d = ring_b -
ring_a`` where ``ring_a`` is the ring of the LOR start, so a vendor bin ``(z, v, t)``
is the pet_dl bin (view ``v``, radial index ``t``, ring pair ``(ring_a, ring_b)``) of
:class:`~pet_dl.geometry.SinogramGeometry` with 344 radial bins: the crystal-pair
formula there is the vendor's.

Files are read in chunks of ``chunk_words`` words with numpy: memory depends on the
chunk size, never on the file size (a clinical file is gigabytes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pet_dl.io import ImageFileError

#: Words read per chunk by default (4 Mi words = 16 MiB).
DEFAULT_CHUNK_WORDS = 1 << 22

_ADDRESS_MASK = (1 << 30) - 1
_TIME_MASK = (1 << 29) - 1


class ListmodeError(ImageFileError):
    """A listmode file or its header cannot be read or does not make sense."""


@dataclass
class ListmodeChunk:
    """The records of one chunk of a listmode file, decoded.

    Attributes:
        prompts: bin addresses of the prompt events, int64 ``(n_prompts,)``.
        prompt_times_ms: time of each prompt, int64 ``(n_prompts,)``: the value of the
            last time tag before it (ms since the acquisition start; events before the
            first tag get ``-1``).
        delayeds: bin addresses of the delayed events, int64 ``(n_delayeds,)``.
        delayed_times_ms: like ``prompt_times_ms`` for the delayeds.
        time_tags_ms: the time tags of this chunk, int64 ``(n_tags,)``, ms.
        other_tags: number of other tag words (dead time, gating, ...).
    """

    prompts: np.ndarray
    prompt_times_ms: np.ndarray
    delayeds: np.ndarray
    delayed_times_ms: np.ndarray
    time_tags_ms: np.ndarray
    other_tags: int = 0


def decode_words(words: np.ndarray, last_time_ms: int = -1) -> ListmodeChunk:
    """Decode PETLINK 32-bit words.

    Args:
        words: uint32 ``(n,)`` raw records in file order.
        last_time_ms: the last time tag seen before these words (``-1``: none yet).

    Returns:
        the decoded chunk; event times are the last preceding time tag (ms).
    """
    w = np.asarray(words, dtype=np.uint32)
    is_tag = (w >> np.uint32(31)).astype(bool)
    is_time = is_tag & (((w >> np.uint32(29)) & np.uint32(3)) == 0)
    # time of every word: the value of the last time tag at or before it (forward fill)
    tag_pos = np.flatnonzero(is_time)
    tag_ms = (w[tag_pos] & np.uint32(_TIME_MASK)).astype(np.int64)
    last = np.full(w.size, -1, dtype=np.int64)
    last[tag_pos] = tag_pos
    np.maximum.accumulate(last, out=last)
    times = np.full(w.size, last_time_ms, dtype=np.int64)
    has = last >= 0
    times[has] = (w[last[has]] & np.uint32(_TIME_MASK)).astype(np.int64)
    is_prompt = ~is_tag & ((w >> np.uint32(30)) & np.uint32(1)).astype(bool)
    is_delayed = ~is_tag & ~is_prompt
    address = (w & np.uint32(_ADDRESS_MASK)).astype(np.int64)
    return ListmodeChunk(
        prompts=address[is_prompt],
        prompt_times_ms=times[is_prompt],
        delayeds=address[is_delayed],
        delayed_times_ms=times[is_delayed],
        time_tags_ms=tag_ms,
        other_tags=int((is_tag & ~is_time).sum()),
    )


def iter_listmode(
    path: str | os.PathLike[str],
    chunk_words: int = DEFAULT_CHUNK_WORDS,
    offset_bytes: int = 0,
    progress: bool = False,
) -> Iterator[ListmodeChunk]:
    """Stream a PETLINK 32-bit file chunk by chunk.

    Args:
        path: the listmode data file (``.l``).
        chunk_words: records per chunk (memory is a few times ``4 * chunk_words`` bytes).
        offset_bytes: bytes to skip at the start (the header's ``data offset in bytes``).
        progress: show a tqdm progress bar over the file's bytes (on stderr).

    Yields:
        :class:`ListmodeChunk` in file order; time tags carry over between chunks.

    Raises:
        ListmodeError: missing file, or a size that is not whole 32-bit words.
    """
    p = Path(path)
    if not p.is_file():
        raise ListmodeError(f"listmode file {p}: no such file")
    if chunk_words < 1:
        raise ValueError(f"chunk_words must be >= 1, got {chunk_words}")
    size = p.stat().st_size - offset_bytes
    if size < 0 or size % 4:
        raise ListmodeError(
            f"listmode file {p}: {size} bytes after the offset is not a whole number of"
            " 32-bit words; not a PETLINK 32-bit file"
        )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"reading {p.name}", leave=False)
    last_time = -1
    try:
        with open(p, "rb") as f:
            f.seek(offset_bytes)
            while True:
                words = np.fromfile(f, dtype="<u4", count=chunk_words)
                if words.size == 0:
                    break
                chunk = decode_words(words, last_time)
                if chunk.time_tags_ms.size:
                    last_time = int(chunk.time_tags_ms[-1])
                if bar is not None:
                    bar.update(4 * words.size)
                yield chunk
    finally:
        if bar is not None:
            bar.close()


@dataclass
class ListmodeCounts:
    """Totals of a listmode file (:func:`count_events`).

    Attributes:
        prompts, delayeds, time_tags, other_tags: numbers of records.
        first_time_ms, last_time_ms: first and last time tag (ms; -1 when none).
    """

    prompts: int = 0
    delayeds: int = 0
    time_tags: int = 0
    other_tags: int = 0
    first_time_ms: int = -1
    last_time_ms: int = -1


def count_events(
    path: str | os.PathLike[str], chunk_words: int = DEFAULT_CHUNK_WORDS, offset_bytes: int = 0
) -> ListmodeCounts:
    """Count prompts, delayeds and tags of a PETLINK 32-bit file (streamed)."""
    out = ListmodeCounts()
    for chunk in iter_listmode(path, chunk_words=chunk_words, offset_bytes=offset_bytes):
        out.prompts += chunk.prompts.size
        out.delayeds += chunk.delayeds.size
        out.time_tags += chunk.time_tags_ms.size
        out.other_tags += chunk.other_tags
        if chunk.time_tags_ms.size:
            if out.first_time_ms < 0:
                out.first_time_ms = int(chunk.time_tags_ms[0])
            out.last_time_ms = int(chunk.time_tags_ms[-1])
    return out


# ---------------------------------------------------------------------- bin addresses
@dataclass(frozen=True)
class PetlinkLayout:
    """The span-1 sinogram a PETLINK bin address points into.

    Attributes:
        num_rings: crystal rings (mMR 64).
        num_views: views (mMR 252).
        num_projections: tangential bins (mMR 344).
        max_ring_difference: largest |ring difference| recorded (mMR 60).
    """

    num_rings: int = 64
    num_views: int = 252
    num_projections: int = 344
    max_ring_difference: int = 60

    @property
    def num_sinograms(self) -> int:
        """Sinograms over all segments (mMR: 4084)."""
        d = np.arange(-self.max_ring_difference, self.max_ring_difference + 1)
        return int((self.num_rings - np.abs(d)).sum())

    @property
    def num_addresses(self) -> int:
        """Number of valid bin addresses."""
        return self.num_sinograms * self.num_views * self.num_projections

    def sinogram_rings(self) -> tuple[np.ndarray, np.ndarray]:
        """(ring_a, ring_b) of every vendor sinogram, int64 ``(num_sinograms,)`` each."""
        ring_a, ring_b = [], []
        order = [0]
        for d in range(1, self.max_ring_difference + 1):
            order += [-d, d]
        for d in order:
            lower = np.arange(self.num_rings - abs(d))
            ring_a.append(lower - min(d, 0))
            ring_b.append(lower + max(d, 0))
        return np.concatenate(ring_a), np.concatenate(ring_b)

    def decode(self, address: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Split bin addresses into (ring_a, ring_b, view, tangential bin).

        Args:
            address: int64 bin addresses ``(n,)``; each must be below
                :attr:`num_addresses`.

        Returns:
            four int64 arrays ``(n,)``: ring of the LOR start and end, view
            (0..num_views-1), tangential bin (0..num_projections-1).

        Raises:
            ListmodeError: an address beyond the sinogram.
        """
        a = np.asarray(address, dtype=np.int64)
        if a.size and (int(a.max()) >= self.num_addresses or int(a.min()) < 0):
            raise ListmodeError(
                f"bin address {int(a.max())} is beyond the {self.num_addresses} bins of a"
                f" {self.num_rings}-ring span-1 sinogram with max ring difference"
                f" {self.max_ring_difference}; header and data do not match"
            )
        t = a % self.num_projections
        rest = a // self.num_projections
        v = rest % self.num_views
        z = rest // self.num_views
        ring_a, ring_b = self.sinogram_rings()
        return ring_a[z], ring_b[z], v, t
