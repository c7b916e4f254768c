"""How noisy a set's truths are at the voxel scale: the ACRIN slices against PET-like proxies.

``python experiments/scripts/truth_texture.py --recipe R --first F --phantoms N [--acrin DIR |
--sirf-brain DIR] [--reconstructed [--reconstructed-filter MM] [--reconstructed-dose LO HI]]``

Prints, over the set's truths (activity images, no scan simulated), the median and quartiles
of the fine-scale roughness ``std(x - G x) / mean(G x)`` in the body outside the lesions
(``G`` a Gaussian of ``--sigma`` voxels, default 1; several scales give a line each): the
share of a truth that is speckle at the scale of a few voxels. A proxy for the real ACRIN
windows should have their roughness; it compares images only, no model's scores (docs/experiments.md, the v33 round).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from phantom_set import add_source_arguments, phantom_source

from pet_dl.geometry import ImageGeometry
from pet_dl.recipes import load_recipe, phantom_of_seed, recipe_geometry
from pet_dl.recon.filters import FWHM_PER_SIGMA, gaussian_postfilter


def roughness(activity: torch.Tensor, region: torch.Tensor, grid: ImageGeometry, sigma: float) -> float:
    """``std(x - G x) / mean(G x)`` over ``region`` of ``activity (nx, ny, nz)`` on ``grid``, ``G``
    a Gaussian of ``sigma`` voxels in-plane (:func:`pet_dl.recon.filters.gaussian_postfilter`)."""
    x = activity.double()
    fwhm = [FWHM_PER_SIGMA * sigma * grid.voxel_size_mm[0], FWHM_PER_SIGMA * sigma * grid.voxel_size_mm[1], 0.0]
    smooth = gaussian_postfilter(x, grid, fwhm)
    return float((x - smooth)[region].std() / smooth[region].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="data/brainweb2d.yaml")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--phantoms", type=int, default=40)
    parser.add_argument("--sigma", type=float, nargs="+", default=[1.0],
                        help="the smoothing scales, voxels (one line each)")
    add_source_arguments(parser)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    image = recipe_geometry(recipe)[1]
    phantom_of = phantom_source(args, recipe) or (lambda seed: phantom_of_seed(recipe, seed, image))
    values: dict[float, list[float]] = {sigma: [] for sigma in args.sigma}
    for seed in range(args.first, args.first + args.phantoms):
        phantom = phantom_of(seed)
        body = phantom.tissue == phantom.tissues["body"] if "body" in phantom.tissues else phantom.tissue > 0
        for sigma in args.sigma:
            values[sigma].append(roughness(phantom.activity, body & (phantom.labels == 0), phantom.image, sigma))
    for sigma, rows in values.items():
        q1, median, q3 = statistics.quantiles(rows, n=4)
        print(f"{len(rows)} truths: roughness at {sigma:g} voxel median {median:.3f} "
              f"(quartiles {q1:.3f} - {q3:.3f})")


if __name__ == "__main__":
    main()
