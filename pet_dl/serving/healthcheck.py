"""Readiness probe: exit 0 when TorchServe has a READY worker whose model loaded.

    python -m pet_dl.serving.healthcheck [--url http://127.0.0.1:8081] [--model NAME]
                                         [--token KEY | --key-file key_file.json]
    python -m pet_dl.serving.healthcheck --renew inference|management [--key-file ...]

``/ping`` stays healthy even when a model failed to load, so readiness is read from the
management API's ``/models/<name>?customized=true``: a worker with status READY, and the
handler's own report (``loaded: true``; :meth:`PetReconHandler.describe_handle`). The
model name defaults to ``$PET_DL_MODEL_NAME`` (else ``pet_dl``). With token authorization
on, the management key is ``--token``, else ``$PET_DL_MANAGEMENT_KEY``, else read from the
key file TorchServe writes (``--key-file``, default ``$PET_DL_KEY_FILE``, else
``key_file.json`` in the working folder) at every call, so rotated keys are picked up; an
expired management key is renewed with the file's API key (``PUT /token?type=management``).
Prints ``READY`` or ``NOT READY: <reason>``. Used by the Dockerfile's HEALTHCHECK and by
the serving tests. ``--renew KIND`` replaces the inference or management key (TorchServe
rewrites the key file; the old key stops working) and prints the new one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "pet_dl"
KEY_FILE = "key_file.json"


def read_keys(path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The keys of TorchServe's key file: ``{"management": ..., "inference": ..., "API": ...}``
    (those present); ``{}`` when the file does not exist or is unreadable."""
    p = Path(path or os.environ.get("PET_DL_KEY_FILE") or KEY_FILE)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    keys = {}
    for kind in ("management", "inference", "API"):
        entry = data.get(kind) if isinstance(data, dict) else None
        key = entry.get("key") if isinstance(entry, dict) else None
        if isinstance(key, str) and key:
            keys[kind] = key
    return keys


def _request(url: str, token: str | None, timeout_s: float, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def model_status(
    management_url: str,
    model: str,
    token: str | None = None,
    timeout_s: float = 8.0,
    key_file: str | os.PathLike[str] | None = None,
) -> tuple[bool, str]:
    """``(ready, reason)`` for ``model`` on the management API at ``management_url``.

    Ready means a worker with status READY and, when the handler reports it, a loaded
    model. ``token`` is the management key (default: the key file's, when it exists).
    """
    url = f"{management_url.rstrip('/')}/models/{model}?customized=true"
    keys = read_keys(key_file) if token is None else {}
    token = token or os.environ.get("PET_DL_MANAGEMENT_KEY") or keys.get("management")
    try:
        status, text = _request(url, token, timeout_s)
        if status in (400, 401) and "xpired" in text and keys.get("API"):
            base = management_url.rstrip("/")
            _request(f"{base}/token?type=management", keys["API"], timeout_s, method="PUT")
            token = read_keys(key_file).get("management", token)
            status, text = _request(url, token, timeout_s)
    except (urllib.error.URLError, OSError) as exc:
        return False, f"management API unreachable ({getattr(exc, 'reason', exc)})"
    if status != 200:
        hint = " (token authorization: pass --token or --key-file)" if status in (400, 401) else ""
        return False, f"HTTP {status} from /models/{model}{hint}: {' '.join(text.split())[:200]}"
    try:
        description = json.loads(text)
    except ValueError:
        return False, "unreadable answer from the management API"
    entries = description if isinstance(description, list) else [description]
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        workers = [w for w in entry.get("workers", []) if isinstance(w, dict)]
        if not any(w.get("status") == "READY" for w in workers):
            states = ", ".join(str(w.get("status")) for w in workers) or "none"
            return False, f"no READY worker (workers: {states})"
        report = _customized(entry)
        if report is not None and report.get("loaded") is False:
            return False, f"model failed to load: {report.get('error')}"
        return True, "READY"
    return False, "no such model"


def _customized(entry: dict[str, Any]) -> dict[str, Any] | None:
    """The handler's own report (``customizedMetadata``), when it gave one."""
    raw = entry.get("customizedMetadata")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None
    return raw if isinstance(raw, dict) else None


def renew_key(
    management_url: str, kind: str, key_file: str | os.PathLike[str] | None = None
) -> str:
    """Replace TorchServe's ``kind`` key (``inference`` or ``management``) using the key
    file's API key; returns the new key.

    Raises:
        RuntimeError: no API key in the key file, or the server refused.
    """
    api = read_keys(key_file).get("API")
    if not api:
        raise RuntimeError("no API key in the key file (is token authorization on?)")
    status, text = _request(
        f"{management_url.rstrip('/')}/token?type={kind}", api, 8.0, method="PUT"
    )
    new = read_keys(key_file).get(kind)
    if status != 200 or not new:
        raise RuntimeError(f"HTTP {status}: {' '.join(text.split())[:200]}")
    return new


def model_ready(
    management_url: str, model: str, timeout_s: float = 8.0, token: str | None = None
) -> bool:
    """Whether :func:`model_status` says ready."""
    return model_status(management_url, model, token=token, timeout_s=timeout_s)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TorchServe model readiness probe.")
    parser.add_argument("--url", default="http://127.0.0.1:8081", help="management API address")
    parser.add_argument(
        "--model",
        default=os.environ.get("PET_DL_MODEL_NAME") or DEFAULT_MODEL,
        help="model name (default: $PET_DL_MODEL_NAME, else pet_dl)",
    )
    parser.add_argument("--token", default=None, help="management key (token authorization)")
    parser.add_argument(
        "--key-file",
        default=None,
        help="TorchServe's key file (default: $PET_DL_KEY_FILE, else ./key_file.json)",
    )
    parser.add_argument("--timeout", type=float, default=8.0, help="seconds per request (8)")
    parser.add_argument(
        "--renew", choices=("inference", "management"), help="replace this key, print the new one"
    )
    args = parser.parse_args(argv)
    if args.renew:
        try:
            print(renew_key(args.url, args.renew, args.key_file))
        except (RuntimeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    ready, reason = model_status(
        args.url, args.model, token=args.token, timeout_s=args.timeout, key_file=args.key_file
    )
    print("READY" if ready else f"NOT READY: {reason}")
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
