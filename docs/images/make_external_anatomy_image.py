"""Draw reconstructions of the SIRF brain (an anatomy no network saw) into docs/images/.

Run from the repository root with the shared data (docs/results.md, "An anatomy the
networks never saw"):

    PET_DL_TEST_DATA=../shared/data python docs/images/make_external_anatomy_image.py \
        v14=outputs/brain2d_lesions/pet_dl_2d.safetensors v18-denselong=outputs/brain2d_dense_long/pet_dl_2d.safetensors \
        "v20-mixdense (shipped)=pet_dl/assets/pet_dl_2d.safetensors" v21-mixvaried=outputs/brain2d_mix_varied/pet_dl_2d.safetensors

Rows: two SIRF planes with lesions (seeds 0 and 1 of ``validation_scores.py --sirf-brain``)
and one smooth test phantom; columns: the truth, OSEM at full dose and at 1/20 dose
(parameters chosen on validation), then each network at 1/20 dose. Titles give the NRMSE.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pet_dl.evaluate.data import simulate_eval_set  # noqa: E402
from pet_dl.evaluate.external import sirf_brain_phantoms  # noqa: E402
from pet_dl.evaluate.methods import network_reconstruction, osem_trajectory  # noqa: E402
from pet_dl.inference import load_model  # noqa: E402
from pet_dl.recipes import load_recipe  # noqa: E402
from pet_dl.recon.filters import gaussian_postfilter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments" / "scripts"))
from validation_scores import OSEM_CHOSEN  # noqa: E402  (OSEM chosen on validation)


def main(networks: dict[str, str], out: Path = Path(__file__).parent / "external_anatomy.png") -> None:
    root = os.environ.get("PET_DL_TEST_DATA")
    if not root:
        raise SystemExit("error: set PET_DL_TEST_DATA to the shared data folder")
    recipe = load_recipe("data/brain2d.yaml")
    sirf = simulate_eval_set(recipe, [0, 1], 1, [1.0, 20.0],
                             phantom_of=sirf_brain_phantoms(Path(root) / "sirf_phantoms" / "brain", recipe))
    smooth = simulate_eval_set(recipe, [200000], 1, [1.0, 20.0])
    models = {name: load_model(path, torch.device("cpu")).model for name, path in networks.items()}
    cases = [(sirf, 0, "SIRF brain"), (sirf, 1, "SIRF brain"), (smooth, 0, "smooth test phantom")]
    fig, axes = plt.subplots(len(cases), 3 + len(models), figsize=(2.2 * (3 + len(models)), 2.4 * len(cases)))
    for row, (ev, i, what) in enumerate(cases):
        truth = ev.target[i, :, :, 0]
        images = [(f"truth ({what})", truth)]
        for f in (1.0, 20.0):
            iterations, fwhm = OSEM_CHOSEN[f]
            x = osem_trajectory(ev.batch(f, [i]), iterations, 7)[-1]
            images.append((f"OSEM {'full' if f == 1 else '1/20'}", gaussian_postfilter(x, ev.image, fwhm)[0, :, :, 0]))
        for name, model in models.items():
            images.append((f"{name} 1/20", network_reconstruction(model, ev.batch(20.0, [i]))[0, :, :, 0]))
        top = 0.8 * float(truth.max())
        for ax, (title, im) in zip(axes[row], images):
            ax.imshow(im.T, origin="lower", cmap="gray_r", vmin=0.0, vmax=top)
            if im is not truth:
                title += f"\nNRMSE {100 * float((im - truth).norm() / truth.norm()):.1f} %"
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    pairs = [a.split("=", 1) for a in sys.argv[1:]]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise SystemExit("usage: make_external_anatomy_image.py NAME=CHECKPOINT [NAME=CHECKPOINT ...]")
    main(dict(pairs))
