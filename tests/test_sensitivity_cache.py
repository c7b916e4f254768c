"""Subset sensitivities: one pass, summed into the full model's, cached on disk by geometry,
normalisation and attenuation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pet_dl.forward_model import PETForwardModel, SinogramProjector
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.recon import osem
from pet_dl.recon.em import subset_models_and_sensitivities
from pet_dl.recon.sensitivity import sensitivity_cache_key


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
    files = sorted(tmp_path.glob("sens-*.pt"))
    assert len(files) == 1
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
    assert len(sorted(tmp_path.glob("sens-*.pt"))) == 2
    # a different number of subsets is a different key too; a corrupt file is recomputed
    assert sensitivity_cache_key(again, 3, torch.float32) != sensitivity_cache_key(again, 6, torch.float32)
    files[0].write_bytes(b"not a torch file")
    calls[0] = 0
    third = osem(_model(1)[0], y, 2, 6, sensitivity_cache=tmp_path)
    assert calls[0] == 6 + 2 * 6
    assert torch.equal(third, first)
