"""Lesion imitation: the DR scale's rules over many seeds, and sampling after a fit."""
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from drgan.data.lesion_fit import fit_lesion_stats
from drgan.data.lesion_stats import DEFAULT_STATS, LESION_TYPES, LesionStats
from drgan.data.lesions import imitate_lesions
from drgan.data.phantom import render_structure, write_phantom_dataset
from drgan.errors import DrganError

EIGHT = np.ones((3, 3))


@pytest.fixture(scope="module")
def structures():
    return [render_structure(128, s) for s in range(4)]


def test_scale_rules_hold_over_many_seeds(structures):
    for seed in range(60):
        st = structures[seed % 4]
        grade = seed % 5
        masks, counts = imitate_lesions(st, grade, np.random.default_rng(seed))
        assert set(masks) == set(LESION_TYPES)
        outside = (st["fov"] == 0) | (st["disc"] > 0)
        present = {t for t in LESION_TYPES if masks[t].any()}
        for t in LESION_TYPES:
            assert masks[t].dtype == np.uint8 and set(np.unique(masks[t])) <= {0, 255}
            # inside the FOV, off the disc (membranes: new vessels of the disc are allowed)
            assert not np.any(masks[t][st["fov"] == 0] if t == "membrane" else masks[t][outside]), (grade, t)
            assert (masks[t] > 0).any() == (counts[t] > 0)
        if grade == 0:
            assert present == set()
        elif grade == 1:
            assert present == {"ma"}
        else:
            assert present & {"he", "ex", "se"}
        if grade < 4:
            assert not present & {"laser", "membrane"}
        else:
            assert present & {"laser", "membrane"}
        if grade == 3:
            # haemorrhages in all four quadrants around the FOV centre, soft exudates present
            rows, cols = np.nonzero(st["fov"])
            cy, cx = rows.mean(), cols.mean()
            lab, n = ndimage.label(masks["he"] > 0, structure=EIGHT)
            cen = np.array(ndimage.center_of_mass(masks["he"] > 0, lab, range(1, n + 1)))
            quads = set(((cen[:, 0] >= cy) * 2 + (cen[:, 1] >= cx)).tolist())
            assert quads == {0, 1, 2, 3} and "se" in present


def test_grade_4_membranes_grow_on_the_disc(structures):
    on_disc = []
    for seed in range(40):
        st = structures[seed % 4]
        masks, _ = imitate_lesions(st, 4, np.random.default_rng(seed))
        on_disc.append(bool(np.any(masks["membrane"][st["disc"] > 0])))
        for t in ("ma", "he", "ex", "se", "laser"):
            assert not np.any(masks[t][st["disc"] > 0]), t
    assert 0.1 < np.mean(on_disc) < 0.9, np.mean(on_disc)   # NVD in some eyes, membranes elsewhere in others


def test_fitted_membranes_on_the_disc_are_placed_on_the_disc(tmp_path):
    """A dataset whose grade-4 membranes all sit on the disc fits statistics that put them there."""
    root = write_phantom_dataset(tmp_path / "ph", count=10, size=128, seed=3)
    for path in sorted((root / "masks").iterdir()):
        disc = np.array(Image.open(path / "disc.png"))
        Image.fromarray(disc).save(path / "membrane.png")   # one membrane per eye, covering the disc
    stats = fit_lesion_stats(root)
    assert stats.grades[4]["membrane"].dist_hist[0] == 1.0
    structures = [render_structure(128, 2000 + s) for s in range(4)]
    for seed in range(8):
        st = structures[seed % 4]
        masks, counts = imitate_lesions(st, 4, np.random.default_rng(seed), stats)
        assert counts["membrane"] == 1 and np.any(masks["membrane"][st["disc"] > 0]), seed


def test_sizes_scale_with_resolution():
    small, large = render_structure(128, 5), render_structure(512, 5)
    a = [(imitate_lesions(small, 3, np.random.default_rng(s))[0]["he"] > 0).sum() / 128 ** 2 for s in range(4)]
    b = [(imitate_lesions(large, 3, np.random.default_rng(s))[0]["he"] > 0).sum() / 512 ** 2 for s in range(4)]
    assert 0.6 < np.mean(a) / np.mean(b) < 1.6


def test_fit_reproduces_per_grade_mean_counts(tmp_path):
    root = write_phantom_dataset(tmp_path / "ph", count=40, size=128, seed=9)
    stats = fit_lesion_stats(root)
    stats.save(tmp_path / "stats.json")
    stats = LesionStats.load(tmp_path / "stats.json")
    structures = [render_structure(128, 1000 + s) for s in range(4)]
    n = 30
    for g in range(5):
        fitted = {t: stats.grades[g][t].mean_count() for t in LESION_TYPES}
        sd = {t: np.sqrt(np.dot((np.arange(len(h)) - fitted[t]) ** 2, h))
              for t, h in ((t, stats.grades[g][t].count_hist) for t in LESION_TYPES)}
        sampled = {t: [] for t in LESION_TYPES}
        for s in range(n):
            _, counts = imitate_lesions(structures[s % 4], g, np.random.default_rng(s), stats)
            for t in LESION_TYPES:
                sampled[t].append(counts[t])
        for t in LESION_TYPES:
            mean = np.mean(sampled[t])
            # Tolerance: three standard errors of a mean of n draws from the fitted count
            # distribution, at least 1.5 lesions. Counts the layout cannot hold would show as bias.
            assert abs(mean - fitted[t]) <= max(1.5, 3 * sd[t] / np.sqrt(n)), (g, t, mean, fitted[t])
        assert fitted["he"] == 0 if g < 2 else fitted["he"] > 0


def _bad_stats(field, value):
    data = DEFAULT_STATS.to_dict()
    data["grades"]["2"]["ma"][field] = value
    return data


@pytest.mark.parametrize("field, value, reason", [
    ("count_hist", [-1.0, 2.0], "count_hist needs finite, non-negative values with a positive sum"),
    ("count_hist", [0.0, 0.0], "count_hist needs finite, non-negative values with a positive sum"),
    ("count_hist", [0.0] * 200_000 + [1.0], "count_hist allows 200000 lesions per image (at most 2000)"),
    ("dist_hist", [1.0, 1.0, 1.0], "dist_hist has 3 bins, not 16"),
    ("dist_hist", [float("nan")] * 16, "dist_hist needs finite"),
    ("log_area_mean", 1e300, "log_area_mean 1e+300 is outside -20..1"),
    ("log_area_mean", float("nan"), "log_area_mean nan is outside -20..1"),
    ("log_area_std", -0.5, "log_area_std -0.5 is outside 0..5"),
])
def test_lesion_stats_out_of_range_name_the_file_and_field(tmp_path, field, value, reason):
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(_bad_stats(field, value)))     # NaN is written as the bare NaN Python reads
    with pytest.raises(DrganError) as exc:
        LesionStats.load(path)
    assert str(exc.value).startswith(f"{path}: invalid lesion statistics: grades.2.ma.{reason}"), str(exc.value)



def test_fit_refuses_a_dataset_without_lesion_masks(tmp_path):
    """Missing mask files read as zeros: a set without any would fit 'no lesions in any grade'."""
    import shutil

    root = write_phantom_dataset(tmp_path / "ph", count=5, size=64, seed=0)
    for folder in (root / "masks").iterdir():
        for t in LESION_TYPES:
            (folder / f"{t}.png").unlink(missing_ok=True)
    with pytest.raises(DrganError, match="no sample has a lesion mask"):
        fit_lesion_stats(root)
    shutil.rmtree(root / "masks")
    with pytest.raises(DrganError, match="no sample has a lesion mask"):
        fit_lesion_stats(root)


def test_fit_with_skip_bad_names_how_many_samples_it_left_out(tmp_path, capsys):
    root = write_phantom_dataset(tmp_path / "ph", count=5, size=64, seed=0)
    next((root / "images").iterdir()).write_bytes(b"not a png")
    with pytest.raises(DrganError):
        fit_lesion_stats(root)
    capsys.readouterr()
    stats = fit_lesion_stats(root, skip_bad=True)
    assert stats.grades and f"warning: {root}: 1 bad sample(s) left out" in capsys.readouterr().err


def test_fit_lesions_reads_the_train_split_unless_told_otherwise(tmp_path):
    """Statistics fit on the test eyes would carry them into a set that augments a grader tested on them."""
    from click.testing import CliRunner

    from drgan.cli import cli
    from drgan.data.labels import read_labels

    root = write_phantom_dataset(tmp_path / "ph", count=20, size=96, seed=4)
    for sid, _, split in read_labels(root)[0]:  # laser scars on the test eyes alone
        (root / "masks" / sid / "laser.png").unlink(missing_ok=True)
        if split == "test":
            Image.open(root / "masks" / sid / "disc.png").save(root / "masks" / sid / "laser.png")

    def laser(*split: str) -> float:
        out = tmp_path / f"{'-'.join(split) or 'default'}.json"
        result = CliRunner().invoke(cli, ["data", "fit-lesions", str(root), "--out", str(out), *split])
        assert result.exit_code == 0, result.output
        return sum(LesionStats.load(out).grades[g]["laser"].mean_count() for g in range(5))

    assert laser() == laser("--split", "train") == 0.0
    assert laser("--split", "test") > 0 and laser("--split", "all") > 0


def test_lesion_stats_given_an_image_or_bad_json_say_what_they_are(tmp_path):
    path = tmp_path / "sheet.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    with pytest.raises(DrganError, match=rf"^{path}: not a text file \(lesion statistics are the JSON `drgan data "
                                         r"fit-lesions` writes\)$"):
        LesionStats.load(path)
    path.write_text("{")
    with pytest.raises(DrganError, match=rf"^{path}: not valid JSON"):
        LesionStats.load(path)
