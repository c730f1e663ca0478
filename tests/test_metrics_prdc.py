"""Precision, recall, density and coverage: against their definitions computed by brute force, at
their extremes, in blocks, and `drgan evaluate prdc` (the Inception network itself runs in
tests/test_metrics_registry.py)."""
import json

import numpy as np
import pytest

from drgan.cli import cli
from drgan.cli.common import run_command
from drgan.data.phantom import write_phantom_dataset
from drgan.errors import DrganError
from drgan.metrics import fid
from drgan.metrics import prdc as prdc_module
from drgan.metrics.images import open_image_set
from drgan.metrics.prdc import compute_prdc, format_prdc, prdc


def brute_force(real, fake, k):
    def distances(a, b):
        return np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))

    real_radii = np.sort(distances(real, real), axis=1)[:, k]  # column 0: the row itself
    fake_radii = np.sort(distances(fake, fake), axis=1)[:, k]
    d = distances(fake, real)
    held = d <= real_radii[None]
    return {"precision": held.any(axis=1).mean(), "recall": (d <= fake_radii[:, None]).any(axis=0).mean(),
            "density": held.sum() / (k * len(fake)), "coverage": (d.min(axis=0) <= real_radii).mean()}


@pytest.mark.parametrize("block", [1024, 7])  # one block, and blocks with a ragged last one
def test_the_four_figures_follow_their_definitions(monkeypatch, block):
    monkeypatch.setattr(prdc_module, "_BLOCK", block)
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(60, 8)), rng.normal(size=(45, 8)) * 1.3 + 0.4
    for k in (1, 3, 5):
        expected = brute_force(real, fake, k)
        got = prdc(real, fake, k)
        assert got == pytest.approx(expected, abs=1e-9), k
        assert 0 < got["precision"] < 1 and 0 < got["coverage"] < 1


def test_a_set_against_itself_and_against_a_far_one():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(40, 8))
    same = prdc(real, real, 5)
    assert (same["precision"], same["recall"], same["coverage"]) == (1.0, 1.0, 1.0)
    # Each image also lies in its own ball; the k-th neighbour lies on a ball's edge, where float32
    # distances by matrix products (not exactly symmetric) decide either way.
    assert same["density"] == pytest.approx(6 / 5, abs=0.02)
    assert prdc(real, real + 100, 5) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    collapsed = prdc(real, np.repeat(real[:1], 40, axis=0) + 1e-3 * rng.normal(size=(40, 8)), 5)
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.2 and collapsed["coverage"] < 0.2  # one mode
    with pytest.raises(DrganError, match="5 nearest neighbours need at least 6 in each set"):
        prdc(real, real[:5], 5)


@pytest.fixture()
def features(monkeypatch):
    """Stand-in features, one fixed vector per image's bytes (the network is slow on the CPU)."""
    def extract(paths, net, batch=32, desc="", progress=True):
        return np.asarray([np.frombuffer(p.read_bytes()[-64:], dtype=np.uint8)[:16] for p in paths], dtype=np.float32)

    monkeypatch.setattr(fid, "load_inception", lambda *args: None)
    monkeypatch.setattr(fid, "extract_features", extract)
    return extract


def test_compute_prdc_takes_seeded_subsets_of_at_most_max_images(features, tmp_path):
    real = open_image_set(write_phantom_dataset(tmp_path / "real", 12, 64, seed=0))
    fake = open_image_set(write_phantom_dataset(tmp_path / "fake", 9, 64, seed=1))
    whole = compute_prdc(real, fake, k=3)
    assert whole == {**prdc(features(real.paths, None), features(fake.paths, None), 3), "k": 3,
                     "real": {"folder": str(real.root), "count": 12}, "fake": {"folder": str(fake.root), "count": 9}}
    cut = compute_prdc(real, fake, k=3, max_images=8, seed=4)
    assert (cut["real"]["count"], cut["fake"]["count"]) == (8, 8) and cut == compute_prdc(real, fake, k=3, max_images=8, seed=4)
    assert format_prdc(cut).splitlines()[1:] == [f"{n}: {cut[n]:.4f}" for n in ("precision", "recall", "density", "coverage")]
    with pytest.raises(DrganError, match=r"8 and 8 images; PRDC's 8 nearest neighbours need at least 9 in each set"):
        compute_prdc(real, fake, k=8, max_images=8)


def test_cli_prdc_json_and_bad_input(features, tmp_path, capsys):
    real = write_phantom_dataset(tmp_path / "real", 10, 64, seed=0)
    fake = write_phantom_dataset(tmp_path / "fake", 10, 64, seed=1)
    args = ["evaluate", "prdc", "--real", str(real), "--fake", str(fake), "--neighbours", "2", "--device", "cpu"]
    assert run_command(cli, args=args + ["--json"], prog_name="drgan") == 0
    result = json.loads(capsys.readouterr().out)
    assert result == compute_prdc(open_image_set(real), open_image_set(fake), k=2)
    assert run_command(cli, args=args[:-4] + ["--neighbours", "0"], prog_name="drgan") == 1
    assert capsys.readouterr().err == "error: --neighbours 0: outside the range 1<=x<=100\n"


def test_per_grade_figures_come_from_each_grades_own_features(features, tmp_path):
    """Grades with k + 1 images in both sets, named in the average's line when some are left out."""
    grades = [0] * 6 + [2] * 6 + [4] * 3
    real = open_image_set(write_phantom_dataset(tmp_path / "real", 15, 64, seed=0, grades=grades, split=False))
    fake = open_image_set(write_phantom_dataset(tmp_path / "fake", 15, 64, seed=1, grades=grades, split=False))
    result = compute_prdc(real, fake, per_grade=True, k=5)
    assert result["grades_used"] == [0, 2] and set(result["per_grade"]) == {"0", "2"}
    for g in (0, 2):
        rows = [i for i, grade in enumerate(grades) if grade == g]
        assert result["per_grade"][str(g)] == prdc(features(real.subset(rows).paths, None), features(fake.subset(rows).paths, None), 5)
    assert result["grade_average"]["density"] == pytest.approx(np.mean([v["density"] for v in result["per_grade"].values()]))
    assert format_prdc(result).splitlines()[-1] == \
        f"coverage average over grades (only grades 0,2 have >= 6 images in both sets): {result['grade_average']['coverage']:.4f}"
    with pytest.raises(DrganError, match="no grade has at least 7 images in both sets"):
        compute_prdc(real, fake, per_grade=True, k=6)
