"""The low-frequency data anchor: keeps the network's fine detail, takes back what the data contradicts."""

from __future__ import annotations

import math

import pytest
import torch

from pet_dl.geometry import ImageGeometry, SinogramGeometry, get_scanner
from pet_dl.models import ReconBatch, build_model
from pet_dl.models.anchor import (
    LowFrequencyAnchor,
    OSEMBlend,
    anchor_low_frequencies,
    contrast_kept_fraction,
    osem_excess_fraction,
)

ROWS = [[1, 15, 2.0], [4, 10, 4.0], [20, 4, 4.0], [100, 2, 6.0]]


def _blob(grid: ImageGeometry, centre_mm: tuple[float, float], sigma_mm: float) -> torch.Tensor:
    """A unit-peak Gaussian blob ``(nx, ny, 1)`` on ``grid``."""
    nx, ny = grid.shape[0], grid.shape[1]
    v = grid.voxel_size_mm[0]
    x = (torch.arange(nx, dtype=torch.float64) - (nx - 1) / 2) * v
    y = (torch.arange(ny, dtype=torch.float64) - (ny - 1) / 2) * v
    r2 = (x[:, None] - centre_mm[0]) ** 2 + (y[None, :] - centre_mm[1]) ** 2
    return torch.exp(-r2 / (2 * sigma_mm**2)).float()[:, :, None]


def test_anchor_keeps_fine_detail_and_removes_broad_departures() -> None:
    grid = ImageGeometry.centered((64, 64, 1), (2.0, 2.0, 2.0))
    reference = 10.0 * _blob(grid, (0.0, 0.0), 40.0)
    assert torch.equal(anchor_low_frequencies(reference, reference, grid, 2.8), reference)
    i, j = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    fine = (((i + j) % 2) * 2.0 - 1.0).float()[:, :, None]  # a one-voxel checkerboard
    out = anchor_low_frequencies(reference + fine, reference, grid, 1.4 * 2.0)
    inner = (slice(8, 56), slice(8, 56))  # away from the zero-padded border
    assert float((out - reference - fine)[inner].abs().max()) < 0.01  # detail kept
    broad = 10.0 * _blob(grid, (10.0, -6.0), 8.0)  # a blob of 4 voxels' sigma
    out = anchor_low_frequencies(reference + broad, reference, grid, 1.4 * 2.0)
    left = float((out - reference).max())
    # G_a(blob) has peak sigma_b^2 / (sigma_b^2 + sigma_a^2) of the blob's: 0.89 taken back
    assert left == pytest.approx(10.0 * (1 - 16.0 / (16.0 + 1.96)), rel=0.05)


def test_anchor_settings_follow_the_count_level() -> None:
    anchor = LowFrequencyAnchor.from_config({"sigma_voxels": 1.4, "osem": ROWS})
    assert anchor.osem_settings(1.0) == (15, 2.0)
    assert anchor.osem_settings(1 / 3.0) == (10, 4.0)  # log-nearest: 3 is closer to 4 than to 1
    assert anchor.osem_settings(1 / 12.0) == (4, 4.0)  # 12 is log-nearer 20 than 4
    assert anchor.osem_settings(1 / 500.0) == (2, 6.0)
    assert anchor.osem_settings(3.0) == (15, 2.0)  # more counts than the reference
    for level in (1.0, 0.25, 0.05, 0.01):
        assert anchor.sigma_mm(level, 2.0) == pytest.approx(1.4 * 2.0 / math.sqrt(level))


@pytest.mark.parametrize(
    "config",
    [
        {"sigma_voxels": 0.0, "osem": ROWS},
        {"sigma_voxels": 1.0, "osem": []},
        {"sigma_voxels": 1.0, "osem": [[0.5, 4, 2.0]]},
        {"sigma_voxels": 1.0, "osem": [[1, 0, 2.0]]},
        {"sigma_voxels": 1.0, "osem": ROWS, "iterations": 3},
    ],
)
def test_anchor_rejects_bad_settings(config: dict) -> None:
    with pytest.raises(ValueError, match="anchor"):
        LowFrequencyAnchor.from_config(config)


def _scan(generator: torch.Generator, truth: torch.Tensor, grid: ImageGeometry, counts: float) -> ReconBatch:
    """A noisy 2D scan of ``truth (nx, ny, 1)`` with about ``counts`` trues."""
    sino = SinogramGeometry.two_d(get_scanner("test"), num_radial=65, view_mashing=2)
    ones = torch.ones(1, *sino.shape)
    empty = ReconBatch(ones, ones, torch.zeros_like(ones), torch.ones(1), torch.ones(1), sino, grid)
    projection = empty.forward_model()(truth[None])
    calibration = torch.tensor([counts / float(projection.sum())])
    y = torch.poisson(projection * calibration, generator=generator)
    return ReconBatch(y, ones, torch.zeros_like(y), calibration, torch.ones(1), sino, grid)


def test_anchor_takes_back_a_false_blob_and_restores_an_erased_lesion(generator: torch.Generator) -> None:
    """A network image with a lesion painted where there is none and a real one erased, at full dose."""
    grid = ImageGeometry.centered((32, 32, 1), (4.0, 4.0, 4.0))
    v = 4.0
    nx = 32
    x = (torch.arange(nx) - (nx - 1) / 2) * v
    body = ((x[:, None] ** 2 + x[None, :] ** 2) <= 45.0**2).float()[:, :, None] * 10.0
    lesion = 10.0 * _blob(grid, (-18.0, 10.0), 6.0) * (body > 0)
    truth = body + lesion
    batch = _scan(generator, truth, grid, 2e6)
    false_blob = 10.0 * _blob(grid, (16.0, -14.0), 6.0) * (body > 0)
    network = body + false_blob  # the real lesion erased, a false one painted
    anchor = LowFrequencyAnchor.from_config({"sigma_voxels": 1.4, "osem": ROWS})
    out = anchor(network[None], batch.forward_model(), batch.prompts, torch.ones(1), grid)[0]
    at_false = false_blob > 5.0
    at_lesion = lesion > 5.0
    excess_false = float((out - body)[at_false].mean()) / float(false_blob[at_false].mean())
    restored = float((out - body)[at_lesion].mean()) / float(lesion[at_lesion].mean())
    assert excess_false < 0.5, excess_false  # at least half of the invented lesion taken back
    assert restored > 0.5, restored  # at least half of the erased lesion back from the data
    # the truth itself keeps its lesion (the anchor does not flatten what the data support)
    osem = anchor(truth[None], batch.forward_model(), batch.prompts, torch.ones(1), grid)[0]
    assert float((osem - truth)[at_lesion].mean()) > -0.3 * float(lesion[at_lesion].mean())


def _small_network_case(generator: torch.Generator) -> tuple[ImageGeometry, ReconBatch, dict, dict]:
    """A 16 x 16 scan of a blob, a small UnrolledEM config and an anchor config for it."""
    grid = ImageGeometry.centered((16, 16, 1), (4.0, 4.0, 4.0))
    truth = 5.0 + 5.0 * _blob(grid, (4.0, 0.0), 8.0)
    batch = _scan(generator, truth, grid, 2e5)
    small = {"name": "unrolled_em", "spatial_dims": 2, "num_iterations": 1, "channels": [4, 8],
             "strides": [2], "init_iterations": 2}
    return grid, batch, small, {"sigma_voxels": 1.0, "osem": ROWS}


def test_unrolled_em_applies_the_anchor_in_eval_mode_only(generator: torch.Generator) -> None:
    grid, batch, small, config = _small_network_case(generator)
    plain = build_model(small)
    anchored = build_model({**small, "anchor": config})
    anchored.load_state_dict(plain.state_dict())
    plain.eval()
    anchored.eval()
    with torch.no_grad():
        x = plain(batch)
        expected = LowFrequencyAnchor.from_config(config)(
            x, batch.forward_model(), batch.prompts, batch.dose_fraction, grid
        )
        assert torch.allclose(anchored(batch), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(expected, x, rtol=1e-3, atol=1e-3)
    anchored.train()
    plain.train()
    with torch.no_grad():
        assert torch.allclose(anchored(batch), plain(batch))


def test_anchor_in_training_puts_the_anchored_image_under_the_loss(generator: torch.Generator) -> None:
    """With ``anchor_in_training`` the train-mode output is the eval-mode (anchored) one, and
    the gradient reaches the network only through ``I - G``: a departure the anchor takes back
    costs nothing, so the network is not pushed to fix what OSEM's low frequencies fix."""
    grid, batch, small, config = _small_network_case(generator)
    with torch.random.fork_rng():  # a fixed initialisation: the gradient ratio varies with it
        torch.manual_seed(0)     # (0.08-0.5 over 30 seeds; a random one failed about 1 run in 50)
        trained = build_model({**small, "anchor": config, "anchor_in_training": True})
    plain = build_model(small)
    plain.load_state_dict(trained.state_dict())
    trained.eval()
    with torch.no_grad():
        anchored_eval = trained(batch)
    trained.train()
    out = trained(batch)
    assert torch.allclose(out, anchored_eval, rtol=1e-5, atol=1e-5)
    plain.train()
    with torch.no_grad():
        assert not torch.allclose(out.detach(), plain(batch), rtol=1e-3, atol=1e-3)
    # a loss on the image's broad level (its mean inside the field): the anchored image's
    # broad level is OSEM's, so the gradient is a small fraction of the plain network's
    inside = torch.zeros_like(out, dtype=torch.bool)
    inside[:, 4:12, 4:12] = True
    out[inside].mean().backward()
    anchored_grad = torch.cat([p.grad.flatten() for p in trained.parameters() if p.grad is not None]).norm()
    plain(batch)[inside].mean().backward()
    plain_grad = torch.cat([p.grad.flatten() for p in plain.parameters() if p.grad is not None]).norm()
    assert float(plain_grad) > 0
    assert float(anchored_grad) < 0.5 * float(plain_grad)
    with pytest.raises(ValueError, match="anchor_in_training needs an anchor"):
        build_model({**small, "anchor_in_training": True})


def test_export_adds_the_anchor_from_a_file_with_the_same_weights(tmp_path, generator: torch.Generator) -> None:
    """``--anchor FILE`` on a .safetensors: weights kept, the anchor in the config; a bad file is exit 2."""
    from pet_dl.io.checkpoint import load_checkpoint, save_checkpoint
    from pet_dl.training.export import main as export_main

    config = {"name": "unrolled_em", "spatial_dims": 2, "num_iterations": 1, "channels": [4, 8],
              "strides": [2], "init_iterations": 1}
    plain = build_model(config)
    src = save_checkpoint(tmp_path / "plain.safetensors", plain, config, {"training_command": "fit"})
    out = tmp_path / "anchored.safetensors"
    assert export_main([str(src), str(out), "--anchor", "configs/anchor2d.yaml"]) == 0
    loaded = load_checkpoint(out, builder=build_model)
    assert loaded.model.anchor == LowFrequencyAnchor.from_config(
        {"sigma_voxels": 1.4, "osem": [[1, 15, 2.0], [4, 10, 4.0], [10, 6, 4.0], [20, 4, 4.0],
                                       [50, 4, 6.0], [100, 2, 6.0]]}
    )
    for (name, a), b in zip(plain.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    bad = tmp_path / "bad.yaml"
    bad.write_text("sigma_voxels: -1\nosem: [[1, 15, 2.0]]\n")
    assert export_main([str(src), str(tmp_path / "x.safetensors"), "--anchor", str(bad)]) == 2
    assert not (tmp_path / "x.safetensors").exists()


def _two_count_levels(
    generator: torch.Generator,
) -> tuple[ImageGeometry, torch.Tensor, ReconBatch, ReconBatch, ReconBatch]:
    """A 16 x 16 blob scanned with 2e5 and 1e4 counts: ``(grid, truth, high, low, both)``,
    ``both`` the two scans in one batch."""
    grid = ImageGeometry.centered((16, 16, 1), (4.0, 4.0, 4.0))
    truth = 5.0 + 5.0 * _blob(grid, (4.0, 0.0), 8.0)
    high, low = _scan(generator, truth, grid, 2e5), _scan(generator, truth, grid, 1e4)
    both = ReconBatch(
        torch.cat([high.prompts, low.prompts]), torch.cat([high.multiplicative, low.multiplicative]),
        torch.cat([high.additive, low.additive]), torch.cat([high.calibration, low.calibration]),
        torch.ones(2), high.sinogram, grid,
    )
    return grid, truth, high, low, both


def test_a_batch_of_scans_at_different_count_levels_is_anchored_scan_by_scan(generator: torch.Generator) -> None:
    """Each scan of a batch gets the OSEM settings and the scale of its own count level."""
    grid, truth, high, low, both = _two_count_levels(generator)
    anchor = LowFrequencyAnchor.from_config({"sigma_voxels": 1.0, "osem": ROWS})
    images = torch.stack([truth * 1.3, truth * 0.7])  # a network's images, off in level
    levels = torch.tensor([1.0, 0.05])
    out = anchor(images, both.forward_model(), both.prompts, levels, grid)
    one = anchor(images[:1], high.forward_model(), high.prompts, levels[:1], grid)
    two = anchor(images[1:], low.forward_model(), low.prompts, levels[1:], grid)
    assert torch.allclose(out, torch.cat([one, two]), rtol=1e-5, atol=1e-4)
    # both levels pulled back towards the truth's level by the data
    assert abs(float(out[0].mean() / truth.mean()) - 1) < 0.15
    assert abs(float(out[1].mean() / truth.mean()) - 1) < 0.15


def test_the_anchor_continues_from_the_networks_osem_start(generator: torch.Generator) -> None:
    """Given the network's 4 x 7 OSEM start, the anchor's OSEM continues from it: the same images
    as OSEM from the uniform start, at every row (fewer iterations than the start: from scratch)."""
    from pet_dl.models.batch import initial_image

    grid = ImageGeometry.centered((16, 16, 1), (4.0, 4.0, 4.0))
    truth = 5.0 + 5.0 * _blob(grid, (4.0, 0.0), 8.0)
    batch = _scan(generator, truth, grid, 2e5)
    model = batch.forward_model()
    x0 = initial_image(model, batch.prompts, 4, 7)
    anchor = LowFrequencyAnchor.from_config({"sigma_voxels": 1.0, "osem": ROWS})
    image = truth[None] * 1.2
    for level in (1.0, 0.25, 0.05, 0.01):  # 15, 10, 4 (= the start) and 2 (< the start) iterations
        lv = torch.tensor([level])
        fresh = anchor(image, model, batch.prompts, lv, grid)
        continued = anchor(image, model, batch.prompts, lv, grid, start=(x0, 4, 7))
        assert torch.allclose(continued, fresh, rtol=1e-5, atol=1e-4), level
    # a start of other subsets is not continued from
    other = initial_image(model, batch.prompts, 4, 1)
    lv = torch.tensor([1.0])
    assert torch.allclose(anchor(image, model, batch.prompts, lv, grid, start=(other, 4, 1)),
                          anchor(image, model, batch.prompts, lv, grid), rtol=1e-6, atol=1e-6)


def test_final_em_step_ends_the_network_on_a_data_step_that_fits_the_counts_better(
    generator: torch.Generator,
) -> None:
    """``final_em_steps``: the output is plain MLEM updates from the (anchored) image with
    negative voxels set to zero, in train and eval mode; each update raises the Poisson
    log-likelihood (lowers the deviance), and with no background keeps ``sum(sens * x)``
    at the measured count total (the EM count balance)."""
    from pet_dl.metrics.image import poisson_deviance
    from pet_dl.recon import em_update

    grid, batch, small, config = _small_network_case(generator)
    plain = build_model({**small, "anchor": config})
    ended = build_model({**small, "anchor": config, "final_em_steps": 2})
    ended.load_state_dict(plain.state_dict())
    model = batch.forward_model()
    sens = model.sensitivity().expand(1, *grid.shape)
    for mode in ("eval", "train"):
        getattr(plain, mode)()
        getattr(ended, mode)()
        with torch.no_grad():
            x = plain(batch).clamp_min(0.0)
            once = em_update(x, model, batch.prompts, sens)
            twice = em_update(once, model, batch.prompts, sens)
            out = ended(batch)
        assert torch.allclose(out, twice, rtol=1e-5, atol=1e-5), mode
        deviances = [float(poisson_deviance(model(im), batch.prompts).sum()) for im in (x, once, twice)]
        assert deviances[0] > deviances[1] > deviances[2], (mode, deviances)
        measured = float(batch.prompts.sum())
        assert float((sens * out).sum()) == pytest.approx(measured, rel=1e-4), mode
    with pytest.raises(ValueError, match="final_em_steps"):
        build_model({**small, "final_em_steps": -1})


def test_export_sets_the_final_em_steps_with_the_same_weights(tmp_path, generator: torch.Generator) -> None:
    """``--final-em N`` on a .safetensors: weights kept, ``final_em_steps`` in the config; a
    negative N is exit 2."""
    from pet_dl.io.checkpoint import load_checkpoint, save_checkpoint
    from pet_dl.training.export import main as export_main

    _, _, small, _ = _small_network_case(generator)
    plain = build_model(small)
    src = save_checkpoint(tmp_path / "plain.safetensors", plain, small, {"training_command": "fit"})
    out = tmp_path / "ended.safetensors"
    assert export_main([str(src), str(out), "--final-em", "1"]) == 0
    loaded = load_checkpoint(out, builder=build_model)
    assert loaded.model.final_em_steps == 1
    assert loaded.config["final_em_steps"] == 1
    for (name, a), b in zip(plain.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(src), str(tmp_path / "x.safetensors"), "--final-em", "-1"])
    assert exit_info.value.code == 2


BLEND_ROWS = [[1, 6, 4.0, 0.25], [20, 2, 6.0, 0.5]]


def test_osem_blend_mixes_each_scan_with_osem_at_its_own_count_level(generator: torch.Generator) -> None:
    """``(1 - w) x + w o`` with ``o`` the row's post-filtered OSEM of that scan: w and the row
    follow each scan's count level; weight 0 leaves the image alone."""
    from pet_dl.recon import osem
    from pet_dl.recon.filters import gaussian_postfilter

    grid, truth, high, low, both = _two_count_levels(generator)
    images = torch.stack([truth * 1.3, truth * 0.7])  # a network's images, off in level
    levels = torch.tensor([1.0, 0.05])
    out = OSEMBlend.from_config({"rows": BLEND_ROWS})(images, both.forward_model(), both.prompts, levels, grid)
    o_high = gaussian_postfilter(osem(high.forward_model(), high.prompts, 6, 7), grid, 4.0)[0]
    o_low = gaussian_postfilter(osem(low.forward_model(), low.prompts, 2, 7), grid, 6.0)[0]
    assert torch.allclose(out[0], 0.75 * images[0] + 0.25 * o_high, rtol=1e-4, atol=1e-4)
    assert torch.allclose(out[1], 0.5 * images[1] + 0.5 * o_low, rtol=1e-4, atol=1e-4)
    # the data pull each image's level towards the truth's, by the row's weight
    assert abs(float(out[0].mean() / truth.mean()) - 1) < 0.8 * 0.3
    assert abs(float(out[1].mean() / truth.mean()) - 1) < 0.6 * 0.3
    none = OSEMBlend.from_config({"rows": [[1, 6, 4.0, 0.0]]})
    assert torch.equal(none(images, both.forward_model(), both.prompts, levels, grid), images)


def test_contrast_kept_fraction_marks_what_is_hotter_than_its_background() -> None:
    """0 on a flat region and in a cold spot, 1 at the centre of a blob 50 % above its
    background (threshold 0.25), and between them where the contrast is below the threshold."""
    grid = ImageGeometry.centered((64, 64, 1), (2.0, 2.0, 2.0))
    flat = torch.full(grid.shape, 5000.0)
    hot = flat * (1 + 0.5 * _blob(grid, (0.0, 0.0), 3.0))
    faint = flat * (1 + 0.1 * _blob(grid, (0.0, 0.0), 3.0))
    cold = flat * (1 - 0.5 * _blob(grid, (0.0, 0.0), 3.0))
    inner = (slice(20, 44), slice(20, 44))  # away from the border, where the background falls
    assert float(contrast_kept_fraction(flat, grid, 15.0, 0.25)[inner].abs().max()) < 1e-5
    assert float(contrast_kept_fraction(hot, grid, 15.0, 0.25)[32, 32, 0]) == pytest.approx(1.0)
    cold_kept = contrast_kept_fraction(cold, grid, 15.0, 0.25)
    assert float(cold_kept[32, 32, 0]) == 0.0
    assert float(cold_kept[inner].max()) < 0.2  # the rim, above a background the cold spot lowers
    mid = float(contrast_kept_fraction(faint, grid, 15.0, 0.25)[32, 32, 0])
    assert 0.05 < mid < 0.4  # about (0.1 - what the background takes) / 0.25


def test_osem_blend_keep_contrast_leaves_hot_spots_to_the_network(generator: torch.Generator) -> None:
    """With ``keep_contrast`` the weight is ``w (1 - k)``, ``k`` the network image's kept
    fraction: a hot spot keeps the network's value, the rest is the plain blend."""
    grid, truth, high, low, both = _two_count_levels(generator)
    images = torch.stack([truth * 1.3, truth * 0.7])
    levels = torch.tensor([1.0, 0.05])
    plain = OSEMBlend.from_config({"rows": BLEND_ROWS})(images, both.forward_model(), both.prompts, levels, grid)
    keep = OSEMBlend.from_config({"rows": BLEND_ROWS, "keep_contrast": [15.0, 0.5]})
    assert OSEMBlend.from_config(keep.config()) == keep
    out = keep(images, both.forward_model(), both.prompts, levels, grid)
    for b, w in enumerate((0.25, 0.5)):
        k = contrast_kept_fraction(images[b], grid, 15.0, 0.5)
        assert bool((k == 1).any()) and bool((k == 0).any())
        osem_part = (plain[b] - (1 - w) * images[b]) / w  # the row's OSEM image
        expected = (1 - w * (1 - k)) * images[b] + w * (1 - k) * osem_part
        assert torch.allclose(out[b], expected, rtol=1e-4, atol=1e-2)
        assert torch.allclose(out[b][k == 1], images[b][k == 1])
        assert torch.allclose(out[b][k == 0], plain[b][k == 0], rtol=1e-4, atol=1e-2)


def test_osem_excess_fraction_marks_where_osem_is_hotter_than_the_image() -> None:
    """0 where OSEM is at or below the image, 1 where it is the threshold share of the image's
    background or more above it, linear between."""
    grid = ImageGeometry.centered((64, 64, 1), (2.0, 2.0, 2.0))
    image = torch.full(grid.shape, 4000.0)
    blob = _blob(grid, (0.0, 0.0), 3.0)
    inner = (slice(20, 44), slice(20, 44))
    hot_osem = image * (1 + 0.6 * blob)  # an OSEM noise blob 60 % above flat tissue
    e = osem_excess_fraction(image, hot_osem, grid, 15.0, 0.5)
    assert float(e[32, 32, 0]) == pytest.approx(1.0)
    faint = osem_excess_fraction(image, image * (1 + 0.2 * blob), grid, 15.0, 0.5)
    assert torch.allclose(faint, (0.2 * blob / 0.5), atol=1e-4)  # OSEM 0.2 x blob above, threshold 0.5
    assert float(osem_excess_fraction(image, image * (1 - 0.5 * blob), grid, 15.0, 0.5)[inner].max()) == 0.0
    assert float(e[inner][blob[inner] < 1e-3].max()) < 1e-3  # away from the blob, nothing


def test_osem_blend_osem_excess_keeps_the_network_where_osem_has_a_blob(generator: torch.Generator) -> None:
    """With a third ``keep_contrast`` value the weight is ``w (1 - k) (1 - e)``, ``e`` the
    OSEM-excess fraction of the row's OSEM image over the network's: where OSEM is hotter the
    output keeps the network's value; elsewhere it is the two-value blend."""
    grid, truth, high, low, both = _two_count_levels(generator)
    images = torch.stack([truth * 1.3, truth * 0.5])  # OSEM below the first image, about twice the second
    levels = torch.tensor([1.0, 0.05])
    plain = OSEMBlend.from_config({"rows": BLEND_ROWS})(images, both.forward_model(), both.prompts, levels, grid)
    two = OSEMBlend.from_config({"rows": BLEND_ROWS, "keep_contrast": [15.0, 0.5]})(
        images, both.forward_model(), both.prompts, levels, grid)
    three = OSEMBlend.from_config({"rows": BLEND_ROWS, "keep_contrast": [15.0, 0.5, 0.5]})
    assert OSEMBlend.from_config(three.config()) == three
    out = three(images, both.forward_model(), both.prompts, levels, grid)
    for b, w in enumerate((0.25, 0.5)):
        osem_part = (plain[b] - (1 - w) * images[b]) / w
        k = contrast_kept_fraction(images[b], grid, 15.0, 0.5)
        e = osem_excess_fraction(images[b], osem_part, grid, 15.0, 0.5)
        assert float((e == (0 if b == 0 else 1)).float().mean()) > 0.5
        expected = (1 - w * (1 - k) * (1 - e)) * images[b] + w * (1 - k) * (1 - e) * osem_part
        assert torch.allclose(out[b], expected, rtol=1e-4, atol=1e-2)
        assert torch.allclose(out[b][e == 1], images[b][e == 1])
        assert torch.allclose(out[b][e == 0], two[b][e == 0], rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize(
    "config",
    [
        {"rows": BLEND_ROWS, "keep_contrast": [0.0, 0.5]},
        {"rows": BLEND_ROWS, "keep_contrast": [15.0, 0.5, 0.0]},
        {"rows": BLEND_ROWS, "keep_contrast": [15.0, 0.5, 0.5, 1.0]},
        {"rows": BLEND_ROWS, "keep_contrast": [15.0]},
        {"rows": []},
        {"rows": [[1, 6, 4.0]]},
        {"rows": [[1, 6, 4.0, 1.5]]},
        {"rows": [[0.5, 6, 4.0, 0.2]]},
        {"rows": [[1, 0, 4.0, 0.2]]},
        {"rows": BLEND_ROWS, "subsets": 0},
        {"rows": BLEND_ROWS, "weight": 0.2},
    ],
)
def test_osem_blend_rejects_bad_settings(config: dict) -> None:
    with pytest.raises(ValueError, match="osem_blend"):
        OSEMBlend.from_config(config)


def test_unrolled_em_blends_with_osem_in_eval_mode_only_and_export_sets_it(
    tmp_path, generator: torch.Generator
) -> None:
    """The blend comes after the final EM update, in eval mode only (with the network's
    7-subset initial OSEM, the blend's OSEM continues from it: the same image as from the
    uniform start); ``--blend FILE`` on a .safetensors keeps the weights; a bad file is exit 2."""
    from pet_dl.io.checkpoint import load_checkpoint, save_checkpoint
    from pet_dl.training.export import main as export_main

    grid, batch, small, _ = _small_network_case(generator)
    for init_subsets in (1, 7):
        ended = {**small, "final_em_steps": 1, "init_subsets": init_subsets}
        plain = build_model(ended)
        blended = build_model({**ended, "osem_blend": {"rows": BLEND_ROWS}})
        blended.load_state_dict(plain.state_dict())
        plain.eval()
        blended.eval()
        with torch.no_grad():
            x = plain(batch)
            expected = OSEMBlend.from_config({"rows": BLEND_ROWS})(
                x, batch.forward_model(), batch.prompts, plain.start(batch).dose, grid
            )
            assert torch.allclose(blended(batch), expected, rtol=1e-4, atol=1e-4)
            assert not torch.allclose(expected, x, rtol=1e-3, atol=1e-3)
            blended.train()
            plain.train()
            assert torch.allclose(blended(batch), plain(batch))
    src = save_checkpoint(tmp_path / "plain.safetensors", plain, ended, {"training_command": "fit"})
    out = tmp_path / "blended.safetensors"
    good = tmp_path / "blend.yaml"
    good.write_text("subsets: 7\nrows: [[1, 20, 4.0, 0.25], [20, 4, 6.0, 0.4]]\n")
    assert export_main([str(src), str(out), "--blend", str(good)]) == 0
    loaded = load_checkpoint(out, builder=build_model)
    assert loaded.model.osem_blend == OSEMBlend(((1.0, 20, 4.0, 0.25), (20.0, 4, 6.0, 0.4)), 7)
    for (name, a), b in zip(plain.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    bad = tmp_path / "bad.yaml"
    bad.write_text("rows: [[1, 6, 4.0, 2.0]]\n")
    assert export_main([str(src), str(tmp_path / "x.safetensors"), "--blend", str(bad)]) == 2
    assert not (tmp_path / "x.safetensors").exists()
