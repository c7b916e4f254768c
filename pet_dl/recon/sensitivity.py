"""Subset sensitivity images, computed in one pass and cached on disk.

The sensitivity of subset ``k`` is ``s_k = A_k^T 1`` (``A_k``: the subset's forward model,
counts per Bq/mL). :func:`subset_sensitivities` backprojects each subset's weights once
(together one backprojection of the whole sinogram), sets the full model's sensitivity
to their sum (so nobody backprojects the whole sinogram a second time) and, given a cache
directory, stores them in one file named by a hash of everything they depend on: the
sinogram and image geometry, the projector's views, the resolution model, the
calibration, the multiplicative term (attenuation x normalisation, hashed by value), the
number of subsets and the dtype. A later run with the same scan geometry, normalisation
and attenuation reads the file instead of backprojecting (as STIR and NiftyPET keep
sensitivity images); any change to one of them changes the name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pet_dl.forward_model import PETForwardModel

__all__ = ["CACHE_VERSION", "sensitivity_cache_key", "subset_sensitivities"]

# Bump when the projector or the sensitivity's definition changes (stale files are ignored).
CACHE_VERSION = "pet_dl-sensitivity-1"


def _tensor_digest(h: hashlib._Hash, t: torch.Tensor | None, name: str) -> None:
    h.update(name.encode())
    if t is None:
        h.update(b"none")
        return
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().data)


def sensitivity_cache_key(model: PETForwardModel, num_subsets: int, dtype: torch.dtype) -> str | None:
    """A hex digest naming ``model``'s subset sensitivities, or None when it cannot be keyed.

    Keyed: the projector's sinogram and image geometry and views, the resolution model,
    calibration and multiplicative term (by value: attenuation x normalisation), the number
    of subsets, the dtype and :data:`CACHE_VERSION`. The additive term does not enter the
    sensitivity. Models whose projector is not a ``SinogramProjector`` return None.
    """
    from pet_dl.forward_model import GaussianResolution, SinogramProjector

    proj = model.projector
    if not isinstance(proj, SinogramProjector):
        return None
    res = model.resolution
    if res is None:
        resolution: object = None
    elif isinstance(res, GaussianResolution):
        resolution = ["gaussian", list(res.fwhm_mm)]
    else:
        return None
    image = proj.image
    meta = {
        "version": CACHE_VERSION,
        "sinogram": proj.sinogram.to_dict(),
        "image": [list(image.shape), [float(v) for v in image.origin_mm], [float(v) for v in image.voxel_size_mm]],
        "views": None if proj.views is None else proj.views.tolist(),
        "resolution": resolution,
        "subsets": int(num_subsets),
        "dtype": str(dtype),
    }
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    _tensor_digest(h, model.calibration, "calibration")
    _tensor_digest(h, model.multiplicative, "multiplicative")
    return h.hexdigest()


def _load(path: Path, num_subsets: int, shape: tuple[int, ...], dtype: torch.dtype) -> list[torch.Tensor] | None:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable, foreign or half-written: recompute
        return None
    if not isinstance(stored, list) or len(stored) != num_subsets:
        return None
    if any(not isinstance(s, torch.Tensor) or tuple(s.shape) != shape or s.dtype != dtype for s in stored):
        return None
    return stored


def _save(path: Path, sens: list[torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save([s.detach().cpu() for s in sens], tmp)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def subset_sensitivities(
    model: PETForwardModel,
    models: list[PETForwardModel],
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[torch.Tensor]:
    """Sensitivity images of the subset models ``models`` of ``model``, in one pass.

    Args:
        model: the full forward model (its sensitivity is set to the subsets' sum).
        models: ``model.subsets(S)`` (or ``[model]`` for one subset).
        cache_dir: directory of cached sensitivities (created when needed); None: no
            cache. A file is read when its key (:func:`sensitivity_cache_key`) matches.

    Returns:
        ``S`` detached images ``(nx, ny, nz)`` (or ``(B, nx, ny, nz)`` with batched
        factors), counts per Bq/mL, on the model's device.
    """
    from pet_dl.forward_model import PETForwardModel

    ours = isinstance(model, PETForwardModel) and all(isinstance(m, PETForwardModel) for m in models)
    path = None
    if cache_dir is not None and ours:
        dtype, device = model.linear.reference()
        key = sensitivity_cache_key(model, len(models), dtype)
        path = Path(cache_dir) / f"sens-{key}.pt" if key is not None else None
    sens = None
    if path is not None and path.exists():
        sens = _load(path, len(models), _image_shape(model), dtype)
        if sens is not None:
            sens = [s.to(device) for s in sens]
            for m, s in zip(models, sens):
                if m._sensitivity is None:
                    m._sensitivity = s
    if sens is None:
        with torch.no_grad():
            sens = [m.sensitivity().detach() for m in models]
        if path is not None:
            _save(path, sens)
    if ours and model._sensitivity is None and len(models) > 1:
        total = sens[0]
        for s in sens[1:]:
            total = total + s
        model._sensitivity = total
    return sens


def _image_shape(model: PETForwardModel) -> tuple[int, ...]:
    batch = (model.batch_size,) if model.batch_size is not None else ()
    return batch + tuple(model.in_shape)
