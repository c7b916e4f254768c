"""How noisy a set's truths are at the voxel scale: the ACRIN slices against PET-like proxies.

``python experiments/scripts/truth_texture.py --recipe R --first F --phantoms N [--acrin DIR |
--sirf-brain DIR] [--reconstructed [--reconstructed-filter MM] [--reconstructed-dose LO HI]]``

Prints, over the set's truths (activity images, no scan simulated), the median and quartiles
of the fine-scale roughness ``std(x - G x) / mean(G x)`` in the body outside the lesions
(``G`` a Gaussian of ``--sigma`` voxels, default 1): the share of a truth that is speckle at
the scale of a few voxels. A proxy for the real ACRIN windows should have their roughness;
it compares images only, no model's scores (docs/experiments.md, the v33 round).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from phantom_set import add_source_arguments, phantom_source

from pet_dl.recipes import load_recipe, phantom_of_seed, recipe_geometry


def gaussian_blur_2d(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x (nx, ny)`` blurred by a Gaussian of ``sigma`` voxels (reflect padding)."""
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    y = torch.nn.functional.pad(x[None, None], (radius, radius, radius, radius), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(1, 1, 1, -1))
    return torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1))[0, 0]


def roughness(activity: torch.Tensor, region: torch.Tensor, sigma: float) -> float:
    """``std(x - G x) / mean(G x)`` over ``region`` of the 2D image ``activity (nx, ny, 1)``."""
    x = activity[..., 0].double()
    smooth = gaussian_blur_2d(x, sigma)
    mask = region[..., 0]
    return float((x - smooth)[mask].std() / smooth[mask].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="data/brainweb2d.yaml")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--phantoms", type=int, default=40)
    parser.add_argument("--sigma", type=float, default=1.0, help="the smoothing scale, voxels")
    add_source_arguments(parser)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    image = recipe_geometry(recipe)[1]
    phantom_of = phantom_source(args, recipe) or (lambda seed: phantom_of_seed(recipe, seed, image))
    values = []
    for seed in range(args.first, args.first + args.phantoms):
        phantom = phantom_of(seed)
        body = phantom.tissue == phantom.tissues["body"] if "body" in phantom.tissues else phantom.tissue > 0
        values.append(roughness(phantom.activity, body & (phantom.labels == 0), args.sigma))
    q1, median, q3 = statistics.quantiles(values, n=4)
    print(f"{len(values)} truths: roughness at {args.sigma:g} voxel median {median:.3f} "
          f"(quartiles {q1:.3f} - {q3:.3f})")


if __name__ == "__main__":
    main()
