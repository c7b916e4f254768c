"""The shipped model on the mMR native 2D layout (252 views x 344 bins, 2 mm grid) against the
training layout and OSEM, 8 held-out BrainWeb test slices at 1/20 dose (docs/inference.md,
"Other 2D layouts and image grids").

    PET_DL_BRAINWEB=$PET_DL_TEST_DATA/brainweb python experiments/scripts/native_layout_scores.py
"""

import torch

from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.inference import load_model, reconstruct_with_network
from pet_dl.metrics import nrmse
from pet_dl.recipes import load_recipe, phantom_of_seed
from pet_dl.recon import gaussian_postfilter, reconstruct_classical
from pet_dl.simulate import simulate_scan, thin_scan

r = load_recipe("data/brainweb2d.yaml")
loaded = load_model(None, torch.device("cpu"))
native_img = ImageGeometry.centered((128, 128, 1), (2.0, 2.0, 2.0))
model_img = ImageGeometry.centered((96, 96, 1), (2.6, 2.6, 2.6))
rows = {k: [] for k in ("net_native", "net_mashed", "osem_native")}
for seed in range(200000, 200008):
    g = torch.Generator().manual_seed(seed)
    for img, sino, key in ((native_img, SinogramGeometry.two_d(get_scanner("mmr")), "native"),
                           (model_img, SinogramGeometry.two_d(get_scanner("mmr"), num_radial=128, view_mashing=2), "mashed")):
        p = phantom_of_seed(r, seed, img)
        gg = torch.Generator().manual_seed(seed * 7 + 1)
        full = simulate_scan(p.activity, p.mu, sino, img, duration_s=600.0, scatter_fraction=0.3, randoms_fraction=0.2,
                             psf_fwhm_mm=4.5, crystal_efficiency_sigma=0.05, generator=gg)
        low = thin_scan(full, 0.05, gg)
        x = reconstruct_with_network(low, loaded)
        rows["net_" + key].append(float(nrmse(x[None], p.activity[None])[0]))
        if key == "native":
            o = gaussian_postfilter(reconstruct_classical(low, "osem", num_iterations=4, num_subsets=7), img, 6.0)
            rows["osem_native"].append(float(nrmse(o[None], p.activity[None])[0]))
for k, v in rows.items():
    print(k, f"{100 * sum(v) / len(v):.1f}", [round(100 * x, 1) for x in v])
