"""Grading metrics against scikit-learn (a test-only oracle)."""
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, confusion_matrix, recall_score

from drgan.errors import DrganError
from drgan.metrics.grading import format_grading_table, grading_metrics


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, 200)
    # Correlated predictions so kappa is far from 0.
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 5, 200))
    m = grading_metrics(y_true, y_pred)
    labels = list(range(5))
    assert m["count"] == 200
    assert m["accuracy"] == pytest.approx(float(np.mean(y_true == y_pred)))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred, labels=labels, weights="quadratic"))
    assert m["tpr"] == pytest.approx(list(recall_score(y_true, y_pred, labels=labels, average=None)))
    assert m["confusion"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()


def test_absent_class_gives_none_and_kappa_matches():
    y_true = np.array([0, 0, 1, 2, 2, 4, 4, 4])
    y_pred = np.array([0, 3, 1, 2, 1, 4, 3, 4])
    m = grading_metrics(y_true, y_pred)
    assert m["tpr"][3] is None
    assert m["tpr"][4] == pytest.approx(2 / 3)
    assert m["kappa"] == pytest.approx(
        cohen_kappa_score(y_true, y_pred, labels=list(range(5)), weights="quadratic"))


def test_kappa_of_one_grade_everywhere_is_undefined():
    """0/0, as sklearn's NaN says; 1.0 claimed a skill a set of one grade cannot show."""
    m = grading_metrics([2, 2, 2], [2, 2, 2])
    assert m["kappa"] is None and m["accuracy"] == 1.0
    assert "\nkappa     n/a\n" in format_grading_table(m)
    assert grading_metrics([2, 2, 2], [2, 2, 3])["kappa"] == 0.0  # defined: the labels' one grade, predictions vary


@pytest.mark.parametrize("y_true,y_pred,match", [
    ([0, 5], [0, 1], "grade 5"),
    ([0, 1], [0], "y_pred has 1"),
    ([], [], "empty"),
])
def test_bad_input_names_culprit(y_true, y_pred, match):
    with pytest.raises(DrganError, match=match):
        grading_metrics(y_true, y_pred)


def test_table_shows_values():
    m = grading_metrics([0, 1, 1, 4], [0, 1, 0, 4])
    table = format_grading_table(m)
    assert "accuracy  0.7500" in table
    assert f"kappa     {m['kappa']:.4f}" in table
    assert "\n3      0        -" in table  # absent grade


def test_cli_evaluate_grading_matches_direct_predictions(tmp_path):
    import json

    import torch
    from click.testing import CliRunner

    from drgan.checkpoint import save_module
    from drgan.runs import write_run_config
    from drgan.cli import cli
    from drgan.config import preset
    from drgan.data.dataset import FundusDataset
    from drgan.data.phantom import write_phantom_dataset
    from drgan.nn import build_grader

    cfg = preset("tiny-64")
    run = tmp_path / "run"
    torch.manual_seed(3)
    model = build_grader(cfg)
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0, 0.0]))  # predicts grade 2 for every image
    write_run_config(run, cfg, "global", {"trainer": "grader"})
    save_module(model, run / "grader.safetensors")
    data = write_phantom_dataset(tmp_path / "data", 20, 64, seed=0)

    result = CliRunner().invoke(cli, ["evaluate", "grading", "--grader", str(run), "--fake", str(data),
                                      "--device", "cpu", "--batch", "4", "--json"])
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    for old in (["--model", str(run), "--data", str(data)], ["--run", str(run), "--data", str(data)]):  # former spellings
        again = CliRunner().invoke(cli, ["evaluate", "grading", *old, "--device", "cpu", "--batch", "4", "--json"])
        assert json.loads(again.stdout) == m
    truth = np.array(FundusDataset(data, 64).grades)
    assert m["count"] == 20 and m["confusion"] == confusion_matrix(truth, np.full(20, 2), labels=range(5)).tolist()
    assert m["accuracy"] == pytest.approx(0.2) and m["tpr"] == [0.0, 0.0, 1.0, 0.0, 0.0] and m["kappa"] == 0.0

    text = CliRunner().invoke(cli, ["evaluate", "grading", "--model", str(run), "--data", str(data),
                                    "--split", "test", "--device", "cpu"])
    assert text.exit_code == 0, text.output
    assert "images    5" in text.stdout and "accuracy  " in text.stdout
    wrong = CliRunner().invoke(cli, ["evaluate", "grading", "--run", str(run), "--data", str(data), "--split", "tset"])
    assert wrong.exit_code == 2 and "Invalid value for '--split': 'tset' is not one of 'train', 'val', 'test'" in wrong.output


def test_cli_evaluate_grading_rejects_non_run_folder(tmp_path):
    from click.testing import CliRunner

    from drgan.cli import cli

    result = CliRunner().invoke(cli, ["evaluate", "grading", "--model", str(tmp_path), "--data", str(tmp_path)])
    assert result.exit_code != 0 and isinstance(result.exception, DrganError)
    assert "run.json" in str(result.exception)


def test_paired_bootstrap_intervals_hold_the_figures_and_difference_paired_models():
    from drgan.metrics.grading import paired_bootstrap

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 5, 400)
    noisy = np.where(rng.random(400) < 0.6, truth, rng.integers(0, 5, 400))
    better = np.where(rng.random(400) < 0.5, truth, noisy)         # right wherever noisy is, and more
    out = paired_bootstrap(truth, {"real": noisy, "same": noisy.copy(), "better": better}, "real", resamples=300)
    for name, pred in (("real", noisy), ("better", better)):
        figures = grading_metrics(truth, pred)
        lo, hi = out[name]["accuracy_ci95"]
        assert lo < figures["accuracy"] < hi and hi - lo < 0.15
        lo, hi = out[name]["kappa_ci95"]
        assert lo < figures["kappa"] < hi
    assert out["same"]["accuracy_diff_ci95"] == [0.0, 0.0] and out["same"]["kappa_diff_ci95"] == [0.0, 0.0]
    assert out["better"]["accuracy_diff_ci95"][0] > 0 and out["better"]["kappa_diff_ci95"][0] > 0
    assert "accuracy_diff_ci95" not in out["real"]
    # Paired: the shared luck of the test set cancels, so the difference is tighter than either figure.
    width = lambda i: i[1] - i[0]  # noqa: E731
    assert width(out["better"]["accuracy_diff_ci95"]) < width(out["better"]["accuracy_ci95"])
    assert paired_bootstrap(truth, {"real": noisy}, "real", resamples=300) == {"real": out["real"]}   # seeded


def test_paired_bootstrap_refuses_what_it_cannot_pair_and_leaves_an_undefined_kappa_open():
    from drgan.metrics.grading import paired_bootstrap

    truth = np.array([0, 1, 2, 3, 4])
    with pytest.raises(DrganError, match="no predictions of the baseline 'real'"):
        paired_bootstrap(truth, {"other": truth}, "real")
    with pytest.raises(DrganError, match=r"one prediction per test image \(5\)"):
        paired_bootstrap(truth, {"real": truth, "short": truth[:4]}, "real")
    ones = paired_bootstrap(np.zeros(6, int), {"real": np.zeros(6, int)}, "real", resamples=50)["real"]
    assert ones["accuracy_ci95"] == [1.0, 1.0] and ones["kappa_ci95"] is None   # one grade everywhere: 0/0
    one = paired_bootstrap([2], {"real": [2], "x": [1]}, "real")                  # nothing to resample
    assert one == {"real": {"accuracy_ci95": None, "kappa_ci95": None},
                   "x": {"accuracy_ci95": None, "kappa_ci95": None, "accuracy_diff_ci95": None, "kappa_diff_ci95": None}}


def test_paired_bootstrap_refuses_a_grade_outside_the_scale():
    from drgan.metrics.grading import paired_bootstrap

    with pytest.raises(DrganError, match="outside 0..4"):
        paired_bootstrap([0, 5], {"real": [0, 5]}, "real")


def test_kappa_of_perfect_predictions_is_one_as_sklearn():
    """Perfect agreement over several grades is kappa 1 (sklearn), not the undefined 0/0 of one grade."""
    y = [0, 1, 2, 3, 4, 4, 2]
    m = grading_metrics(y, y)
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, y, labels=list(range(5)), weights="quadratic")) == 1.0


def test_paired_bootstrap_of_two_images_gives_intervals():
    """Two images are enough to resample (fewer than two leave every interval None): two right
    predictions are right in every resample, while a resample of one grade leaves kappa undefined."""
    from drgan.metrics.grading import paired_bootstrap

    out = paired_bootstrap([0, 1], {"real": [0, 1]}, "real", resamples=50)
    assert out == {"real": {"accuracy_ci95": [1.0, 1.0], "kappa_ci95": None}}


def test_paired_bootstrap_accuracy_interval_is_the_95_percent_binomial_percentile_interval():
    """The percentile bootstrap of an accuracy resamples right/wrong images: its resampled accuracy is
    Binomial(n, acc) / n, so the 95% interval is that distribution's 2.5% and 97.5% quantiles
    (scipy.stats.binom as the oracle), and never leaves [0, 1] (a basic interval's 2 acc - q would)."""
    from scipy.stats import binom

    from drgan.metrics.grading import paired_bootstrap

    rng = np.random.default_rng(11)
    n = 1000
    truth = rng.integers(0, 5, n)
    pred = truth.copy()
    wrong = rng.choice(n, 100, replace=False)                          # accuracy 0.9
    pred[wrong] = (truth[wrong] + 1) % 5
    lo, hi = paired_bootstrap(truth, {"real": pred}, "real", resamples=4000)["real"]["accuracy_ci95"]
    assert lo == pytest.approx(binom.ppf(0.025, n, 0.9) / n, abs=1.5 / n)
    assert hi == pytest.approx(binom.ppf(0.975, n, 0.9) / n, abs=1.5 / n)
    # 49 of 50 right: the resampled accuracy is 1.0 in 36% of resamples and below 0.95 in about 8%.
    truth = np.arange(50) % 5
    pred = truth.copy()
    pred[0] = 1
    lo, hi = paired_bootstrap(truth, {"real": pred}, "real", resamples=2000)["real"]["accuracy_ci95"]
    assert hi == 1.0 and lo == pytest.approx(binom.ppf(0.025, 50, 0.98) / 50, abs=1 / 50)


def test_paired_bootstrap_kappa_difference_is_of_kappa_not_of_accuracy():
    """Two models right on the same images have equal accuracy in every resample (difference [0, 0]);
    one whose misses are 4 grades off has a far lower quadratic kappa than one 1 grade off."""
    from drgan.metrics.grading import paired_bootstrap

    rng = np.random.default_rng(5)
    truth = np.tile([0, 4], 100)
    wrong = rng.random(200) < 0.3
    near = np.where(wrong, np.where(truth == 0, 1, 3), truth)           # misses by 1 grade
    far = np.where(wrong, 4 - truth, truth)                              # misses by 4 grades
    out = paired_bootstrap(truth, {"near": near, "far": far}, "near", resamples=300)["far"]
    assert out["accuracy_diff_ci95"] == [0.0, 0.0]
    labels = list(range(5))
    gap = (cohen_kappa_score(truth, far, labels=labels, weights="quadratic")
           - cohen_kappa_score(truth, near, labels=labels, weights="quadratic"))
    assert gap < -0.5
    lo, hi = out["kappa_diff_ci95"]
    assert lo < gap < hi < 0


def test_paired_bootstrap_draws_1000_resamples_by_default(monkeypatch):
    """BOOTSTRAP_RESAMPLES: the documented default of 1000 resamples reaches scipy."""
    import scipy.stats

    from drgan.metrics.grading import paired_bootstrap

    seen = []
    real = scipy.stats.bootstrap

    def spy(*args, **kwargs):
        seen.append(kwargs["n_resamples"])
        return real(*args, **kwargs)

    monkeypatch.setattr(scipy.stats, "bootstrap", spy)
    paired_bootstrap([0, 1, 2, 3], {"real": [0, 1, 2, 2]}, "real")
    assert seen == [1000]


def _constant_grader(tmp_path, grade):
    import torch

    from drgan.checkpoint import save_module
    from drgan.config import preset
    from drgan.nn import build_grader
    from drgan.runs import write_run_config

    cfg = preset("tiny-64")
    run = tmp_path / "run"
    torch.manual_seed(3)
    model = build_grader(cfg)
    with torch.no_grad():
        model.fc.bias.copy_(torch.nn.functional.one_hot(torch.tensor(grade), 5).float() * 5)
    write_run_config(run, cfg, "global", {"trainer": "grader"})
    save_module(model, run / "grader.safetensors")
    return run


def test_load_grader_gives_the_model_in_eval_mode(tmp_path):
    """A measuring instrument: batch norm uses its running statistics (eval), so a grade does not
    depend on the other images of its batch."""
    from drgan.metrics.grade_prediction import load_grader

    model, side = load_grader(_constant_grader(tmp_path, 2))
    assert side == 64 and not model.training and not any(m.training for m in model.modules())


def test_evaluate_grader_refuses_an_empty_dataset_in_one_line(tmp_path):
    from drgan.metrics.grade_prediction import evaluate_grader, load_grader

    model, _ = load_grader(_constant_grader(tmp_path, 2))
    with pytest.raises(DrganError, match="^grading: the dataset has no images$"):
        evaluate_grader(model, [], progress=False)
