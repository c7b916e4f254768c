"""The count level a network measures in a phantom set's scans (docs/experiments.md, v30).

    python experiments/scripts/count_levels.py [CHECKPOINT] --recipe data/torso_window2d.yaml \
        [--first 100000 --phantoms 8] [--acrin $PET_DL_TEST_DATA/acrin_pet_dicom | --sirf-brain DIR]
        [--reconstructed]

Prints the mean full-dose prompts and, at full dose, 1/4 and 1/20, the count level the
network reads from each scan (:func:`pet_dl.models.blocks.count_level`: trues per mL of
object over its training full dose; what its conditioning and anchor follow), mean and
range over the phantoms. Counts only: nothing is reconstructed beyond the network's start.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from phantom_set import add_arguments, simulate  # noqa: E402

from pet_dl.inference import load_model  # noqa: E402

FACTORS = [1.0, 4.0, 20.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, first=100000, phantoms=8)
    args = parser.parse_args()
    ev, name = simulate(args, FACTORS)
    net = load_model(args.checkpoint, torch.device("cpu")).model.eval()
    prompts = float(ev.prompts[1.0].flatten(1).sum(1).mean())
    print(f"{name}: {prompts / 1e6:.2f} M prompts at full dose")
    with torch.no_grad():
        for f in FACTORS:
            level = net.start(ev.batch(f)).dose
            print(f"  factor {f:g}: measured level {float(level.mean()):.3f} "
                  f"({float(level.min()):.3f}-{float(level.max()):.3f})")


if __name__ == "__main__":
    main()
