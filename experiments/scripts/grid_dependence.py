"""How the shipped 2D model's image depends on the empty grid around an object (a probe).

``--grids``: the NEMA IEC phantom (seeds 300000-300001, the scans of
``wide_object_scores.py``) reconstructed by the network directly on centred grids of
120, 128, 160 and 192 voxels of 2.6 mm with the bins that reach their corners, NRMSE
inside the phantom at 1/4 and 1/20 dose: why ``pet_dl.plane_inference`` sizes the grid by
the object and not by the output grid a user asks for.
``--scales``: the two whole ACRIN slices at 1/4 dose on a 192-voxel grid (needs
``PET_DL_TEST_DATA``) with the networks' intensity scale (``models.blocks.image_scale``)
multiplied by 0.5 ... 3 (docs/experiments.md, "After v42").

    PYTHONPATH=. python experiments/scripts/grid_dependence.py --grids --scales
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

import torch

import pet_dl.models.base as network_base
from pet_dl.evaluate.external import acrin_slice_phantoms
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.inference import load_model, scan_batch
from pet_dl.metrics import nrmse
from pet_dl.phantoms.nema import nema_phantom
from pet_dl.plane_inference import covering_layout, crop_radial
from pet_dl.rebin import relayout_2d, stack_planes
from pet_dl.recipes import load_recipe
from pet_dl.simulate import simulate_scan, thin_scan

SIMULATION = {"duration_s": 600.0, "scatter_fraction": 0.3, "randoms_fraction": 0.2, "psf_fwhm_mm": 4.5,
              "crystal_efficiency_sigma": 0.05}


def on_grid(loaded, scan, n: int) -> torch.Tensor:  # noqa: ANN001
    """The network's image of a native-layout 2D ``scan`` on a centred grid of ``n`` voxels of
    2.6 mm (its bins reaching the grid's corners), on the scan's grid (cropped or padded)."""
    trained = SinogramGeometry.from_dict(loaded.metadata["sinogram"])
    grid = ImageGeometry.centered((n, n, 1), 2.6)
    probe = type("S", (), {"image": grid, "sinogram": scan.sinogram})
    _, bins = covering_layout(probe, trained, ImageGeometry.from_dict(loaded.metadata["image"]))
    moved = crop_radial(relayout_2d(scan, scan.sinogram.num_radial, trained.view_mashing), bins)
    with torch.inference_mode():
        image = loaded.model(scan_batch(replace(moved, image=grid)))[0]
    return stack_planes(image[..., 0][None], grid, torch.zeros(1), scan.image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", action="store_true")
    parser.add_argument("--scales", action="store_true")
    args = parser.parse_args()
    loaded = load_model(None, torch.device("cpu"))
    loaded.model.eval()
    sino = SinogramGeometry.two_d(get_scanner("mmr"))
    if args.grids:
        grid = ImageGeometry.centered((192, 192, 1), 2.6)
        for seed in (300000, 300001):
            g = torch.Generator().manual_seed(seed)
            phantom = nema_phantom(grid, g)
            full = simulate_scan(phantom.activity, phantom.mu, sino, grid, generator=g, **SIMULATION)
            for f in (0.25, 0.05):
                low = thin_scan(full, f, g)
                row = {n: 100 * float(nrmse(on_grid(loaded, low, n), phantom.activity, phantom.mu > 0))
                       for n in (120, 128, 160, 192)}
                print(f"NEMA seed {seed}, dose {f}: " + ", ".join(f"{n} voxels {v:.2f} %" for n, v in row.items()))
    if args.scales:
        grid = ImageGeometry.centered((192, 192, 1), 2.6)
        recipe = load_recipe("data/brainweb2d.yaml")
        recipe["image"] = {"shape": list(grid.shape), "voxel_size_mm": list(grid.voxel_size_mm)}
        slices = acrin_slice_phantoms(os.path.join(os.environ["PET_DL_TEST_DATA"], "acrin_pet_dicom"), recipe)
        original = network_base.image_scale
        for seed in (0, 1):
            phantom = slices(seed)
            g = torch.Generator().manual_seed(1)
            low = thin_scan(simulate_scan(phantom.activity, phantom.mu, sino, grid, generator=g, **SIMULATION), 0.25, g)
            row = {}
            for k in (0.5, 1.0, 1.5, 2.0, 3.0):
                network_base.image_scale = lambda x0, sens, k=k: original(x0, sens) * k
                try:
                    row[k] = 100 * float(nrmse(on_grid(loaded, low, 192), phantom.activity, phantom.mu > 0))
                finally:
                    network_base.image_scale = original
            print(f"ACRIN case {seed}, 1/4 dose: " + ", ".join(f"scale x {k:g} {v:.2f} %" for k, v in row.items()))


if __name__ == "__main__":
    main()
