"""3D scans through a 2D network: SSRB to direct planes, planes in batches, one volume.

:func:`pet_dl.inference.reconstruct_with_network` and :func:`~pet_dl.inference.reconstruct_and_check`
hand a scan here when the scanner has several rings and the model was trained on one
direct plane (:func:`needs_rebinning`). The scan is rebinned (:func:`pet_dl.rebin.ssrb`)
straight onto the model's 2D layout (radial bins cropped to the model's, views mashed to
its mashing: the same LORs the model was trained on, so the model's geometry check stays
exact), each of the ``2 N - 1`` planes is reconstructed on the model's 2D grid, ``batch``
planes per network call, and the stack is resampled onto the scan's image grid
(:func:`pet_dl.rebin.stack_planes`). The data check runs per plane (the worst plane is
reported).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from pet_dl.data_check import DataFit
from pet_dl.errors import InvalidInputError
from pet_dl.geometry import ImageGeometry, SinogramGeometry
from pet_dl.inference import check_compatible
from pet_dl.rebin import (
    direct_planes_geometry,
    plane_geometry,
    plane_scan,
    relayout_2d,
    ssrb,
    stack_planes,
)

if TYPE_CHECKING:
    from pet_dl.io.checkpoint import LoadedModel
    from pet_dl.models import ReconBatch
    from pet_dl.scan import Scan

#: Planes per network call (memory: about 40 MB per plane for the shipped 2D model on CPU).
PLANE_BATCH = 16


@dataclass(frozen=True)
class PlaneFit(DataFit):
    """The data check of a rebinned 3D scan: the worst plane's :class:`DataFit`.

    Attributes:
        plane: index of that plane among the ``2 N - 1`` rebinned planes.
        ratios: every plane's ratio (NaN for planes without counts), ``2 N - 1`` floats.
    """

    plane: int
    ratios: tuple[float, ...]


def needs_rebinning(scan: Scan, metadata: dict[str, Any]) -> bool:
    """True when a model trained on a single ring must take ``scan`` through this module.

    That is a scan with several rings (rebinned to direct planes), and a one-ring scan of
    the same scanner on another transaxial layout (the native 344 radial bins and 252
    views of ``python -m pet_dl simulate --scanner mmr``, say: cropped and mashed onto the
    model's) or another image grid (reconstructed on the model's, resampled onto the
    scan's). A scan of another scanner is left to the model's geometry check.
    """
    trained = metadata.get("sinogram")
    if not isinstance(trained, dict) or int(trained.get("scanner", {}).get("num_rings", 0)) != 1:
        return False
    sino = scan.sinogram
    if sino.scanner.num_rings >= 2:
        return True
    if sino.scanner.name != trained.get("scanner", {}).get("name") or sino.tof or sino.arc_corrected:
        return False
    radial, mashing = int(trained.get("num_radial", -1)), int(trained.get("view_mashing", 1))
    if (sino.num_radial, sino.view_mashing) != (radial, mashing):
        # only when the scan covers the model's radial bins and its views mash onto the model's
        return sino.num_radial >= radial and mashing % sino.view_mashing == 0
    return isinstance(metadata.get("image"), dict) and scan.image.to_dict() != metadata["image"]


def _plane_batch(stack: Scan, device: torch.device, initial: torch.Tensor | None) -> ReconBatch:
    """The planes of a 2D stack (tensors ``(n, V, R)``) as a batch of ``n`` one-plane scans."""
    from pet_dl.models import ReconBatch

    n = stack.prompts.shape[0]
    return ReconBatch(
        prompts=stack.prompts.float().unsqueeze(1),
        multiplicative=stack.multiplicative.float().unsqueeze(1),
        additive=stack.additive.float().unsqueeze(1),
        calibration=torch.full((n,), float(stack.calibration)),
        dose_fraction=torch.full((n,), float(stack.metadata.dose_fraction)),
        sinogram=stack.sinogram,
        image=stack.image,
        psf_fwhm_mm=float(stack.psf_fwhm_mm),
        initial=initial,
    ).to(device)


@torch.no_grad()
def reconstruct_planes(
    scan: Scan,
    loaded: LoadedModel,
    device: torch.device,
    amp: bool | None = None,
    check: bool = True,
    batch: int = PLANE_BATCH,
) -> tuple[torch.Tensor, PlaneFit | None]:
    """Reconstruct a 3D scan plane by plane with a 2D model.

    Args:
        scan: a checked scan (:func:`pet_dl.inference.check_scan`) of a scanner with
            several rings, any span / mashing / TOF.
        loaded: a 2D model (trained on one ring) on ``device``.
        device: where to run.
        amp: bf16 autocast on CUDA (``None``: off; the planes are 2D).
        check: also run the data check (reference OSEM 4 x 7 per plane, shared with the
            network as its start when it starts from the same OSEM).
        batch: planes per network call.

    Returns:
        ``(image (nx, ny, nz) Bq/mL float32 on CPU on the scan's grid, PlaneFit or None)``.

    Raises:
        GeometryError: the scan's transaxial layout cannot be brought to the model's
            (another scanner, arc correction, a mashing that does not divide).
    """
    from pet_dl.metrics import poisson_deviance
    from pet_dl.models.batch import initial_image

    if batch < 1:
        raise InvalidInputError(f"plane batch must be >= 1, got {batch}")
    trained = SinogramGeometry.from_dict(loaded.metadata["sinogram"])
    image2d = ImageGeometry.from_dict(loaded.metadata["image"])
    if scan.sinogram.scanner.num_rings >= 2:
        target = direct_planes_geometry(scan.sinogram, trained.num_radial, trained.view_mashing)
        # the model's own check, on the 2D layout every plane will have: nothing is relaxed
        check_compatible(replace(scan, sinogram=plane_geometry(target), image=image2d), loaded.metadata)
        rebinned = ssrb(scan, trained.num_radial, trained.view_mashing)
    else:  # a 2D scan on another layout or image grid: brought to the model's
        rebinned = relayout_2d(scan, trained.num_radial, trained.view_mashing)
        target = rebinned.sinogram
        check_compatible(replace(rebinned, image=image2d), loaded.metadata)
    model = loaded.model
    same_start = (getattr(model, "init_iterations", None), getattr(model, "init_subsets", None)) == (4, 7)
    use_amp = device.type == "cuda" and bool(amp)
    num = target.num_planes
    planes = torch.zeros(num, *image2d.shape[:2])
    fits: list[tuple[float, float] | None] = [None] * num
    counts = rebinned.prompts.flatten(1).sum(1)
    sens = rebinned.multiplicative.flatten(1).amax(1)
    active = [int(j) for j in torch.nonzero((counts > 0) & (sens > 0)).flatten()]
    from tqdm import tqdm

    chunks = [active[i : i + batch] for i in range(0, len(active), batch)]
    for chunk in tqdm(chunks, desc="planes", unit="batch", disable=None, leave=False):
        index = torch.tensor(chunk)
        stack = plane_scan(
            replace(
                rebinned,
                prompts=rebinned.prompts[index],
                multiplicative=rebinned.multiplicative[index],
                additive=rebinned.additive[index],
            ),
            slice(None),
            image2d,
        )
        recon_batch = _plane_batch(stack, device, None)
        osem = None
        if check:
            forward = recon_batch.forward_model()
            osem = initial_image(forward, recon_batch.prompts, 4, 7)
            if same_start:
                recon_batch = replace(recon_batch, initial=osem)
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
            images = model(recon_batch)
        images = images.float()
        if not bool(torch.isfinite(images).all()):
            raise InvalidInputError("the reconstruction has NaN or Inf values (scan data out of range?)")
        planes[index] = images[..., 0].cpu()
        if check:
            dev = poisson_deviance(forward(images), recon_batch.prompts)
            ref = poisson_deviance(forward(osem), recon_batch.prompts)
            for j, a, b in zip(chunk, dev.tolist(), ref.tolist()):
                fits[j] = (a, b)
    z = target.plane_z()[0]
    image = stack_planes(planes, image2d, z, scan.image)
    if not check:
        return image, None
    ratios = tuple(f[0] / max(f[1], 1e-12) if f else math.nan for f in fits)
    worst = max(active, key=lambda j: ratios[j]) if active else 0
    dev, ref = fits[worst] if fits[worst] else (math.nan, math.nan)
    return image, PlaneFit(dev, ref, ratios[worst], worst, ratios)
