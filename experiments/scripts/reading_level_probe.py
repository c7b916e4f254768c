"""The count level that sets the reading OSEM's settings against the one the network reads.

    python experiments/scripts/reading_level_probe.py             # PET_DL_BRAINWEB set

Part 1, on the shipped model's own layout (10 BrainWeb validation slices of subjects 48 and
52, seeds 100000-100009, and 5 torso windows, seeds 100000-100004, full dose to 1/100):
:func:`pet_dl.models.blocks.count_level` on one OSEM iteration (what ``osem_for_reading``
used before 2026-12-07) against the network's own 4 x 7 start, and the OSEM row each picks.
Part 2, on the mMR's native 252 x 344 layout (2 seeds each of the ``brain`` phantom on a
128 x 2 mm grid and of BrainWeb subject 48 on the model's 96 x 2.6 mm grid, 4 doses): the
level on the scan's own layout and grid (4 x 7) against the one the network reads after the
relayout (:func:`pet_dl.plane_inference.network_count_levels`). Part 3, a 17-ring span-11
scan with a hot axial band (the 3D test scan of ``tests/test_reading_osem.py``): each rebinned
plane's level, their count-weighted median (what ``osem_for_reading`` uses for a 3D scan since
2026-12-07) and the one level measured in 3D that it used before. docs/experiments.md, "After
v47"; docs/inference.md.
"""

from __future__ import annotations

import torch

from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.inference import load_model
from pet_dl.models.anchor import nearest_row
from pet_dl.models.batch import initial_image
from pet_dl.models.blocks import count_level
from pet_dl.phantoms import make_phantom
from pet_dl.plane_inference import network_count_levels
from pet_dl.reading_osem import reading_settings
from pet_dl.recon.em import osem
from pet_dl.simulate import simulate_scan, thin_scan

FACTORS = (1, 4, 10, 20, 50, 100)


def scans(name: str, seed: int, sino: SinogramGeometry, grid: ImageGeometry, factors=FACTORS,
          subject: str | None = None):  # noqa: ANN201
    """``(factor, scan)`` of one phantom, thinned in turn from a 600 s scan (BrainWeb: subject
    ``subject``, default 48 or 52 by the seed's parity)."""
    g = torch.Generator().manual_seed(seed)
    kwargs = {"subject": subject or ["48", "52"][seed % 2]} if name == "brainweb" else {}
    phantom = make_phantom(name, grid, g, **kwargs)
    full = simulate_scan(phantom.activity, phantom.mu, sino, grid, duration_s=600.0, scatter_fraction=0.3,
                         randoms_fraction=0.2, psf_fwhm_mm=4.5, crystal_efficiency_sigma=0.05, generator=g)
    for f in factors:
        yield f, full if f == 1 else thin_scan(full, 1.0 / f, g)


def level_on(scan, image: torch.Tensor, reference: float) -> float:  # noqa: ANN001
    return float(count_level(scan.prompts.float()[None], scan.additive.float()[None], image[None],
                             scan.image.voxel_size_mm, reference)[0])


def main() -> None:
    loaded = load_model(None, torch.device("cpu"))
    blend, reference = reading_settings(loaded)
    model = loaded.model
    own_sino = SinogramGeometry.from_dict(loaded.metadata["sinogram"])
    own_grid = ImageGeometry.from_dict(loaded.metadata["image"])
    mismatches, ratios = 0, []
    for name, seeds in (("brainweb", range(100000, 100010)), ("torso_window", range(100000, 100005))):
        for seed in seeds:
            for f, scan in scans(name, seed, own_sino, own_grid):
                forward, prompts = scan.forward_model(), scan.prompts.float()
                with torch.no_grad():
                    one = level_on(scan, osem(forward, prompts, 1, 7), reference)
                    start = level_on(scan, initial_image(forward, prompts[None], model.init_iterations,
                                                         model.init_subsets)[0], reference)
                rows = nearest_row(blend.rows, one)[0], nearest_row(blend.rows, start)[0]
                mismatches += rows[0] != rows[1]
                ratios.append(one / start)
                print(f"{name} {seed} 1/{f}: one iteration {one:.4f}, network's start {start:.4f}, "
                      f"ratio {one / start:.3f}, rows {rows[0]:g} / {rows[1]:g}", flush=True)
    print(f"part 1: {len(ratios)} scans, ratio {min(ratios):.3f}-{max(ratios):.3f}, {mismatches} other rows\n")
    native = SinogramGeometry.two_d(get_scanner("mmr"))
    for name, grid in (("brain", ImageGeometry.centered((128, 128, 1), (2.0, 2.0, 2.0))), ("brainweb", own_grid)):
        for seed in (1, 2):
            for f, scan in scans(name, seed, native, grid, (1, 4, 20, 100), subject="48"):
                with torch.no_grad():
                    own = level_on(scan, osem(scan.forward_model(), scan.prompts.float(), model.init_iterations,
                                              model.init_subsets), reference)
                    read = float(network_count_levels(scan, loaded, torch.device("cpu"))[0][0])
                print(f"native {name} {seed} 1/{f}: scan's own grid {own:.4f}, network reads {read:.4f}, "
                      f"ratio {own / read:.3f}, rows {nearest_row(blend.rows, own)[0]:g} / "
                      f"{nearest_row(blend.rows, read)[0]:g}", flush=True)
    import sys

    sys.path.insert(0, "tests")
    from test_rebin import expected_scan, geometry, phantom

    from pet_dl.reading_osem import weighted_median

    sino3d, grid3d = geometry(num_radial=96, view_mashing=2)
    scan3d = expected_scan(sino3d, grid3d, *phantom(grid3d, axial=True))
    with torch.no_grad():
        levels, counts = network_count_levels(scan3d, loaded, torch.device("cpu"))
        in_3d = level_on(scan3d, osem(scan3d.forward_model(), scan3d.prompts.float(), model.init_iterations,
                                      model.init_subsets), reference)
    read = levels[counts > 0]
    print(f"\npart 3: 3D scan, planes read {float(read.min()):.2f}-{float(read.max()):.2f}, count-weighted "
          f"median {weighted_median(levels, counts):.2f}, one level measured in 3D {in_3d:.2f}")


if __name__ == "__main__":
    main()
