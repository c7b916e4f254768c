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

A scan whose image grid reaches beyond the model's bins gets a first look (OSEM over
every bin) to find the object (:func:`object_extent_mm`); an object wider than the
model's field of view (a body, the NEMA IEC phantom: the shipped model's grid is 250 mm)
is reconstructed on the model's grid grown around it, at the model's voxel size, with as
many more radial bins (:func:`covering_layout`): the networks are convolutional and their
data steps follow the geometry, so only the field of view changes, not what a voxel
means. The data check's consistency map is computed plane by plane and stacked, its
regions found in 3D (:func:`planes_consistency_map`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from pet_dl.consistency import ConsistencyMap
from pet_dl.data_check import DataFit
from pet_dl.errors import GeometryError, InvalidInputError
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
    """The data check of a rebinned scan (3D, or 2D on another layout or grid): the worst
    plane's :class:`DataFit`, with the planes' consistency map.

    Attributes:
        plane: index of that plane among the ``2 N - 1`` rebinned planes.
        ratios: every plane's ratio (NaN for planes without counts), ``2 N - 1`` floats.
        unmapped: reconstructed planes left out of the consistency map, their count level
            below :data:`MAP_MIN_COUNT_LEVEL`.
    """

    plane: int
    ratios: tuple[float, ...]
    unmapped: int = 0


#: The lowest count level (:func:`pet_dl.models.blocks.count_level`) of a plane in the
#: consistency map: its threshold was calibrated from full dose to 1/100; below that a
#: plane's map is dominated by the randoms and scatter estimate (the end planes of the
#: 0.6 s real mMR scan, 100-500 prompts each, read z 4-6 with an all-zero image).
MAP_MIN_COUNT_LEVEL = 0.01


def radial_reach_mm(sinogram: SinogramGeometry, num_radial: int) -> float:
    """How far from the scanner's axis ``num_radial`` bins of ``sinogram``'s layout reach, mm:
    a voxel within it is seen in every view."""
    return replace(sinogram, num_radial=num_radial).field_of_view_radius_mm()


def field_of_view(image: ImageGeometry, radius_mm: float) -> torch.Tensor:
    """``(nx, ny)`` bool: the voxels of a 2D grid whose centres lie within ``radius_mm`` of the axis."""
    x = torch.from_numpy(image.voxel_centers(0))
    y = torch.from_numpy(image.voxel_centers(1))
    return x[:, None] ** 2 + y[None, :] ** 2 <= radius_mm**2


#: Margin of a grown grid beyond the object's outline, in the model's voxels (21 mm on 2.6 mm).
OBJECT_MARGIN_VOXELS = 8
#: The object's outline, for the size of a grown grid: where the 5-voxel mean of its OSEM
#: exceeds this share of its maximum.
OUTLINE_LEVEL = 0.03
#: The object's body, for whether the grid must grow: where that mean exceeds this share
#: of its mean inside the outline. Relative to the mean, not the maximum: FLT's marrow or a
#: hot lesion sets a body's maximum 12-18 times its median, and at 10 % of the maximum
#: (the count level's support) a 315 mm torso read 108 mm, so it was cut at 250 mm.
BODY_LEVEL = 0.25


class ObjectExtent(NamedTuple):
    """How far from the scanner's axis the scanned object reaches, mm.

    Attributes:
        body_mm: its body (:data:`BODY_LEVEL` of its mean): whether the grid must grow.
        outline_mm: its outline (:data:`OUTLINE_LEVEL` of its maximum): how far the grid
            must reach.
    """

    body_mm: float
    outline_mm: float


#: Every voxel the scan's bins reach (a first look, to find the object).
WHOLE_FIELD = ObjectExtent(math.inf, math.inf)


def object_extent_mm(rebinned: Scan, image: ImageGeometry, device: torch.device | str = "cpu") -> ObjectExtent:
    """How far from the axis the scanned object reaches, mm (zeros for an empty scan).

    The rebinned planes are summed into one 2D scan and reconstructed by OSEM (4
    iterations x 7 subsets) on ``image``, within the bins' reach (beyond it, in a square
    grid's corners, OSEM is not determined), and smoothed by a 5-voxel box mean; the
    outline is where that exceeds :data:`OUTLINE_LEVEL` of its maximum, the body where it
    exceeds :data:`BODY_LEVEL` of its mean inside the outline, and each extent the largest
    ``|x|`` or ``|y|`` of those voxels plus half a voxel. Synthetic FLT-like torsos 315-372
    mm wide: body 147-178 mm; the NEMA phantom: 150 mm; the real mMR head without scatter
    correction (its unmodelled scatter lies around it): body 140, outline 169 mm.

    Args:
        rebinned: direct planes (``(P, V, R)`` tensors, from :func:`pet_dl.rebin.ssrb` or
            :func:`pet_dl.rebin.relayout_2d`).
        image: a 2D grid ``(nx, ny, 1)`` on which the planes' bins see the whole object.
        device: where to reconstruct.
    """
    import torch.nn.functional as F

    from pet_dl.models.batch import initial_image

    summed = replace(
        rebinned,
        prompts=rebinned.prompts.sum(0, keepdim=True),
        multiplicative=rebinned.multiplicative.sum(0, keepdim=True),
        additive=rebinned.additive.sum(0, keepdim=True),
    )
    one = _plane_batch(plane_scan(summed, slice(None), image), torch.device(device), None)
    osem = initial_image(one.forward_model(), one.prompts, 4, 7)[0, ..., 0].cpu().clamp_min(0)
    seen = field_of_view(image, radial_reach_mm(rebinned.sinogram, rebinned.sinogram.num_radial))
    smooth = F.avg_pool2d((osem * seen)[None, None], 5, stride=1, padding=2, count_include_pad=False)[0, 0]
    peak = float(smooth.max())
    if not peak > 0:
        return ObjectExtent(0.0, 0.0)
    x = torch.from_numpy(image.voxel_centers(0)).abs()
    y = torch.from_numpy(image.voxel_centers(1)).abs()
    half = 0.5 * max(image.voxel_size_mm[:2])

    def reach(inside: torch.Tensor) -> float:
        where = torch.nonzero(inside)
        return float(max(x[where[:, 0]].max(), y[where[:, 1]].max())) + half

    outline = smooth > OUTLINE_LEVEL * peak
    body = smooth > BODY_LEVEL * float(smooth[outline].mean())
    return ObjectExtent(reach(body), reach(outline))


def crop_radial(rebinned: Scan, num_radial: int) -> Scan:
    """Direct planes with their central ``num_radial`` radial bins (as :func:`pet_dl.rebin.relayout_2d` keeps them)."""
    from pet_dl.rebin import radial_window

    first, _, count = radial_window(rebinned.sinogram.num_radial, num_radial)
    if count != num_radial:
        raise GeometryError(f"cannot crop {rebinned.sinogram.num_radial} radial bins to {num_radial}")
    cut = {name: getattr(rebinned, name)[..., first : first + count] for name in ("prompts", "multiplicative", "additive")}
    return replace(rebinned, sinogram=replace(rebinned.sinogram, num_radial=num_radial), **cut)


def covering_layout(
    scan: Scan, trained: SinogramGeometry, trained_image: ImageGeometry,
    object_extent: ObjectExtent | None = None, multiple: int = 4,
) -> tuple[ImageGeometry, int]:
    """The model's 2D grid and radial bins, grown where the scan needs a wider field of view.

    Without ``object_extent``: a scan whose image grid reaches no further from the axis
    than the model's radial bins (the shipped model's 128 bins: 130 mm) gets the model's
    own grid and bins, unchanged; otherwise the grid grows to cover the scan's grid. With
    ``object_extent`` (:func:`object_extent_mm`; :data:`WHOLE_FIELD` for the whole field
    of view): an object whose body lies within the model's bins gets the model's own
    layout, a wider one a grid that covers its outline and :data:`OBJECT_MARGIN_VOXELS`
    around it, whatever grid the scan's image asks for (the networks' images depend on
    how much empty grid surrounds the object: their normalisations are over the whole
    grid).

    A grown grid keeps the model's voxel size and centring, is the smallest multiple of
    ``multiple`` voxels per side that covers that extent (at most the field of view of
    the scan's bins), and its radial bins grow in pairs until they reach its corners
    (capped at the scan's bins), so that every voxel is seen in every view: a voxel
    beyond the bins' reach is seen in some views only, and the networks fill such voxels
    from context.

    Args:
        scan: the scan to reconstruct (its ``image`` and ``sinogram``).
        trained: the model's 2D sinogram layout.
        trained_image: the model's 2D grid ``(nx, ny, 1)``, centred on the scanner's axis.
        object_extent: how far from the axis the object reaches, or None.
        multiple: the grown side is a multiple of this (the UNets' total stride).

    Returns:
        ``(grid (nx', ny', 1), num_radial)``; ``nx' >= nx``, ``num_radial >= trained.num_radial``.
    """
    vx, vy = trained_image.voxel_size_mm[:2]
    if object_extent is None:  # the scan grid's largest transaxial distance from the axis, mm
        extent = max(abs(edge) for bounds in scan.image.bounds_mm()[:2] for edge in bounds)
    elif object_extent.body_mm <= radial_reach_mm(trained, trained.num_radial):
        return trained_image, trained.num_radial  # the object fits the model's own layout
    else:
        extent = max(object_extent.body_mm, object_extent.outline_mm) + OBJECT_MARGIN_VOXELS * max(vx, vy)

    def reach(num_radial: int) -> float:
        return radial_reach_mm(trained, num_radial)

    extent = min(extent, reach(scan.sinogram.num_radial))
    if extent <= reach(trained.num_radial) + 1e-3:
        return trained_image, trained.num_radial
    nx = max(trained_image.shape[0], multiple * math.ceil(2.0 * extent / vx / multiple))
    ny = max(trained_image.shape[1], multiple * math.ceil(2.0 * extent / vy / multiple))
    grown = ImageGeometry.centered((nx, ny, 1), trained_image.voxel_size_mm)
    wanted = 0.5 * math.hypot(nx * vx, ny * vy)  # every voxel seen in every view
    num_radial = trained.num_radial
    while num_radial + 2 <= scan.sinogram.num_radial and reach(num_radial) < wanted:
        num_radial += 2
    return grown, num_radial


def grown_metadata(metadata: dict[str, Any], image: ImageGeometry, num_radial: int) -> dict[str, Any]:
    """The model's metadata with its 2D grid and radial bins replaced by grown ones
    (:func:`covering_layout`), for the model's geometry check of the grown planes."""
    sinogram = dict(metadata["sinogram"], num_radial=int(num_radial))
    return dict(metadata, sinogram=sinogram, image=image.to_dict())


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


def _chunk_batch(rebinned: Scan, chunk: list[int], image2d: ImageGeometry, device: torch.device) -> ReconBatch:
    """Planes ``chunk`` of a rebinned scan as a batch of one-plane scans on ``image2d``."""
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
    return _plane_batch(stack, device, None)


def _model_plane_set(
    scan: Scan, metadata: dict[str, Any], device: torch.device
) -> tuple[Scan, ImageGeometry, torch.Tensor | None, list[int]]:
    """:func:`model_planes` of ``scan``, the grid's field of view and the planes with counts.

    Returns:
        ``(rebinned, image2d, seen, active)``: ``seen`` the ``(nx, ny)`` mask of the voxels
        within the bins' reach on a grown grid (``None`` on the model's own grid: a grown
        grid's corners can lie beyond the scanner's bins, the mMR's 344 reach 294 mm, and
        nothing is measured there, so the planes are zero there, as in a scanner's own
        images); ``active`` the planes with counts and sensitivity.
    """
    trained = SinogramGeometry.from_dict(metadata["sinogram"])
    trained_image = ImageGeometry.from_dict(metadata["image"])
    rebinned, image2d = model_planes(scan, metadata, device)
    reach = radial_reach_mm(trained, rebinned.sinogram.num_radial)
    seen = None if image2d.shape == trained_image.shape else field_of_view(image2d, reach)
    counts = rebinned.prompts.flatten(1).sum(1)
    sens = rebinned.multiplicative.flatten(1).amax(1)
    active = [int(j) for j in torch.nonzero((counts > 0) & (sens > 0)).flatten()]
    return rebinned, image2d, seen, active


def network_count_levels(
    scan: Scan, loaded: LoadedModel, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The count level a 2D model reads on each plane of a scan it reconstructs plane by plane.

    As :func:`reconstruct_planes` feeds the network: the scan brought onto the model's layout
    and grid (grown around a wider object), each plane's start (OSEM of the model's
    ``init_iterations`` x ``init_subsets``, zero beyond the bins' reach on a grown grid) and
    :meth:`conditioning` on it. For :func:`pet_dl.reading_osem.osem_for_reading`, so that an
    OSEM for reading a scan on another layout or grid gets the settings of the level the
    network read.

    Returns:
        ``(levels, prompts)``: ``(planes,)`` float32 on CPU each, the level of each plane (0
        for planes without counts) and its prompts (counts).
    """
    from pet_dl.models.batch import initial_image

    rebinned, image2d, seen, active = _model_plane_set(scan, loaded.metadata, device)
    model = loaded.model
    levels = torch.zeros(rebinned.sinogram.num_planes)
    for i in range(0, len(active), PLANE_BATCH):
        chunk = active[i : i + PLANE_BATCH]
        recon_batch = _chunk_batch(rebinned, chunk, image2d, device)
        with torch.no_grad():
            start = initial_image(recon_batch.forward_model(), recon_batch.prompts, model.init_iterations,
                                  model.init_subsets)
            if seen is not None:
                start = start * seen.to(start.device)[:, :, None]
            levels[torch.tensor(chunk)] = model.conditioning(recon_batch, start).float().cpu()
    return levels, rebinned.prompts.flatten(1).sum(1).float().cpu()


@torch.no_grad()
def model_planes(
    scan: Scan, metadata: dict[str, Any], device: torch.device | str = "cpu"
) -> tuple[Scan, ImageGeometry]:
    """A scan's direct planes on the layout a 2D model reconstructs them on, and its grid.

    A 3D scan is rebinned to direct planes (SSRB), a 2D one brought to the model's layout
    (:func:`pet_dl.rebin.relayout_2d`); where the scan's grid reaches beyond the model's
    bins, a first look over every bin finds the object (:func:`object_extent_mm`) and the
    grid grows around it (:func:`covering_layout`), the bins cropped to match. Both the
    scan (before rebinning, for a 3D scan) and the planes are checked against the model's
    geometry with only a grown grid's size and bins relaxed.

    Args:
        scan: a checked scan (:func:`pet_dl.inference.check_scan`).
        metadata: the model's checkpoint metadata (its ``sinogram`` and ``image``).
        device: where the first look reconstructs.

    Returns:
        ``(planes, grid)``: ``(P, V, R)`` direct planes on the model's view mashing and the
        grid's radial bins, and the 2D grid ``(nx, ny, 1)`` they are reconstructed on.

    Raises:
        GeometryError: the scan's layout cannot be brought to the model's.
    """
    trained = SinogramGeometry.from_dict(metadata["sinogram"])
    trained_image = ImageGeometry.from_dict(metadata["image"])
    image2d, num_radial = covering_layout(scan, trained, trained_image)
    grown = image2d.shape != trained_image.shape
    if grown:  # a first look with every bin, on a grid they cover, to find the object
        image2d, num_radial = covering_layout(scan, trained, trained_image, WHOLE_FIELD)
    three_d = scan.sinogram.scanner.num_rings >= 2
    if three_d:  # the model's own check first (nothing is relaxed but a grown grid's size and bins)
        target = direct_planes_geometry(scan.sinogram, num_radial, trained.view_mashing)
        check_compatible(replace(scan, sinogram=plane_geometry(target), image=image2d),
                         grown_metadata(metadata, image2d, num_radial))
    # a 3D scan rebinned to direct planes, a 2D one brought to the model's layout
    rebinned = (ssrb if three_d else relayout_2d)(scan, num_radial, trained.view_mashing)
    if grown:  # the grid around the object, whatever grid the scan's image asks for
        extent = object_extent_mm(rebinned, image2d, device)
        image2d, num_radial = covering_layout(scan, trained, trained_image, extent)
        rebinned = crop_radial(rebinned, num_radial)
    check_compatible(replace(rebinned, sinogram=plane_geometry(rebinned.sinogram), image=image2d),
                     grown_metadata(metadata, image2d, num_radial))
    return rebinned, image2d


def reconstruct_planes(
    scan: Scan,
    loaded: LoadedModel,
    device: torch.device,
    amp: bool | None = None,
    check: bool = True,
    batch: int = PLANE_BATCH,
) -> tuple[torch.Tensor, PlaneFit | None]:
    """Reconstruct a 3D scan plane by plane with a 2D model (or a 2D scan on another layout or grid).

    The planes are reconstructed on the model's grid, or on a grid grown around a wider
    object (:func:`covering_layout`, :func:`object_extent_mm`).

    Args:
        scan: a checked scan (:func:`pet_dl.inference.check_scan`) of a scanner with
            several rings, any span / mashing / TOF, or of one ring on another layout or
            image grid.
        loaded: a 2D model (trained on one ring) on ``device``.
        device: where to run.
        amp: bf16 autocast on CUDA (``None``: off; the planes are 2D).
        check: also run the data check (reference OSEM 4 x 7 per plane, shared with the
            network as its start when it starts from the same OSEM, and the consistency
            map, :func:`planes_consistency_map`).
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
    rebinned, image2d, seen, active = _model_plane_set(scan, loaded.metadata, device)
    target = rebinned.sinogram
    model = loaded.model
    same_start = (getattr(model, "init_iterations", None), getattr(model, "init_subsets", None)) == (4, 7)
    use_amp = device.type == "cuda" and bool(amp)
    num = target.num_planes
    planes = torch.zeros(num, *image2d.shape[:2])
    fits: list[tuple[float, float] | None] = [None] * num
    from tqdm import tqdm

    chunks = [active[i : i + batch] for i in range(0, len(active), batch)]
    osems = torch.zeros(num, *image2d.shape[:2]) if check else None  # for the consistency map
    levels = torch.zeros(num)
    for chunk in tqdm(chunks, desc="planes", unit="batch", disable=None, leave=False):
        index = torch.tensor(chunk)
        recon_batch = _chunk_batch(rebinned, chunk, image2d, device)
        osem = None
        if check or seen is not None:
            forward = recon_batch.forward_model()
        if check:
            osem = initial_image(forward, recon_batch.prompts, 4, 7)
            if seen is not None:
                osem = osem * seen.to(osem.device)[:, :, None]
            if same_start:
                recon_batch = replace(recon_batch, initial=osem)
        if seen is not None and recon_batch.initial is None:
            # the network's start, zero beyond the bins' reach too: there the sensitivity is
            # all but zero and OSEM blows up (single voxels of 10^6-10^7 Bq/mL on a whole
            # ACRIN slice at 1/50), which set the count level, the intensity scale and the
            # networks' norms: 12-20 false hot spots (docs/experiments.md, "After v43")
            start = initial_image(forward, recon_batch.prompts, model.init_iterations, model.init_subsets)
            recon_batch = replace(recon_batch, initial=start * seen.to(start.device)[:, :, None])
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=use_amp):
            images = model(recon_batch)
        images = images.float()
        if not bool(torch.isfinite(images).all()):
            raise InvalidInputError("the reconstruction has NaN or Inf values (scan data out of range?)")
        if seen is not None:
            images = images * seen.to(images.device)[:, :, None]
        planes[index] = images[..., 0].cpu()
        if check:
            osems[index] = osem[..., 0].cpu()
            levels[index] = model.conditioning(recon_batch, osem).float().cpu()  # what the network reads
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
    mapped = [j for j in active if float(levels[j]) >= MAP_MIN_COUNT_LEVEL]
    consistency = None
    if mapped:
        consistency = planes_consistency_map(rebinned, mapped, planes, osems, image2d, z, scan.image, device)
    return image, PlaneFit(dev, ref, ratios[worst], worst, ratios, len(active) - len(mapped),
                           consistency=consistency)


def planes_consistency_map(
    rebinned: Scan,
    active: list[int],
    planes: torch.Tensor,
    osems: torch.Tensor,
    image2d: ImageGeometry,
    plane_z_mm: torch.Tensor,
    target: ImageGeometry,
    device: torch.device | str = "cpu",
) -> ConsistencyMap:
    """The data-consistency map of reconstructed planes, on ``target``, regions in 3D.

    Each active plane's map (:func:`pet_dl.consistency.consistency_map` against its own
    counts, with its OSEM as the reference) is computed on ``image2d``; the stack is
    resampled onto ``target`` like the image (:func:`pet_dl.rebin.stack_planes`), and the
    flagged regions are the connected components of the stack in 3D (a blob that spans
    several planes is one region; centres in world mm).

    Args:
        rebinned: the direct planes (``(P, V, R)`` tensors) on the layout of ``image2d``.
        active: the planes that were reconstructed (the others stay zero).
        planes: ``(P, nx, ny)`` the images, Bq/mL, on ``image2d``.
        osems: ``(P, nx, ny)`` their 4 x 7 OSEM, Bq/mL.
        image2d: the planes' 2D grid.
        plane_z_mm: ``(P,)`` the planes' axial positions, uniformly spaced, mm.
        target: the scan's image grid.
        device: where to project.
    """
    from pet_dl.consistency import (
        CONSISTENCY_THRESHOLD,
        MIN_RELATIVE_EXCESS,
        consistency_map,
        find_regions,
        object_support,
    )

    num = planes.shape[0]
    z, excess, reference_z = (torch.zeros(num, *image2d.shape[:2]) for _ in range(3))
    for j in active:
        one = _plane_batch(plane_scan(rebinned, slice(j, j + 1), image2d), torch.device(device), None)
        maps = consistency_map(one.forward_model(), one.prompts[0], planes[j][..., None], image2d,
                               float(rebinned.psf_fwhm_mm), reference=osems[j][..., None])
        z[j], excess[j], reference_z[j] = maps.z[..., 0], maps.excess[..., 0], maps.reference_z[..., 0]
    spacing = float(plane_z_mm[1] - plane_z_mm[0]) if num > 1 else image2d.voxel_size_mm[2]
    stack = ImageGeometry((*image2d.shape[:2], num), (*image2d.voxel_size_mm[:2], spacing),
                          (*image2d.origin_mm[:2], float(plane_z_mm[0])))

    def volume(t: torch.Tensor) -> torch.Tensor:
        return t.permute(1, 2, 0)

    support = object_support(volume(osems), stack) & (volume(excess) > MIN_RELATIVE_EXCESS)
    regions = find_regions(volume(z), stack, CONSISTENCY_THRESHOLD, support=support)

    def onto(t: torch.Tensor) -> torch.Tensor:
        return stack_planes(t, image2d, plane_z_mm, target)

    return ConsistencyMap(onto(z), regions, CONSISTENCY_THRESHOLD, onto(excess), onto(reference_z))
