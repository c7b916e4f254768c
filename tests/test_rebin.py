"""pet_dl.rebin (SSRB) and 3D scans through a 2D network (pet_dl.plane_inference, infer.py)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from pet_dl.errors import GeometryError
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.rebin import (
    direct_planes_geometry,
    plane_ring_sums,
    plane_scan,
    plane_secants,
    ssrb,
    stack_planes,
)
from pet_dl.scan import AcquisitionMetadata, Scan
from pet_dl.simulate import calibration_per_second, crystal_normalisation, expected_counts

RINGS = 17  # the fewest rings for which span 11 has oblique segments (-16..-6, 6..16)


def geometry(num_radial: int = 96, view_mashing: int = 2) -> tuple[SinogramGeometry, ImageGeometry]:
    """A few-ring mMR, span 11; an image whose slices sit on the 2N - 1 rebinned planes."""
    sino = SinogramGeometry(
        get_scanner("mmr").with_rings(RINGS), num_radial=num_radial, span=11,
        view_mashing=view_mashing,
    )
    image = ImageGeometry.centered((32, 32, 2 * RINGS - 1), (4.0, 4.0, sino.scanner.ring_spacing_mm / 2))
    return sino, image


def phantom(image: ImageGeometry, axial: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Activity (Bq/mL) and mu (1/mm): a water disk with a hot spot, constant along z
    (``axial``: a hot band in the middle third)."""
    nx, ny, nz = image.shape
    x = torch.linspace(-1, 1, nx)
    disk = ((x[:, None] ** 2 + x[None, :] ** 2) < 0.6).float()
    spot = (((x[:, None] - 0.3) ** 2 + x[None, :] ** 2) < 0.03).float()
    act = (disk * 5000.0 + spot * 10000.0)[..., None].expand(nx, ny, nz).clone()
    if axial:
        act[..., nz // 3 : 2 * nz // 3] *= 1.5
    return act, (disk * 0.0096)[..., None].expand(nx, ny, nz).contiguous()


def expected_scan(sino: SinogramGeometry, image: ImageGeometry, act: torch.Tensor, mu: torch.Tensor) -> Scan:
    """A scan whose prompts are the expected counts (crystal efficiencies, gaps, attenuation,
    scatter, randoms)."""
    norm = crystal_normalisation(sino, 0.05, torch.Generator().manual_seed(3))
    cal = calibration_per_second(sino) * 600.0
    exp = expected_counts(act, mu, sino, image, calibration=cal, normalisation=norm)
    return Scan(sino, image, exp.total, exp.attenuation * exp.normalisation,
                exp.scatter + exp.randoms, cal, 0.0, AcquisitionMetadata(duration_s=600.0))


def test_direct_planes_are_horizontal_at_half_ring_pitch() -> None:
    sino, _ = geometry()
    planes = direct_planes_geometry(sino)
    z_start, z_end = planes.plane_z()
    ring_z = sino.scanner.ring_z()
    expected = torch.tensor([(ring_z[0] + ring_z[0]) / 2 + s * sino.scanner.ring_spacing_mm / 2
                             for s in range(2 * RINGS - 1)], dtype=torch.float64)
    assert planes.num_planes == 2 * RINGS - 1
    torch.testing.assert_close(z_start, expected)
    torch.testing.assert_close(z_end, expected)
    # every 3D plane goes to the ring sum of its pairs; segment 0 holds each sum once
    sums = plane_ring_sums(sino)
    first = sum(n for lo, hi, n in sino.segments if hi < 0)
    assert sorted(sums[first : first + 2 * RINGS - 1].tolist()) == list(range(2 * RINGS - 1))
    assert sums.min() >= 0 and sums.max() <= 2 * RINGS - 2
    # secants: 1 for planes whose representative LOR is horizontal, sqrt(1 + (dz/L)^2) else
    sec = plane_secants(sino)
    zs, ze = sino.plane_z()
    start, end = sino.transaxial_endpoints(torch.tensor([0]))
    length = (end[0, 5] - start[0, 5]).norm()
    j = int(torch.argmax((ze - zs).abs()))
    assert math.isclose(float(sec[j, 5]), math.sqrt(1 + float(ze[j] - zs[j]) ** 2 / float(length) ** 2))
    assert torch.all(sec[(ze - zs) == 0] == 1)


def test_ssrb_expected_counts_match_the_rebinned_2d_forward_model() -> None:
    """Through an object constant along z, the rebinned expected counts are exactly the
    2D forward model of the rebinned factors (float32 rounding), counts are conserved."""
    sino, image = geometry()
    act, mu = phantom(image)
    scan = expected_scan(sino, image, act, mu)
    rebinned = ssrb(scan)
    assert rebinned.sinogram.shape == (2 * RINGS - 1, sino.num_views, sino.num_radial)
    assert math.isclose(float(rebinned.prompts.sum()), float(scan.prompts.sum()), rel_tol=1e-6)
    assert math.isclose(float(rebinned.additive.sum()), float(scan.additive.sum()), rel_tol=1e-6)
    model = rebinned.forward_model()(act)
    live = rebinned.prompts > 0
    rel = (model - rebinned.prompts)[live].abs() / rebinned.prompts[live]
    assert float(rel.max()) < 1e-5
    assert torch.all(model[~live] == 0)
    # an axial band: SSRB puts oblique counts at their midpoint, so planes near the band's
    # edges differ from the 2D model (the known axial blur, here the disk's 100 mm chord x
    # tan(theta) <= 0.07: about 3 planes); planes farther from an edge agree
    act2, _ = phantom(image, axial=True)
    scan2 = expected_scan(sino, image, act2, mu)
    rebinned2 = ssrb(scan2)
    per_plane = rebinned2.forward_model()(act2).sum((1, 2)) / rebinned2.prompts.sum((1, 2)) - 1
    nz = image.shape[2]
    edges = torch.tensor([nz // 3 - 0.5, 2 * nz // 3 - 0.5])
    distance = (torch.arange(nz)[:, None] - edges[None, :]).abs().amin(1)
    assert float(per_plane[distance < 1].abs().min()) > 1e-2
    assert float(per_plane[distance > 3].abs().max()) < 1e-5


def test_ssrb_crop_and_mash_keep_the_forward_model_to_mashing_accuracy() -> None:
    """Radial bins cropped (the same crystal pairs) and views mashed 2 -> 4: totals agree,
    bins to the mashing approximation (member views' line integrals differ slightly)."""
    sino, image = geometry()
    act, mu = phantom(image)
    scan = expected_scan(sino, image, act, mu)
    full = ssrb(scan)
    small = ssrb(scan, num_radial=64, view_mashing=4)
    assert small.sinogram.shape == (2 * RINGS - 1, sino.num_views // 2, 64)
    # cropping keeps the central 64 bins (offsets -32..31 of -48..47); mashing sums view pairs
    window = full.prompts[..., 16:80]
    torch.testing.assert_close(small.prompts, window.reshape(-1, 63, 2, 64).sum(2), rtol=1e-6, atol=1e-3)
    model = small.forward_model()(act)
    assert math.isclose(float(model.sum()), float(small.prompts.sum()), rel_tol=1e-3)
    assert float((model - small.prompts).abs().sum() / small.prompts.sum()) < 5e-3
    with pytest.raises(GeometryError, match="multiple"):
        ssrb(scan, view_mashing=3)


def test_ssrb_of_poisson_prompts_is_poisson_with_the_rebinned_mean(generator: torch.Generator) -> None:
    sino, image = geometry()
    act, mu = phantom(image)
    scan = expected_scan(sino, image, act, mu)
    noisy = replace(scan, prompts=torch.poisson(scan.prompts, generator=generator))
    rebinned = ssrb(noisy)
    mean = ssrb(scan).forward_model()(act)
    live = mean > 0
    z = (rebinned.prompts - mean)[live] / mean[live].sqrt()
    assert z.numel() > 200_000
    assert abs(float(z.mean())) < 0.01
    assert abs(float(z.var()) - 1.0) < 0.02
    assert torch.all(rebinned.prompts[~live] == 0)


def test_stack_planes_copies_matching_grids_and_interpolates_between() -> None:
    plane_image = ImageGeometry.centered((8, 6, 1), (2.0, 3.0, 1.0))
    planes = torch.arange(5 * 8 * 6, dtype=torch.float32).reshape(5, 8, 6)
    z = torch.arange(5, dtype=torch.float64) * 2.5 - 5.0
    same = ImageGeometry((8, 6, 5), (2.0, 3.0, 2.5), (*plane_image.origin_mm[:2], -5.0))
    torch.testing.assert_close(stack_planes(planes, plane_image, z, same), planes.permute(1, 2, 0))
    # slices halfway between planes, voxels halfway between columns: the means
    mid = ImageGeometry((7, 6, 4), (2.0, 3.0, 2.5), (plane_image.origin_mm[0] + 1.0, plane_image.origin_mm[1], -3.75))
    out = stack_planes(planes, plane_image, z, mid)
    p = planes.double()
    expected = 0.5 * (p[:-1] + p[1:])  # (Z, nx, ny): axial means, then transaxial
    expected = 0.5 * (expected[:, :-1] + expected[:, 1:])
    torch.testing.assert_close(out, expected.permute(1, 2, 0).float())
    # beyond the planes by more than half a spacing, and outside the transaxial grid: zero
    far = ImageGeometry((8, 6, 2), (2.0, 3.0, 10.0), (plane_image.origin_mm[0] + 40.0, plane_image.origin_mm[1], -20.0))
    assert float(stack_planes(planes, plane_image, z, far).abs().max()) == 0.0


# --------------------------------------------------------------------- through the network
TINY: dict[str, Any] = {
    "name": "unrolled_em", "spatial_dims": 2, "num_iterations": 2, "channels": [4, 8],
    "strides": [2], "init_iterations": 4, "init_subsets": 7,
}


@pytest.fixture
def scan_and_model(tmp_path: Path, generator: torch.Generator) -> tuple[Scan, Path, Path]:
    """A noisy 3D scan file (96 bins, mashing 2) and a small 2D model on the same scanner's
    2D layout with 64 bins, mashing 4 (as the shipped model is smaller than the native layout)."""
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.io.scanfile import write_scan
    from pet_dl.models import build_model

    sino, image = geometry()
    act, mu = phantom(image, axial=True)
    scan = expected_scan(sino, image, act, mu)
    scan = replace(scan, prompts=torch.poisson(scan.prompts, generator=generator),
                   metadata=replace(scan.metadata, patient_weight_kg=70.0))
    path = tmp_path / "scan3d.h5"
    write_scan(path, scan)
    two_d = SinogramGeometry.two_d(sino.scanner, num_radial=64, view_mashing=4)
    image2d = ImageGeometry.centered((32, 32, 1), (4.0, 4.0, 4.0))
    torch.manual_seed(0)  # MONAI layers initialise from the global generator
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", build_model(TINY), TINY,
                           {"sinogram": two_d.to_dict(), "image": image2d.to_dict()})
    return scan, path, Path(ckpt)


def test_infer_3d_scan_gives_the_2d_reconstruction_of_each_rebinned_plane(
    scan_and_model: tuple[Scan, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import infer
    from pet_dl.inference import reconstruct_with_network
    from pet_dl.io.dicom import read_pet_series
    from pet_dl.io.nifti import load_nifti

    scan, path, ckpt = scan_and_model
    out = tmp_path / "out"
    assert infer.main([str(path), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    # the untrained network contradicts the data: one warning naming the worst plane
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "rebinned plane" in warnings[0]
    volume, grid = load_nifti(out / "scan3d.nii.gz")
    assert grid == scan.image or (grid.shape == scan.image.shape and all(
        math.isclose(a, b, abs_tol=1e-4) for a, b in zip(grid.origin_mm + grid.voxel_size_mm,
                                                           scan.image.origin_mm + scan.image.voxel_size_mm)))
    rebinned = ssrb(scan, num_radial=64, view_mashing=4)
    image2d = ImageGeometry.centered((32, 32, 1), (4.0, 4.0, 4.0))
    for j in (0, 7, 16, 32):  # the scan's slices sit on the planes: plane j is slice j
        ref = reconstruct_with_network(plane_scan(rebinned, j, image2d), ckpt, device="cpu")[..., 0]
        assert float(ref.max()) > 0
        torch.testing.assert_close(volume[..., j], ref, rtol=1e-4, atol=1e-4 * float(ref.max()))
    dicom, dgrid, _ = read_pet_series(out / "scan3d_dicom")
    assert dicom.shape == tuple(scan.image.shape)
    for a, b in zip(dgrid.origin_mm + dgrid.voxel_size_mm, scan.image.origin_mm + scan.image.voxel_size_mm):
        assert math.isclose(a, b, abs_tol=1e-3)
    for j in range(dicom.shape[2]):  # int16 per slice: within a step of that slice's maximum
        peak = float(volume[..., j].abs().max())
        assert float((torch.from_numpy(dicom[..., j]).float() - volume[..., j]).abs().max()) <= peak / 30000 + 1e-3


def test_3d_data_check_runs_per_plane(scan_and_model: tuple[Scan, Path, Path]) -> None:
    from pet_dl.data_check import DataFit, data_fit
    from pet_dl.inference import reconstruct_and_check

    scan, _, ckpt = scan_and_model
    image, fit = reconstruct_and_check(scan, ckpt, device="cpu")
    assert image.shape == scan.image.shape
    assert len(fit.ratios) == 2 * RINGS - 1
    assert fit.ratio == max(fit.ratios)
    # the worst plane's numbers are data_fit's on that plane as a 2D scan
    rebinned = ssrb(scan, num_radial=64, view_mashing=4)
    image2d = ImageGeometry.centered((32, 32, 1), (4.0, 4.0, 4.0))
    plane = plane_scan(rebinned, fit.plane, image2d)
    direct: DataFit = data_fit(plane, image[..., fit.plane : fit.plane + 1], device="cpu")
    assert math.isclose(direct.ratio, fit.ratio, rel_tol=1e-3)


def test_3d_scan_that_cannot_reach_the_models_layout_is_refused(
    scan_and_model: tuple[Scan, Path, Path], tmp_path: Path
) -> None:
    from pet_dl.inference import reconstruct_with_network
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.models import build_model

    scan, _, _ = scan_and_model
    other = SinogramGeometry.two_d(scan.sinogram.scanner, num_radial=64, view_mashing=3)
    image2d = ImageGeometry.centered((32, 32, 1), (4.0, 4.0, 4.0))
    ckpt = save_checkpoint(tmp_path / "m3.safetensors", build_model(TINY), TINY,
                           {"sinogram": other.to_dict(), "image": image2d.to_dict()})
    with pytest.raises(GeometryError, match="view_mashing"):
        reconstruct_with_network(scan, ckpt, device="cpu")


def test_3d_scan_wider_than_the_models_grid_is_reconstructed_on_a_grown_grid(
    scan_and_model: tuple[Scan, Path, Path], tmp_path: Path
) -> None:
    """A model whose 2D grid (64 mm) and bins (34 mm from the axis) do not cover the
    scan's 100 mm disk: every plane is reconstructed on the model's grid grown to the
    scan's, with bins to match, instead of being cut at 32 mm."""
    from pet_dl.inference import reconstruct_and_check
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.models import build_model
    from pet_dl.plane_inference import covering_layout

    scan, _, _ = scan_and_model
    small = SinogramGeometry.two_d(scan.sinogram.scanner, num_radial=32, view_mashing=4)
    image2d = ImageGeometry.centered((16, 16, 1), (4.0, 4.0, 4.0))
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "small.safetensors", build_model(TINY), TINY,
                           {"sinogram": small.to_dict(), "image": image2d.to_dict()})
    grown, bins = covering_layout(scan, small, image2d)
    assert grown.shape == (32, 32, 1) and 32 < bins <= scan.sinogram.num_radial
    image, fit = reconstruct_and_check(scan, ckpt, device="cpu")
    assert len(fit.ratios) == 2 * RINGS - 1
    act, _ = phantom(scan.image, axial=True)
    x = torch.from_numpy(scan.image.voxel_centers(0))
    outside = (x.abs() > 34.0)[:, None, None] & (act > 0)  # beyond the model's own field of view
    assert int(outside.sum()) > 100
    assert float(image[outside].mean()) > 0.5 * float(act[outside].mean())


def test_3d_consistency_map_finds_a_planted_blob_once_across_planes(
    scan_and_model: tuple[Scan, Path, Path],
) -> None:
    """The map of a rebinned 3D scan: each plane's map against its own counts, stacked onto
    the scan's grid; a blob planted over five planes of images that fit the data (each
    plane's OSEM) is one region where it was put, and the data alone flag nothing there."""
    from pet_dl.inference import reconstruct_and_check
    from pet_dl.models.batch import initial_image
    from pet_dl.plane_inference import _plane_batch, planes_consistency_map

    scan, _, ckpt = scan_and_model
    _, fit = reconstruct_and_check(scan, ckpt, device="cpu")
    assert fit.consistency is not None and fit.consistency.z.shape == scan.image.shape
    rebinned = ssrb(scan, num_radial=64, view_mashing=4)
    image2d = ImageGeometry.centered((32, 32, 1), (4.0, 4.0, 4.0))
    num = rebinned.prompts.shape[0]
    batch = _plane_batch(plane_scan(rebinned, slice(None), image2d), torch.device("cpu"), None)
    osems = initial_image(batch.forward_model(), batch.prompts, 4, 7)[..., 0]
    plane_z = direct_planes_geometry(scan.sinogram, 64, 4).plane_z()[0]
    clean = planes_consistency_map(rebinned, list(range(num)), osems, osems, image2d, plane_z, scan.image)
    x = torch.from_numpy(image2d.voxel_centers(0))[:, None]
    y = torch.from_numpy(image2d.voxel_centers(1))[None, :]
    blob = torch.exp(-((x + 20.0) ** 2 + (y - 10.0) ** 2) / (2 * 4.0**2)).float()
    centre = num // 2
    planted = osems.clone()
    for j in range(centre - 2, centre + 3):
        planted[j] += 1.5 * float(osems[centre].max()) * blob
    flagged = planes_consistency_map(rebinned, list(range(num)), planted, osems, image2d, plane_z, scan.image)

    def near(regions) -> list:
        return [r for r in regions if abs(r.centre_mm[0] + 20) < 6 and abs(r.centre_mm[1] - 10) < 6
                and abs(r.centre_mm[2] - float(plane_z[centre])) < 6]

    assert near(clean.regions) == []
    assert len(near(flagged.regions)) == 1, flagged.regions
    assert flagged.z.shape == scan.image.shape and float(flagged.z.max()) > float(clean.z.max())


def test_planes_too_sparse_for_the_map_are_left_out_and_named(
    scan_and_model: tuple[Scan, Path, Path], tmp_path: Path
) -> None:
    """A plane whose count level is below 1/100 of the model's training level gets no map
    (there the randoms and scatter estimate alone reads z 4-6); the warning names how many."""
    from pet_dl.data_check import data_check_warning
    from pet_dl.inference import reconstruct_and_check
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.models import build_model

    scan, _, _ = scan_and_model
    two_d = SinogramGeometry.two_d(scan.sinogram.scanner, num_radial=64, view_mashing=4)
    image2d = ImageGeometry.centered((32, 32, 1), (4.0, 4.0, 4.0))
    meta = {"sinogram": two_d.to_dict(), "image": image2d.to_dict()}
    fits = {}
    for name, reference in (("dense", 1.0), ("sparse", 1e12)):  # counts per mL at full dose
        config = {**TINY, "count_reference": reference}
        torch.manual_seed(0)
        ckpt = save_checkpoint(tmp_path / f"{name}.safetensors", build_model(config), config, meta)
        fits[name] = reconstruct_and_check(scan, ckpt, device="cpu")[1]
    assert fits["dense"].unmapped == 0 and fits["dense"].consistency is not None
    sparse = fits["sparse"]
    assert sparse.consistency is None and sparse.unmapped == sum(1 for r in sparse.ratios if r == r) > 0
    line = data_check_warning("scan3d", sparse)
    assert line is not None and f"no consistency map for {sparse.unmapped} of {sparse.unmapped}" in line
