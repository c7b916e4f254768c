"""Hot spots on REAL mMR counts (issue 18): the shipped network against OSEM and v20-mixdense.

The shared mMR listmode (0.61 s, about 193 k prompts in the 2D sinogram: roughly a tenth of
the training scans' full dose) imported in 2D on the shipped model's layout
(``python -m pet_dl.demo_real`` writes ``scan_real.h5``). No truth exists, so hot spots are
counted against OSEM itself, heavily smoothed: blobs whose 4 mm-ball mean is at least twice
(or 1.5 times) that of the 4 x 7 OSEM image post-filtered at 8 mm (``pet_dl.metrics.hot_spots``, thresholds
1.0 and 0.5, inside the object). Also prints each network's measured count level and infer.py's data
check (the consistency map's flagged regions and the deviance ratio).

    python -m pet_dl.demo_real --data $PET_DL_TEST_DATA/mmr_scanner --out demo_real_out
    python experiments/scripts/real_mmr_hot_spots.py demo_real_out/scan_real.h5 \
        [NAME=CHECKPOINT ...]   # default: the shipped model
"""

from __future__ import annotations

import argparse

import torch

from pet_dl.inference import load_model, reconstruct_and_check
from pet_dl.io.scanfile import read_scan
from pet_dl.metrics import hot_spots
from pet_dl.models.blocks import count_level
from pet_dl.recon import gaussian_postfilter, reconstruct_classical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan")
    parser.add_argument("networks", nargs="*", default=["shipped=shipped"], metavar="NAME=CHECKPOINT")
    args = parser.parse_args()
    scan = read_scan(args.scan)
    vs = scan.image.voxel_size_mm
    osem = reconstruct_classical(scan, "osem", num_iterations=4, num_subsets=7)
    reference = gaussian_postfilter(osem, scan.image, 8.0)
    images = {"OSEM 4 x 7, 4 mm": gaussian_postfilter(osem, scan.image, 4.0)}
    notes = {}
    for item in args.networks:
        name, path = item.split("=", 1)
        loaded = load_model(None if path == "shipped" else path, torch.device("cpu"))
        image, fit = reconstruct_and_check(scan, loaded)
        images[name] = image
        flagged = fit.consistency.count if fit.consistency is not None else "n/a"
        check = f"deviance ratio {fit.ratio:.3f}, {flagged} flagged region(s)"
        ref = loaded.model.count_reference if hasattr(loaded.model, "count_reference") else None
        level = (
            float(count_level(scan.prompts[None], scan.additive[None], osem[None], vs, ref)[0])
            if ref else float("nan")
        )
        notes[name] = f"count level {level:.3f}; data check: {check}"
    print("| image | hot spots >= 2 x smoothed OSEM | >= 1.5 x | max / mean in object |")
    print("|---|---|---|---|")
    inside = reference > 0.2 * reference.quantile(0.99)
    for name, image in images.items():
        n = int(hot_spots(image, reference, vs, threshold=1.0).sum())
        n15 = int(hot_spots(image, reference, vs, threshold=0.5).sum())
        ratio = float(image.max() / image[inside].mean())
        print(f"| {name} | {n} | {n15} | {ratio:.2f} |")
    for name, note in notes.items():
        print(f"{name}: {note}")


if __name__ == "__main__":
    main()
