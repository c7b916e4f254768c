"""Siemens Biograph mMR component-based normalisation (``norm.n`` + ``norm.n.hdr``).

The file holds float32 little-endian components at the offsets of its Interfile header
(``data offset in bytes [k]``):

1. geometric effects ``(127, 344)``: per ring sum ``ring_a + ring_b`` and tangential bin;
2. crystal interference ``(344, 9)``: per tangential bin and view modulo 9;
3. crystal efficiencies ``(64, 504)``: per ring and crystal;
4. axial effects ``(837,)``: per span-11 sinogram in the vendor's order (segments
   0, -1, +1, -2, +2, ...; within a segment by ring sum);
5. / 6. paralysing and non-paralysing ring dead-time parameters ``(64,)``;
7. transaxial crystal dead-time parameters ``(9,)``;
8. additional axial effects ``(837,)``.

All are *efficiencies*: a span-1 LOR between crystal ``ca`` of ring ``ra`` and crystal
``cb`` of ring ``rb`` (pet_dl's crystal numbering, which is the vendor's sinogram
numbering) at vendor tangential bin ``t`` and view ``u`` detects

    eff[ra, ca] * eff[rb, cb] * geometric[ra + rb, t] * interference[t, u % 9] * axial[s(ra, rb)]

times the true line integral (the model STIR's ``BinNormalisationFromECAT8`` uses). The
file's crystal efficiencies are one crystal off the sinogram numbering: pet_dl crystal
``c`` takes the file's ``c - 1`` (as STIR does for the mMR), and the gap crystals
(``ScannerGeometry.is_gap_crystal``: 0, 9, 18, ...) get 0. A compressed bin (span 11,
2D rebinning, view mashing) sums the efficiencies of its span-1 LORs.

Dead time needs the singles rates per bucket during the frame. The 32-bit listmode
carries them only every 2 s (``singles polling interval``); :func:`expand_mmr_norm`
applies no dead-time factor (a short frame with no singles record cannot have one) and
says so in the result. The additional axial effects (component 8) are read, not applied
(STIR does not apply them either).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pet_dl.geometry import SinogramGeometry
from pet_dl.io import ImageFileError
from pet_dl.io.listmode import PetlinkLayout, lor_tables, sum_over_lors

_COMPONENTS = (
    ("geometric", (127, 344)),
    ("interference", (344, 9)),
    ("efficiencies", (64, 504)),
    ("axial", (837,)),
    ("paralysing_dead_time", (64,)),
    ("non_paralysing_dead_time", (64,)),
    ("crystal_dead_time", (9,)),
    ("axial_additional", (837,)),
)


class NormFileError(ImageFileError):
    """A normalisation file is missing, truncated or not an mMR component norm."""


@dataclass
class MMRNormalisation:
    """The components of an mMR ``norm.n`` (see the module docstring for indexing).

    Attributes:
        geometric: float64 ``(127, 344)``, index ``[ring_a + ring_b, tangential bin]``.
        interference: float64 ``(344, 9)``, index ``[tangential bin, view % 9]``.
        efficiencies: float64 ``(64, 504)``, index ``[ring, crystal]`` in pet_dl's
            crystal numbering (shifted by one from the file), gap crystals 0.
        axial: float64 ``(837,)``, per vendor span-11 sinogram.
        paralysing_dead_time, non_paralysing_dead_time: float64 ``(64,)``.
        crystal_dead_time: float64 ``(9,)``.
        axial_additional: float64 ``(837,)``.
        quantification_factor: ``scanner quantification factor (Bq*s/ECAT counts)``, or
            None.
        cross_calibration: ``cross calibration factor``, or None.
        header: the Interfile header keys.
    """

    geometric: np.ndarray
    interference: np.ndarray
    efficiencies: np.ndarray
    axial: np.ndarray
    paralysing_dead_time: np.ndarray
    non_paralysing_dead_time: np.ndarray
    crystal_dead_time: np.ndarray
    axial_additional: np.ndarray
    quantification_factor: float | None
    cross_calibration: float | None
    header: dict[str, str]


def _header_value(header: dict[str, str], prefix: str) -> str | None:
    for key, value in header.items():
        if key.lstrip("%").startswith(prefix):
            return value
    return None


def read_mmr_norm(path: str | os.PathLike[str]) -> MMRNormalisation:
    """Read an mMR component normalisation.

    Args:
        path: ``norm.n.hdr`` (its ``name of data file`` is read, next to it) or
            ``norm.n`` (then ``norm.n.hdr`` must be beside it).

    Raises:
        NormFileError: missing header or data, wrong sizes, not an mMR norm (504 x 64
            crystal efficiencies), non-finite values.
    """
    from pet_dl.io.interfile import read_interfile_header

    p = Path(path)
    hp = p if p.name.lower().endswith(".hdr") else p.with_name(p.name + ".hdr")
    if not hp.is_file():
        raise NormFileError(f"normalisation header {hp}: no such file")
    try:
        header = read_interfile_header(hp)
    except ImageFileError as exc:
        raise NormFileError(str(exc)) from None
    name = header.get("name of data file") or hp.name[: -len(".hdr")]
    data_path = hp.parent / Path(name.replace("\\", "/")).name
    if not data_path.is_file():
        raise NormFileError(f"normalisation header {hp}: data file {data_path} not found")
    offsets = []
    for k, (label, shape) in enumerate(_COMPONENTS, start=1):
        raw = header.get(f"data offset in bytes [{k}]")
        if raw is None:
            raise NormFileError(
                f"normalisation header {hp}: missing 'data offset in bytes [{k}]' ({label});"
                " not an mMR component normalisation"
            )
        size = header.get(f"%matrix size [{k}]") or header.get(f"matrix size [{k}]")
        if size is not None:
            dims = [int(x) for x in size.strip("{} ").split(",") if x.strip()]
            if int(np.prod(dims)) != int(np.prod(shape)):
                raise NormFileError(
                    f"normalisation header {hp}: component {k} ({label}) has matrix size"
                    f" {dims}; the mMR's is {list(shape)[::-1]}"
                )
        offsets.append(int(raw))
    data = np.fromfile(data_path, dtype="<f4")
    parts: dict[str, np.ndarray] = {}
    for (label, shape), off in zip(_COMPONENTS, offsets, strict=True):
        n = int(np.prod(shape))
        if off % 4 or off // 4 + n > data.size:
            raise NormFileError(
                f"normalisation data {data_path}: {data.size * 4} bytes, too short for"
                f" component {label} at byte {off}"
            )
        part = data[off // 4 : off // 4 + n].astype(np.float64).reshape(shape)
        if not np.isfinite(part).all():
            raise NormFileError(f"normalisation data {data_path}: {label} has NaN or Inf")
        parts[label] = part
    for label in ("geometric", "interference", "efficiencies", "axial"):
        if not (parts[label] >= 0).all():
            raise NormFileError(f"normalisation data {data_path}: negative {label} factors")
    eff = np.roll(parts["efficiencies"], 1, axis=1)  # pet_dl crystal c = file crystal c - 1
    eff[:, np.arange(eff.shape[1]) % 9 == 0] = 0.0  # the mMR's gap crystals
    parts["efficiencies"] = eff

    def _num(prefix: str) -> float | None:
        value = _header_value(header, prefix)
        try:
            return float(value) if value else None
        except ValueError:
            return None

    return MMRNormalisation(
        **parts,
        quantification_factor=_num("scanner quantification factor"),
        cross_calibration=_num("cross calibration factor"),
        header=header,
    )


def siemens_span11_index(layout: PetlinkLayout, span: int = 11) -> np.ndarray:
    """Vendor span-11 sinogram index of each ring pair, int64 ``(num_rings, num_rings)``
    (``[ring_a, ring_b]``; -1 beyond the maximum ring difference)."""
    rings, mrd = layout.num_rings, layout.max_ring_difference
    half = (span - 1) // 2
    num_seg = (mrd - half) // span
    order = [0]
    for s in range(1, num_seg + 1):
        order += [-s, s]
    out = np.full((rings, rings), -1, dtype=np.int64)
    start = 0
    ra, rb = np.meshgrid(np.arange(rings), np.arange(rings), indexing="ij")
    d = rb - ra
    for s in order:
        lo, hi = s * span - half, s * span + half
        smallest = 0 if s == 0 else min(abs(lo), abs(hi))
        inside = (d >= lo) & (d <= hi)
        out[inside] = start + (ra + rb)[inside] - smallest
        start += 2 * rings - 1 - 2 * smallest
    return out


def expand_mmr_norm(
    norm: MMRNormalisation,
    sinogram: SinogramGeometry,
    layout: PetlinkLayout | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Detection efficiency of every bin of ``sinogram`` from the norm components.

    Each bin sums the efficiencies of the span-1 LORs it collects (its ring pairs,
    :func:`pet_dl.io.listmode.target_ring_pairs`, and its member views), so the
    compression's varying number of LORs per bin is part of the factor. The result is
    divided by its mean over the bins: the multiplicative factor of a pet_dl scan
    (the scan's calibration carries the absolute sensitivity).

    Args:
        norm: :func:`read_mmr_norm`'s result.
        sinogram: the target layout (see :func:`pet_dl.io.listmode.histogram_listmode`).
        layout: the vendor layout (default: the mMR's).
        progress: tqdm bar over the planes.

    Returns:
        float32 ``sinogram.shape``: finite, >= 0, mean 1, zero on the bins of gap
        crystals.
    """
    layout = layout or PetlinkLayout()
    _, _, t, u = lor_tables(sinogram, layout)
    interference = norm.interference[t[None, None, :], (u % 9)[..., None]]  # (V, M, R)
    geometric = norm.geometric[:, t]  # (127, R)
    ax_index = siemens_span11_index(layout)

    def pair_weight(ra: int, rb: int) -> np.ndarray:
        idx = ax_index[ra, rb]
        return geometric[ra + rb] * (norm.axial[idx] if idx >= 0 else 1.0)

    out = sum_over_lors(
        sinogram, layout, norm.efficiencies, pair_weight=pair_weight,
        bin_weight=interference, progress=progress, desc="normalisation",
    )
    mean = out.mean()
    if not mean > 0:
        raise NormFileError("normalisation: every bin has zero efficiency")
    return (out / mean).astype(np.float32)
