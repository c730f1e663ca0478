"""Kernel Inception Distance: the unbiased estimate against its definition, its independence of
the subset size, subsets, per-grade values and `drgan evaluate kid` (the Inception network itself
runs in tests/test_metrics_registry.py)."""
import hashlib
import json

import numpy as np
import pytest

from drgan.cli import cli
from drgan.cli.common import run_command
from drgan.data.phantom import write_phantom_dataset
from drgan.errors import DrganError
from drgan.metrics import fid
from drgan.metrics.images import open_image_set
from drgan.metrics.kid import compute_kid, format_kid, kernel_inception_distance, polynomial_mmd2


def test_the_estimate_is_the_kernels_mean_over_distinct_pairs_within_less_twice_across():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(5, 8)), rng.normal(size=(7, 8)) + 0.3

    def k(a, b):
        return (a @ b / 8 + 1) ** 3

    within_x = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    within_y = sum(k(y[i], y[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    across = sum(k(a, b) for a in x for b in y) / (5 * 7)
    assert polynomial_mmd2(x, y) == pytest.approx(within_x + within_y - 2 * across, rel=1e-12)
    assert polynomial_mmd2(x, y) == pytest.approx(polynomial_mmd2(y, x), rel=1e-12)


def test_its_expectation_does_not_depend_on_the_subset_size():
    """Unbiased: 0 for one distribution, and one value for two, at 10 rows per subset as at 200
    (the diagonal terms, of about 8 here against about 1 off it, would add 2 x 7 / m)."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4000, 32)), rng.normal(size=(4000, 32))
    c = rng.normal(size=(4000, 32)) * 1.3
    for size in (10, 200):
        same = kernel_inception_distance(a, b, subsets=400, subset_size=size)
        assert abs(same["kid_x1e3"]) < 4 * same["kid_x1e3_std"] / np.sqrt(400), size
    small, large = (kernel_inception_distance(a, c, subsets=400, subset_size=size) for size in (10, 200))
    standard_error = np.hypot(small["kid_x1e3_std"], large["kid_x1e3_std"]) / np.sqrt(400)
    assert large["kid_x1e3"] > 20 * large["kid_x1e3_std"] / np.sqrt(400)
    assert abs(small["kid_x1e3"] - large["kid_x1e3"]) < 4 * standard_error


def test_subsets_are_seeded_and_no_larger_than_either_set():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(50, 16)), rng.normal(size=(30, 16)) + 0.2
    first = kernel_inception_distance(real, fake, subsets=5, subset_size=20, seed=3)
    assert first == kernel_inception_distance(real, fake, subsets=5, subset_size=20, seed=3)
    assert first["kid_x1e3"] != kernel_inception_distance(real, fake, subsets=5, subset_size=20, seed=4)["kid_x1e3"]
    assert (first["subsets"], first["subset_size"]) == (5, 20)
    whole = kernel_inception_distance(real, fake, subsets=3, subset_size=1000)
    assert whole["subset_size"] == 30 and whole["kid_x1e3_std"] > 0  # every fake row, real rows drawn
    one = kernel_inception_distance(real[:30], fake, subsets=3, subset_size=1000)  # every row of both: one estimate
    assert one == {"kid_x1e3": 1e3 * polynomial_mmd2(real[:30], fake), "kid_x1e3_std": None, "subsets": 1, "subset_size": 30}
    assert "(one estimate over all 30 images of each)" in format_kid({**one, "real": {"folder": "r"}, "fake": {"folder": "f"}})
    assert kernel_inception_distance(real, real, subsets=3, subset_size=60)["kid_x1e3"] < 0  # a set against itself
    with pytest.raises(DrganError, match="needs 2 per set"):
        polynomial_mmd2(real[:1], fake)
    with pytest.raises(DrganError, match="give at least 1 subset of 2"):
        kernel_inception_distance(real, fake, subsets=0)


@pytest.fixture()
def features(monkeypatch):
    """Stand-in features, one fixed vector per image's bytes (the network is slow on the CPU)."""
    def extract(paths, net, batch=32, desc="", progress=True):
        rows = [np.random.default_rng(int(hashlib.sha256(p.read_bytes()).hexdigest()[:8], 16)).normal(size=16) for p in paths]
        return np.asarray(rows, dtype=np.float32)

    monkeypatch.setattr(fid, "load_inception", lambda *args: None)
    monkeypatch.setattr(fid, "extract_features", extract)
    return extract


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("kid")
    grades = [0, 1, 3] * 4
    return (write_phantom_dataset(root / "real", 12, 64, seed=0, grades=grades),
            write_phantom_dataset(root / "fake", 12, 64, seed=1, grades=grades[:-1] + [1]))


def test_per_grade_values_come_from_each_grades_own_features(features, sets):
    real, fake = (open_image_set(s) for s in sets)
    result = compute_kid(real, fake, per_grade=True, subsets=4, subset_size=3, seed=5)
    assert result["grades_used"] == [0, 1, 3] and (result["real"]["count"], result["fake"]["count"]) == (12, 12)
    for grade in (0, 1, 3):
        mine = [i for i, g in enumerate(real.grades) if g == grade], [i for i, g in enumerate(fake.grades) if g == grade]
        direct = kernel_inception_distance(features(real.subset(mine[0]).paths, None), features(fake.subset(mine[1]).paths, None),
                                           subsets=4, subset_size=3, seed=5)
        assert result["per_grade"][str(grade)] == direct
    assert result["kid_x1e3_grade_average"] == pytest.approx(np.mean([v["kid_x1e3"] for v in result["per_grade"].values()]))
    assert result["kid_x1e3"] == kernel_inception_distance(features(real.paths, None), features(fake.paths, None),
                                                           subsets=4, subset_size=3, seed=5)["kid_x1e3"]
    lines = format_kid(result).splitlines()
    assert lines[0].startswith("KID x1e3 ") and lines[0].endswith(f"(std {result['kid_x1e3_std']:.4f} over 4 subsets of 3): "
                                                                   f"{result['kid_x1e3']:.4f}")
    assert lines[-1] == f"KID x1e3 average over grades (only grades 0,1,3 have >= 2 images in both sets): " \
                        f"{result['kid_x1e3_grade_average']:.4f}"


def test_cli_kid_json_and_text(features, sets, capsys):
    real, fake = sets
    args = ["evaluate", "kid", "--real", str(real), "--fake", str(fake), "--subsets", "7", "--subset-size", "5",
            "--seed", "9", "--device", "cpu"]
    assert run_command(cli, args=args + ["--json"], prog_name="drgan") == 0
    result = json.loads(capsys.readouterr().out)
    direct = compute_kid(open_image_set(real), open_image_set(fake), subsets=7, subset_size=5, seed=9)
    assert result["kid_x1e3"] == direct["kid_x1e3"] and (result["subsets"], result["subset_size"]) == (7, 5)
    assert run_command(cli, args=args, prog_name="drgan") == 0
    assert capsys.readouterr().out.strip().endswith(f": {direct['kid_x1e3']:.4f}")


def test_a_set_of_one_image_is_refused_before_any_feature(sets, tmp_path, monkeypatch, capsys):
    real, _ = sets
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.png").write_bytes(next((real / "images").iterdir()).read_bytes())
    monkeypatch.setattr(fid, "extract_features", lambda *a, **k: pytest.fail("features computed first"))
    assert run_command(cli, args=["evaluate", "kid", "--real", str(real), "--fake", str(one)], prog_name="drgan") == 1
    assert capsys.readouterr().err == f"error: {one}: 1 image; KID needs at least 2 images per set\n"
    assert run_command(cli, args=["evaluate", "kid", "--real", str(real), "--fake", str(real), "--subset-size", "1"],
                       prog_name="drgan") == 1  # a number out of range is bad input
    assert capsys.readouterr().err == "error: --subset-size 1: outside the range 2<=x<=10000\n"


def test_fid_and_kid_in_one_metrics_call_load_one_network_and_read_each_set_once(sets, monkeypatch, capsys):
    """`evaluate metrics --metrics fid,kid` (shared_features): the values of two separate calls, for
    one network load and one pass over each set; outside it each metric does its own."""
    import torch

    from drgan.metrics.registry import MetricInputs, calc_metric

    counts = {"loads": 0, "images": 0}

    class Net(torch.nn.Module):  # a stand-in for the Inception network: the real one takes minutes here
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            counts["images"] += len(x)
            return (x.mean(dim=(2, 3)) * self.scale).repeat(1, 683)[:, :2048] + torch.arange(2048) * 1e-3

    def load(path, map_location):
        counts["loads"] += 1
        return Net()

    monkeypatch.setattr(fid.torch.jit, "load", load)
    monkeypatch.setattr(fid, "frechet_distance", lambda mu1, s1, mu2, s2: float(np.sum((mu1 - mu2) ** 2)))
    real, fake = sets
    inputs = MetricInputs(fake=fake, real=real, device="cpu")
    separate = {**calc_metric("fid", inputs), **calc_metric("kid", inputs)}
    assert counts == {"loads": 2, "images": 48}
    args = ["evaluate", "metrics", "--fake", str(fake), "--real", str(real), "--metrics", "fid,kid", "--device", "cpu", "--json"]
    assert run_command(cli, args=args, prog_name="drgan") == 0
    assert counts == {"loads": 3, "images": 72}
    shared = json.loads(capsys.readouterr().out)
    assert shared == {k: v for k, v in separate.items() if k != "warnings"} and shared["kid_x1e3"] != 0
