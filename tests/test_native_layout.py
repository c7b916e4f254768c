"""A 2D scan on the mMR's native layout (252 views x 344 bins) or another image grid goes
through the shipped model: brought onto the model's 126 x 128 layout and 2.6 mm grid
(:func:`pet_dl.rebin.relayout_2d`), reconstructed, resampled onto the scan's grid."""

from __future__ import annotations

from dataclasses import replace

import torch

from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.phantoms import make_phantom
from pet_dl.rebin import relayout_2d
from pet_dl.simulate import simulate_scan, thin_scan

NATIVE_GRID = ImageGeometry.centered((128, 128, 1), (2.0, 2.0, 2.0))


def _native_scan(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    phantom = make_phantom("brain", NATIVE_GRID, g)
    sino = SinogramGeometry.two_d(get_scanner("mmr"))
    scan = simulate_scan(
        phantom.activity, phantom.mu, sino, NATIVE_GRID, duration_s=600.0, scatter_fraction=0.3,
        randoms_fraction=0.2, psf_fwhm_mm=4.5, crystal_efficiency_sigma=0.05, generator=g,
    )
    return phantom, scan, g


def test_relayout_keeps_the_counts_and_the_forward_model() -> None:
    from pet_dl.forward_model import GaussianResolution, PETForwardModel, SinogramProjector

    phantom, scan, _ = _native_scan()
    assert scan.sinogram.shape == (1, 252, 344)
    moved = relayout_2d(scan, 128, 2)
    assert moved.sinogram.shape == (1, 126, 128)
    # prompts: exactly the native counts of the kept radial bins, summed over view pairs
    lo = 344 // 2 - 64
    assert torch.equal(moved.prompts.sum(), scan.prompts[..., lo : lo + 128].sum())
    # the forward model on the new layout with the summed factors predicts the summed
    # expected counts of the native layout (the mashed LOR is the pair's mean)
    def expected(s, image):
        model = PETForwardModel(
            SinogramProjector(s.sinogram, image), multiplicative=s.multiplicative.float(),
            additive=s.additive.float(), resolution=GaussianResolution(image, 4.5),
            calibration=torch.tensor(float(s.calibration)),
        )
        return model(phantom.activity.float())

    native = expected(scan, NATIVE_GRID)
    moved_expected = relayout_2d(replace(scan, prompts=native), 128, 2).prompts
    direct = expected(moved, NATIVE_GRID)
    err = float((direct - moved_expected).abs().sum() / moved_expected.abs().sum())
    assert err < 0.02, err


def test_native_scan_is_reconstructed_by_the_shipped_model_on_its_grid(tmp_path) -> None:
    from pet_dl.inference import reconstruct_with_network
    from pet_dl.metrics import nrmse
    from pet_dl.recon import gaussian_postfilter, reconstruct_classical

    phantom, scan, g = _native_scan()
    low = thin_scan(scan, 0.05, g)
    image = reconstruct_with_network(low)
    assert image.shape == NATIVE_GRID.shape  # the scan's grid, not the model's 96 x 96
    osem = gaussian_postfilter(reconstruct_classical(low, "osem", num_iterations=4, num_subsets=7), NATIVE_GRID, 6.0)
    net_err = float(nrmse(image[None], phantom.activity[None])[0])
    osem_err = float(nrmse(osem[None], phantom.activity[None])[0])
    assert net_err < osem_err, (net_err, osem_err)
    # activity is kept: the network's total within 10 % of the truth's
    assert abs(float(image.sum() / phantom.activity.sum()) - 1.0) < 0.1


# ------------------------------------------------- objects wider than the model's grid
WIDE_GRID = ImageGeometry.centered((128, 128, 1), (2.6, 2.6, 2.6))  # 333 mm: the IEC phantom's 294 mm fits


def _shipped_layout():
    from pet_dl.inference import load_model

    meta = load_model(None, torch.device("cpu")).metadata
    return SinogramGeometry.from_dict(meta["sinogram"]), ImageGeometry.from_dict(meta["image"])


def test_covering_layout_grows_the_grid_and_bins_only_beyond_the_models_reach() -> None:
    import math

    from pet_dl.plane_inference import (
        OBJECT_MARGIN_VOXELS,
        WHOLE_FIELD,
        ObjectExtent,
        covering_layout,
    )

    trained, grid = _shipped_layout()
    native = SinogramGeometry.two_d(get_scanner("mmr"))

    def reach(n: int) -> float:
        return float(replace(trained, num_radial=n).radial_positions_mm().abs().max())

    scan = type("S", (), {"image": NATIVE_GRID, "sinogram": native})  # 256 mm: within the 128 bins' reach
    assert covering_layout(scan, trained, grid) == (grid, trained.num_radial)
    scan.image = WIDE_GRID
    grown, bins = covering_layout(scan, trained, grid)
    assert grown == ImageGeometry.centered((128, 128, 1), grid.voxel_size_mm)  # the model's voxels, centred
    # the bins reach the grown grid's corners: every voxel is seen in every view
    assert bins % 2 == 0 and reach(bins) >= 0.5 * 128 * 2.6 * 2**0.5 > reach(bins - 2)
    # the object, not the scan's grid, sets the grid once it is known: its extent and a margin
    margin = OBJECT_MARGIN_VOXELS * 2.6
    # (a core within the model's bins: its layout, whatever the outline; a wider one: the outline)
    assert covering_layout(scan, trained, grid, ObjectExtent(100.0, 150.0)) == (grid, trained.num_radial)
    side = 4 * math.ceil(2 * (150.0 + margin) / 2.6 / 4)  # the IEC phantom: 136 voxels
    assert covering_layout(scan, trained, grid, ObjectExtent(147.0, 150.0))[0].shape == (side, side, 1)
    scan.image = ImageGeometry.centered((172, 172, 1), 4.1725)  # the import's 718 mm grid
    assert covering_layout(scan, trained, grid, ObjectExtent(147.0, 150.0))[0].shape == (side, side, 1)
    # the first look: the whole field of view of the scan's bins, every bin
    look, bins = covering_layout(scan, trained, grid, WHOLE_FIELD)
    assert bins == 344 and look.shape[0] * 2.6 / 2 >= reach(344) > (look.shape[0] - 4) * 2.6 / 2
    # an off-centre grid counts by its farthest edge; never beyond the scan's own bins
    scan.image = ImageGeometry((40, 40, 1), (2.6, 2.6, 2.6), (60.0, -20.0, 0.0))  # reaches x = 165 mm
    assert covering_layout(scan, trained, grid)[0].shape == (128, 128, 1)
    scan.sinogram = replace(native, num_radial=140)
    grown, bins = covering_layout(scan, trained, grid)
    assert bins == 140 and grown.shape[0] * 2.6 / 2 <= reach(140) + 4 * 2.6


def test_an_object_wider_than_the_models_grid_is_reconstructed_whole() -> None:
    """The NEMA IEC phantom (294 mm) on the native layout: before the grown grid the
    shipped model cut it at 250 mm and painted bright bands at the cut (8.5 false hot spots
    per image at full dose, NRMSE 34 % against OSEM's 20 %;
    ``experiments/scripts/wide_object_scores.py --cut``)."""
    from pet_dl.forward_model import GaussianResolution
    from pet_dl.inference import reconstruct_and_check
    from pet_dl.metrics import dilate_mask, hot_spots, nrmse
    from pet_dl.phantoms.nema import nema_phantom
    from pet_dl.recon import gaussian_postfilter, reconstruct_classical

    g = torch.Generator().manual_seed(300000)
    phantom = nema_phantom(WIDE_GRID, g)
    sino = SinogramGeometry.two_d(get_scanner("mmr"))
    scan = simulate_scan(
        phantom.activity, phantom.mu, sino, WIDE_GRID, duration_s=600.0, scatter_fraction=0.3,
        randoms_fraction=0.2, psf_fwhm_mm=4.5, crystal_efficiency_sigma=0.05, generator=g,
    )
    low = thin_scan(scan, 0.25, g)
    image, fit = reconstruct_and_check(low, device="cpu")
    assert image.shape == WIDE_GRID.shape
    # the sides beyond the model's 125 mm hold the phantom's background, not zeros
    x = torch.from_numpy(WIDE_GRID.voxel_centers(0))
    sides = (x.abs() > 0.5 * 96 * 2.6)[:, None, None] & (phantom.activity > 0)
    assert int(sides.sum()) > 200
    assert abs(float(image[sides].mean() / phantom.activity[sides].mean()) - 1.0) < 0.1
    # it explains the counts as well as OSEM does, and better than OSEM's errors
    assert fit.ratio < 1.03, fit.ratio
    osem = gaussian_postfilter(reconstruct_classical(low, "osem", 8, 7), WIDE_GRID, 4.0)
    inside = phantom.mu > 0
    net_err, osem_err = (float(nrmse(im, phantom.activity, inside)) for im in (image, osem))
    assert net_err < osem_err, (net_err, osem_err)
    # no lesion-like blob outside the spheres
    blurred = GaussianResolution(WIDE_GRID, 4.5)(phantom.activity.float()[None])[0]
    exclude = dilate_mask((phantom.labels > 0)[None], 2, 2)[0]
    assert int(hot_spots(image, blurred, WIDE_GRID.voxel_size_mm, exclude=exclude, threshold=1.0).sum()) == 0
    # the image does not depend on the grid asked for: on a 500 mm grid, the same voxels
    big = ImageGeometry.centered((192, 192, 1), (2.6, 2.6, 2.6))
    again, _ = reconstruct_and_check(replace(low, image=big), device="cpu")
    torch.testing.assert_close(again[32:160, 32:160], image, rtol=1e-4, atol=1e-3 * float(image.max()))


def test_native_scan_gets_the_consistency_map_on_its_grid(tmp_path) -> None:
    """infer.py writes the data-consistency map of a native-layout 2D scan too: the map of
    the plane the model reconstructed (the model's layout), resampled onto the scan's grid,
    with the regions in world mm."""
    import infer
    from pet_dl.data_check import reference_osem
    from pet_dl.inference import load_model, reconstruct_and_check, reconstruct_with_network
    from pet_dl.io.nifti import load_nifti
    from pet_dl.io.scanfile import write_scan
    from pet_dl.plane_inference import planes_consistency_map
    from pet_dl.rebin import plane_scan, relayout_2d

    _, scan, g = _native_scan()
    low = thin_scan(scan, 0.25, g)
    _, fit = reconstruct_and_check(low, device="cpu")
    maps = fit.consistency
    assert maps is not None and maps.z.shape == NATIVE_GRID.shape
    # a false blob planted in the plane the model reconstructed is flagged where it is,
    # in world mm, and the map on the scan's grid peaks there
    meta = load_model(None, torch.device("cpu")).metadata
    trained, grid = SinogramGeometry.from_dict(meta["sinogram"]), ImageGeometry.from_dict(meta["image"])
    moved = relayout_2d(low, trained.num_radial, trained.view_mashing)
    plane = plane_scan(moved, 0, grid)
    osem = reference_osem(plane)
    image = reconstruct_with_network(plane, device="cpu", initial=osem)
    x = torch.from_numpy(grid.voxel_centers(0))[:, None]
    y = torch.from_numpy(grid.voxel_centers(1))[None, :]
    blob = torch.exp(-((x - 30.0) ** 2 + (y + 20.0) ** 2) / (2 * 4.0**2))[..., None]
    local = float(image[(x - 30.0).abs().argmin(), (y + 20.0).abs().argmin(), 0])
    planted = planes_consistency_map(moved, [0], (image + 2.0 * local * blob)[None, ..., 0], osem[None, ..., 0],
                                     grid, torch.zeros(1), NATIVE_GRID)
    assert planted.z.shape == NATIVE_GRID.shape
    assert any(abs(r.centre_mm[0] - 30.0) < 5 and abs(r.centre_mm[1] + 20.0) < 5 for r in planted.regions)
    peak = divmod(int(planted.z[..., 0].argmax()), NATIVE_GRID.shape[1])
    at = (NATIVE_GRID.voxel_centers(0)[peak[0]], NATIVE_GRID.voxel_centers(1)[peak[1]])
    assert abs(at[0] - 30.0) < 5 and abs(at[1] + 20.0) < 5, at
    assert not any(abs(r.centre_mm[0] - 30.0) < 5 and abs(r.centre_mm[1] + 20.0) < 5 for r in maps.regions)
    path = tmp_path / "native.h5"
    write_scan(path, low)
    assert infer.main([str(path), "--out", str(tmp_path / "out"), "--format", "nifti"]) == 0
    z, zgrid = load_nifti(tmp_path / "out" / "native_consistency.nii.gz")
    assert tuple(z.shape) == NATIVE_GRID.shape
    torch.testing.assert_close(torch.as_tensor(z).float(), maps.z, atol=1e-3, rtol=1e-3)


def test_the_object_not_the_grid_asked_for_sets_the_grown_grid() -> None:
    """The object's extent from a first look: the IEC phantom's 147 mm half-width; a brain
    on the import's 718 mm default grid keeps the model's own layout; an FLT-like torso
    whose hot marrow is 18 x its median (at 10 % of the maximum it read 108 mm and was cut
    at 250 mm) gets a grid that covers its whole body."""
    from pet_dl.phantoms import make_phantom
    from pet_dl.phantoms.nema import nema_phantom
    from pet_dl.plane_inference import WHOLE_FIELD, covering_layout, object_extent_mm
    from pet_dl.recipes import load_recipe, phantom_of_seed

    trained, grid = _shipped_layout()
    native = SinogramGeometry.two_d(get_scanner("mmr"))

    def first_look(phantom, image, seed):  # noqa: ANN001, ANN202
        scan = simulate_scan(phantom.activity, phantom.mu, native, image, duration_s=600.0, scatter_fraction=0.3,
                             randoms_fraction=0.2, psf_fwhm_mm=4.5, generator=torch.Generator().manual_seed(seed))
        look, bins = covering_layout(scan, trained, grid, WHOLE_FIELD)
        assert bins == 344 and look.shape[0] > 200  # the scanner's whole 588 mm field of view
        extent = object_extent_mm(relayout_2d(scan, bins, trained.view_mashing), look)
        return scan, extent, covering_layout(scan, trained, grid, extent)[0]

    nema = nema_phantom(WIDE_GRID, torch.Generator().manual_seed(1))
    _, extent, _ = first_look(nema, WIDE_GRID, 2)
    assert 147.0 <= extent.body_mm <= extent.outline_mm <= 160.0, extent
    big = ImageGeometry.centered((172, 172, 1), 4.1725)  # the import's default grid
    brain = make_phantom("brain", big, torch.Generator().manual_seed(3))
    _, extent, chosen = first_look(brain, big, 4)
    assert extent.body_mm < 130.0 and chosen == grid, extent
    recipe = load_recipe("data/torso_window2d_flt.yaml")
    wide = ImageGeometry.centered((192, 192, 1), (2.6, 2.6, 2.6))
    recipe.update(phantom="torso", image={"shape": [192, 192, 1], "voxel_size_mm": [2.6] * 3},
                  sinogram={"num_radial": 344, "view_mashing": 1})
    torso = phantom_of_seed(recipe, 110008)
    inside = torso.mu[..., 0] > 0
    x = torch.from_numpy(wide.voxel_centers(0)).abs()[:, None].expand_as(inside)
    y = torch.from_numpy(wide.voxel_centers(1)).abs()[None, :].expand_as(inside)
    true_extent = float(torch.maximum(x[inside].max(), y[inside].max()))  # 157 mm
    _, extent, chosen = first_look(torso, wide, 5)
    assert extent.body_mm > 130.0, extent
    assert 0.5 * chosen.shape[0] * 2.6 >= true_extent + 2.6, (chosen.shape, true_extent)


def test_a_grown_grids_corners_beyond_the_bins_are_zero_in_the_networks_start() -> None:
    """A 460 mm body gets a grid whose corners lie beyond the 344 bins' reach (294 mm). There
    the sensitivity is all but zero and OSEM blows up (single voxels of 10^6-10^7 Bq/mL on a
    whole ACRIN slice at 1/50), and left in the network's start they set its count level and
    norms: 20 false hot spots. The start the network gets is zero there, and the level it
    reads follows the dose."""
    from pet_dl.inference import load_model, reconstruct_with_network
    from pet_dl.plane_inference import field_of_view, radial_reach_mm

    grid = ImageGeometry.centered((192, 192, 1), 2.6)
    x = torch.from_numpy(grid.voxel_centers(0)).float()
    disc = ((x[:, None] ** 2 + x[None, :] ** 2) < 230.0**2).float()[..., None]
    sino = SinogramGeometry.two_d(get_scanner("mmr"))
    g = torch.Generator().manual_seed(4)
    full = simulate_scan(disc * 7000.0, disc * 0.0096, sino, grid, duration_s=600.0, scatter_fraction=0.3,
                         randoms_fraction=0.2, psf_fwhm_mm=4.5, generator=g)
    loaded = load_model(None, torch.device("cpu"))
    seen_starts, levels = [], {}
    network = loaded.model.forward

    def spy(batch):  # noqa: ANN001, ANN202
        seen_starts.append((batch.image, batch.initial))
        if batch.initial is not None:
            levels[len(levels)] = float(loaded.model.conditioning(batch, batch.initial)[0])
        return network(batch)

    loaded.model.forward = spy
    for dose in (1.0, 0.02):
        reconstruct_with_network(full if dose == 1.0 else thin_scan(full, dose, g), loaded, "cpu")
    reach = radial_reach_mm(SinogramGeometry.from_dict(loaded.metadata["sinogram"]), 344)  # all the mMR's bins
    for image, start in seen_starts:
        beyond = ~field_of_view(image, reach)
        assert start is not None and int(beyond.sum()) > 0
        assert float(start[0, ..., 0][beyond].abs().max()) == 0.0
    assert 0.01 < levels[1] / levels[0] < 0.04, levels  # 1/50 of the full dose's level
