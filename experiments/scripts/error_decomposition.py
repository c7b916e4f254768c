"""Bias / noise split of a network's error on held-out phantoms (docs/experiments.md).

    python experiments/scripts/error_decomposition.py [CHECKPOINT ...] [--phantoms 8] [--realisations 4]

For each checkpoint (default: the shipped model) and dose factor, prints the NRMSE
against the true activity, the share of the squared error that is bias (the mean over
noise realisations against the truth; the rest is noise), and the NRMSE of that mean.
The first line is the floor of a method that only undoes the noise: the truth blurred by
the recipe's PSF.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from pet_dl.evaluate.data import simulate_eval_set  # noqa: E402
from pet_dl.evaluate.methods import network_reconstruction  # noqa: E402
from pet_dl.forward_model import GaussianResolution  # noqa: E402
from pet_dl.inference import load_model  # noqa: E402
from pet_dl.metrics import nrmse  # noqa: E402
from pet_dl.recipes import load_recipe, psf_of_recipe, split_seeds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", default=[None], help="model files (default: shipped)")
    parser.add_argument("--recipe", default="data/brain2d.yaml")
    parser.add_argument("--phantoms", type=int, default=8, help="first N test phantoms")
    parser.add_argument("--realisations", type=int, default=4)
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 20.0])
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    seeds = list(split_seeds(recipe, "test"))[: args.phantoms]
    ev = simulate_eval_set(recipe, seeds, args.realisations, args.factors)
    r = args.realisations
    truth = ev.target.view(len(seeds), r, *ev.target.shape[1:])[:, 0]  # (P, nx, ny, nz)
    blurred = GaussianResolution(ev.image, psf_of_recipe(recipe))(truth)
    print(f"truth blurred by the PSF: NRMSE {100 * nrmse(blurred, truth).mean():.1f} %")
    for path in args.checkpoints:
        net = load_model(path, torch.device("cpu")).model.eval()
        for f in args.factors:
            out = network_reconstruction(net, ev.batch(f)).view(len(seeds), r, *ev.image.shape)
            mean = out.mean(1)
            bias2 = ((mean - truth) ** 2).flatten(1).sum(1)
            noise2 = ((out - mean[:, None]) ** 2).flatten(2).sum(2).mean(1) * r / (r - 1)
            share = (bias2 / (bias2 + noise2)).mean()
            total = nrmse(out.flatten(0, 1), truth.repeat_interleave(r, 0)).mean()
            print(
                f"{path or 'shipped'}  factor {f:g}: NRMSE {100 * total:.1f} %, bias share of the "
                f"squared error {100 * share:.0f} %, NRMSE of the mean {100 * nrmse(mean, truth).mean():.1f} %"
            )


if __name__ == "__main__":
    main()
