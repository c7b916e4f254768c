"""Export a trained network to a safetensors checkpoint (``pet_dl.io.checkpoint``).

``python -m pet_dl.training.export LIGHTNING.ckpt OUT.safetensors`` or the
:class:`ExportCallback` (``trainer.callbacks`` in a config) at the end of ``fit``.
``--flip-ensemble AXIS ...`` switches on the parameter-free flip ensemble of the exported
network (:func:`with_network_options`; the input may then also be a ``.safetensors``);
``--float16`` stores the weights as float16 (half the file, loaded into float32
parameters; the shipped model scores the same to every printed digit, docs/training.md).

``--model-version NAME`` records the weights' name (``metadata["model_version"]``; the
:class:`ExportCallback` uses the run folder's name).

Besides the geometry, the metadata records ``train_seeds``: the recipe's train phantom
seed range as :func:`pet_dl.recipes.seeds_to_json` writes it (``{"start", "stop"}``),
so that ``python -m pet_dl evaluate`` refuses a test set that overlaps it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from pet_dl.training.module import ReconModule


def train_seeds_json(recipes: list[Mapping[str, Any]]) -> dict[str, int] | list[int] | None:
    """The recipes' train seeds (their union) as JSON (:func:`pet_dl.recipes.seeds_to_json`); None without any."""
    from pet_dl.recipes import recipes_train_seeds, seeds_to_json

    seeds = recipes_train_seeds(recipes)
    return None if seeds is None else seeds_to_json(seeds)


def _datamodule_train_seeds(datamodule: Any) -> dict[str, int] | list[int] | None:
    """From the recipe(s) of a set-up :class:`PETDataModule`'s train dataset, if any."""
    datasets = getattr(datamodule, "datasets", None)
    train = datasets.get("train") if isinstance(datasets, Mapping) else None
    recipes = getattr(train, "recipes", None) or [getattr(train, "recipe", None)]
    if not all(isinstance(r, Mapping) for r in recipes):
        return None
    return train_seeds_json(recipes)


def _hparams_train_seeds(hparams: Mapping[str, Any]) -> dict[str, int] | list[int] | None:
    """From a data module's saved hyper-parameters: its ``recipe`` file or ``data_dir`` shards."""
    from pet_dl.datasets import open_paired_scans
    from pet_dl.recipes import load_recipe

    try:
        if hparams.get("recipe"):
            return train_seeds_json([load_recipe(hparams["recipe"])])
        if hparams.get("data_dir"):
            return train_seeds_json(open_paired_scans(hparams["data_dir"], "train").recipes)
    except (OSError, ValueError, KeyError) as err:
        warnings.warn(f"cannot read the training recipe for train_seeds: {err}", stacklevel=3)
    return None


def _checkpoint_contents(
    metadata: Mapping[str, Any],
    network: Mapping[str, Any],
    *,
    where: str,
    training_command: str,
    global_step: int,
    train_seeds: Any,
    find_train_seeds: Callable[[], Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``(config, metadata)`` to export, from the training metadata and network config.

    ``train_seeds`` (given) wins over ``metadata["train_seeds"]``, which wins over
    ``find_train_seeds()``; when none is known the metadata has none and a warning says so.

    Raises:
        ValueError: no training geometry in ``metadata``, or malformed train seeds.
    """
    from pet_dl.recipes import seeds_from_json, seeds_to_json

    meta = dict(metadata)
    if not meta.get("image"):
        raise ValueError(f"{where} has no training geometry (train it with a PETDataModule first)")
    meta["training_command"] = training_command or meta.get("training_command", "")
    meta["global_step"] = int(global_step)
    if train_seeds is None:
        train_seeds = meta.get("train_seeds")
    if train_seeds is None:
        train_seeds = find_train_seeds()
    if train_seeds is not None:
        if isinstance(train_seeds, (Mapping, list)):
            train_seeds = seeds_from_json(train_seeds)
        meta["train_seeds"] = seeds_to_json(train_seeds)
    else:
        meta.pop("train_seeds", None)
        warnings.warn(
            f"{where}: the training phantom seeds are unknown, so the checkpoint carries no "
            "train_seeds and `python -m pet_dl evaluate` cannot check that test phantoms are "
            "held out (give train_seeds / --train-seeds START STOP)",
            stacklevel=3,
        )
    config = dict(network)
    config.setdefault("init_iterations", meta.get("init_iterations", 10))
    config.setdefault("init_subsets", meta.get("init_subsets", 1))
    return config, meta


def export_module(
    module: ReconModule,
    path: str | Path,
    training_command: str = "",
    train_seeds: range | Mapping[str, int] | list[int] | None = None,
    model_version: str | None = None,
) -> Path:
    """Write ``module``'s network, resolved config and training geometry to ``path``.

    Args:
        module: a trained module (its ``geometry_metadata`` is set by ``fit``).
        path: output ``.safetensors`` file.
        training_command: recorded in the metadata.
        train_seeds: the training phantom seeds (a ``range``, ``{"start", "stop"}`` or a
            list); default: ``geometry_metadata["train_seeds"]``, else the recipe of the
            train dataset of the module's trainer's data module.
        model_version: the weights' name, recorded in the metadata (``None``: none).

    Returns:
        ``path``.

    Raises:
        ValueError: the module has no training geometry, or malformed ``train_seeds``.
    """
    from pet_dl.io.checkpoint import save_checkpoint

    def find_train_seeds() -> Any:
        try:
            return _datamodule_train_seeds(module.trainer.datamodule)
        except RuntimeError:  # not attached to a Trainer
            return None

    config, meta = _checkpoint_contents(
        module.geometry_metadata, module.network_config, where="the module",
        training_command=training_command, global_step=int(getattr(module, "global_step", 0)),
        train_seeds=train_seeds, find_train_seeds=find_train_seeds,
    )
    module.net.eval()
    return save_checkpoint(path, module.net, config, meta, model_version=model_version)


def export_lightning_checkpoint(
    ckpt: str | Path,
    out: str | Path,
    training_command: str = "",
    train_seeds: range | Mapping[str, int] | list[int] | None = None,
    network_options: Mapping[str, Any] | None = None,
    weights_dtype: torch.dtype | None = None,
    model_version: str | None = None,
) -> Path:
    """Export a Lightning ``.ckpt`` of a :class:`ReconModule` without unpickling code.

    The checkpoint is read with ``torch.load(weights_only=True)`` through
    :func:`pet_dl.io.checkpoint.convert_lightning_checkpoint`; the network config comes
    from its hyper-parameters and the training geometry from ``pet_dl_metadata``. The
    training seeds come from ``train_seeds``, else ``pet_dl_metadata``, else the recipe
    named by the saved data-module hyper-parameters (``recipe`` or ``data_dir``, read
    relative to the working folder). ``network_options`` are set in the exported network
    config (parameter-free ones such as ``flip_ensemble``; the weights must still fit);
    ``weights_dtype`` and ``model_version`` as in :func:`pet_dl.io.checkpoint.save_checkpoint`.

    Returns:
        ``out``.

    Raises:
        ValueError: no training geometry in the checkpoint, or malformed ``train_seeds``.
    """
    import torch

    from pet_dl.io.checkpoint import convert_lightning_checkpoint
    from pet_dl.models import build_model

    ckpt_data = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    config, meta = _checkpoint_contents(
        ckpt_data.get("pet_dl_metadata") or {}, ckpt_data["hyper_parameters"]["network"],
        where=str(ckpt), training_command=training_command,
        global_step=int(ckpt_data.get("global_step", 0)), train_seeds=train_seeds,
        find_train_seeds=lambda: _hparams_train_seeds(ckpt_data.get("datamodule_hyper_parameters") or {}),
    )
    config.update(network_options or {})
    if model_version is not None:
        meta["model_version"] = model_version
    return convert_lightning_checkpoint(
        ckpt, out, config=config, metadata=meta, prefix="net.", builder=build_model,
        weights_dtype=weights_dtype,
    )


def with_network_options(
    src: str | Path,
    out: str | Path,
    options: Mapping[str, Any],
    training_command: str = "",
    weights_dtype: torch.dtype | None = None,
    model_version: str | None = None,
) -> Path:
    """Copy a pet_dl ``.safetensors`` checkpoint with network options changed, weights kept
    (:meth:`pet_dl.io.checkpoint.LoadedModel.with_network_options`).

    Args:
        src: input checkpoint; out: output file (may be ``src``).
        options: config entries to set, e.g. ``{"flip_ensemble": [0]}`` (may be empty).
        training_command: appended to the recorded training command (``"; "``-joined).
        weights_dtype: store the weights in this dtype (``torch.float16``: half the file,
            :func:`pet_dl.io.checkpoint.save_checkpoint`); ``None``: float32.
        model_version: a new model version for the copy; ``None``: the source's.

    Returns:
        ``out``.

    Raises:
        pet_dl.io.checkpoint.CheckpointError: unreadable input, or the options change
            the parameters.
        ValueError: an option the network does not take, or a bad value.
    """
    from pet_dl.io.checkpoint import load_checkpoint, save_checkpoint
    from pet_dl.models import build_model

    loaded = load_checkpoint(src, builder=build_model).with_network_options(options)
    meta = loaded.metadata
    if training_command:
        meta["training_command"] = "; ".join(c for c in (meta.get("training_command"), training_command) if c)
    meta.pop("weights_dtype", None)  # set again by save_checkpoint when still stored so
    return save_checkpoint(out, loaded.model, loaded.config, meta, weights_dtype, model_version)


def interpolated_weights(
    base: str | Path,
    tuned: str | Path,
    out: str | Path,
    alpha: float,
    training_command: str = "",
    model_version: str | None = None,
) -> Path:
    """A checkpoint whose weights lie on the line from ``base``'s to ``tuned``'s:
    ``base + alpha * (tuned - base)``, parameter by parameter (WiSE-FT's weight-space
    ensemble, Wortsman et al., CVPR 2022: a fine-tuned model interpolated towards the model
    it was fine-tuned from keeps much of the gain on the new data and loses less away
    from it).

    Both must be pet_dl ``.safetensors`` of one network (the same config, ``tuned``
    trained from ``base``'s weights); the result has ``tuned``'s config and metadata.

    Args:
        base, tuned: input checkpoints; out: output file.
        alpha: the step from ``base`` towards ``tuned``, in [0, 1] (0: ``base``, 1: ``tuned``).
        training_command: appended to ``tuned``'s recorded training command.
        model_version: the result's model version; ``None``: ``tuned``'s.

    Returns:
        ``out``.

    Raises:
        ValueError: ``alpha`` outside [0, 1], or networks of another config or parameters.
        pet_dl.io.checkpoint.CheckpointError: an unreadable input.
    """
    from pet_dl.io.checkpoint import load_checkpoint, save_checkpoint
    from pet_dl.models import build_model

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the interpolation step must be in [0, 1], got {alpha}")
    a = load_checkpoint(base, builder=build_model)
    b = load_checkpoint(tuned, builder=build_model)
    if a.config != b.config:
        raise ValueError(f"{base} and {tuned} are networks of different configs: cannot interpolate them")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        raise ValueError(f"{base} and {tuned} have different parameters: cannot interpolate them")
    mixed = {k: (sa[k] + alpha * (sb[k] - sa[k])).to(sb[k].dtype) if sb[k].is_floating_point() else sb[k]
             for k in sb}
    b.model.load_state_dict(mixed)
    meta = b.metadata
    if training_command:
        meta["training_command"] = "; ".join(c for c in (meta.get("training_command"), training_command) if c)
    meta.pop("weights_dtype", None)
    return save_checkpoint(out, b.model, b.config, meta, None, model_version)


class ExportCallback(pl.Callback):
    """Export the network to ``path`` (safetensors) when ``fit`` ends (rank 0 only).

    Args:
        path: output ``.safetensors`` file; ``None``: ``pet_dl_2d.safetensors`` in the
            trainer's ``default_root_dir`` (the run folder).
        model_version: recorded in the metadata; ``None``: the run folder's name (e.g.
            ``brain2d_mix_dense2``).
    """

    def __init__(self, path: str | None = None, model_version: str | None = None) -> None:
        self.path = path
        self.model_version = model_version

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and isinstance(pl_module, ReconModule):
            path = Path(self.path or Path(trainer.default_root_dir) / "pet_dl_2d.safetensors")
            path.parent.mkdir(parents=True, exist_ok=True)
            version = self.model_version or Path(trainer.default_root_dir).resolve().name
            export_module(pl_module, path, "python " + shlex.join(sys.argv), model_version=version)


def _anchor_options(path: str) -> dict[str, Any]:
    """The ``anchor`` network option from a YAML file, checked (:class:`~pet_dl.models.anchor.LowFrequencyAnchor`)."""
    import yaml

    from pet_dl.models.anchor import LowFrequencyAnchor

    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: an anchor file is a mapping (sigma_voxels, osem, subsets)")
    anchor = LowFrequencyAnchor.from_config(config)
    return {"sigma_voxels": anchor.sigma_voxels, "osem": [list(r) for r in anchor.osem], "subsets": anchor.subsets}


def _blend_options(path: str) -> dict[str, Any]:
    """The ``osem_blend`` network option from a YAML file, checked (:class:`~pet_dl.models.anchor.OSEMBlend`)."""
    import yaml

    from pet_dl.models.anchor import OSEMBlend

    with open(path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a blend file is a mapping (rows, subsets)")
    return OSEMBlend.from_config(config).config()


def main(argv: list[str] | None = None) -> int:
    """``python -m pet_dl.training.export CKPT OUT [--train-seeds START STOP] [--flip-ensemble AXIS ...] [--anchor YAML] [--final-em N] [--blend YAML] [--float16] [--model-version NAME] [--interpolate-from BASE ALPHA]``.

    Prints the path; a bad input is one ``error:`` line and exit code 2.
    """
    from pet_dl.errors import PetDLError

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("ckpt", help="Lightning checkpoint (.ckpt) of a ReconModule, or a "
                        "pet_dl .safetensors (with --flip-ensemble and/or --float16 only)")
    parser.add_argument("out", help="output .safetensors file")
    parser.add_argument("--training-command", default="", help="recorded in the metadata")
    parser.add_argument(
        "--train-seeds", type=int, nargs=2, default=None, metavar=("START", "STOP"),
        help="training phantom seeds [START, STOP) (default: from the checkpoint's recipe)",
    )
    parser.add_argument(
        "--flip-ensemble", type=int, nargs="+", default=None, metavar="AXIS",
        help="average each UNet's output over flips along these spatial axes (0 = x)",
    )
    parser.add_argument(
        "--anchor", default=None, metavar="YAML",
        help="a low-frequency data anchor (pet_dl.models.anchor): sigma_voxels, osem rows, subsets",
    )
    parser.add_argument(
        "--final-em", type=int, default=None, metavar="N",
        help="end the unrolled network on N plain MLEM updates (UnrolledEM final_em_steps)",
    )
    parser.add_argument(
        "--blend", default=None, metavar="YAML",
        help="mix the output with OSEM of the same scan (pet_dl.models.anchor.OSEMBlend): rows, subsets",
    )
    parser.add_argument("--float16", action="store_true",
                        help="store the weights as float16 (half the file; loaded as float32)")
    parser.add_argument("--model-version", default=None, metavar="NAME",
                        help="the weights' name, recorded in the metadata (default: the input's, if any)")
    parser.add_argument(
        "--interpolate-from", nargs=2, default=None, metavar=("BASE", "ALPHA"),
        help="a .safetensors input only: write BASE + ALPHA * (input - BASE), the input fine-tuned "
             "from BASE's weights (a weight-space ensemble, WiSE-FT)",
    )
    args = parser.parse_args(argv)
    if args.interpolate_from is not None:
        return _interpolate_main(args, argv)
    seeds = None if args.train_seeds is None else range(*args.train_seeds)
    if seeds is not None and (seeds.start < 0 or not seeds):
        parser.error(f"--train-seeds needs 0 <= START < STOP, got {args.train_seeds}")
    from_safetensors = args.ckpt.endswith(".safetensors")
    if from_safetensors and (
        seeds is not None
        or (args.flip_ensemble is None and args.anchor is None and args.final_em is None
            and args.blend is None and not args.float16 and args.model_version is None)
    ):
        parser.error("a .safetensors input takes --flip-ensemble, --anchor, --final-em, --blend, --float16 and/or "
                     "--model-version, "
                     "and no --train-seeds")
    options: dict[str, Any] = {} if args.flip_ensemble is None else {"flip_ensemble": args.flip_ensemble}
    if args.final_em is not None:
        if args.final_em < 0:
            parser.error(f"--final-em needs N >= 0, got {args.final_em}")
        options["final_em_steps"] = args.final_em
    try:
        if args.anchor is not None:
            options["anchor"] = _anchor_options(args.anchor)
        if args.blend is not None:
            options["osem_blend"] = _blend_options(args.blend)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    dtype = torch.float16 if args.float16 else None
    command = args.training_command
    if options or dtype is not None:  # the export changed the network or its storage: record how
        export = "python -m pet_dl.training.export " + shlex.join(argv if argv is not None else sys.argv[1:])
        command = export if from_safetensors else "; ".join(c for c in (command, export) if c)
    try:
        if from_safetensors:
            out = with_network_options(args.ckpt, args.out, options, command, dtype, args.model_version)
        else:
            out = export_lightning_checkpoint(args.ckpt, args.out, command, seeds, options, dtype,
                                              args.model_version)
    except (PetDLError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _interpolate_main(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--interpolate-from BASE ALPHA``: :func:`interpolated_weights`, one error line and exit 2 on bad input."""
    from pet_dl.errors import PetDLError

    others = (args.train_seeds, args.flip_ensemble, args.anchor, args.final_em, args.blend)
    if not args.ckpt.endswith(".safetensors") or any(o is not None for o in others) or args.float16:
        print("error: --interpolate-from takes a .safetensors input and only --model-version besides",
              file=sys.stderr)
        return 2
    base, alpha = args.interpolate_from
    try:
        step = float(alpha)
        command = "python -m pet_dl.training.export " + shlex.join(argv if argv is not None else sys.argv[1:])
        out = interpolated_weights(base, args.ckpt, args.out, step, command, args.model_version)
    except (PetDLError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
