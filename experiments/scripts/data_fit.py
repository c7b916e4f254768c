"""How well a network's images explain the measured data, against OSEM's (docs/experiments.md).

    python experiments/scripts/data_fit.py [CHECKPOINT] [--first 101400 --phantoms 40]
        [--recipe data/brain2d.yaml] [--sirf-brain $PET_DL_TEST_DATA/sirf_phantoms/brain]

For each dose factor prints the ratio of the network image's mean Poisson deviance per
sinogram bin to that of the OSEM image the network starts from
(:func:`pet_dl.data_check.data_fit` per scan, here for a batch of simulated phantoms): its
median, 95th percentile and maximum over the phantoms, and the share above
:data:`pet_dl.data_check.DATA_FIT_LIMIT`, the level above which ``infer.py`` warns. On the
phantom families a network was trained on the ratio stays near 1; on an anatomy the
network overrides, the data disagree with it. ``DATA_FIT_LIMIT`` was chosen from this on
the validation seeds of the two training families; the SIRF brain is the check.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from phantom_set import add_arguments, simulate  # noqa: E402

from pet_dl.data_check import DATA_FIT_LIMIT  # noqa: E402
from pet_dl.evaluate.methods import network_reconstruction  # noqa: E402
from pet_dl.inference import load_model  # noqa: E402
from pet_dl.metrics import poisson_deviance  # noqa: E402
from pet_dl.models.batch import initial_image  # noqa: E402

FACTORS = [1.0, 4.0, 10.0, 20.0, 50.0, 100.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser, first=101400, phantoms=40)
    args = parser.parse_args()
    ev, described = simulate(args, FACTORS)
    loaded = load_model(args.checkpoint, torch.device("cpu"))
    net = loaded.model.eval()
    iterations = int(loaded.config.get("init_iterations", 4))
    subsets = int(loaded.config.get("init_subsets", 7))
    print(f"{described}; network / OSEM {iterations} x {subsets} Poisson deviance per bin; "
          f"limit {DATA_FIT_LIMIT}")
    print("| factor | median | 95th percentile | max | above the limit |")
    print("|---|---:|---:|---:|---:|")
    for f in FACTORS:
        batch = ev.batch(f)
        model = batch.forward_model()
        with torch.no_grad():
            osem = initial_image(model, batch.prompts, iterations, subsets)
            x = network_reconstruction(net, dataclasses.replace(batch, initial=osem))  # its own start
            ratio = poisson_deviance(model(x), batch.prompts) / poisson_deviance(model(osem), batch.prompts)
        q50, q95 = (float(torch.quantile(ratio, q)) for q in (0.5, 0.95))
        above = float((ratio > DATA_FIT_LIMIT).double().mean())
        print(f"| {'full' if f == 1 else f'{f:g}'} | {q50:.3f} | {q95:.3f} | {float(ratio.max()):.3f} "
              f"| {100 * above:.0f} % |", flush=True)


if __name__ == "__main__":
    main()
