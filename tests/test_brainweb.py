"""BrainWeb phantoms (real anatomy), recipes split by subject, and count-level conditioning."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pet_dl.geometry import ImageGeometry
from pet_dl.models.blocks import count_density, count_level
from pet_dl.phantoms import MU_BONE, make_phantom
from pet_dl.phantoms.brainweb import (
    GREY_WHITE_RANGE,
    LABEL_VOXEL_MM,
    TISSUE_NAMES,
    brainweb_labels,
    brainweb_phantom,
)
from pet_dl.recipes import load_recipe, phantom_of_seed, recipe_subjects, subject_of_seed

SLICE = ImageGeometry.centered((96, 96, 1), (2.6, 2.6, 2.6))


@pytest.fixture
def brainweb(test_data, monkeypatch, tmp_path_factory):
    """The shared BrainWeb folder; label caches in a temporary folder shared by the tests."""
    monkeypatch.setenv("PET_DL_BRAINWEB", str(test_data / "brainweb"))
    cache = os.environ.get("PET_DL_CACHE") or str(tmp_path_factory.getbasetemp() / "cache")
    monkeypatch.setenv("PET_DL_CACHE", cache)
    return test_data / "brainweb"


def test_labels_are_in_world_order(brainweb):
    labels, origin = brainweb_labels("04")
    # MINC stores (z, y, x); the cache holds axis k = world axis k: 181 x 217 x 181 mm.
    assert labels.shape == (362, 434, 362)
    assert labels.dtype == np.uint8 and int(labels.max()) == len(TISSUE_NAMES) - 1
    np.testing.assert_allclose(origin, [-90.25, -126.25, -72.25])
    # +z is superior: the skull closes above the highest white matter (the vertex).
    wm_z = np.nonzero((labels[::4, ::4, :] == 3).any(axis=(0, 1)))[0]
    skull_z = np.nonzero((labels[::4, ::4, :] == 7).any(axis=(0, 1)))[0]
    assert wm_z[-1] > labels.shape[2] // 2 and skull_z[-1] > wm_z[-1] + 4


def test_slice_keeps_tissue_areas_and_values(brainweb):
    """Unposed slice: grey-matter area equals the labels' area in the same slab (partial volumes)."""
    g = torch.Generator().manual_seed(3)
    p = brainweb_phantom(SLICE, g, subject="05", pose=False, slice_position=0.6)
    labels, origin = brainweb_labels("05")
    # The slab of labels that the slice's sub-samples read (the grid's centre plane).
    z_mm = p.extra["slice_position"]
    wm_z = np.nonzero(np.isin(labels[::4, ::4, :], (2, 3)).any(axis=(0, 1)))[0]
    z_lo, z_hi = origin[2] + LABEL_VOXEL_MM * wm_z[0], origin[2] + LABEL_VOXEL_MM * wm_z[-1]
    centre = z_lo + z_mm * (z_hi - z_lo)
    k0 = int(round((centre - 1.3 - origin[2]) / LABEL_VOXEL_MM))
    k1 = int(round((centre + 1.3 - origin[2]) / LABEL_VOXEL_MM))
    slab_gm_mm2 = float((labels[:, :, k0:k1] == 2).sum()) * LABEL_VOXEL_MM**2 / (k1 - k0)
    gm = p.tissue == TISSUE_NAMES.index("grey_matter")
    assert abs(float(gm.sum()) * 2.6**2 / slab_gm_mm2 - 1.0) < 0.1
    # Pure voxels: skull is bone, the grey:white ratio is the drawn one (up to the field).
    skull = p.tissue == TISSUE_NAMES.index("skull")
    assert torch.isclose(p.mu[skull].max(), torch.tensor(MU_BONE))
    ratio = float(p.activity[gm].median() / p.activity[p.tissue == 3].median())
    assert GREY_WHITE_RANGE[0] * 0.7 < ratio < GREY_WHITE_RANGE[1] * 1.3
    assert abs(ratio / p.extra["grey_white_ratio"] - 1.0) < 0.3
    assert float(p.activity.min()) >= 0.0 and p.lesions == ()


def test_seed_draws_pose_slice_and_uptake(brainweb):
    a = make_phantom("brainweb", SLICE, torch.Generator().manual_seed(1), subject="06")
    b = make_phantom("brainweb", SLICE, torch.Generator().manual_seed(1), subject="06")
    c = make_phantom("brainweb", SLICE, torch.Generator().manual_seed(2), subject="06")
    assert torch.equal(a.activity, b.activity) and torch.equal(a.mu, b.mu)
    assert not torch.equal(a.activity, c.activity)
    assert a.extra != c.extra
    with pytest.raises(ValueError, match="unknown BrainWeb subject"):
        brainweb_phantom(SLICE, torch.Generator(), subject="99")


def test_slab_is_3d(brainweb):
    slab = ImageGeometry.centered((48, 48, 6), (5.0, 5.0, 5.0))
    p = brainweb_phantom(slab, torch.Generator().manual_seed(0), subject="18", slice_position=0.5)
    per_plane = p.activity.sum(dim=(0, 1))
    assert per_plane.shape == (6,) and bool((per_plane > 0).all())
    assert not torch.allclose(per_plane[0], per_plane[-1])  # planes differ along the head


def test_recipe_splits_by_subject(brainweb):
    recipe = load_recipe("data/brainweb2d.yaml")
    train, val, test = (set(recipe_subjects(recipe, s)) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert "04" in test  # the SIRF brain's anatomy is never trained on
    assert len(train | val | test) == 20
    lo = recipe["splits"]["test"]["seeds"][0]
    assert [subject_of_seed(recipe, lo + k) for k in range(4)] == recipe_subjects(recipe, "test")
    p = phantom_of_seed(recipe, lo)
    assert p.name == "brainweb" and p.activity.shape == (96, 96, 1)
    # Lesions are hot or cold, inside grey or white matter.
    contrasts = [
        les.contrast for s in range(lo, lo + 12) for les in phantom_of_seed(recipe, s).lesions
    ]
    assert min(contrasts) < 1.0 < max(contrasts)
    with pytest.raises(ValueError, match="in no split"):
        subject_of_seed(recipe, 50_000)


def test_a_subject_in_two_splits_is_refused():
    recipe = {
        "scanner": "mmr", "image": {"shape": [8, 8, 1], "voxel_size_mm": [4, 4, 4]},
        "phantom": "brainweb",
        "splits": {"train": {"seeds": [0, 4], "subjects": ["04", "05"]},
                   "test": {"seeds": [10, 12], "subjects": ["05"]}},
    }
    with pytest.raises(ValueError, match="subject '05'"):
        load_recipe(recipe)
    recipe["splits"]["test"] = {"seeds": [10, 12]}
    with pytest.raises(ValueError, match="every split names its subjects"):
        load_recipe(recipe)


def test_count_level_follows_the_counts(generator):
    """Thinned scans of one phantom: the measured level scales with the kept fraction."""
    from pet_dl.datasets import simulate_phantom

    recipe = load_recipe("data/tiny.yaml")
    arrays, scans = simulate_phantom(recipe, 0)
    prompts = torch.stack([s["prompts"] for s in scans])
    additive = torch.stack([s["additive"] for s in scans])
    initial = torch.stack([s["initial"] for s in scans])
    fractions = torch.stack([s["dose_fraction"] for s in scans])
    density = count_density(prompts, additive, initial, (7.0, 7.0, 7.0))
    # Normalised by the first scan's, the density is the dose ratio: counts scale, the
    # object's measured volume does not.
    ratio = (density / density[0]) / (fractions / fractions[0])
    assert torch.allclose(ratio, torch.ones_like(ratio), rtol=0.15), ratio
    level = count_level(prompts, additive, initial, (7.0, 7.0, 7.0), float(density[0] / fractions[0]))
    assert torch.allclose(level, fractions, rtol=0.15)
    with pytest.raises(ValueError):
        count_level(prompts, additive, initial, (7.0, 7.0, 7.0), 0.0)


def test_a_noise_spike_does_not_set_the_count_level(generator):
    """A low-count OSEM on a large grid can hold one hot voxel. With the plain maximum as the
    support's peak, one voxel of 2000 x the body shrinks the support to itself and the level
    jumps 400-fold (a whole ACRIN slice at 1/50 read 94 x its dose, and the network painted
    20 false hot spots); capped at SPIKE_CAP x the despiked image's peak it stays within
    10 % (here 5 %: the cap lets a spike raise the peak 1.5-fold). An image without spikes
    keeps exactly the level it had."""
    from pet_dl.models.blocks import SPIKE_CAP

    x = torch.linspace(-1, 1, 160)
    body = ((x[:, None] / 0.9) ** 2 + (x[None, :] / 0.6) ** 2 < 1).float()
    marrow = ((x[:, None] ** 2 + (x[None, :] + 0.3) ** 2) < 0.01).float()
    image = (body * (1.0 + 0.2 * torch.rand(160, 160, generator=generator)) + 5.0 * marrow)[None, ..., None]
    prompts, additive = torch.full((1, 10), 1e4), torch.zeros(1, 10)
    voxel = (2.6, 2.6, 2.6)
    clean = count_density(prompts, additive, image, voxel)
    assert float(clean) == float(count_density(prompts, additive, image, voxel, spike_cap=None))
    spiked = image.clone()
    spiked[0, 40, 80, 0] = 2000.0  # one hot voxel inside the body
    plain = count_density(prompts, additive, spiked, voxel, spike_cap=None)
    capped = count_density(prompts, additive, spiked, voxel)
    assert float(plain / clean) > 10.0, float(plain / clean)
    assert abs(float(capped / clean) - 1.0) < 0.10, float(capped / clean)
    assert SPIKE_CAP > 1.0
