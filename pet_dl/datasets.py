"""Paired low-dose / full-dose training data: simulation, sharded HDF5 files, Dataset classes.

What to simulate comes from a recipe (:mod:`pet_dl.recipes`: scanner, grid, phantoms,
simulation parameters, reduction factors, seeds per split). Each phantom seed gives one
full-dose acquisition; the low-dose scans are its binomial thinnings at ``1 / r`` for
every reduction factor ``r``. An *item* (one low-dose scan) is a dict of tensors:

- ``prompts``, ``multiplicative``, ``additive``: ``(*sino)`` (counts, 1, counts),
- ``calibration``, ``dose_fraction``: ``()``,
- ``initial``: ``(nx, ny, nz)`` Bq/mL, OSEM of the low-dose scan (the models' start),
- ``target``: ``(nx, ny, nz)`` true activity, Bq/mL,
- ``lesion_mask``: ``(nx, ny, nz)`` int64 (0 background),
- ``mu``: ``(nx, ny, nz)`` 1/mm,
- ``seed``: ``()`` int64, the phantom seed (:func:`pet_dl.recipes.phantom_of_seed`).

Shards: ``<out>/<split>/shard-0000.h5`` with per-scan arrays (leading axis = scan) and
per-phantom arrays (``target``, ``lesion_mask``, ``mu``, ``multiplicative``, indexed by
``phantom_index``); attributes hold the format version and the recipe as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from pet_dl.recipes import (
    GRID_RECIPE_KEYS,
    SHARED_RECIPE_KEYS,
    check_shared_keys,
    full_dose_scan,
    load_recipe,
    phantom_of_seed,
    psf_of_recipe,
    recipe_geometry,
    split_seeds,
)

if TYPE_CHECKING:
    from pet_dl.geometry import ImageGeometry, SinogramGeometry

FORMAT_VERSION = 1
PER_SCAN = ("prompts", "additive", "calibration", "dose_fraction", "initial", "phantom_index")
PER_PHANTOM = ("target", "lesion_mask", "mu", "multiplicative", "seed")


def simulate_phantom(
    recipe: Mapping[str, Any], seed: int,
    geometry: tuple[SinogramGeometry, ImageGeometry] | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Simulate one phantom seed: its per-phantom arrays and one dict per reduction factor.

    Returns:
        ``(phantom_arrays, scans)``: ``phantom_arrays`` has ``target``, ``lesion_mask``,
        ``mu``, ``multiplicative``, ``seed``; each scan has ``prompts``, ``additive``,
        ``calibration``, ``dose_fraction``, ``initial`` (see the module docstring).
    """
    from pet_dl.models import ReconBatch, initial_image
    from pet_dl.simulate import thin_scan

    sinogram, image = geometry if geometry is not None else recipe_geometry(recipe)
    phantom = phantom_of_seed(recipe, seed, image)
    g = torch.Generator().manual_seed(10_000_019 + int(seed))
    full = full_dose_scan(recipe, phantom, seed, g, (sinogram, image))
    lows = [thin_scan(full, 1.0 / float(r), g) for r in recipe["reduction_factors"]]
    fractions = torch.tensor([1.0 / float(r) for r in recipe["reduction_factors"]])
    prompts = torch.stack([s.prompts for s in lows]).float()
    additive = torch.stack([s.additive for s in lows]).float()
    calibration = torch.tensor([float(s.calibration) for s in lows])
    batch = ReconBatch(
        prompts, full.multiplicative.float().expand_as(prompts).contiguous(), additive,
        calibration, fractions, sinogram, image, psf_fwhm_mm=float(full.psf_fwhm_mm),
    )
    initial = initial_image(
        batch.forward_model(), prompts, int(recipe["init_iterations"]), int(recipe["init_subsets"])
    )
    arrays = {
        "target": phantom.activity.float(),
        "lesion_mask": phantom.labels.long(),
        "mu": phantom.mu.float(),
        "multiplicative": full.multiplicative.float(),
        "seed": torch.tensor(int(seed)),
    }
    scans = [
        {
            "prompts": prompts[i], "additive": additive[i], "calibration": calibration[i],
            "dose_fraction": fractions[i], "initial": initial[i].float(),
        }
        for i in range(len(lows))
    ]
    return arrays, scans


def _write_shard(path: Path, recipe: Mapping[str, Any], phantoms: list, scans: list) -> None:
    import h5py

    tmp = path.with_name(path.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["recipe"] = json.dumps(dict(recipe))
            for key in PER_PHANTOM:
                data = torch.stack([p[key] for p in phantoms]).numpy()
                f.create_dataset(key, data=data, compression="gzip", shuffle=True)
            for key in PER_SCAN:
                data = torch.stack([torch.as_tensor(s[key]) for s in scans]).numpy()
                f.create_dataset(key, data=data, compression="gzip", shuffle=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate_dataset(
    recipe: Mapping[str, Any] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    splits: Sequence[str] | None = None,
    progress: bool = False,
    max_phantoms: Mapping[str, int] | None = None,
) -> list[Path]:
    """Simulate the recipe's splits and write sharded HDF5 files under ``out_dir/<split>/``.

    Args:
        recipe: the recipe (mapping or YAML path).
        out_dir: the dataset folder.
        splits: the splits to write (default: all in the recipe).
        progress: show a progress bar per split.
        max_phantoms: per split, write at most this many phantoms, the first seeds of its
            range (e.g. ``{"val": 40}``: a training run's validation loss needs a few dozen,
            while a recipe's validation range also holds every model round's fresh seeds).

    Returns:
        the written shard paths.

    Raises:
        ValueError: ``max_phantoms`` names a split the recipe lacks or a count below 1.
    """
    from tqdm.auto import tqdm

    r = load_recipe(recipe)
    geometry = recipe_geometry(r)
    out = Path(out_dir)
    limits = dict(max_phantoms or {})
    for split, n in limits.items():
        if split not in r["splits"]:
            raise ValueError(f"max_phantoms names split {split!r}, which recipe {r.get('name')!r} lacks")
        if int(n) < 1:
            raise ValueError(f"max_phantoms for split {split!r} must be >= 1, got {n}")
    written: list[Path] = []
    for split in splits or list(r["splits"]):
        seeds = split_seeds(r, split)
        if split in limits:
            seeds = seeds[: int(limits[split])]
        (out / split).mkdir(parents=True, exist_ok=True)
        phantoms: list[dict] = []
        scans: list[dict] = []
        shard = 0
        for seed in tqdm(seeds, desc=split, disable=not progress):
            arrays, items = simulate_phantom(r, seed, geometry)
            for item in items:
                item["phantom_index"] = torch.tensor(len(phantoms))
            phantoms.append(arrays)
            scans.extend(items)
            if len(phantoms) == int(r["shard_size"]) or seed == seeds[-1]:
                path = out / split / f"shard-{shard:04d}.h5"
                _write_shard(path, r, phantoms, scans)
                written.append(path)
                phantoms, scans, shard = [], [], shard + 1
    return written


class _GeometryMixin:
    recipe: dict[str, Any]

    def _init_geometry(self) -> None:
        self.sinogram, self.image = recipe_geometry(self.recipe)
        self.psf_fwhm_mm = psf_of_recipe(self.recipe)
        self.init_iterations = int(self.recipe["init_iterations"])
        self.init_subsets = int(self.recipe["init_subsets"])
        self.reduction_factors = [float(f) for f in self.recipe["reduction_factors"]]


class PairedScanDataset(_GeometryMixin, Dataset):
    """Reads the shards of one split written by :func:`generate_dataset`.

    Several dataset folders read as one (their items in the order given): their recipes
    may differ in phantoms, lesions and seeds, but not in what the network sees of the
    acquisition (scanner, sinogram, image grid, PSF, reduction factors, initial image).

    Args:
        root: the dataset folder (``out_dir`` of :func:`generate_dataset`), or a list of them.
        split: ``"train"``, ``"val"`` or ``"test"``.
        reduction_factors: keep only scans at these factors (default: all).

    Attributes:
        recipe: the first folder's recipe (geometry); ``recipes``: one per folder.

    Raises:
        ValueError: a folder without shards, an unknown format version, or folders whose
            recipes differ in :data:`pet_dl.recipes.SHARED_RECIPE_KEYS`.
    """

    def __init__(
        self, root: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], split: str,
        reduction_factors: Sequence[float] | None = None,
    ) -> None:
        import h5py

        roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
        if not roots:
            raise ValueError("no dataset folder given")
        self.files = []
        self.index: list[tuple[int, int]] = []
        self.recipes: list[dict[str, Any]] = []
        for folder in roots:
            files = sorted((Path(folder) / split).glob("shard-*.h5"))
            if not files:
                raise ValueError(f"no shards in {Path(folder) / split} (run `python -m pet_dl dataset`)")
            recipe = None
            for path in files:
                k = len(self.files)
                self.files.append(path)
                with h5py.File(path, "r") as f:
                    if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
                        raise ValueError(f"{path}: dataset format version is not {FORMAT_VERSION}")
                    recipe = recipe or json.loads(f.attrs["recipe"])
                    dose = f["dose_fraction"][:]
                for i, d in enumerate(dose):
                    if reduction_factors is None or any(
                        abs(float(d) * float(r) - 1.0) < 1e-4 for r in reduction_factors
                    ):
                        self.index.append((k, i))
            self.recipes.append(recipe)
        check_shared_keys(self.recipes, [str(folder) for folder in roots])
        self.recipe = self.recipes[0]
        self._init_geometry()
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _file(self, k: int) -> Any:
        import h5py

        if k not in self._handles:  # opened lazily, per worker process
            self._handles[k] = h5py.File(self.files[k], "r")
        return self._handles[k]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k, j = self.index[i]
        f = self._file(k)
        item = {key: torch.as_tensor(f[key][j]) for key in PER_SCAN if key != "phantom_index"}
        p = int(f["phantom_index"][j])
        for key in ("target", "lesion_mask", "mu", "multiplicative"):
            item[key] = torch.as_tensor(f[key][p])
        item["seed"] = torch.as_tensor(f["seed"][p])
        return item

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state


def folder_recipe(folder: str | os.PathLike[str], split: str) -> dict[str, Any]:
    """The recipe a dataset folder's ``split`` was written with (its first shard's).

    Raises:
        ValueError: the folder has no shards of that split.
    """
    import h5py

    files = sorted((Path(folder) / split).glob("shard-*.h5"))
    if not files:
        raise ValueError(f"no shards in {Path(folder) / split} (run `python -m pet_dl dataset`)")
    with h5py.File(files[0], "r") as f:
        return json.loads(f.attrs["recipe"])


def group_by_grid(roots: Sequence[str | os.PathLike[str]], split: str) -> list[list[str]]:
    """Dataset folders grouped by their grid (sinogram layout and image grid), in the order
    of each grid's first folder.

    Raises:
        ValueError: folders that differ in what the network sees of the acquisition other
            than the grid (scanner, PSF, reduction factors, initial image).
    """
    recipes = [folder_recipe(folder, split) for folder in roots]
    others = [key for key in SHARED_RECIPE_KEYS if key not in GRID_RECIPE_KEYS]
    check_shared_keys(recipes, [str(folder) for folder in roots], others)
    groups: dict[str, list[str]] = {}
    for folder, recipe in zip(roots, recipes):
        grid = json.dumps([recipe.get(key) for key in GRID_RECIPE_KEYS], sort_keys=True)
        groups.setdefault(grid, []).append(str(folder))
    return list(groups.values())


class GridGroups(_GeometryMixin, Dataset):
    """Dataset folders on several grids read as one; each item says its grid.

    Whole bodies on the wide grid the product grows for them, beside the model's own grid:
    the folders are grouped by grid (:func:`group_by_grid`), each group read as one
    :class:`PairedScanDataset`, and each item carries ``grid_group`` (``()`` int64, the
    group's index) so that batches hold one grid each
    (:class:`pet_dl.training.batching.GridBatchSampler`). The first folder's grid is the
    model's (``sinogram``, ``image`` and the other geometry attributes are its group's).

    Args:
        groups: folders per grid (:func:`group_by_grid`), the model's first.
        split: ``"train"``, ``"val"`` or ``"test"``.
        reduction_factors: keep only scans at these factors (default: all).

    Attributes:
        parts: one :class:`PairedScanDataset` per grid.
        group_of: the grid group of every item, ``len(self)`` ints.
        recipes: every folder's recipe, group by group.
    """

    def __init__(
        self, groups: Sequence[Sequence[str | os.PathLike[str]]], split: str,
        reduction_factors: Sequence[float] | None = None,
    ) -> None:
        self.parts = [PairedScanDataset(list(folders), split, reduction_factors) for folders in groups]
        self.recipes = [recipe for part in self.parts for recipe in part.recipes]
        self.recipe = self.parts[0].recipe
        self._init_geometry()
        self.group_of = [g for g, part in enumerate(self.parts) for _ in range(len(part))]
        self._starts = [0]
        for part in self.parts:
            self._starts.append(self._starts[-1] + len(part))

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = self.group_of[i]
        item = self.parts[g][i - self._starts[g]]
        item["grid_group"] = torch.tensor(g)
        return item


def open_paired_scans(
    root: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], split: str,
    reduction_factors: Sequence[float] | None = None,
) -> PairedScanDataset | GridGroups:
    """Dataset folders as one dataset: a :class:`PairedScanDataset` when they share one grid,
    :class:`GridGroups` when they are on several."""
    roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
    if len(roots) > 1:
        groups = group_by_grid(roots, split)
        if len(groups) > 1:
            return GridGroups(groups, split, reduction_factors)
    return PairedScanDataset(roots, split, reduction_factors)


class OnTheFlyDataset(_GeometryMixin, Dataset):
    """Simulates items during training: item ``i`` is phantom ``seeds[i // R]`` at factor ``i % R``.

    Deterministic: the same index always gives the same scan. Each phantom is simulated
    once per worker and cached for its ``R`` reduction factors.

    Args:
        recipe: recipe dict or YAML path.
        split: which seed range to draw phantoms from.
        num_phantoms: use only the first ``num_phantoms`` seeds of the split.
    """

    def __init__(
        self, recipe: Mapping[str, Any] | str | os.PathLike[str], split: str,
        num_phantoms: int | None = None,
    ) -> None:
        self.recipe = load_recipe(recipe)
        self._init_geometry()
        seeds = split_seeds(self.recipe, split)
        self.seeds = seeds if num_phantoms is None else seeds[:num_phantoms]
        self._cache: tuple[int, dict, list] | None = None

    def __len__(self) -> int:
        return len(self.seeds) * len(self.reduction_factors)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        seed = self.seeds[i // len(self.reduction_factors)]
        if self._cache is None or self._cache[0] != seed:
            arrays, scans = simulate_phantom(self.recipe, seed, (self.sinogram, self.image))
            self._cache = (seed, arrays, scans)
        _, arrays, scans = self._cache
        item = dict(scans[i % len(self.reduction_factors)])
        item.update(arrays)
        return item

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return (self[i] for i in range(len(self)))
