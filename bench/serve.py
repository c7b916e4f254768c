"""Serving benchmark: latency and throughput of the real TorchServe endpoint.

    python bench/serve.py [--requests 20] [--concurrency 4] [--threads N]

Packs the shipped 2D model (``scripts/build_mar.sh``), simulates a brain scan of its
geometry (``python -m pet_dl simulate``), and serves it on 127.0.0.1
(:func:`pet_dl.serving.local.local_server`) twice, one after the other in the same run:
with the image's worker settings (``OMP_WAIT_POLICY=PASSIVE``) and without
``OMP_WAIT_POLICY`` (OpenMP's default), the thread counts the same. Each server gets 2
warm-up requests, then ``--requests`` sequential requests and ``--requests`` more,
``--concurrency`` at a time. Prints a Markdown table: per-request latency median and p95
(s, client side: HTTP, HDF5 decode, reconstruct, NIfTI encode) and requests per second
(requests / wall time of the batch). Every answer must be 200 and the same image.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "pet_dl"


def simulate_scan(out: Path) -> Path:
    """A brain scan on the shipped model's geometry (mMR 2D, 126 views, 128 bins)."""
    from pet_dl.cli import main

    code = main(
        ["simulate", "--phantom", "brain", "--image-shape", "96", "96", "1",
         "--voxel-size", "2.6", "--num-radial", "128", "--view-mashing", "2",
         "--psf-fwhm", "4.5", "--dose-fraction", "0.05", "--seed", "3", "--out", str(out)]
    )  # fmt: skip
    if code != 0:
        raise SystemExit(f"error: simulate failed ({code})")
    return out


def servable_checkpoint(checkpoint: Path, scan_path: Path, out: Path) -> tuple[Path, str]:
    """``checkpoint`` when it accepts the scan; otherwise its network (same config, same
    weights) saved with the scan's geometry in its metadata, so the run measures the
    shipped network whatever the geometry code's version. Returns the path and a note."""
    import torch

    from pet_dl.errors import PetDLError
    from pet_dl.inference import check_compatible, load_model
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.io.scanfile import read_scan

    loaded = load_model(checkpoint, torch.device("cpu"))
    scan = read_scan(scan_path)
    try:
        check_compatible(scan, loaded.metadata)
        return checkpoint, f"{checkpoint.name} as shipped"
    except PetDLError as exc:
        metadata = dict(loaded.metadata)
        metadata.update(sinogram=scan.sinogram.to_dict(), image=scan.image.to_dict())
        save_checkpoint(out, loaded.model, loaded.config, metadata)
        return out, f"{checkpoint.name}'s network and weights, geometry metadata rewritten ({exc})"


def post(url: str, body: bytes, token: str | None) -> tuple[float, int, bytes]:
    """``(seconds, status, answer)`` of one prediction request."""
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/octet-stream")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        payload = response.read()
        status = response.status
    return time.perf_counter() - start, status, payload


def run_batch(url: str, body: bytes, token: str | None, n: int, concurrency: int) -> dict:
    """``n`` requests, ``concurrency`` at a time: latencies, wall time, answers."""
    start = time.perf_counter()
    if concurrency == 1:
        results = [post(url, body, token) for _ in range(n)]
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(lambda _: post(url, body, token), range(n)))
    wall = time.perf_counter() - start
    latencies = np.array([r[0] for r in results])
    return {
        "median": float(np.median(latencies)),
        "p95": float(np.percentile(latencies, 95)),
        "rps": n / wall,
        "statuses": {r[1] for r in results},
        "answers": {r[2] for r in results},
    }


def main(argv: list[str] | None = None) -> int:
    from pet_dl.serving.local import local_server, worker_env

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="requests per batch (20)")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent batch (4)")
    parser.add_argument("--threads", type=int, default=None, help="worker threads (all CPUs)")
    parser.add_argument(
        "--checkpoint", type=Path, default=ROOT / "pet_dl" / "assets" / "pet_dl_2d.safetensors"
    )
    args = parser.parse_args(argv)
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so every server started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    threads = worker_env(args.threads)["OMP_NUM_THREADS"]
    with tempfile.TemporaryDirectory(prefix="pet_dl_bench_serve_") as tmp_name:
        tmp = Path(tmp_name)
        body = simulate_scan(tmp / "scan.h5").read_bytes()
        checkpoint, note = servable_checkpoint(
            args.checkpoint, tmp / "scan.h5", tmp / "model.safetensors"
        )
        print(f"model: {note}", file=sys.stderr)
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "build_mar.sh"), str(checkpoint),
             str(tmp / "store"), MODEL],
            cwd=ROOT, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        rows = []
        answers = set()
        for label, passive in (("OMP_WAIT_POLICY=PASSIVE", True), ("OMP_WAIT_POLICY unset", False)):
            env: dict[str, str | None] = dict(worker_env(int(threads), passive=passive))
            if not passive:
                env["OMP_WAIT_POLICY"] = None
            with local_server(tmp / "store", MODEL, tmp / label.split()[-1], env=env) as server:
                url = server.predictions_url
                run_batch(url, body, None, 2, 1)  # warm-up
                for mode, concurrency in (("sequential", 1), (f"{args.concurrency} at a time", args.concurrency)):  # fmt: skip
                    result = run_batch(url, body, None, args.requests, concurrency)
                    if result["statuses"] != {200}:
                        raise SystemExit(f"error: answers {result['statuses']}")
                    answers |= result["answers"]
                    rows.append((label, mode, result))
                    print(
                        f"{label}, {mode}: median {result['median']:.3f} s, "
                        f"p95 {result['p95']:.3f} s, {result['rps']:.2f} requests/s",
                        file=sys.stderr,
                    )
        if len(answers) != 1:
            raise SystemExit(f"error: {len(answers)} different images for the same scan")
    print(
        f"\n{platform.machine()}, {os.cpu_count()} CPUs, worker threads {threads}, "
        f"{args.requests} requests per batch; model: {note}\n"
    )
    print("| worker | requests | median (s) | p95 (s) | requests/s |")
    print("|---|---|---:|---:|---:|")
    for label, mode, result in rows:
        print(
            f"| {label} | {mode} | {result['median']:.3f} | {result['p95']:.3f} "
            f"| {result['rps']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
