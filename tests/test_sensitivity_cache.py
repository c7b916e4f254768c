"""Subset sensitivities: one pass, summed into the full model's, cached on disk by geometry,
normalisation and attenuation."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch

from pet_dl.forward_model import PETForwardModel, SinogramProjector
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.recon import OrderedSubsets, em, osem, uniform_initial_image
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
    assert isinstance(OrderedSubsets.of_scan(model, y_run, subsets).sensitivities, list)  # no cache: memory
    with pytest.raises(ValueError, match="cache_dir"):
        OrderedSubsets.of_scan(model, y_run, subsets, lazy=True)
