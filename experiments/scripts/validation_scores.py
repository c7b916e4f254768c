"""Validation scores that chose the shipped model (docs/experiments.md, "Experiments").

    python experiments/scripts/validation_scores.py [CHECKPOINT ...] [--first 100000 --phantoms 32]
        [--data-subsets 1 2 3 7] [--flip-ensemble none 0 1 01] [--anchor 0 1.4 [--anchor-each]] [--final-em 0 1]
        [--osem [--osem-rows synthetic brainweb] [--blend 0.2 0.4 [--keep-contrast 15,0.5]]]
        [--sirf-brain $PET_DL_TEST_DATA/sirf_phantoms/brain | --acrin $PET_DL_TEST_DATA/acrin_pet_dicom] [--hot-spots] [--paired 20 100 [--paired-with-osem]]

For each checkpoint (default: the shipped model) prints, per dose factor, the mean NRMSE
and the SUVmean / SUVmax bias of the lesions >= 8 mm pooled over the phantoms (%), then
the NRMSE averaged over the factors (the choice rule's tie-break, docs/experiments.md), on
phantoms simulated from ``data/brain2d.yaml`` with seeds ``first .. first + phantoms - 1``
(default: the 8 validation seeds and 24 more of no split), one noise realisation.
``--data-subsets`` rescores each network with those ``UnrolledEM.data_subsets`` (not
retrained); ``--flip-ensemble`` likewise with each UNet's output averaged over flips along
those spatial axes (``none``, ``0`` = x, ``1`` = y, ``01`` = both; the network's
``flip_ensemble``); ``--anchor`` likewise with a low-frequency anchor of that many
voxels at full dose to OSEM at :data:`OSEM_CHOSEN` applied to the network's images (any
network; :mod:`pet_dl.models.anchor`, the same as ``UnrolledEM``'s option; 0: none, or a
file's own anchor, which a value > 0 replaces; with ``--anchor-each`` one value per
checkpoint, in order);
``--final-em`` likewise after that many plain MLEM updates from the network's (anchored)
image, a final data step on the counts (0: none);
``--osem`` adds OSEM with the parameters chosen on validation (``--osem-rows``: on the
synthetic family, :data:`OSEM_CHOSEN`, the default, or on the BrainWeb validation subjects,
:data:`OSEM_BRAINWEB`, as ``python -m pet_dl evaluate`` chooses them; several, a line each);
``--blend W`` adds each network's image mixed with that OSEM image, ``(1 - W) x + W o``;
``--keep-contrast FWHM,T`` adds each blend again with the weight falling where the network's
image is hotter than its own background (:func:`pet_dl.models.anchor.contrast_kept_fraction`,
the ``keep_contrast`` of ``OSEMBlend``); ``FWHM,T,T_O`` also where OSEM is hotter than the
network by ``T_O`` of that background (:func:`pet_dl.models.anchor.osem_excess_fraction`). With
several networks, the last lines give each one's differences from the first network at the
factors of ``--paired`` (default 20), paired on the same phantoms and lesions (points, ± 1.96
standard errors); ``--paired-with-osem`` pairs them with OSEM instead.
``--hot-spots`` adds, at factor 20, the false hot spots per image
(:func:`pet_dl.evaluate.scoring.false_hot_spots`: blobs twice the local true activity,
outside the lesions) to each line and to the paired differences.

``--sirf-brain DIR`` scores on an anatomy no network has seen instead: the BrainWeb-based
SIRF brain, one of its axial planes 8-14 per seed, with the recipe's random lesions
(:func:`pet_dl.evaluate.external.sirf_brain_phantoms`); same scanner, counts and noise.
``--acrin DIR`` likewise with 250 mm crops of the real whole-body FLT PET slices in DIR
(:func:`pet_dl.evaluate.external.acrin_slice_phantoms`).
"""

from __future__ import annotations

import argparse
import itertools
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from phantom_set import add_source_arguments, phantom_source  # noqa: E402

from pet_dl.evaluate.data import EvalSet, simulate_eval_set  # noqa: E402
from pet_dl.evaluate.methods import network_reconstruction, osem_trajectory  # noqa: E402
from pet_dl.evaluate.report import Z95  # noqa: E402
from pet_dl.evaluate.scoring import case_metrics, false_hot_spots, paired_difference  # noqa: E402
from pet_dl.inference import load_model  # noqa: E402
from pet_dl.models import ReconBatch  # noqa: E402
from pet_dl.models.anchor import contrast_kept_fraction, osem_excess_fraction  # noqa: E402
from pet_dl.recipes import load_recipe  # noqa: E402
from pet_dl.recon.filters import gaussian_postfilter  # noqa: E402

FACTORS = [1.0, 4.0, 10.0, 20.0, 50.0, 100.0]
# OSEM (iterations x 7 subsets, post-filter FWHM mm) chosen on validation, docs/experiments.md
OSEM_CHOSEN = {1.0: (15, 2.0), 4.0: (10, 4.0), 10.0: (6, 4.0), 20.0: (4, 4.0), 50.0: (4, 6.0), 100.0: (2, 6.0)}
# the same chosen on the BrainWeb validation subjects (docs/results.md, "Parameters chosen on validation")
OSEM_BRAINWEB = {1.0: (20, 4.0), 4.0: (8, 4.0), 10.0: (6, 6.0), 20.0: (4, 6.0), 50.0: (2, 6.0), 100.0: (2, 6.0)}
OSEM_ROWS = {"synthetic": OSEM_CHOSEN, "brainweb": OSEM_BRAINWEB}


def anchored(net: torch.nn.Module, batch: ReconBatch, images: torch.Tensor, sigma_voxels: float) -> torch.Tensor:
    """``images`` of ``net`` on ``batch`` with a low-frequency anchor of ``sigma_voxels`` at full
    dose to OSEM at :data:`OSEM_CHOSEN` (:class:`pet_dl.models.anchor.LowFrequencyAnchor`), at
    the count level the network measures (``net.start``)."""
    from pet_dl.models.anchor import LowFrequencyAnchor

    rows = [[f, it, fwhm] for f, (it, fwhm) in OSEM_CHOSEN.items()]
    anchor = LowFrequencyAnchor.from_config({"sigma_voxels": sigma_voxels, "osem": rows, "subsets": 7})
    with torch.no_grad():
        start = net.start(batch)
        return anchor(images, start.model, start.prompts, start.dose, batch.image,
                      start=(start.initial, net.init_iterations, net.init_subsets))


def with_final_em(batch: ReconBatch, images: torch.Tensor, updates: int) -> torch.Tensor:
    """``images`` after ``updates`` plain MLEM updates on ``batch``'s counts (one subset), from the
    images themselves (negative voxels set to zero first): a final data step after the network
    (and its anchor, if any)."""
    from pet_dl.recon import osem

    with torch.no_grad():
        x0 = images.float().clamp_min(0.0)  # the anchored image may dip below zero
        return osem(batch.forward_model(), batch.prompts.float(), updates, 1, x0=x0).to(images.dtype)


def summary(rows: list[dict]) -> str:
    """``NRMSE / SUVmean / SUVmax`` (%, lesions >= 8 mm pooled over the cases)."""
    nrmse = sum(r["nrmse"] for r in rows) / len(rows)
    means = [b for r in rows for b in r["suvmean_bias_ge8"]]
    maxes = [b for r in rows for b in r["suvmax_bias_ge8"]]
    lesions = f"{100 * sum(means) / len(means):+.1f} / {100 * sum(maxes) / len(maxes):+.1f}" if means else "- / -"
    return f"{100 * nrmse:.1f} / {lesions}"


def paired_summary(rows: list[dict], reference: list[dict]) -> str:
    """``rows`` minus ``reference`` on the same cases (± 1.96 standard errors of
    :func:`pet_dl.evaluate.scoring.paired_difference`): NRMSE over the phantoms, SUVmean /
    SUVmax bias over the lesions >= 8 mm (each lesion its own unit), in points; false hot
    spots per image over the phantoms when the rows have ``hot_spots``."""

    def interval(a: list[float], b: list[float], scale: float = 100.0) -> str:
        mean, sem = paired_difference(a, b, list(range(len(a))))
        return f"{scale * mean:+.2f} ± {scale * Z95 * sem:.2f}"

    text = f"NRMSE {interval([r['nrmse'] for r in rows], [q['nrmse'] for q in reference])}"
    for key, name in (("suvmean_bias_ge8", "SUVmean"), ("suvmax_bias_ge8", "SUVmax")):
        a = [x for r in rows for x in r[key]]
        if a:
            text += f", {name} {interval(a, [x for q in reference for x in q[key]])}"
    if "hot_spots" in rows[0] and "hot_spots" in reference[0]:
        text += f", hot spots per image {interval([r['hot_spots'] for r in rows], [q['hot_spots'] for q in reference], 1.0)}"
    return text


def with_hot_spots(rows: list[dict], images: torch.Tensor, ev: EvalSet) -> str:
    """Add each case's false hot spots to ``rows`` (in place); the mean per image, as text."""
    for row, count in zip(rows, false_hot_spots(images, ev)):
        row["hot_spots"] = count
    return f"f20 hot spots {sum(r['hot_spots'] for r in rows) / len(rows):.2f} per image"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", default=[None], help="model files (default: shipped)")
    parser.add_argument("--recipe", default="data/brain2d.yaml")
    parser.add_argument("--first", type=int, default=100000, help="first phantom seed")
    parser.add_argument("--phantoms", type=int, default=32)
    parser.add_argument("--data-subsets", type=int, nargs="+", default=None)
    parser.add_argument("--flip-ensemble", nargs="+", default=None, metavar="AXES",
                        help="rescore with these flip axes: none, 0, 1, 01")
    parser.add_argument("--anchor", type=float, nargs="+", default=None, metavar="SIGMA",
                        help="rescore with a low-frequency anchor of SIGMA voxels at full dose "
                             "(OSEM at OSEM_CHOSEN; 0: none)")
    parser.add_argument("--osem", action="store_true", help="also score OSEM (chosen parameters)")
    parser.add_argument("--osem-rows", choices=sorted(OSEM_ROWS), nargs="+", default=["synthetic"],
                        help="with --osem: OSEM's parameters chosen on the synthetic family (OSEM_CHOSEN) "
                             "or on the BrainWeb validation subjects (OSEM_BRAINWEB); several: one line each, "
                             "the last one is paired with and blended")
    parser.add_argument("--blend", type=float, nargs="+", default=None, metavar="W",
                        help="with --osem: also score each network's image as (1 - W) x network + W x OSEM "
                             "(the last --osem-rows)")
    parser.add_argument("--final-em", type=int, nargs="+", default=None, metavar="N",
                        help="rescore each network after N plain MLEM updates from its image "
                             "(after the anchor; 0: none)")
    parser.add_argument("--anchor-each", action="store_true",
                        help="the --anchor values go one to each checkpoint, in order, "
                             "instead of every value to every checkpoint")
    add_source_arguments(parser)
    parser.add_argument("--hot-spots", action="store_true", help="also count false hot spots at factor 20")
    parser.add_argument("--paired", type=float, nargs="+", default=[20.0], metavar="FACTOR",
                        help="dose factors of the paired differences against the first network (default 20)")
    parser.add_argument("--keep-contrast", nargs="+", default=[], metavar="FWHM,T",
                        help="with --blend: each blend again, its weight falling where the image is hotter "
                             "than its background filtered at FWHM mm, to 0 at relative contrast T")
    parser.add_argument("--paired-with-osem", action="store_true",
                        help="with --osem: pair every network with OSEM instead of the first network")
    args = parser.parse_args()
    if args.anchor_each and len(args.anchor or []) != len(args.checkpoints):
        parser.error("--anchor-each needs one --anchor value per checkpoint")
    if (args.paired_with_osem or args.blend) and not args.osem:
        parser.error("--paired-with-osem and --blend need --osem")
    if args.keep_contrast and not args.blend:
        parser.error("--keep-contrast needs --blend")
    try:
        keeps = [None, *(tuple(float(v) for v in k.split(",")) for k in args.keep_contrast)]
    except ValueError:
        parser.error("--keep-contrast takes FWHM,T pairs such as 15,0.5")
    recipe = load_recipe(args.recipe)
    phantom_of = phantom_source(args, recipe)
    ev = simulate_eval_set(recipe, list(range(args.first, args.first + args.phantoms)), 1, FACTORS,
                           phantom_of=phantom_of)
    n_lesions = sum(1 for d in ev.lesion_diameters for v in d.values() if v >= 8)
    prompts = float(ev.prompts[1.0].flatten(1).sum(1).mean())
    print(f"{ev.num_cases} phantoms, {n_lesions} lesions >= 8 mm, {prompts / 1e6:.2f} M prompts at full dose")
    print("NRMSE / SUVmean / SUVmax bias of lesions >= 8 mm (%), per dose factor")
    osem_images: dict[float, torch.Tensor] = {}
    for name in args.osem_rows if args.osem else []:
        for f in FACTORS:
            iterations, fwhm = OSEM_ROWS[name][f]
            osem_images[f] = gaussian_postfilter(osem_trajectory(ev.batch(f), iterations, 7)[-1], ev.image, fwhm)
        rows = {f: case_metrics(x, ev) for f, x in osem_images.items()}
        cells = [f"f{f:g}: {summary(r)}" for f, r in rows.items()]
        mean = sum(sum(x["nrmse"] for x in r) / len(r) for r in rows.values()) / len(rows)
        hot = f" | {with_hot_spots(rows[20.0], osem_images[20.0], ev)}" if args.hot_spots else ""
        print(f"OSEM (chosen, {name})", " | ".join(cells), f"| mean NRMSE {100 * mean:.2f}{hot}", flush=True)
    scored: list[tuple[str, dict[float, list[dict]]]] = []  # (label, rows per factor) per network
    if args.osem and args.paired_with_osem:
        scored.append((f"OSEM (chosen, {args.osem_rows[-1]})", rows))
    for index, path in enumerate(args.checkpoints):
        loaded = load_model(path, torch.device("cpu"))  # once; rebuilt per option set below
        for subsets, flips, anchor in itertools.product(
            args.data_subsets or [None], args.flip_ensemble or [None],
            [args.anchor[index]] if args.anchor_each else args.anchor or [None],
        ):
            options: dict = {}  # rescored with these network options (same weights)
            if anchor and loaded.config.get("anchor"):  # --anchor S > 0 replaces a file's own anchor
                if loaded.config.get("final_em_steps"):
                    parser.error(f"{path} ends on final EM steps after its own anchor: score it with --anchor 0")
                options.update(anchor=None, anchor_in_training=False)
            if subsets is not None:
                options["data_subsets"] = subsets
            if flips is not None:
                options["flip_ensemble"] = [] if flips == "none" else [int(a) for a in flips]
            net = loaded.with_network_options(options).model
            shown = {k: v for k, v in options.items() if k not in ("anchor", "anchor_in_training")}
            base_label = (path or "shipped") + "".join(f" ({k} {v})" for k, v in shown.items())
            base = {f: network_reconstruction(net, ev.batch(f)) for f in FACTORS}
            if anchor:  # after the network, whatever it is (the same as UnrolledEM's option)
                base_label += f" (anchor {anchor:g})"
                base = {f: anchored(net, ev.batch(f), x, anchor) for f, x in base.items()}
            for final_em, blend, keep in itertools.product(args.final_em or [0], [0.0, *(args.blend or [])], keeps):
                if keep and not blend:
                    continue
                label, images = base_label, base
                if final_em:
                    label += f" (final EM {final_em})"
                    images = {f: with_final_em(ev.batch(f), x, final_em) for f, x in base.items()}
                if blend:
                    label += f" (blend {blend:g} with OSEM)"
                    weights = {f: torch.tensor(blend) for f in images}
                    if keep:
                        label += f" (keep contrast {keep[0]:g} mm, {keep[1]:g})"
                        weights = {f: blend * (1 - contrast_kept_fraction(x, ev.image, *keep[:2])) for f, x in images.items()}
                    if keep and len(keep) == 3:  # and where OSEM is hotter than the network's background
                        label += f" (OSEM excess {keep[2]:g})"
                        weights = {f: w * (1 - osem_excess_fraction(images[f], osem_images[f], ev.image, keep[0], keep[2]))
                                   for f, w in weights.items()}
                    images = {f: (1 - weights[f]) * x + weights[f] * osem_images[f] for f, x in images.items()}
                rows = {f: case_metrics(x, ev) for f, x in images.items()}
                cells = [f"f{f:g}: {summary(r)}" for f, r in rows.items()]
                mean = sum(sum(x["nrmse"] for x in r) / len(r) for r in rows.values()) / len(rows)
                hot = f" | {with_hot_spots(rows[20.0], images[20.0], ev)}" if args.hot_spots else ""
                print(label, " | ".join(cells), f"| mean NRMSE {100 * mean:.2f}{hot}", flush=True)
                scored.append((label, rows))
    for factor in args.paired:
        for label, rows in scored[1:]:
            print(f"f{factor:g} {label} - {scored[0][0]}: {paired_summary(rows[factor], scored[0][1][factor])}")


if __name__ == "__main__":
    main()
