"""Scanner presets with published parameters (sources cited next to each value)."""

from __future__ import annotations

from collections.abc import Callable

from .scanner import ScannerGeometry
from .tof import TOFParameters


def _mmr() -> ScannerGeometry:
    # Siemens Biograph mMR. Geometry from the vendor sinogram headers distributed with
    # STIR (Siemens_mMR_seg2.hs, mMR_template_span11.hs) and STIR's Scanner.cxx:
    # 64 rings, 504 detectors/ring (56 blocks x (8 crystals + 1 virtual gap crystal)),
    # inner ring diameter 65.6 cm, average DOI 0.7 cm, ring spacing 0.40625 cm,
    # 344 non-arc-corrected bins (bin size 2.08626 mm), 252 views; 8 x 8 blocks, 2 blocks
    # axially per bucket. Crystals 4 x 4 x 20 mm LSO and NEMA NU 2-2007 sensitivity
    # 15.0 cps/kBq at the centre: Delso et al., J Nucl Med 52:1914-1922 (2011). No TOF.
    # Gap crystal first in each block of 9 (crystals 0, 9, 18, ...): measured on a real
    # mMR PETLINK listmode (0 of its 218,881 prompts there; with the gap last 21 % fell
    # into gap bins), tests/test_listmode.py.
    return ScannerGeometry(
        name="mmr",
        num_rings=64,
        crystals_per_ring=504,
        radius_mm=328.0,
        ring_spacing_mm=4.0625,
        crystal_size_mm=(4.0, 4.0, 20.0),
        doi_mm=7.0,
        blocks_per_ring=56,
        crystals_per_block=(9, 8),
        gap_crystals_per_block=1,
        gap_position="first",
        tof=None,
        sensitivity_cps_per_kbq=15.0,
        default_num_radial=344,
    )


def _vision() -> ScannerGeometry:
    # Siemens Biograph Vision 600: van Sluis et al., J Nucl Med 60:1031-1036 (2019):
    # 3.2 x 3.2 x 20 mm LSO, 60,800 crystals = 80 rings x 760 crystals
    # (38 blocks x 20 transaxially, 8 blocks x 10 axially), ring diameter 82 cm,
    # axial FOV 26.3 cm (ring pitch 3.29 mm), TOF resolution 210 ps, NEMA NU 2-2012
    # sensitivity 16.4 cps/kBq (the Vision 450 with the same detectors measures 213 ps:
    # EJNMMI Phys 7:55 (2020)). Sinogram radial bins 520 as in the vendor's span-1 sinograms.
    # DOI 7 mm as STIR uses for LSO block detectors. TOF binning: 33 bins of 143 ps
    # (project choice covering the FOV; the vendor's exact TOF binning is not cited).
    return ScannerGeometry(
        name="vision",
        num_rings=80,
        crystals_per_ring=760,
        radius_mm=410.0,
        ring_spacing_mm=3.29,
        crystal_size_mm=(3.2, 3.2, 20.0),
        doi_mm=7.0,
        blocks_per_ring=38,
        crystals_per_block=(20, 10),
        gap_crystals_per_block=0,
        tof=TOFParameters.from_picoseconds(num_bins=33, bin_width_ps=143.0, fwhm_ps=210.0),
        sensitivity_cps_per_kbq=16.4,
        default_num_radial=520,
    )


def _dmi() -> ScannerGeometry:
    # GE Discovery MI, 4 detector rings (20 cm axial FOV). Geometry as in STIR's
    # Scanner.cxx (DiscoveryMI4ring): 36 rings, 544 crystals/ring (136 blocks x 4
    # transaxially, 9 axially), effective ring radius 380.5 mm (inner 371.1 mm + DOI
    # 9.4 mm), ring spacing 5.52296 mm, 415 non-arc-corrected bins; crystals
    # 3.95 x 5.3 x 25 mm LBS. Hsu et al., J Nucl Med 58:1511-1518 (2017), 4-ring system:
    # detector ring diameter 74.4 cm, NEMA NU 2-2012 sensitivity 13.7 cps/kBq at the
    # centre, timing resolution 375.4 ps (another site measured 377 ps: Chicheportiche
    # et al., EJNMMI Phys 7:7 (2020); vendor material quotes about 385 ps).
    # TOF binning: 29 bins of 169 ps (project choice covering the FOV).
    return ScannerGeometry(
        name="dmi",
        num_rings=36,
        crystals_per_ring=544,
        radius_mm=371.1,
        ring_spacing_mm=5.52296,
        crystal_size_mm=(3.95, 5.3, 25.0),
        doi_mm=9.4,
        blocks_per_ring=136,
        crystals_per_block=(4, 9),
        gap_crystals_per_block=0,
        tof=TOFParameters.from_picoseconds(num_bins=29, bin_width_ps=169.0, fwhm_ps=375.4),
        sensitivity_cps_per_kbq=13.7,
        default_num_radial=415,
    )


def _uexplorer() -> ScannerGeometry:
    # United Imaging uEXPLORER total-body PET/CT. Spencer et al., J Nucl Med 62:861-870
    # (2021): 8 axial units, 564,480 LYSO crystals of 2.76 x 2.76 x 18.1 mm
    # = 672 rings x 840 crystals/ring (24 modules x 5 blocks x 7 crystals),
    # ring diameter 78.6 cm, axial FOV 194 cm (ring pitch 1940 / 672 = 2.887 mm),
    # NEMA NU 2-2018 sensitivity 174 cps/kBq. TOF resolution 430 ps (Badawi et al.,
    # J Nucl Med 60:299-303 (2019)). TOF binning: 27 bins of 190 ps (project choice).
    return ScannerGeometry(
        name="uexplorer",
        num_rings=672,
        crystals_per_ring=840,
        radius_mm=393.0,
        ring_spacing_mm=1940.0 / 672,
        crystal_size_mm=(2.76, 2.76, 18.1),
        doi_mm=6.0,
        blocks_per_ring=120,
        crystals_per_block=(7, 6),
        gap_crystals_per_block=0,
        tof=TOFParameters.from_picoseconds(num_bins=27, bin_width_ps=190.0, fwhm_ps=430.0),
        sensitivity_cps_per_kbq=174.0,
        default_num_radial=549,
    )


def _test() -> ScannerGeometry:
    # Small made-up scanner for fast tests: 4 rings of 112 crystals (14 blocks of 8),
    # 110 mm radius + 5 mm DOI, TOF 400 ps in 9 bins of 200 ps. The sensitivity is a
    # nominal value (not a real system).
    return ScannerGeometry(
        name="test",
        num_rings=4,
        crystals_per_ring=112,
        radius_mm=110.0,
        ring_spacing_mm=4.0,
        crystal_size_mm=(4.0, 4.0, 10.0),
        doi_mm=5.0,
        blocks_per_ring=14,
        crystals_per_block=(8, 4),
        gap_crystals_per_block=0,
        tof=TOFParameters.from_picoseconds(num_bins=9, bin_width_ps=200.0, fwhm_ps=400.0),
        sensitivity_cps_per_kbq=5.0,
        default_num_radial=65,
    )


_PRESETS: dict[str, Callable[[], ScannerGeometry]] = {
    "mmr": _mmr,
    "vision": _vision,
    "dmi": _dmi,
    "uexplorer": _uexplorer,
    "test": _test,
}

#: Names accepted by :func:`get_scanner`.
SCANNER_PRESETS: tuple[str, ...] = tuple(_PRESETS)


def get_scanner(name: str) -> ScannerGeometry:
    """The preset scanner ``name`` (case-insensitive): one of :data:`SCANNER_PRESETS`."""
    if not isinstance(name, str):
        raise TypeError(f"scanner name must be a str, got {type(name).__name__}")
    try:
        return _PRESETS[name.lower()]()
    except KeyError:
        raise ValueError(
            f"unknown scanner {name!r}; choose one of {', '.join(SCANNER_PRESETS)}"
        ) from None
