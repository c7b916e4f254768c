"""A TorchServe of a model archive on 127.0.0.1 with free ports, for tests and benchmarks.

    with local_server(model_store, "pet_dl", workdir) as server:
        urllib.request.urlopen(server.predictions_url, data=scan_bytes)

Starts ``torchserve --foreground`` in its own process group with the worker settings of
the image (``OMP_WAIT_POLICY=PASSIVE``, ``OMP_NUM_THREADS``; see :func:`worker_env`),
waits for :func:`pet_dl.serving.healthcheck.model_status` to say READY, and stops the
whole group with SIGTERM, as the image's init process (``tini -g``) does: the launcher,
the Java frontend and the Python workers. Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pet_dl.serving.healthcheck import model_status, read_keys

CONFIG = Path(__file__).with_name("config.properties")


def worker_env(threads: int | None = None, passive: bool = True) -> dict[str, str]:
    """The environment a served worker needs: idle OpenMP threads sleep (``PASSIVE``)
    instead of spinning against numba's projector threads (``docs/performance.md``,
    "Serving"), and one thread count for torch, OpenMP and numba
    (default: the CPUs this process may use)."""
    if threads is None:
        affinity = getattr(os, "sched_getaffinity", None)
        threads = len(affinity(0)) if affinity else (os.cpu_count() or 1)
    n = max(1, int(threads))
    env = {"OMP_NUM_THREADS": str(n), "NUMBA_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tool(name: str) -> str | None:
    """A console script of this Python's environment, else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


def group_pids(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (Linux ``/proc``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def rss_bytes(pids: list[int]) -> int:
    """Summed resident memory (VmRSS) of ``pids``, bytes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


@dataclass
class LocalServer:
    """A running TorchServe (see :func:`local_server`)."""

    process: subprocess.Popen[bytes]
    model: str
    inference_url: str
    management_url: str
    workdir: Path
    token_auth: bool = False
    stopped_by_sigterm: bool | None = field(default=None)

    @property
    def predictions_url(self) -> str:
        return f"{self.inference_url}/predictions/{self.model}"

    def keys(self) -> dict[str, str]:
        """The key file's keys (``{}`` with token authorization off)."""
        return read_keys(self.workdir / "key_file.json") if self.token_auth else {}

    def status(self, timeout_s: float = 8.0) -> tuple[bool, str]:
        return model_status(
            self.management_url,
            self.model,
            timeout_s=timeout_s,
            key_file=self.workdir / "key_file.json",
        )

    def pids(self) -> list[int]:
        """Every live process of the server: launcher, Java frontend, workers."""
        return group_pids(self.process.pid)

    def logs(self, chars: int = 4000) -> str:
        files = [self.workdir / "torchserve.out", *sorted((self.workdir / "logs").glob("*.log"))]
        return "\n".join(f"== {p.name}\n{p.read_text()[-chars:]}" for p in files if p.is_file())

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Block until READY; raises RuntimeError (with the logs) on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        reason = "not started"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"torchserve exited ({self.process.returncode}):\n{self.logs()}")
            ready, reason = self.status(timeout_s=5.0)
            if ready:
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"{self.model} not READY after {timeout_s:.0f} s ({reason}):\n{self.logs()}"
        )

    def stop(self, timeout_s: float = 60.0) -> bool:
        """SIGTERM to the whole process group; SIGKILL what is left after ``timeout_s``.
        Returns (and records) whether SIGTERM alone stopped every process."""
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.process.poll()
            if not group_pids(pgid):
                break
            time.sleep(0.2)
        left = group_pids(pgid)
        if left:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.stopped_by_sigterm = not left
        return not left


def write_config(
    path: Path, ports: tuple[int, int, int], overrides: Mapping[str, str | None] | None = None
) -> None:
    """The shipped ``config.properties`` on ``ports`` with ``overrides`` (None: remove)."""
    inference, management, metrics = ports
    lines = []
    overrides = dict(overrides or {})
    for line in CONFIG.read_text().splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.startswith("#") else None
        if key in overrides:
            value = overrides.pop(key)
            if value is not None:
                lines.append(f"{key}={value}")
            continue
        line = line.replace("127.0.0.1:8080", f"127.0.0.1:{inference}")
        line = line.replace("127.0.0.1:8081", f"127.0.0.1:{management}")
        lines.append(line.replace("127.0.0.1:8082", f"127.0.0.1:{metrics}"))
    lines += [f"{k}={v}" for k, v in overrides.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")


def _shipped_properties() -> dict[str, str]:
    pairs = [
        line.split("=", 1)
        for line in CONFIG.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    ]
    return {key.strip(): value.strip() for key, value in pairs}


@contextlib.contextmanager
def local_server(
    model_store: str | os.PathLike[str],
    model: str,
    workdir: str | os.PathLike[str],
    *,
    env: Mapping[str, str | None] | None = None,
    config: Mapping[str, str | None] | None = None,
    token_auth: bool = False,
    ready_timeout_s: float = 180.0,
    wait: bool = True,
) -> Iterator[LocalServer]:
    """Serve ``<model_store>/<model>.mar`` on 127.0.0.1 until the block ends.

    Args:
        model_store: folder holding ``<model>.mar`` (``scripts/build_mar.sh``).
        model: the model name (``/predictions/<model>``).
        workdir: the server's working folder (logs, pid file, ``key_file.json``).
        env: environment changes on top of :func:`worker_env` (None removes a variable).
        config: ``config.properties`` overrides (None removes a key).
        token_auth: keep TorchServe's token authorization on (key file in ``workdir``).
        wait: wait for READY before yielding.
    """
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    ports = tuple(free_ports(3))
    overrides = dict(config or {})
    # The frontend puts the workers' sockets in java.io.tmpdir (.ts.sock.9000 in the system temp folder by
    # default, whatever TMPDIR says): give each server its own, so two can run at once.
    vmargs = overrides.get("vmargs", _shipped_properties().get("vmargs")) or ""
    overrides["vmargs"] = f"{vmargs} -Djava.io.tmpdir={work.resolve()}".strip()
    if token_auth:
        overrides["disable_token_authorization"] = None
    write_config(work / "config.properties", ports, overrides)  # type: ignore[arg-type]
    full_env = dict(os.environ)
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    full_env.update(worker_env())
    full_env.update(
        TMPDIR=str(work), LOG_LOCATION=str(work / "logs"), METRICS_LOCATION=str(work / "logs")
    )
    full_env.setdefault("WANDB_MODE", "disabled")
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    torchserve = tool("torchserve")
    if torchserve is None:
        raise RuntimeError("torchserve not found: pip install 'pet_dl[serve]'")
    command = [
        torchserve, "--start", "--foreground", "--ncs",
        "--ts-config", str(work / "config.properties"),
        "--model-store", str(Path(model_store).resolve()),
        "--models", f"{model}={model}.mar",
    ]  # fmt: skip
    # The Java frontend inherits the launcher's output: a file, not a pipe (no EOF to wait for).
    with open(work / "torchserve.out", "wb") as log:
        process = subprocess.Popen(
            command, cwd=work, env=full_env, stdout=log, stderr=log, start_new_session=True
        )
    server = LocalServer(
        process=process,
        model=model,
        inference_url=f"http://127.0.0.1:{ports[0]}",
        management_url=f"http://127.0.0.1:{ports[1]}",
        workdir=work,
        token_auth=token_auth,
    )
    try:
        if wait:
            server.wait_ready(ready_timeout_s)
        yield server
    finally:
        if server.stopped_by_sigterm is None:
            server.stop()
