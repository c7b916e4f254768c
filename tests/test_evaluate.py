"""Evaluation: validation-based selection, tables, contrast vs noise, held-out checks.

Small sizes: the tiny recipe (32 x 32 mMR slice) with one or two phantoms.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pet_dl import evaluate as ev
from pet_dl.metrics import dilate_mask
from pet_dl.models import build_model
from pet_dl.recipes import load_recipe
from pet_dl.recon import gaussian_postfilter

RECIPE = Path(__file__).resolve().parents[1] / "data" / "tiny.yaml"
SETTINGS = ev.EvalSettings(
    osem_subsets=4, osem_iterations=(1, 2), postfilter_fwhm_mm=(0.0, 7.0),
    map_betas=(0.3, 1.0), map_iterations=2, map_subsets=4, plot_factor=20.0,
)


@pytest.fixture(scope="module")
def recipe() -> dict:
    return load_recipe(RECIPE)


@pytest.fixture(scope="module")
def val(recipe: dict) -> ev.EvalSet:
    return ev.simulate_eval_set(recipe, [100000], 1, [1, 20])


@pytest.fixture(scope="module")
def test_set(recipe: dict) -> ev.EvalSet:
    # both tiny test phantoms hold one lesion >= 8 mm (checked in the table test)
    return ev.simulate_eval_set(recipe, [200000, 200001], 2, [1, 20])


def _tiny_unet(recipe: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model({
        "name": "post_unet", "spatial_dims": 2, "channels": [4, 8], "strides": [2],
        "init_iterations": recipe["init_iterations"], "init_subsets": recipe["init_subsets"],
    })


def test_simulated_set_is_consistent(test_set: ev.EvalSet) -> None:
    # realisations differ in noise, thinning keeps fewer counts, calibration scales by 1/factor
    p1, p20 = test_set.prompts[1.0], test_set.prompts[20.0]
    assert not torch.equal(p1[0], p1[1])  # same phantom, two noise realisations
    assert bool((p20 <= p1).all())
    ratio = float(p1.sum() / p20.sum())
    assert ratio == pytest.approx(20.0, rel=0.05)
    assert torch.allclose(test_set.calibration[20.0] * 20, test_set.calibration[1.0], rtol=1e-6)
    assert test_set.case_seed == [200000, 200000, 200001, 200001]


def test_phantoms_from_a_function_replace_the_recipe_ones(recipe: dict) -> None:
    # an external anatomy (here a uniform disc through image_phantom): its activity is the
    # target, and twice the activity gives twice the trues on the same scanner
    from pet_dl.geometry import ImageGeometry
    from pet_dl.phantoms import MU_WATER, image_phantom
    from pet_dl.recipes import recipe_geometry

    image = recipe_geometry(recipe)[1]
    source = ImageGeometry.centered((60, 60, 1), 1.0)
    x = torch.as_tensor(source.voxel_centers(0))
    disc = (x[:, None] ** 2 + x[None, :] ** 2 <= 20.0**2).float()[..., None]

    def phantom_of(seed: int):  # noqa: ANN202
        return image_phantom(disc * 5000.0 * (1 + seed), disc * MU_WATER, source, image)

    ext = ev.simulate_eval_set(recipe, [0, 1], 1, [1], phantom_of=phantom_of)
    torch.testing.assert_close(ext.target[1], 2 * ext.target[0])
    assert ext.lesion_diameters == [{}, {}] and int(ext.lesion_mask.sum()) == 0
    trues = [float((ext.prompts[1.0][i] - ext.additive[1.0][i]).sum()) for i in (0, 1)]
    assert trues[1] / trues[0] == pytest.approx(2.0, rel=0.05)
    with pytest.raises(ValueError, match="image grid"):
        other = ImageGeometry.centered((8, 8, 1), 4.0)
        ev.simulate_eval_set(recipe, [0], 1, [1], phantom_of=lambda s: image_phantom(disc, disc * 0, source, other))


def test_sirf_brain_planes_on_the_shipped_grid(test_data: Path) -> None:
    # the external anatomy of docs/results.md: activity integral kept from the file's plane,
    # grey matter at 16 kBq/mL (less partial volume), lesions only in the brain
    from pet_dl.evaluate.external import GREY_MATTER_BQML, SIRF_PLANES, sirf_brain_phantoms
    from pet_dl.io import load_image

    folder = test_data / "sirf_phantoms" / "brain"
    brain2d = load_recipe(Path(__file__).resolve().parents[1] / "data" / "brain2d.yaml")
    phantom_of = sirf_brain_phantoms(folder, brain2d)
    emission, grid = load_image(folder / "emission.hv")
    scale = GREY_MATTER_BQML / float(emission.max())
    planes, lesions = set(), 0
    for seed in range(12):
        p = phantom_of(seed)
        assert p.activity.shape == (96, 96, 1) and p.name == "sirf_brain"
        near = torch.nn.functional.max_pool2d((p.labels[..., 0] > 0).float()[None], 5, 1, 2)[0]
        background = p.activity[..., 0][near == 0]  # away from lesions and their partial volumes
        integral = float(p.activity.sum()) * 2.6**2
        sums = {k: float(emission[..., k].sum()) * scale for k in SIRF_PLANES}
        k = min(sums, key=lambda k: abs(sums[k] - integral))  # the plane drawn for this seed
        planes.add(k)
        if not p.lesions:  # without lesions the plane's activity integral is kept to 1 %
            assert integral == pytest.approx(sums[k], rel=0.01)
        assert 0.7 * GREY_MATTER_BQML < float(background.max()) <= GREY_MATTER_BQML * 1.001
        brain = p.tissue == p.tissues["brain"]  # lesions are placed in the brain (their rims
        for les in p.lesions:  # may cross a sulcus)
            i, j = (round((les.centre_mm[a] - p.image.origin_mm[a]) / 2.6) for a in (0, 1))
            assert bool(brain[i, j, 0])
        lesions += len(p.lesions)
    assert len(planes) >= 4 and lesions > 0
    assert torch.equal(phantom_of(3).activity, phantom_of(3).activity)


def test_acrin_slice_crops_fit_the_field_of_view(test_data: Path) -> None:
    # real whole-body PET slices as activity (docs/results.md): each seed a window as wide as
    # the brain grid (250 mm) inside the body, its body's mean at ACRIN_MEAN_BQML, water mu
    from pet_dl.evaluate.external import ACRIN_MEAN_BQML, WATER_MU_PER_MM, acrin_slice_phantoms

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "data" / "brainweb2d.yaml")
    phantom_of = acrin_slice_phantoms(test_data / "acrin_pet_dicom", recipe)
    crops, peaks = set(), []
    for seed in range(10):
        p = phantom_of(seed)
        assert p.activity.shape == (96, 96, 1) and p.name == "acrin_slice"
        body = p.activity[..., 0] > 0
        assert 0.2 < float(body.float().mean()) < 0.9  # a body, not a sliver nor all of the grid
        # mu: water in the body (partial volume at its edge), nothing far outside it
        assert float(p.mu.max()) == pytest.approx(WATER_MU_PER_MM, rel=0.05)
        assert float(p.mu[..., 0][~body].max()) < 0.6 * WATER_MU_PER_MM
        if not p.lesions:  # the body's mean activity as scaled (resampling moves the outline)
            inside = p.activity[..., 0][p.activity[..., 0] > 0.03 * float(p.activity.max())]
            assert float(inside.mean()) == pytest.approx(ACRIN_MEAN_BQML, rel=0.15)
        crops.add(round(float(p.activity.sum())))
        peaks.append(float(p.activity.max()) / float(p.activity[..., 0][body].mean()))
    assert len(crops) >= 8  # different windows (and slices) per seed
    assert max(peaks) > 5  # the real slices' hot structures are kept, not smoothed away
    assert torch.equal(phantom_of(4).activity, phantom_of(4).activity)


def test_reconstructed_truth_is_a_pet_image_of_the_anatomy() -> None:
    # a PET-like truth (docs/experiments.md, v30): the phantom scanned, reconstructed and
    # resampled; its activity is conserved, its edges are a scanner's, its noise is its own
    from pet_dl.evaluate.external import reconstructed_phantoms
    from pet_dl.recipes import phantom_of_seed, recipe_geometry

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "data" / "torso_window2d.yaml")
    recipe["lesions"]["count"] = [0, 0]  # the anatomy alone, to compare with the phantom
    phantom_of = reconstructed_phantoms(recipe)
    for seed in (100000, 100001):
        base, truth = phantom_of_seed(recipe, seed), phantom_of(seed)
        assert truth.activity.shape == base.activity.shape and truth.name == "reconstructed_torso_window"
        assert float(truth.activity.sum()) == pytest.approx(float(base.activity.sum()), rel=0.05)
        # the 4.5 mm PSF, 5 mm post-filter and 4 mm pixels: the steepest step between
        # neighbours is a fraction of the phantom's (its tissue edges are one-voxel steps)
        def steepest(x: torch.Tensor) -> float:
            return float(x[..., 0].diff(dim=0).abs().max())

        assert steepest(truth.activity) < 0.5 * steepest(base.activity)
        # but it follows the anatomy: correlated with the phantom blurred to its resolution
        blurred = gaussian_postfilter(base.activity[None].float(), recipe_geometry(recipe)[1], 7.0)[0]
        r = torch.corrcoef(torch.stack([truth.activity.flatten(), blurred.flatten()]))[0, 1]
        assert float(r) > 0.9
        assert float(truth.mu.max()) == pytest.approx(float(base.mu.max()), rel=0.1)
    # its noise is drawn per seed and is not the phantom's: the same seed gives the same truth
    assert torch.equal(phantom_of(100000).activity, phantom_of(100000).activity)
    with_lesions = reconstructed_phantoms(load_recipe(Path(__file__).resolve().parents[1] / "data" / "torso_window2d.yaml"))
    assert sum(len(with_lesions(s).lesions) for s in range(100000, 100006)) > 0
    # a clinical scan of fewer counts, not post-filtered: a coarser noise texture in the truth
    def roughness(x: torch.Tensor) -> float:
        return float(x[..., 0].diff(dim=0).abs().mean() / x.mean())

    noisy = reconstructed_phantoms(recipe, postfilter_mm=0.0, dose_range=(0.01, 0.01))
    assert roughness(noisy(100000).activity) > 2 * roughness(phantom_of(100000).activity)
    assert float(noisy(100000).activity.sum()) == pytest.approx(float(phantom_of_seed(recipe, 100000).activity.sum()), rel=0.1)


@pytest.mark.parametrize(("iterations", "fwhm"), [(3, 0.0), (2, 7.0)])
def test_select_osem_picks_the_known_best(val: ev.EvalSet, iterations: int, fwhm: float) -> None:
    # make the "truth" the OSEM image after `iterations` (post-filtered by `fwhm`): that
    # grid point has NRMSE 0, every other one a positive NRMSE
    traj = ev.osem_trajectory(val.batch(20), 5, 4)
    known = replace(val, target=gaussian_postfilter(traj[iterations - 1], val.image, fwhm))
    choice = ev.select_osem(known, 20, [1, 2, 3, 5], [0.0, 7.0], 4)
    assert (choice.iterations, choice.fwhm_mm) == (iterations, fwhm)
    assert choice.nrmse < 1e-6
    others = [v for k, v in choice.grid.items() if k != (iterations, fwhm)]
    assert len(others) == 7 and min(others) > 1e-3


def test_select_osem_on_real_truth_is_grid_minimum(val: ev.EvalSet) -> None:
    choice = ev.select_osem(val, 20, [1, 2, 4], [0.0, 7.0], 4)
    assert choice.nrmse == min(choice.grid.values())
    traj = ev.osem_trajectory(val.batch(20), 4, 4)  # independent recomputation
    direct = ev.mean_nrmse(gaussian_postfilter(traj[choice.iterations - 1], val.image, choice.fwhm_mm), val.target)
    assert direct == pytest.approx(choice.nrmse, rel=1e-6)


def test_select_map_beta_is_from_the_grid(val: ev.EvalSet) -> None:
    grid = [0.1, 0.5, 2.0]
    known = replace(val, target=ev.map_reconstruction(val.batch(20), 0.5, 2, 4))
    choice = ev.select_map(known, 20, grid, 2, 4)
    assert choice.beta == 0.5 and choice.nrmse < 1e-6
    choice = ev.select_map(val, 20, grid, 2, 4)
    assert choice.beta in grid and set(choice.grid) == set(grid)
    assert choice.nrmse == min(choice.grid.values())


def test_map_beta_follows_the_count_level(val: ev.EvalSet) -> None:
    # beta = beta_rel * calibration: stronger prior smooths more at every dose level
    for f in (1, 20):
        weak = ev.map_reconstruction(val.batch(f), 0.01, 2, 4)
        strong = ev.map_reconstruction(val.batch(f), 100.0, 2, 4)
        tv = lambda x: float((x[:, 1:] - x[:, :-1]).abs().sum())  # noqa: E731
        assert tv(strong) < 0.5 * tv(weak)


def test_table_has_a_finite_row_per_method_and_factor(
    recipe: dict, val: ev.EvalSet, test_set: ev.EvalSet, tmp_path: Path
) -> None:
    assert all(any(d >= 8 for d in diam.values()) for diam in test_set.lesion_diameters)
    res = ev.evaluate(val, test_set, {"TinyUNet": _tiny_unet(recipe)}, SETTINGS)
    keys = {(r["method"], r["factor"]) for r in res.rows}
    assert keys == {(m, f) for m in ("OSEM", "MAP-RDP", "TinyUNet") for f in (1.0, 20.0)}
    assert len(res.rows) == 6
    for row in res.rows:
        for k in ev.METRICS:
            assert math.isfinite(row[k]) and math.isfinite(row[k + "_std"]), (row["method"], k)
        assert 0 < row["nrmse"] < 2 and -1 <= row["ssim"] <= 1
    # the chosen parameters come from the grids; OSEM full dose beats OSEM at 1/20 dose
    for f in (1.0, 20.0):
        assert res.osem[f].iterations in SETTINGS.osem_iterations
        assert res.osem[f].fwhm_mm in SETTINGS.postfilter_fwhm_mm
        assert res.map[f].beta in SETTINGS.map_betas
    nrmse = {(r["method"], r["factor"]): r["nrmse"] for r in res.rows}
    assert nrmse[("OSEM", 1.0)] < nrmse[("OSEM", 20.0)]
    # CSV and markdown carry the same rows
    parsed = list(csv.DictReader(io.StringIO(ev.results_csv(res))))
    assert len(parsed) == 6
    assert float(parsed[0]["nrmse"]) == pytest.approx(res.rows[0]["nrmse"], rel=1e-9)
    md = ev.results_markdown(res).strip().splitlines()
    assert len(md) == 2 + 6 and md[2].startswith("| full | OSEM |")
    nrmse_cell = md[2].split("|")[5].strip()
    assert nrmse_cell == f"{100 * res.rows[0]['nrmse']:.2f} ± {100 * res.rows[0]['nrmse_std']:.2f}"
    # one realisation has no noise spread: the cells are the means alone, not "± 0"
    single = ev.results_markdown(replace(res, realisations=1)).strip().splitlines()
    assert single[2].split("|")[5].strip() == f"{100 * res.rows[0]['nrmse']:.2f}"
    assert "±" not in single[2]
    # sampling uncertainty: 2 phantoms give a standard error; OSEM at full dose is the
    # paired reference, so its own difference is exactly 0 and OSEM at 1/20 is above it
    assert all(math.isfinite(r["nrmse_sem"]) and r["nrmse_sem"] > 0 for r in res.rows)
    assert float(parsed[0]["nrmse_sem"]) == pytest.approx(res.rows[0]["nrmse_sem"], rel=1e-9)
    unc = ev.uncertainty_markdown(res).strip().splitlines()
    assert len(unc) == 2 + 6 and "NRMSE - OSEM at full dose" in unc[0]
    cells = {(c[1].strip(), c[2].strip()): c[4].strip() for c in (line.split("|") for line in unc[2:])}
    assert cells[("full", "OSEM")] == "+0.00 ± 0.00"
    assert float(cells[("20", "OSEM")].split(" ± ")[0]) > 0
    # paired with a method at each row's own factor: that method's rows are exactly 0, and
    # the others are the paired differences at their factor
    same = ev.uncertainty_markdown(res, ("MAP-RDP", None)).strip().splitlines()
    assert "NRMSE - MAP-RDP at the same factor" in same[0]
    cells = {(c[1].strip(), c[2].strip()): c[4].strip() for c in (line.split("|") for line in same[2:])}
    assert cells[("full", "MAP-RDP")] == cells[("20", "MAP-RDP")] == "+0.00 ± 0.00"
    osem, map_ = (next(r for r in res.rows if (r["method"], r["factor"]) == (m, 20.0)) for m in ("OSEM", "MAP-RDP"))
    mean, sem = ev.paired_difference(osem["case_nrmse"], map_["case_nrmse"], osem["case_seed"])
    assert cells[("20", "OSEM")] == f"{100 * mean:+.2f} ± {100 * 1.96 * sem:.2f}"
    # and the false hot spots are paired with that method too (OSEM's with the default):
    # hot-spot counts set per case so that the two references give different differences
    counts = {"OSEM": [4.0, 6.0, 5.0, 9.0], "MAP-RDP": [1.0, 2.0, 2.0, 3.0], "TinyUNet": [2.0, 2.0, 3.0, 5.0]}
    rows = [{**r, "case_hot_spots": counts[r["method"]][: len(r["case_seed"])]} if r["factor"] == 20.0 else r
            for r in res.rows]
    hot_res = replace(res, rows=rows)
    by_map = ev.uncertainty_markdown(hot_res, ("MAP-RDP", None)).strip().splitlines()
    by_osem = ev.uncertainty_markdown(hot_res).strip().splitlines()
    assert "hot spots - MAP-RDP at the same factor" in by_map[0] and "hot spots - OSEM at the same factor" in by_osem[0]
    net = next(r for r in rows if (r["method"], r["factor"]) == ("TinyUNet", 20.0))
    for lines, ref in ((by_map, "MAP-RDP"), (by_osem, "OSEM")):
        hot = {(c[1].strip(), c[2].strip()): c[8].strip() for c in (line.split("|") for line in lines[2:])}
        other = next(r for r in rows if (r["method"], r["factor"]) == (ref, 20.0))
        mean, sem = ev.paired_difference(net["case_hot_spots"], other["case_hot_spots"], net["case_seed"])
        assert hot[("20", "TinyUNet")] == f"{mean:+.2f} ± {1.96 * sem:.2f}"
        assert hot[("20", ref)] == "+0.00 ± 0.00"
    with pytest.raises(ValueError, match="paired reference 'OSEM' at factor 7"):
        ev.uncertainty_markdown(res, ("OSEM", 7.0))
    # bias by lesion size: every lesion of the test set falls in one bin, the same
    # lesions for every method; the truth reads 0 bias in every bin that has lesions
    per_phantom = {s: len(d) for s, d in zip(test_set.case_seed, test_set.lesion_diameters)}
    sizes = ev.lesion_size_markdown(res).strip().splitlines()
    assert len(sizes) == 2 + 6
    counts = [int(h.split("(")[1].split()[0]) for h in sizes[0].split("|")[3:-1]]
    assert sum(counts) == sum(per_phantom.values())
    truth = ev.score_row("truth", 1.0, "", test_set.target.clone(), test_set)
    for b in ev.bias_by_size(truth["case_lesions"], truth["case_seed"]):
        if b["lesions"]:
            assert b["suvmean_bias"] == pytest.approx(0.0, abs=1e-9)
            assert b["suvmax_bias"] == pytest.approx(0.0, abs=1e-9)
    # curves at factor 20: OSEM over iterations and MAP over beta, networks as points
    assert len(res.curves["OSEM (iterations)"]) == max(SETTINGS.osem_iterations)
    assert len(res.curves["MAP-RDP (beta)"]) == len(SETTINGS.map_betas)
    assert all(math.isfinite(cr) and noise > 0 for _, cr, noise in res.curves["TinyUNet"])
    png = tmp_path / "cn.png"
    ev.plot_contrast_noise(res, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # JSON round trip; a classical-only and a networks-only part merge back to the whole
    back = ev.results_from_json(ev.results_to_json(res))
    assert ev.results_markdown(back) == ev.results_markdown(res)
    assert back.osem[20.0] == res.osem[20.0] and back.map[1.0].grid == res.map[1.0].grid
    classical = replace(res, rows=[r for r in res.rows if r["method"] != "TinyUNet"],
                        curves={k: v for k, v in res.curves.items() if k != "TinyUNet"})
    nets = replace(res, rows=[r for r in res.rows if r["method"] == "TinyUNet"], osem={}, map={},
                   curves={"TinyUNet": res.curves["TinyUNet"]})
    merged = ev.merge_results([nets, classical])
    assert ev.results_markdown(merged) == ev.results_markdown(res)
    assert merged.curves.keys() == res.curves.keys()
    with pytest.raises(ValueError, match="same method twice"):
        ev.merge_results([res, nets])
    renamed = ev.rename_methods(nets, {"TinyUNet": "TinyUNet (shipped before)"})
    assert ev.merge_results([res, renamed]).rows[-1]["method"] == "TinyUNet (shipped before)"
    assert set(renamed.curves) == {"TinyUNet (shipped before)"}
    with pytest.raises(ValueError, match="cannot rename"):
        ev.rename_methods(nets, {"Nobody": "X"})


def test_aggregate_means_over_phantoms_then_realisations() -> None:
    rows = [
        {"psnr": 10.0, "ssim": 0.5, "nrmse": 0.1, "suvmean_bias": [0.1, 0.3], "suvmax_bias": [],
         "suvmean_bias_ge8": [0.3], "suvmax_bias_ge8": []},
        {"psnr": 20.0, "ssim": 0.7, "nrmse": 0.3, "suvmean_bias": [0.2], "suvmax_bias": [],
         "suvmean_bias_ge8": [], "suvmax_bias_ge8": []},
        {"psnr": 30.0, "ssim": 0.9, "nrmse": 0.5, "suvmean_bias": [], "suvmax_bias": [],
         "suvmean_bias_ge8": [], "suvmax_bias_ge8": []},
    ]
    out = ev.aggregate(rows, [0, 0, 1])
    assert out["psnr"][0] == pytest.approx((15.0 + 30.0) / 2)
    assert out["psnr"][1] == pytest.approx(math.sqrt(2 * 7.5**2))  # sample std of 15, 30
    # realisation 1 has no lesions: the bias is the mean over realisation 0's lesions only
    assert math.isnan(out["suvmean_bias"][0])
    assert math.isnan(out["suvmax_bias"][0])
    single = ev.aggregate(rows[:2], [0, 0])
    assert single["suvmean_bias"] == (pytest.approx(0.2), 0.0)
    assert single["suvmean_bias_ge8"][0] == pytest.approx(0.3)


def test_sampling_error_is_over_phantoms_and_lesions_averaged_over_realisations() -> None:
    def case(nrmse: float, lesions: list[float]) -> dict:
        return {"psnr": 0.0, "ssim": 0.0, "nrmse": nrmse, "suvmean_bias": lesions, "suvmax_bias": lesions,
                "suvmean_bias_ge8": lesions, "suvmax_bias_ge8": []}

    # phantom 7: 2 lesions, 2 realisations; phantom 9: 1 lesion, 2 realisations
    rows = [case(0.1, [0.0, 0.2]), case(0.3, [0.2, 0.4]), case(0.5, [-0.4]), case(0.7, [-0.2])]
    seeds = [7, 7, 9, 9]
    sem = ev.sampling_error(rows, seeds)
    # phantom means 0.2 and 0.6: std 0.2 sqrt(2), over sqrt(2) phantoms
    assert sem["nrmse"] == pytest.approx(0.2)
    # lesion means 0.1, 0.3, -0.3: sample std 0.3055, over sqrt(3)
    lesion_means = torch.tensor([0.1, 0.3, -0.3], dtype=torch.float64)
    assert sem["suvmean_bias"] == pytest.approx(float(lesion_means.std()) / math.sqrt(3))
    assert math.isnan(sem["suvmax_bias_ge8"])  # no lesion
    assert math.isnan(ev.sampling_error(rows[:2], seeds[:2])["nrmse"])  # one phantom


def test_bias_by_size_bins_lesions_averaged_over_realisations() -> None:
    # phantom 1: a 6 mm and a 10 mm lesion, two realisations; phantom 2: a 10 mm and a
    # 20 mm lesion (the last edge belongs to the last bin), one realisation
    cases = [
        [[6.0, -0.4, 0.1], [10.0, -0.2, 0.3]],
        [[6.0, -0.2, 0.1], [10.0, 0.0, 0.1]],
        [[10.0, -0.3, 0.0], [20.0, 0.05, -0.1]],
    ]
    bins = ev.bias_by_size(cases, [1, 1, 2], edges_mm=(4, 8, 12, 16, 20))
    assert [b["lesions"] for b in bins] == [1, 2, 0, 1]
    assert bins[0]["suvmean_bias"] == pytest.approx(-0.3) and math.isnan(bins[0]["suvmean_bias_sem"])
    # 10 mm: lesion means -0.1 (phantom 1) and -0.3 (phantom 2): sample std 0.1414 over sqrt(2)
    assert bins[1]["suvmean_bias"] == pytest.approx(-0.2)
    assert bins[1]["suvmean_bias_sem"] == pytest.approx(0.1)
    assert bins[1]["suvmax_bias"] == pytest.approx(0.1)
    assert math.isnan(bins[2]["suvmean_bias"]) and bins[3]["suvmax_bias"] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="increasing"):
        ev.bias_by_size(cases, [1, 1, 2], edges_mm=(8, 4))
    with pytest.raises(ValueError, match="seeds"):
        ev.bias_by_size(cases, [1, 1], edges_mm=(4, 8))


def test_paired_difference_cancels_what_the_phantoms_share() -> None:
    # two phantoms of very different difficulty; method a is 0.02 above b on each case
    b = [0.10, 0.12, 0.40, 0.42]
    a = [x + 0.02 for x in b]
    seeds = [1, 1, 2, 2]
    mean, sem = ev.paired_difference(a, b, seeds)
    assert mean == pytest.approx(0.02) and sem == pytest.approx(0.0, abs=1e-12)
    unpaired = ev.sampling_error([{"nrmse": x, **{k: [] for k in ev.METRICS if "bias" in k},
                                   "psnr": 0.0, "ssim": 0.0} for x in a], seeds)["nrmse"]
    assert unpaired > 0.1  # the phantoms' spread, which the pairing removes
    mean, sem = ev.paired_difference([0.3, 0.1], [0.1, 0.2], [1, 2])  # differences 0.2, -0.1
    assert mean == pytest.approx(0.05) and sem == pytest.approx(0.15)
    with pytest.raises(ValueError, match="cases"):
        ev.paired_difference(a, b[:3], seeds)


def test_contrast_noise_of_the_truth(test_set: ev.EvalSet) -> None:
    cr, noise = ev.contrast_noise(test_set.target.clone(), test_set)
    assert cr == pytest.approx(1.0, rel=1e-9) and noise == pytest.approx(0.0, abs=1e-12)
    half = test_set.target.clone()
    half[test_set.lesion_mask > 0] = (half * 0.5)[test_set.lesion_mask > 0]  # lesions at half uptake
    cr_half, _ = ev.contrast_noise(half, test_set)
    assert cr_half < 0.5  # contrast drops more than the uptake


def test_false_hot_spots_count_blobs_outside_the_lesions_only(test_set: ev.EvalSet) -> None:
    truth = test_set.target
    assert ev.false_hot_spots(truth.clone(), test_set) == [0] * test_set.num_cases
    assert ev.false_hot_spots(1.9 * truth, test_set) == [0] * test_set.num_cases  # < 100 % over
    lesion = test_set.lesion_mask[0] > 0
    far = ~dilate_mask(test_set.lesion_mask[:1], 3, 2)[0]  # beyond the 2-voxel exclusion
    background = (truth[0] > 0.5 * truth[0].max()) & far
    x, y, z = (int(v) for v in background.nonzero()[len(background.nonzero()) // 2])
    blob = truth.clone()
    blob[0, x, y, z] *= 5.0  # one voxel of 7 mm: a blob of four times the local activity
    assert ev.false_hot_spots(blob, test_set) == [1] + [0] * (test_set.num_cases - 1)
    assert ev.false_hot_spots(blob, test_set, threshold=5.0) == [0] * test_set.num_cases
    hot_lesion = truth.clone()
    hot_lesion[0][lesion] *= 5.0  # the true lesions are left out, however hot
    assert ev.false_hot_spots(hot_lesion, test_set) == [0] * test_set.num_cases
    with pytest.raises(ValueError, match="do not match"):
        ev.false_hot_spots(truth[:1], test_set)


def test_refuses_test_phantoms_seen_in_training(
    recipe: dict, val: ev.EvalSet, test_set: ev.EvalSet, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="overlaps the train phantoms"):
        ev.check_held_out([5, 200000], {"train": range(0, 10)})
    ev.check_held_out([200000], {"train": range(0, 10)})  # disjoint: fine
    with pytest.raises(ValueError, match="overlaps the validation"):
        ev.evaluate(test_set, test_set, {}, SETTINGS)
    # a checkpoint that records its training seeds is refused on those phantoms
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.recipes import recipe_geometry

    sinogram, image = recipe_geometry(recipe)
    net = _tiny_unet(recipe)
    config = {"name": "post_unet", "spatial_dims": 2, "channels": [4, 8], "strides": [2]}
    meta = {"sinogram": sinogram.to_dict(), "image": image.to_dict(), "train_seeds": [200001, 7]}
    path = save_checkpoint(tmp_path / "net.safetensors", net, config, meta)
    with pytest.raises(ValueError, match="overlaps the bad training phantoms"):
        ev.load_networks({"bad": str(path)}, recipe, [200000, 200001])
    assert set(ev.load_networks({"ok": str(path)}, recipe, [200000])) == {"ok"}


def test_refuses_a_checkpoint_of_another_geometry(recipe: dict, tmp_path: Path) -> None:
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.recipes import recipe_geometry

    sinogram, image = recipe_geometry(load_recipe(RECIPE.parent / "brain2d.yaml"))
    config = {"name": "post_unet", "spatial_dims": 2, "channels": [4, 8], "strides": [2]}
    path = save_checkpoint(
        tmp_path / "net.safetensors", build_model(config), config,
        {"sinogram": sinogram.to_dict(), "image": image.to_dict()},
    )
    with pytest.raises(ValueError, match="another sinogram geometry"):
        ev.load_networks({"other": str(path)}, recipe, [200000])


def test_command_line_bad_config_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pet_dl.cli import main

    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"recipe: {RECIPE}\nrealisatons: 2\n")
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "realisatons" in err[0]
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path), "--realisations", "0"]) == 2
    cfg.write_text(f"recipe: {RECIPE}\nnetworks: {{A: a.safetensors}}\n")
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path), "--network", "B"]) == 2
    assert "not in the config's networks" in capsys.readouterr().err
    assert main(["evaluate", "--config", str(cfg), "--out", str(tmp_path), "--checkpoint", "B"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written on a bad config


def test_command_line_quick_run_writes_outputs(tmp_path: Path) -> None:
    from pet_dl.cli import main

    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        f"recipe: {RECIPE}\nfactors: [1, 20]\nrealisations: 2\nval_phantoms: 1\n"
        "settings: {osem_subsets: 4, osem_iterations: [1, 2], postfilter_fwhm_mm: [0, 7],"
        " map_betas: [1], map_iterations: 1, map_subsets: 4, plot_factor: 20}\n"
    )
    from pet_dl.io.checkpoint import save_checkpoint
    from pet_dl.recipes import recipe_geometry

    sinogram, image = recipe_geometry(load_recipe(RECIPE))
    config = {"name": "post_unet", "spatial_dims": 2, "channels": [4, 8], "strides": [2],
              "init_iterations": 2, "init_subsets": 4}
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", build_model(config), config,
                           {"sinogram": sinogram.to_dict(), "image": image.to_dict()})
    out = tmp_path / "out"
    assert main(["evaluate", "--config", str(cfg), "--out", str(out), "--test-phantoms", "1",
                 "--checkpoint", f"Tiny={ckpt}"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["method"], float(r["factor"])) for r in rows} == {
        (m, f) for m in ("OSEM", "MAP-RDP", "Tiny") for f in (1.0, 20.0)
    }
    assert (out / "contrast_noise.png").stat().st_size > 1000
    assert "OSEM iterations" in (out / "selection.md").read_text()
    # one test phantom: no standard error, said as n/a rather than a number
    assert "| full | OSEM | n/a | n/a |" in (out / "results.md").read_text().split("## Sampling uncertainty")[1]
    assert "## Lesion bias by size" in (out / "results.md").read_text()
    merged = tmp_path / "merged"
    assert main(["evaluate", "--merge", str(out / "results.json"), "--out", str(merged)]) == 0
    assert (merged / "results.csv").read_text() == (out / "results.csv").read_text()
    assert main(["evaluate", "--merge", str(out / "results.json"), "--out", str(merged),
                 "--paired-with", "MAP-RDP"]) == 0
    assert "NRMSE - MAP-RDP at the same factor" in (merged / "results.md").read_text()
    # --rename: a method renamed before the merge (rows and curves); a bad or unknown name is exit 2
    assert main(["evaluate", "--merge", str(out / "results.json"), "--out", str(merged),
                 "--rename", "Tiny=Tiny (shipped before)", "--paired-with", "Tiny (shipped before)"]) == 0
    renamed = list(csv.DictReader((merged / "results.csv").open()))
    assert [r["method"] for r in renamed] == [r["method"].replace("Tiny", "Tiny (shipped before)") for r in rows]
    assert [r["nrmse"] for r in renamed] == [r["nrmse"] for r in rows]
    assert "NRMSE - Tiny (shipped before) at the same factor" in (merged / "results.md").read_text()
    for bad in ("Tiny", "Nobody=X", "=X"):
        assert main(["evaluate", "--merge", str(out / "results.json"), "--out", str(merged), "--rename", bad]) == 2
    assert main(["evaluate", "--config", str(cfg), "--out", str(merged), "--rename", "Tiny=T"]) == 2
    for bad in ("OSEM@x", "Nobody@20", "OSEM@7"):  # one error line, exit 2
        assert main(["evaluate", "--merge", str(out / "results.json"), "--out", str(merged),
                     "--paired-with", bad]) == 2
    assert main(["evaluate", "--config", str(cfg), "--out", str(merged), "--paired-with", "Nobody"]) == 2
    assert main(["evaluate", "--merge", str(out / "results.json"), "--config", str(cfg), "--out", str(merged)]) == 2


def test_exported_checkpoints_carry_train_seeds_and_evaluate_refuses_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import lightning.pytorch as pl
    import yaml

    from pet_dl.cli import main
    from pet_dl.io.checkpoint import load_checkpoint
    from pet_dl.training import ReconModule
    from pet_dl.training.datamodule import PETDataModule
    from pet_dl.training.export import ExportCallback, export_lightning_checkpoint
    from pet_dl.training.export import main as export_main

    # one training step on the tiny recipe (train seeds [0, 4)), exported at the end of fit
    pl.seed_everything(0, verbose=False)
    network = {"name": "post_unet", "spatial_dims": 2, "channels": [4, 8], "strides": [2],
               "init_iterations": 2, "init_subsets": 4}
    dm = PETDataModule(recipe=str(RECIPE), batch_size=2, train_phantoms=1, val_phantoms=1)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        enable_checkpointing=False, default_root_dir=str(tmp_path),
        callbacks=[ExportCallback(str(tmp_path / "fit.safetensors"))],
    )
    trainer.fit(ReconModule(network), dm)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    fit_export = tmp_path / "fit.safetensors"
    ckpt_export = export_lightning_checkpoint(tmp_path / "last.ckpt", tmp_path / "ckpt.safetensors")
    for path in (fit_export, ckpt_export):
        assert load_checkpoint(path, builder=build_model).metadata["train_seeds"] == {"start": 0, "stop": 4}
    # a .ckpt trained from shards: the seeds come from the shards' recipe
    from pet_dl.datasets import generate_dataset

    shards = load_recipe(RECIPE)
    shards["splits"] = {"train": {"seeds": [7, 9]}}
    generate_dataset(shards, tmp_path / "shards")
    raw = torch.load(tmp_path / "last.ckpt", weights_only=True)
    raw["pet_dl_metadata"].pop("train_seeds", None)  # as if the data module had not recorded them
    raw["datamodule_hyper_parameters"] = {"data_dir": str(tmp_path / "shards"), "recipe": None}
    torch.save(raw, tmp_path / "shards.ckpt")
    from_shards = export_lightning_checkpoint(tmp_path / "shards.ckpt", tmp_path / "s.safetensors")
    assert load_checkpoint(from_shards, builder=build_model).metadata["train_seeds"] == {"start": 7, "stop": 9}
    raw["datamodule_hyper_parameters"] = {"data_dir": str(tmp_path / "gone"), "recipe": None}
    torch.save(raw, tmp_path / "gone.ckpt")
    with pytest.warns(UserWarning, match="no shards"), pytest.warns(UserWarning, match="seeds are unknown"):
        gone = export_lightning_checkpoint(tmp_path / "gone.ckpt", tmp_path / "g.safetensors")
    assert "train_seeds" not in load_checkpoint(gone, builder=build_model).metadata
    override = tmp_path / "o.safetensors"  # the command line can name the seeds
    assert export_main([str(tmp_path / "last.ckpt"), str(override), "--train-seeds", "10", "30"]) == 0
    assert load_checkpoint(override, builder=build_model).metadata["train_seeds"] == {"start": 10, "stop": 30}
    flipped = tmp_path / "f.safetensors"  # and switch on the flip ensemble in the same export
    assert export_main([str(tmp_path / "last.ckpt"), str(flipped), "--flip-ensemble", "0"]) == 0
    flipped_model = load_checkpoint(flipped, builder=build_model)
    assert flipped_model.config["flip_ensemble"] == [0]
    assert "--flip-ensemble 0" in flipped_model.metadata["training_command"]
    for (name, a), b in zip(load_checkpoint(override, builder=build_model).model.state_dict().items(),
                            flipped_model.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "last.ckpt"), str(override), "--train-seeds", "30", "10"])

    # a recipe of the same geometry whose test split holds training seeds 2 and 3
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["splits"] = {"train": {"seeds": [50, 60]}, "val": {"seeds": [100000, 100001]},
                        "test": {"seeds": [2, 6]}}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(recipe))
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(f"recipe: {tmp_path / 'other.yaml'}\nnetworks: {{Net: {fit_export}}}\n")
    out = tmp_path / "out"
    assert main(["evaluate", "--config", str(cfg), "--out", str(out), "--skip", "classical"]) == 2
    err = capsys.readouterr().err
    assert "overlaps the Net training phantoms (2 shared seeds, e.g. [2, 3])" in err
    assert not (out / "results.md").exists()
    held_out = load_recipe(tmp_path / "other.yaml")
    with pytest.raises(ValueError, match="overlaps the Net training"):
        ev.load_networks({"Net": str(ckpt_export)}, held_out, [5, 3])
    assert set(ev.load_networks({"Net": str(ckpt_export)}, held_out, [4, 5])) == {"Net"}
    assert set(ev.load_networks({"Net": str(override)}, held_out, [2, 3])) == {"Net"}


def test_export_without_known_seeds_warns(tmp_path: Path, recipe: dict) -> None:
    from pet_dl.io.checkpoint import load_checkpoint
    from pet_dl.recipes import recipe_geometry
    from pet_dl.training import ReconModule, export_module

    module = ReconModule({"name": "post_unet", "spatial_dims": 2, "channels": [4, 8], "strides": [2]})
    sinogram, image = recipe_geometry(recipe)
    module.geometry_metadata = {"sinogram": sinogram.to_dict(), "image": image.to_dict()}
    with pytest.warns(UserWarning, match="train_seeds"):
        path = export_module(module, tmp_path / "a.safetensors")
    assert "train_seeds" not in load_checkpoint(path, builder=build_model).metadata
    path = export_module(module, tmp_path / "b.safetensors", train_seeds=[7, 3, 7])
    assert load_checkpoint(path, builder=build_model).metadata["train_seeds"] == [3, 7]
    module.geometry_metadata["train_seeds"] = [1, "x"]
    with pytest.raises(ValueError, match="phantom seeds must be"):
        export_module(module, tmp_path / "c.safetensors")


@pytest.mark.parametrize("name, phantoms", [("evaluate2d", 20), ("evaluate2d_large", 200)])
def test_shipped_evaluation_configs_score_held_out_phantoms(name: str, phantoms: int) -> None:
    """The 2D evaluation configs load, and their test phantoms are the first ``phantoms``
    seeds of the recipe's test split, disjoint from its training and validation seeds (the
    20 of the main table are the first 20 of the 200)."""
    from pet_dl.recipes import split_seeds

    root = Path(__file__).resolve().parents[1]
    config = ev.load_eval_config(root / "configs" / f"{name}.yaml")
    assert config["test_phantoms"] == phantoms
    recipe = load_recipe(root / config["recipe"])
    test = list(split_seeds(recipe, "test"))
    assert len(test) >= phantoms and test[:20] == list(range(200000, 200020))
    ev.check_held_out(test[:phantoms], {"train": split_seeds(recipe, "train"), "val": split_seeds(recipe, "val")})
    assert 1.0 in config["factors"] and 20.0 in config["factors"]


def test_test_source_config_is_checked(tmp_path: Path) -> None:
    """``test_source`` names one of the external anatomies and needs a phantom count; a
    folder that does not exist is one clear error."""
    root = Path(__file__).resolve().parents[1]
    base = {"recipe": str(root / "data" / "brainweb2d.yaml"), "test_phantoms": 2}
    assert ev.load_eval_config({**base, "test_source": {"kind": "acrin", "dir": "x"}})["test_source"]["kind"] == "acrin"
    for bad in ({"kind": "mri", "dir": "x"}, {"kind": "acrin"}, "acrin"):
        with pytest.raises(ValueError, match="test_source must be"):
            ev.load_eval_config({**base, "test_source": bad})
    with pytest.raises(ValueError, match="needs test_phantoms"):
        ev.load_eval_config({"recipe": base["recipe"], "test_source": {"kind": "acrin", "dir": "x"}})
    recipe = load_recipe(base["recipe"])
    with pytest.raises(ValueError, match="is not a folder"):
        ev.external_source_phantoms({"kind": "acrin", "dir": str(tmp_path / "missing")}, recipe)


def test_evaluation_on_the_real_acrin_windows(test_data: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``configs/evaluate_acrin2d.yaml`` scores the shipped network on windows of the real
    ACRIN slices (its ``dir`` read under ``PET_DL_TEST_DATA``), not on the recipe's BrainWeb
    test subjects: its truths are the windows of ``acrin_slice_phantoms``, and the trained
    model's error on them falls as the dose rises (docs/results.md: 10.8 % at full dose)."""
    from pet_dl.evaluate.external import acrin_slice_phantoms

    monkeypatch.setenv("PET_DL_TEST_DATA", str(test_data))
    root = Path(__file__).resolve().parents[1]
    config = ev.load_eval_config(root / "configs" / "evaluate_acrin2d.yaml")
    config["recipe"] = str(root / config["recipe"])
    config["factors"] = [1, 20]
    results = ev.run_config(config, tmp_path, test_phantoms=3, realisations=1, classical=False)
    assert results.num_phantoms == 3
    assert "acrin test cases (seeds 0..2)" in (tmp_path / "results.md").read_text()
    nrmse = {r["factor"]: r["nrmse"] for r in results.rows}
    assert nrmse[1.0] < 0.2 and nrmse[1.0] < nrmse[20.0]
    # the same truths as the ACRIN source itself gives
    recipe = load_recipe(config["recipe"])
    truth = acrin_slice_phantoms(test_data / "acrin_pet_dicom", recipe)(2).activity
    assert torch.equal(ev.external_source_phantoms(config["test_source"], recipe)(2).activity, truth)
