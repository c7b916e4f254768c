"""Learned models: shapes (2D / 3D), dose conditioning, FBSEM fusion, gradients, round trip."""

from __future__ import annotations

import pytest
import torch

from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.models import ReconBatch, build_model, fbsem_fusion
from pet_dl.operators import MatrixOperator

SMALL = {
    "unrolled_em": {"num_iterations": 2, "channels": [4, 8], "strides": [2], "init_iterations": 2},
    "learned_primal_dual": {"num_iterations": 2, "width": 8, "depth": 2, "init_iterations": 2},
    "post_unet": {"channels": [4, 8], "strides": [2], "init_iterations": 2},
}


def _matrix_batch(
    generator: torch.Generator, image_shape: tuple[int, int, int], sino: tuple[int, ...],
    dose: tuple[float, ...] = (1.0, 0.05), dtype: torch.dtype = torch.float32,
) -> ReconBatch:
    """A random sparse non-negative system matrix and Poisson data on it."""
    n, m = int(torch.tensor(image_shape).prod()), int(torch.tensor(sino).prod())
    a = torch.rand(m, n, generator=generator, dtype=torch.float64)
    a = a * (torch.rand(m, n, generator=generator, dtype=torch.float64) < 0.3)
    proj = MatrixOperator(a.to(dtype), image_shape, sino)
    b = len(dose)
    x = 5.0 + 20.0 * torch.rand(b, *image_shape, generator=generator, dtype=dtype)
    mult = 0.5 + 0.5 * torch.rand(b, *sino, generator=generator, dtype=dtype)
    cal = torch.tensor(dose, dtype=dtype)
    add = 0.3 * cal.view(b, *([1] * len(sino))).expand(b, *sino).clone()
    ybar = cal.view(b, *([1] * len(sino))) * mult * proj(x) + add
    y = torch.poisson(ybar, generator=generator)
    image = ImageGeometry.centered(image_shape, (4.0, 4.0, 4.0))
    return ReconBatch(y, mult, add, cal, torch.tensor(dose, dtype=dtype), None, image, projector=proj)


@pytest.mark.parametrize("name", ["unrolled_em", "learned_primal_dual", "post_unet"])
def test_2d_models_run_and_are_nonnegative(name: str, generator: torch.Generator) -> None:
    batch = _matrix_batch(generator, (12, 10, 1), (1, 9, 11))
    net = build_model({"name": name, "spatial_dims": 2, **SMALL[name]})
    out = net(batch)
    assert out.shape == (2, 12, 10, 1)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all()) and bool((out >= 0).all())
    out.mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("name", ["unrolled_em", "learned_primal_dual", "post_unet"])
def test_3d_models_run(name: str, generator: torch.Generator) -> None:
    batch = _matrix_batch(generator, (6, 6, 4), (3, 5, 7))
    out = build_model({"name": name, "spatial_dims": 3, **SMALL[name]})(batch)
    assert out.shape == (2, 6, 6, 4)
    assert bool(torch.isfinite(out).all())


def test_2d_model_with_joseph_projector(generator: torch.Generator) -> None:
    scanner = get_scanner("test")
    sino = SinogramGeometry.two_d(scanner, num_radial=33, view_mashing=4)
    image = ImageGeometry.centered((16, 16, 1), (6.0, 6.0, 6.0))
    b = 2
    mult = torch.ones(b, *sino.shape)
    y = torch.poisson(torch.full((b, *sino.shape), 5.0), generator=generator)
    batch = ReconBatch(y, mult, torch.full_like(y, 0.5), torch.tensor([1.0, 0.1]),
                       torch.tensor([1.0, 0.1]), sino, image)
    net = build_model({"name": "unrolled_em", "spatial_dims": 2, **SMALL["unrolled_em"]})
    out = net(batch)
    assert out.shape == (b, 16, 16, 1) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("data_subsets", [1, 4])
def test_unrolled_em_without_regulariser_is_osem(data_subsets: int, generator: torch.Generator) -> None:
    """With the fusion weight at 0 every iteration keeps only its data step, so the
    network is K (OS)EM iterations with ``data_subsets`` subsets from its initial image."""
    from pet_dl.recon import osem

    scanner = get_scanner("test")
    sino = SinogramGeometry.two_d(scanner, num_radial=33, view_mashing=4)
    image = ImageGeometry.centered((16, 16, 1), (6.0, 6.0, 6.0))
    truth = torch.zeros(2, *image.shape)
    truth[:, 4:12, 5:11] = 20.0
    y0 = ReconBatch(torch.zeros(2, *sino.shape), torch.ones(2, *sino.shape), torch.full((2, *sino.shape), 0.5),
                    torch.tensor([1.0, 0.1]), torch.tensor([1.0, 0.1]), sino, image).forward_model()(truth)
    batch = ReconBatch(torch.poisson(y0, generator=generator), torch.ones_like(y0), torch.full_like(y0, 0.5),
                       torch.tensor([1.0, 0.1]), torch.tensor([1.0, 0.1]), sino, image)
    net = build_model({"name": "unrolled_em", "spatial_dims": 2, **SMALL["unrolled_em"],
                       "data_subsets": data_subsets, "initial_fusion_weight": -80.0})
    with torch.no_grad():
        start = net.start(batch)
        expected = osem(start.model, start.prompts, SMALL["unrolled_em"]["num_iterations"], data_subsets,
                        x0=start.initial)
        out = net(batch)
    assert not torch.allclose(out, start.initial, rtol=1e-3)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4 * float(expected.max()))


@pytest.mark.parametrize("name", ["unrolled_em", "learned_primal_dual", "post_unet"])
def test_dose_conditioning_changes_output(name: str, generator: torch.Generator) -> None:
    batch = _matrix_batch(generator, (12, 10, 1), (1, 9, 11), dose=(0.25, 0.25))
    torch.manual_seed(0)
    net = build_model({"name": name, "spatial_dims": 2, **SMALL[name]})
    if name == "unrolled_em":
        with torch.no_grad():
            net.fusion_dose_slope.fill_(0.5)
    a = net(batch)
    from dataclasses import replace

    b = net(replace(batch, dose_fraction=torch.tensor([0.01, 0.25])))
    assert torch.allclose(a[1], b[1])
    rel = float((a[0] - b[0]).detach().norm() / a[0].detach().norm())
    assert rel > 1e-4, "changing only the dose level must change the reconstruction"



@pytest.mark.parametrize("norm", ["instance", None])
def test_unrolled_em_unet_norm_option(norm: str | None, generator: torch.Generator) -> None:
    """``norm`` selects the regulariser UNet's normalisation layers (None: none at all)."""
    net = build_model({"name": "unrolled_em", "spatial_dims": 2, **SMALL["unrolled_em"], "norm": norm})
    kinds = {type(m).__name__ for m in net.modules()}
    assert ("InstanceNorm2d" in kinds) == (norm == "instance")
    batch = _matrix_batch(generator, (12, 10, 1), (1, 9, 11))
    out = net(batch)
    assert out.shape == (2, 12, 10, 1) and bool(torch.isfinite(out).all())

class _Roll(torch.nn.Module):
    """Shifts the first spatial axis by one voxel: the simplest orientation-dependent net."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, 1, dims=2)


def test_flip_average_of_a_shift_is_the_mean_of_both_shifts(generator: torch.Generator) -> None:
    """Flip, shift by +1, flip back = shift by -1: the ensemble is the symmetric average."""
    from pet_dl.models.blocks import flip_averaged

    x = torch.rand(2, 1, 7, 5, generator=generator, dtype=torch.float64)
    out = flip_averaged(_Roll(), x, (0,))
    assert torch.allclose(out, 0.5 * (torch.roll(x, 1, dims=2) + torch.roll(x, -1, dims=2)), rtol=1e-12)
    # a flip along the other axis does not touch the shift: the output is the plain shift
    assert torch.allclose(flip_averaged(_Roll(), x, (1,)), torch.roll(x, 1, dims=2), rtol=1e-12)
    assert torch.equal(flip_averaged(_Roll(), x, ()), torch.roll(x, 1, dims=2))


@pytest.mark.parametrize("spatial_dims, axes", [(2, (0,)), (2, (0, 1)), (3, (0, 2))])
def test_flip_averaged_unet_is_mirror_equivariant(
    spatial_dims: int, axes: tuple[int, ...], generator: torch.Generator
) -> None:
    """An untrained UNet is not; averaged over the flips it commutes with each of them."""
    from pet_dl.models.blocks import PaddedUNet

    torch.manual_seed(0)
    plain = PaddedUNet(spatial_dims, 2, 1, (4, 8), (2,), 1).double()
    ensembled = PaddedUNet(spatial_dims, 2, 1, (4, 8), (2,), 1, flip_axes=axes).double()
    ensembled.load_state_dict(plain.state_dict())  # no parameters of its own
    x = torch.rand(2, 2, *([6] * spatial_dims), generator=generator, dtype=torch.float64)
    for axis in axes:
        d = axis + 2
        assert not torch.allclose(plain(x.flip(d)), plain(x).flip(d), rtol=1e-6)
        assert torch.allclose(ensembled(x.flip(d)), ensembled(x).flip(d), rtol=1e-10, atol=1e-12)
    subsets = [()] + [(a + 2,) for a in axes] + ([tuple(a + 2 for a in axes)] if len(axes) == 2 else [])
    by_hand = sum(plain(x.flip(s)).flip(s) if s else plain(x) for s in subsets) / len(subsets)
    assert torch.allclose(ensembled(x), by_hand, rtol=1e-10, atol=1e-12)


def test_flip_ensemble_option_of_the_models(generator: torch.Generator) -> None:
    """Same parameters with and without it (a trained network can switch it on); bad axes refused."""
    cfg = {"name": "unrolled_em", "spatial_dims": 2, **SMALL["unrolled_em"]}
    plain, flipped = build_model(cfg), build_model({**cfg, "flip_ensemble": [0]})
    assert plain.state_dict().keys() == flipped.state_dict().keys()
    flipped.load_state_dict(plain.state_dict())
    batch = _matrix_batch(generator, (12, 10, 1), (1, 9, 11))
    a, b = plain(batch), flipped(batch)
    assert a.shape == b.shape and not torch.allclose(a, b)
    post = build_model({"name": "post_unet", "spatial_dims": 2, **SMALL["post_unet"], "flip_ensemble": [1]})
    assert post.net.flip_axes == (1,)
    with pytest.raises(ValueError, match="flip axes"):
        build_model({**cfg, "flip_ensemble": [2]})  # no z axis in 2D
    with pytest.raises(ValueError, match="flip axes"):
        build_model({**cfg, "flip_ensemble": [0, 0]})


@pytest.mark.parametrize("a_sign", ["positive", "negative"])
def test_fbsem_fusion_is_the_surrogate_maximiser(a_sign: str, generator: torch.Generator) -> None:
    x_em = 0.1 + torch.rand(200, generator=generator, dtype=torch.float64)
    x_reg = 3.0 * torch.rand(200, generator=generator, dtype=torch.float64)
    w = torch.rand(200, generator=generator, dtype=torch.float64)
    if a_sign == "negative":
        w = w + 2.0  # 1 - w x_reg < 0 for most voxels
    x = fbsem_fusion(x_em, x_reg, w)
    assert bool((x > 0).all())
    # Stationarity of (x_em log x - x) - w/2 (x - x_reg)^2:  (x_em / x - 1) - w (x - x_reg) = 0
    residual = (x_em / x - 1.0) - w * (x - x_reg)
    assert float(residual.abs().max()) < 1e-10 * float((x_em / x).abs().max() + 1)
    assert torch.allclose(fbsem_fusion(x_em, x_reg, torch.zeros_like(w)), x_em)


def test_gradient_through_em_data_step_matches_finite_differences(generator: torch.Generator) -> None:
    """The EM step through the Joseph projector (float64): gradcheck on a tiny 2D problem."""
    from pet_dl.recon import em_update

    scanner = get_scanner("test")
    sino = SinogramGeometry.two_d(scanner, num_radial=9, view_mashing=14)
    image = ImageGeometry.centered((5, 5, 1), (12.0, 12.0, 12.0))
    y = torch.poisson(torch.full((1, *sino.shape), 4.0, dtype=torch.float64), generator=generator)
    batch = ReconBatch(y, torch.ones_like(y), torch.full_like(y, 0.2),
                       torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
                       sino, image)
    model = batch.forward_model()
    model = model.double() if hasattr(model, "double") else model
    sens = model.sensitivity()
    x = (0.5 + torch.rand(1, *image.shape, generator=generator, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: em_update(v, model, y, sens), (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_checkpointing_gives_same_values_and_gradients(generator: torch.Generator) -> None:
    batch = _matrix_batch(generator, (12, 10, 1), (1, 9, 11))
    torch.manual_seed(0)
    net = build_model({"name": "unrolled_em", "spatial_dims": 2, **SMALL["unrolled_em"]})
    out = net(batch)
    out.square().mean().backward()
    g1 = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    net.checkpointing = True
    out2 = net(batch)
    out2.square().mean().backward()
    assert torch.allclose(out, out2, rtol=1e-5)
    for a, b in zip(g1, [p.grad for p in net.parameters()]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-8 * float(a.abs().max() + 1e-30))


def test_autocast_keeps_data_step_float32(generator: torch.Generator) -> None:
    batch = _matrix_batch(generator, (12, 10, 1), (1, 9, 11))
    net = build_model({"name": "unrolled_em", "spatial_dims": 2, **SMALL["unrolled_em"]})
    with torch.no_grad():
        ref = net(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(batch)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert float((out - ref).norm() / ref.norm()) < 0.1


def test_checkpoint_round_trip_gives_same_outputs(tmp_path, generator: torch.Generator) -> None:
    from pet_dl.io.checkpoint import load_checkpoint, save_checkpoint

    batch = _matrix_batch(generator, (12, 10, 1), (1, 9, 11))
    config = {"name": "unrolled_em", "spatial_dims": 2, **SMALL["unrolled_em"]}
    torch.manual_seed(3)
    net = build_model(config)
    with torch.no_grad():
        net.fusion_weight.uniform_(-1, 1, generator=generator)
    path = save_checkpoint(tmp_path / "m.safetensors", net, config, {"image": batch.image.to_dict()})
    loaded = load_checkpoint(path, builder=build_model)
    net.eval()
    loaded.model.eval()
    with torch.no_grad():
        assert torch.equal(net(batch), loaded.model(batch))


def test_build_model_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="unknown model name"):
        build_model({"name": "resnet9000"})
    with pytest.raises(ValueError, match="num_iteratons"):
        build_model({"name": "unrolled_em", "num_iteratons": 3})
    with pytest.raises(ValueError, match="spatial_dims"):
        build_model({"name": "post_unet", "spatial_dims": 4})


def test_recon_batch_rejects_bad_dose(generator: torch.Generator) -> None:
    batch = _matrix_batch(generator, (4, 4, 1), (1, 3, 5))
    from dataclasses import replace

    with pytest.raises(ValueError, match="dose_fraction"):
        replace(batch, dose_fraction=torch.tensor([0.0, 1.0]))
