"""Objects wider than the shipped 2D model's 250 mm grid through OSEM and the network.

``--object nema``: the NEMA IEC body phantom (294 mm wide; a clinical site's first scan),
its sphere plane on a 128 x 128 grid of 2.6 mm. ``--object acrin``: the two real ACRIN
FLT whole-body PET slices used as activity, whole (not the 250 mm windows of
configs/evaluate_acrin2d.yaml), on a 192 x 192 grid of 2.6 mm, with the recipe's random
lesions (``$PET_DL_TEST_DATA/acrin_pet_dicom``). ``--object torso``: a validation proxy
for whole bodies (not a test set): whole synthetic torsos made as the FLT-like training
windows are (``data/torso_window2d_flt.yaml``: FLT's uptake, a reconstructed PET image as
the activity, a clinical body's mean), on a 192 x 192 grid of 2.6 mm, seeds ``--first`` on
(default 110000, outside every recipe's splits); ``--width-scale`` draws them larger (1.25:
383-476 mm wide). ``--object torso_arms``: the same torsos with the arms down at their sides
(separate objects, 530-556 mm across in all), on a 216 x 216 grid. ``--object neck_arms``:
necks with the arms raised beside them (``pet_dl.phantoms.neck_arms_phantom``: three small
objects 320-550 mm across, mostly air between), made as those torsos (FLT's marrow and
blood factors; the neck has no other of its organs), on the same grid. All on the mMR's native 2D layout (252
views x 344 bins) with the data/brainweb2d.yaml scan (600 s, 30 % scatter, 20 % randoms,
PSF 4.5 mm, 5 % crystal efficiencies), thinned to 1/4 ... 1/100. Each scan is
reconstructed by OSEM at the BrainWeb-chosen settings (configs/blend2d_kco5.yaml's rows)
and by the network through the product's path (``reconstruct_with_network``), on the
grid it grows around the object (``pet_dl.plane_inference.covering_layout``; ``--cut``
adds the network on the model's own 250 mm grid, as before grids grew: the object's
sides cut off).

Per method and dose, means over the realisations: NRMSE inside the object, SSIM over
the image, the mean bias of the NEMA background or of the body (%), false hot spots
(blobs 2x the PSF-blurred truth outside the dilated spheres or lesions,
``pet_dl.metrics.hot_spots``) and, for NEMA, the contrast recovery of the 10, 13, 17 and
22 mm spheres, their mean and the background variability (10 mm ROIs); for the ACRIN
slices the SUVmean / SUVmax bias of the hot lesions of 8 mm and more, pooled over cases.

    PYTHONPATH=. python experiments/scripts/wide_object_scores.py --object nema --realisations 8 --cut --picture nema.png
    PYTHONPATH=. PET_DL_TEST_DATA=../shared/data python experiments/scripts/wide_object_scores.py --object acrin --realisations 8 --cut
    PYTHONPATH=. python experiments/scripts/wide_object_scores.py --object torso --realisations 16 --cut

``--scan-seed`` moves the realisations' seeds (default 300000, the test scans; the v43
round chose on NEMA scans from 300100).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import replace

import torch

from pet_dl.evaluate.external import acrin_slice_phantoms
from pet_dl.forward_model import GaussianResolution
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.inference import load_model, reconstruct_with_network
from pet_dl.metrics import (
    dilate_mask,
    hot_spots,
    lesion_bias,
    nema_image_quality,
    nema_regions,
    nrmse,
    ssim,
)
from pet_dl.phantoms import Phantom
from pet_dl.phantoms.nema import nema_phantom
from pet_dl.recipes import load_recipe, phantom_of_seed
from pet_dl.recon import gaussian_postfilter, reconstruct_classical
from pet_dl.simulate import simulate_scan, thin_scan

FACTORS = (1, 4, 10, 20, 50, 100)
#: OSEM (iterations x 7 subsets, post-filter mm) per factor: the BrainWeb-chosen settings
OSEM = {1: (20, 4.0), 4: (8, 4.0), 10: (6, 6.0), 20: (4, 6.0), 50: (2, 6.0), 100: (2, 6.0)}
GRIDS = {
    "nema": ImageGeometry.centered((128, 128, 1), 2.6),
    "acrin": ImageGeometry.centered((192, 192, 1), 2.6),
    "torso": ImageGeometry.centered((192, 192, 1), 2.6),
    "torso_arms": ImageGeometry.centered((216, 216, 1), 2.6),
    "neck_arms": ImageGeometry.centered((216, 216, 1), 2.6),
}
PSF_MM = 4.5


def scores(image, phantom, grid: ImageGeometry, blurred, exclude) -> dict[str, float]:
    """The table's numbers of one image of ``phantom`` (NEMA's when it has spheres)."""
    inside = phantom.mu > 0
    spots = hot_spots(image, blurred, grid.voxel_size_mm, exclude=exclude, threshold=1.0)
    nema = "background" in phantom.tissues
    region = nema_regions(phantom)[1] if nema else inside & (phantom.labels == 0)
    out = {
        "nrmse": 100 * float(nrmse(image, phantom.activity, inside)),
        "ssim": float(ssim(image, phantom.activity.float())),
        "bg_bias": 100 * (float(image[region].mean()) / float(phantom.activity[region].mean()) - 1),
        "hot_spots": float(spots.sum()),
    }
    if not nema:  # the recipe's hot lesions of 8 mm and more: SUVmean / SUVmax bias, pooled over cases
        large = {lesion.label for lesion in phantom.lesions if lesion.diameter_mm >= 8.0}
        biases = [b for b in lesion_bias(image, phantom.activity.float(), phantom.labels, grid.voxel_size_mm)
                  if b.label in large]
        out["suvmean"] = [100 * b.mean_bias for b in biases]
        out["suvmax"] = [100 * b.max_bias for b in biases]
    if nema:
        labels, background, ratio, diameters = nema_regions(phantom)
        quality = nema_image_quality(image, labels, background, grid.voxel_size_mm, ratio, diameters)
        small = [q for q in quality if q.diameter_mm <= 22.0]
        out["cr_mean"] = 100 * sum(q.contrast_recovery for q in small) / len(small)
        out["bv10"] = 100 * quality[0].background_variability
        for q in small:
            out[f"cr{q.diameter_mm:g}"] = 100 * q.contrast_recovery
    return out


def scaled_phantom(phantom: Phantom, grid: ImageGeometry, factor: float) -> Phantom:
    """``phantom``'s arrays on ``grid`` (same shape, voxels ``factor`` x the phantom's):
    every length, lesions' too, x ``factor``; activity and mu per voxel unchanged."""
    lesions = tuple(replace(lesion, diameter_mm=lesion.diameter_mm * factor,
                            centre_mm=tuple(c * factor for c in lesion.centre_mm)) for lesion in phantom.lesions)
    return replace(phantom, image=grid, lesions=lesions)


def _mean(values: list) -> float:  # noqa: ANN001
    """Mean of numbers, or of lists of numbers pooled (the lesions of all cases)."""
    flat = [v for item in values for v in (item if isinstance(item, list) else [item])]
    return sum(flat) / len(flat) if flat else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object", choices=sorted(GRIDS), default="nema")
    parser.add_argument("--realisations", type=int, default=4)
    parser.add_argument("--first", type=int, default=None,
                        help="the first phantom seed: --object torso, torso_arms or neck_arms (default 110000) or acrin (default 0)")
    parser.add_argument("--scan-seed", type=int, default=300000,
                        help="the first realisation's noise (and NEMA's) seed: 300000-300007 are the test scans, "
                             "300100 on the v43 round's validation scans")
    parser.add_argument("--width-scale", type=float, default=1.0,
                        help="--object torso: every length x this (the torso drawn on voxels of 2.6 / this mm, "
                             "read on 2.6 mm): 1.25 gives bodies 383-476 mm wide, the widest ACRIN slice's width")
    parser.add_argument("--checkpoint", default=None, help="model (default: the shipped one)")
    parser.add_argument("--cut", action="store_true", help="also the network on the model's own grid")
    parser.add_argument("--without", action="append", default=[], choices=("blend", "anchor", "final-em"),
                        help="take that stage of the model's output off (repeatable): the mix with OSEM, "
                             "the low-frequency anchor, the final EM update; a probe of where an error comes from")
    parser.add_argument("--picture", default=None, help="PNG of the images at 1/20 dose")
    parser.add_argument("--per-case", action="store_true",
                        help="also each case's network-minus-OSEM NRMSE per dose, its false hot spots and grid")
    args = parser.parse_args()
    loaded = load_model(args.checkpoint, torch.device("cpu"))
    if args.without:  # the unrolled network's output stages (pet_dl.models.unrolled_em), as the export sets them
        off = {"blend": ("osem_blend", None), "anchor": ("anchor", None), "final-em": ("final_em_steps", 0)}
        options = dict(off[stage] for stage in args.without)
        if "anchor" in args.without:
            options["anchor_in_training"] = False
        loaded = loaded.with_network_options(options)
    sino = SinogramGeometry.two_d(get_scanner("mmr"))
    methods = ["OSEM", "network"] + (["network, 250 mm grid"] if args.cut else [])
    table: dict[tuple[str, int], list[dict[str, float]]] = {}
    shown = {}
    grid = GRIDS[args.object]
    if args.object == "acrin":
        recipe = load_recipe("data/brainweb2d.yaml")
        recipe["image"] = {"shape": list(grid.shape), "voxel_size_mm": list(grid.voxel_size_mm)}
        folder = os.path.join(os.environ["PET_DL_TEST_DATA"], "acrin_pet_dicom")
        acrin = acrin_slice_phantoms(folder, recipe)
    if args.object in ("torso", "torso_arms", "neck_arms"):  # the FLT-like training windows' recipe, on the wide grid
        torso_recipe = load_recipe("data/torso_window2d_flt.yaml")
        torso_recipe["phantom"] = args.object
        if args.object == "neck_arms":  # FLT's factors for the tissues a neck has, as its training recipe
            torso_recipe["uptake"] = load_recipe("data/neck_arms2d_flt.yaml")["uptake"]
        torso_recipe["image"] = {"shape": list(grid.shape),
                                 "voxel_size_mm": [v / args.width_scale for v in grid.voxel_size_mm]}
        torso_recipe["sinogram"] = {"num_radial": sino.num_radial, "view_mashing": sino.view_mashing}
    import pet_dl.plane_inference as plane_inference

    grown_layout = plane_inference.covering_layout
    per_case: list[list[str]] = []
    for r in range(args.realisations):
        g = torch.Generator().manual_seed(args.scan_seed + r)
        if args.object == "nema":
            phantom = nema_phantom(grid, g)
        elif args.object == "acrin":
            phantom = acrin((args.first or 0) + r)
        else:
            phantom = phantom_of_seed(torso_recipe, (110000 if args.first is None else args.first) + r)
            if args.width_scale != 1.0:  # the same arrays read on 2.6 mm voxels: every length x scale
                phantom = scaled_phantom(phantom, grid, args.width_scale)
        blurred = GaussianResolution(grid, PSF_MM)(phantom.activity.float()[None])[0]
        exclude = dilate_mask((phantom.labels > 0)[None], 2, 2)[0]
        full = simulate_scan(
            phantom.activity, phantom.mu, sino, grid, duration_s=600.0, scatter_fraction=0.3,
            randoms_fraction=0.2, psf_fwhm_mm=PSF_MM, crystal_efficiency_sigma=0.05, generator=g,
        )
        if args.per_case:  # the grid the product reconstructs the full-dose scan on
            per_case.append([f"{r}", f"{plane_inference.model_planes(full, loaded.metadata)[1].shape[0]}"])
        for f in FACTORS:
            scan = full if f == 1 else thin_scan(full, 1.0 / f, g)
            its, fwhm = OSEM[f]
            images = {"OSEM": gaussian_postfilter(reconstruct_classical(scan, "osem", its, 7), grid, fwhm)}
            images["network"] = reconstruct_with_network(scan, loaded, "cpu")
            if args.cut:
                plane_inference.covering_layout = lambda s, t, i, *rest, **kw: (i, t.num_radial)
                try:
                    images["network, 250 mm grid"] = reconstruct_with_network(scan, loaded, "cpu")
                finally:
                    plane_inference.covering_layout = grown_layout
            for name, image in images.items():
                table.setdefault((name, f), []).append(
                    scores(image.float(), phantom, grid, blurred, exclude)
                )
                if r == 0 and f == 20:
                    shown[name] = image
            if args.per_case:
                net, osem = table[("network", f)][-1], table[("OSEM", f)][-1]
                per_case[-1].append(f"{net['nrmse'] - osem['nrmse']:+.1f} ({net['hot_spots']:.0f} / {osem['hot_spots']:.0f})")
            if r == 0:
                shown_truth = phantom.activity
        print(f"realisation {r + 1}/{args.realisations} done", flush=True)
    keys = ["nrmse", "ssim", "bg_bias", "hot_spots"]
    heads = ["NRMSE %", "SSIM", "background bias %" if args.object == "nema" else "body bias %", "false hot spots"]
    if args.object == "nema":
        keys += ["cr10", "cr13", "cr17", "cr22", "cr_mean", "bv10"]
        heads += ["CR 10", "CR 13", "CR 17", "CR 22", "CR mean (10-22)", "BV 10 mm %"]
    else:
        keys += ["suvmean", "suvmax"]
        heads += ["SUVmean bias >= 8 mm %", "SUVmax bias >= 8 mm %"]
    print(f"\n{args.object}, {args.realisations} realisations\n")
    print("| method | dose | " + " | ".join(heads) + " | NRMSE − OSEM (paired, 95 %) |")
    print("|---|---|" + "---|" * (len(keys) + 1))
    for name in methods:
        for f in FACTORS:
            rows = table[(name, f)]
            means = [_mean([row[k] for row in rows]) for k in keys]
            diffs = torch.tensor([a["nrmse"] - b["nrmse"] for a, b in zip(rows, table[("OSEM", f)])])
            half = 1.96 * float(diffs.std()) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
            dose = "full" if f == 1 else f"1/{f}"
            cells = [f"{m:.2f}" if k == "hot_spots" else f"{m:.3f}" if k == "ssim" else f"{m:.1f}"
                     for k, m in zip(keys, means)]
            print(f"| {name} | {dose} | " + " | ".join(cells) + f" | {float(diffs.mean()):+.2f} ± {half:.2f} |")
    if args.per_case:
        print("\nper case: network − OSEM NRMSE (points) and false hot spots (network / OSEM)\n")
        print("| case | grid | " + " | ".join("full" if f == 1 else f"1/{f}" for f in FACTORS) + " |")
        print("|---|---|" + "---|" * len(FACTORS))
        for row in per_case:
            print("| " + " | ".join(row) + " |")
    if args.picture:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [("truth", shown_truth)] + list(shown.items())
        vmax = float(shown_truth.max()) * (1.1 if args.object == "nema" else 0.6)
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
        for ax, (title, img) in zip(axes, panels):
            ax.imshow(img[..., 0].T.cpu(), cmap="gray_r", vmin=0, vmax=vmax, origin="lower")
            ax.set_title(title + ("" if title == "truth" else ", 1/20 dose"), fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(args.picture, dpi=110)
        print(f"wrote {args.picture}")


if __name__ == "__main__":
    main()
