"""Sensitivity image (backprojection of an all-ones sinogram) against STIR's.

STIR's ``RPTsens_seg4`` (shared data ``stir_reference/``) is the interpolating
backprojection of an all-ones sinogram of the ``PRT-1`` / ``RPT`` scanner described in
``Utahscat600k_ca_seg4.hs``: 16 rings of 384 detectors, ring spacing 6.75 mm,
arc-corrected, 128 bins of 3.1088 mm, 96 views (view mashing 2), segments -4..4 (span 1),
into 97 x 97 x 31 voxels of 3.1088 x 3.1088 x 3.375 mm, with segment 0's two end planes
zeroed. The header gives no ring radius; STIR's ``Scanner.cxx`` (case ``RPT``) uses an
inner ring radius of 380 - 7 mm with an average DOI of 7 mm, so LORs end on a cylinder of
radius 380 mm (the effective ring radius that sets tan(theta) of oblique segments).

The two backprojectors differ, so we compare the shape of normalised profiles, not values
(STIR's image is in its own units: about 3e-5 times ours):
- STIR's interpolating backprojector interpolates in the sinogram (in s and in the axial
  coordinate on a half-ring grid); pet_dl's Joseph backprojector interpolates in the
  image. With LOR planes every ring (6.75 mm) and voxels every half ring (3.375 mm),
  Joseph's linear z-interpolation gives an even/odd plane modulation of about +-1.2 %
  that STIR's does not have: we compare axial profiles after a [1, 2, 1] / 4 smoothing
  along z (raw difference allowed 0.1 at the end planes, where the schemes differ most).
- STIR zeroes voxels outside a circular FOV (radius about 143 mm); radial profiles are
  compared up to 130 mm. STIR's rises by about 3 % from the centre to 130 mm, Joseph's is
  flat within 1 %: tolerance 0.04.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pet_dl.geometry import ImageGeometry, ScannerGeometry, SinogramGeometry
from pet_dl.io.interfile import read_interfile_header, read_interfile_image, read_sinogram_header

projector = pytest.importorskip("pet_dl.projector")


def _rpt_sinogram(path: Path) -> SinogramGeometry:
    header = read_interfile_header(path)
    layout = read_sinogram_header(path)
    num_det = int(header["number of detectors per ring"])
    rpt = ScannerGeometry(
        name="rpt",
        num_rings=int(header["number of rings"]),
        crystals_per_ring=num_det,
        radius_mm=373.0,  # STIR Scanner.cxx, case RPT: 380 mm - 7 mm DOI
        ring_spacing_mm=10 * float(header["distance between rings (cm)"]),
        crystal_size_mm=(6.0, 6.75, 30.0),
        doi_mm=7.0,
    )
    num_views = layout["num_views"]
    max_rd = max(layout["max_ring_difference"])
    return SinogramGeometry(
        rpt,
        num_radial=layout["num_tangential"],
        max_ring_difference=max_rd,
        view_mashing=num_det // 2 // num_views,
        arc_corrected=True,
        radial_bin_mm=3.1088,  # STIR's default bin size for RPT (Scanner.cxx)
    )


def _smooth_z(p: np.ndarray) -> np.ndarray:
    q = np.pad(p, 1, mode="edge")
    return (q[:-2] + 2 * q[1:-1] + q[2:]) / 4


def test_sensitivity_profiles_match_stir(test_data: Path) -> None:
    root = test_data / "stir_reference"
    sino = _rpt_sinogram(root / "Utahscat600k_ca_seg4.hs")
    # the layout of STIR's data file
    assert [s[2] for s in sino.segments] == read_sinogram_header(
        root / "Utahscat600k_ca_seg4.hs"
    )["axial_per_segment"]
    assert sino.num_views == 96 and sino.num_radial == 128

    ref_image, image = read_interfile_image(root / "RPTsens_seg4.hv")  # (x, y, z), centred
    assert image == ImageGeometry.centered((97, 97, 31), (3.1088, 3.1088, 3.375))
    image.check_fits(sino.scanner)
    ref = ref_image.numpy()

    ones = torch.ones(sino.shape, dtype=torch.float32)
    seg0_first = sum(n for lo, _, n in sino.segments if lo < 0)
    ones[seg0_first] = 0.0  # STIR zeroes segment 0's end planes
    ones[seg0_first + sino.segments[len(sino.segments) // 2][2] - 1] = 0.0
    start, end = sino.lor_endpoints(dtype=torch.float32)
    ours = projector.joseph_back(
        ones.reshape(-1), start.reshape(-1, 3), end.reshape(-1, 3),
        image.shape, image.origin_mm, image.voxel_size_mm,
    ).numpy()
    assert ours.shape == ref.shape

    x, y = image.voxel_centers(0), image.voxel_centers(1)
    r = np.hypot(x[:, None], y[None, :])
    plateau = slice(8, 23)  # planes where every segment contributes

    def axial(v: np.ndarray) -> np.ndarray:
        p = v[r < 100].mean(axis=0)
        return p / p[plateau].mean()

    a_ours, a_ref = axial(ours), axial(ref)
    assert np.abs(a_ours - a_ref).max() < 0.1
    smooth_diff = np.abs(_smooth_z(a_ours) - _smooth_z(a_ref))
    assert smooth_diff[1:-1].max() < 0.03, smooth_diff
    # the ramp at each axial end rises monotonically in both
    for prof in (_smooth_z(a_ours), _smooth_z(a_ref)):
        assert np.all(np.diff(prof[:5]) > 0) and np.all(np.diff(prof[-5:]) < 0)

    edges = np.arange(0.0, 130.0 + 1e-6, 2 * image.voxel_size_mm[0])

    def radial(v: np.ndarray) -> np.ndarray:
        p = np.array([v[(r >= lo) & (r < hi)][:, plateau].mean() for lo, hi in zip(edges[:-1], edges[1:])])
        return p / p[0]

    r_ours, r_ref = radial(ours), radial(ref)
    assert np.abs(r_ours - r_ref).max() < 0.04, r_ours - r_ref
    assert np.abs(r_ours - 1).max() < 0.02  # Joseph: flat within 2 % (uniform arc-corrected sampling)
