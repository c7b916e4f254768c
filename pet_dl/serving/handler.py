"""TorchServe handler: scan file (HDF5 bytes) in, reconstructed image (NIfTI .nii.gz bytes) out.

Thin by design: decode with :func:`pet_dl.io.scanfile.read_scan`, reconstruct with
:func:`pet_dl.inference.reconstruct` (the function ``infer.py`` calls), encode with
:func:`pet_dl.io.nifti.save_nifti`. A payload that is not a valid scan, or a scan the model
was not trained for, is answered with HTTP 400 and a one-line message; the worker keeps
serving. The model is the ``.safetensors`` file packed in the archive (``build_mar.sh``),
loaded with :func:`pet_dl.io.checkpoint.load_checkpoint` (nothing is unpickled).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

try:
    from ts.torch_handler.base_handler import BaseHandler
    from ts.utils.util import PredictionException
except ImportError as exc:  # only this module needs TorchServe
    raise ImportError(
        "the TorchServe handler needs the serve extra: pip install 'pet_dl[serve]'"
    ) from exc

from pet_dl.errors import PetDLError
from pet_dl.inference import reconstruct, resolve_device
from pet_dl.io.checkpoint import LoadedModel, load_checkpoint

logger = logging.getLogger(__name__)

NIFTI_CONTENT_TYPE = "application/gzip"


def find_checkpoint(model_dir: Path, manifest: dict[str, Any] | None) -> Path:
    """The archive's ``.safetensors`` file (the manifest's serializedFile when given)."""
    name = ((manifest or {}).get("model") or {}).get("serializedFile")
    if name and (model_dir / name).is_file():
        return model_dir / name
    found = sorted(model_dir.glob("*.safetensors"))
    if len(found) != 1:
        raise RuntimeError(f"expected one .safetensors file in {model_dir}, found {len(found)}")
    return found[0]


def _payload(request: Any) -> bytes:
    """The raw body of one request (``data`` or ``body``; multipart field ``scan`` allowed)."""
    body = request.get("data") if isinstance(request, dict) else None
    if body is None and isinstance(request, dict):
        body = request.get("body") or request.get("scan")
    if isinstance(body, bytearray):
        body = bytes(body)
    if not isinstance(body, bytes) or not body:
        raise PredictionException("request body must be the bytes of a pet_dl scan file", 400)
    return body


class PetReconHandler(BaseHandler):
    """BaseHandler subclass: one scan per request (batch size 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: LoadedModel | None = None
        self.device = torch.device("cpu")

    def initialize(self, context: Any) -> None:
        """Load the packed checkpoint onto the worker's GPU (when any) or the CPU."""
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.device = resolve_device("cpu")
        model_dir = Path(properties.get("model_dir", "."))
        self.manifest = context.manifest
        path = find_checkpoint(model_dir, self.manifest)
        self.loaded = load_checkpoint(path, map_location=self.device)
        self.model = self.loaded.model
        self.initialized = True
        logger.info("pet_dl model %s loaded on %s", path.name, self.device)

    def preprocess(self, data: list[Any]) -> list[Any]:
        """Decode each request body (HDF5 scan file bytes) to a :class:`Scan`."""
        from pet_dl.io.scanfile import read_scan

        scans = []
        for request in data:
            body = _payload(request)
            with tempfile.TemporaryDirectory(prefix="pet_dl_serve_") as tmp:
                path = Path(tmp) / "scan.h5"
                path.write_bytes(body)
                try:
                    scans.append(read_scan(path))
                except (PetDLError, ValueError, OSError, KeyError) as exc:
                    raise PredictionException(
                        f"invalid scan payload: {_one_line(exc)}", 400
                    ) from exc
        return scans

    def inference(self, data: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
        """``reconstruct`` each scan; returns ``(scan, image (nx, ny, nz) Bq/mL)`` pairs."""
        out = []
        for scan in data:
            try:
                out.append((scan, reconstruct(scan, self.loaded, device=self.device)))
            except (PetDLError, ValueError) as exc:
                raise PredictionException(_one_line(exc), 400) from exc
        return out

    def postprocess(self, data: list[Any]) -> list[bytes]:
        """Encode each image as gzip-compressed NIfTI bytes (RAS affine of the scan grid)."""
        from pet_dl.io.nifti import save_nifti

        out = []
        for index, (scan, image) in enumerate(data):
            with tempfile.TemporaryDirectory(prefix="pet_dl_serve_") as tmp:
                path = Path(tmp) / "image.nii.gz"
                save_nifti(path, image, scan.image)
                out.append(path.read_bytes())
            if self.context is not None:
                self.context.set_response_content_type(index, NIFTI_CONTENT_TYPE)
        return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
