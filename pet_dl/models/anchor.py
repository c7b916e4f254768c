"""Low-frequency data anchor: a network may change what the data cannot determine, not what it can.

A learned image ``x`` is replaced by ``x + G_s (o - x)``: its content below the spatial
scale ``s`` is that of ``o``, an OSEM reconstruction of the same scan at the settings
chosen on validation for the scan's count level, and above it the network's. OSEM's noise
at a scale ``s`` falls as ``s`` grows, so ``s`` grows with the dose reduction:
``s = sigma_voxels * sqrt(f)`` voxels in-plane, with ``f = 1 / level`` (``level`` the count
level measured from the scan, :func:`pet_dl.models.blocks.count_level`). Structure the
network paints at scales the counts determine (a false blob several voxels wide at full
dose, an organ's level) is taken back; the network's denoising of fine detail is kept.
docs/experiments.md (the v29 round) has how ``sigma_voxels`` was chosen and what it buys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pet_dl.forward_model import FWHM_PER_SIGMA, GaussianResolution, PETForwardModel
from pet_dl.geometry import ImageGeometry


@dataclass(frozen=True)
class LowFrequencyAnchor:
    """The anchor's settings.

    Args:
        sigma_voxels: in-plane standard deviation of ``G_s`` at full dose, voxels (> 0).
        osem: rows ``(dose reduction factor, iterations, postfilter FWHM mm)``: the OSEM of
            each count level; a scan uses the row whose factor is nearest to its own in
            ``log`` (factors >= 1, iterations >= 1, FWHM >= 0).
        subsets: OSEM view subsets.
    """

    sigma_voxels: float
    osem: tuple[tuple[float, int, float], ...]
    subsets: int = 7

    def __post_init__(self) -> None:
        if not self.sigma_voxels > 0:
            raise ValueError(f"anchor sigma_voxels must be positive, got {self.sigma_voxels}")
        if not self.osem:
            raise ValueError("anchor osem needs at least one row (factor, iterations, fwhm_mm)")
        for row in self.osem:
            factor, iterations, fwhm = row
            if not (factor >= 1 and iterations >= 1 and fwhm >= 0):
                raise ValueError(f"anchor osem row {list(row)}: need factor >= 1, iterations >= 1, fwhm_mm >= 0")
        if self.subsets < 1:
            raise ValueError(f"anchor subsets must be >= 1, got {self.subsets}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LowFrequencyAnchor:
        """From a network config entry ``{"sigma_voxels": s, "osem": [[f, it, fwhm], ...], "subsets": 7}``."""
        unknown = set(config) - {"sigma_voxels", "osem", "subsets"}
        if unknown:
            raise ValueError(f"anchor: unknown keys {sorted(unknown)} (sigma_voxels, osem, subsets)")
        rows = tuple((float(f), int(i), float(w)) for f, i, w in config.get("osem", ()))
        return cls(float(config["sigma_voxels"]), rows, int(config.get("subsets", 7)))

    def osem_settings(self, level: float) -> tuple[int, float]:
        """``(iterations, fwhm_mm)`` of the row nearest to the factor ``1 / level``."""
        row = nearest_row(self.osem, level)
        return row[1], row[2]

    def sigma_mm(self, level: float, voxel_mm: float) -> float:
        """``G_s``'s standard deviation in mm at count level ``level`` (1 = full dose)."""
        return self.sigma_voxels * math.sqrt(1.0 / max(float(level), 1e-6)) * voxel_mm

    def __call__(
        self, image: torch.Tensor, model: PETForwardModel, prompts: torch.Tensor,
        level: torch.Tensor, grid: ImageGeometry,
        start: tuple[torch.Tensor, int, int] | None = None,
    ) -> torch.Tensor:
        """Anchor ``image`` to OSEM of the same scans.

        Args:
            image: the network's images ``(B, nx, ny, nz)``, Bq/mL.
            model: the scans' batched forward model.
            prompts: measured counts ``(B, *sino)``.
            level: ``(B,)`` count level of each scan (1 = full dose).
            grid: the image grid.
            start: ``(x0, iterations, subsets)``: an OSEM image of these scans from the
                uniform start (the network's initial image); a row's OSEM continues from
                it where it can (:func:`continued_osem`: the same image, fewer iterations).

        Returns:
            ``(B, nx, ny, nz)`` Bq/mL: ``image + G_s (o - image)`` per scan.
        """
        from pet_dl.recon.filters import gaussian_postfilter

        levels = [float(v) for v in level.flatten()]
        out = image.clone()
        for iterations, fwhm in sorted({self.osem_settings(v) for v in levels}):
            cases = [b for b, v in enumerate(levels) if self.osem_settings(v) == (iterations, fwhm)]
            with torch.no_grad():
                o = continued_osem(model, prompts, iterations, self.subsets, start)
                reference = gaussian_postfilter(o, grid, fwhm).to(image.dtype)
            for b in cases:
                out[b] = anchor_low_frequencies(
                    image[b], reference[b], grid, self.sigma_mm(levels[b], float(grid.voxel_size_mm[0]))
                )
        return out


def continued_osem(
    model: PETForwardModel, prompts: torch.Tensor, iterations: int, subsets: int,
    start: tuple[torch.Tensor, int, int] | None = None,
) -> torch.Tensor:
    """OSEM of ``iterations`` x ``subsets`` from the uniform image, continued from ``start``
    where it allows.

    Args:
        model: the scans' batched forward model.
        prompts: measured counts ``(B, *sino)``.
        iterations, subsets: the OSEM asked for.
        start: ``(x0, iterations, subsets)``: an OSEM image ``(B, nx, ny, nz)`` of these
            scans from the uniform start; used when its subsets are the same and it has no
            more iterations than asked (then only the missing ones run: the same image).

    Returns:
        ``(B, nx, ny, nz)`` Bq/mL.
    """
    from pet_dl.recon import osem

    if start is not None and start[2] == subsets and start[1] <= iterations:
        x0, done = start[0], start[1]
    else:
        x0, done = None, 0
    return x0 if iterations == done else osem(model, prompts.float(), iterations - done, subsets, x0=x0)


def nearest_row(rows: Sequence[Sequence[float]], level: float) -> Sequence[float]:
    """The row whose first entry, a dose reduction factor, is nearest in ``log`` to ``1 / level``
    (``level``: the count level measured from a scan, 1 = full dose)."""
    factor = 1.0 / max(float(level), 1e-6)
    return min(rows, key=lambda r: abs(math.log(r[0]) - math.log(factor)))


@dataclass(frozen=True)
class OSEMBlend:
    """The output mixed with OSEM of the same scan: ``(1 - w) x + w o``.

    ``o`` is OSEM at the settings of the row nearest the scan's measured count level,
    post-filtered, and ``w`` that row's weight. Where a network's prior does not fit the
    activity (a body smoother than anything it was trained on), part of the image stays the
    classical one; the v35 round (docs/experiments.md) measured what it costs and buys.

    Args:
        rows: ``(dose reduction factor, iterations, postfilter FWHM mm, weight)``; factors
            >= 1, iterations >= 1, FWHM >= 0, weight in [0, 1].
        subsets: OSEM view subsets.
        keep_contrast: ``(background FWHM mm, threshold)``, ``(background FWHM mm,
            threshold, OSEM-excess threshold)`` or ``None``. Where the image is hotter than
            its own background (the image filtered at that FWHM) by a relative contrast
            ``c``, the weight falls to ``w (1 - min(c / threshold, 1))``
            (:func:`contrast_kept_fraction`), so a lesion keeps the network's level. With the
            third value it falls further, by ``1 - e`` (:func:`osem_excess_fraction`), where
            OSEM is hotter than the network by that share of the network's background, so
            OSEM's noise blobs in flat tissue are not mixed in. ``None`` mixes every voxel
            with ``w``.
    """

    rows: tuple[tuple[float, int, float, float], ...]
    subsets: int = 7
    keep_contrast: tuple[float, float] | tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if not self.rows:
            raise ValueError("osem_blend needs at least one row (factor, iterations, fwhm_mm, weight)")
        for row in self.rows:
            factor, iterations, fwhm, weight = row
            if not (factor >= 1 and iterations >= 1 and fwhm >= 0 and 0 <= weight <= 1):
                raise ValueError(f"osem_blend row {list(row)}: need factor >= 1, iterations >= 1, "
                                 "fwhm_mm >= 0, 0 <= weight <= 1")
        if self.subsets < 1:
            raise ValueError(f"osem_blend subsets must be >= 1, got {self.subsets}")
        if self.keep_contrast is not None and not (
            len(self.keep_contrast) in (2, 3) and all(v > 0 for v in self.keep_contrast)
        ):
            raise ValueError(f"osem_blend keep_contrast {self.keep_contrast}: need [background fwhm_mm > 0, "
                             "threshold > 0] or [fwhm_mm, threshold, osem_excess_threshold], all > 0")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> OSEMBlend:
        """From ``{"rows": [[f, it, fwhm, w], ...], "subsets": 7, "keep_contrast": [fwhm_mm, threshold]}``
        (``keep_contrast`` optional, with an optional third value, the OSEM-excess threshold)."""
        unknown = set(config) - {"rows", "subsets", "keep_contrast"}
        if unknown:
            raise ValueError(f"osem_blend: unknown keys {sorted(unknown)} (rows, subsets, keep_contrast)")
        if any(len(r) != 4 for r in config.get("rows", ())):
            raise ValueError("osem_blend rows are [factor, iterations, fwhm_mm, weight]")
        rows = tuple((float(f), int(i), float(fw), float(w)) for f, i, fw, w in config.get("rows", ()))
        keep = config.get("keep_contrast")
        if keep is not None:
            keep = tuple(float(v) for v in keep)
        return cls(rows, int(config.get("subsets", 7)), keep)

    def config(self) -> dict[str, Any]:
        """The ``from_config`` mapping of these settings."""
        out: dict[str, Any] = {"rows": [list(r) for r in self.rows], "subsets": self.subsets}
        if self.keep_contrast is not None:
            out["keep_contrast"] = list(self.keep_contrast)
        return out

    def __call__(
        self, image: torch.Tensor, model: PETForwardModel, prompts: torch.Tensor,
        level: torch.Tensor, grid: ImageGeometry,
        start: tuple[torch.Tensor, int, int] | None = None,
    ) -> torch.Tensor:
        """Mix ``image`` with OSEM of the same scans.

        Args:
            image: ``(B, nx, ny, nz)`` Bq/mL.
            model: the scans' batched forward model.
            prompts: measured counts ``(B, *sino)``.
            level: ``(B,)`` count level of each scan (1 = full dose).
            grid: the image grid.
            start: ``(x0, iterations, subsets)``: an OSEM image of these scans from the
                uniform start; a row's OSEM continues from it where it can
                (:func:`continued_osem`).

        Returns:
            ``(B, nx, ny, nz)`` Bq/mL: ``(1 - w) image + w o`` per scan (``w`` per voxel
            with ``keep_contrast``).
        """
        from pet_dl.recon.filters import gaussian_postfilter

        rows = [tuple(nearest_row(self.rows, float(v))) for v in level.flatten()]
        out = image.clone()
        for row in sorted(set(rows)):
            _, iterations, fwhm, weight = row
            cases = [b for b, r in enumerate(rows) if r == row]
            if weight == 0:
                continue
            with torch.no_grad():
                o = continued_osem(model, prompts, int(iterations), self.subsets, start)
                reference = gaussian_postfilter(o, grid, fwhm).to(image.dtype)
            for b in cases:
                w = torch.as_tensor(weight, dtype=image.dtype)
                if self.keep_contrast is not None:
                    background_fwhm, threshold, *excess = self.keep_contrast
                    w = w * (1 - contrast_kept_fraction(image[b], grid, background_fwhm, threshold))
                    if excess:
                        w = w * (1 - osem_excess_fraction(image[b], reference[b], grid, background_fwhm, excess[0]))
                out[b] = (1 - w) * image[b] + w * reference[b]
        return out


def contrast_kept_fraction(
    image: torch.Tensor, grid: ImageGeometry, background_fwhm_mm: float, threshold: float
) -> torch.Tensor:
    """Where an image is hotter than its surroundings: ``clamp(c / threshold, 0, 1)``.

    ``c = (x - b) / b`` is the relative contrast of each voxel against its background ``b``,
    the image filtered with a Gaussian of ``background_fwhm_mm`` (wider than a lesion);
    voxels at or below their background give 0, those ``threshold`` or more above give 1.

    Args:
        image: ``(*batch, nx, ny, nz)`` Bq/mL (non-negative).
        grid: the image grid.
        background_fwhm_mm: FWHM of the background filter, mm (> 0).
        threshold: relative contrast at which the fraction reaches 1 (> 0).

    Returns:
        ``image``'s shape, values in [0, 1] (unitless).
    """
    background, scale = _background(image, grid, background_fwhm_mm)
    return ((image - background) / (threshold * scale)).clamp(0, 1)


def _background(image: torch.Tensor, grid: ImageGeometry, fwhm_mm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` filtered with a Gaussian of ``fwhm_mm``, and the same floored at 1e-3 of
    its maximum per image (a divisor that stays positive outside the object)."""
    from pet_dl.recon.filters import gaussian_postfilter

    background = gaussian_postfilter(image, grid, fwhm_mm)
    floor = 1e-3 * background.flatten(-3).amax(-1).clamp_min(1e-12)[..., None, None, None]
    return background, torch.maximum(background, floor)


def osem_excess_fraction(
    image: torch.Tensor, reference: torch.Tensor, grid: ImageGeometry, background_fwhm_mm: float, threshold: float
) -> torch.Tensor:
    """Where a reference (OSEM) is hotter than an image: ``clamp((o - x) / (threshold b), 0, 1)``.

    ``b`` is the image ``x`` filtered with a Gaussian of ``background_fwhm_mm``; the fraction
    is 0 where OSEM ``o`` is at or below the image and 1 where it is ``threshold`` of that
    background or more above it (a noise blob of OSEM's in flat tissue, or a lesion the image
    lost: the mix then keeps the image there).

    Args:
        image: ``(*batch, nx, ny, nz)`` Bq/mL (non-negative).
        reference: the same shape and units.
        grid: the image grid.
        background_fwhm_mm: FWHM of the background filter, mm (> 0).
        threshold: excess over the background at which the fraction reaches 1 (> 0).

    Returns:
        ``image``'s shape, values in [0, 1] (unitless).
    """
    _, scale = _background(image, grid, background_fwhm_mm)
    return ((reference - image) / (threshold * scale)).clamp(0, 1)


def anchor_low_frequencies(
    image: torch.Tensor, reference: torch.Tensor, grid: ImageGeometry, sigma_mm: float | Sequence[float]
) -> torch.Tensor:
    """``image + G (reference - image)``: ``reference``'s content below the scale of ``G``.

    Args:
        image, reference: ``(*batch, nx, ny, nz)``, the same units.
        grid: the image grid (voxel size in mm).
        sigma_mm: ``G``'s standard deviation, mm: one value for the in-plane axes (z is left
            alone), or one per axis.

    Returns:
        the anchored image, the shape of ``image``.
    """
    sigma = (sigma_mm, sigma_mm, 0.0) if isinstance(sigma_mm, (int, float)) else tuple(sigma_mm)
    blur = GaussianResolution(grid, [s * FWHM_PER_SIGMA for s in sigma]).to(image.device)
    return image + blur(reference - image)
