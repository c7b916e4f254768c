"""Image-quality scores of reconstructions against the true activity, and their aggregation.

Per case: PSNR, SSIM, NRMSE (:mod:`pet_dl.metrics`) and the relative SUVmean / SUVmax
bias of every lesion (:func:`pet_dl.metrics.lesion_bias`), also kept apart for lesions
of at least :data:`LARGE_LESION_MM`. Aggregation (:func:`aggregate`): for each
realisation the metrics are averaged over the phantoms (lesion biases over all lesions of
that realisation); the result is the mean and sample standard deviation of these
averages over the realisations. That spread is the noise of the scans only; the
uncertainty that comes from having few phantoms and lesions is
:func:`sampling_error` (standard error over phantoms, or over lesions, each first
averaged over its realisations) and, for a difference between two methods on the same
cases, :func:`paired_difference`.

Contrast vs noise (:func:`contrast_noise`): lesion contrast recovery
``CR = C_image / C_true`` with ``C = mean(lesion) / mean(shell) - 1`` (shell: voxels 2-4
voxels outside the lesion, not in another lesion, with activity) against the background
noise, the ensemble coefficient of variation over the noise realisations averaged over
non-lesion voxels with truth above 10 % of the maximum (needs ``R >= 2``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from pet_dl.evaluate.data import EvalSet

#: Lesions at least this large (diameter, mm) are reported separately.
LARGE_LESION_MM = 8.0
#: The scores of every table row (lesion biases relative: 0.05 = +5 %).
METRICS = (
    "psnr", "ssim", "nrmse", "suvmean_bias", "suvmax_bias", "suvmean_bias_ge8", "suvmax_bias_ge8",
    "hot_spots",
)


def case_metrics(images: torch.Tensor, data: EvalSet) -> list[dict[str, Any]]:
    """Per-case PSNR (dB), SSIM, NRMSE, lesion SUVmean / SUVmax biases and false hot spots.

    Args:
        images: ``(B, nx, ny, nz)`` Bq/mL, one per case of ``data``.
        data: the cases (true activity, lesion labels and diameters).

    Returns:
        one dict per case; lesion biases are lists (``suvmean_bias`` etc., one entry per
        lesion; relative, 0.05 = +5 %), ``*_ge8`` for lesions >= 8 mm;
        ``lesion_diameter_mm`` lists the diameters in the order of ``suvmean_bias``.

    Raises:
        ValueError: a shape mismatch, or NaN / Inf in ``images``.
    """
    from pet_dl import metrics

    if tuple(images.shape) != tuple(data.target.shape):
        raise ValueError(f"images {tuple(images.shape)} do not match the targets {tuple(data.target.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("a reconstruction has NaN or Inf values")
    psnr = metrics.psnr(images, data.target)
    ssim = metrics.ssim(images, data.target)
    nrmse = metrics.nrmse(images, data.target)
    hot = false_hot_spots(images, data)
    rows = []
    for i in range(images.shape[0]):
        row: dict[str, Any] = {
            "psnr": float(psnr[i]), "ssim": float(ssim[i]), "nrmse": float(nrmse[i]),
            "hot_spots": float(hot[i]),
        }
        for key in ("suvmean_bias", "suvmax_bias", "suvmean_bias_ge8", "suvmax_bias_ge8", "lesion_diameter_mm"):
            row[key] = []
        if bool(data.lesion_mask[i].any()):
            for les in metrics.lesion_bias(images[i], data.target[i], data.lesion_mask[i], data.image.voxel_size_mm):
                if les.label not in data.lesion_diameters[i]:
                    continue  # a cold lesion: no SUV bias
                diameter = data.lesion_diameters[i][les.label]
                row["lesion_diameter_mm"].append(diameter)
                large = diameter >= LARGE_LESION_MM
                for suffix in ("", "_ge8") if large else ("",):
                    row["suvmean_bias" + suffix].append(les.mean_bias)
                    row["suvmax_bias" + suffix].append(les.max_bias)
        rows.append(row)
    return rows


def false_hot_spots(
    images: torch.Tensor, data: EvalSet, threshold: float = 1.0, exclude_voxels: int = 2
) -> list[int]:
    """Per case, the lesion-like hot spots of ``images`` that the truth does not have.

    Counted with :func:`pet_dl.metrics.hot_spots`: local maxima where the 4 mm-ball mean is
    more than ``threshold`` above that of the true activity blurred by the recipe's PSF
    (``data.psf_fwhm_mm``), outside the true lesions dilated by ``exclude_voxels``. With
    the default 1.0, a blob twice the local true activity: a lesion of contrast 2, the
    weakest the brain phantoms hold.

    Args:
        images: ``(B, nx, ny, nz)`` Bq/mL, one per case of ``data``.
        data: the cases (true activity and lesion labels).
        threshold: relative excess that counts (1.0 = 100 % above the blurred truth).
        exclude_voxels: dilation of the lesion mask, voxels, before it is left out.

    Returns:
        one count per case.

    Raises:
        ValueError: ``images`` do not match the targets.
    """
    from pet_dl import metrics
    from pet_dl.forward_model import GaussianResolution

    if tuple(images.shape) != tuple(data.target.shape):
        raise ValueError(f"images {tuple(images.shape)} do not match the targets {tuple(data.target.shape)}")
    reference = GaussianResolution(data.image, data.psf_fwhm_mm)(data.target)
    spatial_dims = 2 if data.target.shape[-1] == 1 else 3
    exclude = metrics.dilate_mask(data.lesion_mask, exclude_voxels, spatial_dims)
    voxel = data.image.voxel_size_mm
    return [
        int(metrics.hot_spots(images[i], reference[i], voxel, exclude[i], threshold=threshold).sum())
        for i in range(images.shape[0])
    ]


def aggregate(rows: list[dict[str, Any]], realisation: Sequence[int]) -> dict[str, tuple[float, float]]:
    """Mean over phantoms per realisation, then (mean, sample std) over realisations.

    Lesion biases are pooled over the lesions of a realisation; NaN when there are none.

    Args:
        rows: :func:`case_metrics` of each case.
        realisation: the noise realisation of each case.

    Returns:
        metric of :data:`METRICS` -> ``(mean, std)`` (std 0 with one realisation).
    """
    out: dict[str, tuple[float, float]] = {}
    reals = sorted(set(realisation))
    for key in METRICS:
        per_real = []
        for r in reals:
            vals: list[float] = []
            for row, rr in zip(rows, realisation):
                if rr == r:
                    v = row.get(key, [])  # [] : a metric the row lacks (older results)
                    vals.extend(v if isinstance(v, list) else [v])
            per_real.append(sum(vals) / len(vals) if vals else math.nan)
        t = torch.tensor(per_real, dtype=torch.float64)
        std = float(t.std()) if len(per_real) > 1 else 0.0
        out[key] = (float(t.mean()), std)
    return out


def _unit_means(values: Sequence[Any], case_seed: Sequence[int]) -> list[float]:
    """Per sampling unit, the mean over its realisations: a phantom for a scalar metric,
    a lesion (phantom seed, position in the phantom's lesion list) for a list metric."""
    units: dict[tuple[int, int], list[float]] = {}
    for v, seed in zip(values, case_seed):
        for i, x in enumerate(v if isinstance(v, list) else [v]):
            units.setdefault((seed, i), []).append(float(x))
    return [sum(xs) / len(xs) for xs in units.values()]


def _sem(values: list[float]) -> float:
    """Standard error of the mean of ``values`` (NaN with fewer than 2)."""
    if len(values) < 2:
        return math.nan
    return float(torch.tensor(values, dtype=torch.float64).std()) / math.sqrt(len(values))


def sampling_error(rows: list[dict[str, Any]], case_seed: Sequence[int]) -> dict[str, float]:
    """Standard error of each metric's mean from the sample of phantoms and lesions.

    Each phantom's value (or each lesion's bias) is first averaged over the noise
    realisations; the standard error is the sample std of these units over
    ``sqrt(units)``. It is the spread a metric would show across test sets of the same
    size, which the std over realisations of :func:`aggregate` (noise only) does not.

    Args:
        rows: :func:`case_metrics` of each case.
        case_seed: the phantom seed of each case (cases of one seed share their lesions).

    Returns:
        metric of :data:`METRICS` -> standard error, in the metric's units (NaN with
        fewer than 2 units, e.g. no lesion).
    """
    return {key: _sem(_unit_means([row.get(key, []) for row in rows], case_seed)) for key in METRICS}


def paired_difference(
    a: Sequence[float], b: Sequence[float], case_seed: Sequence[int]
) -> tuple[float, float]:
    """Mean and standard error of ``a - b`` over phantoms, for two methods on the same cases.

    Both methods saw the same phantoms and noise realisations (e.g. one method at full
    dose and another at 1/20 of it, thinned from the same scans), so the phantom-to-phantom
    variation common to both cancels: the difference is averaged over each phantom's
    realisations, then its mean and standard error are taken over the phantoms.

    Args:
        a, b: one value per case (e.g. NRMSE), in case order.
        case_seed: the phantom seed of each case.

    Returns:
        ``(mean, standard error)`` of ``a - b`` in their units (standard error NaN with
        one phantom).

    Raises:
        ValueError: the three sequences differ in length.
    """
    if not len(a) == len(b) == len(case_seed):
        raise ValueError(f"{len(a)} and {len(b)} values for {len(case_seed)} cases")
    diffs = _unit_means([x - y for x, y in zip(a, b)], case_seed)
    return sum(diffs) / len(diffs), _sem(diffs)


#: Lesion diameter bins (mm) of :func:`bias_by_size`: the phantoms' lesions are 4-20 mm.
SIZE_EDGES_MM = (4.0, 8.0, 12.0, 16.0, 20.0)


def bias_by_size(
    case_lesions: Sequence[Sequence[Sequence[float]]],
    case_seed: Sequence[int],
    edges_mm: Sequence[float] = SIZE_EDGES_MM,
) -> list[dict[str, float]]:
    """Lesion SUVmean / SUVmax bias per diameter bin, with standard errors over lesions.

    Partial-volume losses grow as lesions shrink, so a mean over all lesions of at least
    8 mm mixes different biases; this splits them. Each lesion's biases are first averaged
    over its noise realisations (lesions are identified by phantom seed and position, as in
    :func:`sampling_error`).

    Args:
        case_lesions: per case, one ``(diameter_mm, suvmean_bias, suvmax_bias)`` per lesion
            (relative biases, 0.05 = +5 %), the ``case_lesions`` of a :func:`score_row` row.
        case_seed: the phantom seed of each case.
        edges_mm: increasing bin edges, mm; bin ``k`` is ``[edges[k], edges[k+1])``, the
            last one closed.

    Returns:
        one dict per bin: ``lo_mm``, ``hi_mm``, ``lesions`` (count), ``suvmean_bias``,
        ``suvmean_bias_sem``, ``suvmax_bias``, ``suvmax_bias_sem`` (NaN when the bin has no
        lesion; standard errors NaN with fewer than 2).

    Raises:
        ValueError: ``case_lesions`` and ``case_seed`` differ in length, or fewer than two
            or unsorted edges.
    """
    if len(case_lesions) != len(case_seed):
        raise ValueError(f"{len(case_lesions)} cases of lesions for {len(case_seed)} seeds")
    edges = [float(e) for e in edges_mm]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"bin edges must be at least two increasing values, got {list(edges_mm)}")
    # each column averaged per lesion over its realisations; the units come in one order
    columns = [_unit_means([[les[k] for les in c] for c in case_lesions], case_seed) for k in range(3)]
    per_lesion = list(zip(*columns))  # (diameter, SUVmean bias, SUVmax bias) per lesion
    out = []
    for k, (lo, hi) in enumerate(zip(edges, edges[1:])):
        last = k == len(edges) - 2
        inside = [p for p in per_lesion if lo <= p[0] < hi or (last and p[0] == hi)]
        means, maxes = [p[1] for p in inside], [p[2] for p in inside]
        out.append({
            "lo_mm": lo, "hi_mm": hi, "lesions": float(len(inside)),
            "suvmean_bias": sum(means) / len(means) if means else math.nan,
            "suvmean_bias_sem": _sem(means),
            "suvmax_bias": sum(maxes) / len(maxes) if maxes else math.nan,
            "suvmax_bias_sem": _sem(maxes),
        })
    return out


def shell(mask: torch.Tensor, inner: int, outer: int) -> torch.Tensor:
    """Voxels between ``inner`` and ``outer`` voxels (chessboard distance) outside ``mask``.

    Args:
        mask: ``(nx, ny, nz)`` bool; axes of size 1 are not dilated (2D images).

    Returns:
        ``(nx, ny, nz)`` bool.
    """
    import torch.nn.functional as F  # noqa: N812

    m = mask.double()[None, None]
    spatial = [s > 1 for s in mask.shape]

    def dilate(r: int) -> torch.Tensor:
        k = tuple(2 * r + 1 if s else 1 for s in spatial)
        p = tuple(r if s else 0 for s in spatial)
        return F.max_pool3d(m, k, stride=1, padding=p)[0, 0] > 0

    return dilate(outer) & ~dilate(inner)


def contrast_noise(images: torch.Tensor, data: EvalSet, min_diameter_mm: float = LARGE_LESION_MM) -> tuple[float, float]:
    """Mean lesion contrast recovery and background ensemble CoV (see the module docstring).

    Args:
        images: ``(B, nx, ny, nz)`` Bq/mL, one per case of ``data``.
        data: the cases.
        min_diameter_mm: only lesions at least this large count.

    Returns:
        ``(contrast_recovery, noise)``, both fractions (NaN when undefined).
    """
    crs = []
    for i in range(images.shape[0]):
        labels, truth = data.lesion_mask[i], data.target[i].double()
        for lab, diam in data.lesion_diameters[i].items():
            m = labels == lab
            if diam < min_diameter_mm or not bool(m.any()):
                continue
            around = shell(m, 2, 4) & (labels == 0) & (truth > 0)
            if not bool(around.any()):
                continue
            c_true = float(truth[m].mean() / truth[around].mean()) - 1
            if c_true < 0.2:
                continue
            x = images[i].double()
            crs.append((float(x[m].mean() / x[around].mean()) - 1) / c_true)
    cr = sum(crs) / len(crs) if crs else math.nan
    covs = []
    for seed in sorted(set(data.case_seed)):
        idx = [i for i, s in enumerate(data.case_seed) if s == seed]
        if len(idx) < 2:
            continue
        stack = images[idx].double()
        truth = data.target[idx[0]].double()
        bg = (data.lesion_mask[idx[0]] == 0) & (truth > 0.1 * truth.max())
        mean = stack.mean(0)
        ok = bg & (mean > 0)
        covs.append(float((stack.std(0)[ok] / mean[ok]).mean()))
    noise = sum(covs) / len(covs) if covs else math.nan
    return cr, noise
