"""Size of the false-hot-spot loss term against the training loss (the v38 round, docs/experiments.md).

    python experiments/scripts/hot_spot_term.py [--config configs/brainweb2d_flt.yaml] \
        [--weights outputs/brainweb2d_flt/pet_dl_2d.safetensors] [--batches 12]

On the first ``--batches`` training batches of the config's data (seed 0, eval mode) prints,
per batch, the L1 + NRMSE loss of the config and
:func:`pet_dl.training.losses.hot_spot_error` (against the truth blurred by the batch's PSF,
lesions dilated by 2 voxels left out) for the network's output and for the truth itself, at
the thresholds 0.5 and 1.0. The truth's value must be 0 (the term never asks for less than
the truth); the output's, against the loss, sets the term's weight.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import yaml

from pet_dl.forward_model import GaussianResolution
from pet_dl.metrics import dilate_mask
from pet_dl.training.datamodule import PETDataModule
from pet_dl.training.losses import hot_spot_error
from pet_dl.training.module import HOT_SPOT_LESION_DILATION, ReconModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/brainweb2d_flt.yaml")
    parser.add_argument("--weights", default="outputs/brainweb2d_flt/pet_dl_2d.safetensors")
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = yaml.safe_load(open(args.config))
    model = config["model"]
    data = PETDataModule(data_dir=config["data"]["data_dir"], batch_size=4)
    data.setup("fit")
    module = ReconModule(model["network"], loss=model.get("loss", "l1"), nrmse_weight=model.get("nrmse_weight", 0.0),
                         init_weights=args.weights)
    module.eval()
    print("| batch | loss | output 0.5 | output 1.0 | truth 0.5 | truth 1.0 |\n|---|---|---|---|---|---|")
    with torch.no_grad():
        for i, batch in enumerate(itertools.islice(data.train_dataloader(), args.batches)):
            pred, geometry = module(batch), batch["geometry"]
            p, t = module._normalise(pred.float(), batch["target"].float())
            blurred = GaussianResolution(geometry.image, geometry.psf_fwhm_mm)(t)
            exclude = dilate_mask(batch["lesion_mask"], HOT_SPOT_LESION_DILATION, module.net.spatial_dims)
            voxel = tuple(float(v) for v in geometry.image.voxel_size_mm)
            terms = [float(hot_spot_error(x, blurred, exclude, voxel, th)) for x in (p, t) for th in (0.5, 1.0)]
            loss = float(module.compute_loss(pred, batch["target"], batch["lesion_mask"]))
            print(f"| {i} | {loss:.3f} | " + " | ".join(f"{v:.5f}" for v in terms) + " |", flush=True)


if __name__ == "__main__":
    main()
