"""Phantoms: known uptake ratios, 511 keV mu values, NEMA sphere volumes, lesion labels, seeds."""

from __future__ import annotations

import math

import pytest
import torch

from pet_dl.geometry import ImageGeometry
from pet_dl.phantoms import (
    MU_BONE,
    MU_LUNG,
    MU_WATER,
    SPHERE_DIAMETERS_MM,
    add_lesions,
    make_phantom,
)
from pet_dl.phantoms.shapes import rasterize, sphere

BRAIN_2D = ImageGeometry.centered((100, 120, 1), 2.0)
TORSO_2D = ImageGeometry.centered((100, 72, 1), 4.0)
NEMA_2D = ImageGeometry.centered((160, 120, 1), 2.0)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("name", "image"), [("brain", BRAIN_2D), ("torso", TORSO_2D), ("nema", NEMA_2D)]
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
