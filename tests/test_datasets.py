"""Datasets: recipes, disjoint splits, HDF5 shards vs on-the-fly items, thinning statistics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pet_dl.datasets import OnTheFlyDataset, PairedScanDataset, generate_dataset, simulate_phantom
from pet_dl.recipes import load_recipe, phantom_of_seed, seeds_from_json, seeds_to_json, split_seeds

ROOT = Path(__file__).resolve().parents[1]


def _tiny(**changes: object) -> dict:
    recipe = load_recipe(ROOT / "data" / "tiny.yaml")
    recipe["splits"] = {"train": {"seeds": [0, 2]}, "test": {"seeds": [200000, 200001]}}
    recipe.update(changes)
    return recipe


def test_committed_recipes_load_with_disjoint_splits() -> None:
    paths = sorted((ROOT / "data").glob("*.yaml"))
    assert {"tiny", "brain2d", "brain3d", "body3d"} <= {p.stem for p in paths}
    for path in paths:
        recipe = load_recipe(path)
        assert recipe["name"] == path.stem
        seeds = {s: set(split_seeds(recipe, s)) for s in recipe["splits"]}
        assert seeds["test"] and seeds["train"]
        assert not seeds["test"] & seeds["train"]
        assert not seeds.get("val", set()) & (seeds["train"] | seeds["test"])


def test_overlapping_splits_and_unknown_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        load_recipe(_tiny(splits={"train": {"seeds": [0, 10]}, "test": {"seeds": [5, 12]}}))
    with pytest.raises(ValueError, match="phantom_typo"):
        load_recipe({**_tiny(), "phantom_typo": 1})
    with pytest.raises(ValueError, match="reduction_factors"):
        load_recipe(_tiny(reduction_factors=[0.5]))


def test_shards_round_trip_the_on_the_fly_items(tmp_path: Path) -> None:
    recipe = _tiny()
    paths = generate_dataset(recipe, tmp_path)
    assert {p.parent.name for p in paths} == {"train", "test"}
    train = PairedScanDataset(tmp_path, "train")
    test = PairedScanDataset(tmp_path, "test")
    factors = recipe["reduction_factors"]
    assert len(train) == 2 * len(factors) and len(test) == len(factors)
    # test phantoms never appear in training
    assert not {int(train[i]["seed"]) for i in range(len(train))} & {
        int(test[i]["seed"]) for i in range(len(test))
    }
    fly = OnTheFlyDataset(recipe, "train")
    assert len(fly) == len(train)
    for i in (0, len(train) - 1):
        a, b = train[i], fly[i]
        assert set(a) == set(b)
        for key in a:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key
    item = train[0]
    nx, ny, nz = recipe["image"]["shape"]
    assert item["target"].shape == item["initial"].shape == item["mu"].shape == (nx, ny, nz)
    assert item["lesion_mask"].dtype == torch.int64
    assert item["prompts"].shape == item["multiplicative"].shape == item["additive"].shape
    assert float(item["dose_fraction"]) == pytest.approx(1.0 / factors[0])
    only = PairedScanDataset(tmp_path, "train", reduction_factors=[factors[-1]])
    assert len(only) == 2
    assert all(float(only[i]["dose_fraction"]) == pytest.approx(1 / factors[-1]) for i in range(2))


def test_max_phantoms_writes_the_first_seeds_of_a_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a recipe's validation range grows with every model round; a training run's
    # validation loss needs only its first phantoms
    recipe = _tiny(splits={"train": {"seeds": [0, 3]}, "val": {"seeds": [100000, 100003]},
                           "test": {"seeds": [200000, 200001]}})
    generate_dataset(recipe, tmp_path, splits=["train", "val"], max_phantoms={"val": 1})
    factors = recipe["reduction_factors"]
    train, val = PairedScanDataset(tmp_path, "train"), PairedScanDataset(tmp_path, "val")
    assert len(train) == 3 * len(factors)  # other splits untouched
    assert len(val) == len(factors)
    assert {int(val[i]["seed"]) for i in range(len(val))} == {100000}
    fly = OnTheFlyDataset(recipe, "val")[0]
    assert torch.equal(val[0]["target"], fly["target"]) and torch.equal(val[0]["prompts"], fly["prompts"])
    for bad, word in (({"tune": 1}, "tune"), ({"val": 0}, ">= 1")):
        with pytest.raises(ValueError, match=word):
            generate_dataset(recipe, tmp_path / "bad", max_phantoms=bad)
    assert not (tmp_path / "bad").exists()  # refused before anything is written

    # the command line: python -m pet_dl dataset ... --max-phantoms val=1
    import yaml

    from pet_dl.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "cli"
    assert main(["dataset", "--recipe", str(path), "--out", str(out), "--splits", "val",
                 "--max-phantoms", "val=2"]) == 0
    assert len(PairedScanDataset(out, "val")) == 2 * len(factors)
    capsys.readouterr()
    for item, word in (("val", "SPLIT=N"), ("val=x", "SPLIT=N"), ("tune=1", "tune")):
        code = main(["dataset", "--recipe", str(path), "--out", str(tmp_path / "cli_bad"),
                     "--max-phantoms", item])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and word in err[0], err
    assert not (tmp_path / "cli_bad").exists()


def test_two_dataset_folders_read_as_one(tmp_path: Path) -> None:
    # two phantom families on one geometry (here: other seeds and more lesions) train
    # together; their train seeds are the union; another image grid is refused
    a = _tiny()
    b = _tiny(name="tiny_more_lesions", splits={"train": {"seeds": [10, 12]}}, lesions={"count": [2, 2]})
    generate_dataset(a, tmp_path / "a", splits=["train"])
    generate_dataset(b, tmp_path / "b", splits=["train"])
    one, two = PairedScanDataset(tmp_path / "a", "train"), PairedScanDataset(tmp_path / "b", "train")
    both = PairedScanDataset([tmp_path / "a", tmp_path / "b"], "train")
    assert len(both) == len(one) + len(two)
    for i in (0, len(one) - 1):
        assert torch.equal(both[i]["prompts"], one[i]["prompts"])
    assert torch.equal(both[len(one)]["prompts"], two[0]["prompts"])
    assert {int(both[i]["seed"]) for i in range(len(both))} == {0, 1, 10, 11}
    assert both.recipes[1]["lesions"]["count"] == [2, 2] and both.image == one.image
    from pet_dl.training.export import _hparams_train_seeds

    assert _hparams_train_seeds({"data_dir": [str(tmp_path / "a"), str(tmp_path / "b")]}) == [0, 1, 10, 11]
    assert _hparams_train_seeds({"data_dir": str(tmp_path / "a")}) == {"start": 0, "stop": 2}
    # a model trained on both says so in its metadata (it named the first alone before)
    from pet_dl.training.datamodule import PETDataModule

    folders = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert PETDataModule(data_dir=folders).metadata()["dataset"] == f"{a['name']}+tiny_more_lesions"
    assert PETDataModule(data_dir=folders[0]).metadata()["dataset"] == a["name"]
    other = _tiny(image={"shape": [32, 32, 1], "voxel_size_mm": [8.0, 8.0, 8.0]})
    generate_dataset(other, tmp_path / "c", splits=["train"])
    with pytest.raises(ValueError, match="'image'.*share"):
        PairedScanDataset([tmp_path / "a", tmp_path / "c"], "train")


def test_low_dose_counts_scale_with_the_fraction() -> None:
    """Thinnings of one acquisition: counts / fraction agree within Poisson error."""
    ds = OnTheFlyDataset(_tiny(reduction_factors=[2, 4, 10]), "train", num_phantoms=1)
    totals = torch.tensor([float(ds[i]["prompts"].sum()) for i in range(3)])
    fractions = torch.tensor([float(ds[i]["dose_fraction"]) for i in range(3)])
    full = totals / fractions
    # relative std of a total of N counts thinned to fN is about 1 / sqrt(fN)
    tol = 5.0 / torch.sqrt(totals.min())
    assert float((full / full.mean() - 1).abs().max()) < float(tol)
    calib = torch.tensor([float(ds[i]["calibration"]) for i in range(3)])
    assert torch.allclose(calib / fractions, (calib / fractions)[0].expand(3), rtol=1e-5)


def test_missing_shards_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no shards"):
        PairedScanDataset(tmp_path, "train")


def test_phantom_of_seed_is_the_phantom_the_data_hold() -> None:
    recipe = _tiny(lesions={"count": [1, 2], "diameter_range_mm": [10.0, 20.0]})
    arrays, _ = simulate_phantom(recipe, 1)
    phantom = phantom_of_seed(recipe, 1)
    assert torch.equal(phantom.activity.float(), arrays["target"])
    assert torch.equal(phantom.labels.long(), arrays["lesion_mask"])
    assert torch.equal(phantom_of_seed(recipe, 1).activity, phantom.activity)  # deterministic
    assert not torch.equal(phantom_of_seed(recipe, 2).activity, phantom.activity)
    assert 1 <= len(phantom.lesions) <= 2
    assert {int(les.label) for les in phantom.lesions} == {int(v) for v in phantom.labels.unique() if v > 0}


def test_seed_records_round_trip_and_refuse_bad_values() -> None:
    recipe = _tiny()
    record = seeds_to_json(split_seeds(recipe, "test"))
    assert record == {"start": 200000, "stop": 200001}
    assert seeds_from_json(record) == split_seeds(recipe, "test")
    assert seeds_to_json([5, 2, 5]) == [2, 5] and seeds_from_json([2, 5]) == [2, 5]
    assert seeds_to_json(range(0, 10, 2)) == [0, 2, 4, 6, 8]
    for bad in ({"start": 5}, {"start": 3, "stop": 1}, [1, "2"], [True], "0-4", 7):
        with pytest.raises(ValueError, match="phantom seeds must be"):
            seeds_from_json(bad)


def test_recipe_files_that_are_not_mappings_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="recipe .*missing.yaml does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- scanner: mmr\n")
    with pytest.raises(ValueError, match="is not a YAML mapping"):
        load_recipe(listed)
    repeated = tmp_path / "repeated.yaml"
    repeated.write_text("name: a\nscanner: mmr\nsimulation: {psf_fwhm_mm: 4.5, psf_fwhm_mm: 2.0}\n")
    with pytest.raises(ValueError, match=r"repeated.yaml, line 3: key 'psf_fwhm_mm' given twice"):
        load_recipe(repeated)
    broken = tmp_path / "broken.yaml"
    broken.write_text("scanner: [mmr\n")
    with pytest.raises(ValueError, match=r"broken.yaml, line 2: expected ','"):
        load_recipe(broken)


def test_recipe_texture_changes_only_the_activity_of_the_same_phantom() -> None:
    """A recipe with ``texture`` gives the same anatomy, mu and lesions as without it, and
    the textured activity differs from the plain one by a factor within the gain range."""
    from pet_dl.phantoms.texture import GAIN_RANGE

    plain = load_recipe("data/torso_window2d.yaml")
    textured = load_recipe("data/torso_window2d_texture.yaml")
    for seed in (0, 7):
        a, b = phantom_of_seed(plain, seed), phantom_of_seed(textured, seed)
        assert torch.equal(a.mu, b.mu) and torch.equal(a.labels, b.labels)
        assert [(les.centre_mm, les.diameter_mm) for les in a.lesions] == [
            (les.centre_mm, les.diameter_mm) for les in b.lesions
        ]
        body = (a.activity > 0) & (a.labels == 0)
        ratio = b.activity[body] / a.activity[body]
        assert float(ratio.min()) >= GAIN_RANGE[0] - 1e-5 and float(ratio.max()) <= GAIN_RANGE[1] + 1e-5
        assert float(ratio.std()) == pytest.approx(b.extra["texture_amplitude"], rel=0.35, abs=0.01)
    bad = dict(plain, texture={"amplitude": [0.0, 0.3]})
    with pytest.raises(ValueError, match="texture must be"):
        load_recipe(bad)
    with pytest.raises(ValueError, match="amplitude must lie"):
        load_recipe(dict(plain, texture={"amplitude": [0.5, 0.3], "correlation_mm": [1.0, 2.0]}))


def test_recipe_reconstructed_gives_a_pet_image_of_the_same_anatomy() -> None:
    """``reconstructed:`` makes the activity a reconstruction of the recipe's phantom (a
    PET-like truth, :func:`pet_dl.recipes.reconstructed_activity`): the same body, its
    activity conserved, its texture the scan's noise; lesions placed in the body after it."""
    plain = load_recipe("data/torso_window2d.yaml")
    pet = load_recipe("data/torso_window2d_pet.yaml")
    assert pet["reconstructed"] == {"postfilter_mm": 0.0, "dose": [0.003, 0.3]}
    for seed in (0, 7):
        a, b = phantom_of_seed(plain, seed), phantom_of_seed(pet, seed)
        assert b.name == "reconstructed_torso_window" and {"outside", "body"} <= set(b.tissues)
        # the anatomy's activity integral (lesions of each drawn from the same stream)
        assert float(b.activity.sum()) == pytest.approx(float(a.activity.sum()), rel=0.15)
        body = b.tissue == b.tissues["body"]
        for les in b.lesions:  # lesions go into the body
            i, j = (round((les.centre_mm[k] - b.image.origin_mm[k]) / b.image.voxel_size_mm[k]) for k in (0, 1))
            assert bool(body[i, j, 0])
        assert torch.equal(phantom_of_seed(pet, seed).activity, b.activity)  # seeded
    for bad in ({"dose": [0.5, 0.1]}, {"postfilter_mm": -1.0}, {"filter": 2.0}):
        with pytest.raises(ValueError, match="reconstructed"):
            load_recipe(dict(pet, reconstructed=bad))


def test_recipe_body_mean_scales_the_activity_only() -> None:
    """``body_mean_bqml: [lo, hi]`` scales each phantom's activity to a mean over its body
    drawn in that range (seeded per phantom): the same anatomy, mu and lesions, the ratio
    of any two voxels kept; a fixed value gives exactly that mean; bad ranges are refused."""
    from pet_dl.recipes import scaled_to_body_mean

    plain = load_recipe("data/torso_window2d.yaml")
    scaled = load_recipe(dict(plain, body_mean_bqml=[5000.0, 10000.0]))
    means = []
    for seed in (0, 7, 11):
        a, b = phantom_of_seed(plain, seed), phantom_of_seed(scaled, seed)
        assert torch.equal(a.mu, b.mu) and torch.equal(a.labels, b.labels)
        body = b.tissue > 0
        mean = float(b.activity[body].mean())
        assert 5000.0 * (1 - 1e-5) <= mean <= 10000.0 * (1 + 1e-5)
        factor = mean / float(a.activity[body].mean())
        assert torch.allclose(b.activity, a.activity * factor, rtol=1e-5, atol=1e-3)
        assert torch.equal(phantom_of_seed(scaled, seed).activity, b.activity)  # seeded
        means.append(mean)
    assert len({round(m) for m in means}) == 3  # drawn per phantom
    fixed = phantom_of_seed(load_recipe(dict(plain, body_mean_bqml=[7000, 7000])), 3)
    assert float(fixed.activity[fixed.tissue > 0].mean()) == pytest.approx(7000.0, rel=1e-5)
    for bad in ([0, 7000], [8000, 7000], [7000], "7000"):
        with pytest.raises(ValueError, match="body_mean_bqml"):
            load_recipe(dict(plain, body_mean_bqml=bad))
    empty = phantom_of_seed(plain, 0).copy()
    empty.activity = torch.zeros_like(empty.activity)
    with pytest.raises(ValueError, match="no activity"):
        scaled_to_body_mean(empty, 7000.0)


def test_recipe_uptake_multiplies_the_named_tissues_only() -> None:
    """``uptake: {tissue: factor}`` (another tracer on the same anatomy, the v36 FLT windows)
    multiplies those tissues' activity before the lesions: outside the lesions, marrow is
    exactly 6 times the plain phantom's and an unnamed tissue is unchanged; the mu-map and the
    lesions' places are the same; a tissue the phantom lacks or a bad factor is refused."""
    from pet_dl.recipes import with_uptake

    plain = load_recipe("data/torso_window2d.yaml")
    flt = load_recipe(dict(plain, uptake={"marrow": 6.0, "liver": 2.2}))
    for seed in (4, 6):  # windows with marrow, liver and lung
        a, b = phantom_of_seed(plain, seed), phantom_of_seed(flt, seed)
        assert torch.equal(a.mu, b.mu) and torch.equal(a.labels, b.labels)
        free = a.labels == 0
        marrow = (a.tissue == a.tissues["marrow"]) & free
        liver = (a.tissue == a.tissues["liver"]) & free
        lung = (a.tissue == a.tissues["lung"]) & free
        assert bool(marrow.any()) and bool(liver.any()) and bool(lung.any())
        assert torch.allclose(b.activity[marrow], 6.0 * a.activity[marrow], rtol=1e-6)
        assert torch.allclose(b.activity[liver], 2.2 * a.activity[liver], rtol=1e-6)
        assert torch.equal(b.activity[lung], a.activity[lung])
    for bad in ({"marrow": 0}, {"marrow": "6"}, {}, [6.0]):
        with pytest.raises(ValueError, match="uptake"):
            load_recipe(dict(plain, uptake=bad))
    with pytest.raises(ValueError, match="no tissue"):
        with_uptake(phantom_of_seed(plain, 0), {"grey_matter": 3.0})


def test_folders_on_two_grids_train_in_batches_of_one_grid(tmp_path: Path) -> None:
    # whole bodies on a wider grid beside the model's own: read as one dataset whose
    # batches each hold one grid (with its own batch size), every item once per epoch;
    # the first folder's grid is the model's; a folder that differs in more than the grid
    # (here the PSF) is refused
    import lightning.pytorch as pl

    from pet_dl.datasets import GridGroups, group_by_grid, open_paired_scans
    from pet_dl.training import ReconModule
    from pet_dl.training.datamodule import PETDataModule

    own = _tiny(splits={"train": {"seeds": [0, 2]}, "val": {"seeds": [100000, 100001]}})
    wide = _tiny(name="tiny_wide", image={"shape": [40, 40, 1], "voxel_size_mm": [7.0, 7.0, 7.0]},
                 sinogram={"num_radial": 128, "view_mashing": 6}, splits={"train": {"seeds": [10, 12]},
                                                                        "val": {"seeds": [100010, 100011]}})
    for name, recipe in (("own", own), ("wide", wide)):
        generate_dataset(recipe, tmp_path / name, splits=["train", "val"])
    folders = [str(tmp_path / "own"), str(tmp_path / "wide")]
    assert group_by_grid(folders, "train") == [[folders[0]], [folders[1]]]
    both = open_paired_scans(folders, "train")
    assert isinstance(both, GridGroups) and both.group_of == [0] * 6 + [1] * 6
    assert both.image.shape == (32, 32, 1)  # the model's grid: the first folder's
    assert isinstance(open_paired_scans(folders[:1], "train"), PairedScanDataset)
    from pet_dl.training.count_reference import dataset_densities

    per_folder = [dataset_densities(PairedScanDataset(folder, "train"))[0] for folder in folders]
    assert torch.equal(dataset_densities(both)[0], torch.cat(per_folder))  # each on its own grid
    blurred = _tiny(name="tiny_psf", simulation={**own["simulation"], "psf_fwhm_mm": 4.0})
    generate_dataset(blurred, tmp_path / "psf", splits=["train"])
    with pytest.raises(ValueError, match="psf_fwhm_mm"):
        group_by_grid([folders[0], str(tmp_path / "psf")], "train")

    dm = PETDataModule(data_dir=folders, batch_size=2, other_grid_batch_size=1)
    dm.setup()
    seen, sizes = [], set()
    for batch in dm.train_dataloader():
        grid = batch["geometry"].image.shape
        assert batch["initial"].shape[1:] == grid and batch["target"].shape[1:] == grid
        assert batch["prompts"].shape[-1] == batch["geometry"].sinogram.num_radial
        sizes.add((grid[0], batch["prompts"].shape[0]))
        seen += [int(s) for s in batch["seed"]]
    assert sizes == {(32, 2), (40, 1)}
    assert sorted(seen) == sorted([0] * 3 + [1] * 3 + [10] * 3 + [11] * 3)

    class Recording(ReconModule):
        grids: set = set()

        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
            Recording.grids.add(batch["geometry"].image.shape[0])
            return super().training_step(batch, batch_idx)

    network = {"name": "unrolled_em", "spatial_dims": 2, "num_iterations": 1, "channels": [4, 8],
               "strides": [2], "init_iterations": 2, "init_subsets": 4}
    pl.seed_everything(0, verbose=False)
    module = Recording(network)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, max_steps=9,
                         limit_val_batches=2, default_root_dir=str(tmp_path))
    trainer.fit(module, dm)
    assert Recording.grids == {32, 40} and trainer.global_step == 9
    assert module.geometry_metadata["image"]["shape"] == [32, 32, 1]


def test_grid_batches_under_ddp_are_as_many_on_every_rank() -> None:
    # each rank gets its share of the items (a DistributedSampler, as Lightning injects
    # it); its share of each grid differs, yet every rank must step as often: the count
    # is fixed, every batch holds one grid, and the ranks' items do not overlap
    from torch.utils.data import DistributedSampler

    from pet_dl.training.batching import GridBatchSampler

    group_of = [0] * 37 + [1] * 11 + [2] * 5

    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(group_of)

    for epoch in range(3):
        per_rank = []
        for rank in range(2):
            share = DistributedSampler(Items(), num_replicas=2, rank=rank, shuffle=True, seed=1)
            share.set_epoch(epoch)
            batches = list(GridBatchSampler(share, 4, True, group_of, [4, 2, 1]))
            assert len(batches) == len(GridBatchSampler(share, 4, True, group_of, [4, 2, 1])) > 0
            for batch in batches:
                assert len({group_of[i] for i in batch}) == 1
                assert len(batch) == [4, 2, 1][group_of[batch[0]]]
            per_rank.append(batches)
        assert len(per_rank[0]) == len(per_rank[1])
        items = [{i for batch in batches for i in batch} for batches in per_rank]
        assert not items[0] & items[1]
    # one process: every item once, in full batches and the part-filled ones at the end
    sequential = list(GridBatchSampler(range(len(group_of)), 4, False, group_of, [4, 2, 1]))
    assert sorted(i for batch in sequential for i in batch) == list(range(len(group_of)))
    assert len(sequential) == 10 + 6 + 5
