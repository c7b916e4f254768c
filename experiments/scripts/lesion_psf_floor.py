"""Lesion bias of the true activity blurred by the scanner's PSF, by lesion diameter.

    python experiments/scripts/lesion_psf_floor.py [--phantoms 200] [--fwhm-mm 4.5 ...]

An image that recovers nothing beyond the data's resolution reads each lesion as the
truth blurred by the PSF: this prints that image's SUVmean / SUVmax bias (%, ± 1.96
standard errors over lesions) per diameter bin of :func:`pet_dl.evaluate.bias_by_size`,
for the first ``--phantoms`` test phantoms of ``data/brain2d.yaml`` (no noise, no
reconstruction), at the recipe's PSF FWHM or the ones given. Beside the ``evaluate``
tables (docs/experiments.md, "The factor-20 targets on 200 test phantoms") it tells how much of
a method's lesion bias is partial volume that only resolution recovery can undo.
"""

from __future__ import annotations

import argparse

from pet_dl.evaluate import bias_by_size, size_bin_cells
from pet_dl.forward_model import GaussianResolution
from pet_dl.metrics import lesion_bias
from pet_dl.recipes import load_recipe, phantom_of_seed, psf_of_recipe, recipe_geometry, split_seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="data/brain2d.yaml")
    parser.add_argument("--phantoms", type=int, default=200, help="first N test phantoms")
    parser.add_argument("--fwhm-mm", type=float, nargs="+", default=None, help="default: the recipe's PSF")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    image = recipe_geometry(recipe)[1]
    seeds = list(split_seeds(recipe, "test"))[: args.phantoms]
    phantoms = [phantom_of_seed(recipe, s, image) for s in seeds]
    print(f"{len(seeds)} test phantoms; SUVmean / SUVmax bias (%) of the PSF-blurred truth, "
          "± 1.96 standard errors over the lesions\n")
    first = True
    for fwhm in args.fwhm_mm or [psf_of_recipe(recipe)]:
        blur = GaussianResolution(image, fwhm)
        cases = []
        for ph in phantoms:
            truth = ph.activity.double()
            diameters = {int(les.label): float(les.diameter_mm) for les in ph.lesions}
            found = lesion_bias(blur(truth), truth, ph.labels, image.voxel_size_mm) if ph.lesions else []
            cases.append([[diameters[b.label], b.mean_bias, b.max_bias] for b in found])
        heads, cells = size_bin_cells(bias_by_size(cases, seeds))
        if first:
            print("| PSF FWHM (mm) | " + " | ".join(heads) + " |\n|---|" + "---|" * len(heads))
            first = False
        print(f"| {fwhm:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
