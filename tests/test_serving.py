"""The real TorchServe on 127.0.0.1 (pet_dl.serving.local): same image as reconstruct, 4xx
on every kind of bad body without server paths, token authorization that the readiness
check follows, 503 at once for a model that does not load, and a bounded load-and-fault
run (50 requests 4 at a time, 10 bad, one worker killed midway, resident memory bounded,
SIGTERM to the process group stops everything)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.serving

ROOT = Path(__file__).resolve().parents[1]
MODEL = "pet_dl_test"
# Resident memory of the whole server (launcher + Java frontend + one CPU worker) under the
# load test's 4 concurrent requests: measured 0.67 GiB peak (2-core VM); the JVM is capped
# at 512 MiB heap + 256 MiB direct buffers, bodies at 8 MiB (config.properties).
RSS_BOUND = int(1.5 * 2**30)


def _tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


needs_torchserve = pytest.mark.skipif(
    shutil.which("java") is None
    or _tool("torchserve") is None
    or _tool("torch-model-archiver") is None
    or not Path("/proc/self/stat").exists(),
    reason="needs java, torchserve and torch-model-archiver (pip install 'pet_dl[serve]'), Linux",
)


def _post(
    url: str,
    body: bytes,
    token: str | None = None,
    content_type: str = "application/octet-stream",
    timeout: float = 120.0,
) -> tuple[int, bytes]:
    if len(body) > 2**20:
        return _post_expect(url, len(body), token, content_type), b""
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except (urllib.error.URLError, ConnectionError) as err:  # connection cut by the server
        return 0, str(err).encode()


def _post_expect(url: str, length: int, token: str | None, content_type: str) -> int:
    """The status answered to a POST's headers with ``Expect: 100-continue`` (what curl
    sends for a large body): the frontend refuses a body over ``max_request_size`` with 413
    before it is sent (sending it anyway gets the connection reset)."""
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
        + (f"Authorization: Bearer {token}\r\n" if token else "")
        + "Expect: 100-continue\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head.encode())
        line = sock.recv(4096).split(b"\r\n", 1)[0]
    return int(line.split()[1])


def _image(payload: bytes, folder: Path) -> torch.Tensor:
    from pet_dl.io.nifti import load_nifti

    with tempfile.NamedTemporaryFile(suffix=".nii.gz", dir=folder, delete=False) as f:
        f.write(payload)
    image, _ = load_nifti(f.name)
    os.unlink(f.name)
    return torch.as_tensor(image).float()


def _assert_same_image(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.max()))


def _bad_bodies(scan_path: Path, tmp: Path, generator: torch.Generator) -> dict[str, tuple]:
    """Ten kinds of bad request: name -> (body, content type, expected status)."""
    from test_inference import make_scan

    from pet_dl.geometry import SinogramGeometry, get_scanner
    from pet_dl.io.scanfile import write_scan

    good = scan_path.read_bytes()

    def edited(name: str, edit: Any) -> bytes:
        path = tmp / f"{name}.h5"
        shutil.copy(scan_path, path)
        with h5py.File(path, "r+") as f:
            edit(f)
        return path.read_bytes()

    def bomb(f: Any) -> None:  # 100 KB declaring 4 GiB of prompts
        del f["prompts"]
        f.create_dataset("prompts", shape=(2**15, 2**15), dtype="f4", chunks=(1024, 1024))

    def huge_geometry(f: Any) -> None:  # a sinogram of 2**30 elements (the model: 3640)
        sino = json.loads(f["geometry"].attrs["sinogram_json"])
        sino["scanner"].update(crystals_per_ring=2**16, blocks_per_ring=2**13)
        sino["num_radial"] = 2**15
        f["geometry"].attrs["sinogram_json"] = json.dumps(sino)

    other = make_scan(generator, SinogramGeometry.two_d(get_scanner("test"), num_radial=33))
    write_scan(tmp / "other.h5", other)
    return {
        "truncated": (good[: len(good) // 2], "application/octet-stream", 400),
        "garbage": (bytes(range(256)) * 64, "application/octet-stream", 400),
        "empty": (b"", "application/octet-stream", 400),
        "json": (b'{"scan": "scan.h5"}', "application/json", 400),
        "form": (b"scan=scan.h5&x=1", "application/x-www-form-urlencoded", 400),
        "nan": (edited("nan", lambda f: f["additive"].__setitem__((0, 0, 0), np.nan)), None, 400),
        "geometry": ((tmp / "other.h5").read_bytes(), None, 400),
        "bomb": (edited("bomb", bomb), None, 400),
        "too_large": (edited("huge", huge_geometry), None, 400),  # "scan too large"
        "oversized": (b"\0" * (9 * 2**20), None, 413),  # > max_request_size (8 MiB)
    }


def test_handler_answers_out_of_memory_with_507(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = pytest.importorskip("pet_dl.serving.handler", reason="needs the serve extra")
    from ts.utils.util import PredictionException

    def exhausted(*args: object, **kwargs: object) -> None:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")

    def bug(*args: object, **kwargs: object) -> None:
        raise RuntimeError("an internal error")

    worker = handler.PetReconHandler()
    monkeypatch.setattr(handler, "reconstruct_and_check", exhausted)
    with pytest.raises(PredictionException) as info:
        worker.inference([object()])
    assert info.value.error_code == 507 and "out of memory" in info.value.message
    monkeypatch.setattr(handler, "reconstruct_and_check", bug)
    with pytest.raises(RuntimeError, match="internal"):  # TorchServe answers 503
        worker.inference([object()])


@pytest.fixture
def archive(tmp_path: Path, generator: torch.Generator) -> dict[str, Any]:
    """A model archive of a small checkpoint (scripts/build_mar.sh) and a scan it serves."""
    from test_inference import CONFIG, make_checkpoint, make_scan

    from pet_dl.io.scanfile import write_scan

    scan = make_scan(generator)
    ckpt = make_checkpoint(tmp_path, generator, scan, dict(CONFIG, initial_fusion_weight=0.5))
    write_scan(tmp_path / "scan.h5", scan)
    store = tmp_path / "model_store"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_mar.sh"), str(ckpt), str(store), MODEL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return {"store": store, "checkpoint": ckpt, "scan": tmp_path / "scan.h5", "tmp": tmp_path}


@pytest.fixture
def server(archive: dict[str, Any]) -> Iterator[Any]:
    """The archive served with token authorization on (as in the image), 1 thread."""
    from pet_dl.serving.local import local_server

    work = archive["tmp"] / "server"
    with local_server(
        archive["store"], MODEL, work, token_auth=True, env={"PET_DL_THREADS": "1"}
    ) as running:
        yield running


@needs_torchserve
def test_torchserve_round_trip_bad_bodies_and_token_auth(
    server: Any, archive: dict[str, Any], generator: torch.Generator
) -> None:
    from pet_dl.inference import reconstruct_with_network
    from pet_dl.io.scanfile import read_scan
    from pet_dl.serving.healthcheck import model_status

    tmp = archive["tmp"]
    keys = server.keys()
    assert set(keys) == {"management", "inference", "API"}
    token = keys["inference"]
    body = archive["scan"].read_bytes()
    expected = reconstruct_with_network(read_scan(archive["scan"]), archive["checkpoint"], device="cpu")
    status, payload = _post(server.predictions_url, body, token)
    assert status == 200, payload[:500]
    _assert_same_image(_image(payload, tmp), expected)

    # without a token (or with a wrong one) nothing is served
    for wrong in (None, "not-a-key", keys["management"]):
        status, payload = _post(server.predictions_url, body, wrong)
        assert status in (400, 401) and b"Token" in payload, payload[:300]

    # every kind of bad body: a 4xx with one line that names no server folder
    for name, (bad, content_type, code) in _bad_bodies(archive["scan"], tmp, generator).items():
        status, payload = _post(
            server.predictions_url, bad, token, content_type or "application/octet-stream"
        )
        assert status == code, (name, status, payload[:300])
        if name != "oversized":  # the frontend's own 413 (body never reaches a worker)
            message = json.loads(payload)["message"]
            assert "\n" not in message and str(tmp) not in message, (name, message)
            assert tempfile.gettempdir() + "/" not in message, (name, message)
    status, payload = _post(server.predictions_url, body, token)  # the worker keeps serving
    assert status == 200
    _assert_same_image(_image(payload, tmp), expected)

    # readiness: follows the key file; a wrong --token is NOT READY; a renewed key works
    key_file = server.workdir / "key_file.json"
    assert model_status(server.management_url, MODEL, key_file=key_file) == (True, "READY")
    ready, reason = model_status(server.management_url, MODEL, token="wrong")
    assert not ready and "HTTP 400" in reason and "--token" in reason
    env = dict(os.environ, PET_DL_MODEL_NAME=MODEL, PET_DL_KEY_FILE=str(key_file))
    check = [sys.executable, "-m", "pet_dl.serving.healthcheck", "--url", server.management_url]
    done = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "READY\n"), done.stdout + done.stderr
    done = subprocess.run(
        [*check, "--renew", "inference"], env=env, capture_output=True, text=True, timeout=60
    )
    new = done.stdout.strip()
    assert done.returncode == 0 and new and new != token, done.stderr
    assert _post(server.predictions_url, body, token)[0] == 400  # the old key is gone
    assert _post(server.predictions_url, body, new)[0] == 200


@needs_torchserve
def test_a_model_that_does_not_load_answers_503_at_once(tmp_path: Path) -> None:
    """build_mar.sh refuses the checkpoint; packed anyway, the worker answers 503 at once
    and the readiness check says NOT READY with the reason (no server path)."""
    from pet_dl.serving.local import local_server

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((ROOT / "pet_dl" / "assets" / "pet_dl_2d.safetensors").read_bytes()[:300])
    store = tmp_path / "store"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_mar.sh"), str(broken), str(store), MODEL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2 and not (store / f"{MODEL}.mar").exists()
    assert done.stderr.startswith("error: ") and "does not load" in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    store.mkdir()
    subprocess.run(
        [_tool("torch-model-archiver"), "--model-name", MODEL, "--version", "1",
         "--serialized-file", str(broken), "--export-path", str(store),
         "--handler", str(ROOT / "pet_dl" / "serving" / "handler.py")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with local_server(store, MODEL, tmp_path / "server", wait=False) as server:
        deadline = time.monotonic() + 180
        ready, reason = server.status()
        while "failed to load" not in reason and time.monotonic() < deadline:
            assert server.process.poll() is None, server.logs()
            time.sleep(0.5)
            ready, reason = server.status()
        assert not ready and "not a readable safetensors" in reason, reason
        assert str(tmp_path) not in reason and tempfile.gettempdir() not in reason, reason
        start = time.monotonic()
        status, payload = _post(server.predictions_url, b"anything", timeout=30)
        assert status == 503 and time.monotonic() - start < 5.0
        assert b"model not loaded" in payload and str(tmp_path).encode() not in payload
        assert server.stop() and not server.pids()


@needs_torchserve
def test_load_with_bad_requests_a_killed_worker_and_bounded_memory(
    archive: dict[str, Any], generator: torch.Generator
) -> None:
    """50 requests, 4 at a time: 40 good ones of 4 different scans and 10 bad ones mixed in;
    the worker is SIGKILLed after the 20th answer. Every good answer equals reconstruct_with_network()'s
    image of its own scan and every bad one is a 4xx (a request cut by the kill is sent again
    once the server has recovered: at most the 4 in flight), a new worker serves, the whole
    server stays under RSS_BOUND, and SIGTERM to its process group stops every process."""
    from test_inference import make_scan

    from pet_dl.inference import reconstruct_with_network
    from pet_dl.io.scanfile import read_scan, write_scan
    from pet_dl.serving.local import local_server, rss_bytes

    tmp = archive["tmp"]
    scans = [archive["scan"]]
    for k in range(3):
        write_scan(tmp / f"scan{k}.h5", make_scan(generator, counts=1e5 * (k + 2)))
        scans.append(tmp / f"scan{k}.h5")
    expected = [reconstruct_with_network(read_scan(p), archive["checkpoint"], device="cpu") for p in scans]
    bad = list(_bad_bodies(archive["scan"], tmp, generator).items())
    assert len(bad) == 10
    jobs: list[tuple[str, bytes, str, Any]] = []  # (name, body, content type, expected)
    for i in range(50):
        if i % 5 == 2:
            name, (body, content_type, code) = bad[i // 5]
            jobs.append((name, body, content_type or "application/octet-stream", code))
        else:
            k = i % 4
            jobs.append((f"scan{k}", scans[k].read_bytes(), "application/octet-stream", k))

    with local_server(
        archive["store"], MODEL, tmp / "server", token_auth=True, env={"PET_DL_THREADS": "1"}
    ) as server:
        token = server.keys()["inference"]
        old_worker = _worker_pids(server)
        assert len(old_worker) == 1
        done_count = 0
        lock = threading.Lock()
        killed_at: list[float] = []
        peak = [0]
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.is_set():
                peak[0] = max(peak[0], rss_bytes(server.pids()))
                time.sleep(0.2)

        def send(job: tuple[str, bytes, str, Any]) -> tuple[float, float, int, bytes]:
            nonlocal done_count
            start = time.monotonic()
            status, payload = _post(server.predictions_url, job[1], token, job[2], timeout=300)
            end = time.monotonic()
            with lock:
                done_count += 1
                if done_count == 20 and not killed_at:
                    os.kill(old_worker[0], signal.SIGKILL)
                    killed_at.append(time.monotonic())
            return start, end, status, payload

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(send, jobs))
        elapsed = time.monotonic() - t0
        assert killed_at, "the worker was never killed"
        server.wait_ready(180)  # recovered: a new worker, READY
        new_worker = _worker_pids(server)
        assert new_worker and new_worker != old_worker
        retried = 0
        for job, (start, end, status, payload) in zip(jobs, results):
            if status >= 500 or status == 0:  # cut by the kill: only requests around it
                assert start <= killed_at[0] + 1.0 and end >= killed_at[0] - 1.0, (job[0], status)
                retried += 1
                status, payload = _post(server.predictions_url, job[1], token, job[2])
            if isinstance(job[3], int) and job[0].startswith("scan"):
                assert status == 200, (job[0], status, payload[:300])
                _assert_same_image(_image(payload, tmp), expected[job[3]])
            else:
                assert status == job[3], (job[0], status, payload[:300])
        assert retried <= 4
        stop_sampling.set()
        sampler.join()
        assert 0 < peak[0] < RSS_BOUND, f"peak RSS {peak[0] / 2**20:.0f} MiB"
        print(
            f"50 requests in {elapsed:.1f} s, {retried} retried after the kill, "
            f"peak RSS {peak[0] / 2**20:.0f} MiB"
        )
        pids = server.pids()
        assert len(pids) >= 3  # launcher, frontend, worker
        assert server.stop(timeout_s=60), "SIGTERM left processes running"
        assert not any(_alive(pid) for pid in pids)


def _worker_pids(server: Any) -> list[int]:
    url = f"{server.management_url}/models/{MODEL}"
    request = urllib.request.Request(url)
    request.add_header("Authorization", f"Bearer {server.keys().get('management', '')}")
    with urllib.request.urlopen(request, timeout=10) as response:
        description = json.loads(response.read())
    return [int(w["pid"]) for w in description[0]["workers"] if w.get("pid")]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"
