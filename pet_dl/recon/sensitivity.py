"""Subset sensitivity images, computed in one pass and cached on disk.

The sensitivity of subset ``k`` is ``s_k = A_k^T 1`` (``A_k``: the subset's forward model,
counts per Bq/mL). :func:`subset_sensitivities` backprojects each subset's weights once
(together one backprojection of the whole sinogram) and sets the full model's sensitivity
to their sum (so nobody backprojects the whole sinogram a second time).

Given a cache directory, the images are stored in a folder ``sens-<key>`` of it, one file
per subset (``subset-000.pt``, ...) and their sum (``total.pt``, written last: its presence
marks a complete set). The key is a hash of everything they depend on: the sinogram and
image geometry, the projector's views, the resolution model, the calibration, the
multiplicative term (attenuation x normalisation, hashed by value), the number of subsets
and the dtype. A later run with the same scan geometry, normalisation and attenuation reads
the files instead of backprojecting (as STIR and NiftyPET keep sensitivity images); any
change to one of them changes the name.

Two ways to hold them: :func:`subset_sensitivities` returns them all in memory (2D, the
batched models of training); :func:`subset_sensitivity_files` computes them one subset at a
time, writes each to the cache as soon as it is done and keeps only the running sum, and
returns a :class:`SubsetSensitivityFiles` that reads one subset's image when it is asked
for (3D: the mMR span-11 native grid has 21 x 57 MiB of them). Both give the same images
bit for bit. Without a cache directory, :func:`subset_sensitivity_files` writes them to a
new temporary folder (in the system's, ``$TMPDIR``), owned by the returned files: removed
by their ``close()``, or when they are garbage-collected or the interpreter exits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, overload

import torch

if TYPE_CHECKING:
    from pet_dl.forward_model import PETForwardModel

__all__ = [
    "CACHE_VERSION",
    "SubsetSensitivityFiles",
    "sensitivity_bytes",
    "sensitivity_cache_key",
    "subset_sensitivities",
    "subset_sensitivity_files",
]

logger = logging.getLogger(__name__)

# Bump when the projector, the sensitivity's definition or the file layout changes (stale
# files are ignored). 2: one file per subset in a folder, and their sum.
CACHE_VERSION = "pet_dl-sensitivity-2"


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


class SubsetSensitivityFiles(Sequence[torch.Tensor]):
    """Subset sensitivity images kept on disk, one file each, read when indexed.

    Holds no image: ``files[k]`` reads subset ``k``'s file each time (``(nx, ny, nz)`` or
    ``(B, nx, ny, nz)``, counts per Bq/mL, on ``device``), so a loop that drops each image
    before asking for the next has one in memory. Built by
    :func:`subset_sensitivity_files`.

    Args:
        paths: one ``.pt`` file per subset (a tensor saved by ``torch.save``).
        shape: the images' shape.
        dtype: their dtype.
        device: where ``files[k]`` puts them.
        temporary: a folder these files own (a temporary one holding ``paths``): removed
            with everything in it by :meth:`close`, or when this object is
            garbage-collected or the interpreter exits; None: the files stay (a cache).
    """

    def __init__(
        self, paths: Sequence[Path], shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
        temporary: str | os.PathLike[str] | None = None,
    ) -> None:
        self.paths = tuple(Path(p) for p in paths)
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = torch.device(device)
        self.temporary = Path(temporary) if temporary is not None else None
        # not a method of self: the finalizer must not keep this object alive
        self._remove = (
            weakref.finalize(self, shutil.rmtree, str(self.temporary), ignore_errors=True)
            if self.temporary is not None else None
        )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` removed the temporary folder (always False for a cache)."""
        return self._remove is not None and not self._remove.alive

    def close(self) -> None:
        """Remove the temporary folder and its files (if these files own one); idempotent.
        A cache's files stay."""
        if self._remove is not None:
            self._remove()

    def __enter__(self) -> SubsetSensitivityFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, k: int) -> torch.Tensor: ...

    @overload
    def __getitem__(self, k: slice) -> list[torch.Tensor]: ...

    def __getitem__(self, k: int | slice) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        path = self.paths[k]  # IndexError ends iteration
        if self.closed:
            raise RuntimeError(f"sensitivity files in {self.temporary} were removed (closed)")
        s = _read(path, self.shape, self.dtype, map_location=self.device)
        if s is None:
            raise RuntimeError(f"sensitivity file {path} is missing or changed since it was written")
        return s

    def __repr__(self) -> str:
        folder = self.paths[0].parent if self.paths else None
        return f"SubsetSensitivityFiles({len(self)} x {self.shape} {self.dtype}, {folder})"


def _read(
    path: Path, shape: tuple[int, ...], dtype: torch.dtype, map_location: torch.device | str = "cpu",
    mmap: bool = False,
) -> torch.Tensor | None:
    """The tensor in ``path`` if it has ``shape`` and ``dtype``, else None (also when the file
    is missing, unreadable, foreign or half-written). ``mmap``: map it without reading the
    data (a cheap check of the file)."""
    try:
        stored = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception:  # noqa: BLE001 - missing, unreadable, foreign or half-written: recompute
        return None
    if not isinstance(stored, torch.Tensor) or tuple(stored.shape) != shape or stored.dtype != dtype:
        return None
    return stored


def _write(path: Path, t: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(t.detach().cpu(), tmp)
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old or the new file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _Cache:
    """The cache folder of one model's subset sensitivities."""

    def __init__(self, folder: Path, num_subsets: int, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.folder = folder
        self.subset_paths = [folder / f"subset-{k:03d}.pt" for k in range(num_subsets)]
        self.total_path = folder / "total.pt"
        self.shape = shape
        self.dtype = dtype

    @classmethod
    def of(cls, model: PETForwardModel, num_subsets: int, cache_dir: str | os.PathLike[str]) -> _Cache | None:
        dtype, _ = model.linear.reference()
        key = sensitivity_cache_key(model, num_subsets, dtype)
        if key is None:
            return None
        return cls(Path(cache_dir) / f"sens-{key}", num_subsets, _image_shape(model), dtype)

    def complete(self) -> bool:
        """Whether the sum and every subset's file are there and readable (the subsets'
        files are mapped, not read)."""
        if not self.total_path.exists():
            return False
        return all(_read(p, self.shape, self.dtype, mmap=True) is not None for p in self.subset_paths)

    def read_total(self, device: torch.device) -> torch.Tensor | None:
        return _read(self.total_path, self.shape, self.dtype, map_location=device)

    def read_all(self, device: torch.device) -> list[torch.Tensor] | None:
        sens = [_read(p, self.shape, self.dtype, map_location=device) for p in self.subset_paths]
        return None if any(s is None for s in sens) else sens  # type: ignore[return-value]

    def start(self) -> None:
        """Before writing a new set: remove an old sum, so a set is complete only once
        every subset's new file is written."""
        self.total_path.unlink(missing_ok=True)


def _ours(model: PETForwardModel, models: list[PETForwardModel]) -> bool:
    from pet_dl.forward_model import PETForwardModel

    return isinstance(model, PETForwardModel) and all(isinstance(m, PETForwardModel) for m in models)


def _sum(sens: Sequence[torch.Tensor]) -> torch.Tensor:
    total = sens[0]
    for s in sens[1:]:
        total = total + s
    return total


def subset_sensitivities(
    model: PETForwardModel,
    models: list[PETForwardModel],
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[torch.Tensor]:
    """Sensitivity images of the subset models ``models`` of ``model``, in one pass, in memory.

    Each subset model keeps its own image (``m.sensitivity()``).

    Args:
        model: the full forward model (its sensitivity is set to the subsets' sum).
        models: ``model.subsets(S)`` (or ``[model]`` for one subset).
        cache_dir: directory of cached sensitivities (created when needed); None: no
            cache. The files are read when their key (:func:`sensitivity_cache_key`)
            matches, else written.

    Returns:
        ``S`` detached images ``(nx, ny, nz)`` (or ``(B, nx, ny, nz)`` with batched
        factors), counts per Bq/mL, on the model's device.
    """
    ours = _ours(model, models)
    cache = _Cache.of(model, len(models), cache_dir) if cache_dir is not None and ours else None
    sens = None
    if cache is not None and cache.complete():
        _, device = model.linear.reference()
        sens = cache.read_all(device)
        if sens is not None:
            for m, s in zip(models, sens):
                if m._sensitivity is None:
                    m._sensitivity = s
    if sens is None:
        with torch.no_grad():
            sens = [m.sensitivity().detach() for m in models]
        if cache is not None:
            cache.start()
            for path, s in zip(cache.subset_paths, sens):
                _write(path, s)
            _write(cache.total_path, _sum(sens))
    if ours and model._sensitivity is None and len(models) > 1:
        model._sensitivity = _sum(sens)
    return sens


def subset_sensitivity_files(
    model: PETForwardModel,
    models: list[PETForwardModel],
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[SubsetSensitivityFiles, torch.Tensor] | None:
    """Subset sensitivity images on disk, with at most one of them in memory at a time.

    When the cache has no complete set for this model, each subset's image is computed
    (one backprojection of its own bins), written to its file at once and dropped; only
    the running sum stays in memory. The subset models do not keep their images (their
    ``sensitivity()`` would backproject again: use the returned files).

    Args:
        model: the full forward model (its sensitivity is set to the subsets' sum).
        models: ``model.subsets(S)`` (or ``[model]`` for one subset).
        cache_dir: directory of the cache (created when needed). None: a new temporary
            folder (``tempfile.mkdtemp`` in the system's temporary directory, ``$TMPDIR``)
            owned by the returned files: removed by their ``close()``, when they are
            garbage-collected or at exit, and at once if this function fails; where it is
            and how much goes into it is logged (one line, ``logging.WARNING`` on this
            module's logger: without a handler Python prints it on stderr).

    Returns:
        ``(files, total)``: the ``S`` images as :class:`SubsetSensitivityFiles` and their
        sum ``(nx, ny, nz)`` (or ``(B, nx, ny, nz)``), counts per Bq/mL, on the model's
        device; both bit for bit what :func:`subset_sensitivities` gives. None when the
        model cannot be keyed (:func:`sensitivity_cache_key`): keep it in memory.
    """
    if not _ours(model, models):
        return None
    if cache_dir is not None:
        cache = _Cache.of(model, len(models), cache_dir)
        return None if cache is None else _files(model, models, cache, None)
    folder = tempfile.mkdtemp(prefix="pet_dl-sens-")
    try:
        cache = _Cache.of(model, len(models), folder)
        if cache is None:
            shutil.rmtree(folder, ignore_errors=True)
            return None
        size = sensitivity_bytes(model, len(models) + 1)
        logger.warning(
            "pet_dl: writing %d subset sensitivity images and their sum (%.1f MiB) to the temporary "
            "folder %s, removed when the reconstruction ends (a sensitivity cache folder keeps "
            "them between runs)", len(models), size / 2**20, folder,
        )
        return _files(model, models, cache, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _files(
    model: PETForwardModel, models: list[PETForwardModel], cache: _Cache, temporary: str | None
) -> tuple[SubsetSensitivityFiles, torch.Tensor]:
    """The images in ``cache``'s files (computed and written unless complete) and their sum."""
    _, device = model.linear.reference()
    total = cache.read_total(device) if cache.complete() else None
    if total is None:
        cache.start()
        for k, (m, path) in enumerate(zip(models, cache.subset_paths)):
            kept = m._sensitivity is not None
            with torch.no_grad():
                s = m.sensitivity().detach()
            if not kept:
                m._sensitivity = None  # the file holds it
            _write(path, s)
            total = s if k == 0 else total + s
            del s
        assert total is not None
        _write(cache.total_path, total)
    if model._sensitivity is None:
        model._sensitivity = total
    files = SubsetSensitivityFiles(cache.subset_paths, cache.shape, cache.dtype, device, temporary=temporary)
    return files, total


def sensitivity_bytes(model: PETForwardModel, num_images: int) -> int:
    """Bytes of ``num_images`` sensitivity images of ``model`` (its image shape, with the
    batch of batched factors, in its projector's dtype)."""
    dtype, _ = model.linear.reference()
    return num_images * math.prod(_image_shape(model)) * torch.empty((), dtype=dtype).element_size()


def _image_shape(model: PETForwardModel) -> tuple[int, ...]:
    batch = (model.batch_size,) if model.batch_size is not None else ()
    return batch + tuple(model.in_shape)
