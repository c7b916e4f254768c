"""Checkpoints that are safe to load: safetensors weights + JSON config and metadata.

One ``.safetensors`` file holds the weights and, in its string metadata, the JSON of the
resolved model config (``build_model``'s input) and of the training metadata:

- ``"sinogram"``: :meth:`SinogramGeometry.to_dict` of the training geometry,
- ``"image"``: :meth:`ImageGeometry.to_dict` of the training image grid,
- ``"reduction_factors"``: dose reduction factors seen in training (e.g. ``[4, 10, 20]``),
- ``"model_version"``: the name of this set of weights (e.g. ``"v20-mixdense"``; files
  written before the field have none),
- ``"pet_dl_version"`` (filled in when absent), ``"training_command"``, free extras.

Loading parses JSON and raw tensors only: nothing is unpickled, so a checkpoint cannot
run code. This module knows no network: :func:`load_checkpoint` and
:func:`convert_lightning_checkpoint` take the model builder (``config -> nn.Module``,
normally :func:`pet_dl.models.build_model`) as an argument, so the file format sits below
the models in the layering (``docs/architecture.md``). Lightning ``.ckpt`` files are
converted with ``torch.load(weights_only=True)``.

A round trip with a toy builder (pet_dl's networks use :func:`pet_dl.models.build_model`)::

    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from pet_dl.io.checkpoint import load_checkpoint, save_checkpoint
    >>> def build(config):
    ...     return torch.nn.Linear(config["inputs"], 1)
    >>> config = {"name": "linear", "inputs": 3}
    >>> path = Path(tempfile.mkdtemp()) / "linear.safetensors"
    >>> _ = save_checkpoint(path, build(config), config, {"reduction_factors": [4, 20]},
    ...                     model_version="v1")
    >>> loaded = load_checkpoint(path, builder=build)
    >>> loaded.model_version, loaded.config["inputs"], loaded.metadata["reduction_factors"]
    ('v1', 3, [4, 20])
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pet_dl.errors import PetDLError

FORMAT_VERSION = "1"
_CONFIG_KEY = "pet_dl.config"
_METADATA_KEY = "pet_dl.metadata"
_FORMAT_KEY = "pet_dl.format"


class CheckpointError(PetDLError, ValueError):
    """A checkpoint is missing, corrupt, not a pet_dl checkpoint, or does not fit its model."""


@dataclass
class LoadedModel:
    """A network rebuilt from a checkpoint, in eval mode.

    Attributes:
        model: the network (``model(batch: ReconBatch) -> (B, nx, ny, nz)`` Bq/mL).
        config: the resolved model config (``build_model`` input).
        metadata: training metadata (geometry dicts, reduction factors, version, ...).
        path: the file it came from (None when built in memory).
        builder: the ``config -> nn.Module`` that built ``model`` (used again by
            :meth:`with_network_options`).
    """

    model: nn.Module
    config: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    builder: Callable[[Mapping[str, Any]], nn.Module] | None = None

    @property
    def model_version(self) -> str | None:
        """The weights' ``metadata["model_version"]``; None for files written before it."""
        return model_version(self.metadata)

    def with_network_options(
        self, options: Mapping[str, Any], builder: Callable[[Mapping[str, Any]], nn.Module] | None = None
    ) -> LoadedModel:
        """The same weights in a network rebuilt with ``options`` set in its config.

        For options that no parameter depends on (``flip_ensemble``, ``data_subsets``,
        ``checkpointing``); the model stays on its device, in eval mode.

        Args:
            options: config entries to set.
            builder: ``config -> nn.Module``; default: the one that built this model.

        Raises:
            CheckpointError: the options change the network's parameters, or no builder.
            ValueError: an option the network does not take, or a bad value.
        """
        builder = builder or self.builder
        if builder is None:
            raise CheckpointError("with_network_options needs the model builder (builder=)")
        config = {**self.config, **options}
        model = builder(config)
        try:
            model.load_state_dict(self.model.state_dict())
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise CheckpointError(
                f"{self.path or 'the model'}: options {dict(options)} change its parameters: {first}"
            ) from None
        device = next(self.model.parameters(), torch.empty(0)).device
        return LoadedModel(model.to(device).eval(), config, dict(self.metadata), self.path, builder)


#: File name of the shipped 2D model in ``pet_dl/assets``.
SHIPPED_MODEL = "pet_dl_2d.safetensors"


def shipped_checkpoint() -> Path:
    """Path of the shipped 2D model (``pet_dl/assets/pet_dl_2d.safetensors``).

    Raises:
        CheckpointError: the file is not installed.
    """
    from importlib import resources

    path = Path(str(resources.files("pet_dl").joinpath("assets", SHIPPED_MODEL)))
    if not path.is_file():
        raise CheckpointError(f"the shipped model {SHIPPED_MODEL} is not installed; pass a checkpoint explicitly")
    return path


def model_version(metadata: Mapping[str, Any]) -> str | None:
    """The model version recorded in checkpoint ``metadata``, or None when there is none."""
    version = metadata.get("model_version")
    return str(version) if version else None


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {what} is not JSON-serialisable ({exc})") from exc


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    config: Mapping[str, Any],
    metadata: Mapping[str, Any],
    weights_dtype: torch.dtype | None = None,
    model_version: str | None = None,
) -> Path:
    """Write ``model``'s weights, ``config`` and ``metadata`` to one ``.safetensors`` file.

    Written to a temporary name in the same folder and renamed, so a failure leaves no
    partial file. ``metadata["pet_dl_version"]`` is set to this package's version when
    absent.

    Args:
        path: output file (``.safetensors``).
        model: the network; its ``state_dict()`` tensors are stored (contiguous, CPU).
        config: the resolved model config, JSON-able, with ``"name"``.
        metadata: JSON-able training metadata (see the module docstring).
        weights_dtype: store floating-point weights in this dtype (``torch.float16``:
            half the file; :func:`load_checkpoint` loads them into the model's float32
            parameters) and record it as ``metadata["weights_dtype"]``; ``None``: as they are.
        model_version: recorded as ``metadata["model_version"]`` (read back by
            :func:`model_version`); ``None``: ``metadata``'s own, if any.

    Returns:
        The written path.
    """
    from safetensors.torch import save_file

    from pet_dl import __version__

    if "name" not in config:
        raise CheckpointError("checkpoint config needs a 'name' (the model registry key)")
    meta = dict(metadata)
    meta.setdefault("pet_dl_version", __version__)
    if model_version is not None:
        if not str(model_version).strip():
            raise CheckpointError("model_version must not be empty")
        meta["model_version"] = str(model_version)
    if weights_dtype is not None:
        if not weights_dtype.is_floating_point:
            raise CheckpointError(f"weights_dtype must be a floating-point dtype, got {weights_dtype}")
        meta["weights_dtype"] = str(weights_dtype).removeprefix("torch.")
    header = {
        _FORMAT_KEY: FORMAT_VERSION,
        _CONFIG_KEY: _json(dict(config), "config"),
        _METADATA_KEY: _json(meta, "metadata"),
    }
    tensors = {
        k: (v.to(weights_dtype) if weights_dtype is not None and v.is_floating_point() else v)
        .detach().to("cpu").contiguous().clone()
        for k, v in model.state_dict().items()
    }
    out = Path(path)
    tmp = _atomic_target(out)
    try:
        save_file(tensors, str(tmp), metadata=header)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def read_checkpoint_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config, metadata)`` of a checkpoint without loading its weights."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{p} is not a readable safetensors checkpoint ({exc})") from exc
    if header.get(_FORMAT_KEY) != FORMAT_VERSION or _CONFIG_KEY not in header:
        raise CheckpointError(
            f"{p} is not a pet_dl checkpoint (format {header.get(_FORMAT_KEY)!r}, "
            f"expected {FORMAT_VERSION!r}); convert Lightning files with convert_lightning_checkpoint"
        )
    try:
        config = json.loads(header[_CONFIG_KEY])
        metadata = json.loads(header.get(_METADATA_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p} has a corrupt config/metadata header ({exc})") from exc
    if not isinstance(config, dict) or not isinstance(metadata, dict):
        raise CheckpointError(f"{p}: config and metadata must be JSON objects")
    return config, metadata


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    *,
    builder: Callable[[Mapping[str, Any]], nn.Module],
) -> LoadedModel:
    """Rebuild the network of a checkpoint and load its weights (nothing is unpickled).

    Args:
        path: a file written by :func:`save_checkpoint`.
        map_location: device for the weights and the model.
        builder: ``config -> nn.Module``, normally :func:`pet_dl.models.build_model`
            (``pet_dl.inference.load_model`` passes it for you).

    Returns:
        A :class:`LoadedModel` in eval mode on ``map_location``.

    Raises:
        CheckpointError: missing/corrupt file, not a pet_dl checkpoint, a config the
            builder rejects, or weights whose names or shapes differ from the model's.
    """
    from safetensors.torch import load_file

    p = Path(path)
    config, metadata = read_checkpoint_header(p)
    try:
        model = builder(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{p}: cannot build its model ({exc})") from exc
    try:
        tensors = load_file(str(p), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{p} has corrupt weights ({exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{p} does not fit model {config.get('name')!r}: missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{'...' if len(unexpected) > 3 else ''}"
        )
    for key, value in expected.items():
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{p}: weight {key!r} has shape {tuple(tensors[key].shape)}, "
                f"model expects {tuple(value.shape)}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(tensors[key]).all()):
            raise CheckpointError(f"{p}: weight {key!r} has NaN or Inf values")
    model.load_state_dict(tensors, strict=True)
    model.to(map_location).eval()
    return LoadedModel(model=model, config=config, metadata=metadata, path=p, builder=builder)


def convert_lightning_checkpoint(
    ckpt_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    prefix: str | None = None,
    *,
    builder: Callable[[Mapping[str, Any]], nn.Module],
    weights_dtype: torch.dtype | None = None,
) -> Path:
    """Convert a Lightning ``.ckpt`` to a pet_dl ``.safetensors`` checkpoint.

    The ``.ckpt`` is read with ``torch.load(weights_only=True)``, which refuses any
    pickled object other than tensors and plain containers.

    Args:
        ckpt_path: Lightning checkpoint.
        out_path: ``.safetensors`` file to write.
        config: model config; default ``hyper_parameters["network"]`` (``ReconModule``)
            or ``hyper_parameters["model"]``.
        metadata: training metadata; default the checkpoint's ``"pet_dl_metadata"``, then
            ``hyper_parameters["metadata"]``, else ``{}``.
        prefix: prefix of the network's keys in the LightningModule state dict; default
            ``"net."`` (``ReconModule``) or ``"model."``, whichever is present.
        builder: as in :func:`load_checkpoint` (the weights are checked by loading them).
        weights_dtype: as in :func:`save_checkpoint`.
    """
    p = Path(ckpt_path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError on corrupt zips, ...
        raise CheckpointError(
            f"{p} cannot be read as weights only ({type(exc).__name__}); "
            "it holds pickled objects or is corrupt"
        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{p} is not a Lightning checkpoint (no 'state_dict')")
    hparams = ckpt.get("hyper_parameters") or {}
    if config is None:
        config = hparams.get("network") or hparams.get("model") or {}
    if not isinstance(config, Mapping) or not config:
        raise CheckpointError(f"{p} has no model config in hyper_parameters; pass config=")
    if metadata is None:
        metadata = ckpt.get("pet_dl_metadata") or hparams.get("metadata") or {}
    keys = list(ckpt["state_dict"])
    if prefix is None:
        prefix = next((c for c in ("net.", "model.") if any(k.startswith(c) for k in keys)), "net.")
    state = {
        k[len(prefix) :]: v
        for k, v in ckpt["state_dict"].items()
        if k.startswith(prefix) and isinstance(v, torch.Tensor)
    }
    if not state:
        raise CheckpointError(f"{p} has no weights under the prefix {prefix!r}")
    try:
        model = builder(config)
        model.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{p}: weights do not fit the config ({exc})") from exc
    return save_checkpoint(out_path, model, dict(config), dict(metadata), weights_dtype)


def write_model_card(
    path: str | os.PathLike[str], checkpoint: str | os.PathLike[str], description: str = ""
) -> Path:
    """Write a Markdown model card for a checkpoint (config, training geometry, hash).

    Args:
        path: the card to write (``.md``), atomically.
        checkpoint: the ``.safetensors`` file it describes.
        description: free text placed under the title.
    """
    ckpt = Path(checkpoint)
    config, metadata = read_checkpoint_header(ckpt)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    sino = metadata.get("sinogram") or {}
    image = metadata.get("image") or {}
    scanner = sino.get("scanner", {})
    scanner_name = scanner.get("name") if isinstance(scanner, dict) else scanner
    lines = [
        f"# Model card: {ckpt.name}",
        "",
        description or "A pet_dl learned PET reconstruction network.",
        "",
        "## Facts",
        "",
        f"- file: `{ckpt.name}`, {ckpt.stat().st_size} bytes, sha256 `{digest}`",
        f"- model version: {model_version(metadata) or 'not recorded'}",
        f"- architecture: `{config.get('name')}`",
        f"- pet_dl version: {metadata.get('pet_dl_version', 'unknown')}",
        f"- trained for scanner: {scanner_name or 'unknown'}",
        f"- sinogram: {json.dumps({k: v for k, v in sino.items() if k != 'scanner'})}",
        f"- image grid: {json.dumps(image)}",
        f"- dose reduction factors: {metadata.get('reduction_factors', 'unknown')}",
        f"- training command: `{metadata.get('training_command', 'unknown')}`",
        "",
        "## Config",
        "",
        "```json",
        json.dumps(config, indent=2, sort_keys=True),
        "```",
        "",
        "## Intended use and limits",
        "",
        "- Input: a pet_dl scan file acquired on the geometry above; other geometries or",
        "  image grids are refused by `pet_dl.inference.reconstruct_with_network`.",
        "- Output: activity in Bq/mL on the scan's image grid.",
        "- Trained on simulated data; not validated for clinical diagnosis.",
        "",
    ]
    out = Path(path)
    tmp = _atomic_target(out)
    try:
        tmp.write_text("\n".join(lines), encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
