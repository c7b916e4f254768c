"""Training losses: voxel-weighted L1 / MSE that give lesions (and their rims) more weight.

A whole-image L1 is dominated by background voxels (lesions are well under 1 % of a brain
slice), so a network trained on it can smooth lesions away and still score well. Here
each voxel's error is weighted by ``1 + lesion_weight`` inside the lesion mask dilated by
``dilation`` voxels (the rim holds the partial-volume spill-out) and by 1 elsewhere.

The per-voxel error is L1, MSE, or smooth L1 (Huber divided by its threshold ``beta``):
``e^2 / (2 beta)`` for ``|e| < beta`` and ``|e| - beta / 2`` above. With ``beta`` near the
noise level, background noise is penalised as by MSE (which averages it away and lowers
NRMSE) while the large errors of a missed lesion are penalised as by L1 (whose optimum,
the median, does not shrink a likely lesion towards the background as MSE's mean does).

:func:`nrmse_error` is the evaluation's NRMSE (:func:`pet_dl.metrics.nrmse`) as a loss
term: added to an L1 loss it pulls the network towards the image metric it is judged by.

:func:`hot_spot_error` penalises what the evaluation counts as a false hot spot
(:func:`pet_dl.metrics.hot_spots`): blob-scale activity well above the resolution-blurred
truth outside the true lesions, the invented lesion a voxel-wise loss barely notices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pet_dl.metrics import dilate_mask, local_mean

ERRORS = ("l1", "mse", "smooth_l1")


def lesion_weights(
    lesion_mask: torch.Tensor, lesion_weight: float, dilation: int, spatial_dims: int
) -> torch.Tensor:
    """Per-voxel loss weights: ``1 + lesion_weight`` on the dilated lesions, 1 elsewhere.

    Args:
        lesion_mask: ``(B, nx, ny, nz)`` int labels, 0 = background.
        lesion_weight: extra weight of a lesion voxel, >= 0 (dimensionless).
        dilation: lesion dilation radius, voxels.
        spatial_dims: 2 or 3.

    Returns:
        ``(B, nx, ny, nz)`` float32 weights.
    """
    if lesion_weight < 0:
        raise ValueError(f"lesion_weight must be >= 0, got {lesion_weight}")
    m = dilate_mask(lesion_mask, dilation, spatial_dims)
    return 1.0 + float(lesion_weight) * m.float()


def weighted_error(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None,
    kind: str = "l1",
    beta: float = 1.0,
) -> torch.Tensor:
    """Mean over all voxels of ``weights * err(pred - target)``.

    Args:
        pred, target: ``(B, nx, ny, nz)``, same units (e.g. normalised by the target mean).
        weights: ``(B, nx, ny, nz)`` or ``None`` (all 1: plain L1 / MSE).
        kind: ``"l1"`` (``|e|``), ``"mse"`` (``e^2``) or ``"smooth_l1"`` (``e^2 / (2 beta)``
            below ``beta``, ``|e| - beta / 2`` above; :func:`torch.nn.functional.smooth_l1_loss`).
        beta: the smooth L1 threshold, in the units of ``pred`` (> 0; unused otherwise).

    Returns:
        scalar, in the units of ``pred`` (L1, smooth L1) or their square (MSE).
    """
    if kind not in ERRORS:
        raise ValueError(f"loss must be one of {ERRORS}, got {kind!r}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if kind == "smooth_l1":
        if not beta > 0:
            raise ValueError(f"the smooth L1 threshold beta must be > 0, got {beta}")
        err = F.smooth_l1_loss(pred, target, reduction="none", beta=float(beta))
    elif kind == "l1":
        err = (pred - target).abs()
    else:
        err = (pred - target) ** 2
    if weights is None:
        return err.mean()
    if weights.shape != err.shape:
        raise ValueError(f"weights {tuple(weights.shape)} do not match the images {tuple(err.shape)}")
    return (weights * err).mean()


def lesion_mean_error(
    pred: torch.Tensor, target: torch.Tensor, lesion_mask: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch's lesions of ``|mean(pred) - mean(target)| / mean(target)``.

    Each lesion's means are taken over its own voxels (the SUVmean of
    :func:`pet_dl.metrics.lesion_bias`), so this is the absolute relative SUVmean bias
    that the evaluation reports, as a differentiable loss.

    Args:
        pred, target: ``(B, nx, ny, nz)``, same units.
        lesion_mask: ``(B, nx, ny, nz)`` int labels, 0 = background.

    Returns:
        dimensionless scalar; 0 (with a gradient path) when the batch has no lesion.
    """
    return _lesion_relative_error(pred, target, lesion_mask, "mean")


def lesion_max_error(
    pred: torch.Tensor, target: torch.Tensor, lesion_mask: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch's lesions of ``|max(pred) - max(target)| / max(target)``.

    Each lesion's maxima are taken over its own voxels (the SUVmax of
    :func:`pet_dl.metrics.lesion_bias`), so this is the absolute relative SUVmax bias that
    the evaluation reports. Its gradient reaches only the hottest voxel of each lesion:
    it penalises noise and overshoot left inside a lesion, which the mean of
    :func:`lesion_mean_error` does not see.

    Args:
        pred, target: ``(B, nx, ny, nz)``, same units.
        lesion_mask: ``(B, nx, ny, nz)`` int labels, 0 = background.

    Returns:
        dimensionless scalar; 0 (with a gradient path) when the batch has no lesion.
    """
    return _lesion_relative_error(pred, target, lesion_mask, "amax")


def _lesion_relative_error(
    pred: torch.Tensor, target: torch.Tensor, lesion_mask: torch.Tensor, statistic: str
) -> torch.Tensor:
    """Mean over the batch's lesions of ``|s(pred) - s(target)| / |s(target)|``, with ``s``
    each lesion's ``"mean"`` or ``"amax"`` over its voxels (shapes as in the callers)."""
    if not pred.shape == target.shape == lesion_mask.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and lesion_mask "
            f"{tuple(lesion_mask.shape)} must have one shape"
        )
    labels = lesion_mask.flatten(1).long()
    num_labels = int(labels.max().item()) + 1 if labels.numel() else 1
    if num_labels <= 1:
        return pred.sum() * 0.0
    b = labels.shape[0]

    def sums(values: torch.Tensor) -> torch.Tensor:
        return values.new_zeros(b, num_labels).scatter_add(1, labels, values.flatten(1))[:, 1:]

    count = sums(torch.ones_like(pred))
    present = count > 0  # (B, labels - 1): the labels each scan has

    def per_lesion(values: torch.Tensor) -> torch.Tensor:
        if statistic == "mean":
            return sums(values) / count.clamp_min(1.0)
        start = values.new_full((b, num_labels), float("-inf"))
        return start.scatter_reduce(1, labels, values.flatten(1), "amax", include_self=True)[:, 1:]

    of_pred, of_target = per_lesion(pred)[present], per_lesion(target)[present]
    return ((of_pred - of_target).abs() / of_target.abs().clamp_min(1e-12)).mean()


def nrmse_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``||pred - target||_2 / ||target||_2`` per scan.

    The NRMSE of :func:`pet_dl.metrics.nrmse` over the whole image, differentiable (the
    gradient at a perfect prediction is 0, not NaN) and in the input's dtype.

    Args:
        pred, target: ``(B, nx, ny, nz)``, same units.

    Returns:
        dimensionless scalar (0.1 = 10 %).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    err = torch.linalg.vector_norm((pred - target).flatten(1), dim=1)
    norm = torch.linalg.vector_norm(target.flatten(1), dim=1).clamp_min(1e-12)
    return (err / norm).mean()


def hot_spot_error(
    pred: torch.Tensor,
    reference: torch.Tensor,
    exclude: torch.Tensor | None,
    voxel_size_mm: tuple[float, float, float],
    threshold: float = 0.5,
    radius_mm: float = 4.0,
    min_reference: float = 0.1,
) -> torch.Tensor:
    """Mean excess of ``pred``'s ball means over ``(1 + threshold)`` times ``reference``'s.

    ``relu(m(pred) - (1 + threshold) m(reference))`` with ``m`` the mean over balls of
    ``radius_mm`` (:func:`pet_dl.metrics.local_mean`, the averaging of
    :func:`pet_dl.metrics.hot_spots`), averaged over the voxels inside the object (where
    ``m(reference)`` is at least ``min_reference`` of its maximum) and outside ``exclude``.
    With ``reference`` the true activity blurred by the scanner's resolution and ``exclude``
    the dilated true lesions, it is zero unless the prediction holds a blob ``threshold``
    above what the truth explains there; below the hot-spot count's own threshold (1.0) the
    gradient already acts.

    Args:
        pred, reference: ``(B, nx, ny, nz)``, same units (e.g. normalised by the target mean).
        exclude: ``(B, nx, ny, nz)`` bool or labels (non-zero: left out), or ``None``.
        voxel_size_mm: voxel size, mm.
        threshold: relative excess above which activity counts (> 0).
        radius_mm: ball radius, mm.
        min_reference: fraction of the reference's maximum ball mean (per scan) below which
            voxels are left out.

    Returns:
        scalar in ``pred``'s units (0 when there is no such blob), in ``pred``'s dtype.
    """
    if pred.shape != reference.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and reference {tuple(reference.shape)} differ in shape")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    m_pred = local_mean(pred, radius_mm, voxel_size_mm)
    with torch.no_grad():
        m_ref = local_mean(reference, radius_mm, voxel_size_mm)
        peak = m_ref.flatten(1).amax(1).view(-1, *([1] * (m_ref.dim() - 1)))
        keep = m_ref >= min_reference * peak
        if exclude is not None:
            keep = keep & (exclude == 0)
    excess = F.relu(m_pred - (1 + threshold) * m_ref) * keep
    return (excess.flatten(1).sum(1) / keep.flatten(1).sum(1).clamp_min(1)).mean().to(pred.dtype)
