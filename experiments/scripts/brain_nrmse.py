"""NRMSE inside the brain on the held-out BrainWeb subjects: the FBSEM-Net comparison of issue 18.

    python experiments/scripts/brain_nrmse.py [NAME=CHECKPOINT ...] [--first 200000 --phantoms 40]

FBSEM-Net (Mehranian & Reader 2021) reports NRMSE inside the brain of BrainWeb subjects
(14.4 % against 20.7 % for OSEM). ``docs/results.md`` reports NRMSE over the whole slice,
scalp and skull included; this script scores the same kind of region: grey matter, white
matter and CSF of each phantom (:data:`pet_dl.phantoms.brainweb.BRAIN_TISSUES` + ``csf``), on
``data/brainweb2d.yaml``'s test slices (one realisation), for OSEM with the settings chosen
on the validation subjects and each network (default: the shipped one), at full dose, 1/4
and 1/20. Prints the mean NRMSE and each method's reduction relative to OSEM at the same dose.
"""

from __future__ import annotations

import argparse

import torch
from lesion_targets import OSEM_CHOSEN_BRAINWEB

from pet_dl.evaluate.data import simulate_eval_set
from pet_dl.evaluate.methods import network_reconstruction, osem_trajectory
from pet_dl.inference import load_model
from pet_dl.phantoms.brainweb import BRAIN_TISSUES
from pet_dl.recipes import load_recipe, phantom_of_seed
from pet_dl.recon.filters import gaussian_postfilter

FACTORS = (1.0, 4.0, 20.0)


def brain_nrmse(images: torch.Tensor, target: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """``||x - t|| / ||t||`` over the ``brain`` voxels of each case: ``(B,)`` from ``(B, nx, ny, nz)``."""
    err = ((images - target) ** 2 * brain).flatten(1).sum(1).sqrt()
    return err / ((target**2) * brain).flatten(1).sum(1).sqrt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks", nargs="*", default=["shipped=shipped"], metavar="NAME=CHECKPOINT")
    parser.add_argument("--first", type=int, default=200000)
    parser.add_argument("--phantoms", type=int, default=40)
    args = parser.parse_args()
    recipe = load_recipe("data/brainweb2d.yaml")
    seeds = list(range(args.first, args.first + args.phantoms))
    factors = list(FACTORS)
    ev = simulate_eval_set(recipe, seeds, 1, factors)
    masks = []
    for seed in seeds:
        phantom = phantom_of_seed(recipe, seed)
        ids = [phantom.tissues[name] for name in (*BRAIN_TISSUES, "csf")]
        masks.append(torch.isin(phantom.tissue, torch.tensor(ids)))
    brain = torch.stack(masks).to(ev.target.dtype)
    rows: dict[str, dict[float, float]] = {"OSEM": {}}
    with torch.no_grad():
        for f in factors:
            iterations, fwhm = OSEM_CHOSEN_BRAINWEB[f]
            osem = gaussian_postfilter(osem_trajectory(ev.batch(f), iterations, 7)[-1], ev.image, fwhm)
            rows["OSEM"][f] = float(brain_nrmse(osem, ev.target, brain).mean())
        for spec in args.networks:
            name, path = spec.split("=", 1)
            net = load_model(None if path == "shipped" else path, torch.device("cpu")).model.eval()
            rows[name] = {f: float(brain_nrmse(network_reconstruction(net, ev.batch(f)), ev.target, brain).mean())
                          for f in factors}
    print(f"{len(seeds)} test slices (seeds {seeds[0]}-{seeds[-1]}), one realisation; NRMSE (%) inside the brain")
    print("| method | " + " | ".join("full" if f == 1 else f"1/{f:g}" for f in factors) + " | relative to OSEM |")
    print("|---|" + "---|" * (len(factors) + 1))
    for name, by_factor in rows.items():
        cells = " | ".join(f"{100 * v:.1f}" for v in by_factor.values())
        rel = " / ".join(f"{100 * (v / rows['OSEM'][f] - 1):+.0f} %" for f, v in by_factor.items())
        print(f"| {name} | {cells} | {rel} |")


if __name__ == "__main__":
    main()
