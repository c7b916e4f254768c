"""TorchServe handler: scan file (HDF5 bytes) in, reconstructed image (NIfTI .nii.gz bytes) out.

Thin by design: decode with :func:`pet_dl.io.scanfile.read_scan_bytes` (from memory, every
dataset checked against the geometry and a cap before its data is read), reconstruct with
:func:`pet_dl.inference.reconstruct_and_check` (the function ``infer.py`` calls: the image
and the data check, whose flagged-region count and map go out as headers or a zip; with
the request header ``X-PET-DL-OSEM: 1`` the zip also holds the OSEM for reading of
:func:`pet_dl.reading_osem.osem_for_reading`), encode
with :func:`pet_dl.io.nifti.save_nifti`; the answer to one request is built by
:meth:`PetReconHandler.respond`. Status codes (one-line messages that never name a server
path; the worker keeps serving):

- 400: the body is not a valid scan file (empty, form-encoded, JSON, truncated, corrupt,
  NaN / negative counts), or a scan the model was not trained for, or ``X-PET-DL-OSEM``
  without ``Accept: application/zip``;
- 400 too: a scan that declares more elements than the served model's geometry
  (``scan too large: ...``; refused before its data is read). TorchServe's frontend turns
  a worker's 413 into 507, so the worker cannot answer 413;
- 413: a body larger than ``max_request_size`` (answered by the frontend);
- 503: the model failed to load (answered at once; the readiness check
  ``python -m pet_dl.serving.healthcheck`` reports NOT READY with the reason);
- 507: out of memory (host or GPU).

The model is the ``.safetensors`` file packed in the archive (``build_mar.sh``), loaded
with :func:`pet_dl.io.checkpoint.load_checkpoint` (nothing is unpickled).
"""

from __future__ import annotations

import json
import logging
import math
import os
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

from pet_dl.data_check import data_check_warning
from pet_dl.errors import PetDLError
from pet_dl.inference import reconstruct_and_check, resolve_device
from pet_dl.io.checkpoint import LoadedModel, load_checkpoint
from pet_dl.io.scanfile import ScanTooLargeError, max_scan_elements, read_scan_bytes
from pet_dl.models import build_model
from pet_dl.reading_osem import osem_for_reading

logger = logging.getLogger(__name__)

NIFTI_CONTENT_TYPE = "application/gzip"
ZIP_CONTENT_TYPE = "application/zip"
# Request header asking for the OSEM for reading beside the image (``1`` / ``true`` / ``yes``;
# with ``Accept: application/zip``): pet_dl.reading_osem, infer.py --osem.
OSEM_HEADER = "x-pet-dl-osem"
# Torch intra-op threads of a worker (default: OMP_NUM_THREADS, else torch's own choice).
THREADS_ENV = "PET_DL_THREADS"


def find_checkpoint(model_dir: Path, manifest: dict[str, Any] | None) -> Path:
    """The archive's ``.safetensors`` file (the manifest's serializedFile when given)."""
    name = ((manifest or {}).get("model") or {}).get("serializedFile")
    if name and (model_dir / name).is_file():
        return model_dir / name
    found = sorted(model_dir.glob("*.safetensors"))
    if len(found) != 1:
        raise RuntimeError(f"expected one .safetensors file in the archive, found {len(found)}")
    return found[0]


def scan_element_cap(metadata: dict[str, Any]) -> int:
    """The largest sinogram / image (elements) worth reading for a model: its training
    geometry's (a larger scan cannot be reconstructed by it); the default cap when the
    checkpoint does not say."""
    sizes = []
    try:
        from pet_dl.geometry import ImageGeometry, SinogramGeometry

        sizes.append(math.prod(SinogramGeometry.from_dict(metadata["sinogram"]).shape))
        sizes.append(math.prod(ImageGeometry.from_dict(metadata["image"]).shape))
    except Exception:  # no or unreadable geometry: reconstruct_with_network() refuses such a model anyway
        return max_scan_elements()
    return min(max(sizes), max_scan_elements())


def _payload(request: Any) -> bytes:
    """The raw body of one request (``data`` or ``body``; multipart field ``scan`` allowed)."""
    body = None
    if isinstance(request, dict):
        for key in ("data", "body", "scan"):
            if request.get(key) is not None:
                body = request[key]
                break
    if isinstance(body, bytearray):
        body = bytes(body)
    if not isinstance(body, bytes) or not body:
        raise PredictionException(
            "request body must be the bytes of a pet_dl scan file "
            "(Content-Type: application/octet-stream; not a form, not JSON)",
            400,
        )
    return body


class PetReconHandler(BaseHandler):
    """BaseHandler subclass: one scan per request (batch size 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: LoadedModel | None = None
        self.device = torch.device("cpu")
        self.load_error: str | None = None
        self.max_elements = max_scan_elements()

    def initialize(self, context: Any) -> None:
        """Load the packed checkpoint onto the worker's GPU (when any) or the CPU.

        A checkpoint that fails to load does not make the worker restart forever: the
        worker comes up, answers every prediction with 503 and the reason, and reports
        ``loaded: false`` to the readiness check (:meth:`describe_handle`).
        """
        properties = context.system_properties
        self.manifest = context.manifest
        threads = os.environ.get(THREADS_ENV) or os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))
        model_dir = Path(properties.get("model_dir", "."))
        try:
            gpu_id = properties.get("gpu_id")
            if torch.cuda.is_available() and gpu_id is not None:
                self.device = torch.device(f"cuda:{gpu_id}")
            else:
                self.device = resolve_device("cpu")
            path = find_checkpoint(model_dir, self.manifest)
            self.loaded = load_checkpoint(path, map_location=self.device, builder=build_model)
            self.model = self.loaded.model
            self.max_elements = scan_element_cap(self.loaded.metadata)
            logger.info("pet_dl model %s loaded on %s", path.name, self.device)
        except Exception as exc:  # noqa: BLE001 (any failure: answer 503, do not crash-loop)
            self.loaded = None
            self.load_error = _one_line(exc, model_dir)
            logger.error("pet_dl model failed to load: %s", self.load_error)
        self.initialized = True

    def describe_handle(self) -> str:
        """``GET /models/<name>?customized=true``: ``{"loaded": bool, "error": str | null,
        "device": str, "max_scan_elements": int}`` (JSON), read by the readiness check."""
        return json.dumps(
            {
                "loaded": self.loaded is not None,
                "error": self.load_error,
                "device": str(self.device),
                "max_scan_elements": self.max_elements,
            }
        )

    def handle(self, data: list[Any], context: Any) -> list[Any]:
        """503 at once while the model is not loaded (the describe request still answers)."""
        self.context = context
        if self.loaded is None and not self._is_describe():
            raise PredictionException(f"model not loaded: {self.load_error}", 503)
        return super().handle(data, context)

    def preprocess(self, data: list[Any]) -> list[Any]:
        """Decode each request body (HDF5 scan file bytes) to a :class:`Scan`, in memory."""
        scans = []
        for request in data:
            body = _payload(request)
            try:
                scans.append(read_scan_bytes(body, name="scan", max_elements=self.max_elements))
            except ScanTooLargeError as exc:  # 400: the frontend maps a worker's 413 to 507
                raise PredictionException(f"scan too large: {_one_line(exc)}", 400) from exc
            except (PetDLError, ValueError, OSError, KeyError) as exc:
                raise PredictionException(f"invalid scan payload: {_one_line(exc)}", 400) from exc
        return scans

    def inference(self, data: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
        """``reconstruct_and_check`` each scan (the image is ``reconstruct``'s), and the OSEM
        for reading where the request asks for it (``X-PET-DL-OSEM``); returns ``(scan, image
        (nx, ny, nz) Bq/mL, DataFit with its consistency map, ReadingOSEM or None)``."""
        out = []
        for index, scan in enumerate(data):
            try:
                reading = None
                if self._header(index, OSEM_HEADER) in ("1", "true", "yes"):
                    if ZIP_CONTENT_TYPE not in self._header(index, "accept"):
                        raise ValueError("X-PET-DL-OSEM needs Accept: application/zip (the OSEM is a "
                                         "second image)")
                    reading = osem_for_reading(scan, self.loaded, device=self.device)
                out.append((scan, *reconstruct_and_check(scan, self.loaded, device=self.device), reading))
            except (PetDLError, ValueError) as exc:
                raise PredictionException(_one_line(exc), 400) from exc
            except RuntimeError as exc:  # torch's allocators: CPU "can't allocate memory"
                if "can't allocate memory" in str(exc) or "out of memory" in str(exc).lower():
                    raise PredictionException(f"out of memory: {_one_line(exc)}", 507) from exc
                raise
        return out

    def postprocess(self, data: list[Any]) -> list[bytes]:
        """The answer to each request: :meth:`respond`."""
        return [self.respond(index, *entry) for index, entry in enumerate(data)]

    def respond(
        self, index: int, scan: Any, image: torch.Tensor, fit: Any = None, reading: Any = None
    ) -> bytes:
        """The body (and content type) answering request ``index``: the image
        ``(nx, ny, nz)`` Bq/mL as gzip-compressed NIfTI with the RAS affine of ``scan.image``.

        Everything a response carries is decided here (one place to add headers or parts).
        With the data check (``fit``, :func:`pet_dl.inference.reconstruct_and_check`) the
        headers of :func:`check_headers` go with it, and a request with ``Accept:
        application/zip`` gets a zip of ``image.nii.gz``, ``consistency.nii.gz`` (the map,
        z in noise SDs) and ``check.json`` instead, with ``osem.nii.gz`` and its settings in
        ``check.json`` when ``reading`` (:class:`~pet_dl.reading_osem.ReadingOSEM`) is given
        (docs/serving.md).
        """
        from pet_dl.io.nifti import save_nifti

        with tempfile.TemporaryDirectory(prefix="pet_dl_serve_") as tmp:
            path = Path(tmp) / "image.nii.gz"
            save_nifti(path, image, scan.image)
            body = path.read_bytes()
            maps = getattr(fit, "consistency", None)
            as_zip = maps is not None and ZIP_CONTENT_TYPE in self._header(index, "accept")
            if as_zip:
                save_nifti(Path(tmp) / "map.nii.gz", maps.z, scan.image, units="z (noise SD)")
                osem = None
                if reading is not None:
                    save_nifti(Path(tmp) / "osem.nii.gz", reading.image, scan.image)
                    osem = (Path(tmp) / "osem.nii.gz").read_bytes()
                body = zip_body(body, (Path(tmp) / "map.nii.gz").read_bytes(), fit, osem, reading)
        if self.context is not None:
            content_type = ZIP_CONTENT_TYPE if as_zip else NIFTI_CONTENT_TYPE
            self.context.set_response_content_type(index, content_type)
            for key, value in (check_headers(fit) if fit is not None else {}).items():
                self.context.set_response_header(index, key, value)
        return body

    def _header(self, index: int, name: str) -> str:
        """Request ``index``'s header ``name`` (lower-case; any case in the request),
        lower-cased; '' when absent."""
        try:
            headers = self.context.get_all_request_header(index) or {}
        except Exception:  # noqa: BLE001 (no context or no request properties)
            return ""
        for key, value in headers.items():
            if str(key).lower() == name:
                return (value.decode() if isinstance(value, bytes) else str(value)).strip().lower()
        return ""


def check_summary(fit: Any) -> dict[str, Any]:
    """The data check as plain JSON: flagged regions (centre mm, peak z, voxels), the
    threshold, the largest z, the global deviance ratio, and infer.py's warning line."""
    maps = fit.consistency
    summary: dict[str, Any] = {
        "data_fit_ratio": round(float(fit.ratio), 4),
        "data_fit_suspect": bool(fit.suspect),
        "warning": data_check_warning("scan", fit),
    }
    if maps is not None:
        summary.update(
            flagged_regions=maps.count,
            threshold=maps.threshold,
            max_z=round(maps.max_z, 2),
            regions=[
                {"centre_mm": [round(c, 1) for c in r.centre_mm], "peak_z": round(r.peak, 2),
                 "voxels": r.voxels}
                for r in maps.regions
            ],
        )
    return summary


def check_headers(fit: Any) -> dict[str, str]:
    """Response headers of the data check: ``X-PET-DL-Flagged-Regions`` (count),
    ``X-PET-DL-Max-Z``, ``X-PET-DL-Regions`` (JSON, the first 10), ``X-PET-DL-Data-Fit``
    (global deviance ratio) and ``X-PET-DL-Warning`` (infer.py's line, when it warns)."""
    summary = check_summary(fit)
    headers = {"X-PET-DL-Data-Fit": f"{summary['data_fit_ratio']:.4f}"}
    if "flagged_regions" in summary:
        headers["X-PET-DL-Flagged-Regions"] = str(summary["flagged_regions"])
        headers["X-PET-DL-Max-Z"] = f"{summary['max_z']:.2f}"
        headers["X-PET-DL-Regions"] = json.dumps(summary["regions"][:10], separators=(",", ":"))
    if summary["warning"]:
        headers["X-PET-DL-Warning"] = summary["warning"]
    return headers


def zip_body(
    image_nifti: bytes, map_nifti: bytes, fit: Any, osem_nifti: bytes | None = None, reading: Any = None
) -> bytes:
    """A zip (stored, the NIfTIs are gzip already) of ``image.nii.gz``,
    ``consistency.nii.gz`` and ``check.json`` (:func:`check_summary`), and ``osem.nii.gz``
    with its settings under ``check.json``'s ``"reading_osem"`` when given."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("image.nii.gz", image_nifti)
        archive.writestr("consistency.nii.gz", map_nifti)
        summary = check_summary(fit)
        if osem_nifti is not None:
            archive.writestr("osem.nii.gz", osem_nifti)
            summary["reading_osem"] = {
                "iterations": reading.iterations, "subsets": reading.subsets,
                "postfilter_fwhm_mm": reading.postfilter_fwhm_mm, "count_level": reading.count_level,
                "dose_factor": reading.dose_factor, "description": reading.describe(),
            }
        archive.writestr("check.json", json.dumps(summary, indent=1))
    return buffer.getvalue()


def _one_line(exc: BaseException, model_dir: Path | None = None) -> str:
    """The message on one line, without the server's folders (temporary or model)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if model_dir is not None and str(model_dir) not in ("", "."):
        text = text.replace(f"{model_dir}{os.sep}", "").replace(str(model_dir), "archive")
    return text.replace(tempfile.gettempdir() + os.sep, "")
