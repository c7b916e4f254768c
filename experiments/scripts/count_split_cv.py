"""Can a scan's own counts say how far to trust the network? Count-splitting cross-validation (v35 probe).

    python experiments/scripts/count_split_cv.py [CHECKPOINT] --recipe data/brainweb2d.yaml --first 101080 --phantoms 40
        [--factors 1 4 10 20] [--weights 0 0.25 0.5 0.75 1] [--blur 0 0.5 1] [source options of phantom_set.py]

Each scan's prompts ``y`` are split by binomial thinning into two halves ``a`` and ``b``
(each a scan at half the count level, its model's expected counts halved). On half ``a``
the network (default: shipped) and OSEM (the BrainWeb-chosen row of ``validation_scores``'
``OSEM_BRAINWEB`` nearest the half's dose) reconstruct; every candidate ``(1 - w) G_s(net) +
w OSEM`` (``w`` from ``--weights``, ``G_s`` a Gaussian of ``--blur`` voxels' standard
deviation) is scored by its Poisson negative log-likelihood of half ``b``; the scan's chosen
candidate is then applied to the reconstructions of the whole scan ``y``. Prints, per dose
factor, the mean NRMSE (%) of each fixed candidate, of OSEM, of the per-scan choice and of
the per-scan best candidate (oracle, on the truth), and how often each candidate was chosen.
"""

from __future__ import annotations

import argparse
import itertools
import os
from dataclasses import replace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from phantom_set import add_source_arguments, phantom_source  # noqa: E402
from validation_scores import OSEM_BRAINWEB  # noqa: E402

from pet_dl.evaluate.data import simulate_eval_set  # noqa: E402
from pet_dl.evaluate.methods import network_reconstruction, osem_trajectory  # noqa: E402
from pet_dl.evaluate.scoring import case_metrics  # noqa: E402
from pet_dl.forward_model import FWHM_PER_SIGMA, GaussianResolution  # noqa: E402
from pet_dl.inference import load_model  # noqa: E402
from pet_dl.models import ReconBatch  # noqa: E402
from pet_dl.models.anchor import nearest_row  # noqa: E402
from pet_dl.recipes import load_recipe  # noqa: E402
from pet_dl.recon.filters import gaussian_postfilter  # noqa: E402


def halves(batch: ReconBatch, generator: torch.Generator) -> tuple[ReconBatch, ReconBatch]:
    """Two independent half-count scans of ``batch`` (binomial thinning of the prompts with
    p = 1/2; the expected counts of each: additive and calibration halved)."""
    a = torch.binomial(batch.prompts.float(), torch.full_like(batch.prompts.float(), 0.5), generator=generator)
    common = dict(additive=batch.additive / 2, calibration=batch.calibration / 2,
                  dose_fraction=batch.dose_fraction / 2)
    return replace(batch, prompts=a, **common), replace(batch, prompts=batch.prompts.float() - a, **common)


def osem_image(batch: ReconBatch, factor: float) -> torch.Tensor:
    """OSEM at the BrainWeb-chosen row nearest ``factor`` (log scale,
    :func:`pet_dl.models.anchor.nearest_row`)."""
    _, iterations, fwhm = nearest_row([(f, *row) for f, row in OSEM_BRAINWEB.items()], 1.0 / factor)
    return gaussian_postfilter(osem_trajectory(batch, iterations, 7)[-1], batch.image, fwhm)


def candidates(net: torch.Tensor, osem: torch.Tensor, grid, weights, blurs) -> dict[tuple[float, float], torch.Tensor]:
    """``(w, s) -> (1 - w) G_s(net) + w osem`` for every pair (``s`` in voxels; ``w = 1`` once)."""
    out = {}
    for s, w in itertools.product(blurs, weights):
        if w == 1.0 and s != blurs[0]:
            continue
        blurred = net
        if s > 0:
            sigma = s * float(grid.voxel_size_mm[0])
            blurred = GaussianResolution(grid, [sigma * FWHM_PER_SIGMA, sigma * FWHM_PER_SIGMA, 0.0])(net)
        out[(w, s)] = (1 - w) * blurred + w * osem
    return out


def negative_log_likelihood(batch: ReconBatch, images: torch.Tensor) -> torch.Tensor:
    """Poisson NLL of ``batch.prompts`` given ``images`` (up to a constant), ``(B,)``."""
    mean = batch.forward_model()(images.clamp_min(0.0)).clamp_min(1e-8)
    return (mean - batch.prompts * torch.log(mean)).flatten(1).sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default=None, help="model file (default: shipped)")
    parser.add_argument("--recipe", default="data/brainweb2d.yaml")
    parser.add_argument("--first", type=int, default=101080)
    parser.add_argument("--phantoms", type=int, default=40)
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 4.0, 10.0, 20.0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--blur", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    add_source_arguments(parser)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    ev = simulate_eval_set(recipe, list(range(args.first, args.first + args.phantoms)), 1, args.factors,
                           phantom_of=phantom_source(args, recipe))
    net = load_model(args.checkpoint, torch.device("cpu")).model
    generator = torch.Generator().manual_seed(0)
    print(f"{ev.num_cases} phantoms; NRMSE (%) per dose factor")
    for f in args.factors:
        batch = ev.batch(f)
        a, b = halves(batch, generator)
        with torch.no_grad():
            half = candidates(network_reconstruction(net, a), osem_image(a, 2 * f), ev.image, args.weights, args.blur)
            whole = candidates(network_reconstruction(net, batch), osem_image(batch, f), ev.image, args.weights, args.blur)
            nll = torch.stack([negative_log_likelihood(b, x) for x in half.values()])  # (K, B)
        keys = list(whole)
        nrmse = torch.tensor([[r["nrmse"] for r in case_metrics(whole[k], ev)] for k in keys])  # (K, B)
        chosen = nll.argmin(0)
        cases = torch.arange(nrmse.shape[1])
        fixed = " ".join(f"w{k[0]:g}/s{k[1]:g} {100 * nrmse[i].mean():.2f}" for i, k in enumerate(keys))
        counts = torch.bincount(chosen, minlength=len(keys))
        picks = " ".join(f"w{k[0]:g}/s{k[1]:g}:{int(c)}" for k, c in zip(keys, counts) if c)
        print(f"f{f:g}: chosen {100 * nrmse[chosen, cases].mean():.2f} | oracle {100 * nrmse.min(0).values.mean():.2f}"
              f" | {fixed} | picks {picks}", flush=True)


if __name__ == "__main__":
    main()
