"""Does the data-consistency map see the small spheres the network fades? (a probe)

The map's ``z`` is negative where an image has less activity than the counts support
(``pet_dl.consistency``). On NEMA IEC scans on the mMR's native layout (the validation scans
of the v43 round, seeds ``--scan-seed`` on), per dose: the most negative ``z`` inside each of
the 10, 13 and 17 mm spheres for the shipped model's image, for OSEM at the chosen settings
and for the truth itself, against the most negative ``z`` over the background (outside the
spheres dilated by 2 voxels, inside the phantom). A sphere is "seen" when its minimum is
below the background's minimum. docs/experiments.md, "After v43".

    PYTHONPATH=. python experiments/scripts/missed_lesion_z.py --realisations 4
"""

from __future__ import annotations

import argparse

import torch

from pet_dl.consistency import consistency_map
from pet_dl.data_check import scan_forward_model
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.inference import load_model, reconstruct_with_network
from pet_dl.metrics import dilate_mask, nema_regions
from pet_dl.phantoms.nema import nema_phantom
from pet_dl.recon import gaussian_postfilter, reconstruct_classical
from pet_dl.simulate import simulate_scan, thin_scan

OSEM = {1: (20, 4.0), 4: (8, 4.0), 10: (6, 6.0), 20: (4, 6.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realisations", type=int, default=4)
    parser.add_argument("--scan-seed", type=int, default=300100)
    args = parser.parse_args()
    grid = ImageGeometry.centered((128, 128, 1), 2.6)
    sino = SinogramGeometry.two_d(get_scanner("mmr"))
    loaded = load_model(None, torch.device("cpu"))
    rows: dict[tuple[str, int], list[list[float]]] = {}
    for r in range(args.realisations):
        g = torch.Generator().manual_seed(args.scan_seed + r)
        phantom = nema_phantom(grid, g)
        labels, _, _, diameters = nema_regions(phantom)
        inside = phantom.mu > 0
        background = inside & ~dilate_mask((labels > 0)[None], 2, 2)[0]
        full = simulate_scan(phantom.activity, phantom.mu, sino, grid, duration_s=600.0, scatter_fraction=0.3,
                             randoms_fraction=0.2, psf_fwhm_mm=4.5, crystal_efficiency_sigma=0.05, generator=g)
        for f, (its, fwhm) in OSEM.items():
            scan = full if f == 1 else thin_scan(full, 1.0 / f, g)
            forward = scan_forward_model(scan, "cpu")
            images = {
                "truth": phantom.activity.float(),
                "OSEM": gaussian_postfilter(reconstruct_classical(scan, "osem", its, 7), grid, fwhm),
                "network": reconstruct_with_network(scan, loaded, "cpu"),
            }
            for name, image in images.items():
                z = consistency_map(forward, scan.prompts, image.float(), grid, scan.psf_fwhm_mm).z
                mins = [float(z[labels == k].min()) for k in (1, 2, 3)]
                rows.setdefault((name, f), []).append(mins + [float(z[background].min())])
        print(f"realisation {r + 1}/{args.realisations} done", flush=True)
    print("\nmost negative z (SD of the noise), mean over realisations; spheres below the background's minimum\n")
    print("| image | dose | 10 mm | 13 mm | 17 mm | background minimum | 10 mm below background |")
    print("|---|---|---|---|---|---|---|")
    for (name, f), values in rows.items():
        t = torch.tensor(values)
        m = t.mean(0)
        seen = int((t[:, 0] < t[:, 3]).sum())
        dose = "full" if f == 1 else f"1/{f}"
        print(f"| {name} | {dose} | {m[0]:.1f} | {m[1]:.1f} | {m[2]:.1f} | {m[3]:.1f} | {seen}/{len(values)} |")


if __name__ == "__main__":
    main()
