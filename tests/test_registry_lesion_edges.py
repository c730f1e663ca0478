"""Edges of the metric registry, the kernels' dispatch, lesion placement and its statistics, and
the grading spaces that the broader tests leave open."""
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from drgan.data.lesion_stats import DEFAULT_STATS, LESION_TYPES, MAX_LESIONS, LesionStats
from drgan.data.lesions import draw_primitives, imitate_lesions, lesion_primitives, structure_geometry
from drgan.data.phantom import render_structure, write_phantom_dataset
from drgan.errors import DrganError, ParameterError
from drgan.grading_space import GradingSpace
from drgan.kernels import dispatch
from drgan.metrics.registry import MetricInputs, calc_metric, check_inputs, format_metrics

# ---------------------------------------------------------------------------------------------
# The metric registry.


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry_edges")
    grades = [0, 3] * 5
    return (write_phantom_dataset(root / "real", 10, 64, seed=0, grades=grades),
            write_phantom_dataset(root / "fake", 10, 64, seed=1, grades=grades))


def test_swd_without_a_reference_set_is_refused_before_any_metric_runs():
    """check_inputs runs before the first metric: swd's missing reference must not wait for it."""
    with pytest.raises(ParameterError) as err:
        check_inputs(["swd"], MetricInputs(fake="unused"))
    assert err.value.params == ["real"]


def test_fidelity_checks_the_masks_of_the_reference_split_it_will_measure(sets, tmp_path):
    """A reference whose test split has no masks is refused for that split, though other splits have them."""
    real, fake = sets
    partial = shutil.copytree(real, tmp_path / "partial")
    for item in ("phantom_000006", "phantom_000007"):  # the test split
        shutil.rmtree(partial / "masks" / item)
    check_inputs(["fidelity"], MetricInputs(fake=fake, real=partial, real_split="train"))
    with pytest.raises(DrganError, match="no condition mask"):
        check_inputs(["fidelity"], MetricInputs(fake=fake, real=partial, real_split="test"))


def test_the_table_leaves_out_the_warnings_and_an_empty_result_is_empty():
    assert format_metrics({"fid": 12.5, "warnings": ["few images"]}) == "fid  12.5000"
    assert format_metrics({}) == ""


def test_max_images_caps_swd_and_fidelity(sets):
    real, fake = sets
    inputs = MetricInputs(fake=fake, real=real, max_images=4)
    assert calc_metric("swd", inputs)["swd_images"] == 4
    result = calc_metric("fidelity", inputs)
    assert result["fidelity_images"] == 4 and result["fidelity_real_images"] == 4


def test_fid_reports_each_sets_image_count_under_its_own_name(sets, monkeypatch):
    """The counts of the two sets differ (the real set's split): each key names its own set."""
    real, fake = sets
    given = {}

    def compute_fid(real_set, fake_set, **kwargs):
        given.update(kwargs)
        return {"fid": 3.0, "real": {"count": len(real_set)}, "fake": {"count": len(fake_set)}, "warnings": [],
                "per_grade": {"0": 1.0}, "fid_grade_average": 1.0}

    monkeypatch.setattr("drgan.metrics.fid.compute_fid", compute_fid)
    result = calc_metric("fid", MetricInputs(fake=fake, real=real, real_split="train", device="cpu"))
    assert (result["fid_real_images"], result["fid_fake_images"]) == (6, 10)
    assert given == {"per_grade": False, "device": "cpu"}


def test_swd_flattens_its_levels_grades_and_resolution(monkeypatch):
    """Each number of compute_swd's result reaches the flat result under its own key."""
    given = {}

    def compute_swd(real_set, fake_set, **kwargs):
        given.update(kwargs)
        return {"swd_x1e3_average": 5.0, "count": 4, "resolution": 64, "swd_x1e3": {"64": 1.0, "32": 9.0},
                "per_grade": {"0": {"swd_x1e3_average": 7.0, "count": 3}, "3": {"swd_x1e3_average": 8.0, "count": 3}},
                "swd_x1e3_grade_average": 7.5}

    monkeypatch.setattr("drgan.metrics.swd.compute_swd", compute_swd)
    monkeypatch.setattr("drgan.metrics.images.open_image_set", lambda root, split=None: (root, split))
    result = calc_metric("swd", MetricInputs(fake="f", real="r", real_split="test", seed=7, max_images=4, per_grade=True))
    assert result == {"swd_x1e3_average": 5.0, "swd_images": 4, "swd_resolution": 64, "swd_x1e3_64px": 1.0,
                      "swd_x1e3_32px": 9.0, "swd_x1e3_grade_0": 7.0, "swd_x1e3_grade_3": 8.0, "swd_x1e3_grade_average": 7.5}
    assert given == {"seed": 7, "device": "cpu", "per_grade": True, "max_images": 4}


def test_fidelity_flattens_its_grades_and_the_reference_beside_it(monkeypatch):
    """The reference's image count is its own, not the measured set's."""
    def evaluate_fidelity(fake, real, real_split, **kwargs):
        assert (fake, real, real_split, kwargs) == ("f", "r", "test", {})
        return {"fidelity": {"images": 10, "overall": {"red": 0.9}, "per_grade": {"3": {"red": 0.8}}},
                "fidelity_reference": {"images": 6, "overall": {"red": 0.95}},
                "fraction_of_reference": {"red": 0.9 / 0.95}}, None

    monkeypatch.setattr("drgan.metrics.fidelity.evaluate_fidelity", evaluate_fidelity)
    result = calc_metric("fidelity", MetricInputs(fake="f", real="r", real_split="test", per_grade=True))
    assert result == {"fidelity_images": 10, "fidelity_red": 0.9, "fidelity_grade_3_red": 0.8, "fidelity_real_images": 6,
                      "fidelity_real_red": 0.95, "fidelity_fraction_of_real_red": 0.9 / 0.95}
    assert "fidelity_grade_3_red" not in calc_metric("fidelity", MetricInputs(fake="f", real="r", real_split="test"))


def test_grading_runs_the_grader_on_the_device_asked_for_each_set_with_its_split(monkeypatch):
    calls = []

    def grade_dataset(grader, folder, split=None, device="cpu"):
        calls.append((grader, folder, split, device))
        return {"accuracy": 0.5, "kappa": None, "count": 2, "tpr": [1.0, None, 0.0, 0.0, 0.0]}

    monkeypatch.setattr("drgan.metrics.grade_prediction.grade_dataset", grade_dataset)
    result = calc_metric("grading", MetricInputs(fake="f", real="r", real_split="val", grader="g", device="cuda:1",
                                                 per_grade=True))
    assert calls == [("g", "f", None, "cuda:1"), ("g", "r", "val", "cuda:1")]
    assert result["grading_kappa"] is None and result["grading_real_tpr_grade_1"] is None
    assert [result[f"grading_tpr_grade_{g}"] for g in range(5)] == [1.0, None, 0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# Which implementation a kernel call runs (drgan.kernels.dispatch.resolve).

CUDA = SimpleNamespace(is_cuda=True, device=torch.device("cuda"))  # resolve reads only where a tensor lives
CPU = torch.zeros(1)
META = torch.zeros(1, device="meta")


@pytest.fixture
def with_triton(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)


def test_auto_takes_triton_only_for_supported_calls_whose_tensors_are_all_on_cuda(with_triton, monkeypatch):
    assert dispatch.resolve("adain", "auto", (CUDA, CUDA), None) == "triton"
    assert dispatch.resolve("adain", "auto", (CUDA, CUDA), "float64 input") == "ref"
    assert dispatch.resolve("adain", "auto", (CUDA, CPU), None) == "ref"
    monkeypatch.setattr(dispatch, "interpreting", lambda: True)  # the interpreter is for tests: auto never picks it
    assert dispatch.resolve("adain", "auto", (CPU,), None) == "ref"
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    assert dispatch.resolve("adain", "auto", (CUDA,), None) == "ref"


def test_triton_without_the_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    with pytest.raises(DrganError, match=r"^adain: impl='triton' needs the triton package \(pip install triton\)$"):
        dispatch.resolve("adain", "triton", (CUDA,), None)


def test_triton_refuses_tensors_the_kernel_cannot_reach(with_triton, monkeypatch):
    """CPU tensors only under the interpreter; a tensor elsewhere (here on meta) never."""
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    with pytest.raises(DrganError, match=r"^adain: impl='triton' needs CUDA tensors \(or TRITON_INTERPRET=1"):
        dispatch.resolve("adain", "triton", (CPU,), None)
    monkeypatch.setattr(dispatch, "interpreting", lambda: True)
    assert dispatch.resolve("adain", "triton", (CPU, CPU), None) == "triton"
    with pytest.raises(DrganError, match="needs CUDA tensors"):
        dispatch.resolve("adain", "triton", (CPU, META), None)


def test_the_interpreter_is_on_only_when_triton_interpret_is_1(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not dispatch.interpreting()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not dispatch.interpreting()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.interpreting()


@pytest.mark.parametrize("impl", ["ref", "sdpa"])
def test_ref_and_sdpa_run_anywhere_without_triton(impl, monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    assert dispatch.resolve("spatial_attention", impl, (CPU, META), "no Triton kernel for this shape") == impl


# ---------------------------------------------------------------------------------------------
# Lesion placement (drgan.data.lesions) and its statistics (drgan.data.lesion_stats).


EIGHT = np.ones((3, 3))


def _structure(fov: np.ndarray, disc: np.ndarray | None = None, vessel: np.ndarray | None = None) -> dict:
    zeros = np.zeros(fov.shape, np.uint8)
    return {"fov": fov.astype(np.uint8) * 255, "disc": zeros if disc is None else disc.astype(np.uint8) * 255,
            "vessel": zeros if vessel is None else vessel.astype(np.uint8) * 255}


@pytest.fixture(scope="module")
def phantoms():
    return [render_structure(128, s) for s in range(4)]


def _stats_data(**changes) -> dict:
    """The default statistics' JSON form with some fields set: changes {"2.he.count_hist": [1.0]}."""
    data = DEFAULT_STATS.to_dict()
    for key, value in changes.items():
        grade, kind, field = key.split(".")
        data["grades"][grade][kind][field] = value
    return data


def _stats(**changes) -> LesionStats:
    return LesionStats.from_dict(_stats_data(**changes))


def test_placed_lesions_lie_inside_the_field_of_view_and_off_the_disc_before_any_clipping(phantoms):
    """Placement keeps each whole lesion where lesions may lie: the final clip must cut nothing."""
    for seed in range(24):
        st = phantoms[seed % 4]
        primitives, _ = lesion_primitives(structure_geometry(st), 1 + seed % 4, np.random.default_rng(seed))
        drawn = draw_primitives(primitives, st["fov"].shape)
        fov, disc = st["fov"] > 0, st["disc"] > 0
        for t in LESION_TYPES:
            assert not (drawn[t] & ~(fov if t == "membrane" else fov & ~disc)).any(), (seed, t)


def test_large_lesions_at_the_rim_of_the_field_of_view_stay_inside_it(phantoms):
    """Distances from the field of view's edge are in pixels: large haemorrhages near it keep their whole extent inside."""
    rim = [0.0] * 12 + [1.0] * 4  # 1.5 to 2 FOV radii from the disc
    stats = _stats(**{f"2.{t}.dist_hist": rim for t in ("ma", "he", "ex", "se")}, **{"2.he.log_area_mean": math.log(0.06 ** 2)})
    for seed in range(8):
        st = phantoms[seed % 4]
        primitives, counts = lesion_primitives(structure_geometry(st), 2, np.random.default_rng(seed), stats)
        drawn = draw_primitives(primitives, st["fov"].shape)
        allowed = (st["fov"] > 0) & (st["disc"] == 0)
        assert counts["he"] > 0 and not any((drawn[t] & ~allowed).any() for t in LESION_TYPES), seed


def test_every_lesion_is_one_blob_and_no_two_lesions_touch(phantoms):
    """Each lesion's ellipses form one 8-connected component, apart from every other lesion of any type."""
    for seed in range(20):
        st = phantoms[seed % 4]
        primitives, counts = lesion_primitives(structure_geometry(st), 1 + seed % 4, np.random.default_rng(seed))
        drawn = draw_primitives(primitives, st["fov"].shape)
        for t in LESION_TYPES:
            assert ndimage.label(drawn[t], structure=EIGHT)[1] == counts[t], (seed, t)
        union = np.any([drawn[t] for t in LESION_TYPES], axis=0)
        assert ndimage.label(union, structure=EIGHT)[1] == sum(counts.values()), seed


@pytest.mark.parametrize("grade", [0, 2])
def test_a_structure_without_its_field_of_view_is_refused_naming_it_at_every_grade(grade):
    """Grade 0 draws nothing, but a structure without its FOV mask is refused there too (it was a KeyError)."""
    st = render_structure(64, 0)
    del st["fov"]
    with pytest.raises(DrganError, match="^structure lacks the 'fov' mask$"):
        imitate_lesions(st, grade, np.random.default_rng(0))


def test_an_empty_field_of_view_is_refused():
    with pytest.raises(DrganError, match="^structure has an empty field-of-view mask$"):
        structure_geometry(_structure(np.zeros((16, 16), bool)))


def test_the_field_of_views_edge_is_its_border_pixels():
    fov = np.zeros((8, 10), bool)
    fov[2:6, 3:9] = True
    edge = {tuple(p) for p in structure_geometry(_structure(fov)).fov_edge.astype(int).tolist()}
    assert edge == {(r, c) for r in range(2, 6) for c in range(3, 9) if r in (2, 5) or c in (3, 8)}


def test_without_a_disc_the_layout_is_a_right_eyes_and_the_fovea_lies_opposite_the_disc():
    fov = np.zeros((65, 65), bool)
    fov[8:57, 8:57] = True
    geo = structure_geometry(_structure(fov))
    np.testing.assert_allclose(geo.disc_center, geo.fov_center + [0.0, 0.4 * geo.fov_radius])
    np.testing.assert_allclose(geo.fovea, geo.fov_center + [0.05 * geo.fov_radius, -0.3 * geo.fov_radius])


def test_vessel_pixels_on_the_disc_are_not_counted_as_off_disc_vessels():
    fov = np.ones((32, 32), bool)
    disc = np.zeros_like(fov)
    disc[10:20, 10:20] = True
    vessel = np.zeros_like(fov)
    vessel[15, :] = True
    geo = structure_geometry(_structure(fov, disc, vessel))
    assert set(geo.vessel.tolist()) == {15 * 32 + c for c in range(32) if not 10 <= c < 20}
    assert set(geo.vessel.tolist()) <= set(geo.allowed.tolist())


def test_a_square_field_of_view_with_the_disc_in_a_corner_places_lesions():
    """Pixels farther than two FOV radii from the disc (a cropped photograph's corners) fall in the last bin."""
    fov = np.ones((128, 128), bool)
    disc = np.zeros_like(fov)
    disc[4:16, 4:16] = True
    geo = structure_geometry(_structure(fov, disc))
    for grade in (2, 3, 4):
        primitives, counts = lesion_primitives(geo, grade, np.random.default_rng(grade))
        assert len(primitives) and sum(counts.values()) > 0


def test_an_ellipse_holds_the_pixels_on_its_boundary():
    """((u/a)^2 + (v/b)^2) <= 1: a radius-2 disk at a pixel centre covers 13 pixels, its four tips included."""
    mask = draw_primitives(np.array([[0, 5.0, 5.0, 2.0, 2.0, 0.0]]), (11, 11))["ma"]
    assert mask.sum() == 13 and mask[3, 5] and mask[7, 5] and mask[5, 3] and mask[5, 7]


def test_tiny_lesions_are_still_drawn_at_least_a_pixel_wide():
    """An area far below one pixel gives ellipses of at least 0.75 px, which cover their centre pixel."""
    stats = _stats(**{"1.ma.log_area_mean": -20.0, "1.ma.log_area_std": 0.0})
    st = render_structure(128, 0)
    masks, counts = imitate_lesions(st, 1, np.random.default_rng(0), stats)
    primitives, _ = lesion_primitives(structure_geometry(st), 1, np.random.default_rng(0), stats)
    assert counts["ma"] > 0 and (primitives[:, 3:5] >= 0.75).all()
    assert ndimage.label(masks["ma"] > 0)[1] == counts["ma"]


def test_a_haemorrhages_main_ellipse_keeps_the_lesions_area():
    """With no spread in size, every haemorrhage's first ellipse has a * b = r^2 and its lobe 0.7 r x 0.55 r."""
    stats = _stats(**{"2.he.log_area_std": 0.0, "2.he.count_hist": [0.0, 0.0, 0.0, 1.0]})
    geo = structure_geometry(render_structure(128, 1))
    primitives, counts = lesion_primitives(geo, 2, np.random.default_rng(0), stats)
    he = primitives[primitives[:, 0] == LESION_TYPES.index("he")]
    r = geo.fov_radius * np.sqrt(np.exp(stats.grades[2]["he"].log_area_mean))
    assert counts["he"] == 3 and len(he) == 6
    np.testing.assert_allclose(he[0::2, 3] * he[0::2, 4], r * r, rtol=1e-9)
    np.testing.assert_allclose(he[1::2, 3:5], [[0.7 * r, 0.55 * r]] * 3, rtol=1e-9)


def test_a_hard_exudates_dots_stay_within_its_extent():
    """Each dot of a hard exudate lies within 0.8 r of its main ellipse, so the blob stays within 1.5 r."""
    stats = _stats(**{"2.ex.log_area_mean": math.log(0.05 ** 2), "2.ex.log_area_std": 0.0,
                      "2.ex.count_hist": [0.0] * 6 + [1.0]})
    geo = structure_geometry(render_structure(128, 2))
    r = geo.fov_radius * 0.05
    for seed in range(4):
        primitives, counts = lesion_primitives(geo, 2, np.random.default_rng(seed), stats)
        ex = primitives[primitives[:, 0] == LESION_TYPES.index("ex")]
        main = np.isclose(ex[:, 3], 0.8 * r)
        assert counts["ex"] == 6 and main.sum() == 6 and main[0]
        centre = None
        for row, is_main in zip(ex, main):
            if is_main:
                centre = row[1:3]
            else:
                assert 0.45 * r <= row[3] <= 0.7 * r and np.hypot(*(row[1:3] - centre)) <= 0.8 * r + 1e-9


def test_many_lesions_of_one_type_are_all_placed():
    """150 microaneurysms fit a 256 px eye: the candidates drawn grow with the count asked for."""
    stats = _stats(**{"1.ma.count_hist": [0.0] * 150 + [1.0]})
    geo = structure_geometry(render_structure(256, 0))
    primitives, counts = lesion_primitives(geo, 1, np.random.default_rng(0), stats)
    assert counts["ma"] == 150 and len(primitives) == 150


def test_a_distance_histogram_beyond_the_eye_falls_back_to_uniform_placement():
    """Statistics fitted elsewhere may put all their mass where this structure has no pixel."""
    stats = _stats(**{"1.ma.dist_hist": [0.0] * 15 + [1.0]})
    _, counts = lesion_primitives(structure_geometry(render_structure(128, 0)), 1, np.random.default_rng(0), stats)
    assert counts["ma"] > 0


@pytest.mark.parametrize("near_disc", [False, True])
def test_laser_scars_spare_the_macula_and_keep_clear_of_the_disc(near_disc):
    """Panretinal photocoagulation spares the macula (0.55 FOV radii around the fovea) and the disc
    (0.12 FOV radii beyond the scar's own extent), even where the statistics put scars near it."""
    near = {"4.laser.dist_hist": [0.0, 1.0, 1.0] + [0.0] * 13} if near_disc else {}
    stats = _stats(**{"4.laser.count_hist": [0.0] * 30 + [1.0], "4.laser.log_area_std": 0.0}, **near)
    for seed in range(3):
        geo = structure_geometry(render_structure(128, seed))
        primitives, counts = lesion_primitives(geo, 4, np.random.default_rng(seed), stats)
        laser = primitives[primitives[:, 0] == LESION_TYPES.index("laser"), 1:3]
        R = geo.fov_radius
        r = max(R * np.sqrt(np.exp(stats.grades[4]["laser"].log_area_mean)), 0.75)
        to_disc = np.sqrt(((laser[:, None] - geo.disc_edge[None]) ** 2).sum(-1)).min(1)
        assert len(laser) == counts["laser"] > 0
        assert (np.hypot(*(laser - geo.fovea).T) > 0.55 * R).all() and (to_disc > r + 1.5 + 0.12 * R).all()


def test_grade_2_without_any_lesion_beyond_microaneurysms_in_its_statistics_still_shows_one():
    """Statistics whose grade 2 never has haemorrhages, exudates or cotton-wool spots still give one
    haemorrhage; a grade-2 eye without microaneurysms has none."""
    stats = _stats(**{"2.he.count_hist": [1.0], "2.ex.count_hist": [1.0], "2.se.count_hist": [1.0], "2.ma.count_hist": [1.0]})
    _, counts = lesion_primitives(structure_geometry(render_structure(128, 0)), 2, np.random.default_rng(0), stats)
    assert counts == {"ma": 0, "he": 1, "ex": 0, "se": 0, "laser": 0, "membrane": 0}


def test_grade_3_has_a_haemorrhage_in_each_quadrant_and_a_soft_exudate_even_where_its_statistics_have_none():
    stats = _stats(**{"3.he.count_hist": [1.0], "3.se.count_hist": [1.0]})
    for seed in range(4):
        geo = structure_geometry(render_structure(128, seed))
        primitives, counts = lesion_primitives(geo, 3, np.random.default_rng(seed), stats)
        he = primitives[primitives[:, 0] == LESION_TYPES.index("he")][0::2]  # each haemorrhage's main ellipse
        quadrants = (he[:, 1] >= geo.fov_center[0]) * 2 + (he[:, 2] >= geo.fov_center[1])
        assert counts["he"] == 4 and sorted(quadrants.tolist()) == [0, 1, 2, 3] and counts["se"] == 1, seed


def test_grade_4_without_laser_in_its_statistics_shows_membranes_only():
    """The proliferative sign a grade-4 eye must show is drawn by each sign's frequency."""
    stats = _stats(**{"4.laser.count_hist": [1.0], "4.membrane.count_hist": [0.7, 0.3]})
    geo = structure_geometry(render_structure(128, 0))
    for seed in range(6):
        _, counts = lesion_primitives(geo, 4, np.random.default_rng(seed), stats)
        assert counts["laser"] == 0 and counts["membrane"] >= 1, seed


@pytest.mark.parametrize("grade", [-1, 5])
def test_grades_outside_the_scale_are_refused(grade):
    with pytest.raises(DrganError, match=f"^grade {grade} is outside 0..4$"):
        lesion_primitives(structure_geometry(render_structure(64, 0)), grade, np.random.default_rng(0))


@pytest.mark.parametrize("grade, kind, mean", [(1, "ma", 3.5), (3, "he", 30.0), (3, "se", 4.0), (4, "laser", 0.5 * 70),
                                               (4, "membrane", 0.7 * 2.0), (2, "se", 0.5), (0, "ma", 0.0)])
def test_default_counts_are_the_shifted_poisson_mixtures_they_name(grade, kind, mean):
    """Offset + Poisson(mean), mixed with P(0) for laser (0.5) and membranes (0.3): whole distributions, not truncated."""
    hist = DEFAULT_STATS.grades[grade][kind].count_hist
    assert sum(hist) == pytest.approx(1.0, abs=1e-12)
    assert DEFAULT_STATS.grades[grade][kind].mean_count() == pytest.approx(mean, rel=1e-6)


@pytest.mark.parametrize("kind, mode", [("he", 0.8), ("ex", 0.7), ("se", 0.55)])
def test_default_distance_histograms_peak_in_the_bin_of_their_mode(kind, mode):
    """Bin i covers [i, i + 1) * 2 / 16 FOV radii from the disc."""
    hist = DEFAULT_STATS.grades[2][kind].dist_hist
    assert sum(hist) == pytest.approx(1.0) and int(np.argmax(hist)) == int(mode * 8)


TYPES = "ma, he, ex, se, laser, membrane"


@pytest.mark.parametrize("change, reason", [
    (lambda d: d["grades"].pop("4"), "grades must be 0..4, got 0, 1, 2, 3"),
    (lambda d: d["grades"].update({"5": d["grades"]["4"]}), "grades must be 0..4, got 0, 1, 2, 3, 4, 5"),
    (lambda d: d["grades"]["2"].update({"drusen": d["grades"]["2"]["ma"]}), f"grades.2 must hold exactly {TYPES}"),
    (lambda d: d["grades"]["2"].pop("laser"), f"grades.2 must hold exactly {TYPES}"),
    (lambda d: d["grades"]["2"]["ma"].update(log_area_std=True), "grades.2.ma.log_area_std True is outside 0..5"),
    (lambda d: d["grades"]["2"]["ma"].update(count_hist=[0.0] * (MAX_LESIONS + 1) + [1.0]),
     f"grades.2.ma.count_hist allows {MAX_LESIONS + 1} lesions per image (at most {MAX_LESIONS})"),
], ids=["no grade 4", "a grade 5", "an extra type", "a missing type", "a bool", "too many lesions"])
def test_lesion_statistics_with_missing_extra_or_mistyped_entries_are_refused(change, reason):
    data = DEFAULT_STATS.to_dict()
    change(data)
    with pytest.raises(DrganError) as err:
        LesionStats.from_dict(data)
    assert str(err.value) == f"invalid lesion statistics: {reason}"


def test_lesion_statistics_at_the_edges_of_their_ranges_are_accepted(tmp_path):
    """MAX_LESIONS lesions of a type, an area without spread, and the extreme mean areas are all allowed."""
    data = _stats_data(**{"2.ma.count_hist": [0.0] * MAX_LESIONS + [1.0], "2.ma.log_area_std": 0.0, "2.he.log_area_std": 5.0,
                          "2.ma.log_area_mean": -20.0, "2.he.log_area_mean": 1.0})
    stats = LesionStats.from_dict(data)
    stats.save(tmp_path / "stats.json")
    assert LesionStats.load(tmp_path / "stats.json").to_dict() == data
    assert stats.grades[2]["ma"].mean_count() == MAX_LESIONS


def test_missing_lesion_statistics_are_named():
    with pytest.raises(DrganError, match="^/nonexistent/stats.json: lesion statistics file not found$"):
        LesionStats.load("/nonexistent/stats.json")


# ---------------------------------------------------------------------------------------------
# Grading spaces (drgan.grading_space).


def test_a_grading_space_is_fit_per_grade_with_the_whole_sets_statistics_for_thin_grades():
    """Per-grade mean and biased variance; a grade with one sample keeps its mean but takes the
    global variance, a grade with none takes both."""
    features = torch.tensor([[0.0, 1.0], [2.0, 5.0], [4.0, 3.0], [10.0, -2.0]])
    space = GradingSpace.fit(features, torch.tensor([0, 0, 0, 2]), 4, 0.85)
    everything = (features.mean(0), features.var(0, correction=0))
    torch.testing.assert_close(space.mean, torch.stack([torch.tensor([2.0, 3.0]), everything[0], torch.tensor([10.0, -2.0]),
                                                        everything[0]]))
    torch.testing.assert_close(space.var, torch.stack([torch.tensor([8 / 3, 8 / 3]), everything[1], everything[1], everything[1]]))
    assert (space.num_grades, space.dim, space.grader_accuracy) == (4, 2, 0.85) and space.mean.dtype == torch.float32


def _space() -> GradingSpace:
    return GradingSpace(torch.tensor([[0.0, 0.0], [10.0, -10.0]]), torch.tensor([[1.0, 1.0], [4.0, 9.0]]), 0.9)


def test_grading_vectors_move_standard_normal_draws_by_each_grades_mean_and_standard_deviation():
    eps = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    torch.testing.assert_close(_space().shift(torch.tensor([0, 1]), eps), torch.tensor([[1.0, -1.0], [12.0, -13.0]]))


def test_sampling_follows_its_generator_and_refuses_grades_outside_the_space():
    space = _space()
    grades = torch.tensor([1, 0, 1])
    first = space.sample(grades, torch.Generator().manual_seed(3))
    torch.randn(5)  # the global generator moves: a seeded sample must not
    assert torch.equal(first, space.sample(grades, torch.Generator().manual_seed(3)))
    assert space.sample(torch.tensor([], dtype=torch.long)).shape == (0, 2)
    for bad in (2, -1):
        with pytest.raises(DrganError, match=r"^grades must lie in 0\.\.1$"):
            space.sample(torch.tensor([0, bad]))


def test_a_grading_space_without_the_shape_of_grades_by_dimension_is_refused():
    with pytest.raises(DrganError, match="must be \\(grades, D\\)"):
        GradingSpace(torch.zeros(5), torch.ones(5), 0.5)
    with pytest.raises(DrganError, match="must be \\(grades, D\\)"):
        GradingSpace(torch.zeros(5, 3), torch.ones(5, 4), 0.5)


def test_a_saved_grading_space_loads_back_with_its_accuracy_and_zero_variances_allowed(tmp_path):
    """A grade whose features never vary has variance 0: usable, not refused."""
    space = GradingSpace(torch.tensor([[0.5, 1.0], [2.0, 3.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.0]]), 0.873216)
    space.save(tmp_path / "space.safetensors")
    back = GradingSpace.load(tmp_path / "space.safetensors")
    assert torch.equal(back.mean, space.mean) and torch.equal(back.var, space.var) and back.grader_accuracy == 0.873216
    assert space.to(torch.device("cpu")).grader_accuracy == 0.873216


@pytest.mark.parametrize("tensors, problem", [
    ({"mean": torch.zeros(5, 4), "var": torch.ones(5, 4), "extra": torch.ones(1)},
     "not a grading space (expected tensors 'mean' and 'var', found "),
    ({"mean": torch.zeros(5, 4, dtype=torch.int64), "var": torch.ones(5, 4)},
     "not a usable grading space (mean torch.int64 and var torch.float32 must be floating point)"),
    ({"mean": torch.zeros(5, 4), "var": torch.ones(5, 3)},
     "not a usable grading space (mean (5, 4) and var (5, 3) must both be (grades, D))"),
], ids=["extra tensor", "integer", "shapes"])
def test_files_that_are_not_usable_grading_spaces_are_refused_naming_the_file(tmp_path, tensors, problem):
    from drgan.checkpoint import save_tensors

    path = tmp_path / "space.safetensors"
    save_tensors(tensors, path)
    with pytest.raises(DrganError) as err:
        GradingSpace.load(path)
    assert str(err.value).startswith(f"{path}: {problem}"), str(err.value)
