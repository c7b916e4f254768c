"""Readiness probe: exit 0 when TorchServe reports a READY worker for the model.

    python -m pet_dl.serving.healthcheck [--url http://127.0.0.1:8081] [--model pet_dl]

``/ping`` stays healthy even when a model failed to load, so readiness is read from the
management API's ``/models/<name>`` (a worker with status READY). Used by the Dockerfile's
HEALTHCHECK and by the serving tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request


def model_ready(management_url: str, model: str, timeout_s: float = 5.0) -> bool:
    """Whether ``GET <management_url>/models/<model>`` lists a worker with status READY."""
    url = f"{management_url.rstrip('/')}/models/{model}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (local URL)
            description = json.loads(response.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError):
        return False
    entries = description if isinstance(description, list) else [description]
    return any(
        worker.get("status") == "READY"
        for entry in entries
        if isinstance(entry, dict)
        for worker in entry.get("workers", [])
        if isinstance(worker, dict)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TorchServe model readiness probe.")
    parser.add_argument("--url", default="http://127.0.0.1:8081", help="management API address")
    parser.add_argument("--model", default="pet_dl", help="model name")
    args = parser.parse_args(argv)
    ready = model_ready(args.url, args.model)
    print("READY" if ready else "NOT READY")
    return 0 if ready else 1


if __name__ == "__main__":
    sys.exit(main())
