"""Where the network's error on the ACRIN windows lies: the probe that led to the v27 round (docs/experiments.md).

    python experiments/scripts/acrin_probe.py [CHECKPOINT] --acrin $PET_DL_TEST_DATA/acrin_pet_dicom [--phantoms 6]

On the first ``--phantoms`` ACRIN windows (:func:`pet_dl.evaluate.external.acrin_slice_phantoms`
with ``data/brainweb2d.yaml``'s lesions, one noise realisation) at full dose and 1/20,
prints the mean NRMSE (%) of OSEM (the settings chosen on validation), of the network
(default: shipped) and of the network's image blurred by a Gaussian of 0.6 voxel standard
deviation; then each image's error split at the scale of 3 voxels (a Gaussian of 3 voxels'
standard deviation): ``|G e| / |t|`` (coarse) and ``|e - G e| / |t|`` (fine), over the
whole images. A network that paints step edges into smooth activity gains from the blur
and has more coarse error than OSEM.
"""

from __future__ import annotations

import argparse

import torch
from phantom_set import add_source_arguments, phantom_source
from validation_scores import OSEM_CHOSEN

from pet_dl.evaluate.data import simulate_eval_set
from pet_dl.evaluate.methods import network_reconstruction, osem_trajectory
from pet_dl.evaluate.scoring import case_metrics
from pet_dl.forward_model import FWHM_PER_SIGMA, GaussianResolution
from pet_dl.inference import load_model
from pet_dl.recipes import load_recipe
from pet_dl.recon.filters import gaussian_postfilter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default=None, help="model file (default: shipped)")
    parser.add_argument("--phantoms", type=int, default=6)
    add_source_arguments(parser)
    args = parser.parse_args()
    if not args.acrin:
        parser.error("give --acrin DIR (the real whole-body PET slices)")
    recipe = load_recipe("data/brainweb2d.yaml")
    factors = [1.0, 20.0]
    ev = simulate_eval_set(recipe, list(range(args.phantoms)), 1, factors, phantom_of=phantom_source(args, recipe))
    net = load_model(args.checkpoint, torch.device("cpu")).model
    voxel = float(ev.image.voxel_size_mm[0])
    blur = GaussianResolution(ev.image, 0.6 * voxel * FWHM_PER_SIGMA)
    coarse = GaussianResolution(ev.image, 3.0 * voxel * FWHM_PER_SIGMA)

    def nrmse(x: torch.Tensor) -> float:
        return 100 * sum(r["nrmse"] for r in case_metrics(x, ev)) / ev.num_cases

    for f in factors:
        iterations, fwhm = OSEM_CHOSEN[f]
        osem = gaussian_postfilter(osem_trajectory(ev.batch(f), iterations, 7)[-1], ev.image, fwhm)
        with torch.no_grad():
            x = network_reconstruction(net, ev.batch(f))
        print(f"f{f:g} NRMSE %: OSEM {nrmse(osem):.1f} | network {nrmse(x):.1f} | network blurred 0.6 voxel {nrmse(blur(x)):.1f}")
        for name, img in (("OSEM", osem), ("network", x)):
            e = img - ev.target
            g = coarse(e)
            t = float(ev.target.norm())
            print(f"  {name}: coarse error {100 * float(g.norm()) / t:.1f} %, fine error {100 * float((e - g).norm()) / t:.1f} %")


if __name__ == "__main__":
    main()
