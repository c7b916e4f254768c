"""Inference benchmark: latency and peak memory of ``reconstruct`` (and one TorchServe request).

    python bench/infer.py                      # 2D mMR slice on CPU
    python bench/infer.py --serve              # + one TorchServe request (needs java, serve extra)
    python bench/infer.py --device cuda --3d   # 3D mMR (span 11) on a GPU

Uses the shipped model when it exists and the geometry fits, otherwise an untrained
network of the same architecture (latency does not depend on the weights). Prints a
Markdown table row per case.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# the shipped model's architecture (pet_dl/assets/pet_dl_2d.safetensors: 3 unrolled
# iterations, a UNet 32-64-128 each averaged over left-right flips, 4 x 7 OSEM start),
# untrained, on the scan's own grid
CONFIG_2D = {
    "name": "unrolled_em", "spatial_dims": 2, "num_iterations": 3, "channels": [32, 64, 128],
    "strides": [2, 2], "num_res_units": 2, "init_iterations": 4, "init_subsets": 7,
    "share_weights": False, "flip_ensemble": [0],
}
CONFIG_3D = {
    "name": "unrolled_em",
    "spatial_dims": 3,
    "num_iterations": 4,
    "init_iterations": 4,
    "channels": [8, 16, 32],
}


def make_scan(three_d: bool, generator: torch.Generator, device: str = "cpu"):  # noqa: ANN201
    """An mMR scan (2D: one direct plane; 3D: span 11) of a uniform cylinder, Poisson counts."""
    from dataclasses import replace

    from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
    from pet_dl.scan import AcquisitionMetadata, Scan

    scanner = get_scanner("mmr")
    if three_d:
        sino = SinogramGeometry(scanner, num_radial=344, span=11, max_ring_difference=60)
        image = ImageGeometry.centered((172, 172, 127), (4.17, 4.17, 2.03125))
    else:
        sino = SinogramGeometry.two_d(scanner)
        image = ImageGeometry.centered((172, 172, 1), (2.08, 2.08, 2.03125))
    nx, ny, nz = image.shape
    x = torch.linspace(-1, 1, nx)
    disk = ((x[:, None] ** 2 + x[None, :] ** 2) < 0.5).float()
    activity = disk[:, :, None].expand(nx, ny, nz).contiguous() * 5000.0
    base = Scan(
        sino,
        image,
        torch.zeros(sino.shape),
        torch.ones(sino.shape),
        torch.zeros(sino.shape),
        1.0,
        0.0,
        AcquisitionMetadata(duration_s=600.0),
    )
    with torch.no_grad():  # simulate on the benchmark device (3D on CPU would take hours)
        ybar = base.forward_model(device)(activity.to(device)).cpu()
    counts = 5e6 if not three_d else 2e8
    calibration = counts / float(ybar.sum())
    additive = torch.full(sino.shape, 0.1 * counts / ybar.numel())
    prompts = torch.poisson(ybar * calibration + additive, generator=generator)
    return replace(base, prompts=prompts, additive=additive, calibration=calibration)


def untrained_checkpoint(scan, out: Path, config: dict) -> Path:  # noqa: ANN001
    """An untrained network of ``config`` on ``scan``'s geometry, saved as ``out``."""
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.models import build_model

    torch.manual_seed(0)
    meta = {"sinogram": scan.sinogram.to_dict(), "image": scan.image.to_dict()}
    return save_checkpoint(out, build_model(config), config, meta)


def make_checkpoint(scan, out: Path, three_d: bool) -> tuple[Path, str]:  # noqa: ANN001
    """The shipped model when its grid fits ``scan``, else an untrained one of its architecture."""
    from pet_dl.inference import shipped_checkpoint
    from pet_dl.io.checkpoint import CheckpointError, read_checkpoint_header

    if not three_d:
        try:
            path = shipped_checkpoint()
            _, meta = read_checkpoint_header(path)
            if meta.get("image") == scan.image.to_dict() or meta.get("image") is None:
                return path, "shipped"
        except CheckpointError:
            pass
    return untrained_checkpoint(scan, out / "bench.safetensors", CONFIG_3D if three_d else CONFIG_2D), "untrained"


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if platform.system() != "Darwin" else kb / 2**20


def bench_reconstruct(
    scan, checkpoint: Path, device: str, repeats: int
) -> tuple[float, float, float]:  # noqa: ANN001
    from pet_dl.inference import reconstruct
    from pet_dl.io.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint, map_location=device)
    reconstruct(scan, loaded, device=device)  # warm-up (numba / CUDA kernels, caches)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        reconstruct(scan, loaded, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    return sorted(times)[len(times) // 2], peak_rss_mb(), gpu_mb


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def bench_serve(scan_file: Path, checkpoint: Path, work: Path, repeats: int) -> float:
    """Median latency of one POST /predictions request to a local TorchServe, s."""
    from pet_dl.serving.healthcheck import model_ready

    bindir = Path(sys.executable).parent
    env = dict(
        os.environ,
        PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
        TMPDIR=str(work),
        LOG_LOCATION=str(work / "logs"),
        METRICS_LOCATION=str(work / "logs"),
    )
    subprocess.run(
        ["bash", str(ROOT / "scripts/build_mar.sh"), str(checkpoint), str(work / "store"), "bench"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    ports = _free_ports(3)
    config = (ROOT / "pet_dl/serving/config.properties").read_text()
    for default, port in zip((8080, 8081, 8082), ports):
        config = config.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
    (work / "config.properties").write_text(config)
    with open(work / "torchserve.out", "wb") as log:
        subprocess.run(
            [
                shutil.which("torchserve", path=env["PATH"]),
                "--start",
                "--ncs",
                "--ts-config",
                str(work / "config.properties"),
                "--model-store",
                str(work / "store"),
                "--models",
                "bench=bench.mar",
            ],
            cwd=work,
            env=env,
            stdout=log,
            stderr=log,
            check=True,
        )
    pid = int((work / ".model_server.pid").read_text().split()[0])
    try:
        deadline = time.monotonic() + 300
        while not model_ready(f"http://127.0.0.1:{ports[1]}", "bench", timeout_s=2):
            if time.monotonic() > deadline:
                raise RuntimeError("TorchServe did not become ready")
            time.sleep(1)
        body = scan_file.read_bytes()
        url = f"http://127.0.0.1:{ports[0]}/predictions/bench"
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            with urllib.request.urlopen(
                urllib.request.Request(
                    url, data=body, headers={"Content-Type": "application/octet-stream"}
                ),
                timeout=600,
            ) as r:
                r.read()
            if i:  # the first request warms the worker up
                times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]
    finally:
        subprocess.run(
            [shutil.which("torchserve", path=env["PATH"]), "--stop"],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=90,
        )
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--3d", dest="three_d", action="store_true", help="3D mMR span 11")
    parser.add_argument("--serve", action="store_true", help="also time one TorchServe request")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from pet_dl.io.scanfile import write_scan

    generator = torch.Generator().manual_seed(0)
    scan = make_scan(args.three_d, generator, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt, kind = make_checkpoint(scan, work, args.three_d)
        latency, rss, gpu = bench_reconstruct(scan, ckpt, args.device, args.repeats)
        serve = float("nan")
        if args.serve:
            write_scan(work / "scan.h5", scan)
            serve = bench_serve(work / "scan.h5", ckpt, work, args.repeats)
        rows = [(kind, latency, serve, rss, gpu)]
        if not args.three_d:  # side by side: the cost of the left-right flip ensemble
            config = {k: v for k, v in CONFIG_2D.items() if k != "flip_ensemble"}
            plain = untrained_checkpoint(scan, work / "noflip.safetensors", config)
            plain_latency = bench_reconstruct(scan, plain, args.device, args.repeats)[0]
            nan = float("nan")  # the process's peaks are the first row's
            rows.append(("untrained, no flip ensemble", plain_latency, nan, nan, nan))
    label = "3D mMR span 11" if args.three_d else "2D mMR slice"
    device = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} threads)"
    )
    print(
        "| case | model | device | sinogram | image | reconstruct (s) | TorchServe request (s) "
        "| peak RSS (MB) | peak GPU (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for kind, latency, serve, rss, gpu in rows:
        print(
            f"| {label} | {kind} | {device} | {tuple(scan.sinogram.shape)} | {scan.image.shape} "
            f"| {latency:.3f} | {serve:.3f} | {rss:.0f} | {gpu:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
