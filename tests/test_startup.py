"""infer.py's start-up path: no training framework, and the Gaussian post-filter (in torch,
without importing MONAI's filtering) checked against MONAI's; NIfTI round trips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch


def test_loading_the_shipped_model_does_not_import_lightning() -> None:
    """Inference needs no training framework (the network itself is MONAI's UNet)."""
    code = (
        "import sys, torch\n"
        "from pet_dl.inference import load_model\n"
        "load_model(None, torch.device('cpu'))\n"
        "print('lightning' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("sigma", [0.1, 0.7, 1.3, 2.9])
def test_gaussian_kernel_is_monais(sigma: float) -> None:
    from monai.networks.layers.convutils import gaussian_1d

    from pet_dl.recon.filters import gaussian_erf_kernel

    expected = gaussian_1d(torch.tensor(sigma), truncated=4.0, approx="erf", normalize=True)
    torch.testing.assert_close(gaussian_erf_kernel(sigma), expected, rtol=0, atol=0)


def test_postfilter_is_monais_separable_filtering(generator: torch.Generator) -> None:
    from monai.networks.layers.convutils import gaussian_1d
    from monai.networks.layers.simplelayers import separable_filtering

    from pet_dl.geometry import ImageGeometry
    from pet_dl.recon.filters import FWHM_PER_SIGMA, gaussian_postfilter

    grid = ImageGeometry.centered((11, 9, 7), (2.0, 2.5, 3.0))
    x = torch.rand(2, *grid.shape, generator=generator, dtype=torch.float64)
    fwhm = (5.0, 0.0, 7.0)  # one axis left alone
    kernels = [
        gaussian_1d(torch.tensor(f / FWHM_PER_SIGMA / v), truncated=4.0, approx="erf", normalize=True)
        if f > 0 else torch.ones(1)
        for f, v in zip(fwhm, grid.voxel_size_mm)
    ]
    expected = separable_filtering(x.reshape(2, 1, *grid.shape), [k.double() for k in kernels])
    torch.testing.assert_close(gaussian_postfilter(x, grid, fwhm), expected.reshape(x.shape))


@pytest.mark.parametrize("shape, suffix", [((5, 4, 3), ".nii.gz"), ((7, 6, 1), ".nii")])
def test_nifti_writer_gives_nibabels_bytes(shape: tuple[int, int, int], suffix: str, tmp_path: Path,
                                            generator: torch.Generator) -> None:
    import gzip

    import nibabel as nib

    from pet_dl.geometry import ImageGeometry
    from pet_dl.io.nifti import load_nifti, save_nifti

    grid = ImageGeometry((shape), (2.0, 2.5, 3.25), (-4.0, 7.5, -1.625))
    image = torch.rand(shape, generator=generator) * 1000
    ours, theirs = tmp_path / f"ours{suffix}", tmp_path / f"theirs{suffix}"
    save_nifti(ours, image, grid, units="z (noise SD)")
    affine = grid.affine()
    img = nib.Nifti1Image(image.numpy(), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    img.header["descrip"] = b"z (noise SD)"
    nib.save(img, str(theirs))
    read = gzip.open if suffix.endswith(".gz") else open
    with read(ours, "rb") as a, read(theirs, "rb") as b:
        assert a.read() == b.read()
    back, back_grid = load_nifti(ours)
    assert back_grid == grid and torch.equal(back, image)


def test_infer_imports_monai_without_its_plotting_helpers() -> None:
    """infer.py imports MONAI with matplotlib and requests hidden (its plotting and download
    helpers, unused): MONAI's UNet still builds, matplotlib was not loaded by it, and
    matplotlib and requests import normally afterwards."""
    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        "import infer\n"
        "infer._import_monai_networks()\n"
        "from monai.networks.nets import UNet\n"
        "net = UNet(2, 1, 1, (4, 8), (2,))\n"
        "print('monai' in sys.modules, 'matplotlib' in sys.modules, 'requests' in sys.modules)\n"
        "import matplotlib.pyplot, requests\n"
        "print(matplotlib.pyplot.__name__, requests.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False", "matplotlib.pyplot", "requests"]
