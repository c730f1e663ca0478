"""Metrics by name: the registry's names and errors, each metric's result against its module's own,
and `drgan evaluate metrics` end to end."""
import json
import shutil
import subprocess
import sys

import pytest

from drgan.cli import cli
from drgan.cli.common import run_command
from drgan.data.phantom import write_phantom_dataset
from drgan.errors import DrganError, ParameterError
from drgan.metrics.fid import compute_fid as direct_fid
from drgan.metrics.fidelity import evaluate_fidelity
from drgan.metrics.grade_prediction import grade_dataset
from drgan.metrics.images import open_image_set
from drgan.metrics.fid import shared_features
from drgan.metrics.kid import compute_kid as direct_kid
from drgan.metrics.prdc import compute_prdc as direct_prdc
from drgan.metrics.registry import MetricInputs, calc_metric, format_metrics, metric_list, metric_names
from drgan.metrics.swd import compute_swd


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    grades = [0, 3] * 10  # the train split holds 8 of each: per-grade FID needs 2, PRDC 6
    real = write_phantom_dataset(root / "real", 20, 64, seed=0, grades=grades)
    return real, write_phantom_dataset(root / "fake", 20, 64, seed=1, grades=grades)


@pytest.fixture(scope="module")
def grader(tmp_path_factory):
    from drgan.checkpoint import save_module
    from drgan.config import preset
    from drgan.nn import build_grader
    from drgan.runs import write_run_config

    run = tmp_path_factory.mktemp("grader") / "run"
    cfg = preset("tiny-64")
    write_run_config(run, cfg, "global", {"trainer": "grader"})
    save_module(build_grader(cfg), run / "grader.safetensors")
    return run


def test_the_table_shows_an_undefined_kappa_as_n_a_and_an_absent_grade_as_a_dash():
    table = format_metrics({"grading_kappa": None, "grading_tpr_grade_3": None, "grading_accuracy": 1.0, "grading_images": 4})
    assert table.splitlines() == ["grading_kappa        n/a", "grading_tpr_grade_3  -", "grading_accuracy     1.0000",
                                  "grading_images       4"]


def test_registry_lists_the_metrics_and_unknown_names_are_one_line():
    assert metric_names() == ["fid", "kid", "prdc", "swd", "fidelity", "grading"]
    with pytest.raises(ParameterError) as err:
        calc_metric("lpips", MetricInputs(fake="unused"))
    assert str(err.value) == "metric 'lpips': choose one of fid, kid, prdc, swd, fidelity, grading"
    assert metric_list("swd, fidelity,swd") == ["swd", "fidelity"]
    with pytest.raises(ParameterError, match="^metrics 'lpips': choose one of fid, kid, prdc, swd, fidelity, grading$"):
        metric_list("swd,lpips")
    with pytest.raises(ParameterError, match="^metrics 'fid,': an empty name in the list; separate the names by single commas$"):
        metric_list("fid,")


def test_metrics_that_cannot_run_say_what_is_missing(sets):
    real, fake = sets
    for name in ("fid", "kid", "prdc", "swd"):
        with pytest.raises(ParameterError) as err:
            calc_metric(name, MetricInputs(fake=fake))
        assert err.value.params == ["real"]
    with pytest.raises(ParameterError) as err:
        calc_metric("grading", MetricInputs(fake=fake, real=real))
    assert err.value.params == ["grader"]
    with pytest.raises(DrganError, match="needs a dataset folder"):
        calc_metric("swd", MetricInputs(fake=fake, real=real / "images", real_split="test"))
    with pytest.raises(ParameterError) as err:  # fidelity and grading would ignore it
        MetricInputs(fake=fake, real_split="test")
    assert err.value.params == ["real_split", "real", "real"]


@pytest.fixture(scope="module")
def inputs(sets, grader) -> MetricInputs:
    real, fake = sets
    return MetricInputs(fake=fake, real=real, real_split="train", grader=grader, seed=2, per_grade=True)


@pytest.fixture(scope="module")
def results(inputs):
    """Each metric's result by name, and the arguments and result of the one compute_fid, compute_kid
    and compute_prdc call, by name (one Inception network and one pass over each set, shared)."""
    calls = {}

    def recorded(name, function):
        def call(*args, **kwargs):
            assert name not in calls
            calls[name] = (args, kwargs, function(*args, **kwargs))
            return calls[name][2]
        return call

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("drgan.metrics.fid.compute_fid", recorded("fid", direct_fid))
        patch.setattr("drgan.metrics.kid.compute_kid", recorded("kid", direct_kid))
        patch.setattr("drgan.metrics.prdc.compute_prdc", recorded("prdc", direct_prdc))
        with shared_features():
            by_name = {name: calc_metric(name, inputs) for name in metric_names()}
    return by_name, calls


def test_registered_metrics_equal_their_modules(inputs, results):
    by_name, calls = results
    fid_args, fid_kwargs, fid = calls["fid"]
    real_set, fake_set = open_image_set(inputs.real, "train"), open_image_set(inputs.fake)
    assert len(real_set) == 16 and len(fake_set) == 20

    swd = compute_swd(real_set, fake_set, seed=2, per_grade=True, progress=False)
    result = by_name["swd"]
    assert result["swd_x1e3_average"] == swd["swd_x1e3_average"] and result["swd_images"] == swd["count"]
    assert [result[f"swd_x1e3_{level}px"] for level in swd["swd_x1e3"]] == list(swd["swd_x1e3"].values())
    assert result["swd_x1e3_grade_average"] == swd["swd_x1e3_grade_average"]

    assert [s.paths for s in fid_args] == [real_set.paths, fake_set.paths] and fid_kwargs["per_grade"]
    result = by_name["fid"]
    assert (result["fid"], result["fid_grade_average"], result["warnings"]) == \
        (fid["fid"], fid["fid_grade_average"], fid["warnings"])
    assert {g: result[f"fid_grade_{g}"] for g in fid["per_grade"]} == fid["per_grade"]

    kid_args, kid_kwargs, kid = calls["kid"]
    assert [s.paths for s in kid_args] == [real_set.paths, fake_set.paths] and kid_kwargs["per_grade"] and kid_kwargs["seed"] == 2
    result = by_name["kid"]
    assert (result["kid_x1e3"], result["kid_x1e3_std"], result["kid_x1e3_grade_average"]) == \
        (kid["kid_x1e3"], kid["kid_x1e3_std"], kid["kid_x1e3_grade_average"])
    assert (result["kid_subset_size"], result["kid_real_images"], result["kid_fake_images"]) == (16, 16, 20)
    assert {g: result[f"kid_x1e3_grade_{g}"] for g in kid["per_grade"]} == {g: v["kid_x1e3"] for g, v in kid["per_grade"].items()}

    prdc_args, prdc_kwargs, prdc = calls["prdc"]
    assert [s.paths for s in prdc_args] == [real_set.paths, fake_set.paths] and prdc_kwargs["seed"] == 2
    result = by_name["prdc"]
    assert {k: result[f"prdc_{k}"] for k in ("precision", "recall", "density", "coverage")} == \
        {k: prdc[k] for k in ("precision", "recall", "density", "coverage")}
    assert (result["prdc_real_images"], result["prdc_fake_images"]) == (16, 20)
    assert prdc_kwargs["per_grade"] and {g: result[f"prdc_coverage_grade_{g}"] for g in prdc["per_grade"]} == \
        {g: v["coverage"] for g, v in prdc["per_grade"].items()} and set(prdc["per_grade"]) == {"0", "3"}
    assert result["prdc_recall_grade_average"] == prdc["grade_average"]["recall"]

    fidelity, _ = evaluate_fidelity(inputs.fake, inputs.real, "train")
    result = by_name["fidelity"]
    assert {k: result[f"fidelity_{k}"] for k in fidelity["fidelity"]["overall"]} == fidelity["fidelity"]["overall"]
    assert {k: result[f"fidelity_fraction_of_real_{k}"] for k in fidelity["fraction_of_reference"]} == \
        fidelity["fraction_of_reference"]

    grading = grade_dataset(inputs.grader, inputs.real, "train")
    result = by_name["grading"]
    assert (result["grading_real_accuracy"], result["grading_real_kappa"]) == (grading["accuracy"], grading["kappa"])
    assert [result[f"grading_real_tpr_grade_{g}"] for g in range(5)] == grading["tpr"]
    assert result["grading_images"] == 20 and result["grading_real_images"] == grading["count"] == 16


def test_every_key_starts_with_its_metric_so_results_merge(results):
    for name, result in results[0].items():
        assert all(key.startswith(name) for key in result if key != "warnings"), (name, list(result))
        json.dumps(result)


def test_cli_metrics_json_text_and_bad_names(sets, capsys):
    real, fake = sets
    args = ["evaluate", "metrics", "--fake", str(fake), "--real", str(real), "--metrics", "swd,fidelity",
            "--max-images", "6", "--seed", "1", "--device", "cpu"]
    assert run_command(cli, args=args + ["--json"], prog_name="drgan") == 0
    result = json.loads(capsys.readouterr().out)
    inputs = MetricInputs(fake=fake, real=real, max_images=6, seed=1)
    assert result == {**calc_metric("swd", inputs), **calc_metric("fidelity", inputs)}
    assert run_command(cli, args=args, prog_name="drgan") == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table] == list(result)
    assert f"{result['swd_x1e3_average']:.4f}" == table[0].split()[-1]

    assert run_command(cli, args=[a.replace("swd,fidelity", "swd,lpips") for a in args], prog_name="drgan") == 2
    assert capsys.readouterr().err == "error: --metrics 'lpips': choose one of fid, kid, prdc, swd, fidelity, grading\n"
    assert run_command(cli, args=["evaluate", "metrics", "--fake", str(fake), "--metrics", "grading"], prog_name="drgan") == 2
    assert capsys.readouterr().err == "error: grading needs a grader: give its run folder --grader\n"
    assert run_command(cli, args=["evaluate", "metrics", "--fake", str(fake), "--metrics", "fid"], prog_name="drgan") == 2
    assert capsys.readouterr().err == "error: fid compares two sets: give the reference set --real\n"


def test_cli_metrics_options_no_metric_reads_are_refused(sets, grader, capsys):
    """Usage errors (exit 2): each needs another option or a metric that reads it."""
    real, fake = sets
    base = ["evaluate", "metrics", "--fake", str(fake), "--metrics", "fidelity"]
    assert run_command(cli, args=base + ["--real-split", "test"], prog_name="drgan") == 2
    assert capsys.readouterr().err == "error: --real-split 'test' is a split of --real: give --real too\n"
    assert run_command(cli, args=base + ["--grader", str(grader)], prog_name="drgan") == 2
    assert capsys.readouterr().err == "error: --grader is read by the grading metric only: add grading to --metrics (fidelity)\n"
    assert run_command(cli, args=base + ["--device", "cpu"], prog_name="drgan") == 2  # fidelity runs on the CPU
    assert capsys.readouterr().err == "error: --device runs fid, kid, prdc, swd and grading only: add one of them to --metrics (fidelity)\n"
    assert run_command(cli, args=base + ["--device", "auto"], prog_name="drgan") == 0, capsys.readouterr().err
    capsys.readouterr()
    base = ["evaluate", "metrics", "--fake", str(fake), "--real", str(real), "--metrics", "fid,grading", "--grader", str(grader)]
    assert run_command(cli, args=base + ["--max-images", "6"], prog_name="drgan") == 2
    assert capsys.readouterr().err == "error: --max-images caps prdc, swd and fidelity only: add one of them to --metrics (fid,grading)\n"
    assert run_command(cli, args=base + ["--seed", "3"], prog_name="drgan") == 2
    assert capsys.readouterr().err == "error: --seed draws the subsets of kid, prdc and swd only: add one of them to --metrics (fid,grading)\n"


def test_cli_metrics_checks_every_metric_before_running_any(sets, tmp_path, capsys, monkeypatch):
    """A set without masks failed fidelity after FID and SWD had run (minutes at scale)."""
    real, fake = sets
    bare = tmp_path / "bare"
    shutil.copytree(fake, bare)
    shutil.rmtree(bare / "masks")
    monkeypatch.setattr("drgan.metrics.fid.compute_fid", lambda *a, **k: pytest.fail("FID ran"))
    args = ["evaluate", "metrics", "--fake", str(bare), "--real", str(real), "--metrics", "fid,fidelity"]
    assert run_command(cli, args=args, prog_name="drgan") == 1
    assert capsys.readouterr().err == (f"error: {bare}: no condition mask in its images: condition fidelity needs "
                                       "masks/<id>/<name>.png (a synthesized set: drgan synthesize --save-masks)\n")
    args = ["evaluate", "metrics", "--fake", str(fake), "--real", str(bare), "--metrics", "fid,fidelity"]
    assert run_command(cli, args=args, prog_name="drgan") == 1  # the reference set is measured beside it
    assert capsys.readouterr().err.startswith(f"error: {bare}: no condition mask in its images")
    assert run_command(cli, args=args[:-1] + ["fid,grading"], prog_name="drgan") == 2
    assert capsys.readouterr().err == "error: grading needs a grader: give its run folder --grader\n"


def test_command_line_imports_without_torch():
    code = "import sys, drgan.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
