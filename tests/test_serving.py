"""The real TorchServe on 127.0.0.1: same image as reconstruct, 400 on a bad payload, keeps serving."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.serving

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = "pet_dl_test"


def _tool(name: str) -> str | None:
    local = BIN / name
    return str(local) if local.is_file() else shutil.which(name)


needs_torchserve = pytest.mark.skipif(
    shutil.which("java") is None
    or _tool("torchserve") is None
    or _tool("torch-model-archiver") is None,
    reason="needs java, torchserve and torch-model-archiver (pip install 'pet_dl[serve]')",
)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _post(url: str, body: bytes, timeout: float = 120.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def server(tmp_path: Path, generator: torch.Generator) -> Iterator[dict[str, object]]:
    """A model archive of a small checkpoint, served by a real TorchServe on free ports."""
    from test_inference import CONFIG, make_checkpoint, make_scan

    from pet_dl.io.scanfile import write_scan
    from pet_dl.serving.healthcheck import model_ready

    scan = make_scan(generator)
    ckpt = make_checkpoint(tmp_path, generator, scan, dict(CONFIG, initial_fusion_weight=0.5))
    write_scan(tmp_path / "scan.h5", scan)
    store = tmp_path / "model_store"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_mar.sh"), str(ckpt), str(store), MODEL],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    inference, management, metrics = _free_ports(3)
    config = (ROOT / "pet_dl" / "serving" / "config.properties").read_text()
    config = config.replace("127.0.0.1:8080", f"127.0.0.1:{inference}")
    config = config.replace("127.0.0.1:8081", f"127.0.0.1:{management}")
    config = config.replace("127.0.0.1:8082", f"127.0.0.1:{metrics}")
    (tmp_path / "config.properties").write_text(config)
    # TMPDIR scopes TorchServe's pid file (and `torchserve --stop`) to this test.
    env.update(
        TMPDIR=str(tmp_path),
        LOG_LOCATION=str(tmp_path / "logs"),
        METRICS_LOCATION=str(tmp_path / "logs"),
        WANDB_MODE="disabled",
    )
    start = [
        _tool("torchserve"),
        "--start",
        "--ncs",
        "--ts-config",
        str(tmp_path / "config.properties"),
        "--model-store",
        str(store),
        "--models",
        f"{MODEL}={MODEL}.mar",
    ]
    # The Java frontend inherits the launcher's output: a file, not a pipe (no EOF to wait for).
    with open(tmp_path / "torchserve.out", "wb") as log:
        subprocess.run(start, cwd=tmp_path, env=env, check=True, stdout=log, stderr=log, timeout=60)
    pid = int((tmp_path / ".model_server.pid").read_text().split()[0])
    management_url = f"http://127.0.0.1:{management}"
    try:
        deadline = time.monotonic() + 180
        while not model_ready(management_url, MODEL, timeout_s=2):
            if time.monotonic() > deadline or not _pid_alive(pid):
                logs = "\n".join(p.read_text()[-3000:] for p in (tmp_path / "logs").glob("*.log"))
                pytest.fail(f"TorchServe did not report {MODEL} READY:\n{logs}")
            time.sleep(1)
        yield {
            "url": f"http://127.0.0.1:{inference}/predictions/{MODEL}",
            "scan": tmp_path / "scan.h5",
            "checkpoint": ckpt,
            "tmp": tmp_path,
        }
    finally:
        subprocess.run(
            [_tool("torchserve"), "--stop"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=90,
        )
        if _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@needs_torchserve
def test_torchserve_round_trip(server: dict[str, object]) -> None:
    from pet_dl.inference import reconstruct
    from pet_dl.io.nifti import load_nifti
    from pet_dl.io.scanfile import read_scan

    url, scan_path, tmp = str(server["url"]), Path(server["scan"]), Path(server["tmp"])
    body = scan_path.read_bytes()
    status, payload = _post(url, body)
    assert status == 200, payload[:500]
    (tmp / "served.nii.gz").write_bytes(payload)
    image, geometry = load_nifti(tmp / "served.nii.gz")
    scan = read_scan(scan_path)
    expected = reconstruct(scan, Path(server["checkpoint"]), device="cpu")
    assert geometry == scan.image
    torch.testing.assert_close(
        torch.as_tensor(image).float(), expected, rtol=1e-5, atol=1e-5 * float(expected.max())
    )

    status, payload = _post(url, body[: len(body) // 2])  # truncated HDF5
    assert status == 400, payload[:500]
    assert b"invalid scan payload" in payload
    status, payload = _post(url, b"")
    assert 400 <= status < 500

    status, payload = _post(url, body)  # the server keeps serving
    assert status == 200
    (tmp / "again.nii.gz").write_bytes(payload)
    again, _ = load_nifti(tmp / "again.nii.gz")
    torch.testing.assert_close(
        torch.as_tensor(again).float(), expected, rtol=1e-5, atol=1e-5 * float(expected.max())
    )
