"""The phantom set that experiments/scripts/data_fit.py and experiments/scripts/refinement_scores.py score on.

Arguments ``CHECKPOINT --recipe --first --phantoms --sirf-brain --acrin`` and the simulated
:class:`pet_dl.evaluate.data.EvalSet` (one noise realisation per phantom): phantoms of a
recipe with seeds ``first .. first + phantoms - 1``, or planes of the SIRF brain
(:func:`pet_dl.evaluate.external.sirf_brain_phantoms`) or crops of the real whole-body PET
slices (:func:`pet_dl.evaluate.external.acrin_slice_phantoms`), with the recipe's lesions.
``--uptake TISSUE=FACTOR ...`` multiplies the recipe's phantoms' activity in those tissues
(another tracer on the same anatomy), ``--reconstructed`` makes each truth a reconstructed PET
image, and ``--body-mean BQML`` scales each truth to that mean in its body (the ACRIN
windows' scaling); docs/experiments.md, v34.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pet_dl.evaluate import external_source_phantoms
from pet_dl.evaluate.data import EvalSet, simulate_eval_set
from pet_dl.evaluate.external import reconstructed_phantoms
from pet_dl.phantoms import Phantom
from pet_dl.recipes import (
    load_recipe,
    phantom_of_seed,
    recipe_geometry,
    scaled_to_body_mean,
    with_uptake,
)


def add_arguments(parser: argparse.ArgumentParser, first: int, phantoms: int) -> None:
    """Add the checkpoint and phantom-set arguments to ``parser``."""
    parser.add_argument("checkpoint", nargs="?", default=None, help="model file (default: shipped)")
    parser.add_argument("--recipe", default="data/brain2d.yaml")
    parser.add_argument("--first", type=int, default=first, help="first phantom seed")
    parser.add_argument("--phantoms", type=int, default=phantoms)
    add_source_arguments(parser)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--sirf-brain DIR`` and ``--acrin DIR`` (external anatomies instead of the recipe's)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--sirf-brain", metavar="DIR", help="phantoms from the SIRF brain in DIR")
    group.add_argument("--acrin", metavar="DIR", help="crops of the real whole-body PET slices in DIR")
    parser.add_argument("--reconstructed", action="store_true",
                        help="a PET-like truth: the activity is a reconstructed full-dose PET image of "
                             "the anatomy (pet_dl.evaluate.external.reconstructed_phantoms)")
    parser.add_argument("--reconstructed-filter", type=float, default=None, metavar="MM",
                        help="with --reconstructed: that reconstruction's post-filter FWHM (default 5 mm)")
    parser.add_argument("--reconstructed-dose", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help="with --reconstructed: its scan's fraction of the full dose (default 0.1 1)")
    parser.add_argument("--uptake", nargs="+", default=[], metavar="TISSUE=FACTOR",
                        help="the recipe's phantoms with the activity of these tissues multiplied (another "
                             "tracer's uptake on the same anatomy, e.g. marrow=6 for FLT), before --reconstructed")
    parser.add_argument("--body-mean", type=float, default=None, metavar="BQML",
                        help="scale each truth to this mean activity in its body, Bq/mL (7000: the ACRIN "
                             "windows' scaling, pet_dl.evaluate.external.ACRIN_MEAN_BQML)")


def phantom_source(args: argparse.Namespace, recipe: dict) -> Callable[[int], Phantom] | None:
    """``phantom_of(seed)`` of ``--sirf-brain`` / ``--acrin`` / ``--uptake``, or None for the
    recipe's own phantoms; with ``--reconstructed``, a reconstructed PET image of that anatomy
    instead."""
    source = None
    if args.sirf_brain or args.acrin:
        kind, folder = ("sirf_brain", args.sirf_brain) if args.sirf_brain else ("acrin", args.acrin)
        source = external_source_phantoms({"kind": kind, "dir": folder}, recipe)
    image = recipe_geometry(recipe)[1]
    if args.uptake:
        if source is not None:
            raise SystemExit("error: --uptake applies to the recipe's phantoms, not --sirf-brain or --acrin")
        factors = {name: float(v) for name, v in (item.split("=", 1) for item in args.uptake)}
        source = lambda seed: with_uptake(phantom_of_seed(recipe, seed, image), factors)  # noqa: E731
    if args.reconstructed:
        source = reconstructed_phantoms(recipe, source, args.reconstructed_filter, args.reconstructed_dose)
    if args.body_mean is not None:
        inner = source or (lambda seed: phantom_of_seed(recipe, seed, image))
        source = lambda seed: scaled_to_body_mean(inner(seed), args.body_mean)  # noqa: E731
    return source


def simulate(args: argparse.Namespace, factors: list[float]) -> tuple[EvalSet, str]:
    """The set of ``args`` at ``factors``, and a line that names it."""
    recipe = load_recipe(args.recipe)
    phantom_of = phantom_source(args, recipe)
    seeds = list(range(args.first, args.first + args.phantoms))
    ev = simulate_eval_set(recipe, seeds, 1, factors, phantom_of=phantom_of)
    source = "SIRF brain" if args.sirf_brain else "ACRIN slices" if args.acrin else args.recipe
    if args.reconstructed:
        source = f"reconstructed {source}"
    return ev, f"{len(seeds)} phantoms of {source} (seeds {seeds[0]}-{seeds[-1]})"
