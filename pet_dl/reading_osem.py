"""OSEM of a scan for reading beside the network's image, at the settings chosen for its counts.

The shipped network fades hot lesions of 10 mm and less at low dose (the NEMA IEC phantom's
10 mm sphere: contrast recovery 7 % against OSEM's 17 % at 1/20; docs/results.md), and
neither a loss term nor the measured counts could give them back (docs/experiments.md,
the v43 round and the probe after it). So at low dose a reader looks at small lesions on an
OSEM of the same scan too. This is that OSEM, on the scan's own geometry and image grid
(``python -m pet_dl recon`` with the settings filled in): the iterations and post-filter
chosen on the BrainWeb validation subjects for the dose nearest the scan's count level
(the rows the model mixes with, ``OSEMBlend.rows``; docs/results.md, "Parameters chosen on
validation"), the count level measured from the scan itself as the network measures it
(:func:`pet_dl.models.blocks.count_level`: net trues per mL of the object, relative to the
training's full dose), so a scan with no dose metadata gets the right settings.

Layer: above ``inference`` (it loads the model for its settings), ``plane_inference`` and ``recon``; below
``infer.py``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pet_dl.io.checkpoint import LoadedModel
    from pet_dl.models.anchor import OSEMBlend
    from pet_dl.scan import Scan


@dataclass(frozen=True)
class ReadingOSEM:
    """An OSEM image of one scan and the settings it was made with.

    Attributes:
        image: ``(nx, ny, nz)`` float32 Bq/mL on the scan's image grid, on the CPU.
        count_level: the scan's measured count level (1 = the training's full dose).
        dose_factor: the dose reduction factor of the settings' row (nearest the level).
        iterations: OSEM iterations.
        subsets: OSEM view subsets.
        postfilter_fwhm_mm: Gaussian post-filter FWHM, mm.
    """

    image: torch.Tensor
    count_level: float
    dose_factor: float
    iterations: int
    subsets: int
    postfilter_fwhm_mm: float

    def describe(self) -> str:
        """One line: the settings and why (``OSEM 4 x 7, 6 mm post-filter (count level 0.051:
        the settings chosen for 1/20 dose)``)."""
        dose = "full dose" if self.dose_factor == 1 else f"1/{self.dose_factor:g} dose"
        return (f"OSEM {self.iterations} x {self.subsets}, {self.postfilter_fwhm_mm:g} mm post-filter "
                f"(count level {self.count_level:.3g}: the settings chosen for {dose})")


def reading_settings(loaded: LoadedModel) -> tuple[OSEMBlend, float]:
    """The OSEM rows per dose and the full-dose count density a model carries.

    Returns:
        ``(the model's OSEMBlend, its count_reference in net counts per mL)``.

    Raises:
        CheckpointError: the model has no OSEM mix or no ``count_reference``.
    """
    from pet_dl.io.checkpoint import CheckpointError

    blend = getattr(loaded.model, "osem_blend", None)
    reference = getattr(loaded.model, "count_reference", None)
    if blend is None or reference is None:
        raise CheckpointError("this model carries no OSEM settings per count level (no osem_blend or "
                              "count_reference); run python -m pet_dl recon with settings of your choice")
    return blend, float(reference)


def weighted_median(values: torch.Tensor, weights: torch.Tensor) -> float:
    """The median of ``values`` weighted by ``weights`` (``(n,)`` each, weights >= 0, not all 0):
    the smallest value at which the cumulative weight of the sorted values reaches half the total."""
    order = torch.argsort(values)
    cumulative = torch.cumsum(weights[order].double(), 0)
    i = int(torch.searchsorted(cumulative, 0.5 * cumulative[-1]))
    return float(values[order][min(i, len(values) - 1)])


def osem_for_reading(
    scan: Scan,
    checkpoint: str | os.PathLike[str] | LoadedModel | None = None,
    device: str | torch.device | None = None,
) -> ReadingOSEM:
    """OSEM of ``scan`` at the settings a model carries for the scan's measured count level.

    The count level is measured as the network measures it: from the support of the
    network's own start, OSEM of the model's ``init_iterations`` x ``init_subsets`` from a
    uniform image (:func:`pet_dl.models.blocks.count_level` with the model's
    ``count_reference``). One iteration, as before 2026-12-07, has a wider support and read
    the level 4-55 % lower than the network, so that the settings of the next lower dose
    were chosen for 14 of 90 validation scans. The row of the model's OSEM mix nearest that
    level gives the iterations and the post-filter; the image is the one ``python -m pet_dl
    recon --algorithm osem`` gives with the same settings (the same subsets in the same
    order). A 2D scan on another layout or image grid (the mMR's native 252 x 344) gets the
    level the network reads after bringing it onto its own
    (:func:`pet_dl.plane_inference.network_count_levels`). A 3D scan that a 2D model reads
    plane by plane (its rebinned direct planes, each at its own level) gets the median of the
    planes' levels weighted by their counts: the settings of the level at which the network
    read most of the counts (a 3D model's, the level measured in 3D). When the start uses
    the mix's subsets, as the shipped model's does, the iterates on the way to the start are
    kept and shared, not run twice.

    Args:
        scan: the scan, on any geometry the scanner's forward model takes (2D, 3D, native
            layout); checked as :func:`pet_dl.inference.reconstruct_with_network` checks it.
        checkpoint: a ``.safetensors`` path, a loaded model, or ``None`` (the shipped one).
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).

    Returns:
        a :class:`ReadingOSEM`.

    Raises:
        InvalidInputError: bad scan data.
        CheckpointError: the model carries no OSEM settings per count level (no OSEM mix
            or no ``count_reference``): use ``python -m pet_dl recon`` and choose them.
    """
    from pet_dl.inference import check_scan, load_model, resolve_device
    from pet_dl.models.anchor import nearest_row
    from pet_dl.models.blocks import count_level
    from pet_dl.plane_inference import needs_rebinning, network_count_levels
    from pet_dl.recon import gaussian_postfilter
    from pet_dl.recon.em import osem

    check_scan(scan)
    dev = resolve_device(device)
    loaded = load_model(checkpoint, dev)
    blend, reference = reading_settings(loaded)
    subsets = min(int(blend.subsets), scan.sinogram.num_views)
    start_iterations = int(getattr(loaded.model, "init_iterations", 1))
    start_subsets = min(int(getattr(loaded.model, "init_subsets", subsets)), scan.sinogram.num_views)
    forward = scan.forward_model(dev)
    prompts = scan.prompts.to(device=dev, dtype=torch.float32)
    # a 3D scan's subset sensitivities are minutes of back-projection: computed once, kept
    # in a temporary folder for the later calls, and the iterations get a progress bar
    three_d = scan.sinogram.scanner.num_rings >= 2
    folder = tempfile.TemporaryDirectory(prefix="pet_dl_reading_") if three_d else contextlib.nullcontext()
    with torch.no_grad(), folder as cache:
        def iterate(count: int, start: torch.Tensor | None, n_subsets: int) -> torch.Tensor:
            return osem(forward, prompts, count, n_subsets, x0=start, progress=three_d, sensitivity_cache=cache)

        # the iterates the rows may ask for on the way to the network's start are kept
        shared = start_subsets == subsets
        wanted = sorted({int(r[1]) for r in blend.rows if int(r[1]) < start_iterations} if shared else set())
        kept: dict[int, torch.Tensor] = {}
        done, image = 0, None
        for count in wanted + [start_iterations]:
            image = iterate(count - done, image, start_subsets)
            kept[count], done = image, count
        if needs_rebinning(scan, loaded.metadata):
            # a 2D scan on another layout or grid, or a 3D scan read plane by plane: the level
            # the network reads after the relayout (a 3D scan: the count-weighted median plane's)
            level = weighted_median(*network_count_levels(scan, loaded, dev))
        else:
            level = float(count_level(prompts[None], scan.additive.to(dev, torch.float32)[None], image[None],
                                      scan.image.voxel_size_mm, reference)[0])
        factor, iterations, fwhm, _ = nearest_row(blend.rows, level)
        iterations = int(iterations)
        if not shared:
            image = iterate(iterations, None, subsets)
        elif iterations in kept:
            image = kept[iterations]
        else:
            image = iterate(iterations - start_iterations, kept[start_iterations], subsets)
        image = gaussian_postfilter(image, scan.image, float(fwhm)) if fwhm > 0 else image
    return ReadingOSEM(image.float().cpu(), level, float(factor), iterations, subsets, float(fwhm))
