"""``python -m pet_dl export --format interfile``: scan file -> STIR sinograms -> the same scan."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pet_dl.cli import main
from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.io.scanfile import read_scan, write_scan
from pet_dl.io.stir_sinogram import read_stir_projdata, read_stir_sinogram
from pet_dl.scan import AcquisitionMetadata, Scan


def _scan(generator: torch.Generator, tof: bool = False) -> Scan:
    sino = SinogramGeometry(get_scanner("test"), num_radial=31, span=1, view_mashing=2, tof=tof)
    shape = sino.shape
    return Scan(
        sinogram=sino,
        image=ImageGeometry.centered((40, 40, 7), (4.0, 4.0, 2.0)),
        prompts=torch.poisson(torch.full(shape, 4.0), generator=generator),
        multiplicative=torch.rand(shape, generator=generator) * 0.5 + 0.1,
        additive=torch.rand(shape, generator=generator),
        calibration=0.0123,
        psf_fwhm_mm=4.5,
        metadata=AcquisitionMetadata(
            duration_s=123.0,
            dose_fraction=0.25,
            patient_weight_kg=70.0,
            tracer="FLT",
            seed=7,
            extra={"note": "x"},
        ),
    )


def test_export_then_read_gives_the_same_scan(
    tmp_path: Path, generator: torch.Generator, capsys: pytest.CaptureFixture
) -> None:
    scan = _scan(generator)
    write_scan(tmp_path / "scan.h5", scan)
    out = tmp_path / "stir"
    assert (
        main(["export", str(tmp_path / "scan.h5"), "--format", "interfile", "--out", str(out)]) == 0
    )
    assert "calibration 0.0123" in capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        f"{n}{s}" for n in ("prompts", "multiplicative", "additive") for s in (".hs", ".s")
    )
    back = read_stir_sinogram(out / "prompts.hs")
    ref = read_scan(tmp_path / "scan.h5")
    assert back.sinogram == ref.sinogram and back.image == ref.image
    for name in ("prompts", "multiplicative", "additive"):
        assert torch.equal(getattr(back, name), getattr(ref, name)), name
    assert back.calibration == ref.calibration and back.psf_fwhm_mm == ref.psf_fwhm_mm
    assert back.metadata == ref.metadata
    # each file is also a plain STIR sinogram with the frame duration in its header
    data, geometry, extra = read_stir_projdata(out / "additive.hs")
    assert geometry == scan.sinogram and extra["duration_s"] == 123.0
    assert "image duration (sec)[1] := 123" in (out / "additive.hs").read_text()


def test_export_bad_input_is_one_line(
    tmp_path: Path, generator: torch.Generator, capsys: pytest.CaptureFixture
) -> None:
    assert main(["export", str(tmp_path / "none.h5"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "none.h5" in err[0]
    write_scan(tmp_path / "tof.h5", _scan(generator, tof=True))
    assert main(["export", str(tmp_path / "tof.h5"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TOF" in err[0]
    assert not (tmp_path / "o").exists()
    assert main(["export", str(tmp_path / "tof.h5"), "--format", "nifti", "--out", "o"]) == 2
