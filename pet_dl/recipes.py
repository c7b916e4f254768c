"""Dataset recipes (``data/*.yaml``): reading and checking them, splits, seeds, subjects, phantoms.

A *recipe* fixes the scanner and sinogram layout, the image grid, the phantom family, the
simulation parameters, the dose reduction factors and, per split, the range of phantom
seeds (and, for real anatomies, the subjects). Splits use disjoint seed ranges and
disjoint subjects, so test phantoms never appear in training (checked by
:func:`load_recipe`). A seed gives the same phantom everywhere (:func:`phantom_of_seed`):
training shards, on-the-fly training data and the evaluation. Simulating a recipe and
writing its shards is :mod:`pet_dl.datasets`.

>>> recipe = load_recipe({"scanner": "mmr", "image": {"shape": [64, 64, 1], "voxel_size_mm": [4, 4, 4]},
...                       "phantom": "brain", "splits": {"train": {"seeds": [0, 100]},
...                                                      "test": {"seeds": [1000, 1010]}}})
>>> split_seeds(recipe, "test")
range(1000, 1010)
>>> seeds_to_json(split_seeds(recipe, "train"))
{'start': 0, 'stop': 100}
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pet_dl.geometry import ImageGeometry, SinogramGeometry
    from pet_dl.phantoms import Phantom
    from pet_dl.scan import Scan

SPLITS = ("train", "val", "test")
_RECIPE_KEYS = {
    "name", "scanner", "num_rings", "sinogram", "image", "phantom", "lesions", "simulation",
    "reduction_factors", "init_iterations", "init_subsets", "splits", "shard_size", "texture",
    "reconstructed", "body_mean_bqml", "uptake", "cold_regions",
}
# The generator of a phantom's texture is seeded with ``seed + TEXTURE_SEED_OFFSET``: a stream
# of its own, so a recipe with ``texture`` gives the same phantoms and lesions as without.
TEXTURE_SEED_OFFSET = 1 << 40
#: The "clinical" reconstruction that makes a phantom's activity PET-like
#: (:func:`reconstructed_activity`), fixed from the ACRIN slices' description (a scanner's
#: OSEM at 4.07 mm pixels), not tuned: iterations x subsets, post-filter FWHM mm, pixel mm.
CLINICAL_OSEM = (3, 7, 5.0, 4.07)
#: Counts of that scan, a fraction of the recipe's full dose drawn log-uniform per seed: a
#: clinical whole-body bed (2-3 min, FLT or FDG in the body) has 1/10 to 1 of the counts
#: per slice of a 10-min brain scan, so the truth's noise texture ranges from faint to coarse.
CLINICAL_DOSE = (0.1, 1.0)
RECONSTRUCTED_NOISE_SEED = 7_000_001  # the truth's own scan: noise independent of the evaluated scans
BODY_MEAN_SEED_OFFSET = 3_000_017  # the draw of ``body_mean_bqml``: a stream of its own
COLD_REGION_SEED_OFFSET = 5_000_011  # the draw of ``cold_regions``: a stream of its own
#: Body outline of a PET image used as the activity (a reconstructed truth here, an ACRIN
#: slice in :mod:`pet_dl.evaluate.external`): above 3 % of its maximum (FLT: lungs included).
PET_IMAGE_BODY_LEVEL = 0.03


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
    _check_texture(r.get("texture"))
    _check_reconstructed(r.get("reconstructed"))
    _check_cold_regions(r.get("cold_regions"))
    uptake = r.get("uptake")
    if uptake is not None and not (
        isinstance(uptake, Mapping) and uptake
        and all(isinstance(k, str) and isinstance(v, (int, float)) and v > 0 for k, v in uptake.items())
    ):
        raise ValueError(f"uptake must map tissue names to positive factors, e.g. {{marrow: 6}}, got {uptake!r}")
    body_mean = r.get("body_mean_bqml")
    if body_mean is not None and not (
        isinstance(body_mean, Sequence) and len(body_mean) == 2 and 0 < float(body_mean[0]) <= float(body_mean[1])
    ):
        raise ValueError(f"body_mean_bqml must be [low, high] Bq/mL with 0 < low <= high, got {body_mean!r}")
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


def _check_reconstructed(spec: Any) -> None:
    """Raise ValueError unless ``spec`` is None or ``{postfilter_mm: >= 0, dose: [lo, hi]}`` (both optional)."""
    if spec is None:
        return
    if not isinstance(spec, Mapping) or set(spec) - {"postfilter_mm", "dose"}:
        raise ValueError(f"reconstructed must be {{postfilter_mm: mm, dose: [low, high]}}, got {spec!r}")
    if not float(spec.get("postfilter_mm", 0.0)) >= 0:
        raise ValueError(f"reconstructed postfilter_mm must be >= 0, got {spec['postfilter_mm']!r}")
    dose = spec.get("dose", CLINICAL_DOSE)
    if not (isinstance(dose, Sequence) and len(dose) == 2 and 0 < float(dose[0]) <= float(dose[1]) <= 1):
        raise ValueError(f"reconstructed dose must be [low, high] in (0, 1], got {dose!r}")


def _check_cold_regions(spec: Any) -> None:
    """``cold_regions: {count: [min, max], diameter_range_mm: [lo, hi], activity_fraction: [lo, hi],
    lung_probability: p}`` (all but ``count`` optional; :func:`pet_dl.phantoms.add_cold_regions`)."""
    if spec is None:
        return
    keys = {"count", "diameter_range_mm", "activity_fraction", "lung_probability"}
    if not isinstance(spec, Mapping) or "count" not in spec or set(spec) - keys:
        raise ValueError(f"cold_regions must be {{count: [min, max]}} with optional {sorted(keys - {'count'})}, got {spec!r}")
    count = spec["count"]
    if not (isinstance(count, Sequence) and len(count) == 2 and 0 <= int(count[0]) <= int(count[1])):
        raise ValueError(f"cold_regions count must be [min, max] with 0 <= min <= max, got {count!r}")
    for key in ("diameter_range_mm", "activity_fraction"):
        if key in spec and not (isinstance(spec[key], Sequence) and len(spec[key]) == 2):
            raise ValueError(f"cold_regions {key} must be [low, high], got {spec[key]!r}")
    p = spec.get("lung_probability", 0.5)
    if not (isinstance(p, (int, float)) and 0 <= p <= 1):
        raise ValueError(f"cold_regions lung_probability must be in [0, 1], got {p!r}")


def _check_texture(texture: Any) -> None:
    """Raise ValueError unless ``texture`` is None or ``{amplitude: [lo, hi], correlation_mm: [lo, hi]}``
    (optionally ``blur_fwhm_mm: [lo, hi]``) with ``0 <= amplitude lo <= hi <= 1``,
    ``0 < correlation lo <= hi`` and ``0 <= blur lo <= hi``."""
    if texture is None:
        return
    keys = set(texture) if isinstance(texture, Mapping) else set()
    if not {"amplitude", "correlation_mm"} <= keys <= {"amplitude", "correlation_mm", "blur_fwhm_mm"}:
        raise ValueError("texture must be {amplitude: [low, high], correlation_mm: [low, high]} "
                         "and optionally blur_fwhm_mm: [low, high]")
    for key in sorted(keys):
        v = texture[key]
        if not (isinstance(v, Sequence) and len(v) == 2 and all(isinstance(a, (int, float)) for a in v)):
            raise ValueError(f"texture {key} must be [low, high], got {v!r}")
    (alo, ahi), (clo, chi) = texture["amplitude"], texture["correlation_mm"]
    if not 0 <= alo <= ahi <= 1:
        raise ValueError(f"texture amplitude must lie in [0, 1] with low <= high, got {[alo, ahi]}")
    if not 0 < clo <= chi:
        raise ValueError(f"texture correlation_mm must be > 0 with low <= high, got {[clo, chi]}")
    blo, bhi = texture.get("blur_fwhm_mm", (0.0, 0.0))
    if not 0 <= blo <= bhi:
        raise ValueError(f"texture blur_fwhm_mm must be >= 0 with low <= high, got {[blo, bhi]}")


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
    """The recipe's phantom for ``seed``: ``make_phantom``, the recipe's ``texture`` if it
    has one, then the recipe's random lesions.

    Deterministic: one generator seeded with ``seed`` draws the phantom, then the number
    of lesions (uniform in the recipe's ``lesions.count = [min, max]``), then the lesions.
    ``texture: {amplitude: [lo, hi], correlation_mm: [lo, hi], blur_fwhm_mm: [lo, hi]}``
    multiplies the activity by a fine-scale random field and (optionally) softens its edges
    (:func:`pet_dl.phantoms.texture.add_texture`), drawn from a
    generator of its own (seed ``seed + TEXTURE_SEED_OFFSET``), before the lesions: the
    same seed gives the same anatomy and lesions with or without it.
    ``uptake: {tissue: factor, ...}`` multiplies the activity of those tissues
    (:func:`with_uptake`: another tracer's uptake pattern on the same anatomy, e.g. FLT's hot
    marrow), after the texture and before the lesions.
    ``reconstructed: {postfilter_mm: mm, dose: [lo, hi]}`` then replaces the activity by a
    reconstructed PET image of it (:func:`reconstructed_activity`: a PET-like truth with a
    scanner's resolution and noise texture), and the lesions go into its body.
    ``cold_regions: {count: [min, max], ...}`` inserts that many regions of (almost) no
    activity (:func:`pet_dl.phantoms.add_cold_regions`, its own generator, seed ``seed +
    COLD_REGION_SEED_OFFSET``) just before the lesions, which keep out of them.
    ``body_mean_bqml: [lo, hi]`` last scales the activity to a mean over the body drawn
    log-uniform from that range (its own generator, seed ``seed + BODY_MEAN_SEED_OFFSET``;
    :func:`scaled_to_body_mean`): the count density of a body at a clinical activity
    concentration, whatever the phantom generator's own scale.

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
    phantom = phantoms.make_phantom(recipe["phantom"], image, g, **kwargs)
    texture = recipe.get("texture")
    if texture:
        from pet_dl.phantoms.texture import add_texture

        g_texture = torch.Generator().manual_seed(int(seed) + TEXTURE_SEED_OFFSET)
        phantom = add_texture(phantom, g_texture, tuple(texture["amplitude"]), tuple(texture["correlation_mm"]),
                              tuple(texture.get("blur_fwhm_mm", (0.0, 0.0))))
    if recipe.get("uptake"):
        phantom = with_uptake(phantom, recipe["uptake"])
    spec = recipe.get("reconstructed")
    if spec is not None:
        phantom = reconstructed_activity(recipe, phantom, seed, spec.get("postfilter_mm"), spec.get("dose"))
        phantom = add_recipe_cold_regions(recipe, phantom, seed, tissues=("body",))
        phantom = add_recipe_lesions(recipe, phantom, g, tissues=("body",))
    else:
        phantom = add_recipe_cold_regions(recipe, phantom, seed)
        phantom = add_recipe_lesions(recipe, phantom, g)
    body_mean = recipe.get("body_mean_bqml")
    if body_mean is not None:
        import math

        g_mean = torch.Generator().manual_seed(int(seed) + BODY_MEAN_SEED_OFFSET)
        lo, hi = (math.log(float(v)) for v in body_mean)
        phantom = scaled_to_body_mean(phantom, math.exp(lo + (hi - lo) * float(torch.rand((), generator=g_mean))))
    return phantom


def with_uptake(phantom: Phantom, factors: Mapping[str, float]) -> Phantom:
    """A copy of ``phantom`` with the activity of each named tissue multiplied by its factor
    (another tracer's uptake on the same anatomy; lesions already in the image are multiplied
    with the tissue they sit in).

    Raises:
        ValueError: a name that is not one of the phantom's tissues.
    """
    unknown = sorted(set(factors) - set(phantom.tissues))
    if unknown:
        raise ValueError(f"uptake: phantom {phantom.name!r} has no tissue(s) {unknown}; it has {sorted(phantom.tissues)}")
    out = phantom.copy()
    activity = out.activity.clone()
    for name, factor in factors.items():
        activity[out.tissue == out.tissues[name]] *= float(factor)
    out.activity = activity
    return out


def scaled_to_body_mean(phantom: Phantom, mean_bqml: float) -> Phantom:
    """A copy of ``phantom`` with its activity scaled so that its mean over the body is
    ``mean_bqml`` Bq/mL (tissue ``body`` if the phantom has one, else every voxel of nonzero
    tissue; lesions included): how the ACRIN slices are put on an absolute scale
    (:data:`pet_dl.evaluate.external.ACRIN_MEAN_BQML`).

    Raises:
        ValueError: the body is empty or has no activity.
    """
    out = phantom.copy()
    body = out.tissue == out.tissues["body"] if "body" in out.tissues else out.tissue > 0
    current = float(out.activity[body].mean()) if bool(body.any()) else 0.0
    if not current > 0:
        raise ValueError(f"phantom {phantom.name!r} has no activity in its body to scale")
    out.activity = out.activity * (mean_bqml / current)
    return out


def full_dose_scan(
    recipe: Mapping[str, Any], phantom: Phantom, seed: int, generator: torch.Generator,
    geometry: tuple[SinogramGeometry, ImageGeometry] | None = None,
) -> Scan:
    """The full-dose acquisition of ``phantom`` with the recipe's simulation parameters
    (:func:`pet_dl.simulate.simulate_scan`; ``simulation.duration_s`` default 300 s).

    Args:
        recipe: a validated recipe.
        phantom: activity Bq/mL, mu 1/mm on the recipe's image grid.
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


def reconstructed_activity(
    recipe: Mapping[str, Any], phantom: Phantom, seed: int,
    postfilter_mm: float | None = None, dose_range: Sequence[float] | None = None,
) -> Phantom:
    """A PET-like truth: a reconstructed PET image of ``phantom`` as the activity (no lesions).

    A real PET image used as the activity (the ACRIN slices of :mod:`pet_dl.evaluate.external`)
    carries a scanner's resolution, its noise texture and 4 mm pixels resampled onto the
    grid, which no phantom generator draws. Here ``phantom`` is scanned at a fraction of the
    recipe's full dose drawn log-uniform from ``dose_range`` (noise seed ``seed +
    RECONSTRUCTED_NOISE_SEED``: independent of any scan simulated from the result),
    reconstructed as :data:`CLINICAL_OSEM` says (OSEM, a Gaussian post-filter, box-resampled
    to square pixels), and that image, restricted to the object, is resampled back onto the
    recipe's grid as the activity; mu stays the phantom's (through the same pixels).

    Args:
        recipe: a validated recipe (its scanner, simulation and grid).
        phantom: the anatomy on the recipe's grid.
        seed: the phantom seed.
        postfilter_mm: the reconstruction's post-filter FWHM, mm (default
            :data:`CLINICAL_OSEM`'s; 0: none, the sharpest noise texture).
        dose_range: ``(lo, hi)`` in (0, 1], the scan's fraction of the full dose (default
            :data:`CLINICAL_DOSE`; lower: a noisier truth).

    Returns:
        a :class:`Phantom` named ``"reconstructed_<phantom>"`` without lesions, activity Bq/mL
        and mu 1/mm on the recipe's grid; tissues ``outside`` and ``body`` (above 3 % of its
        maximum).
    """
    import math

    from pet_dl.geometry import ImageGeometry
    from pet_dl.geometry.resample import resample_to_grid
    from pet_dl.phantoms import image_phantom
    from pet_dl.recon import osem
    from pet_dl.recon.filters import gaussian_postfilter
    from pet_dl.simulate import thin_scan

    sinogram, image = recipe_geometry(recipe)
    iterations, subsets, fwhm_mm, pixel_mm = CLINICAL_OSEM
    if postfilter_mm is not None:
        fwhm_mm = float(postfilter_mm)
    extent = [n * v for n, v in zip(image.shape, image.voxel_size_mm)]
    pixels = ImageGeometry.centered(
        (max(1, round(extent[0] / pixel_mm)), max(1, round(extent[1] / pixel_mm)), image.shape[2]),
        (pixel_mm, pixel_mm, image.voxel_size_mm[2]),
    )
    g = torch.Generator().manual_seed(int(seed) + RECONSTRUCTED_NOISE_SEED)
    lo, hi = (math.log(float(v)) for v in (dose_range or CLINICAL_DOSE))
    fraction = math.exp(lo + (hi - lo) * float(torch.rand((), generator=g)))
    scan = thin_scan(full_dose_scan(recipe, phantom, int(seed), g, (sinogram, image)), fraction, g)
    with torch.no_grad():
        x = osem(scan.forward_model(), scan.prompts.float(), iterations, subsets)
        x = gaussian_postfilter(x[None], image, fwhm_mm)[0]
    inside = (phantom.activity > 0) | (phantom.mu > 0)
    activity = torch.where(inside, x.clamp_min(0), torch.zeros_like(x))
    return image_phantom(
        resample_to_grid(activity, image, pixels), resample_to_grid(phantom.mu.float(), image, pixels),
        pixels, image, name=f"reconstructed_{recipe['phantom']}",
        tissue_levels={"outside": 0.0, "body": PET_IMAGE_BODY_LEVEL},
    )


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


def add_recipe_cold_regions(
    recipe: Mapping[str, Any], phantom: Phantom, seed: int, tissues: Sequence[str] | None = None,
) -> Phantom:
    """``phantom`` with the recipe's ``cold_regions`` (none without that key): their number
    uniform in ``count = [min, max]``, then the regions (:func:`pet_dl.phantoms.add_cold_regions`
    with the other entries), all drawn from a generator seeded with ``seed +``
    :data:`COLD_REGION_SEED_OFFSET`.

    Args:
        tissues: where regions may go (default: any tissue with activity that is not bone).
    """
    spec = dict(recipe.get("cold_regions") or {})
    if not spec:
        return phantom
    from pet_dl.phantoms import add_cold_regions

    g = torch.Generator().manual_seed(int(seed) + COLD_REGION_SEED_OFFSET)
    count = spec.pop("count")
    n = int(torch.randint(int(count[0]), int(count[1]) + 1, (1,), generator=g))
    if "diameter_range_mm" in spec:
        spec["diameter_range_mm"] = tuple(float(v) for v in spec["diameter_range_mm"])
    if "activity_fraction" in spec:
        spec["activity_fraction"] = tuple(float(v) for v in spec["activity_fraction"])
    return add_cold_regions(phantom, n, generator=g, tissues=tissues, **spec)


def psf_of_recipe(recipe: Mapping[str, Any]) -> float:
    """The PSF FWHM (mm) the recipe simulates with (0: none)."""
    return float((recipe.get("simulation") or {}).get("psf_fwhm_mm", 0.0))


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


#: What datasets read together in groups of one grid each may differ in (a whole body on the
#: grid the product grows for it, beside the model's own grid): :class:`pet_dl.datasets.GridGroups`.
GRID_RECIPE_KEYS = ("sinogram", "image")


def check_shared_keys(
    recipes: Sequence[Mapping[str, Any]], sources: Sequence[str], keys: Sequence[str] = SHARED_RECIPE_KEYS
) -> None:
    """Check that recipes read together agree on :data:`SHARED_RECIPE_KEYS` (or ``keys``).

    Args:
        recipes: the recipes, the first one the reference.
        sources: where each recipe came from (a dataset folder), for the message.
        keys: the keys to compare.

    Raises:
        ValueError: naming the first key on which a recipe differs from the first one.
    """
    for source, recipe in zip(sources[1:], recipes[1:]):
        for key in keys:
            if _shared(recipe, key) != _shared(recipes[0], key):
                raise ValueError(
                    f"{source}: recipe {key!r} is {_shared(recipe, key)!r}, {sources[0]}'s is "
                    f"{_shared(recipes[0], key)!r}: datasets read together must share it"
                )
