"""Draw BrainWeb phantoms (data/brainweb2d.yaml's recipe) into docs/images/phantom_brainweb.png.

Four training subjects' phantoms (activity, with the recipe's lesions) and one mu-map: what
the shipped network is trained on. Needs the BrainWeb files (PET_DL_BRAINWEB or
PET_DL_TEST_DATA). Run from the repository root: ``python docs/images/make_brainweb_image.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pet_dl.recipes import load_recipe, phantom_of_seed, subject_of_seed  # noqa: E402


def main(out: Path = Path(__file__).parent / "phantom_brainweb.png") -> None:
    recipe = load_recipe("data/brainweb2d.yaml")
    seeds = [0, 15, 30, 45]
    fig, axes = plt.subplots(1, 5, figsize=(13, 2.9))
    for ax, seed in zip(axes, seeds):
        p = phantom_of_seed(recipe, seed)
        extent = [*p.image.bounds_mm()[0], *p.image.bounds_mm()[1]]
        ax.imshow(p.activity[:, :, 0].T / 1000.0, origin="lower", cmap="hot", extent=extent)
        e = p.extra
        ax.set_title(
            f"subject {subject_of_seed(recipe, seed)}, seed {seed}\n"
            f"GM:WM {e['grey_white_ratio']:.1f}, {len(p.lesions)} lesion(s)", fontsize=8,
        )
        ax.tick_params(labelsize=6)
    last = phantom_of_seed(recipe, seeds[-1])
    axes[-1].imshow(last.mu[:, :, 0].T, origin="lower", cmap="bone", extent=extent)
    axes[-1].set_title(f"mu at 511 keV, seed {seeds[-1]}", fontsize=8)
    axes[-1].tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
