"""Measured Siemens mMR data in: listmode + normalisation + mu-map -> :class:`~pet_dl.scan.Scan`.

``import_listmode`` histograms one time frame of a PETLINK 32-bit listmode file
(:mod:`pet_dl.io.listmode`) into the mMR sinogram geometry (span 11, span 1, or 2D:
every ring pair rebinned into one direct plane), and fills the forward model
``ybar = c m P(G x) + a`` of :mod:`pet_dl.scan`:

* ``m`` = normalisation x attenuation. Each bin sums the efficiencies of the span-1 LORs
  it collects (:func:`pet_dl.io.mmr_norm.expand_mmr_norm`; without a norm file every real
  crystal has efficiency 1 and gap crystals 0), in units of the mean span-1 LOR
  efficiency; in 2D each LOR also carries its ``1 / cos(theta)`` (an oblique LOR's line
  integral through an axially constant object, as :func:`pet_dl.rebin.ssrb` does).
  Attenuation is ``exp(-P mu)`` on the bin's LOR in 3D and the axial mean of the
  direct-plane factors in 2D (:func:`pet_dl.corrections.rebinned_attenuation`).
* ``c`` = the calibration of one span-1 LOR for the frame duration,
  :func:`pet_dl.simulate.calibration_per_second` of the mMR's span-1 layout (published
  NEMA sensitivity 15.0 cps/kBq) x duration: the same sensitivity model as simulated
  scans, so images come out in Bq/mL on the scale of the simulator. It is not the
  vendor's cross-calibrated scale (``scanner quantification factor`` of the norm header,
  kept in the metadata): images of real data are approximately quantitative.
* ``a`` = randoms from the delayeds' fan sums (:func:`pet_dl.corrections.
  randoms_from_delayeds`), plus, with ``scatter=True`` (2D, with a mu-map), a
  single-scatter simulation of a first OSEM image, tail-fitted (:func:`estimate_scatter`);
  otherwise the metadata say ``scatter: not estimated``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import torch

from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.io.listmode import (
    DEFAULT_CHUNK_WORDS,
    ListmodeHeader,
    PetlinkLayout,
    histogram_listmode,
    read_listmode_header,
)
from pet_dl.scan import AcquisitionMetadata, Scan

#: Accepted ``span`` values: 11 and 1 (3D) and ``"2d"``.
SPANS = ("11", "1", "2d")


def mmr_sinogram(span: str | int, num_radial: int = 344, view_mashing: int = 1) -> SinogramGeometry:
    """The mMR sinogram layout for ``span`` (11 or 1 with ring differences up to 60, as
    the listmode records; ``"2d"``: one direct plane, ``SinogramGeometry.two_d``)."""
    span = str(span).lower()
    mmr = get_scanner("mmr")
    if span == "2d":
        return SinogramGeometry.two_d(mmr, num_radial=num_radial, view_mashing=view_mashing)
    if span == "11":
        return SinogramGeometry(mmr, num_radial, span=11, max_ring_difference=60,
                                view_mashing=view_mashing)
    if span == "1":
        return SinogramGeometry(mmr, num_radial, span=1, max_ring_difference=60,
                                view_mashing=view_mashing)
    raise ValueError(f"span must be one of {', '.join(SPANS)}, got {span!r}")


def default_image(sinogram: SinogramGeometry) -> ImageGeometry:
    """The default grid for imported mMR data: 172 x 172 voxels of 4.1725 mm (twice the
    central bin, 718 mm across) and, in 3D, 127 planes of 2.03125 mm (half the ring
    pitch); in 2D one plane at z = 0."""
    scanner = sinogram.scanner
    nz, dz = (1, scanner.ring_spacing_mm) if scanner.num_rings == 1 else (
        2 * scanner.num_rings - 1, scanner.ring_spacing_mm / 2)
    return ImageGeometry.centered((172, 172, nz), (4.1725, 4.1725, dz))


@dataclass
class ImportReport:
    """Numbers of an import, for the command's summary and the scan's metadata.

    Attributes:
        prompts, delayeds: events in the frame; prompts_kept: in the sinogram.
        randoms: estimated randoms in the sinogram (sum of the randoms term).
        duration_s, frame_start_s: the frame.
        mu_units: units the mu-map was read in ("" without one).
        notes: one line per approximation or missing piece.
    """

    prompts: int
    delayeds: int
    prompts_kept: int
    randoms: float
    duration_s: float
    frame_start_s: float
    mu_units: str = ""
    notes: list[str] = field(default_factory=list)
    scatter: float = 0.0

    @property
    def scatter_fraction(self) -> float:
        """Estimated scatter / (prompts - randoms) in the sinogram (0: not estimated)."""
        rest = self.prompts_kept - self.randoms
        return self.scatter / rest if rest > 0 else 0.0

    @property
    def randoms_fraction(self) -> float:
        """Estimated randoms / prompts in the sinogram."""
        return self.randoms / self.prompts_kept if self.prompts_kept else 0.0


def _secant_weight(sinogram: SinogramGeometry, layout: PetlinkLayout):  # noqa: ANN202
    full = get_scanner("mmr")
    k = np.arange(sinogram.num_radial) - sinogram.num_radial // 2
    chord = 2.0 * full.detector_radius_mm * np.cos(np.pi * k / full.crystals_per_ring)

    def weight(ra: int, rb: int) -> np.ndarray:
        dz = (rb - ra) * full.ring_spacing_mm
        return np.sqrt(1.0 + (dz / chord) ** 2)

    return weight


def normalisation_factors(
    sinogram: SinogramGeometry,
    norm_path: str | os.PathLike[str] | None,
    layout: PetlinkLayout,
    progress: bool = False,
) -> np.ndarray:
    """Per-bin sums of span-1 LOR efficiencies in units of the mean span-1 LOR's (see
    the module docstring), float32 ``sinogram.shape``; 2D bins include ``1/cos``."""
    from pet_dl.io.listmode import lor_tables, sum_over_lors
    from pet_dl.io.mmr_norm import MMRNormalisation, read_mmr_norm, siemens_span11_index

    scanner = get_scanner("mmr")
    gaps = scanner.is_gap_crystal().numpy()
    if norm_path is None:
        eff = np.where(gaps, 0.0, 1.0)[None, :].repeat(layout.num_rings, 0)
        norm = MMRNormalisation(
            geometric=np.ones((2 * layout.num_rings - 1, layout.num_projections)),
            interference=np.ones((layout.num_projections, 9)),
            efficiencies=eff, axial=np.ones(837), paralysing_dead_time=np.zeros(64),
            non_paralysing_dead_time=np.zeros(64), crystal_dead_time=np.zeros(9),
            axial_additional=np.ones(837), quantification_factor=None,
            cross_calibration=None, header={},
        )
    else:
        norm = read_mmr_norm(norm_path)
    ax_index = siemens_span11_index(layout)
    secant = _secant_weight(sinogram, layout) if sinogram.scanner.num_rings == 1 else None

    def lor_weight(target: SinogramGeometry, with_secant: bool):  # noqa: ANN202
        _, _, t, u = lor_tables(target, layout)
        geometric = norm.geometric[:, t]

        def pair_weight(ra: int, rb: int) -> np.ndarray:
            idx = ax_index[ra, rb]
            w = geometric[ra + rb] * (norm.axial[idx] if idx >= 0 else 1.0)
            return w * secant(ra, rb) if with_secant and secant is not None else w

        return pair_weight, norm.interference[t[None, None, :], (u % 9)[..., None]]

    pair_weight, interference = lor_weight(sinogram, True)
    out = sum_over_lors(sinogram, layout, norm.efficiencies, pair_weight=pair_weight,
                        bin_weight=interference, progress=progress, desc="normalisation")
    # mean efficiency of one span-1 LOR over every recorded LOR (gaps included, like
    # pet_dl.simulate.crystal_normalisation), from every 7th view (all residues modulo
    # the 9 crystals of a block, as 7 and 9 are coprime): 36 of the 252 views
    full_2d = mmr_sinogram("2d")
    pw, inter = lor_weight(full_2d, False)
    ca, cb, _, _ = lor_tables(full_2d, layout)
    views = np.arange(0, layout.num_views, 7)
    ca, cb, inter = ca[views], cb[views], inter[views]
    acc = np.zeros(ca.shape)
    for ra, rb in zip(*layout.sinogram_rings(), strict=True):
        acc += norm.efficiencies[ra][ca] * norm.efficiencies[rb][cb] * pw(int(ra), int(rb))
    mean = float((acc * inter).sum()) / (layout.num_sinograms * views.size * layout.num_projections)
    return (out / mean).astype(np.float32)


def estimate_scatter(
    scan: Scan,
    mu_per_mm: torch.Tensor,
    attenuation: torch.Tensor,
    window_kev: tuple[float, float] = (430.0, 610.0),
    energy_resolution: float = 0.145,
    num_iterations: int = 2,
    num_subsets: int = 7,
) -> tuple[torch.Tensor, float]:
    """Scatter of a scan by single-scatter simulation with tail fitting.

    An OSEM image of the scan without scatter (``num_iterations`` x ``num_subsets``) is the
    activity; :func:`pet_dl.scatter.single_scatter` of it and ``mu_per_mm`` (on the scan's
    image grid) gives the shape, :func:`pet_dl.scatter.fit_tails` the scale on the bins
    whose attenuation factor is above 0.95.

    Args:
        scan: prompts, randoms (``additive``), multiplicative and calibration.
        mu_per_mm: ``scan.image.shape``, 1/mm.
        attenuation: ``scan.sinogram.shape``, the attenuation factors alone (the tails).
        window_kev, energy_resolution: energy window and FWHM resolution at 511 keV
            (mMR: 430-610 keV, about 14.5 %).

    Returns:
        (scatter counts, float32 ``scan.sinogram.shape``; the tail-fit scale).
    """
    from pet_dl.recon import reconstruct_classical
    from pet_dl.scatter import fit_tails, single_scatter

    activity = reconstruct_classical(scan, "osem", num_iterations=num_iterations,
                                num_subsets=num_subsets)
    shape = single_scatter(activity, mu_per_mm, scan.image, scan.sinogram, window_kev=window_kev,
                           energy_resolution=energy_resolution)
    scale = fit_tails(shape, scan.prompts, scan.additive, attenuation)
    return (shape * scale).float(), scale


def import_listmode(
    path: str | os.PathLike[str],
    span: str | int = "11",
    norm_path: str | os.PathLike[str] | None = None,
    mu_path: str | os.PathLike[str] | None = None,
    mu_units: str = "auto",
    frame_start_s: float = 0.0,
    frame_duration_s: float | None = None,
    num_radial: int = 344,
    view_mashing: int = 1,
    image: ImageGeometry | None = None,
    psf_fwhm_mm: float = 0.0,
    scatter: bool = False,
    chunk_words: int = DEFAULT_CHUNK_WORDS,
    progress: bool = False,
) -> tuple[Scan, ImportReport]:
    """A scan (and a report) from one frame of an mMR PETLINK listmode acquisition.

    Args:
        path: the ``.l`` data file or its ``.l.hdr`` header.
        span: ``"11"``, ``"1"`` or ``"2d"`` (see :func:`mmr_sinogram`).
        norm_path: the component normalisation ``norm.n.hdr`` / ``norm.n`` (None: unit
            efficiencies, gaps 0; a note says so).
        mu_path: mu-map at 511 keV (``.hv`` Interfile or NIfTI; None: no attenuation).
        mu_units: ``"auto"``, ``"1/cm"`` or ``"1/mm"``.
        frame_start_s, frame_duration_s: the frame (None: to the end).
        num_radial, view_mashing: sinogram layout (344 / 1 keep everything).
        image: reconstruction grid (default :func:`default_image`).
        psf_fwhm_mm: image-space resolution model stored in the scan.
        scatter: estimate scatter (:func:`estimate_scatter`; needs ``mu_path`` and the 2D
            layout for now: the 3D single-scatter simulation over every bin is too slow).
        chunk_words: listmode records per chunk.
        progress: tqdm bars on stderr.

    Returns:
        (scan, report).
    """
    if scatter and (mu_path is None or str(span).lower() != "2d"):
        raise ValueError("scatter estimation needs a mu-map and --span 2d (3D: not yet)")
    header: ListmodeHeader = read_listmode_header(path)
    layout = header.layout
    sinogram = mmr_sinogram(span, num_radial, view_mashing)
    image = image or default_image(sinogram)
    hist = histogram_listmode(header, sinogram, frame_start_s, frame_duration_s,
                              chunk_words=chunk_words, progress=progress)
    notes: list[str] = []

    from pet_dl.corrections import randoms_from_delayeds

    randoms = randoms_from_delayeds(hist.delayed_singles, sinogram, layout, progress=progress)
    norm = normalisation_factors(sinogram, norm_path, layout, progress=progress)
    if norm_path is None:
        notes.append("normalisation: none given (unit crystal efficiencies, gaps 0)")
    else:
        notes.append("dead time: not applied (no singles rates in the frame)")
    mu_units_taken = ""
    attenuation = torch.ones(sinogram.shape)
    mu_image = None
    if mu_path is not None:
        from pet_dl.corrections import mu_map_to_per_mm, rebinned_attenuation, resample_image
        from pet_dl.forward_model import SinogramProjector, attenuation_with
        from pet_dl.io.interfile import load_image

        mu, mu_geometry = load_image(mu_path)
        mu, mu_units_taken = mu_map_to_per_mm(mu, mu_units)
        mu_image = resample_image(mu, mu_geometry, image)
        if sinogram.scanner.num_rings == 1:
            attenuation = rebinned_attenuation(mu, mu_geometry, sinogram, image,
                                               get_scanner("mmr").axial_fov_mm)
        else:
            attenuation = attenuation_with(SinogramProjector(sinogram, image), mu_image, sinogram)
    else:
        notes.append("attenuation: none (no mu-map)")
    if not scatter:
        notes.append("scatter: not estimated")
    multiplicative = torch.from_numpy(norm) * attenuation
    calibration_scanner = mmr_sinogram("1")
    from pet_dl.simulate import calibration_per_second

    calibration = calibration_per_second(calibration_scanner) * hist.duration_s
    start = header.study_start
    if start is not None:
        start = (datetime.fromisoformat(start) + timedelta(seconds=hist.frame_start_s)).isoformat()
    extra = {
        "source": f"PETLINK listmode {header.data_path.name}",
        "frame_start_s": f"{hist.frame_start_s:g}",
        "prompts": str(hist.num_prompts),
        "delayeds": str(hist.num_delayeds),
        "randoms_estimate": "delayeds fan sums (crystal singles)",
        "normalisation": os.path.basename(str(norm_path)) if norm_path else "none",
        "mu_map": f"{os.path.basename(str(mu_path))} ({mu_units_taken})" if mu_path else "none",
        "calibration": "pet_dl sensitivity model (NEMA 15.0 cps/kBq), not the vendor's",
        "notes": "; ".join(notes),
    }
    if norm_path is not None:
        from pet_dl.io.mmr_norm import read_mmr_norm

        qf = read_mmr_norm(norm_path).quantification_factor
        if qf is not None:
            extra["scanner_quantification_factor_bq_s_per_count"] = f"{qf:g}"
    if header.energy_window_kev:
        extra["energy_window_kev"] = f"{header.energy_window_kev[0]:g}-{header.energy_window_kev[1]:g}"
    defaults = AcquisitionMetadata(duration_s=hist.duration_s)
    metadata = AcquisitionMetadata(
        duration_s=hist.duration_s,
        injected_activity_bq=header.injected_activity_bq or defaults.injected_activity_bq,
        radionuclide=header.isotope or defaults.radionuclide,
        half_life_s=header.half_life_s or defaults.half_life_s,
        tracer=header.tracer or defaults.tracer,
        injection_time=header.injection_time or defaults.injection_time,
        acquisition_start=start or defaults.acquisition_start,
        extra=extra,
    )
    prompts = torch.from_numpy(hist.prompts.astype(np.float32))
    scan = Scan(
        sinogram=sinogram,
        image=image,
        prompts=prompts,
        multiplicative=multiplicative.float(),
        additive=torch.from_numpy(randoms),
        calibration=float(calibration),
        psf_fwhm_mm=float(psf_fwhm_mm),
        metadata=metadata,
    )
    scatter_counts = 0.0
    if scatter and mu_image is not None:
        window = header.energy_window_kev or (430.0, 610.0)
        estimate, scale = estimate_scatter(scan, mu_image, attenuation, window_kev=window)
        scan.additive = scan.additive + estimate
        scatter_counts = float(estimate.sum())
        trues_scatter = float(scan.prompts.sum()) - float(randoms.sum())
        fraction = scatter_counts / trues_scatter if trues_scatter > 0 else 0.0
        scan.metadata.extra["scatter_estimate"] = (
            f"single-scatter simulation, tail-fitted (scale {scale:.4g}); scatter fraction"
            f" {100 * fraction:.1f} % of prompts - randoms"
        )
    report = ImportReport(
        prompts=hist.num_prompts, delayeds=hist.num_delayeds,
        prompts_kept=int(hist.prompts.sum()), randoms=float(randoms.sum()),
        duration_s=hist.duration_s, frame_start_s=hist.frame_start_s,
        mu_units=mu_units_taken, notes=notes, scatter=scatter_counts,
    )
    if not math.isfinite(scan.calibration) or scan.calibration <= 0:
        raise ValueError("import: calibration is not positive (empty frame?)")
    return scan, report
