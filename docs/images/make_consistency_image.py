"""Draw the data-consistency map of a planted false blob into docs/images/consistency_map.png.

    python docs/images/make_consistency_image.py

A validation phantom of data/brain2d.yaml (seed 101650, not a test seed) at 1/20 dose,
reconstructed by the shipped model; a false blob (FWHM 10 mm, the image 3 x the local
truth there) is planted in the network's image where the truth has none. Columns: the
truth, the network's image, the network's image with the blob, the map of the network's
own image and the map with the blob (z, noise SDs), flagged regions circled
(docs/inference.md, "Data-consistency map").
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pet_dl.data_check import (  # noqa: E402
    DataFit,
    check_consistency,
    data_check_warning,
    reference_osem,
)
from pet_dl.inference import load_model, scan_batch  # noqa: E402
from pet_dl.recipes import full_dose_scan, load_recipe, phantom_of_seed  # noqa: E402
from pet_dl.recon.filters import gaussian_postfilter  # noqa: E402
from pet_dl.simulate import thin_scan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SEED = 101650
BLOB_INDEX = (30, 40)


def blob(grid, centre_mm: tuple[float, float], fwhm_mm: float, peak: float) -> torch.Tensor:
    """A Gaussian blob ``(nx, ny, 1)`` of ``peak`` Bq/mL and FWHM ``fwhm_mm`` at ``centre_mm``."""
    xs = grid.origin_mm[0] + torch.arange(grid.shape[0]) * grid.voxel_size_mm[0]
    ys = grid.origin_mm[1] + torch.arange(grid.shape[1]) * grid.voxel_size_mm[1]
    sigma = fwhm_mm / (2 * math.sqrt(2 * math.log(2)))
    r2 = (xs[:, None] - centre_mm[0]) ** 2 + (ys[None, :] - centre_mm[1]) ** 2
    return (peak * torch.exp(-r2 / (2 * sigma**2))).unsqueeze(-1).float()


def main(out: Path = Path(__file__).parent / "consistency_map.png") -> None:
    recipe = load_recipe(ROOT / "data" / "brain2d.yaml")
    phantom = phantom_of_seed(recipe, SEED)
    g = torch.Generator().manual_seed(7)
    scan = thin_scan(full_dose_scan(recipe, phantom, SEED, g), 1 / 20, g)
    grid = scan.image
    osem = reference_osem(scan, "cpu")
    with torch.no_grad():
        network = load_model(None, torch.device("cpu")).model(scan_batch(scan, "cpu", osem))[0]
    local = gaussian_postfilter(phantom.activity, grid, scan.psf_fwhm_mm)
    centre = tuple(grid.origin_mm[k] + BLOB_INDEX[k] * grid.voxel_size_mm[k] for k in range(2))
    planted = network + blob(grid, centre, 10.0, 2.0 * float(local[BLOB_INDEX[0], BLOB_INDEX[1], 0]))
    own = check_consistency(scan, network, "cpu", osem_image=osem)
    flagged = check_consistency(scan, planted, "cpu", osem_image=osem)

    extent = [grid.origin_mm[0] - grid.voxel_size_mm[0] / 2,
              grid.origin_mm[0] + (grid.shape[0] - 0.5) * grid.voxel_size_mm[0]] * 2
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
    vmax = float(planted.max())
    panels = [
        ("truth", phantom.activity, "gray", (0, vmax)),
        ("network, 1/20 dose", network, "gray", (0, vmax)),
        ("network + false blob", planted, "gray", (0, vmax)),
        (f"map of the network's image: {own.count} regions", own.z, "RdBu_r", (-6, 6)),
        (f"map with the blob: {flagged.count} region(s)", flagged.z, "RdBu_r", (-6, 6)),
    ]
    for ax, (title, image, cmap, (lo, hi)) in zip(axes, panels):
        shown = ax.imshow(image[..., 0].T, origin="lower", cmap=cmap, vmin=lo, vmax=hi, extent=extent)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02,
                     label="z (noise SD)" if cmap == "RdBu_r" else "Bq/mL")
    axes[2].add_patch(plt.Circle(centre, 9.0, fill=False, color="yellow", lw=1))
    for ax, maps in ((axes[3], own), (axes[4], flagged)):
        for region in maps.regions:
            ax.add_patch(plt.Circle(region.centre_mm[:2], 9.0, fill=False, color="black", lw=1.5))
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    print(f"wrote {out}: network {own.count} regions, with the blob {flagged.count}; "
          f"peak z {flagged.max_z:.1f}")
    print(data_check_warning("brain_1_20", DataFit(1.0, 1.0, 1.0, consistency=flagged)))


if __name__ == "__main__":
    main()
