"""``build_model(config)``: the one way to make a network from a (YAML / checkpoint) config."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from pet_dl.models.learned_primal_dual import LearnedPrimalDual
from pet_dl.models.post_unet import PostUNet
from pet_dl.models.unrolled_em import UnrolledEM

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "unrolled_em": UnrolledEM,
    "learned_primal_dual": LearnedPrimalDual,
    "post_unet": PostUNet,
}


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """Build a learned reconstruction model.

    Args:
        config: ``{"name": <one of MODEL_REGISTRY>, **constructor arguments}``, e.g.
            ``{"name": "unrolled_em", "spatial_dims": 2, "num_iterations": 6}``.

    Returns:
        the model, called as ``model(batch: ReconBatch) -> (B, nx, ny, nz)`` Bq/mL.

    Raises:
        ValueError: unknown model name or unknown argument (the message lists valid ones).
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"model config must be a mapping, got {type(config).__name__}")
    if "name" not in config:
        raise ValueError(f"model config needs a 'name' (one of {sorted(MODEL_REGISTRY)})")
    name = config["name"]
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model name {name!r}; choose one of {sorted(MODEL_REGISTRY)}")
    cls = MODEL_REGISTRY[name]
    kwargs = {k: v for k, v in config.items() if k != "name"}
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model {name!r}; valid: {allowed}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return cls(**kwargs)
