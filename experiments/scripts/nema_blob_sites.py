"""Where networks' false hot spots lie on the NEMA IEC phantom at 1/50 and 1/100 dose.

    python experiments/scripts/nema_blob_sites.py NAME=CHECKPOINT ... [--realisations 16] [--scan-seed 300108]

The scans of ``wide_object_scores.py --object nema`` with the same seeds (the same
thinning order), through each network on the grown grid; every false hot spot (as there:
blobs at least twice the PSF-blurred truth, outside the dilated spheres) is classed by
where its centre lies: within 10 mm of the outer wall ("edge"), of the cold lung insert
("lung"), within 15 mm of a sphere ("sphere"), elsewhere in the warm background
("background"), or outside the phantom ("outside"). CHECKPOINT ``shipped`` is the shipped
model. docs/experiments.md, "After v47".
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch

from pet_dl.forward_model import GaussianResolution
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.inference import load_model, reconstruct_with_network
from pet_dl.metrics import dilate_mask, hot_spots
from pet_dl.phantoms.nema import nema_phantom
from pet_dl.simulate import simulate_scan, thin_scan

GRID = ImageGeometry.centered((128, 128, 1), 2.6)  # wide_object_scores.py's NEMA grid
SITES = ("background", "edge", "lung", "sphere", "outside")
FACTORS = (1, 4, 10, 20, 50, 100)


def nema_scans(realisations: int, scan_seed: int) -> Iterator[tuple[int, object, torch.Tensor, torch.Tensor, int, object]]:
    """``wide_object_scores.py --object nema``'s scans, in its order (the same thinning draws):
    ``(realisation, phantom, PSF-blurred truth (nx, ny, 1), dilated spheres (nx, ny, 1) bool,
    dose factor, Scan)`` for every realisation and dose factor."""
    sino = SinogramGeometry.two_d(get_scanner("mmr"))
    for r in range(realisations):
        g = torch.Generator().manual_seed(scan_seed + r)
        phantom = nema_phantom(GRID, g)
        blurred = GaussianResolution(GRID, 4.5)(phantom.activity.float()[None])[0]
        exclude = dilate_mask((phantom.labels > 0)[None], 2, 2)[0]
        full = simulate_scan(phantom.activity, phantom.mu, sino, GRID, duration_s=600.0, scatter_fraction=0.3,
                             randoms_fraction=0.2, psf_fwhm_mm=4.5, crystal_efficiency_sigma=0.05, generator=g)
        for f in FACTORS:  # thinned in turn, as wide_object_scores.py does
            yield r, phantom, blurred, exclude, f, (full if f == 1 else thin_scan(full, 1.0 / f, g))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="+", metavar="NAME=CHECKPOINT")
    parser.add_argument("--realisations", type=int, default=16)
    parser.add_argument("--scan-seed", type=int, default=300108)
    args = parser.parse_args()
    models = {}
    for spec in args.networks:
        name, path = spec.split("=", 1)
        models[name] = load_model(None if path == "shipped" else path, torch.device("cpu"))
    counts: dict[tuple[str, int, str], int] = {}
    for r, phantom, blurred, exclude, f, scan in nema_scans(args.realisations, args.scan_seed):
        if f < 50:
            continue
        body = phantom.mu > 0.5 * float(phantom.mu.max())  # water and walls, not the lung insert
        edge = body & dilate_mask((~body)[None], 4, 2)[0]  # 4 voxels: about 10 mm
        lung = dilate_mask(((phantom.mu > 0) & ~body)[None], 4, 2)[0]
        sphere = dilate_mask((phantom.labels > 0)[None], 6, 2)[0]
        for name, loaded in models.items():
            image = reconstruct_with_network(scan, loaded, "cpu").float()
            spots = hot_spots(image, blurred, GRID.voxel_size_mm, exclude=exclude, threshold=1.0)
            for i, j, k in torch.nonzero(spots).tolist():
                site = ("edge" if edge[i, j, k] else "lung" if lung[i, j, k] else
                        "sphere" if sphere[i, j, k] else "background" if body[i, j, k] else "outside")
                counts[(name, f, site)] = counts.get((name, f, site), 0) + 1
        if f == FACTORS[-1]:
            print(f"scan {r + 1}/{args.realisations}", flush=True)
    print("\n| network | dose | " + " | ".join(SITES) + " | all |\n|---|---|" + "---|" * (len(SITES) + 1))
    for name in models:
        for f in (50, 100):
            row = [counts.get((name, f, s), 0) for s in SITES]
            print(f"| {name} | 1/{f} | " + " | ".join(str(n) for n in row) + f" | {sum(row)} |")


if __name__ == "__main__":
    main()
