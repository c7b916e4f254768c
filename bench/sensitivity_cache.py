"""Subset sensitivity images: computed and stored, then read back by a later model (CPU).

    python bench/sensitivity_cache.py

mMR reduced to 8 rings, span 1 (64 x 252 x 344 sinogram), 128 x 128 x 8 grid of 4 mm, a
random multiplicative term, 21 subsets; two fresh forward models of the same scan, the
first computes and stores (``subset_models_and_sensitivities(..., cache_dir)``), the
second reads. Prints CPU and wall seconds of each (CPU seconds: on a shared machine the
wall clock measures the other jobs).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from pet_dl.forward_model import PETForwardModel, SinogramProjector  # noqa: E402
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner  # noqa: E402
from pet_dl.recon.em import subset_models_and_sensitivities  # noqa: E402


def main() -> None:
    sino = SinogramGeometry(get_scanner("mmr").with_rings(8), num_radial=344, span=1)
    image = ImageGeometry.centered((128, 128, 8), (4.0, 4.0, 4.0625))
    mult = 0.5 + torch.rand(sino.shape, generator=torch.Generator().manual_seed(0))
    cache = tempfile.mkdtemp()
    print("| run | CPU s | wall s |")
    print("|---|---:|---:|")
    for run in ("first run (compute + store)", "second run (read)"):
        model = PETForwardModel(SinogramProjector(sino, image), mult, None, calibration=1e-3)
        t0, c0 = time.perf_counter(), time.process_time()
        subset_models_and_sensitivities(model, 21, cache)
        print(f"| {run} | {time.process_time() - c0:.2f} | {time.perf_counter() - t0:.1f} |")


if __name__ == "__main__":
    main()
