"""Paired low-dose / full-dose training data: recipes, sharded HDF5 files, on-the-fly simulation.

A *recipe* (``data/*.yaml``) fixes the scanner and sinogram layout, the image grid, the
phantom family, the simulation parameters, the dose reduction factors and, per split,
the range of phantom seeds. Splits use disjoint seed ranges, so test phantoms never
appear in training (checked by :func:`load_recipe`).

Each phantom seed gives one full-dose acquisition; the low-dose scans are its binomial
thinnings at ``1 / r`` for every reduction factor ``r``. An *item* (one low-dose scan) is
a dict of tensors:

- ``prompts``, ``multiplicative``, ``additive``: ``(*sino)`` (counts, 1, counts),
- ``calibration``, ``dose_fraction``: ``()``,
- ``initial``: ``(nx, ny, nz)`` Bq/mL, OSEM of the low-dose scan (the models' start),
- ``target``: ``(nx, ny, nz)`` true activity, Bq/mL,
- ``lesion_mask``: ``(nx, ny, nz)`` int64 (0 background),
- ``mu``: ``(nx, ny, nz)`` 1/mm,
- ``seed``: ``()`` int64, the phantom seed (:func:`phantom_of_seed`).

Shards: ``<out>/<split>/shard-0000.h5`` with per-scan arrays (leading axis = scan) and
per-phantom arrays (``target``, ``lesion_mask``, ``mu``, ``multiplicative``, indexed by
``phantom_index``); attributes hold the format version and the recipe as JSON.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from pet_dl.geometry import ImageGeometry, SinogramGeometry
    from pet_dl.phantoms import Phantom
    from pet_dl.scan import Scan

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
PER_SCAN = ("prompts", "additive", "calibration", "dose_fraction", "initial", "phantom_index")
PER_PHANTOM = ("target", "lesion_mask", "mu", "multiplicative", "seed")
_RECIPE_KEYS = {
    "name", "scanner", "num_rings", "sinogram", "image", "phantom", "lesions", "simulation",
    "reduction_factors", "init_iterations", "init_subsets", "splits", "shard_size",
}


def _unique_key_loader() -> type:
    """A ``yaml.SafeLoader`` that raises on a key repeated in one mapping."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_yaml_mapping(source: str | os.PathLike[str] | Mapping[str, Any], what: str) -> dict[str, Any]:
    """A copy of ``source`` if it is a mapping, else the YAML mapping in the file ``source``.

    Args:
        source: a mapping, or the path of a YAML file holding one (read with ``safe_load``).
        what: what the file is (``"recipe"``), for the error messages.

    Raises:
        ValueError: the file does not exist, is not YAML, repeats a key in one mapping
            (``safe_load`` alone would keep the last value silently) or does not hold a
            YAML mapping.
    """
    if isinstance(source, Mapping):
        return dict(source)
    import yaml

    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_unique_key_loader())
    except yaml.MarkedYAMLError as e:
        where = f", line {e.problem_mark.line + 1}" if e.problem_mark is not None else ""
        raise ValueError(f"{what} {path}{where}: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{what} {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} {path} is not a YAML mapping")
    return dict(data)


def load_recipe(recipe: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Read (YAML path) and validate a dataset recipe.

    Raises:
        ValueError: unknown keys, a bad value, or overlapping split seed ranges.
    """
    r = read_yaml_mapping(recipe, "recipe")
    unknown = sorted(set(r) - _RECIPE_KEYS)
    if unknown:
        raise ValueError(f"unknown recipe key(s) {unknown}; valid: {sorted(_RECIPE_KEYS)}")
    for key in ("scanner", "image", "phantom", "splits"):
        if key not in r:
            raise ValueError(f"recipe needs {key!r}")
    r.setdefault("name", "dataset")
    r.setdefault("sinogram", {})
    r.setdefault("lesions", {"count": [0, 0]})
    r.setdefault("simulation", {})
    r.setdefault("reduction_factors", [4, 10, 20, 50, 100])
    r.setdefault("init_iterations", 10)
    r.setdefault("init_subsets", 1)
    r.setdefault("shard_size", 64)
    factors = r["reduction_factors"]
    if not factors or any(float(f) < 1 for f in factors):
        raise ValueError(f"reduction_factors must be numbers >= 1, got {factors}")
    ranges = []
    subject_of: dict[str, str] = {}
    for split, spec in r["splits"].items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use {SPLITS}")
        unknown = sorted(set(spec) - {"seeds", "subjects"})
        if unknown:
            raise ValueError(f"split {split!r}: unknown key(s) {unknown}; valid: seeds, subjects")
        lo, hi = (int(v) for v in spec["seeds"])
        if not 0 <= lo < hi:
            raise ValueError(f"split {split!r}: seeds must be [start, stop) with 0 <= start < stop")
        subjects = spec.get("subjects")
        if subjects is not None:
            if not subjects or not all(isinstance(s, str) for s in subjects):
                raise ValueError(f"split {split!r}: subjects must be a non-empty list of strings (quoted: '04')")
            for s in subjects:
                if s in subject_of:
                    raise ValueError(
                        f"subject {s!r} is listed in split {subject_of[s]!r} and again in {split!r}: "
                        "each subject belongs to one split"
                    )
                subject_of[s] = split
        ranges.append((lo, hi, split))
    if subject_of and not all("subjects" in spec for spec in r["splits"].values()):
        raise ValueError("either every split names its subjects or none does")
    ranges.sort()
    for (_, hi, a), (lo, _, b) in zip(ranges, ranges[1:]):
        if lo < hi:
            raise ValueError(f"splits {a!r} and {b!r} share phantom seeds: ranges overlap")
    return r


def split_seeds(recipe: Mapping[str, Any], split: str) -> range:
    """The phantom seeds of ``split`` (``range``)."""
    if split not in recipe["splits"]:
        raise ValueError(f"recipe {recipe.get('name')!r} has no split {split!r}")
    lo, hi = (int(v) for v in recipe["splits"][split]["seeds"])
    return range(lo, hi)


def seeds_to_json(seeds: range | Iterable[int]) -> dict[str, int] | list[int]:
    """Phantom seeds as plain JSON (for checkpoint metadata): inverse of :func:`seeds_from_json`.

    A ``range`` of step 1 (e.g. :func:`split_seeds`) becomes ``{"start": a, "stop": b}``
    (seeds ``a .. b - 1``); any other collection the sorted list of its seeds.
    """
    if isinstance(seeds, range) and seeds.step == 1:
        return {"start": int(seeds.start), "stop": int(seeds.stop)}
    return sorted({int(s) for s in seeds})


def seeds_from_json(value: Any) -> range | list[int]:
    """Phantom seeds from :func:`seeds_to_json`'s form: ``{"start", "stop"}`` or a list of seeds.

    Raises:
        ValueError: anything else (the message shows the value).
    """
    if isinstance(value, Mapping) and set(value) == {"start", "stop"}:
        lo, hi = value["start"], value["stop"]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)) and 0 <= lo <= hi:
            return range(lo, hi)
    elif isinstance(value, (list, tuple)) and all(
        isinstance(s, int) and not isinstance(s, bool) for s in value
    ):
        return [int(s) for s in value]
    raise ValueError(
        f"phantom seeds must be {{'start': a, 'stop': b}} with 0 <= a <= b or a list of "
        f"integers, got {value!r}"
    )


def recipe_geometry(recipe: Mapping[str, Any]) -> tuple[SinogramGeometry, ImageGeometry]:
    """``(SinogramGeometry, ImageGeometry)`` of a recipe."""
    from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner

    scanner = get_scanner(recipe["scanner"])
    sino_kw = dict(recipe.get("sinogram") or {})
    img = recipe["image"]
    image = ImageGeometry.centered(tuple(img["shape"]), tuple(img["voxel_size_mm"]))
    if image.shape[2] == 1:
        sinogram = SinogramGeometry.two_d(scanner, **sino_kw)
    else:
        if "num_rings" in recipe:
            scanner = scanner.with_rings(int(recipe["num_rings"]))
        sinogram = SinogramGeometry(scanner, **sino_kw)
    return sinogram, image


def phantom_of_seed(recipe: Mapping[str, Any], seed: int, image: ImageGeometry | None = None) -> Phantom:
    """The recipe's phantom for ``seed``: ``make_phantom`` plus the recipe's random lesions.

    Deterministic: one generator seeded with ``seed`` draws the phantom, then the number
    of lesions (uniform in the recipe's ``lesions.count = [min, max]``), then the lesions.

    Args:
        recipe: a validated recipe (:func:`load_recipe`).
        seed: phantom seed (see the recipe's ``splits``).
        image: the image grid; default: the recipe's (:func:`recipe_geometry`).

    Returns:
        a :class:`pet_dl.phantoms.Phantom`: ``activity`` ``(nx, ny, nz)`` Bq/mL, ``mu``
        ``(nx, ny, nz)`` 1/mm, ``labels`` ``(nx, ny, nz)`` int (0 background), ``lesions``.
    """
    from pet_dl import phantoms

    if image is None:
        image = recipe_geometry(recipe)[1]
    g = torch.Generator().manual_seed(int(seed))
    kwargs = {}
    subject = subject_of_seed(recipe, seed)
    if subject is not None:
        kwargs["subject"] = subject
    return add_recipe_lesions(recipe, phantoms.make_phantom(recipe["phantom"], image, g, **kwargs), g)


def subject_of_seed(recipe: Mapping[str, Any], seed: int) -> str | None:
    """The anatomy (subject) of phantom ``seed`` in a recipe whose splits name subjects.

    Seed ``s`` of a split with subjects ``[a, b, c]`` and seeds ``[lo, hi)`` is subject
    ``subjects[(s - lo) % 3]``: every subject gets every ``len(subjects)``-th seed, so the
    phantoms of one subject differ only in what the seed draws (uptake, pose, slice, lesions).

    Returns:
        None when the recipe's splits name no subjects (synthetic anatomies).

    Raises:
        ValueError: the splits name subjects but no split holds ``seed``.
    """
    splits = recipe.get("splits") or {}
    if not any("subjects" in spec for spec in splits.values()):
        return None
    for spec in splits.values():
        lo, hi = (int(v) for v in spec["seeds"])
        if lo <= int(seed) < hi:
            subjects = spec["subjects"]
            return str(subjects[(int(seed) - lo) % len(subjects)])
    raise ValueError(
        f"seed {seed} is in no split of recipe {recipe.get('name')!r}: its subjects are given per split"
    )


def recipe_subjects(recipe: Mapping[str, Any], split: str) -> list[str]:
    """The subjects of ``split`` (empty for a recipe of synthetic anatomies)."""
    spec = (recipe.get("splits") or {}).get(split) or {}
    return [str(s) for s in spec.get("subjects") or ()]


def add_recipe_lesions(
    recipe: Mapping[str, Any], phantom: Phantom, generator: torch.Generator,
    tissues: Sequence[str] | None = None,
) -> Phantom:
    """``phantom`` with the recipe's random lesions: their number (uniform in
    ``lesions.count = [min, max]``), then the lesions (:func:`pet_dl.phantoms.add_lesions`
    with the recipe's other ``lesions`` entries), both drawn from ``generator``.

    Args:
        tissues: where lesions may go (default: the phantom's :data:`LESION_TISSUES`).
    """
    from pet_dl.phantoms import add_lesions

    lesions = dict(recipe.get("lesions") or {})
    count = lesions.pop("count", [0, 0])
    n = int(torch.randint(int(count[0]), int(count[1]) + 1, (1,), generator=generator))
    if n == 0:
        return phantom
    return add_lesions(phantom, n, generator=generator, tissues=tissues, **lesions)


def simulate_full_dose(
    recipe: Mapping[str, Any],
    phantom: Phantom,
    seed: int,
    generator: torch.Generator,
    geometry: tuple[SinogramGeometry, ImageGeometry] | None = None,
) -> Scan:
    """The full-dose acquisition of ``phantom`` with the recipe's simulation parameters.

    Args:
        recipe: a validated recipe; its ``simulation`` mapping holds the arguments of
            :func:`pet_dl.simulate.simulate_scan` (``duration_s`` default 300 s).
        phantom: from :func:`phantom_of_seed` (activity Bq/mL, mu 1/mm).
        seed: the phantom seed, recorded in the scan's metadata.
        generator: draws the Poisson noise (advanced by the call).
        geometry: ``(sinogram, image)``; default :func:`recipe_geometry`.

    Returns:
        the :class:`pet_dl.scan.Scan` (prompts ``(*sino)`` counts, calibration in counts
        per (Bq/mL x mm)).
    """
    from pet_dl.scan import AcquisitionMetadata
    from pet_dl.simulate import simulate_scan

    sinogram, image = geometry if geometry is not None else recipe_geometry(recipe)
    sim = dict(recipe.get("simulation") or {})
    duration = float(sim.pop("duration_s", 300.0))
    meta = AcquisitionMetadata(duration_s=duration, phantom=str(recipe["phantom"]), seed=int(seed))
    return simulate_scan(
        phantom.activity, phantom.mu, sinogram, image, duration_s=duration, generator=generator,
        metadata=meta, **sim,
    )


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
    full = simulate_full_dose(recipe, phantom, seed, g, (sinogram, image))
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


def psf_of_recipe(recipe: Mapping[str, Any]) -> float:
    """The PSF FWHM (mm) the recipe simulates with (0: none)."""
    return float((recipe.get("simulation") or {}).get("psf_fwhm_mm", 0.0))


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
) -> list[Path]:
    """Simulate the recipe's splits and write sharded HDF5 files under ``out_dir/<split>/``.

    Returns:
        the written shard paths.
    """
    from tqdm.auto import tqdm

    r = load_recipe(recipe)
    geometry = recipe_geometry(r)
    out = Path(out_dir)
    written: list[Path] = []
    for split in splits or list(r["splits"]):
        seeds = split_seeds(r, split)
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


# What a network sees of the acquisition: datasets read together must agree on these.
SHARED_RECIPE_KEYS = (
    "scanner", "num_rings", "sinogram", "image", "psf_fwhm_mm", "reduction_factors",
    "init_iterations", "init_subsets",
)


def _shared(recipe: Mapping[str, Any], key: str) -> Any:
    """A :data:`SHARED_RECIPE_KEYS` entry of a recipe (the PSF from its simulation)."""
    if key == "psf_fwhm_mm":
        return psf_of_recipe(recipe)
    return recipe.get(key)


def recipes_train_seeds(recipes: Sequence[Mapping[str, Any]]) -> range | list[int] | None:
    """The train seeds of one or more recipes (a ``range`` when they are all the same range).

    None when none of them has a ``train`` split.
    """
    ranges = [split_seeds(r, "train") for r in recipes if "train" in (r.get("splits") or {})]
    if not ranges:
        return None
    if all(r == ranges[0] for r in ranges):
        return ranges[0]
    return sorted({int(s) for r in ranges for s in r})


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
            recipes differ in :data:`SHARED_RECIPE_KEYS`.
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
        for folder, recipe in zip(roots[1:], self.recipes[1:]):
            for key in SHARED_RECIPE_KEYS:
                if _shared(recipe, key) != _shared(self.recipes[0], key):
                    raise ValueError(
                        f"{folder}: recipe {key!r} is {_shared(recipe, key)!r}, {roots[0]}'s is "
                        f"{_shared(self.recipes[0], key)!r}: datasets read together must share it"
                    )
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
