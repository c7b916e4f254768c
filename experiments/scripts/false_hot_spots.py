"""False hot spots (lesion-like blobs that the truth does not have) per image, per method.

    python experiments/scripts/false_hot_spots.py [NAME=CHECKPOINT ...] [--phantoms 20] [--realisations 2]

On the test phantoms of ``data/brain2d.yaml`` (lesions never used in training), counts
with :func:`pet_dl.evaluate.scoring.false_hot_spots` the places where an image's 4 mm-ball mean is more
than 50 % above that of the truth blurred by the scanner's PSF, outside the true lesions
(dilated by 2 voxels), for OSEM with the parameters chosen on validation
(docs/experiments.md), the shipped model and any other checkpoints, at full dose and factor
20. Prints a markdown table: mean hot spots per image and the share of images with any.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from validation_scores import OSEM_CHOSEN  # noqa: E402  (scripts/, on sys.path when run)

from pet_dl.evaluate.data import simulate_eval_set  # noqa: E402
from pet_dl.evaluate.methods import network_reconstruction, osem_trajectory  # noqa: E402
from pet_dl.evaluate.scoring import false_hot_spots  # noqa: E402
from pet_dl.inference import load_model  # noqa: E402
from pet_dl.recipes import load_recipe, split_seeds  # noqa: E402
from pet_dl.recon.filters import gaussian_postfilter  # noqa: E402

FACTORS = (1.0, 20.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", default=[], metavar="NAME=CHECKPOINT")
    parser.add_argument("--recipe", default="data/brain2d.yaml")
    parser.add_argument("--phantoms", type=int, default=20, help="first N test phantoms")
    parser.add_argument("--realisations", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.5, help="relative excess that counts")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    seeds = list(split_seeds(recipe, "test"))[: args.phantoms]
    ev = simulate_eval_set(recipe, seeds, args.realisations, list(FACTORS))
    nets = {"network (shipped)": None}
    nets.update(dict(item.split("=", 1) for item in args.checkpoints))
    print(f"{len(seeds)} test phantoms x {args.realisations} realisations; hot spot = 4 mm-ball "
          f"mean > {100 * args.threshold:.0f} % above the PSF-blurred truth, lesions excluded\n")
    print("| factor | method | hot spots per image | images with any |\n|---|---|---:|---:|")
    for factor in FACTORS:
        iterations, fwhm = OSEM_CHOSEN[factor]
        batch = ev.batch(factor)
        images = {"OSEM": gaussian_postfilter(osem_trajectory(batch, iterations, 7)[-1], ev.image, fwhm)}
        for name, path in nets.items():
            images[name] = network_reconstruction(load_model(path, torch.device("cpu")).model.eval(), batch)
        for name, x in images.items():
            counts = torch.tensor(false_hot_spots(x, ev, threshold=args.threshold), dtype=torch.float64)
            label = "full" if factor == 1 else f"{factor:g}"
            print(f"| {label} | {name} | {counts.mean():.2f} | {100 * (counts > 0).double().mean():.0f} % |")


if __name__ == "__main__":
    main()
