"""``reconstruct_with_network(scan, checkpoint)``: the one inference path of infer.py and TorchServe.

Loading a model and running it: :func:`load_model`, :func:`reconstruct_with_network`, and
:func:`reconstruct_and_check`, which also runs the data check of :mod:`pet_dl.data_check`
(the image against the scan's counts) with one OSEM shared by the network's start and the
check.

It validates the scan (finite, non-negative, non-empty data of the right shapes), refuses
a scan whose sinogram layout or image grid differs from the checkpoint's training
geometry (the message names the difference), and runs the network without autograd on
CUDA when there is one. Memory on large 3D scans is bounded by inference mode (no
activations kept), by the projector's chunking over LORs, and optionally by bf16
autocast on CUDA (the models keep their Poisson data terms in float32).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pet_dl.errors import GeometryError, InvalidInputError
from pet_dl.io.checkpoint import (  # noqa: F401  (SHIPPED_MODEL, shipped_checkpoint: also from here)
    SHIPPED_MODEL,
    CheckpointError,
    LoadedModel,
    load_checkpoint,
    shipped_checkpoint,
)

if TYPE_CHECKING:
    from pet_dl.data_check import DataFit
    from pet_dl.models import ReconBatch
    from pet_dl.scan import Scan


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; a CUDA request without CUDA is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(f"unknown device {device!r} (use cpu or cuda)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("device cuda was requested but no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"unsupported device {device!r} (use cpu or cuda)")
    return dev


def load_model(
    checkpoint: str | os.PathLike[str] | LoadedModel | None, device: torch.device
) -> LoadedModel:
    """The checkpoint's model on ``device``.

    ``checkpoint``: a ``.safetensors`` file, a Lightning ``.ckpt`` (read with
    ``torch.load(weights_only=True)``), a :class:`LoadedModel`, or ``None`` (shipped model).
    """
    from pet_dl.models import build_model

    if isinstance(checkpoint, LoadedModel):
        checkpoint.model.to(device).eval()
        return checkpoint
    path = shipped_checkpoint() if checkpoint is None else Path(checkpoint)
    if path.suffix == ".ckpt":  # a Lightning checkpoint: read as weights only, converted
        import tempfile

        from pet_dl.io.checkpoint import convert_lightning_checkpoint

        with tempfile.TemporaryDirectory(prefix="pet_dl_ckpt_") as tmp:
            converted = convert_lightning_checkpoint(path, Path(tmp) / "model.safetensors", builder=build_model)
            loaded = load_checkpoint(converted, map_location=device, builder=build_model)
        loaded.path = path
        return loaded
    return load_checkpoint(path, map_location=device, builder=build_model)


def check_scan(scan: Scan) -> None:
    """Raise :class:`InvalidInputError` unless the scan's data can be reconstructed.

    Checks: prompts, multiplicative and additive have the sinogram's shape, are finite
    and non-negative; prompts are not all zero; calibration is finite and positive; the
    dose fraction lies in (0, 1].
    """
    shape = tuple(scan.sinogram.shape)
    for name in ("prompts", "multiplicative", "additive"):
        t = getattr(scan, name)
        if not isinstance(t, torch.Tensor):
            raise InvalidInputError(f"scan {name} is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != shape:
            raise InvalidInputError(
                f"scan {name} has shape {tuple(t.shape)}, its sinogram geometry says {shape}"
            )
        if t.numel() == 0:
            raise InvalidInputError(f"scan {name} is empty")
        if not bool(torch.isfinite(t).all()):
            raise InvalidInputError(f"scan {name} has NaN or Inf values")
        if bool((t < 0).any()):
            raise InvalidInputError(f"scan {name} has negative values (min {float(t.min()):g})")
    if float(scan.prompts.sum()) <= 0:
        raise InvalidInputError("scan has no counts (all prompts are zero)")
    if not math.isfinite(scan.calibration) or scan.calibration <= 0:
        raise InvalidInputError(f"scan calibration must be positive, got {scan.calibration!r}")
    fraction = scan.metadata.dose_fraction
    if not (0 < fraction <= 1):
        raise InvalidInputError(f"scan dose_fraction must lie in (0, 1], got {fraction!r}")


def _plain(value: Any) -> Any:
    """JSON-normalised copy (tuples -> lists) for comparing geometry dicts."""
    return json.loads(json.dumps(value))


def _first_difference(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return None if math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) else (prefix, a, b)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{prefix}{i}.")
            if found:
                return found
        return None
    return None if a == b else (prefix, a, b)


def check_compatible(scan: Scan, metadata: dict[str, Any]) -> None:
    """Raise :class:`GeometryError` unless ``scan`` matches the training geometry.

    Args:
        scan: the scan to reconstruct.
        metadata: checkpoint metadata with ``"sinogram"`` (SinogramGeometry dict) and
            ``"image"`` (ImageGeometry dict).
    """
    if "sinogram" not in metadata or "image" not in metadata:
        raise CheckpointError("checkpoint metadata lacks the training sinogram/image geometry")
    trained_sino = metadata["sinogram"]
    sino = scan.sinogram
    named = (
        ("num_views", "views"),
        ("num_radial", "radial bins"),
        ("num_planes", "sinogram planes"),
    )
    try:
        from pet_dl.geometry import SinogramGeometry

        trained = SinogramGeometry.from_dict(trained_sino)
    except Exception:  # an unreadable dict still gets the generic comparison below
        trained = None
    if trained is not None:
        if trained.scanner.name != sino.scanner.name:
            raise GeometryError(
                f"scan is from scanner {sino.scanner.name!r}, "
                f"model was trained for {trained.scanner.name!r}"
            )
        for attr, label in named:
            a, b = getattr(sino, attr), getattr(trained, attr)
            if a != b:
                raise GeometryError(f"scan has {a} {label}, model was trained for {b}")
        if bool(sino.tof) != bool(trained.tof):
            raise GeometryError(
                f"scan is {'TOF' if sino.tof else 'non-TOF'}, "
                f"model was trained on {'TOF' if trained.tof else 'non-TOF'} data"
            )
    from pet_dl.geometry import network_geometry_key

    diff = _first_difference(
        network_geometry_key(_plain(sino.to_dict())), network_geometry_key(_plain(trained_sino))
    )
    if diff:
        key, a, b = diff
        raise GeometryError(f"scan has sinogram {key.rstrip('.')} = {a}, model was trained for {b}")
    image = _plain(scan.image.to_dict())
    trained_image = _plain(metadata["image"])
    for key, label in (("shape", "image shape"), ("voxel_size_mm", "voxel size (mm)")):
        if _first_difference(image.get(key), trained_image.get(key)):
            raise GeometryError(
                f"scan has {label} {image.get(key)}, model was trained for {trained_image.get(key)}"
            )
    diff = _first_difference(image, trained_image)
    if diff:
        key, a, b = diff
        raise GeometryError(f"scan has image {key.rstrip('.')} = {a}, model was trained for {b}")


def reconstruct_with_network(
    scan: Scan,
    checkpoint: str | os.PathLike[str] | LoadedModel | None = None,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    initial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reconstruct a scan with a trained network.

    Args:
        scan: the scan (prompts, multiplicative, additive, calibration, geometry). A 3D
            scan (several rings) given to a 2D model is rebinned to direct planes (SSRB),
            reconstructed plane by plane and resampled onto its image grid
            (:mod:`pet_dl.plane_inference`).
        checkpoint: a ``.safetensors`` path, an already loaded model (moved to
            ``device``), or ``None`` for the shipped 2D model.
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
        amp: bf16 autocast on CUDA (lower memory for 3D); ``None``: on for 3D scans on
            CUDA, off otherwise. Ignored on CPU.
        initial: the model's initial image ``(nx, ny, nz)`` Bq/mL when it is already at
            hand (OSEM with the model's ``init_iterations`` x ``init_subsets``); ``None``:
            the model computes it.

    Returns:
        The image ``(nx, ny, nz)`` in Bq/mL on the scan's image grid, float32, on CPU.

    Raises:
        InvalidInputError: bad scan data (NaN/Inf, negative, empty, wrong shapes).
        GeometryError: the scan's geometry differs from the training geometry.
        CheckpointError: a missing, corrupt or incompatible checkpoint.
    """
    check_scan(scan)
    dev = resolve_device(device)
    loaded = load_model(checkpoint, dev)
    from pet_dl.plane_inference import needs_rebinning, reconstruct_planes

    if needs_rebinning(scan, loaded.metadata):  # 3D scan, 2D model: SSRB, plane by plane
        return reconstruct_planes(scan, loaded, dev, amp, check=False)[0]
    check_compatible(scan, loaded.metadata)
    use_amp = dev.type == "cuda" and (scan.image.shape[2] > 1 if amp is None else amp)
    batch = scan_batch(scan, dev, initial)
    with torch.inference_mode(), torch.autocast(dev.type, torch.bfloat16, enabled=use_amp):
        image = loaded.model(batch)
    expected = (1, *scan.image.shape)
    if tuple(image.shape) != expected:
        raise CheckpointError(f"model returned shape {tuple(image.shape)}, expected {expected}")
    image = image[0].float().cpu()
    if not bool(torch.isfinite(image).all()):
        raise InvalidInputError(
            "the reconstruction has NaN or Inf values (scan data out of range?)"
        )
    return image


def scan_batch(
    scan: Scan, device: torch.device | str = "cpu", initial: torch.Tensor | None = None
) -> ReconBatch:
    """A one-scan :class:`~pet_dl.models.ReconBatch` of ``scan`` on ``device``, with the
    initial image ``(nx, ny, nz)`` Bq/mL when given."""
    from pet_dl.models import ReconBatch

    return ReconBatch(
        prompts=scan.prompts.float().unsqueeze(0),
        multiplicative=scan.multiplicative.float().unsqueeze(0),
        additive=scan.additive.float().unsqueeze(0),
        calibration=torch.tensor([float(scan.calibration)]),
        dose_fraction=torch.tensor([float(scan.metadata.dose_fraction)]),
        sinogram=scan.sinogram,
        image=scan.image,
        psf_fwhm_mm=float(scan.psf_fwhm_mm),
        initial=None if initial is None else initial.float().unsqueeze(0),
    ).to(device)


def reconstruct_and_check(
    scan: Scan,
    checkpoint: str | os.PathLike[str] | LoadedModel | None = None,
    device: str | torch.device | None = None,
    amp: bool | None = None,
) -> tuple[torch.Tensor, DataFit]:
    """:func:`reconstruct_with_network` and the data check (:func:`pet_dl.data_check.data_fit` with
    its consistency map) with their OSEM computed once.

    The reference OSEM (4 x 7) is handed to the network as its initial image when the
    network starts from the same OSEM (the shipped model does), so the global check costs
    two projections instead of a second reconstruction; the consistency map
    (``DataFit.consistency``, :func:`pet_dl.data_check.check_consistency`) about 20
    back-projections more.
    A scan rebinned for a 2D model (3D, or 2D on another layout or grid) gets the global
    check per plane (the worst plane's) and the planes' maps stacked onto its grid
    (:func:`pet_dl.plane_inference.planes_consistency_map`).

    Returns:
        ``(image (nx, ny, nz) Bq/mL on CPU, DataFit)``; raises as :func:`reconstruct_with_network`.
    """
    check_scan(scan)
    dev = resolve_device(device)
    loaded = load_model(checkpoint, dev)
    from pet_dl.plane_inference import needs_rebinning, reconstruct_planes

    if needs_rebinning(scan, loaded.metadata):  # the check per plane (PlaneFit: the worst)
        return reconstruct_planes(scan, loaded, dev, amp, check=True)  # type: ignore[return-value]
    check_compatible(scan, loaded.metadata)
    from pet_dl.data_check import (
        REFERENCE_ITERATIONS,
        REFERENCE_SUBSETS,
        data_fit,
        reference_osem,
        scan_forward_model,
    )

    forward = scan_forward_model(scan, dev)  # one model: its sensitivity is computed once
    osem = reference_osem(scan, model=forward)
    model = loaded.model
    start = (getattr(model, "init_iterations", None), getattr(model, "init_subsets", None))
    same_start = start == (REFERENCE_ITERATIONS, REFERENCE_SUBSETS)
    image = reconstruct_with_network(scan, loaded, dev, amp, initial=osem if same_start else None)
    return image, data_fit(scan, image, osem_image=osem, with_map=True, model=forward)
