"""The NEMA IEC phantom's small spheres stage by stage through the shipped model (a probe).

Contrast recovery of the 10-22 mm spheres and NRMSE inside the phantom at 1/4 and 1/20
dose (4 realisations, seeds 300000-300003, the scans of ``wide_object_scores.py``), for OSEM
at the BrainWeb-chosen settings and for the shipped model with its stages switched off in
turn: the mix with OSEM, then the final EM update, then the low-frequency anchor (the
network alone). Which stage loses the 10 mm sphere (docs/experiments.md, "Probe after v42 (2)").

    PYTHONPATH=. python experiments/scripts/nema_stages.py
"""

import copy

import torch

from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.inference import load_model, reconstruct_with_network
from pet_dl.metrics import nema_image_quality, nema_regions, nrmse
from pet_dl.phantoms.nema import nema_phantom
from pet_dl.recon import gaussian_postfilter, reconstruct_classical
from pet_dl.simulate import simulate_scan, thin_scan

FACTORS = {4: (8, 4.0), 20: (4, 6.0)}  # dose reduction -> OSEM (iterations x 7, post-filter mm)
STAGES = ("shipped", "no mix", "no mix, no EM", "network alone")


def variant(base, name: str):  # noqa: ANN001, ANN201
    """A copy of the loaded model with the stages after ``name``'s switched off."""
    loaded = copy.deepcopy(base)
    model = loaded.model
    if name != "shipped":
        model.osem_blend = None
    if name in ("no mix, no EM", "network alone"):
        model.final_em_steps = 0
    if name == "network alone":
        model.anchor = None
    return loaded


def main() -> None:
    sino = SinogramGeometry.two_d(get_scanner("mmr"))
    grid = ImageGeometry.centered((128, 128, 1), 2.6)
    base = load_model(None, torch.device("cpu"))
    models = {name: variant(base, name) for name in STAGES}
    rows: dict[tuple[str, int], list[list[float]]] = {}
    for r in range(4):
        g = torch.Generator().manual_seed(300000 + r)
        phantom = nema_phantom(grid, g)
        labels, background, ratio, diameters = nema_regions(phantom)
        full = simulate_scan(
            phantom.activity, phantom.mu, sino, grid, duration_s=600.0, scatter_fraction=0.3,
            randoms_fraction=0.2, psf_fwhm_mm=4.5, crystal_efficiency_sigma=0.05, generator=g,
        )
        for f, (iterations, fwhm) in FACTORS.items():
            low = thin_scan(full, 1.0 / f, g)
            images = {"OSEM": gaussian_postfilter(reconstruct_classical(low, "osem", iterations, 7), grid, fwhm)}
            images.update({name: reconstruct_with_network(low, loaded, "cpu") for name, loaded in models.items()})
            for name, image in images.items():
                quality = nema_image_quality(image.float(), labels, background, grid.voxel_size_mm, ratio, diameters)
                error = 100 * float(nrmse(image.float(), phantom.activity, phantom.mu > 0))
                rows.setdefault((name, f), []).append([100 * q.contrast_recovery for q in quality[:4]] + [error])
    print("| dose | image | CR 10 | CR 13 | CR 17 | CR 22 | NRMSE % |\n|---|---|---|---|---|---|---|")
    for f in FACTORS:
        for name in ("OSEM", *STAGES):
            m = torch.tensor(rows[(name, f)]).mean(0).tolist()
            print(f"| 1/{f} | {name} | " + " | ".join(f"{v:.1f}" for v in m) + " |")


if __name__ == "__main__":
    main()
