"""Checkpoints: exact round trip, no unpickling, mismatch detection, Lightning conversion."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from pet_dl.io.checkpoint import (
    CheckpointError,
    convert_lightning_checkpoint,
    load_checkpoint,
    read_checkpoint_header,
    save_checkpoint,
    write_model_card,
)
from pet_dl.models import build_model

CONFIG: dict[str, Any] = {
    "name": "unrolled_em",
    "spatial_dims": 2,
    "num_iterations": 2,
    "channels": [4, 8],
    "strides": [2],
    "init_iterations": 1,
}
METADATA: dict[str, Any] = {
    "sinogram": {"num_radial": 32, "scanner": {"name": "test"}},
    "image": {"shape": [16, 16, 1], "voxel_size_mm": [2.0, 2.0, 2.0], "origin_mm": [0, 0, 0]},
    "reduction_factors": [4, 10, 20],
    "training_command": "python train.py fit --config configs/smoke.yaml",
}


def _random_model(generator: torch.Generator, config: dict[str, Any] = CONFIG) -> torch.nn.Module:
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return model


def test_round_trip_is_exact(tmp_path: Path, generator: torch.Generator) -> None:
    model = _random_model(generator)
    path = save_checkpoint(tmp_path / "m.safetensors", model, CONFIG, METADATA)
    loaded = load_checkpoint(path, builder=build_model)
    assert loaded.config == CONFIG
    assert loaded.metadata["reduction_factors"] == [4, 10, 20]
    assert loaded.metadata["pet_dl_version"]
    assert not loaded.model.training
    ref, got = model.state_dict(), loaded.model.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_weights_of_another_architecture_are_refused(
    tmp_path: Path, generator: torch.Generator
) -> None:
    wider = dict(CONFIG, channels=[8, 16])
    path = save_checkpoint(tmp_path / "m.safetensors", _random_model(generator, wider), CONFIG, {})
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(path, builder=build_model)
    deeper = dict(CONFIG, num_iterations=3, share_weights=False)
    path = save_checkpoint(tmp_path / "d.safetensors", _random_model(generator, deeper), CONFIG, {})
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(path, builder=build_model)


def test_corrupt_truncated_and_foreign_files(tmp_path: Path, generator: torch.Generator) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", _random_model(generator), CONFIG, METADATA)
    data = path.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "t.safetensors", builder=build_model)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "junk.safetensors", builder=build_model)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors", builder=build_model)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a pet_dl checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors", builder=build_model)


def test_nan_weights_are_refused(tmp_path: Path, generator: torch.Generator) -> None:
    model = _random_model(generator)
    with torch.no_grad():
        next(iter(model.parameters())).view(-1)[0] = float("nan")
    path = save_checkpoint(tmp_path / "m.safetensors", model, CONFIG, {})
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(path, builder=build_model)


class _Payload:
    """Unpickling this runs code (creates a marker file): what a checkpoint must never do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_pickled_code_is_never_run(tmp_path: Path, generator: torch.Generator) -> None:
    marker = tmp_path / "pwned"
    state = {f"model.{k}": v for k, v in _random_model(generator).state_dict().items()}
    evil = {"state_dict": state, "hyper_parameters": {"model": CONFIG}, "x": _Payload(marker)}
    torch.save(evil, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="weights only"):
        convert_lightning_checkpoint(tmp_path / "evil.ckpt", tmp_path / "out.safetensors", builder=build_model)
    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.safetensors", builder=build_model)
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("style", ["recon_module", "generic"])
def test_lightning_conversion(tmp_path: Path, generator: torch.Generator, style: str) -> None:
    model = _random_model(generator)
    prefix, key = ("net.", "network") if style == "recon_module" else ("model.", "model")
    ckpt: dict[str, Any] = {
        "state_dict": {f"{prefix}{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {key: CONFIG, "lr": 1e-3},
        "epoch": 3,
    }
    if style == "recon_module":
        ckpt["pet_dl_metadata"] = METADATA
    else:
        ckpt["hyper_parameters"]["metadata"] = METADATA
    torch.save(ckpt, tmp_path / "last.ckpt")
    out = convert_lightning_checkpoint(tmp_path / "last.ckpt", tmp_path / "m.safetensors", builder=build_model)
    loaded = load_checkpoint(out, builder=build_model)
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value)
    assert loaded.config == CONFIG
    assert loaded.metadata["image"] == METADATA["image"]
    with pytest.raises(CheckpointError, match="prefix"):
        convert_lightning_checkpoint(
            tmp_path / "last.ckpt", tmp_path / "x.safetensors", prefix="xx.", builder=build_model
        )


def test_model_card(tmp_path: Path, generator: torch.Generator) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", _random_model(generator), CONFIG, METADATA)
    card = write_model_card(tmp_path / "MODEL_CARD.md", path).read_text()
    assert hashlib.sha256(path.read_bytes()).hexdigest() in card
    assert "unrolled_em" in card and "[4, 10, 20]" in card and "test" in card
    config, metadata = read_checkpoint_header(path)
    assert config == CONFIG and metadata["training_command"] in card


def test_model_version_is_saved_and_read_back(tmp_path: Path, generator: torch.Generator) -> None:
    """save_checkpoint records model_version; the header, LoadedModel and the model card read
    it back; a file without one reads None; a copy keeps its source's unless given another."""
    from pet_dl.io.checkpoint import model_version

    model = _random_model(generator)
    path = save_checkpoint(tmp_path / "v.safetensors", model, CONFIG, METADATA, model_version="v99-test")
    assert model_version(read_checkpoint_header(path)[1]) == "v99-test"
    loaded = load_checkpoint(path, builder=build_model)
    assert loaded.model_version == "v99-test"
    assert "- model version: v99-test" in write_model_card(tmp_path / "card.md", path).read_text()
    copy = save_checkpoint(tmp_path / "c.safetensors", loaded.model, loaded.config, loaded.metadata)
    assert load_checkpoint(copy, builder=build_model).model_version == "v99-test"
    renamed = save_checkpoint(tmp_path / "r.safetensors", model, CONFIG, loaded.metadata, model_version="v100")
    assert load_checkpoint(renamed, builder=build_model).model_version == "v100"

    plain = save_checkpoint(tmp_path / "p.safetensors", model, CONFIG, METADATA)
    assert load_checkpoint(plain, builder=build_model).model_version is None
    assert "- model version: not recorded" in write_model_card(tmp_path / "p.md", plain).read_text()
    with pytest.raises(CheckpointError, match="model_version"):
        save_checkpoint(tmp_path / "e.safetensors", model, CONFIG, METADATA, model_version=" ")


def test_the_given_builder_builds_the_network(tmp_path: Path, generator: torch.Generator) -> None:
    """io.checkpoint knows no network: load_checkpoint calls the builder it is given with the
    stored config, with_network_options reuses it, and a builder that refuses is one error."""
    calls: list[dict[str, Any]] = []

    def builder(config: dict[str, Any]) -> torch.nn.Module:
        calls.append(dict(config))
        return build_model(config)

    path = save_checkpoint(tmp_path / "m.safetensors", _random_model(generator), CONFIG, METADATA)
    loaded = load_checkpoint(path, builder=builder)
    assert calls == [CONFIG]
    loaded.with_network_options({"flip_ensemble": [0]})
    assert calls[-1] == {**CONFIG, "flip_ensemble": [0]}

    def refuse(config: dict[str, Any]) -> torch.nn.Module:
        raise ValueError("no such network here")

    with pytest.raises(CheckpointError, match="no such network here"):
        load_checkpoint(path, builder=refuse)
    with pytest.raises(TypeError, match="builder"):
        load_checkpoint(path)  # type: ignore[call-arg]


def test_interpolated_weights_lie_on_the_line_between_the_two(tmp_path: Path, generator: torch.Generator, capsys) -> None:
    from pet_dl.training.export import main

    base, tuned = _random_model(generator), _random_model(generator)
    a = save_checkpoint(tmp_path / "base.safetensors", base, CONFIG, METADATA)
    b = save_checkpoint(tmp_path / "tuned.safetensors", tuned, CONFIG, {**METADATA, "model_version": "tuned"})
    for alpha in (0.0, 0.3, 1.0):
        out = tmp_path / f"mix{alpha}.safetensors"
        assert main([str(b), str(out), "--interpolate-from", str(a), str(alpha), "--model-version", "mix"]) == 0
        mixed = load_checkpoint(out, builder=build_model)
        assert mixed.metadata["model_version"] == "mix"
        assert "--interpolate-from" in mixed.metadata["training_command"]
        sa, sb, sm = base.state_dict(), tuned.state_dict(), mixed.model.state_dict()
        for key in sa:
            if sa[key].is_floating_point():
                torch.testing.assert_close(sm[key], (1 - alpha) * sa[key] + alpha * sb[key], rtol=1e-6, atol=1e-6)
    # another network, a step outside [0, 1] and other export options are one error line each
    other = save_checkpoint(tmp_path / "other.safetensors", _random_model(generator, {**CONFIG, "channels": [4, 4]}),
                            {**CONFIG, "channels": [4, 4]}, METADATA)
    capsys.readouterr()
    for argv in ([str(b), str(tmp_path / "x.safetensors"), "--interpolate-from", str(other), "0.5"],
                 [str(b), str(tmp_path / "x.safetensors"), "--interpolate-from", str(a), "1.5"],
                 [str(b), str(tmp_path / "x.safetensors"), "--interpolate-from", str(a), "0.5", "--float16"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and err.count("\n") == 1, err
    assert not (tmp_path / "x.safetensors").exists()
