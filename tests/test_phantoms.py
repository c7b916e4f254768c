"""Phantoms: known uptake ratios, 511 keV mu values, NEMA sphere volumes, lesion labels, seeds,
phantoms resampled from given volumes (a real anatomy)."""

from __future__ import annotations

import math

import pytest
import torch

from pet_dl.geometry import ImageGeometry
from pet_dl.phantoms import (
    COLD_REGION_TISSUE,
    MU_BONE,
    MU_LUNG,
    MU_WATER,
    SPHERE_DIAMETERS_MM,
    Phantom,
    add_cold_regions,
    add_lesions,
    brain_phantom,
    image_phantom,
    make_phantom,
)
from pet_dl.phantoms.shapes import rasterize, sphere

BRAIN_2D = ImageGeometry.centered((100, 120, 1), 2.0)
TORSO_2D = ImageGeometry.centered((100, 72, 1), 4.0)
NEMA_2D = ImageGeometry.centered((160, 120, 1), 2.0)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("brain", BRAIN_2D),
        ("brain_folded", BRAIN_2D),
        ("brain_varied", BRAIN_2D),
        ("torso", TORSO_2D),
        ("nema", NEMA_2D),
    ],
)
def test_same_seed_same_phantom_and_different_seed_differs(name: str, image: ImageGeometry) -> None:
    a = make_phantom(name, image, _seeded(7))
    b = make_phantom(name, image, _seeded(7))
    c = make_phantom(name, image, _seeded(8))
    assert torch.equal(a.activity, b.activity) and torch.equal(a.mu, b.mu)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.activity, c.activity)
    assert a.activity.shape == image.shape and a.activity.dtype == torch.float32
    assert a.labels.dtype == torch.int64
    assert (a.activity >= 0).all() and (a.mu >= 0).all()
    assert a.seed == 7


def test_sphere_rasterisation_volume_is_exact_to_a_percent() -> None:
    # a 10 mm sphere off the voxel grid, 2 mm voxels
    frac = rasterize(
        sphere((1.3, -0.7, 0.4), 10.0), (16, 16, 16), (2.0, 2.0, 2.0), (-15.0, -15.0, -15.0), 4
    )
    volume = float(frac.sum()) * 8.0
    assert volume == pytest.approx(4.0 / 3.0 * math.pi * 5.0**3, rel=0.01)


def test_brain_grey_white_ratio_and_fdg_levels(generator: torch.Generator) -> None:
    p = make_phantom("brain", BRAIN_2D, generator)
    grey = p.activity[p.tissue == p.tissues["grey_matter"]].median()
    white = p.activity[p.tissue == p.tissues["white_matter"]].median()
    assert 3.4 < float(grey / white) < 4.6
    assert 10e3 < float(grey) < 20e3  # Bq/mL, FDG 370 MBq
    csf = p.activity[p.tissue == p.tissues["csf"]]
    assert float(torch.quantile(csf, 0.1)) < 0.1 * float(white)  # ventricles, pure CSF
    # skull is cortical bone, brain is water
    assert float(p.mu[p.tissue == p.tissues["skull"]].max()) == pytest.approx(MU_BONE, rel=1e-5)
    assert float(p.mu[p.tissue == p.tissues["white_matter"]].median()) == pytest.approx(
        MU_WATER, rel=1e-5
    )
    assert float(p.mu[0, 0, 0]) == 0.0 and float(p.activity[0, 0, 0]) == 0.0


def _thickest(mask: torch.Tensor) -> int:
    """Erosions by a 3 x 3 square a 2D mask survives (about half its thickness, in voxels)."""
    m = mask.float()[None, None]
    n = 0
    while m.sum() > 0:
        m = -torch.nn.functional.max_pool2d(-m, 3, stride=1, padding=1)
        n += 1
    return n - 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_folded_cortex_is_a_thin_ribbon_around_white_gyri(seed: int) -> None:
    image = ImageGeometry.centered((200, 230, 1), 1.0)
    smooth = make_phantom("brain", image, _seeded(seed))
    folded = make_phantom("brain_folded", image, _seeded(seed))
    assert folded.name == "brain_folded" and set(folded.tissues) == set(smooth.tissues)
    # same head, same uptakes: only the cortex differs
    for tissue in ("scalp", "skull", "grey_matter", "white_matter"):
        a = smooth.activity[smooth.tissue == smooth.tissues[tissue]].median()
        b = folded.activity[folded.tissue == folded.tissues[tissue]].median()
        assert float(b) == pytest.approx(float(a), rel=1e-4)
    r_smooth, r_folded = (
        p.tissue[..., 0] == p.tissues["grey_matter"] for p in (smooth, folded)
    )
    # the smooth grey ring is about 10 mm thick; the folded ribbon 2.5-3.5 mm, two back to
    # back where a gyrus has no white core: nothing thicker than 8 mm
    assert _thickest(r_smooth) >= 4
    assert _thickest(r_folded) <= 3
    # white matter comes within 7 mm of the skull's inner surface (2 mm of CSF, a ribbon,
    # partial volumes) in the gyri; the smooth brain's white ellipsoid stays farther away
    k = torch.arange(-7, 8, dtype=torch.float32)
    disc = ((k[:, None] ** 2 + k[None, :] ** 2) <= 49).float()[None, None]

    def near_skull(p):  # noqa: ANN001, ANN202
        skull = (p.tissue[..., 0] == p.tissues["skull"]).float()[None, None]
        return torch.nn.functional.conv2d(skull, disc, padding=7)[0, 0] > 0

    for p, reaches in ((folded, True), (smooth, False)):
        white = p.tissue[..., 0] == p.tissues["white_matter"]
        assert bool((white & near_skull(p)).any()) == reaches
    # lesions go into the folded brain like into the smooth one
    with_lesions = add_lesions(folded, 3, (8.0, 12.0), 4.0, _seeded(seed))
    assert len(with_lesions.lesions) == 3


def test_torso_organs_mu_and_uptake(generator: torch.Generator) -> None:
    p = make_phantom("torso", TORSO_2D, generator)
    present = {name for name, tid in p.tissues.items() if (p.tissue == tid).any()}
    assert {"lung", "liver", "myocardium", "marrow", "fat", "soft_tissue"} <= present
    lung = p.tissue == p.tissues["lung"]
    assert float(p.mu[lung].median()) == pytest.approx(MU_LUNG, rel=1e-5)
    med = {
        t: float(p.activity[p.tissue == p.tissues[t]].median())
        for t in ("liver", "soft_tissue", "lung")
    }
    assert med["liver"] > 1.5 * med["soft_tissue"] > med["lung"]
    pelvis = make_phantom("torso", TORSO_2D, _seeded(3), bed_offset_mm=-400.0)
    bladder = pelvis.tissue == pelvis.tissues["bladder"]
    assert bladder.any() and float(pelvis.activity[bladder].median()) > 4 * med["liver"]


def test_nema_2d_spheres_cut_through_centres_at_four_to_one(generator: torch.Generator) -> None:
    p = make_phantom("nema", NEMA_2D, generator)
    assert [les.diameter_mm for les in p.lesions] == list(SPHERE_DIAMETERS_MM)
    bg = p.extra["background_bqml"]
    assert 0.9 * 5300 <= bg <= 1.1 * 5300
    area_vox = 4.0  # mm^2 per 2 mm pixel
    for les in p.lesions:
        assert les.activity_bqml == pytest.approx(4.0 * les.background_bqml, rel=1e-9)
        # activity above background inside the slice gives the sphere's central disc area
        excess = (p.activity.double() - bg).clamp_min(0.0)
        near = _near(NEMA_2D, les.centre_mm, les.diameter_mm / 2 + 4)
        area = float(excess[near].sum()) / (les.activity_bqml - bg) * area_vox
        assert area == pytest.approx(math.pi * (les.diameter_mm / 2) ** 2, rel=0.02)
        # the label centroid sits at the sphere centre
        assert _centroid(NEMA_2D, p.labels == les.label)[:2] == pytest.approx(
            les.centre_mm[:2], abs=0.3
        )
    insert = p.tissue == p.tissues["lung_insert"]
    assert float(p.mu[insert].median()) == pytest.approx(MU_LUNG, rel=1e-5)
    assert float(p.activity[insert].max()) < 0.5 * bg


def test_nema_3d_sphere_volumes() -> None:
    image = ImageGeometry.centered((80, 60, 14), 4.0)
    p = make_phantom("nema", image, _seeded(1))
    bg = p.extra["background_bqml"]
    excess = (p.activity.double() - bg).clamp_min(0.0)
    for les in p.lesions:
        near = _near(image, les.centre_mm, les.diameter_mm / 2 + 6)
        volume = float(excess[near].sum()) / (les.activity_bqml - bg) * 64.0
        expected = 4.0 / 3.0 * math.pi * (les.diameter_mm / 2) ** 3
        assert volume == pytest.approx(expected, rel=0.02), les.name
        weights = excess * near
        centroid = (_coords(image) * weights[..., None]).sum(dim=(0, 1, 2)) / weights.sum()
        assert centroid.tolist() == pytest.approx(les.centre_mm, abs=0.1)
        # the label mask (voxels at least half inside) is centred within half a voxel
        assert _centroid(image, p.labels == les.label) == pytest.approx(les.centre_mm, abs=2.0)


def test_lesions_known_activity_labels_and_ranges(generator: torch.Generator) -> None:
    base = make_phantom("brain", BRAIN_2D, _seeded(5))
    p = add_lesions(base, 4, (6.0, 14.0), (3.0, 5.0), generator)
    assert torch.equal(base.labels, torch.zeros_like(base.labels))  # input untouched
    assert [les.label for les in p.lesions] == [1, 2, 3, 4]
    assert set(torch.unique(p.labels).tolist()) == {0, 1, 2, 3, 4}
    allowed = {base.tissues[t] for t in ("grey_matter", "white_matter", "deep_grey", "cerebellum")}
    for les in p.lesions:
        assert 6.0 <= les.diameter_mm <= 14.0 and 3.0 <= les.contrast <= 5.0
        mask = p.labels == les.label
        assert _centroid(BRAIN_2D, mask)[:2] == pytest.approx(les.centre_mm[:2], abs=0.5)
        assert float(p.activity[mask].max()) == pytest.approx(les.activity_bqml, rel=1e-5)
        assert set(torch.unique(base.tissue[mask]).tolist()) <= allowed
    q = add_lesions(base, 4, (6.0, 14.0), (3.0, 5.0), _seeded(1234))
    assert torch.equal(p.activity, q.activity)  # same seed, same lesions


def test_bad_input_is_refused(generator: torch.Generator) -> None:
    with pytest.raises(ValueError, match="unknown phantom"):
        make_phantom("liver", BRAIN_2D, generator)
    with pytest.raises(ValueError, match="torso phantom needs"):
        make_phantom("torso", ImageGeometry.centered((64, 64, 1), 2.0), generator)
    with pytest.raises(TypeError, match="Generator"):
        make_phantom("brain", BRAIN_2D, 3)  # type: ignore[arg-type]
    base = make_phantom("nema", NEMA_2D, generator)
    with pytest.raises(ValueError, match="could place only"):
        add_lesions(base, 50, (60.0, 80.0), 4.0, generator, max_attempts=50)
    with pytest.raises(ValueError, match="diameter range"):
        add_lesions(base, 1, (10.0, 5.0), 4.0, generator)


def _coords(image: ImageGeometry) -> torch.Tensor:
    axes = [torch.as_tensor(image.voxel_centers(k), dtype=torch.float64) for k in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def _near(image: ImageGeometry, centre: tuple[float, float, float], radius: float) -> torch.Tensor:
    d = _coords(image) - torch.tensor(centre, dtype=torch.float64)
    return torch.linalg.vector_norm(d, dim=-1) <= radius


def _centroid(image: ImageGeometry, mask: torch.Tensor) -> list[float]:
    assert mask.any()
    return _coords(image)[mask].mean(dim=0).tolist()


# ----------------------------------------------------------------------------- from volumes
def _disc_volume() -> tuple[torch.Tensor, torch.Tensor, ImageGeometry]:
    """A 1 mm grid of 5 planes 4 mm apart; plane k holds a disc of radius 30 mm at k + 1."""
    source = ImageGeometry.centered((121, 121, 5), (1.0, 1.0, 4.0))
    x = torch.as_tensor(source.voxel_centers(0))
    inside = (x[:, None] ** 2 + x[None, :] ** 2 <= 30.0**2).float()
    activity = torch.stack([inside * (k + 1) for k in range(5)], dim=-1)
    return activity, inside[..., None].expand(-1, -1, 5) * MU_WATER, source


def test_image_phantom_keeps_the_activity_integral_and_picks_the_plane() -> None:
    activity, mu, source = _disc_volume()
    image = ImageGeometry.centered((40, 40, 1), 2.6)
    for k in (0, 3):  # plane k is at z = (k - 2) * 4 mm
        p = image_phantom(activity, mu, source, image, z_mm=(k - 2) * 4.0, activity_scale=1000.0)
        # box-filtered to 2.6 mm voxels: the disc's integral (pi 30^2 mm^2 x level) is kept
        integral = float(p.activity.sum()) * 2.6**2
        assert integral == pytest.approx(math.pi * 30.0**2 * (k + 1) * 1000.0, rel=0.02)
        assert float(p.activity.max()) == pytest.approx((k + 1) * 1000.0, rel=1e-4)
        assert float(p.mu.max()) == pytest.approx(MU_WATER, rel=1e-4)
    # half-way between planes 1 and 2 the levels blend linearly
    mid = image_phantom(activity, mu, source, image, z_mm=-2.0)
    assert float(mid.activity.max()) == pytest.approx(2.5, rel=1e-4)


def test_image_phantom_tissue_classes_and_lesions_in_one_of_them(generator: torch.Generator) -> None:
    activity, mu, source = _disc_volume()
    x = torch.as_tensor(source.voxel_centers(0))
    core = (x[:, None] ** 2 + x[None, :] ** 2 <= 18.0**2).float()[..., None]
    activity = activity * (0.25 + 0.75 * core)  # a cold rim 12 mm wide around a hot core
    image = ImageGeometry.centered((40, 40, 1), 2.0)
    p = image_phantom(activity, mu, source, image, tissue_levels={"rim": 0.0, "core": 0.5})
    assert p.tissues == {"air": 0, "rim": 1, "core": 2}
    r = torch.hypot(*torch.meshgrid(*(torch.as_tensor(image.voxel_centers(a)) for a in (0, 1)), indexing="ij"))
    tissue = p.tissue[..., 0]
    assert bool((tissue[r < 16] == 2).all()) and bool((tissue[(r > 20) & (r < 28)] == 1).all())
    assert bool((tissue[r > 32] == 0).all())
    with_lesions = add_lesions(p, 3, (6.0, 8.0), 4.0, generator, tissues=("core",))
    assert len(with_lesions.lesions) == 3
    assert bool((r[with_lesions.labels[..., 0] > 0] < 18.0).all())  # every lesion voxel in the core


def test_image_phantom_refuses_bad_input() -> None:
    activity, mu, source = _disc_volume()
    image = ImageGeometry.centered((40, 40, 1), 2.6)
    with pytest.raises(ValueError, match="shape"):
        image_phantom(activity[:-1], mu, source, image)
    with pytest.raises(ValueError, match="negative"):
        image_phantom(-activity, mu, source, image)
    with pytest.raises(ValueError, match="ascend"):
        image_phantom(activity, mu, source, image, tissue_levels={"a": 0.5, "b": 0.2})
    with pytest.raises(ValueError, match="no activity"):
        image_phantom(activity, mu, source, image, z_mm=100.0)


def test_uptake_field_scales_only_the_brain_and_is_smooth() -> None:
    image = ImageGeometry.centered((200, 230, 1), 1.0)
    uniform_uptake = brain_phantom(image, _seeded(5))
    varied = brain_phantom(image, _seeded(5), heterogeneity=0.2)
    brain = torch.zeros_like(varied.tissue, dtype=torch.bool)
    for name in ("grey_matter", "white_matter", "deep_grey", "cerebellum"):
        if name in varied.tissues:
            brain |= varied.tissue == varied.tissues[name]
    # the field is drawn after the anatomy: same tissues, same activity outside the brain
    assert torch.equal(varied.tissue, uniform_uptake.tissue)
    assert torch.equal(varied.activity[~brain], uniform_uptake.activity[~brain])
    gain = varied.activity[brain] / uniform_uptake.activity[brain]
    assert float(gain.min()) >= 0.5 - 1e-6 and float(gain.max()) <= 1.5 + 1e-6
    assert 0.08 < float(gain.std()) < 0.35  # about the asked 20 %
    # smooth: the gain map changes by little from one 1 mm voxel to the next
    full_gain = torch.where(brain, varied.activity / uniform_uptake.activity.clamp_min(1e-9), 0.0)
    both = brain[1:, :, 0] & brain[:-1, :, 0]
    step = (full_gain[1:, :, 0] - full_gain[:-1, :, 0]).abs()[both]
    assert float(step.quantile(0.99)) < 0.05


def test_varied_brains_vary_cortex_and_grey_white_ratio() -> None:
    ratios, folded = [], []
    for seed in range(12):
        p = make_phantom("brain_varied", BRAIN_2D, _seeded(seed))
        assert p.name == "brain_varied"
        grey = p.activity[p.tissue == p.tissues["grey_matter"]].median()
        white = p.activity[p.tissue == p.tissues["white_matter"]].median()
        ratios.append(float(grey / white))
        folded.append(p.extra["folded"])
    assert min(ratios) < 3.2 and max(ratios) > 4.0  # the plain brain keeps 3.6-4.4
    assert 0 < sum(folded) < 12  # both cortices occur


def test_bad_heterogeneity_is_refused() -> None:
    with pytest.raises(ValueError, match="heterogeneity"):
        brain_phantom(BRAIN_2D, _seeded(1), heterogeneity=0.8)


def test_torso_window_is_a_body_cut_to_the_brain_grid() -> None:
    # a window of a torso as wide as a 250 mm brain grid: the body fills it from edge to edge
    # (torsos are 306-380 mm wide), its tissues and mu are the torso's, seeds differ
    from pet_dl.phantoms import MU_LUNG, MU_SOFT_TISSUE, make_phantom, torso_phantom

    grid = ImageGeometry.centered((96, 96, 1), (2.6, 2.6, 2.6))
    sums = set()
    for seed in range(6):
        p = make_phantom("torso_window", grid, torch.Generator().manual_seed(seed))
        assert p.name == "torso_window" and p.image == grid and p.activity.shape == (96, 96, 1)
        body = p.activity[..., 0] > 0
        assert bool(body[0].any()) and bool(body[-1].any())  # cut at both sides: a window
        assert float(body.float().mean()) > 0.6
        assert set(p.tissues) >= {"soft_tissue", "lung", "liver"}
        lung = p.tissue[..., 0] == p.tissues["lung"]
        if bool(lung.any()):  # the lungs' mu, below soft tissue's
            assert float(p.mu[..., 0][lung].median()) == pytest.approx(MU_LUNG, rel=0.05)
        assert float(p.mu.max()) >= MU_SOFT_TISSUE
        assert -200.0 <= p.extra["bed_offset_mm"] <= 150.0
        sums.add(round(float(p.activity.sum())))
    assert len(sums) == 6
    # reproducible per seed; the whole torso does not fit the grid, the window does
    p = make_phantom("torso_window", grid, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(p.activity, make_phantom("torso_window", grid, g).activity)
    with pytest.raises(ValueError, match="torso phantom needs"):
        torso_phantom(grid, torch.Generator().manual_seed(0))


def test_texture_field_is_standardised_with_the_gaussian_autocorrelation() -> None:
    """Blurred white noise: unit variance, and the correlation at lag ``d`` voxels is
    ``exp(-d^2 / (4 s^2))`` for a Gaussian of ``s`` voxels (the blur's autocorrelation)."""
    from pet_dl.phantoms.texture import texture_field

    g = torch.Generator().manual_seed(3)
    s_vox, voxel = 2.0, 2.5
    field = texture_field((256, 256, 1), (voxel, voxel, voxel), s_vox * voxel, g)[:, :, 0]
    assert abs(float(field.mean())) < 1e-9 and abs(float(field.std()) - 1.0) < 1e-9
    inner = field[20:-20, 20:-20]  # away from the reflected borders
    for lag in (1, 2, 4, 6):
        a, b = inner[:, :-lag].flatten(), inner[:, lag:].flatten()
        corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
        assert corr == pytest.approx(math.exp(-lag**2 / (4 * s_vox**2)), abs=0.05), lag


def test_texture_keeps_zero_mu_labels_and_the_mean_uptake_of_a_flat_region() -> None:
    from pet_dl.phantoms import image_phantom
    from pet_dl.phantoms.texture import add_texture

    image = ImageGeometry.centered((96, 96, 1), 2.6)
    activity = torch.zeros(96, 96, 1)
    activity[16:80, 16:80] = 1000.0
    flat = image_phantom(activity, torch.where(activity > 0, 0.0096, 0.0), image, image)
    textured = add_texture(flat, torch.Generator().manual_seed(0), (0.3, 0.3), (4.0, 4.0))
    inside = activity > 0
    assert torch.equal(textured.mu, flat.mu) and torch.equal(textured.labels, flat.labels)
    assert torch.all(textured.activity[~inside] == 0)
    rel = textured.activity[inside] / 1000.0
    assert float(rel.mean()) == pytest.approx(1.0, abs=0.03)  # E[1 + a n] = 1
    assert 0.2 < float(rel.std()) < 0.32  # about a (the blurred field over this region)
    assert textured.extra["texture_amplitude"] == 0.3
    same = add_texture(flat, torch.Generator().manual_seed(0), (0.3, 0.3), (4.0, 4.0))
    assert torch.equal(same.activity, textured.activity)
    none = add_texture(flat, torch.Generator().manual_seed(0), (0.0, 0.0), (4.0, 4.0))
    assert torch.equal(none.activity, flat.activity)
    with pytest.raises(ValueError, match="amplitude"):
        add_texture(flat, torch.Generator(), (0.3, 0.1), (4.0, 4.0))
    with pytest.raises(ValueError, match="correlation"):
        add_texture(flat, torch.Generator(), (0.1, 0.3), (0.0, 4.0))


def test_texture_blur_softens_edges_and_keeps_the_total_activity() -> None:
    """The soft-edge option: the blurred step's 10-90 % rise is 2.56 sigma wide (a
    Gaussian's), and the total activity of an object inside the grid is kept."""
    from pet_dl.forward_model import FWHM_PER_SIGMA
    from pet_dl.phantoms import image_phantom
    from pet_dl.phantoms.texture import add_texture

    image = ImageGeometry.centered((128, 128, 1), 1.0)
    activity = torch.zeros(128, 128, 1)
    activity[32:96, 32:96] = 1000.0
    flat = image_phantom(activity, torch.where(activity > 0, 0.0096, 0.0), image, image)
    soft = add_texture(flat, torch.Generator().manual_seed(1), (0.0, 0.0), (2.0, 2.0), (8.0, 8.0))
    assert float(soft.activity.sum()) == pytest.approx(float(flat.activity.sum()), rel=1e-5)
    profile = soft.activity[:, 64, 0] / 1000.0
    rise = torch.nonzero((profile > 0.1) & (profile < 0.9) & (torch.arange(128) < 64)).flatten()
    assert len(rise) == pytest.approx(2.563 * 8.0 / FWHM_PER_SIGMA, abs=1.0)
    assert soft.extra["texture_blur_fwhm_mm"] == 8.0
    sharp = add_texture(flat, torch.Generator().manual_seed(1), (0.0, 0.0), (2.0, 2.0))
    assert torch.equal(sharp.activity, flat.activity) and "texture_blur_fwhm_mm" not in sharp.extra


def test_torso_arms_are_separate_objects_beside_the_same_body() -> None:
    # the arms down at the sides: the same seed paints the same torso, and each arm is an
    # object of its own (air between it and the body along the row through its centre),
    # within ARMS_REACH_MM of the axis, with the humerus as bone
    from pet_dl.phantoms import MU_BONE
    from pet_dl.phantoms.torso import ARMS_REACH_MM

    grid = ImageGeometry.centered((216, 216, 1), (2.6, 2.6, 2.6))
    for seed in range(3):
        plain = make_phantom("torso", grid, _seeded(seed))
        armed = make_phantom("torso_arms", grid, _seeded(seed))
        body = plain.mu[..., 0] > 0
        assert torch.equal(armed.activity[..., 0][body], plain.activity[..., 0][body])
        arms = (armed.mu[..., 0] > 0) & ~body
        x = float(grid.origin_mm[0]) + 2.6 * torch.arange(216)  # voxel centres, mm
        body_cols = torch.nonzero(body.any(1)).flatten()
        arm_cols = torch.nonzero(arms.any(1)).flatten()
        left, right = arm_cols[arm_cols < body_cols.min()], arm_cols[arm_cols > body_cols.max()]
        assert len(left) > 20 and len(right) > 20  # 70-100 mm wide at 2.6 mm
        assert float(x[int(right.max())]) <= ARMS_REACH_MM + 2.6 and float(x[int(left.min())]) >= -ARMS_REACH_MM - 2.6
        assert int(left.max()) < int(body_cols.min()) - 1 and int(right.min()) > int(body_cols.max()) + 1
        assert bool((armed.tissue == armed.tissues["arm_cortex"]).any())
        assert float(armed.mu[armed.tissue == armed.tissues["arm_cortex"]].max()) == pytest.approx(MU_BONE, rel=1e-5)
    with pytest.raises(ValueError, match="torso with arms"):
        make_phantom("torso_arms", ImageGeometry.centered((192, 192, 1), (2.6, 2.6, 2.6)), _seeded(0))


def test_neck_arms_are_three_objects_far_apart_on_a_mostly_empty_grid() -> None:
    # the neck with the arms raised: three objects with air between them along every row,
    # spanning 320-550 mm within ARMS_REACH_MM, filling under a tenth of a 582 mm grid;
    # the same seed gives the same scene; FLT's marrow and blood factors apply to it
    from pet_dl.phantoms.torso import ARMS_REACH_MM
    from pet_dl.recipes import with_uptake

    grid = ImageGeometry.centered((224, 224, 1), (2.6, 2.6, 2.6))
    x = float(grid.origin_mm[0]) + 2.6 * torch.arange(224)  # voxel centres, mm
    widths = []
    for seed in range(6):
        neck = make_phantom("neck_arms", grid, _seeded(seed))
        body = neck.mu[..., 0] > 0
        cols = body.any(1).int()
        starts = torch.nonzero(cols[1:] - cols[:-1] == 1).flatten()
        assert len(starts) == 3 and int(cols[0]) == 0  # three objects, air between them
        filled = torch.nonzero(cols).flatten()
        widths.append(float(x[int(filled.max())] - x[int(filled.min())]) + 2.6)
        assert float(x[int(filled.max())]) <= ARMS_REACH_MM + 2.6 and float(x[int(filled.min())]) >= -ARMS_REACH_MM - 2.6
        assert float(body.float().mean()) < 0.1
        for tissue in ("thyroid", "trachea", "marrow", "arm_cortex"):
            assert bool((neck.tissue == neck.tissues[tissue]).any()), tissue
        assert torch.equal(neck.activity, make_phantom("neck_arms", grid, _seeded(seed)).activity)
        flt = with_uptake(neck, {"marrow": 6.0, "blood": 0.6})
        marrow = neck.tissue == neck.tissues["marrow"]
        assert torch.allclose(flt.activity[marrow], 6.0 * neck.activity[marrow])
    assert min(widths) >= 300.0 and max(widths) <= 2 * ARMS_REACH_MM + 5.2 and max(widths) - min(widths) > 60.0
    with pytest.raises(ValueError, match="neck with arms"):
        make_phantom("neck_arms", ImageGeometry.centered((192, 192, 1), (2.6, 2.6, 2.6)), _seeded(0))


def _warm_disc() -> tuple[Phantom, ImageGeometry]:
    """A uniform warm disc (1000 Bq/mL, water's mu) 180 mm across on a 2 mm 2D grid."""
    image = ImageGeometry.centered((100, 100, 1), 2.0)
    inside = rasterize(sphere((0.0, 0.0, 0.0), 180.0), tuple(image.shape), (2.0, 2.0, 2.0),
                       tuple(image.origin_mm), 4).to(torch.float32)
    return image_phantom(1000.0 * inside, MU_WATER * inside, image, image, tissue_levels={"body": 0.5}), image


@pytest.mark.parametrize("lung", [0.0, 1.0])
def test_cold_regions_remove_exactly_their_activity_and_set_lung_mu(lung: float) -> None:
    disc, image = _warm_disc()
    out = add_cold_regions(disc, 2, (20.0, 40.0), (0.0, 0.0), lung, _seeded(3), tissues=("body",))
    region = out.tissue == out.tissues[COLD_REGION_TISSUE]
    assert int(region.sum()) > 2 * math.pi * 10**2 / 4 * 0.8  # two discs of >= 20 mm on 2 mm voxels
    # each voxel keeps the part of it outside the regions: never more, all of it away from them
    assert torch.all(out.activity <= disc.activity)
    assert torch.all(out.activity[region] <= 500.0)  # a region's voxel is at least half inside
    assert int((out.activity[region] == 0).sum()) > 0.5 * int(region.sum())
    near = torch.nn.functional.max_pool2d(region[None, None, :, :, 0].float(), 3, 1, 1)[0, 0, :, :, None] > 0
    assert torch.equal(out.activity[~near], disc.activity[~near])
    mu_inside = out.mu[region & (out.activity == 0)]
    assert torch.allclose(mu_inside, torch.full_like(mu_inside, MU_LUNG if lung else MU_WATER))
    assert torch.equal(out.labels, disc.labels) and out.lesions == disc.lesions  # background, not lesions
    assert torch.equal(disc.activity, _warm_disc()[0].activity)  # the input is not modified


def test_cold_regions_stay_inside_the_body_and_lesions_keep_out_of_them() -> None:
    from pet_dl.recipes import load_recipe, phantom_of_seed

    recipe = load_recipe({
        "scanner": "mmr", "image": {"shape": [100, 72, 1], "voxel_size_mm": [4.0, 4.0, 4.0]},
        "phantom": "torso", "splits": {"train": {"seeds": [0, 10]}},
        "lesions": {"count": [3, 3], "diameter_range_mm": [8.0, 16.0], "contrast": [2.0, 4.0], "allow_fewer": True},
        "cold_regions": {"count": [2, 2], "diameter_range_mm": [15.0, 30.0], "activity_fraction": [0.0, 0.05]},
    })
    plain = dict(recipe)
    del plain["cold_regions"]
    seen = 0
    for seed in range(4):
        p = phantom_of_seed(recipe, seed)
        region = p.tissue == p.tissues.get(COLD_REGION_TISSUE, -1)
        seen += int(region.any())
        background = phantom_of_seed(plain, seed)
        assert not torch.any(region & (background.activity == 0))  # never outside the body
        assert not torch.any(region & (p.labels > 0))  # no lesion inside a cold region
        assert torch.equal(p.activity, phantom_of_seed(recipe, seed).activity)  # deterministic
        assert float(p.activity[region & (background.activity > 0)].mean()) < 0.3 * float(background.activity[region].mean())
    assert seen == 4


@pytest.mark.parametrize("spec", [
    {"diameter_range_mm": [10, 20]},  # no count
    {"count": [2, 1]},
    {"count": [0, 2], "shape": "cube"},
    {"count": [0, 2], "activity_fraction": 0.1},
    {"count": [0, 2], "lung_probability": 1.5},
])
def test_bad_cold_regions_in_a_recipe_are_refused(spec: dict) -> None:
    from pet_dl.recipes import load_recipe

    with pytest.raises(ValueError, match="cold_regions"):
        load_recipe({"scanner": "mmr", "image": {"shape": [8, 8, 1]}, "phantom": "torso",
                     "splits": {"train": {"seeds": [0, 2]}}, "cold_regions": spec})
