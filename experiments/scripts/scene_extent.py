"""The shape of a wide scene: its objects, their sizes and how much of the grid they fill.

    PYTHONPATH=. PET_DL_TEST_DATA=../shared/data python experiments/scripts/scene_extent.py

Measured on the activity alone (no scan, no reconstruction), on a 224 x 224 grid of 2.6 mm
(582 mm): the two real ACRIN slices (``acrin_slice_phantoms``, the test's scaling), and the
synthetic torsos with arms and necks with the arms raised of the v51 and v52 probes' seeds.
Objects are the runs of grid columns that hold activity (air between them on every row);
per object its width and depth, mm; fill: the share of the grid's voxels inside the body.
docs/experiments.md, the v52 round ("Why").
"""

from __future__ import annotations

import os

import torch

from pet_dl.evaluate.external import acrin_slice_phantoms
from pet_dl.geometry import ImageGeometry
from pet_dl.recipes import load_recipe, phantom_of_seed

GRID = ImageGeometry.centered((224, 224, 1), 2.6)
VOXEL_MM = 2.6


def describe(name: str, activity: torch.Tensor) -> str:
    """One line: overall width, each object's width x depth (mm), the grid's fill."""
    body = activity[..., 0] > 0.02 * float(activity.max())
    cols = body.any(1).int()  # (nx,): columns holding activity
    edges = torch.nonzero(torch.diff(torch.cat([torch.zeros(1, dtype=cols.dtype), cols, torch.zeros(1, dtype=cols.dtype)])))
    runs = edges.flatten().view(-1, 2)  # [start, stop) of each object's columns
    parts = []
    for start, stop in runs.tolist():
        rows = torch.nonzero(body[start:stop].any(0)).flatten()
        parts.append(f"{(stop - start) * VOXEL_MM:.0f} x {(int(rows.max()) - int(rows.min()) + 1) * VOXEL_MM:.0f}")
    width = (int(runs[-1, 1]) - int(runs[0, 0])) * VOXEL_MM
    return (f"{name}: {width:.0f} mm across, {len(parts)} object(s) ({', '.join(parts)} mm), "
            f"fill {100 * float(body.float().mean()):.1f} %")


def main() -> None:
    recipe = load_recipe("data/brainweb2d.yaml")
    recipe["image"] = {"shape": list(GRID.shape), "voxel_size_mm": list(GRID.voxel_size_mm)}
    acrin = acrin_slice_phantoms(os.path.join(os.environ["PET_DL_TEST_DATA"], "acrin_pet_dicom"), recipe)
    for case in (0, 1):
        print(describe(f"ACRIN case {case}", acrin(case).activity))
    for name, first in (("torso_arms2d_flt", 110816), ("neck_arms2d_flt", 120000)):
        synthetic = load_recipe(f"data/{name}.yaml")
        for seed in range(first, first + 4):
            print(describe(f"{synthetic['phantom']} {seed}", phantom_of_seed(synthetic, seed, GRID).activity))


if __name__ == "__main__":
    main()
