"""Training: overfitting, resume, two-process DDP, export round trip, config validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pet_dl.geometry import ImageGeometry
from pet_dl.operators import MatrixOperator
from pet_dl.training import BatchGeometry, Collate, ReconModule, export_module
from pet_dl.training.cli import release_process_group

IMAGE_SHAPE = (8, 8, 1)
SINO = (1, 6, 10)
NETWORK = {
    "name": "unrolled_em", "spatial_dims": 2, "num_iterations": 2, "channels": [4, 8],
    "strides": [2], "init_iterations": 3,
}


class MatrixScans(Dataset):
    """Paired scans on a fixed random system matrix: item ``i`` is phantom seed ``i``."""

    def __init__(self, n: int, projector: MatrixOperator, offset: int = 0) -> None:
        self.n, self.projector, self.offset = n, projector, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.offset + i)
        target = torch.zeros(IMAGE_SHAPE)
        target[2:6, 2:6] = 10.0 + 10.0 * torch.rand(4, 4, 1, generator=g)
        dose = torch.tensor([0.25, 0.1, 0.05][i % 3])
        mult = torch.ones(SINO)
        add = torch.full(SINO, 0.5) * dose
        ybar = dose * 5.0 * self.projector(target) + add
        prompts = torch.poisson(ybar, generator=g)
        return {
            "prompts": prompts, "multiplicative": mult, "additive": add,
            "calibration": dose * 5.0, "dose_fraction": dose, "target": target,
            "seed": torch.tensor(self.offset + i),
        }


def _projector() -> MatrixOperator:
    g = torch.Generator().manual_seed(7)
    n, m = 64, 60
    a = torch.rand(m, n, generator=g) * (torch.rand(m, n, generator=g) < 0.3)
    return MatrixOperator(a, IMAGE_SHAPE, SINO)


class MatrixDataModule(pl.LightningDataModule):
    """Tiny in-memory data (no simulation) for fast trainer tests."""

    def __init__(self, n_train: int = 8, batch_size: int = 2, record: str | None = None) -> None:
        super().__init__()
        self.n_train, self.batch_size, self.record = n_train, batch_size, record
        self.projector = _projector()
        self.image = ImageGeometry.centered(IMAGE_SHAPE, (4.0, 4.0, 4.0))

    def metadata(self) -> dict[str, Any]:
        return {"image": self.image.to_dict(), "init_iterations": 3, "reduction_factors": [4, 10, 20]}

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        geometry = BatchGeometry(None, self.image, 0.0, projector=self.projector)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, collate_fn=Collate(geometry))

    def train_dataloader(self) -> DataLoader:
        return self._loader(MatrixScans(self.n_train, self.projector), shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader(MatrixScans(2, self.projector, offset=1000), shuffle=False)


class _RankRecorder(ReconModule):
    """Writes what each rank saw (``self.seen``, filled by a subclass's ``training_step``)
    to ``<record>/rank<k>.json`` when training ends."""

    def __init__(self, *args: Any, record: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record = record
        self.seen: list[Any] = []

    def on_train_end(self) -> None:
        Path(self.record, f"rank{self.global_rank}.json").write_text(json.dumps(self.seen))

    def teardown(self, stage: str) -> None:
        # the last hook a spawned rank runs: without this, a rank could exit with gloo's
        # threads alive and abort after a finished fit (a flake seen once in CI)
        release_process_group()


class RecordingModule(_RankRecorder):
    """Records the phantom seeds each rank trains on."""

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.seen.extend(int(s) for s in batch["seed"])
        return super().training_step(batch, batch_idx)


def _trainer(tmp_path: Path, **kw: Any) -> pl.Trainer:
    opts = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=str(tmp_path), enable_checkpointing=False,
    )
    opts.update(kw)
    return pl.Trainer(**opts)


def test_loss_falls_when_overfitting_a_tiny_set(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    dm = MatrixDataModule(n_train=2, batch_size=2)
    module = ReconModule(NETWORK, lr=1e-2)
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        before = float(module.compute_loss(module(batch), batch["target"]))
    _trainer(tmp_path, max_steps=25).fit(module, dm)
    with torch.no_grad():
        after = float(module.compute_loss(module(batch), batch["target"]))
    assert after < 0.7 * before, (before, after)


def test_resume_continues_from_the_saved_step(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    dm = MatrixDataModule()
    trainer = _trainer(tmp_path, max_steps=3)
    trainer.fit(ReconModule(NETWORK), dm)
    ckpt = tmp_path / "step3.ckpt"
    trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=False)["global_step"] == 3
    resumed = _trainer(tmp_path, max_steps=5)
    module = ReconModule(NETWORK)
    resumed.fit(module, dm, ckpt_path=str(ckpt))
    assert resumed.global_step == 5
    assert module.geometry_metadata.get("init_iterations") == 3


def test_two_process_ddp_ranks_see_different_data(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    dm = MatrixDataModule(n_train=8, batch_size=2)
    module = RecordingModule(NETWORK, record=str(tmp_path))
    trainer = _trainer(
        tmp_path, devices=2, strategy="ddp_spawn", max_epochs=1, use_distributed_sampler=True,
    )
    trainer.fit(module, dm)
    seen = [set(json.loads((tmp_path / f"rank{k}.json").read_text())) for k in range(2)]
    assert seen[0] and seen[1]
    assert not seen[0] & seen[1], "DDP ranks must train on disjoint samples"
    assert seen[0] | seen[1] == set(range(8))


def test_release_process_group_destroys_a_live_group_and_is_a_no_op_without_one(tmp_path: Path) -> None:
    import torch.distributed as dist

    release_process_group()  # none up: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    release_process_group()
    assert not dist.is_initialized()


def test_export_round_trip(tmp_path: Path) -> None:
    from pet_dl.io.checkpoint import load_checkpoint
    from pet_dl.models import build_model

    pl.seed_everything(0, verbose=False)
    dm = MatrixDataModule()
    module = ReconModule(NETWORK)
    _trainer(tmp_path, max_steps=2).fit(module, dm)
    path = export_module(module, tmp_path / "net.safetensors", "pytest")
    loaded = load_checkpoint(path, builder=build_model)
    assert loaded.metadata["image"] == dm.image.to_dict()
    assert loaded.metadata["training_command"] == "pytest"
    batch = next(iter(dm.val_dataloader()))
    from pet_dl.training import to_recon_batch

    module.net.eval()
    loaded.model.eval()
    with torch.no_grad():
        assert torch.equal(module.net(to_recon_batch(batch)), loaded.model(to_recon_batch(batch)))

    # fine-tuning starts from exactly these weights; another network is refused by name
    tuned = ReconModule(NETWORK, init_weights=str(path))
    for (name, a), b in zip(module.net.state_dict().items(), tuned.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="init_weights .*does not match model.network"):
        ReconModule({**NETWORK, "channels": [8, 16]}, init_weights=str(path))



def test_float16_export_halves_the_file_and_keeps_the_reconstruction(tmp_path: Path) -> None:
    """``--float16`` stores every weight rounded to float16 (loaded back as float32): the
    file is about half, the metadata says so, and the image moves by float16 rounding only."""
    from pet_dl.io.checkpoint import load_checkpoint
    from pet_dl.models import build_model
    from pet_dl.training import to_recon_batch
    from pet_dl.training.export import main

    pl.seed_everything(0, verbose=False)
    dm = MatrixDataModule()
    module = ReconModule({**NETWORK, "channels": [16, 32]})
    _trainer(tmp_path, max_steps=2).fit(module, dm)
    full = export_module(module, tmp_path / "net.safetensors", "pytest")
    half = tmp_path / "half.safetensors"
    assert main([str(full), str(half), "--float16"]) == 0
    a, b = load_checkpoint(full, builder=build_model), load_checkpoint(half, builder=build_model)
    assert b.metadata["weights_dtype"] == "float16" and "weights_dtype" not in a.metadata
    assert "--float16" in b.metadata["training_command"] and b.config == a.config
    assert 0.45 < half.stat().st_size / full.stat().st_size < 0.6
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert y.dtype == x.dtype, name
        assert torch.equal(y, x.half().to(x.dtype) if x.is_floating_point() else x), name
    batch = to_recon_batch(next(iter(dm.val_dataloader())))
    with torch.no_grad():
        ref, got = a.model(batch), b.model(batch)
    rel = float((got - ref).abs().max() / ref.abs().max())
    assert 0 < rel < 1e-2
    # a .safetensors input needs a change to make
    with pytest.raises(SystemExit):
        main([str(full), str(tmp_path / "same.safetensors")])


def test_export_switches_on_the_flip_ensemble_with_the_same_weights(tmp_path: Path) -> None:
    """``--flip-ensemble`` on a .safetensors: same tensors and metadata, config changed,
    output the flip-averaged network's; bad axes are one error line and exit code 2."""
    from pet_dl.io.checkpoint import load_checkpoint, save_checkpoint
    from pet_dl.models import build_model
    from pet_dl.training.export import main as export_main

    torch.manual_seed(0)
    config = dict(NETWORK)
    plain = build_model(config)
    meta = {"image": {"shape": [8, 8, 1]}, "training_command": "fit"}
    src = save_checkpoint(tmp_path / "plain.safetensors", plain, config, meta)
    out = tmp_path / "flip.safetensors"
    assert export_main([str(src), str(out), "--flip-ensemble", "0"]) == 0
    loaded = load_checkpoint(out, builder=build_model)
    assert loaded.config == {**config, "flip_ensemble": [0]}
    assert loaded.metadata["image"] == {"shape": [8, 8, 1]}
    assert loaded.metadata["training_command"].startswith("fit; python -m pet_dl.training.export ")
    for (name, a), b in zip(plain.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    x = torch.rand(2, 2, 8, 8)
    reg = plain.regularisers[0]
    by_hand = 0.5 * (reg(x) + reg(x.flip(2)).flip(2))
    assert torch.allclose(loaded.model.regularisers[0](x), by_hand, rtol=1e-5, atol=1e-6)
    assert export_main([str(src), str(tmp_path / "bad.safetensors"), "--flip-ensemble", "2"]) == 2
    stamped = tmp_path / "stamped.safetensors"
    assert export_main([str(src), str(stamped), "--model-version", "v99-test"]) == 0  # weights kept
    assert load_checkpoint(stamped, builder=build_model).model_version == "v99-test"
    for (key, a), b in zip(load_checkpoint(src, builder=build_model).model.state_dict().items(),
                           load_checkpoint(stamped, builder=build_model).model.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert not (tmp_path / "bad.safetensors").exists()
    with pytest.raises(SystemExit):
        export_main([str(src), str(tmp_path / "x.safetensors")])  # nothing to change


def test_unrolled_network_warm_starts_from_a_post_unet(tmp_path: Path) -> None:
    """A trained post_unet initialises every regulariser of an unrolled network with the
    same UNet; a post_unet of another UNet is refused."""
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.models import build_model

    unet = {"channels": [4, 8], "strides": [2], "init_iterations": 3}
    post = build_model({"name": "post_unet", "spatial_dims": 2, **unet})
    with torch.no_grad():
        for p in post.parameters():
            p.add_(torch.randn_like(p))
    path = save_checkpoint(tmp_path / "post.safetensors", post, {"name": "post_unet", "spatial_dims": 2, **unet}, {})
    unrolled = ReconModule(
        {**NETWORK, **unet, "num_iterations": 3, "share_weights": False}, init_weights=str(path)
    )
    assert len(unrolled.net.regularisers) == 3
    for reg in unrolled.net.regularisers:
        for (name, a), b in zip(post.net.state_dict().items(), reg.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="init_weights .*post_unet.*does not match"):
        ReconModule({**NETWORK, "channels": [8, 16]}, init_weights=str(path))


def test_shared_regulariser_warm_starts_one_per_iteration(tmp_path: Path) -> None:
    """An unrolled network with one shared CNN initialises a copy with one CNN per
    iteration: every copy and the fusion weights start equal to the shared ones, so
    both networks give the same image before training; the copies then train apart."""
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.models import build_model

    shared = build_model(NETWORK)
    with torch.no_grad():
        for p in shared.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = save_checkpoint(tmp_path / "shared.safetensors", shared, NETWORK, {})
    module = ReconModule({**NETWORK, "share_weights": False}, init_weights=str(path))
    regs = module.net.regularisers
    assert len(regs) == NETWORK["num_iterations"]
    for reg in regs:
        for (name, a), b in zip(shared.regularisers[0].state_dict().items(), reg.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    assert torch.equal(module.net.fusion_weight, shared.fusion_weight)
    batch = next(iter(MatrixDataModule().val_dataloader()))
    from pet_dl.training import to_recon_batch

    shared.eval()
    module.net.eval()
    with torch.no_grad():
        torch.testing.assert_close(module.net(to_recon_batch(batch)), shared(to_recon_batch(batch)))
    # copies, not one tensor seen three times
    with torch.no_grad():
        next(regs[0].parameters()).add_(1.0)
    assert not torch.equal(next(regs[0].parameters()), next(regs[1].parameters()))

def test_unrolled_network_warm_starts_one_with_more_iterations(tmp_path: Path) -> None:
    """K = 2 iterations with one CNN each initialise K = 4: iterations 0 and 1 as trained,
    the added ones as the last trained iteration (CNN and both fusion parameters); a
    network with fewer iterations than its source is refused."""
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.models import build_model

    config = {**NETWORK, "share_weights": False}
    source = build_model(config)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = save_checkpoint(tmp_path / "k2.safetensors", source, config, {})
    module = ReconModule({**config, "num_iterations": 4}, init_weights=str(path))
    for k, reg in enumerate(module.net.regularisers):
        trained = source.regularisers[min(k, 1)].state_dict()
        for (name, a), b in zip(trained.items(), reg.state_dict().values(), strict=True):
            assert torch.equal(a, b), (k, name)
    for name in ("fusion_weight", "fusion_dose_slope"):
        src, dst = getattr(source, name), getattr(module.net, name)
        assert torch.equal(dst, torch.stack([src[0], src[1], src[1], src[1]])), name
    with torch.no_grad():  # copies, not one tensor seen twice
        next(module.net.regularisers[2].parameters()).add_(1.0)
    assert not torch.equal(next(module.net.regularisers[2].parameters()), next(module.net.regularisers[3].parameters()))
    wide = save_checkpoint(tmp_path / "k4.safetensors", module.net, {**config, "num_iterations": 4}, {})
    with pytest.raises(ValueError, match="init_weights .*does not match"):
        ReconModule(config, init_weights=str(wide))


def test_init_iterations_mismatch_is_refused(tmp_path: Path) -> None:
    module = ReconModule({**NETWORK, "init_iterations": 5})
    with pytest.raises(ValueError, match="init_iterations"):
        _trainer(tmp_path, max_steps=1).fit(module, MatrixDataModule())


def test_config_with_unknown_key_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pet_dl.training.cli import main

    root = Path(__file__).resolve().parents[1]
    text = (root / "configs" / "smoke_cpu.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("  loss: l1", "  loss: l1\n  learning_rat: 0.1"))
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(bad)])
    assert exc.value.code != 0
    assert "learning_rat" in capsys.readouterr().err



def test_missing_init_weights_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pet_dl.training.cli import main

    root = Path(__file__).resolve().parents[1]
    missing = tmp_path / "no_such_model.safetensors"
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(root / "configs" / "smoke_cpu.yaml"),
              "--model.init_weights", str(missing)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no_such_model.safetensors" in err[-1]
    assert not any("Traceback" in line for line in err)


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_folder_is_found() -> None:
    """The parametrised config tests below see the shipped chain, not an empty folder."""
    names = {p.stem for p in CONFIGS}
    assert {"base", "smoke_cpu", "post_unet2d", "brain2d_mix_dense2", "evaluate2d"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads(path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every file in configs/ has a one-line header and loads: a training config through
    train.py on top of configs/base.yaml (its network also builds), an evaluation config
    through ``load_eval_config``, an anchor file through ``LowFrequencyAnchor``, a mix with
    OSEM through ``OSEMBlend``, and base.yaml is train.py's base."""
    import yaml

    from pet_dl.evaluate import load_eval_config
    from pet_dl.models import build_model
    from pet_dl.training.cli import BASE_CONFIG, main

    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and not lines[1].startswith("#"), "one header line"
    data = yaml.safe_load(path.read_text())
    if "networks" in data:
        assert load_eval_config(path)["networks"]
        return
    if "sigma_voxels" in data:
        from pet_dl.models.anchor import LowFrequencyAnchor

        LowFrequencyAnchor.from_config(data)
        return
    if "rows" in data:
        from pet_dl.models.anchor import OSEMBlend

        OSEMBlend.from_config(data)
        return
    if "model" not in data:
        assert path == BASE_CONFIG
        return
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(path), "--print_config"])
    assert exc.value.code == 0, capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["network"] == data["model"]["network"]
    base = yaml.safe_load(BASE_CONFIG.read_text())["trainer"]
    assert printed["trainer"]["max_epochs"] == data["trainer"].get("max_epochs", base["max_epochs"])
    build_model(printed["model"]["network"])  # the network part is valid too


def test_run_paths_follow_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config on top of base.yaml gets its logger, checkpoint folder and export path from
    trainer.default_root_dir; a path the config gives is kept."""
    from types import SimpleNamespace

    import pet_dl.training.export as export_module_file
    from pet_dl.training.cli import main
    from pet_dl.training.export import ExportCallback

    root = Path(__file__).resolve().parents[1]
    run = tmp_path / "brain2d_mix_dense2"
    cli = main(["--config", str(root / "configs" / "brain2d_mix_dense2.yaml"),
                "--trainer.default_root_dir", str(run), "--model.init_weights", "null"], run=False)
    assert Path(cli.trainer.checkpoint_callback.dirpath) == run.resolve() / "checkpoints"
    assert Path(cli.trainer.logger.save_dir) == run
    assert cli.config.trainer.logger.init_args.name == run.name  # the wandb run name
    export = next(c for c in cli.trainer.callbacks if isinstance(c, ExportCallback))
    written: list[tuple[Path, str | None]] = []
    monkeypatch.setattr(export_module_file, "export_module",
                        lambda module, path, command, model_version=None: written.append((path, model_version)))
    export.on_fit_end(SimpleNamespace(is_global_zero=True, default_root_dir=str(run)), cli.model)
    assert written == [(run / "pet_dl_2d.safetensors", run.name)]  # the run folder names the weights

    cli = main(["--config", str(root / "configs" / "post_unet2d.yaml"),
                "--trainer.default_root_dir", str(run)], run=False)
    export = next(c for c in cli.trainer.callbacks if isinstance(c, ExportCallback))
    assert export.path == "outputs/post_unet2d/post_unet2d.safetensors"


@pytest.mark.parametrize("name", ["brain3d_gpu", "body3d_gpu"])
def test_3d_configs_warm_start_from_their_post_unet_config(name: str, tmp_path: Path) -> None:
    """Each 3D unrolled config starts from the file its PostUNet config writes, with the
    same UNet and OSEM start, so the chain cannot break after hours of GPU training: the
    PostUNet built from its config (weights perturbed) loads into every regulariser."""
    import yaml

    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.models import build_model

    configs = Path(__file__).resolve().parents[1] / "configs"
    unrolled = yaml.safe_load((configs / f"{name}.yaml").read_text())
    post = yaml.safe_load((configs / f"post_unet_{name}.yaml").read_text())
    written = next(c["init_args"]["path"] for c in post["trainer"]["callbacks"] if "path" in c.get("init_args", {}))
    assert unrolled["model"]["init_weights"] == written
    assert post["data"]["data_dir"] == unrolled["data"]["data_dir"]
    post_net = build_model(post["model"]["network"])
    with torch.no_grad():
        for p in post_net.parameters():
            p.add_(torch.randn_like(p))
    path = save_checkpoint(tmp_path / "post.safetensors", post_net, post["model"]["network"], {})
    model = {k: v for k, v in unrolled["model"].items() if k not in ("network", "init_weights")}
    module = ReconModule(unrolled["model"]["network"], init_weights=str(path), **model)
    for reg in module.net.regularisers:
        for (key, a), b in zip(post_net.net.state_dict().items(), reg.state_dict().values(), strict=True):
            assert torch.equal(a, b), key


def test_unknown_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="loss"):
        ReconModule(NETWORK, loss="huber")


def _lesion_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two 2D scans of 12 x 12: a positive target, a prediction and one 2 x 2 lesion each."""
    target = 1.0 + torch.rand(2, 12, 12, 1, generator=generator, dtype=torch.float64)
    pred = target + 0.1 * torch.randn(2, 12, 12, 1, generator=generator, dtype=torch.float64)
    mask = torch.zeros(2, 12, 12, 1, dtype=torch.int64)
    mask[0, 3:5, 3:5] = 1
    mask[1, 7:9, 6:8] = 2
    return pred, target, mask


def test_dilate_mask_grows_by_the_radius() -> None:
    from pet_dl.training.losses import dilate_mask

    mask = torch.zeros(1, 9, 9, 1, dtype=torch.int64)
    mask[0, 4, 4] = 3
    grown = dilate_mask(mask, 1, spatial_dims=2)
    assert grown.dtype == torch.bool and int(grown.sum()) == 9
    assert bool(grown[0, 3:6, 3:6].all())
    assert int(dilate_mask(mask, 2, spatial_dims=2).sum()) == 25
    assert int(dilate_mask(mask, 0, spatial_dims=2).sum()) == 1
    cube = torch.zeros(1, 7, 7, 7, dtype=torch.int64)
    cube[0, 3, 3, 3] = 1
    assert int(dilate_mask(cube, 1, spatial_dims=3).sum()) == 27
    with pytest.raises(ValueError, match="dilation"):
        dilate_mask(mask, -1, spatial_dims=2)


@pytest.mark.parametrize("loss", ["l1", "mse", "smooth_l1"])
def test_lesion_weight_scales_the_loss_of_lesion_voxels_only(loss: str, generator: torch.Generator) -> None:
    from pet_dl.training.losses import dilate_mask

    pred, target, mask = _lesion_batch(generator)
    weight = 30.0
    plain = ReconModule(NETWORK, loss=loss)
    weighted = ReconModule(NETWORK, loss=loss, lesion_weight=weight, lesion_dilation=1)
    inside = dilate_mask(mask, 1, spatial_dims=2)
    # the loss is computed on images divided by the target mean, per scan: perturb by
    # a multiple of that mean so the change is the same number in every scan
    scale = target.flatten(1).mean(1).view(-1, 1, 1, 1)
    far = torch.zeros_like(inside)
    far[:, 0, 11] = True  # a corner, outside both dilated lesions
    assert not bool((far & inside).any())
    for region, factor in ((inside, 1.0 + weight), (far, 1.0)):
        bumped = pred + 0.5 * scale * region
        d_plain = float(plain.compute_loss(bumped, target, mask) - plain.compute_loss(pred, target, mask))
        d_weighted = float(
            weighted.compute_loss(bumped, target, mask) - weighted.compute_loss(pred, target, mask)
        )
        assert d_plain > 0
        assert d_weighted == pytest.approx(factor * d_plain, rel=1e-4)  # float32 loss


def test_lesion_loss_l1_matches_a_hand_count() -> None:
    """Error 1 everywhere (normalised units): mean weight = 1 + w * (lesion voxels / voxels)."""
    target = torch.ones(1, 6, 6, 1)
    mask = torch.zeros(1, 6, 6, 1, dtype=torch.int64)
    mask[0, 2, 2] = 1
    module = ReconModule(NETWORK, lesion_weight=4.0, lesion_dilation=1)
    loss = float(module.compute_loss(target + 1.0, target, mask))
    assert loss == pytest.approx(1.0 + 4.0 * 9 / 36, rel=1e-6)


def test_smooth_l1_is_quadratic_below_beta_and_linear_above() -> None:
    """Target mean 1 (so normalised = raw units); half the voxels off by 0.1, half by 2."""
    target = torch.ones(1, 4, 4, 1)
    pred = target.clone()
    pred[0, :2] += 0.1
    pred[0, 2:] -= 2.0
    beta = 0.5
    module = ReconModule(NETWORK, loss="smooth_l1", smooth_l1_beta=beta)
    expected = 0.5 * (0.1**2 / (2 * beta)) + 0.5 * (2.0 - beta / 2)
    assert float(module.compute_loss(pred, target)) == pytest.approx(expected, rel=1e-6)
    # far below beta it is MSE / (2 beta); far above, L1 less a constant
    small = target + 1e-2
    assert float(module.compute_loss(small, target)) == pytest.approx(1e-4 / (2 * beta), rel=1e-4)
    l1 = ReconModule(NETWORK, loss="l1")
    big = target + 5.0
    assert float(module.compute_loss(big, target)) == pytest.approx(float(l1.compute_loss(big, target)) - beta / 2)
    with pytest.raises(ValueError, match="smooth_l1_beta"):
        ReconModule(NETWORK, loss="smooth_l1", smooth_l1_beta=0.0)


def test_lesion_weight_needs_a_mask_and_a_valid_value() -> None:
    module = ReconModule(NETWORK, lesion_weight=2.0)
    with pytest.raises(ValueError, match="lesion_mask"):
        module.compute_loss(torch.ones(1, 4, 4, 1), torch.ones(1, 4, 4, 1))
    with pytest.raises(ValueError, match="lesion_weight"):
        ReconModule(NETWORK, lesion_weight=-1.0)
    with pytest.raises(ValueError, match="lesion_dilation"):
        ReconModule(NETWORK, lesion_dilation=-1)


def _three_lesions() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 8 x 8 scans of background 1: lesions 1 and 2 (2 x 2 voxels) in scan 0, lesion 1
    in scan 1, all at 4; returns ``(target, lesion_mask)``."""
    target = torch.ones(2, 8, 8, 1)
    mask = torch.zeros(2, 8, 8, 1, dtype=torch.int64)
    mask[0, 1:3, 1:3] = 1
    mask[0, 5:7, 5:7] = 2
    mask[1, 3:5, 3:5] = 1
    target[mask > 0] = 4.0
    return target, mask


def test_lesion_mean_loss_is_the_absolute_suvmean_bias_of_each_lesion() -> None:
    """Two lesions in scan 0 (one at half its uptake, one exact), one in scan 1 (+20 %):
    the term is the mean of |bias| over the three lesions; background errors do not count."""
    from pet_dl.metrics import lesion_bias
    from pet_dl.training.losses import lesion_mean_error

    target, mask = _three_lesions()
    pred = target.clone()
    pred[0][mask[0] == 1] = 2.0
    pred[1][mask[1] == 1] = torch.tensor([4.0, 5.6, 4.8, 4.8])  # mean 4.8: +20 %
    pred[:, 0, 7] = 9.0  # background error: ignored by this term
    pred.requires_grad_(True)
    value = lesion_mean_error(pred, target, mask)
    assert float(value.detach()) == pytest.approx((0.5 + 0.0 + 0.2) / 3, rel=1e-6)
    # the same number as the evaluation's SUVmean bias, lesion by lesion
    voxel = (1.0, 1.0, 1.0)
    biases = [b for i in range(2) for b in lesion_bias(pred[i].detach(), target[i], mask[i], voxel)]
    assert float(value.detach()) == pytest.approx(sum(abs(b.mean_bias) for b in biases) / 3, rel=1e-6)
    value.backward()
    assert float(pred.grad[0, 1, 1, 0]) < 0 and float(pred.grad[0, 0, 7, 0]) == 0.0  # raise lesion 1
    no_lesions = lesion_mean_error(pred, target, torch.zeros_like(mask))
    assert float(no_lesions) == 0.0 and no_lesions.requires_grad


def test_nrmse_loss_is_the_evaluation_nrmse_and_its_gradient_is_finite_at_zero(
    generator: torch.Generator,
) -> None:
    from pet_dl.metrics import nrmse
    from pet_dl.training.losses import nrmse_error

    target = torch.rand(3, 8, 8, 1, generator=generator) + 0.5
    pred = (target + 0.3 * torch.randn(3, 8, 8, 1, generator=generator)).requires_grad_(True)
    value = nrmse_error(pred, target)
    assert float(value.detach()) == pytest.approx(float(nrmse(pred.detach(), target).mean()), rel=1e-6)
    value.backward()
    # d/dp ||p - t|| / ||t|| = (p - t) / (||p - t|| ||t||), averaged over the batch of 3
    err = (pred.detach() - target).flatten(1)
    expected = err / (err.norm(dim=1, keepdim=True) * target.flatten(1).norm(dim=1, keepdim=True)) / 3
    assert torch.allclose(pred.grad.flatten(1), expected, rtol=1e-5, atol=1e-8)
    exact = target.clone().requires_grad_(True)
    zero = nrmse_error(exact, target)
    zero.backward()
    assert float(zero.detach()) == 0.0 and bool(torch.isfinite(exact.grad).all())
    with pytest.raises(ValueError, match="shape"):
        nrmse_error(pred, target[:2])


def test_nrmse_weight_adds_the_batch_nrmse_to_the_loss(generator: torch.Generator) -> None:
    """The term is scale-free: the module's per-scan normalisation does not change it."""
    from pet_dl.metrics import nrmse

    target = 1e4 * (torch.rand(2, 6, 6, 1, generator=generator) + 0.5)  # Bq/mL
    pred = target * (1.0 + 0.2 * torch.randn(2, 6, 6, 1, generator=generator))
    plain = ReconModule(NETWORK)
    both = ReconModule(NETWORK, nrmse_weight=3.0)
    assert float(both.compute_loss(pred, target)) == pytest.approx(
        float(plain.compute_loss(pred, target)) + 3.0 * float(nrmse(pred, target).mean()), rel=1e-5
    )
    with pytest.raises(ValueError, match="nrmse_weight"):
        ReconModule(NETWORK, nrmse_weight=-1.0)


def test_lesion_mean_weight_adds_the_term_to_the_loss() -> None:
    target = torch.ones(1, 6, 6, 1)
    mask = torch.zeros(1, 6, 6, 1, dtype=torch.int64)
    mask[0, 2:4, 2:4] = 1
    pred = target.clone()
    pred[mask > 0] = 0.5  # lesion at half: relative SUVmean bias 0.5
    plain = ReconModule(NETWORK)
    both = ReconModule(NETWORK, lesion_mean_weight=2.0)
    assert float(both.compute_loss(pred, target, mask)) == pytest.approx(
        float(plain.compute_loss(pred, target, mask)) + 2.0 * 0.5, rel=1e-6
    )
    with pytest.raises(ValueError, match="lesion_mask"):
        both.compute_loss(pred, target)
    with pytest.raises(ValueError, match="lesion_mean_weight"):
        ReconModule(NETWORK, lesion_mean_weight=-1.0)


def _blob_case() -> tuple[ImageGeometry, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A flat disc of activity 1 on a 40 x 40 grid of 2 mm, a copy with a Gaussian blob of
    peak 1.5 added at (-12, 0) mm, and a lesion label covering a disc at (+12, 0) mm."""
    grid = ImageGeometry.centered((40, 40, 1), (2.0, 2.0, 2.0))
    c = (torch.arange(40, dtype=torch.float32) - 19.5) * 2.0
    x, y = c[:, None, None], c[None, :, None]
    truth = ((x**2 + y**2) < 35.0**2).float()[None]
    blob = 1.5 * torch.exp(-((x + 12) ** 2 + y**2) / (2 * 3.0**2))[None]
    lesion = (((x - 12) ** 2 + y**2) < 5.0**2).long()[None]
    return grid, truth, truth + blob * truth, lesion


def test_hot_spot_loss_is_zero_on_the_truth_and_acts_on_an_invented_blob_only() -> None:
    """Against the truth blurred by a 4.5 mm PSF: the truth itself costs 0; a blob 2.5 x the
    local activity costs > 0 with its gradient only around the blob; the same blob inside
    the excluded lesion costs 0; a uniformly scaled image 1.2 x costs 0 (below 1.5 x)."""
    from pet_dl.forward_model import GaussianResolution
    from pet_dl.training.losses import hot_spot_error

    grid, truth, blobbed, lesion = _blob_case()
    reference = GaussianResolution(grid, 4.5)(truth)
    voxel = tuple(float(v) for v in grid.voxel_size_mm)
    assert float(hot_spot_error(truth, reference, None, voxel)) == 0.0
    assert float(hot_spot_error(1.2 * truth, reference, None, voxel)) == 0.0
    pred = blobbed.clone().requires_grad_(True)
    cost = hot_spot_error(pred, reference, None, voxel)
    cost.backward()
    assert float(cost.detach()) > 0
    c = (torch.arange(40, dtype=torch.float32) - 19.5) * 2.0
    dist = ((c[:, None] + 12) ** 2 + c[None, :] ** 2).sqrt()[None, :, :, None]
    assert float(pred.grad.abs()[dist > 12].max()) == 0.0  # blob radius ~ 6 mm + the 4 mm ball
    assert float(pred.grad.abs()[dist < 3].min()) > 0
    moved = truth + (blobbed - truth).roll(12, dims=1)  # the blob moved onto the lesion at +12 mm
    assert float(hot_spot_error(moved, reference, None, voxel)) > 0
    assert float(hot_spot_error(moved, reference, _dilated(lesion), voxel)) == 0.0
    with pytest.raises(ValueError, match="threshold"):
        hot_spot_error(truth, reference, None, voxel, threshold=0.0)


def _dilated(lesion: torch.Tensor) -> torch.Tensor:
    from pet_dl.metrics import dilate_mask

    return dilate_mask(lesion, 2, 2).long()


def test_hot_spot_weight_adds_the_term_against_the_psf_blurred_truth() -> None:
    """The module blurs the target with the batch geometry's PSF and leaves out the lesions
    dilated by 2 voxels, on target-mean-normalised images; it needs the mask and geometry."""
    from pet_dl.forward_model import GaussianResolution
    from pet_dl.metrics import dilate_mask
    from pet_dl.training.losses import hot_spot_error

    grid, truth, blobbed, lesion = _blob_case()
    target, pred = 5000.0 * truth, 5000.0 * blobbed  # Bq/mL
    geometry = BatchGeometry(None, grid, 4.5)
    plain = ReconModule(NETWORK)
    both = ReconModule(NETWORK, hot_spot_weight=10.0)
    scale = float(target.mean())
    term = hot_spot_error(pred / scale, GaussianResolution(grid, 4.5)(target / scale), dilate_mask(lesion, 2, 2),
                          tuple(float(v) for v in grid.voxel_size_mm))
    assert float(term) > 0
    assert float(both.compute_loss(pred, target, lesion, geometry)) == pytest.approx(
        float(plain.compute_loss(pred, target, lesion)) + 10.0 * float(term), rel=1e-5
    )
    with pytest.raises(ValueError, match="lesion_mask"):
        both.compute_loss(pred, target, None, geometry)
    with pytest.raises(ValueError, match="geometry"):
        both.compute_loss(pred, target, lesion)
    with pytest.raises(ValueError, match="hot_spot_weight"):
        ReconModule(NETWORK, hot_spot_weight=-1.0)
    with pytest.raises(ValueError, match="hot_spot_threshold"):
        ReconModule(NETWORK, hot_spot_weight=1.0, hot_spot_threshold=0.0)


def test_lesion_max_loss_is_the_absolute_suvmax_bias_and_acts_on_the_hottest_voxel() -> None:
    """Scan 0: a lesion whose hottest voxel is 30 % over the truth's maximum (noise left
    inside it) and an exact one; scan 1: a lesion whose maximum is 10 % under. The term is
    the mean |SUVmax bias| over the three lesions, as the evaluation reports it, and its
    gradient reaches each lesion's hottest voxel only."""
    from pet_dl.metrics import lesion_bias
    from pet_dl.training.losses import lesion_max_error

    target, mask = _three_lesions()
    target[1, 3, 3, 0] = 5.0  # a lesion whose truth is not flat: its maximum is 5
    pred = target.clone()
    pred[0, 1, 1, 0] = 5.2  # +30 % over 4 at one voxel
    pred[1][mask[1] == 1] = torch.tensor([4.5, 4.0, 4.0, 4.0])  # max 4.5 vs 5: -10 %
    pred[:, 0, 7] = 9.0  # background: ignored
    pred.requires_grad_(True)
    value = lesion_max_error(pred, target, mask)
    assert float(value.detach()) == pytest.approx((0.3 + 0.0 + 0.1) / 3, rel=1e-6)
    biases = [b for i in range(2) for b in lesion_bias(pred[i].detach(), target[i], mask[i], (1.0, 1.0, 1.0))]
    assert float(value.detach()) == pytest.approx(sum(abs(b.max_bias) for b in biases) / 3, rel=1e-6)
    value.backward()
    grad = pred.grad
    assert float(grad[0, 1, 1, 0]) > 0 and float(grad[1, 3, 3, 0]) < 0  # lower the peak, raise the low one
    nonzero = int((grad != 0).sum())
    assert nonzero <= 3 and float(grad[0, 0, 7, 0]) == 0.0 and float(grad[0, 2, 2, 0]) == 0.0
    no_lesions = lesion_max_error(pred, target, torch.zeros_like(mask))
    assert float(no_lesions) == 0.0 and no_lesions.requires_grad
    # in the module: adds weight x term; refuses a negative weight or a batch without a mask
    plain, both = ReconModule(NETWORK), ReconModule(NETWORK, lesion_max_weight=2.0)
    p = pred.detach()
    assert float(both.compute_loss(p, target, mask)) == pytest.approx(
        float(plain.compute_loss(p, target, mask)) + 2.0 * float(lesion_max_error(p, target, mask)), rel=1e-5
    )
    with pytest.raises(ValueError, match="lesion_mask"):
        both.compute_loss(p, target)
    with pytest.raises(ValueError, match="lesion_max_weight"):
        ReconModule(NETWORK, lesion_max_weight=-1.0)


def test_shipped_models_recorded_command_rebuilds_its_network(capsys: pytest.CaptureFixture) -> None:
    """The training command in the shipped model's metadata still runs through train.py (on
    top of configs/base.yaml) and resolves to the network and training data of that file;
    an export step after it (``--anchor FILE``, ``--final-em N``, ``--blend FILE``) adds what
    it records."""
    import shlex

    import yaml

    from pet_dl.io.checkpoint import read_checkpoint_header, shipped_checkpoint
    from pet_dl.training.cli import main

    root = Path(__file__).resolve().parents[1]
    config, metadata = read_checkpoint_header(shipped_checkpoint())
    argv = shlex.split(metadata["training_command"].split(";")[0])
    assert argv[:3] == ["python", "train.py", "fit"]
    args = [str(root / a) if a.endswith(".yaml") else a for a in argv[3:]]
    with pytest.raises(SystemExit) as exc:
        main(["fit", *args, "--print_config"])
    assert exc.value.code == 0, capsys.readouterr().err
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = dict(printed["model"]["network"])
    for step in metadata["training_command"].split(";")[1:]:
        words = shlex.split(step)
        assert words[:3] == ["python", "-m", "pet_dl.training.export"], step
        if "--anchor" in words:
            from pet_dl.training.export import _anchor_options

            expected["anchor"] = _anchor_options(str(root / words[words.index("--anchor") + 1]))
        if "--final-em" in words:
            expected["final_em_steps"] = int(words[words.index("--final-em") + 1])
        if "--blend" in words:
            from pet_dl.training.export import _blend_options

            expected["osem_blend"] = _blend_options(str(root / words[words.index("--blend") + 1]))
    assert expected == config
    folders = printed["data"]["data_dir"]
    folders = folders if isinstance(folders, list) else [folders]
    assert "+".join(Path(f).name for f in folders) == metadata["dataset"]


def test_the_wandb_logger_runs_offline_without_a_login(tmp_path: Path) -> None:
    """A fresh machine with no ``wandb login`` and no WANDB_MODE: the run is logged offline
    into its folder instead of stopping to ask for an API key. train.py's run failed so:
    wandb's own settings, which its login check reads, said "online" although the logger
    was made with ``mode="offline"``."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["HOME"] = str(tmp_path)  # no ~/.netrc, no wandb settings
    code = (
        "from pet_dl.training.loggers import PetWandbLogger\n"
        f"logger = PetWandbLogger(save_dir={str(tmp_path / 'run')!r})\n"
        "import wandb\n"
        "assert wandb.setup().settings.mode == 'offline', wandb.setup().settings.mode\n"
        "logger.log_metrics({'train/loss': 1.0}, step=0)\n"
        "logger.experiment.finish()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


class GridRecordingModule(_RankRecorder):
    """Records each training batch's grid and phantom seeds."""

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        scans = [[int(s), round(float(d), 4)] for s, d in zip(batch["seed"], batch["dose_fraction"])]
        self.seen.append([batch["geometry"].image.shape[0], scans])
        return super().training_step(batch, batch_idx)


def test_two_process_ddp_on_two_grids_steps_alike_on_disjoint_data(tmp_path: Path) -> None:
    # folders on two grids under DDP: Lightning rebuilds the grid batch sampler around its
    # DistributedSampler; both ranks step as often (or DDP would hang), each batch holds one
    # grid, and the ranks' scans do not overlap
    from pet_dl.datasets import generate_dataset
    from pet_dl.recipes import load_recipe
    from pet_dl.training.datamodule import PETDataModule

    own = load_recipe(Path(__file__).resolve().parents[1] / "data" / "tiny.yaml")
    own["splits"] = {"train": {"seeds": [0, 4]}, "val": {"seeds": [100000, 100001]}}
    wide = dict(own, name="tiny_wide", image={"shape": [40, 40, 1], "voxel_size_mm": [7.0, 7.0, 7.0]},
                sinogram={"num_radial": 128, "view_mashing": 6},
                splits={"train": {"seeds": [10, 13]}, "val": {"seeds": [100010, 100011]}})
    for name, recipe in (("own", own), ("wide", wide)):
        generate_dataset(recipe, tmp_path / name, splits=["train", "val"])
    dm = PETDataModule(data_dir=[str(tmp_path / "own"), str(tmp_path / "wide")], batch_size=2,
                       other_grid_batch_size=1)
    network = dict(NETWORK, num_iterations=1, init_iterations=2, init_subsets=4)
    module = GridRecordingModule(network, record=str(tmp_path))
    trainer = _trainer(tmp_path, devices=2, strategy="ddp_spawn", max_epochs=1, use_distributed_sampler=True)
    trainer.fit(module, dm)
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(2)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    for steps in ranks:
        for grid, scans in steps:
            assert grid in (32, 40) and len(scans) == (2 if grid == 32 else 1)
            assert all((seed < 10) == (grid == 32) for seed, _ in scans)
    assert {32, 40} == {grid for steps in ranks for grid, _ in steps}
    # (seed, dose) is one scan; the DistributedSampler pads 21 scans to 22 with one repeat
    seen = [{tuple(scan) for _, scans in steps for scan in scans} for steps in ranks]
    assert len(seen[0] & seen[1]) <= 1
