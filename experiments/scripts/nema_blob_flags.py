"""How many of a network's false hot spots on NEMA the data-consistency map flags.

    python experiments/scripts/nema_blob_flags.py [CHECKPOINT] [--realisations 16] [--scan-seed 300108]

The scans of ``nema_blob_sites.py`` (and ``wide_object_scores.py --object nema``: same
seeds, same thinning order), each reconstructed as ``infer.py`` does
(:func:`pet_dl.inference.reconstruct_and_check`: the network and its data check with one
OSEM). Per dose: the scans whose map is not made (below the map's count level), and
on the others the network's false hot spots (blobs at least twice the PSF-blurred truth,
outside the dilated spheres, as in ``wide_object_scores.py``), how many of them have a
flagged region of the map centred within :data:`HIT_MM` (flagged), the largest ``z``
within :data:`HIT_MM` of each blob (median over blobs: how far below the threshold the
unflagged ones sit), the regions that lie near no false hot spot (on the spheres or
elsewhere) and, as the control, the regions of the truth's own map. No checkpoint: the
shipped model. docs/experiments.md, "After v50".
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from nema_blob_sites import FACTORS as DOSES
from nema_blob_sites import GRID, nema_scans

from pet_dl.consistency import consistency_map
from pet_dl.data_check import scan_forward_model
from pet_dl.inference import load_model, reconstruct_and_check
from pet_dl.metrics import hot_spots

HIT_MM = 6.0  # a blob counts as flagged when a region's centre is this close (consistency_scores.py's)


def _world(index: list[int]) -> torch.Tensor:
    """World position (mm) of voxel ``index`` of :data:`GRID`."""
    return torch.tensor([GRID.origin_mm[a] + index[a] * GRID.voxel_size_mm[a] for a in range(3)])


def _near_z(z: torch.Tensor, index: list[int]) -> float:
    """Largest ``z`` within :data:`HIT_MM` of voxel ``index`` (in-plane)."""
    r = int(math.ceil(HIT_MM / GRID.voxel_size_mm[0]))
    i, j, k = index
    window = z[max(i - r, 0): i + r + 1, max(j - r, 0): j + r + 1, k]
    return float(window.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default=None)
    parser.add_argument("--realisations", type=int, default=16)
    parser.add_argument("--scan-seed", type=int, default=300108)
    args = parser.parse_args()
    loaded = load_model(args.checkpoint, torch.device("cpu"))
    blobs = {f: 0 for f in DOSES}
    flagged = {f: 0 for f in DOSES}
    near_z: dict[int, list[float]] = {f: [] for f in DOSES}
    other_regions = {f: 0 for f in DOSES}
    truth_regions = {f: 0 for f in DOSES}
    unmapped = {f: 0 for f in DOSES}
    for r, phantom, blurred, exclude, f, scan in nema_scans(args.realisations, args.scan_seed):
        truth = phantom.activity.float()
        image, fit = reconstruct_and_check(scan, loaded, "cpu")
        maps = fit.consistency
        if maps is None:  # a plane below the map's count level (pet_dl.plane_inference.MAP_MIN_COUNT_LEVEL)
            unmapped[f] += 1
        else:
            centres = [torch.tensor(reg.centre_mm) for reg in maps.regions]
            spots = torch.nonzero(hot_spots(image.float(), blurred, GRID.voxel_size_mm, exclude=exclude,
                                            threshold=1.0)).tolist()
            used = set()
            for index in spots:
                where = _world(index)
                hits = [n for n, c in enumerate(centres) if float(torch.linalg.vector_norm((c - where)[:2])) <= HIT_MM]
                blobs[f] += 1
                flagged[f] += bool(hits)
                used.update(hits)
                near_z[f].append(_near_z(maps.z, index))
            other_regions[f] += len(centres) - len(used)
            forward = scan_forward_model(scan, "cpu")
            control = consistency_map(forward, scan.prompts.float(), truth, GRID, scan.psf_fwhm_mm, reference=image)
            truth_regions[f] += control.count
        if f == DOSES[-1]:
            print(f"scan {r + 1}/{args.realisations}", flush=True)
    n = args.realisations
    print(f"\n{n} NEMA scans (seeds {args.scan_seed}-{args.scan_seed + n - 1}), {loaded.metadata.get('model_version', '?')}")
    print("| dose | scans not mapped | false hot spots in mapped scans | flagged | median z near a blob | other regions | truth's regions |")
    print("|---|---|---|---|---|---|---|")
    for f in DOSES:
        med = f"{statistics.median(near_z[f]):.1f}" if near_z[f] else "-"
        print(f"| {'full' if f == 1 else f'1/{f}'} | {unmapped[f]} | {blobs[f]} | {flagged[f]} | {med} | {other_regions[f]} | {truth_regions[f]} |")


if __name__ == "__main__":
    main()
