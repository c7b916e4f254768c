"""Subset sensitivities: one pass, summed into the full model's, cached on disk by geometry,
normalisation and attenuation."""

from __future__ import annotations

import gc
import logging
import tempfile
import weakref
from pathlib import Path

import pytest
import torch

from pet_dl.forward_model import PETForwardModel, SinogramProjector
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.recon import OrderedSubsets, em, osem, sensitivity, uniform_initial_image
from pet_dl.recon.em import subset_models_and_sensitivities
from pet_dl.recon.sensitivity import SubsetSensitivityFiles, sensitivity_cache_key


def _model(mult_seed: int) -> tuple[PETForwardModel, torch.Tensor]:
    sino = SinogramGeometry(get_scanner("mmr").with_rings(3), num_radial=64, view_mashing=4)
    image = ImageGeometry.centered((32, 32, 3), (8.0, 8.0, 4.0))
    g = torch.Generator().manual_seed(mult_seed)
    mult = 0.5 + torch.rand(sino.shape, generator=g)
    model = PETForwardModel(SinogramProjector(sino, image), mult, None, calibration=0.5)
    y = torch.poisson(model(torch.full(image.shape, 10.0)), generator=torch.Generator().manual_seed(0))
    return model, y


def _count_backprojections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = SinogramProjector._adjoint

    def counted(self: SinogramProjector, y: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return original(self, y)

    monkeypatch.setattr(SinogramProjector, "_adjoint", counted)
    return calls


def test_one_pass_and_the_full_sensitivity_is_their_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = _model(1)
    calls = _count_backprojections(monkeypatch)
    models, sens = subset_models_and_sensitivities(model, 6)
    assert calls[0] == 6  # one backprojection per subset, each of its own bins
    full = model.sensitivity()  # set from the subsets: no further backprojection
    assert calls[0] == 6
    direct = model.adjoint(torch.ones(model.out_shape))
    assert torch.allclose(full, direct, rtol=1e-5, atol=1e-6 * float(direct.max()))
    for m, s in zip(models, sens):
        assert torch.allclose(s, m.adjoint(torch.ones(m.out_shape)), rtol=1e-6, atol=0)


def test_second_run_reads_the_cache_and_changed_attenuation_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, y = _model(1)
    first = osem(model, y, 2, 6, sensitivity_cache=tmp_path)
    folders = sorted(tmp_path.glob("sens-*"))
    assert len(folders) == 1
    assert len(list(folders[0].glob("subset-*.pt"))) == 6 and (folders[0] / "total.pt").exists()
    calls = _count_backprojections(monkeypatch)
    again, y2 = _model(1)  # a new model of the same scan, as a later run builds it
    second = osem(again, y2, 2, 6, sensitivity_cache=tmp_path)
    assert calls[0] == 2 * 6  # the OSEM updates only; no sensitivity backprojection
    assert torch.equal(first, second)
    # another attenuation (multiplicative term): another key, computed and stored
    other, y3 = _model(2)
    assert sensitivity_cache_key(other, 6, torch.float32) != sensitivity_cache_key(again, 6, torch.float32)
    calls[0] = 0
    osem(other, y3, 1, 6, sensitivity_cache=tmp_path)
    assert calls[0] == 6 + 6
    assert len(sorted(tmp_path.glob("sens-*"))) == 2
    # a different number of subsets is a different key too; a corrupt file is recomputed
    assert sensitivity_cache_key(again, 3, torch.float32) != sensitivity_cache_key(again, 6, torch.float32)
    (folders[0] / "subset-003.pt").write_bytes(b"not a torch file")
    calls[0] = 0
    third = osem(_model(1)[0], y, 2, 6, sensitivity_cache=tmp_path)
    assert calls[0] == 6 + 2 * 6
    assert torch.equal(third, first)


def _wide_3d_model() -> tuple[PETForwardModel, torch.Tensor]:
    """A small 3D scan (4 rings, span 1) on a grid wider than the scanner's field of view:
    its corners are seen by some views only, so the subsets have keep masks."""
    sino = SinogramGeometry(get_scanner("mmr").with_rings(4), num_radial=24, view_mashing=4)
    image = ImageGeometry.centered((40, 40, 4), (8.0, 8.0, 4.0))
    mult = 0.5 + torch.rand(sino.shape, generator=torch.Generator().manual_seed(3))
    model = PETForwardModel(SinogramProjector(sino, image), mult, torch.full(sino.shape, 0.2), calibration=0.5)
    y = torch.poisson(model(torch.full(image.shape, 10.0)), generator=torch.Generator().manual_seed(0))
    return model, y


def test_sensitivities_on_disk_give_the_same_osem_with_one_image_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subsets = 6
    memory_model, y = _wide_3d_model()
    in_memory = OrderedSubsets.of_scan(memory_model, y, subsets)
    assert isinstance(in_memory.sensitivities, list)
    assert in_memory.keep is not None and any(k is not None for k in in_memory.keep)  # masks exercised
    expected = osem(memory_model, y, 2, subsets)

    # the lazy container holds no image: every index reads its file
    live: list[weakref.ref[torch.Tensor]] = []
    most_alive = [0]
    original = SubsetSensitivityFiles.__getitem__

    def tracked(self: SubsetSensitivityFiles, k: int) -> torch.Tensor:
        most_alive[0] = max(most_alive[0], sum(r() is not None for r in live))
        s = original(self, k)
        live.append(weakref.ref(s))
        return s

    monkeypatch.setattr(SubsetSensitivityFiles, "__getitem__", tracked)
    for run in ("compute and write", "read the cache"):
        model, y_run = _wide_3d_model()  # a fresh model, as a later run builds it
        calls = _count_backprojections(monkeypatch)
        lazy = OrderedSubsets.of_scan(model, y_run, subsets, cache_dir=tmp_path, lazy=True)
        assert calls[0] == (subsets if run == "compute and write" else 0)
        assert isinstance(lazy.sensitivities, SubsetSensitivityFiles) and lazy.keep is None
        assert not any(isinstance(v, torch.Tensor) for v in vars(lazy.sensitivities).values())
        assert all(m._sensitivity is None for m in lazy.models)  # the subset models keep none either
        assert torch.equal(lazy.total_sensitivity, in_memory.total_sensitivity)
        assert torch.equal(model.sensitivity(), memory_model.sensitivity())
        for k in range(subsets):
            assert torch.equal(lazy.sensitivities[k], in_memory.sensitivities[k])
        x0 = uniform_initial_image(model, y_run, lazy.total_sensitivity)
        live.clear()
        most_alive[0] = 0
        x = x0
        for _ in range(2):
            x = lazy.osem_pass(x)
        assert torch.equal(x, expected)  # bit for bit the in-memory OSEM
        assert len(live) == 2 * subsets  # one read per sub-iteration
        assert most_alive[0] == 0  # each image was freed before the next was read

    # osem() picks the disk for large images when given a cache (threshold lowered here)
    monkeypatch.setattr(em, "LAZY_SENSITIVITY_BYTES", 0)
    model, y_run = _wide_3d_model()
    assert torch.equal(osem(model, y_run, 2, subsets, sensitivity_cache=tmp_path), expected)
    assert isinstance(OrderedSubsets.of_scan(model, y_run, subsets, cache_dir=tmp_path).sensitivities,
                      SubsetSensitivityFiles)
    assert isinstance(OrderedSubsets.of_scan(model, y_run, subsets, lazy=False).sensitivities, list)


def test_without_a_cache_large_sensitivities_go_to_a_temporary_folder_removed_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    subsets = 6
    model, y = _wide_3d_model()
    expected = osem(model, y, 2, subsets)  # default threshold: in memory, no folder
    with OrderedSubsets.of_scan(model, y, subsets) as small:
        assert isinstance(small.sensitivities, list)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the system temp dir, here one we watch
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(em, "LAZY_SENSITIVITY_BYTES", 0)

    # osem without a cache folder: the images in a temporary folder while it runs, then gone
    # (removed by osem itself: the files object is kept alive here, so not by garbage collection)
    made: list[SubsetSensitivityFiles] = []
    original = em.subset_sensitivity_files

    def recorded(*args: object, **kwargs: object) -> tuple[SubsetSensitivityFiles, torch.Tensor] | None:
        out = original(*args, **kwargs)  # type: ignore[arg-type]
        if out is not None:
            made.append(out[0])
        return out

    monkeypatch.setattr(em, "subset_sensitivity_files", recorded)
    seen: list[tuple[Path, int]] = []
    model, y = _wide_3d_model()
    caplog.set_level(logging.WARNING, logger="pet_dl.recon.sensitivity")
    x = osem(model, y, 2, subsets, callback=lambda k, _: seen.extend(
        (d, len(list(d.rglob("subset-*.pt")))) for d in tmp_path.iterdir()))
    assert torch.equal(x, expected)  # bit for bit the in-memory OSEM
    assert len(seen) == 2 and seen[0][0] == seen[1][0] and seen[0][0].name.startswith("pet_dl-sens-")
    assert seen[0][1] == subsets  # one file per subset, there during the iterations
    assert not seen[0][0].exists() and not list(tmp_path.iterdir())  # removed afterwards
    assert len(made) == 1 and made[0].closed
    logged = [r.getMessage() for r in caplog.records if "temporary" in r.getMessage()]
    assert len(logged) == 1 and str(seen[0][0]) in logged[0] and "MiB" in logged[0]

    # removed when the reconstruction fails, too
    def stop(k: int, _: torch.Tensor) -> None:
        assert len(list(tmp_path.iterdir())) == 1
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        osem(_wide_3d_model()[0], y, 2, subsets, callback=stop)
    assert not list(tmp_path.iterdir()) and len(made) == 2 and made[1].closed
    monkeypatch.setattr(em, "subset_sensitivity_files", original)  # no more references kept
    made.clear()

    def full_disk(path: Path, t: torch.Tensor) -> None:
        raise OSError(28, "No space left on device", str(path))

    with monkeypatch.context() as m, pytest.raises(OSError, match="space"):  # and when writing fails
        m.setattr(sensitivity, "_write", full_disk)
        OrderedSubsets.of_scan(_wide_3d_model()[0], y, subsets)
    assert not list(tmp_path.iterdir())

    # the object alone: close() removes the folder (idempotent), and so does garbage collection
    ordered = OrderedSubsets.of_scan(_wide_3d_model()[0], y, subsets)
    files = ordered.sensitivities
    assert isinstance(files, SubsetSensitivityFiles) and files.temporary is not None
    folder = files.temporary
    assert folder.parent == tmp_path and len(list(folder.rglob("*.pt"))) == subsets + 1
    ordered.close()
    ordered.close()
    assert not folder.exists()
    with pytest.raises(RuntimeError, match="removed"):
        ordered.sensitivities[0]
    ordered = OrderedSubsets.of_scan(_wide_3d_model()[0], y, subsets)
    folder = ordered.sensitivities.temporary
    assert folder is not None and folder.exists()
    del ordered, files
    gc.collect()
    assert not folder.exists()
    # a cache folder is the caller's: closing keeps it
    with OrderedSubsets.of_scan(_wide_3d_model()[0], y, subsets, cache_dir=tmp_path / "cache") as cached:
        assert cached.sensitivities.temporary is None
    assert len(list((tmp_path / "cache").rglob("subset-*.pt"))) == subsets
