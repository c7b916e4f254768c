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

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pet_dl.geometry import SinogramGeometry
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


# ---------------------------------------------------------------------- header
@dataclass(frozen=True)
class ListmodeHeader:
    """What pet_dl uses from a PETLINK Interfile listmode header (``.l.hdr``).

    Attributes:
        header_path: the header file.
        data_path: the listmode data file (``name of data file``, next to the header).
        data_offset_bytes: bytes before the first record.
        layout: the span-1 sinogram the bin addresses point into.
        tag_interval_ms: time between time tags, ms.
        duration_s: ``image duration (sec)`` of the whole acquisition (None: absent).
        study_start: acquisition start, ISO 8601 (``%study date`` + ``%study time``).
        isotope: e.g. ``"F-18"``; half_life_s: its half-life, s; branching_factor.
        tracer: ``radiopharmaceutical``.
        injected_activity_bq: ``tracer activity at time of injection (Bq)``.
        injection_time: ISO 8601 (``%tracer injection date`` + ``time``).
        energy_window_kev: (lower, upper) level, keV.
        raw: every key of the header (normalised as in
            :func:`pet_dl.io.interfile.read_interfile_header`).
    """

    header_path: Path
    data_path: Path
    data_offset_bytes: int
    layout: PetlinkLayout
    tag_interval_ms: float = 1.0
    duration_s: float | None = None
    study_start: str | None = None
    isotope: str | None = None
    half_life_s: float | None = None
    branching_factor: float | None = None
    tracer: str | None = None
    injected_activity_bq: float | None = None
    injection_time: str | None = None
    energy_window_kev: tuple[float, float] | None = None
    raw: dict[str, str] | None = None


def _iso(date: str | None, time: str | None) -> str | None:
    if not date or not time:
        return None
    parts = date.replace("-", ":").split(":")
    clock = time.split(":")
    if len(parts) != 3 or len(clock) < 3:
        return None
    try:
        y, mo, d = (int(x) for x in parts)
        h, mi, s = int(clock[0]), int(clock[1]), int(float(clock[2]))
    except ValueError:
        return None
    return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}"


def _find_key(raw: dict[str, str], prefix: str) -> str | None:
    """The value of the first key that starts with ``prefix`` (keys carry units and
    time zones in brackets, e.g. ``%study time (hh:mm:ss gmt+00:00)``)."""
    for key, value in raw.items():
        if key.lstrip("%").startswith(prefix):
            return value
    return None


def _float(raw: dict[str, str], prefix: str) -> float | None:
    value = _find_key(raw, prefix)
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def find_listmode_header(path: str | os.PathLike[str]) -> Path:
    """The Interfile header of a listmode input.

    ``path`` may be the header itself (``.l.hdr``, ``.hdr``, ``.hdr.STIR``, anything whose
    first line is ``!INTERFILE``) or the data file ``X.l``: then ``X.l.hdr``, ``X.hdr``
    and any header in the same folder whose ``name of data file`` is ``X.l`` are tried.

    Raises:
        ListmodeError: no header found.
    """
    from pet_dl.io.interfile import read_interfile_header

    p = Path(path)
    if not p.exists():
        raise ListmodeError(f"{p}: no such file")
    with open(p, "rb") as f:
        if f.read(10).lstrip().upper().startswith(b"!INTERFILE"):
            return p
    for candidate in (p.with_name(p.name + ".hdr"), p.with_suffix(".hdr")):
        if candidate.is_file():
            return candidate
    for candidate in sorted(p.parent.iterdir()):
        if candidate == p or not candidate.is_file() or candidate.stat().st_size > 1 << 20:
            continue
        if ".hdr" not in candidate.name.lower():
            continue
        try:
            raw = read_interfile_header(candidate)
        except Exception:  # noqa: BLE001 - any unreadable candidate is just not it
            continue
        name = raw.get("name of data file", "")
        if Path(name).name == p.name:
            return candidate
    raise ListmodeError(
        f"{p}: no listmode header found (tried {p.name}.hdr and the headers next to it whose"
        " 'name of data file' is this file); pass the .l.hdr file"
    )


def read_listmode_header(path: str | os.PathLike[str]) -> ListmodeHeader:
    """Read a PETLINK listmode header (or find it from the data file, see
    :func:`find_listmode_header`).

    Raises:
        ListmodeError: no header, a missing data file, a layout this reader does not
            handle (not 32-bit words, axial compression other than 1).
    """
    from pet_dl.io.interfile import read_interfile_header

    hp = find_listmode_header(path)
    try:
        raw = read_interfile_header(hp)
    except ImageFileError as exc:
        raise ListmodeError(str(exc)) from None
    name = raw.get("name of data file")
    if not name:
        raise ListmodeError(f"listmode header {hp}: missing 'name of data file'")
    data = hp.parent / Path(name.replace("\\", "/")).name
    if Path(path).resolve() != hp.resolve() and not data.is_file():
        data = Path(path)
    if not data.is_file():
        raise ListmodeError(f"listmode header {hp}: data file {data} not found")
    space = _find_key(raw, "sms-mi header name space")
    fmt = raw.get("data format", "")
    if (space is not None and "petlink" not in space.lower()) or (
        fmt and "coincidencelist" not in fmt.replace(" ", "").lower()
    ):
        raise ListmodeError(
            f"{hp}: not a PETLINK listmode header (header name space {space!r}, data format"
            f" {fmt!r})"
        )
    bits = _find_key(raw, "lm event and tag words format")
    if bits is not None and bits.strip() not in ("32", "32 bit"):
        raise ListmodeError(
            f"listmode header {hp}: {bits}-bit event words; pet_dl reads PETLINK 32-bit listmode"
        )
    compression = _float(raw, "axial compression")
    if compression is not None and int(compression) != 1:
        raise ListmodeError(
            f"listmode header {hp}: axial compression {int(compression)}; pet_dl reads"
            " uncompressed (span 1) PETLINK listmode"
        )

    def _int(prefix: str, default: int) -> int:
        value = _float(raw, prefix)
        return int(value) if value is not None else default

    layout = PetlinkLayout(
        num_rings=_int("number of rings", 64),
        num_views=_int("number of views", 252),
        num_projections=_int("number of projections", 344),
        max_ring_difference=_int("maximum ring difference", 60),
    )
    lower = _float(raw, "energy window lower level")
    upper = _float(raw, "energy window upper level")
    return ListmodeHeader(
        header_path=hp,
        data_path=data,
        data_offset_bytes=_int("data offset in bytes", 0),
        layout=layout,
        tag_interval_ms=_float(raw, "timing tagwords interval") or 1.0,
        duration_s=_float(raw, "image duration"),
        study_start=_iso(_find_key(raw, "study date"), _find_key(raw, "study time")),
        isotope=raw.get("isotope name") or None,
        half_life_s=_float(raw, "isotope gamma halflife"),
        branching_factor=_float(raw, "isotope branching factor"),
        tracer=raw.get("radiopharmaceutical") or None,
        injected_activity_bq=_float(raw, "tracer activity at time of injection"),
        injection_time=_iso(
            _find_key(raw, "tracer injection date"), _find_key(raw, "tracer injection time")
        ),
        energy_window_kev=(lower, upper) if lower is not None and upper is not None else None,
        raw=raw,
    )


# ---------------------------------------------------------------------- histogramming
def target_ring_pairs(
    sinogram: SinogramGeometry, layout: PetlinkLayout
) -> list[list[tuple[int, int]]]:
    """The vendor ring pairs ``(ring_a, ring_b)`` that each plane of ``sinogram`` collects.

    A 3D sinogram of the listmode's scanner (same rings) collects the pairs of
    :meth:`SinogramGeometry.plane_ring_pairs` (pairs beyond the listmode's maximum ring
    difference are dropped); a one-ring (2D) sinogram collects *all* recorded pairs into
    its one direct plane (single-slice rebinning of the whole axial field of view, so
    no count is lost).

    Raises:
        ListmodeError: the sinogram does not fit the listmode's scanner.
    """
    rings = sinogram.scanner.num_rings
    ring_a, ring_b = layout.sinogram_rings()
    if rings == 1:
        return [list(zip(ring_a.tolist(), ring_b.tolist(), strict=True))]
    if rings != layout.num_rings:
        raise ListmodeError(
            f"sinogram of {rings} rings for a listmode of {layout.num_rings} rings: use the"
            " scanner's rings or one ring (2D)"
        )
    mrd = layout.max_ring_difference
    return [[(a, b) for a, b in plane if abs(b - a) <= mrd] for plane in sinogram.plane_ring_pairs()]


def _check_target(sinogram: SinogramGeometry, layout: PetlinkLayout) -> None:
    sc = sinogram.scanner
    if sinogram.arc_corrected or sinogram.tof:
        raise ListmodeError("listmode histogramming needs a non-arc-corrected, non-TOF sinogram")
    if sc.crystals_per_ring != 2 * layout.num_views:
        raise ListmodeError(
            f"sinogram scanner has {sc.crystals_per_ring} crystals per ring; the listmode has"
            f" {2 * layout.num_views} ({layout.num_views} views)"
        )
    if sinogram.num_radial > layout.num_projections:
        raise ListmodeError(
            f"sinogram has {sinogram.num_radial} radial bins; the listmode records"
            f" {layout.num_projections}"
        )


def bin_index_tables(
    sinogram: SinogramGeometry, layout: PetlinkLayout
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lookup tables from vendor coordinates to the flat bin index of ``sinogram``.

    Returns:
        ``plane_of`` int64 ``(num_sinograms,)`` (vendor sinogram -> plane, -1: dropped),
        ``view_of`` int64 ``(num_views,)`` (vendor view -> stored view, view mashing),
        ``radial_of`` int64 ``(num_projections,)`` (vendor tangential bin -> radial
        index, centred; -1 outside a smaller sinogram).
    """
    _check_target(sinogram, layout)
    ring_a, ring_b = layout.sinogram_rings()
    lut = np.full((layout.num_rings, layout.num_rings), -1, dtype=np.int64)
    for p, pairs in enumerate(target_ring_pairs(sinogram, layout)):
        for a, b in pairs:
            lut[a, b] = p
    plane_of = lut[ring_a, ring_b]
    view_of = np.arange(layout.num_views, dtype=np.int64) // sinogram.view_mashing
    r = np.arange(layout.num_projections) - layout.num_projections // 2 + sinogram.num_radial // 2
    radial_of = np.where((r >= 0) & (r < sinogram.num_radial), r, -1).astype(np.int64)
    return plane_of, view_of, radial_of


@dataclass
class ListmodeHistogram:
    """Prompts and delayeds of one time frame, histogrammed.

    Attributes:
        prompts: counts per bin, int64 ``sinogram.shape`` (numpy).
        delayeds: delayed counts per bin, int64 ``sinogram.shape``.
        delayed_singles: delayed events per detector (fan sums), int64
            ``(num_rings, 2 * num_views)``: each delayed adds 1 to both its crystals.
        frame_start_s: start of the frame (first time tag in it), s.
        duration_s: frame duration (number of time tags in it x tag interval), s.
        num_prompts, num_delayeds: events in the frame (before any cropping).
        dropped_prompts: prompts of the frame outside the sinogram (radial range,
            ring difference): ``num_prompts - prompts.sum()``.
    """

    prompts: np.ndarray
    delayeds: np.ndarray
    delayed_singles: np.ndarray
    frame_start_s: float
    duration_s: float
    num_prompts: int
    num_delayeds: int
    dropped_prompts: int


class _Accumulator:
    """Adds flat bin indices into a count array, by bincount when the array is small
    and by sorted unique counts otherwise (memory set by the chunk, not the sinogram)."""

    def __init__(self, size: int) -> None:
        self.counts = np.zeros(size, dtype=np.int64 if size <= 1 << 27 else np.int32)

    def add(self, index: np.ndarray) -> None:
        if index.size == 0:
            return
        if self.counts.size <= 8 * index.size:
            self.counts += np.bincount(index, minlength=self.counts.size).astype(self.counts.dtype)
        else:
            uniq, n = np.unique(index, return_counts=True)
            self.counts[uniq] += n.astype(self.counts.dtype)


def histogram_listmode(
    source: str | os.PathLike[str] | ListmodeHeader,
    sinogram: SinogramGeometry,
    frame_start_s: float = 0.0,
    frame_duration_s: float | None = None,
    chunk_words: int = DEFAULT_CHUNK_WORDS,
    progress: bool = False,
) -> ListmodeHistogram:
    """Histogram one time frame of a PETLINK 32-bit listmode file into ``sinogram``.

    The file is streamed in chunks of ``chunk_words`` records (memory: the chunk and the
    output sinograms, independent of the file size). An event belongs to the frame when
    the last time tag before it, ``T`` (ms), satisfies ``start <= T < start + duration``
    (events before the first tag count as ``T = 0``).

    Args:
        source: the listmode data file, its header, or a read :class:`ListmodeHeader`.
        sinogram: target layout: the listmode's scanner (mMR preset) in span 1, 11, ...,
            or one ring (``SinogramGeometry.two_d``: all ring pairs rebinned into one
            direct plane); non-arc-corrected, non-TOF, up to the vendor's 344 radial
            bins (centred crop), any view mashing.
        frame_start_s: frame start after the acquisition start, s.
        frame_duration_s: frame length, s (None: to the end of the file).
        chunk_words: records per chunk.
        progress: tqdm progress bar on stderr.

    Returns:
        :class:`ListmodeHistogram`; its ``duration_s`` is the frame length covered by
        time tags (shorter than asked when the file ends earlier).

    Raises:
        ListmodeError: unreadable input, a sinogram that does not fit, a frame with no
            time tag (it starts after the end of the file).
    """
    header = source if isinstance(source, ListmodeHeader) else read_listmode_header(source)
    layout = header.layout
    if not (frame_start_s >= 0) or (frame_duration_s is not None and not frame_duration_s > 0):
        raise ValueError(
            f"frame start must be >= 0 s and duration > 0 s, got {frame_start_s}, {frame_duration_s}"
        )
    plane_of, view_of, radial_of = bin_index_tables(sinogram, layout)
    nv, nr = sinogram.num_views, sinogram.num_radial
    start_ms = frame_start_s * 1000.0
    end_ms = math.inf if frame_duration_s is None else start_ms + frame_duration_s * 1000.0
    prompts = _Accumulator(sinogram.num_bins)
    delayeds = _Accumulator(sinogram.num_bins)
    n_det = 2 * layout.num_views
    singles = np.zeros(layout.num_rings * n_det, dtype=np.int64)
    num_prompts = num_delayeds = tags = 0
    first_tag: int | None = None
    ring_a_of, ring_b_of = layout.sinogram_rings()
    for chunk in iter_listmode(
        header.data_path, chunk_words, header.data_offset_bytes, progress=progress
    ):
        tt = chunk.time_tags_ms * header.tag_interval_ms
        in_frame = (tt >= start_ms) & (tt < end_ms)
        if in_frame.any():
            tags += int(in_frame.sum())
            if first_tag is None:
                first_tag = int(tt[in_frame][0])
        elif tt.size and tt[0] >= end_ms:
            break
        for kind, address, times in (
            ("p", chunk.prompts, chunk.prompt_times_ms),
            ("d", chunk.delayeds, chunk.delayed_times_ms),
        ):
            t_ms = np.maximum(times, 0) * header.tag_interval_ms
            keep = (t_ms >= start_ms) & (t_ms < end_ms)
            address = address[keep]
            if address.size == 0:
                continue
            rest, t = np.divmod(address, layout.num_projections)
            z, v = np.divmod(rest, layout.num_views)
            if address.size and int(z.max()) >= plane_of.size:
                layout.decode(address)  # raises with the message
            plane, view, radial = plane_of[z], view_of[v], radial_of[t]
            ok = (plane >= 0) & (radial >= 0)
            flat = (plane[ok] * nv + view[ok]) * nr + radial[ok]
            if kind == "p":
                num_prompts += address.size
                prompts.add(flat)
            else:
                num_delayeds += address.size
                delayeds.add(flat)
                k = t - layout.num_projections // 2
                ca = (v + np.floor_divide(k, 2)) % n_det
                cb = (v + n_det // 2 - np.floor_divide(k + 1, 2)) % n_det
                singles += np.bincount(ring_a_of[z] * n_det + ca, minlength=singles.size)
                singles += np.bincount(ring_b_of[z] * n_det + cb, minlength=singles.size)
    if tags == 0:
        raise ListmodeError(
            f"listmode {header.data_path.name}: no time tag in the frame starting at"
            f" {frame_start_s} s; the file is shorter"
        )
    p = prompts.counts.reshape(sinogram.shape)
    return ListmodeHistogram(
        prompts=p,
        delayeds=delayeds.counts.reshape(sinogram.shape),
        delayed_singles=singles.reshape(layout.num_rings, n_det),
        frame_start_s=(first_tag or 0) / 1000.0,
        duration_s=tags * header.tag_interval_ms / 1000.0,
        num_prompts=num_prompts,
        num_delayeds=num_delayeds,
        dropped_prompts=num_prompts - int(p.sum()),
    )


def lor_tables(
    sinogram: SinogramGeometry, layout: PetlinkLayout
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Crystals, vendor tangential bin and unmashed view of every (view, member, radial).

    Returns:
        ``ca``, ``cb``: int64 ``(num_views, view_mashing, num_radial)`` crystals of the
        LOR start and end; ``t``: int64 ``(num_radial,)`` vendor tangential bin;
        ``u``: int64 ``(num_views, view_mashing)`` unmashed view.
    """
    n_det = 2 * layout.num_views
    u = np.arange(sinogram.num_views)[:, None] * sinogram.view_mashing + np.arange(
        sinogram.view_mashing
    )
    k = np.arange(sinogram.num_radial) - sinogram.num_radial // 2
    t = k + layout.num_projections // 2
    ca = (u[..., None] + np.floor_divide(k, 2)) % n_det
    cb = (u[..., None] + n_det // 2 - np.floor_divide(k + 1, 2)) % n_det
    return ca, cb, t, u


def sum_over_lors(
    sinogram: SinogramGeometry,
    layout: PetlinkLayout,
    crystal_values: np.ndarray,
    pair_weight: Callable[[int, int], np.ndarray | float] | None = None,
    bin_weight: np.ndarray | None = None,
    progress: bool = False,
    desc: str = "LORs",
) -> np.ndarray:
    """Sum a per-LOR quantity over the span-1 LORs of every bin of ``sinogram``.

    The quantity of the LOR from crystal ``ca`` of ring ``ra`` to crystal ``cb`` of ring
    ``rb`` is ``crystal_values[ra, ca] * crystal_values[rb, cb] * pair_weight(ra, rb)
    * bin_weight``; a bin sums its ring pairs (:func:`target_ring_pairs`) and member views.

    Args:
        crystal_values: float ``(num_rings, 2 * num_views)`` per detector.
        pair_weight: ``(ra, rb) ->`` a float or a float ``(num_radial,)`` array (None: 1).
        bin_weight: float ``(num_views, view_mashing, num_radial)`` (None: 1).

    Returns:
        float64 ``sinogram.shape``.
    """
    ca, cb, _, _ = lor_tables(sinogram, layout)
    planes = target_ring_pairs(sinogram, layout)
    out = np.zeros(sinogram.shape, dtype=np.float64)
    iterator: Iterable[list[tuple[int, int]]] = planes
    if progress:
        from tqdm import tqdm

        iterator = tqdm(planes, desc=desc, leave=False)
    values = np.asarray(crystal_values, dtype=np.float64)
    for p, pairs in enumerate(iterator):
        acc = np.zeros(ca.shape, dtype=np.float64)
        for ra, rb in pairs:
            term = values[ra][ca] * values[rb][cb]
            if pair_weight is not None:
                term *= pair_weight(ra, rb)
            acc += term
        if bin_weight is not None:
            acc *= bin_weight
        out[p] = acc.sum(axis=1)
    return out
