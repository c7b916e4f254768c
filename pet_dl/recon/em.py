"""Expectation maximisation: the shared EM step, MLEM and OSEM.

All algorithms are written against the :class:`pet_dl.forward_model.PETForwardModel`
interface (``forward``, ``adjoint``, ``sensitivity``, ``subsets``, ``subset_data``), so the
same code reconstructs 2D and 3D, TOF and non-TOF scans, one image or a batch.

Images ``x`` are ``(*batch, nx, ny, nz)`` in Bq/mL; data ``y`` are ``(*batch, *sino)`` in
counts. The forward model includes the calibration from Bq/mL to counts, so the result
is in Bq/mL with no rescaling.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from pet_dl.recon.sensitivity import (
    sensitivity_bytes,
    subset_sensitivities,
    subset_sensitivity_files,
)

if TYPE_CHECKING:
    from pet_dl.forward_model import PETForwardModel


def _check_iterations(num_iterations: int, num_subsets: int = 1) -> None:
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int) or num_iterations < 0:
        raise ValueError(f"num_iterations must be a non-negative int, got {num_iterations!r}")
    if isinstance(num_subsets, bool) or not isinstance(num_subsets, int) or num_subsets < 1:
        raise ValueError(f"num_subsets must be a positive int, got {num_subsets!r}")


def _check_data(y: torch.Tensor) -> None:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor of counts, got {type(y).__name__}")
    if not torch.is_floating_point(y):
        raise TypeError(f"y must be a floating-point tensor (counts), got dtype {y.dtype}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y (measured counts) contains NaN or infinite values")
    if bool((y < 0).any()):
        raise ValueError("y (measured counts) contains negative values")


def em_ratio(y: torch.Tensor, ybar: torch.Tensor) -> torch.Tensor:
    """The EM data ratio ``y / ybar``, set to 0 where ``ybar`` is 0.

    Args:
        y: measured counts ``(*batch, *sino)``.
        ybar: expected counts ``(*batch, *sino)`` (same shape, or broadcastable).

    Returns:
        ``(*batch, *sino)`` dimensionless ratio; 0 wherever ``ybar <= 0``.
    """
    positive = ybar > 0
    safe = torch.where(positive, ybar, torch.ones_like(ybar))
    return torch.where(positive, y / safe, torch.zeros_like(safe))


def em_update(
    x: torch.Tensor, model: PETForwardModel, y: torch.Tensor, sensitivity: torch.Tensor
) -> torch.Tensor:
    """One EM update ``x * A^T(y / ybar) / s`` (MLEM step; one OSEM sub-iteration).

    This is the data step shared with the unrolled networks, so it is differentiable with
    respect to ``x`` (gradients flow through the exact adjoint of the projector).

    Args:
        x: current image ``(*batch, nx, ny, nz)``, Bq/mL, non-negative.
        model: forward model ``ybar = c * m * P(G x) + a`` (or one of its subsets).
        y: measured counts ``(*batch, *sino)`` for ``model``'s bins.
        sensitivity: ``model.sensitivity()``, ``(nx, ny, nz)`` or ``(*batch, nx, ny, nz)``,
            counts per Bq/mL.

    Returns:
        The updated image, same shape and units as ``x``. Where ``ybar == 0`` the ratio is
        0; where ``sensitivity == 0`` the voxel is 0. Float32 safe (no division by zero,
        no NaN).
    """
    ybar = model(x)
    back = model.adjoint(em_ratio(y, ybar))
    covered = sensitivity > 0
    safe_sens = torch.where(covered, sensitivity, torch.ones_like(sensitivity))
    return torch.where(covered, x * back / safe_sens, torch.zeros_like(back))


def uniform_initial_image(
    model: PETForwardModel, y: torch.Tensor, sensitivity: torch.Tensor
) -> torch.Tensor:
    """A uniform start image whose expected true counts match the measured ones.

    The value ``c`` solves ``sum(c * A 1) = sum(y) - sum(a)`` (using ``sum(A 1) = sum(s)``),
    so the first iterations start at the right scale in Bq/mL; voxels with zero
    sensitivity are 0.

    Args:
        model: forward model.
        y: measured counts ``(*batch, *sino)``.
        sensitivity: ``model.sensitivity()`` ``(nx, ny, nz)`` or ``(*batch, nx, ny, nz)``.

    Returns:
        ``(*batch, nx, ny, nz)`` Bq/mL, strictly positive where the sensitivity is.
    """
    image_shape = tuple(sensitivity.shape[-3:])
    sino_ndim = _sino_ndim(model)
    batch = tuple(y.shape[: y.ndim - sino_ndim])
    sino_dims = tuple(range(len(batch), y.ndim))
    additive = getattr(model, "additive", _UNKNOWN)
    if additive is _UNKNOWN:  # a model without the attribute: project a zero image
        zeros = torch.zeros(batch + image_shape, dtype=y.dtype, device=y.device)
        background_total = model(zeros).sum(dim=sino_dims)
    elif additive is None:
        background_total = torch.zeros((), dtype=y.dtype, device=y.device)
    else:
        background_total = additive.sum(dim=tuple(range(additive.ndim - sino_ndim, additive.ndim)))
    trues = (y.sum(dim=sino_dims) - background_total).to(torch.float64)
    total_sens = sensitivity.to(torch.float64).sum(dim=(-3, -2, -1))
    total_counts = y.to(torch.float64).sum(dim=sino_dims)
    # Fall back to a tenth of all counts when the background estimate exceeds the data.
    trues = torch.where(trues > 0, trues, 0.1 * total_counts + 1e-12)
    level = (trues / total_sens.clamp_min(1e-30)).to(y.dtype)
    level = level.reshape(level.shape + (1, 1, 1))
    covered = (sensitivity > 0).to(y.dtype)
    return level * covered.expand(batch + image_shape)


_UNKNOWN = object()


def _sino_ndim(model: PETForwardModel) -> int:
    out_shape = getattr(model, "out_shape", None)
    if out_shape is None:
        out_shape = model.linear.out_shape
    return len(out_shape)


def _initial(
    x0: torch.Tensor | None, model: PETForwardModel, y: torch.Tensor, sensitivity: torch.Tensor
) -> torch.Tensor:
    if x0 is None:
        return uniform_initial_image(model, y, sensitivity)
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch.Tensor image, got {type(x0).__name__}")
    if x0.shape[-3:] != sensitivity.shape[-3:]:
        raise ValueError(
            f"x0 has image shape {tuple(x0.shape[-3:])}, the model's grid is "
            f"{tuple(sensitivity.shape[-3:])}"
        )
    if bool((x0 < 0).any()) or not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 must be finite and non-negative (Bq/mL)")
    return x0.to(dtype=y.dtype, device=y.device)


def mlem(
    model: PETForwardModel,
    y: torch.Tensor,
    num_iterations: int,
    x0: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Maximum-likelihood expectation maximisation (Shepp-Vardi / Lange-Carson).

    Args:
        model: forward model of the scan.
        y: measured counts ``(*batch, *sino)``, non-negative.
        num_iterations: number of full EM iterations (0 returns the start image).
        x0: start image ``(*batch, nx, ny, nz)`` Bq/mL; default: uniform, matched to counts
            (see :func:`uniform_initial_image`).
        progress: show a tqdm progress bar.

    Returns:
        ``(*batch, nx, ny, nz)`` image in Bq/mL, non-negative.
    """
    return osem(model, y, num_iterations, 1, x0=x0, progress=progress)


def osem(
    model: PETForwardModel,
    y: torch.Tensor,
    num_iterations: int,
    num_subsets: int,
    x0: torch.Tensor | None = None,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    sensitivity_cache: str | os.PathLike[str] | None = None,
) -> torch.Tensor:
    """Ordered-subsets EM (Hudson-Larkin) with subsets of interleaved views.

    One iteration visits every subset once. The subset models and their sensitivity
    images are built once per call and reused by every iteration. With one subset this
    is exactly MLEM.

    Args:
        model: forward model of the scan.
        y: measured counts ``(*batch, *sino)``, non-negative.
        num_iterations: number of full iterations (each of ``num_subsets`` updates).
        num_subsets: number of view subsets (``model.subsets(num_subsets)``).
        x0: start image ``(*batch, nx, ny, nz)`` Bq/mL; default: uniform, matched to counts.
        progress: show a tqdm progress bar (one step per sub-iteration).
        callback: called as ``callback(k, x)`` after full iteration ``k`` (1-based) with
            the current image; for images along the iterations without re-running.
        sensitivity_cache: directory for the subset sensitivity images (read when the
            files for this geometry, normalisation and attenuation exist, else written;
            :mod:`pet_dl.recon.sensitivity`); None: computed, not kept after the call.
            When the images together exceed :data:`LAZY_SENSITIVITY_BYTES` (3D), they
            stay on disk and each sub-iteration reads its own
            (:meth:`OrderedSubsets.of_scan`); without a cache directory in a temporary
            folder, removed when this function returns or raises.

    Returns:
        ``(*batch, nx, ny, nz)`` image in Bq/mL, non-negative.
    """
    _check_iterations(num_iterations, num_subsets)
    _check_data(y)
    with OrderedSubsets.of_scan(model, y, num_subsets, cache_dir=sensitivity_cache) as subsets, tqdm(
        total=num_iterations * num_subsets, desc="OSEM" if num_subsets > 1 else "MLEM",
        unit="update", disable=not progress, leave=False,
    ) as bar:
        x = _initial(x0, model, y, subsets.total_sensitivity)
        for iteration in range(1, num_iterations + 1):
            x = subsets.osem_pass(x, on_update=lambda: bar.update(1))
            if callback is not None:
                callback(iteration, x)
    return x


LAZY_SENSITIVITY_BYTES = 256 * 2**20
"""Above this many bytes of subset sensitivity images, :meth:`OrderedSubsets.of_scan` keeps
them on disk (in the cache directory, or a temporary folder without one) and reads one per
sub-iteration (the mMR span-11 native grid: 21 x 57 MiB); at or below it they stay in
memory (2D, training batches)."""


@dataclass(frozen=True)
class OrderedSubsets:
    """A scan split into interleaved view subsets, ready for OSEM passes.

    Built once per scan (:meth:`of_scan`) and used by :func:`osem` and by the unrolled
    networks' data steps (``pet_dl.models.UnrolledEM(data_subsets=...)``). A context
    manager: leaving the ``with`` block (or :meth:`close`) removes the temporary folder of
    sensitivities kept on disk without a cache directory; garbage collection removes it
    too. In memory or in a cache, closing does nothing.

    Attributes:
        models: the ``S`` subset forward models.
        data: measured counts of each subset ``(*batch, *subset sino)``.
        sensitivities: each subset's sensitivity ``(nx, ny, nz)`` or ``(B, nx, ny, nz)``,
            counts per Bq/mL (detached): a list in memory, or a
            :class:`pet_dl.recon.sensitivity.SubsetSensitivityFiles` that reads subset
            ``k``'s image from the cache when indexed (one in memory at a time).
        total_sensitivity: their sum (the full model's sensitivity).
        keep: per subset, the voxels it does not see but others do (they keep their value
            in that subset's update), or ``None`` when there are none; ``keep=None`` (with
            sensitivities on disk): computed in each sub-iteration from the subset's image
            (:meth:`subset_terms`).
    """

    models: list[PETForwardModel]
    data: list[torch.Tensor]
    sensitivities: Sequence[torch.Tensor]
    total_sensitivity: torch.Tensor
    keep: list[torch.Tensor | None] | None

    @classmethod
    def of_scan(
        cls,
        model: PETForwardModel,
        y: torch.Tensor,
        num_subsets: int,
        cache_dir: str | os.PathLike[str] | None = None,
        lazy: bool | None = None,
    ) -> OrderedSubsets:
        """Split ``model`` and its counts ``y (*batch, *sino)`` into ``num_subsets`` view subsets.

        The subsets' data are strided views of ``y`` (no copies).

        Args:
            model: the full forward model.
            y: measured counts ``(*batch, *sino)``.
            num_subsets: number of interleaved view subsets.
            cache_dir: directory of cached sensitivity images, keyed by geometry,
                normalisation and attenuation (:mod:`pet_dl.recon.sensitivity`); None: no
                cache, the images are not kept after this object (in memory, or on disk in
                a temporary folder, see ``lazy``).
            lazy: True: keep the sensitivity images on disk (computed one subset at a
                time, each written when done) and read each when its sub-iteration needs
                it: in ``cache_dir``, or without one in a new temporary folder (its place
                and size logged; removed by :meth:`close`, at the end of a ``with`` block
                or when this object is garbage-collected); False: all in memory. None
                (default): on disk when the images together exceed
                :data:`LAZY_SENSITIVITY_BYTES`. All give the same images and the same
                OSEM iterates, bit for bit.

        Raises:
            ValueError: ``lazy=True`` for a model the cache cannot key (not a
                ``SinogramProjector``, or another resolution model; with ``lazy=None``
                such a model stays in memory).
        """
        if lazy is None:
            lazy = _sensitivity_bytes(model, num_subsets) > LAZY_SENSITIVITY_BYTES
            forced = False
        else:
            forced = lazy
        data = [y] if num_subsets == 1 else [model.subset_data(y, k, num_subsets) for k in range(num_subsets)]
        if lazy:
            models = _subset_models(model, num_subsets)
            on_disk = subset_sensitivity_files(model, models, cache_dir)
            if on_disk is not None:
                files, total = on_disk
                return cls(models, data, files, total, None)
            if forced:
                raise ValueError("this model's sensitivities cannot be cached (keyed), so not kept on disk")
        models, sens = subset_models_and_sensitivities(model, num_subsets, cache_dir)
        total = _total_sensitivity(sens)
        keep = [_keep_mask(s, total) for s in sens]
        return cls(models, data, sens, total, keep)

    def close(self) -> None:
        """Remove the temporary folder of the sensitivities on disk, if they have one
        (kept without a cache directory); idempotent. Nothing to do in memory or in a
        cache directory. After it, :meth:`osem_pass` cannot read them."""
        close = getattr(self.sensitivities, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> OrderedSubsets:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def subset_terms(
        self, k: int
    ) -> tuple[PETForwardModel, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Subset ``k``'s model, counts, sensitivity image and keep mask (or None).

        With the sensitivities on disk this reads subset ``k``'s image (and computes its
        keep mask from it); drop them before asking for the next subset to hold one image.
        """
        sens = self.sensitivities[k]
        keep = self.keep[k] if self.keep is not None else _keep_mask(sens, self.total_sensitivity)
        return self.models[k], self.data[k], sens, keep

    def osem_pass(
        self, x: torch.Tensor, on_update: Callable[[], object] | None = None
    ) -> torch.Tensor:
        """One OSEM iteration: an EM update (:func:`em_update`) per subset, in order.

        Differentiable with respect to ``x`` (``(*batch, nx, ny, nz)`` Bq/mL, non-negative);
        returns the updated image, same shape and units. ``on_update`` is called after each
        subset's update (progress bars).
        """
        for k in range(len(self.models)):
            sub_model, sub_y, sens, keep = self.subset_terms(k)
            x_new = em_update(x, sub_model, sub_y, sens)
            del sens  # on disk: freed before the next subset's image is read
            x = x_new if keep is None else torch.where(keep, x, x_new)
            del keep, x_new
            if on_update is not None:
                on_update()
        return x


def subset_models_and_sensitivities(
    model: PETForwardModel, num_subsets: int, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[list[PETForwardModel], list[torch.Tensor]]:
    """The subset forward models and their sensitivity images, computed once.

    The sensitivities take one pass (each subset backprojects its own bins once, one
    backprojection of the sinogram in all); the full model's sensitivity is set to their
    sum (:func:`pet_dl.recon.sensitivity.subset_sensitivities`).

    Args:
        model: the full forward model.
        num_subsets: number of interleaved view subsets (1: the model itself).
        cache_dir: directory of cached sensitivity images keyed by geometry,
            normalisation and attenuation (None: no cache).

    Returns:
        ``(models, sensitivities)``: ``num_subsets`` models and images
        ``(nx, ny, nz)`` (or ``(B, nx, ny, nz)`` for batched factors), counts per Bq/mL.
    """
    models = _subset_models(model, num_subsets)
    return models, subset_sensitivities(model, models, cache_dir)


def _subset_models(model: PETForwardModel, num_subsets: int) -> list[PETForwardModel]:
    models = [model] if num_subsets == 1 else list(model.subsets(num_subsets))
    if len(models) != num_subsets:
        raise ValueError(f"model.subsets({num_subsets}) returned {len(models)} subsets")
    return models


def _sensitivity_bytes(model: PETForwardModel, num_subsets: int) -> int:
    """Bytes of ``num_subsets`` sensitivity images of ``model`` (0 if it cannot tell)."""
    if getattr(model, "in_shape", None) is None or getattr(model, "linear", None) is None:
        return 0
    return sensitivity_bytes(model, num_subsets)


def _keep_mask(sens: torch.Tensor, total: torch.Tensor) -> torch.Tensor | None:
    """Voxels a subset does not see but others do (``sens <= 0 < total``), or None if none."""
    keep = (sens <= 0) & (total > 0)
    return keep if bool(keep.any()) else None


def _total_sensitivity(subset_sens: list[torch.Tensor]) -> torch.Tensor:
    total = subset_sens[0]
    for s in subset_sens[1:]:
        total = total + s
    return total
