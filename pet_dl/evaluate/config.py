"""Evaluation configs (``configs/evaluate*.yaml``), checkpoints to compare, and a whole run."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from pet_dl.evaluate.data import check_held_out, simulate_eval_set
from pet_dl.evaluate.pipeline import EvalResults, EvalSettings, evaluate
from pet_dl.evaluate.report import write_results

if TYPE_CHECKING:
    from pet_dl.phantoms import Phantom

_CONFIG_KEYS = {
    "recipe", "networks", "factors", "test_phantoms", "realisations", "val_phantoms",
    "val_realisations", "settings", "test_source",
}
#: ``test_source`` kinds: anatomy no network trained on, scored on the recipe's geometry
#: (:mod:`pet_dl.evaluate.external`).
TEST_SOURCES = ("sirf_brain", "acrin")


def load_eval_config(config: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """Read (YAML path) and validate an evaluation config (``configs/evaluate2d.yaml``).

    Keys: ``recipe`` (dataset recipe path), ``networks`` (display name -> checkpoint path,
    ``shipped`` for the shipped model), ``factors`` (1 = full dose), ``test_phantoms``,
    ``realisations``, ``val_phantoms``, ``val_realisations``, ``settings``
    (the fields of :class:`EvalSettings`) and optionally ``test_source: {kind, dir}``: the
    test phantoms are then planes of the SIRF brain (``kind: sirf_brain``) or windows of the
    real ACRIN PET slices (``kind: acrin``) read from ``dir`` (absolute, or relative to
    ``$PET_DL_TEST_DATA``), seeds ``0 .. test_phantoms - 1`` with the recipe's lesions; the
    baselines' parameters are still chosen on the recipe's validation split.

    Returns:
        the config with defaults filled in and ``settings`` an :class:`EvalSettings`.

    Raises:
        ValueError: unknown keys or bad values (the message names them).
    """
    from pet_dl.recipes import read_yaml_mapping

    c = read_yaml_mapping(config, "evaluation config")
    unknown = sorted(set(c) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown evaluation config key(s) {unknown}; valid: {sorted(_CONFIG_KEYS)}")
    if "recipe" not in c:
        raise ValueError("evaluation config needs 'recipe' (a data/*.yaml path)")
    c.setdefault("networks", {})
    c.setdefault("factors", [1, 4, 10, 20, 50, 100])
    c.setdefault("test_phantoms", None)
    c.setdefault("realisations", 3)
    c.setdefault("val_phantoms", 4)
    c.setdefault("val_realisations", 1)
    settings = c.get("settings") or {}
    if not isinstance(settings, EvalSettings):
        settings = dict(settings)
        valid = set(EvalSettings.__dataclass_fields__)
        bad = sorted(set(settings) - valid)
        if bad:
            raise ValueError(f"unknown evaluation setting(s) {bad}; valid: {sorted(valid)}")
        for key in ("osem_iterations", "postfilter_fwhm_mm", "map_betas"):
            if key in settings:
                settings[key] = tuple(settings[key])
        settings = EvalSettings(**settings)
    c["settings"] = settings
    for key in ("realisations", "val_phantoms", "val_realisations"):
        if not isinstance(c[key], int) or c[key] < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {c[key]!r}")
    if c["test_phantoms"] is not None and (not isinstance(c["test_phantoms"], int) or c["test_phantoms"] < 1):
        raise ValueError(f"test_phantoms must be an integer >= 1 (or null: all), got {c['test_phantoms']!r}")
    source = c.setdefault("test_source", None)
    if source is not None and (
        not isinstance(source, Mapping) or set(source) != {"kind", "dir"} or source["kind"] not in TEST_SOURCES
    ):
        raise ValueError(f"test_source must be {{kind: {' | '.join(TEST_SOURCES)}, dir: PATH}}, got {source!r}")
    if source is not None and c["test_phantoms"] is None:
        raise ValueError("test_source needs test_phantoms (how many planes or windows to score)")
    if not isinstance(c["networks"], Mapping):
        raise ValueError("networks must map display names to checkpoint paths")
    return c


def _plain(value: Any) -> Any:
    """JSON-normalised copy (tuples -> lists) for comparing geometry dicts."""
    import json

    return json.loads(json.dumps(value))


def load_networks(
    paths: Mapping[str, str], recipe: Mapping[str, Any], held_out_seeds: Sequence[int]
) -> dict[str, nn.Module]:
    """Load checkpoints and check that each was trained on the recipe's geometry.

    A checkpoint whose metadata lists its training phantom seeds (``train_seeds``, as
    written by :func:`pet_dl.recipes.seeds_to_json`: ``{"start", "stop"}`` or a list)
    is refused when they overlap ``held_out_seeds``.

    Args:
        paths: display name -> ``.safetensors`` path (``"shipped"``: the shipped model).
        recipe: the evaluation recipe.
        held_out_seeds: the test phantom seeds.

    Returns:
        display name -> model in eval mode.

    Raises:
        ValueError: another geometry or PSF, training seeds among ``held_out_seeds``, or
            unreadable ``train_seeds``.
    """
    from pet_dl.geometry import network_geometry_key
    from pet_dl.io.checkpoint import load_checkpoint, shipped_checkpoint
    from pet_dl.models import build_model
    from pet_dl.recipes import psf_of_recipe, recipe_geometry, seeds_from_json

    sinogram, image = recipe_geometry(recipe)
    nets = {}
    for name, path in paths.items():
        loaded = load_checkpoint(shipped_checkpoint() if path == "shipped" else path, builder=build_model)
        meta = loaded.metadata
        for key, want in (("sinogram", sinogram.to_dict()), ("image", image.to_dict())):
            if key in meta and network_geometry_key(_plain(meta[key])) != network_geometry_key(_plain(want)):
                raise ValueError(f"network {name!r} ({path}) was trained on another {key} geometry than the recipe's")
        psf = meta.get("psf_fwhm_mm")
        if psf is not None and not math.isclose(float(psf), psf_of_recipe(recipe), abs_tol=1e-6):
            raise ValueError(f"network {name!r} was trained with PSF {psf} mm, the recipe has {psf_of_recipe(recipe)} mm")
        if "train_seeds" in meta:
            try:
                train = seeds_from_json(meta["train_seeds"])
            except ValueError as err:
                raise ValueError(f"network {name!r} ({path}): bad train_seeds metadata: {err}") from None
            check_held_out(held_out_seeds, {f"{name} training": train})
        nets[name] = loaded.model.eval()
    return nets


def external_source_phantoms(
    source: Mapping[str, str], recipe: Mapping[str, Any]
) -> Callable[[int], Phantom]:
    """``seed -> Phantom`` of a config's ``test_source`` (:func:`load_eval_config`).

    ``dir`` is used as given when it is a folder; otherwise a relative ``dir`` is read under
    ``$PET_DL_TEST_DATA``.

    Raises:
        ValueError: ``dir`` is not a folder either way.
    """
    from pathlib import Path

    from pet_dl.evaluate.external import acrin_slice_phantoms, sirf_brain_phantoms

    folder = Path(source["dir"])
    if not folder.is_dir() and not folder.is_absolute() and os.environ.get("PET_DL_TEST_DATA"):
        folder = Path(os.environ["PET_DL_TEST_DATA"]) / folder
    if not folder.is_dir():
        raise ValueError(f"test_source dir {folder} is not a folder (set PET_DL_TEST_DATA or give an absolute path)")
    make = sirf_brain_phantoms if source["kind"] == "sirf_brain" else acrin_slice_phantoms
    return make(folder, recipe)


def run_config(
    config: Mapping[str, Any] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    test_phantoms: int | None = None,
    realisations: int | None = None,
    val_phantoms: int | None = None,
    progress: bool = False,
    classical: bool = True,
    networks: bool = True,
    paired_reference: tuple[str, float | None] | None = None,
) -> EvalResults:
    """Evaluate as ``config`` says and write the outputs (:func:`write_results`) to ``out_dir``.

    The ``test_phantoms`` / ``realisations`` / ``val_phantoms`` arguments override the
    config; ``classical`` / ``networks`` False skip those methods (merge runs with
    :func:`pet_dl.evaluate.merge_results`); ``paired_reference`` is the reference of the
    paired NRMSE column (:func:`pet_dl.evaluate.uncertainty_markdown`).

    Raises:
        ValueError: a bad config, a missing ``out_dir``, nothing to evaluate, or test
            phantoms that overlap the training or validation phantoms.
    """
    from pathlib import Path

    from pet_dl.recipes import load_recipe, split_seeds

    c = load_eval_config(config)
    out = Path(out_dir)
    if not out.is_dir():
        raise ValueError(f"output folder {out} does not exist")
    if not classical and not (networks and c["networks"]):
        raise ValueError("nothing to evaluate: no classical baselines and no networks")
    recipe = load_recipe(c["recipe"])
    n_test = test_phantoms or c["test_phantoms"]
    n_val = val_phantoms or c["val_phantoms"]
    n_real = realisations or c["realisations"]
    val_seeds = list(split_seeds(recipe, "val"))[:n_val]
    source = c["test_source"]
    if source is None:
        test_seeds = list(split_seeds(recipe, "test"))[:n_test]
        check_held_out(test_seeds, {"train": split_seeds(recipe, "train"), "validation": val_seeds})
        phantom_of = None
    else:  # external anatomy: the seeds only draw planes or windows and lesions
        test_seeds = list(range(n_test))
        phantom_of = external_source_phantoms(source, recipe)
    nets = load_networks(c["networks"], recipe, [] if source else test_seeds) if networks else {}
    val = simulate_eval_set(recipe, val_seeds, c["val_realisations"], c["factors"], progress) if classical else None
    test = simulate_eval_set(recipe, test_seeds, n_real, c["factors"], progress, phantom_of=phantom_of)
    results = evaluate(val, test, nets, c["settings"], progress, classical=classical)
    what = "test phantoms" if source is None else f"{source['kind']} test cases"
    header = (
        f"{results.num_phantoms} {what} (seeds {test_seeds[0]}..{test_seeds[-1]}) x "
        f"{results.realisations} noise realisations; selection on {len(val_seeds)} validation "
        f"phantoms x {c['val_realisations']} realisation(s). "
        + ("Mean ± std over realisations.\n\n" if results.realisations >= 2 else "Means over the phantoms.\n\n")
    )
    write_results(results, out, header, paired_reference)
    return results
