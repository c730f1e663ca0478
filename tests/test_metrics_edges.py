"""The grading and fidelity metrics at their edges: grade arrays refused or taken, the mask, field-of-view
and ring pixels fidelity scores, the reference margin, the markdown table, resolution and sampling."""
import numpy as np
import pytest

from drgan.errors import DrganError
from drgan.metrics.grading import format_kappa, grading_metrics


def test_two_dimensional_grades_are_refused_as_not_1d():
    with pytest.raises(DrganError, match="y_true: expected a 1-D sequence of grades, got shape \\(2, 2\\)"):
        grading_metrics([[0, 1], [2, 3]], [0, 1, 2, 3])
    with pytest.raises(DrganError, match="y_pred: expected a 1-D"):
        grading_metrics([0, 1], np.zeros((2, 1), int))


@pytest.mark.parametrize("y_true", [[0.5, 1.0], [1.0, 2.5]])
def test_fractional_grades_are_refused_not_truncated(y_true):
    with pytest.raises(DrganError, match="y_true: grades must be integers"):
        grading_metrics(y_true, [0, 1])


def test_whole_float_grades_are_accepted_as_integers():
    m = grading_metrics(np.array([0.0, 1.0, 3.0, 3.0]), [0, 1, 3, 2])
    assert m["count"] == 4 and m["accuracy"] == 0.75
    assert m["confusion"][3] == [0, 0, 1, 1, 0] and m["tpr"][1] == 1.0


def test_format_kappa_gives_three_digits_by_default_and_na_for_none():
    assert format_kappa(0.123456) == "0.123"
    assert format_kappa(0.5, 4) == "0.5000"
    assert format_kappa(None) == "n/a"


# --- condition fidelity -------------------------------------------------------------------------

from drgan.config import COND_CHANNELS  # noqa: E402
from drgan.data.dataset import FundusDataset  # noqa: E402
from drgan.data.phantom import write_phantom_dataset  # noqa: E402
from drgan.metrics.fidelity import (  # noqa: E402
    condition_fidelity, contrast_scores, dataset_fidelity, evaluate_fidelity, fidelity_above_chance, format_fidelity,
)

SIDE = 64


def _blank():
    image = np.full((SIDE, SIDE, 3), (200, 90, 40), np.uint8)
    masks = np.zeros((len(COND_CHANNELS), SIDE, SIDE), np.uint8)
    return image, masks


def _vessel(masks):
    return masks[COND_CHANNELS.index("vessel")]


def test_a_group_needs_four_masked_pixels_in_the_field_of_view():
    image, masks = _blank()
    _vessel(masks)[30:32, 30:32] = 255          # exactly MIN_PIXELS (4)
    assert set(contrast_scores(image, masks)) == {"vessel"}
    assert [len(s) for s in contrast_scores(image, masks)["vessel"]][0] == 4
    _vessel(masks)[31, 31] = 0                  # 3 pixels: absent
    assert contrast_scores(image, masks) == {}


def test_mask_pixels_are_on_above_127_only():
    image, masks = _blank()
    _vessel(masks)[28:32, 28:32] = 128
    assert len(contrast_scores(image, masks)["vessel"][0]) == 16
    _vessel(masks)[28:32, 28:32] = 127
    assert contrast_scores(image, masks) == {}


def test_mask_pixels_outside_the_centred_field_of_view_are_not_scored():
    image, masks = _blank()
    vessel = _vessel(masks)
    vessel[0:4, 0:4] = 255                      # the top-left corner
    vessel[0:2, 28:36] = vessel[62:64, 28:36] = 255   # bands 2 px deep along each edge, just outside
    vessel[28:36, 0:2] = vessel[28:36, 62:64] = 255   # the circle of radius 0.47 * side about the centre
    assert contrast_scores(image, masks) == {}
    vessel[30:32, 30:34] = 255                  # and 8 pixels at the centre: only those are scored
    assert len(contrast_scores(image, masks)["vessel"][0]) == 8


@pytest.mark.parametrize("side, width", [(64, 3.0), (320, 10.0)])
def test_the_ring_holds_the_pixels_1_5_to_1_5_plus_width_from_the_mask(side, width):
    """width = max(3, side / 32): the background ring beside a mask, as the module defines it."""
    image = np.full((side, side, 3), (200, 90, 40), np.uint8)
    masks = np.zeros((len(COND_CHANNELS), side, side), np.uint8)
    c = side // 2
    masks[COND_CHANNELS.index("vessel"), c:c + 2, c:c + 2] = 255
    yy, xx = np.mgrid[:side, :side]
    dist = np.min([np.hypot(yy - y, xx - x) for y in (c, c + 1) for x in (c, c + 1)], axis=0)
    expected = int(((dist > 1.5) & (dist <= 1.5 + width)).sum())
    assert len(contrast_scores(image, masks)["vessel"][1]) == expected


@pytest.mark.parametrize("shape", [(SIDE, SIDE, 4), (SIDE, SIDE)])
def test_an_image_without_three_channels_is_refused(shape):
    _, masks = _blank()
    with pytest.raises(DrganError, match="expected \\(H, W, 3\\)"):
        contrast_scores(np.zeros(shape, np.uint8), masks)


def test_a_reference_exactly_at_the_margin_still_gives_a_fraction():
    got = fidelity_above_chance({"vessel": 0.6, "red_lesion": 0.6, "bright_lesion": 0.6},
                                {"vessel": 0.55, "red_lesion": 0.56, "bright_lesion": 0.549})
    assert got == pytest.approx({"vessel": 2.0, "red_lesion": 0.1 / 0.06})


def test_format_fidelity_markdown_lists_present_groups_grades_and_reference():
    result = {"overall": {"vessel": 0.9, "bright_lesion": 0.75}, "images": 3,
              "per_grade": {0: {"vessel": 0.8}, 2: {"vessel": 0.95, "bright_lesion": 0.75}}}
    reference = {"overall": {"vessel": 0.95, "bright_lesion": 0.52}, "images": 7, "per_grade": {}}
    assert format_fidelity(result) == (
        "| | vessel | bright_lesion |\n"
        "|---|---|---|\n"
        "| all (3 images) | 0.900 | 0.750 |\n"
        "| grade 0 | 0.800 | - |\n"
        "| grade 2 | 0.950 | 0.750 |")
    assert format_fidelity(result, reference).splitlines()[-2:] == [
        "| reference (7 images) | 0.950 | 0.520 |",
        "| fraction of reference above chance | 0.889 | - |"]


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory):
    base = tmp_path_factory.mktemp("fidelity_edges")
    return write_phantom_dataset(base / "s96", 5, 96, seed=4), write_phantom_dataset(base / "s128", 3, 128, seed=5)


def _fidelity_of(root, side, picks):
    data = FundusDataset(root, side)
    samples = []
    for i in picks:
        image, masks = data.load(i)
        samples.append((image, np.moveaxis(masks, -1, 0), data.grades[i]))
    return condition_fidelity(samples)


def test_dataset_fidelity_measures_at_the_given_resolution_default_first_image_side(small_sets):
    s96, _ = small_sets
    assert dataset_fidelity(s96, 64) == _fidelity_of(s96, 64, range(5))
    assert dataset_fidelity(s96) == _fidelity_of(s96, 96, range(5))
    assert dataset_fidelity(s96, 64) != dataset_fidelity(s96)


def test_dataset_fidelity_max_images_takes_evenly_spaced_first_to_last(small_sets):
    s96, _ = small_sets
    result = dataset_fidelity(s96, 64, max_images=3)
    assert result["images"] == 3 and result == _fidelity_of(s96, 64, [0, 2, 4])
    assert dataset_fidelity(s96, 64, max_images=2) == _fidelity_of(s96, 64, [0, 4])


def test_evaluate_fidelity_measures_the_reference_at_the_data_side(small_sets):
    s96, s128 = small_sets
    result, text = evaluate_fidelity(s96, reference=s128, max_images=3)
    assert result["fidelity"] == _fidelity_of(s96, 96, [0, 2, 4])
    assert result["fidelity_reference"] == _fidelity_of(s128, 96, range(3))
    assert "| reference (3 images) |" in text


def test_evaluate_fidelity_grades_the_data_alone_without_a_reference(small_sets, tmp_path):
    import torch

    from drgan.checkpoint import save_module
    from drgan.config import preset
    from drgan.nn import build_grader
    from drgan.runs import write_run_config

    s96, _ = small_sets
    run = tmp_path / "run"
    cfg = preset("tiny-64")
    torch.manual_seed(0)
    model = build_grader(cfg)
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 9.0, 0.0]))  # grade 3 for every image
    write_run_config(run, cfg, "global", {"trainer": "grader"})
    save_module(model, run / "grader.safetensors")
    result, text = evaluate_fidelity(s96, grader_run=run, resolution=64, max_images=2)
    assert "grading_reference" not in result and "fidelity_reference" not in result
    assert result["grading"]["count"] == 5 and result["grading"]["resolution"] == 64
    assert result["grading"]["accuracy"] == pytest.approx(0.2)
    assert f"| {s96} | 5 | 0.200 | 0.000 |" in text


def test_a_plain_folder_holding_masks_or_drgan_folders_is_refused(tmp_path):
    """A plain folder is read whole: a dataset's masks/, a folder of datasets (masks beside the
    photographs), a run folder's sample grids would be scored as images; an unfinished set's
    images/ alone would pass for the whole set. A finished dataset's images/ is a plain set."""
    import shutil

    from PIL import Image

    from drgan.data.format import UNFINISHED
    from drgan.metrics.images import open_image_set

    a = write_phantom_dataset(tmp_path / "all" / "a", 4, 64, seed=0)
    write_phantom_dataset(tmp_path / "all" / "b", 4, 64, seed=1)
    with pytest.raises(DrganError, match=rf"^{tmp_path / 'all'}: holds a dataset or set, {a} and 1 more, whose masks"):
        open_image_set(tmp_path / "all")
    with pytest.raises(DrganError, match=rf"^{a / 'masks'}: the masks of {a}, not images \(give {a} for its images\)$"):
        open_image_set(a / "masks")
    assert len(open_image_set(a / "images")) == 4 and open_image_set(a / "images").grades is None
    (a / UNFINISHED).write_text("synthesize\n")
    with pytest.raises(DrganError, match=rf"^{a}: unfinished"):
        open_image_set(a / "images")
    with pytest.raises(DrganError, match=rf"^{tmp_path / 'all'}: holds a dataset or set, {a} and 1 more"):
        open_image_set(tmp_path / "all")
    (a / "labels.csv").unlink()   # a set killed before its labels.csv
    with pytest.raises(DrganError, match=rf"^{a}: unfinished"):
        open_image_set(a / "images")
    shutil.rmtree(tmp_path / "all" / "b")
    with pytest.raises(DrganError, match=rf"^{tmp_path / 'all'}: holds an unfinished set, {a}, whose"):
        open_image_set(tmp_path / "all")
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(run / "samples.png")
    with pytest.raises(DrganError, match=rf"^{tmp_path / 'runs'}: holds a run, {run}, whose masks or sample grids"):
        open_image_set(tmp_path / "runs")


def test_on_a_flat_background_a_dark_mask_scores_its_depth_and_its_ring_zero():
    """The background leaves the (grown) mask out: on a flat fundus every ring pixel scores exactly 0
    and a vessel 30 green levels darker scores 30 / 255 (green channel in [0, 1], darker positive)."""
    image, masks = _blank()
    _vessel(masks)[30:33, 20:44] = 255
    image[30:33, 20:44, 1] -= 30
    on, ring = contrast_scores(image, masks)["vessel"]
    assert len(on) == 72 and len(ring) > 0
    np.testing.assert_allclose(on, 30 / 255, atol=1e-5)
    np.testing.assert_allclose(ring, 0, atol=1e-5)


def test_ring_pixels_outside_the_field_of_view_are_not_scored():
    """The ring, like the mask, is cut to the field of view (radius 0.47 * side about the centre)."""
    image, masks = _blank()
    _vessel(masks)[4:6, 31:33] = 255                 # just inside the top of the field of view
    yy, xx = np.mgrid[:SIDE, :SIDE]
    dist = np.min([np.hypot(yy - y, xx - x) for y in (4, 5) for x in (31, 32)], axis=0)
    fov = (yy - 31.5) ** 2 + (xx - 31.5) ** 2 <= (0.47 * SIDE) ** 2
    ring = (dist > 1.5) & (dist <= 1.5 + 3.0)
    assert (ring & ~fov).sum() > 0                   # the ring reaches past the top of the circle
    assert len(contrast_scores(image, masks)["vessel"][1]) == int((ring & fov).sum())


def test_the_overall_auc_pools_the_pixels_of_every_image():
    """One AUC over the pooled pixels of all images (sklearn's roc_auc_score as the oracle), not the
    mean of per-image AUCs: images that show their masks to different degrees pool unlike a mean."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    samples = []
    for depth, grade, rows in ((4, 0, (20, 40)), (12, 1, (16, 30, 44))):
        image, masks = _blank()
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        for r in rows:
            _vessel(masks)[r, 12:52] = 255
            image[r, 12:52, 1] -= depth
        samples.append((image, masks, grade))
    pairs = [contrast_scores(image, masks)["vessel"] for image, masks, _ in samples]

    def sk_auc(parts):
        on = np.concatenate([p for p, _ in parts])
        ring = np.concatenate([q for _, q in parts])
        return roc_auc_score(np.r_[np.ones(len(on)), np.zeros(len(ring))], np.r_[on, ring])

    result = condition_fidelity(samples)
    assert result["overall"]["vessel"] == pytest.approx(sk_auc(pairs), abs=1e-9)
    assert result["per_grade"][1]["vessel"] == pytest.approx(sk_auc(pairs[1:]), abs=1e-9)
    assert abs(sk_auc(pairs) - np.mean([sk_auc([p]) for p in pairs])) > 0.01   # the two readings differ here


def test_the_background_is_a_normalised_gaussian_average_outside_the_grown_mask():
    """Background = Gaussian average (sigma = half the ring width: 1.5 px at 64 px) of the green pixels
    more than 1.5 px from the mask, divided by the same average of their indicator (scipy.ndimage)."""
    from scipy import ndimage

    rng = np.random.default_rng(4)
    image, masks = _blank()
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    _vessel(masks)[30:33, 20:44] = 255
    on = _vessel(masks) > 127
    green = image[..., 1] / 255.0
    keep = (ndimage.distance_transform_edt(~on) > 1.5).astype(float)
    background = ndimage.gaussian_filter(green * keep, 1.5) / ndimage.gaussian_filter(keep, 1.5)
    np.testing.assert_allclose(contrast_scores(image, masks)["vessel"][0], (background - green)[on], atol=1e-5)
