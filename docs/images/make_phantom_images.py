"""Draw the central slice of each phantom (activity and mu) into docs/images/.

Run from the repository root: ``python docs/images/make_phantom_images.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pet_dl.geometry import ImageGeometry  # noqa: E402
from pet_dl.phantoms import add_lesions, make_phantom  # noqa: E402

GRIDS = {
    "brain": ImageGeometry.centered((128, 128, 1), 2.0),
    "brain_folded": ImageGeometry.centered((128, 128, 1), 2.0),
    "brain_varied": ImageGeometry.centered((128, 128, 1), 2.0),
    "torso": ImageGeometry.centered((128, 96, 1), 4.0),
    "nema": ImageGeometry.centered((160, 128, 1), 2.0),
}


def main(out_dir: Path = Path(__file__).parent) -> None:
    for name, image in GRIDS.items():
        phantom = make_phantom(name, image, torch.Generator().manual_seed(1))
        if name != "nema":
            phantom = add_lesions(phantom, 3, (6.0, 16.0), 4.0, torch.Generator().manual_seed(2))
        fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.8))
        extent = [*image.bounds_mm()[0], *image.bounds_mm()[1]]
        for ax, data, title, cmap in (
            (axes[0], phantom.activity / 1000.0, "activity (kBq/mL)", "hot"),
            (axes[1], phantom.mu, "mu at 511 keV (1/mm)", "bone"),
        ):
            shown = ax.imshow(data[:, :, 0].T, origin="lower", cmap=cmap, extent=extent)
            ax.set_title(f"{name}: {title}", fontsize=8)
            ax.set_xlabel("x (mm)", fontsize=7)
            ax.tick_params(labelsize=6)
            fig.colorbar(shown, ax=ax, shrink=0.8).ax.tick_params(labelsize=6)
        fig.tight_layout()
        fig.savefig(out_dir / f"phantom_{name}.png", dpi=80)
        plt.close(fig)


if __name__ == "__main__":
    main()
