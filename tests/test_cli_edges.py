"""Edges of the command-line conventions (README, "Command-line conventions"): exit codes, the one
`error:` line, ranges, options that repeat by design, and what the scripts beside the commands give."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import pytest

from drgan.cli.common import run_command, run_script
from drgan.data.phantom import write_phantom_dataset
from drgan.errors import DrganError, ParameterError
from helpers import one_error

pytestmark = pytest.mark.usefixtures("one_thread")

NULL_SET = ("synthesize", "--preset", "tiny-64", "--backend", "null", "--device", "cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom") / "p", count=10, size=64, seed=0)


def invoke(command: click.Command, capsys, *args: str) -> tuple[int, str]:
    """A command run as the console scripts run it: (exit code, stderr)."""
    rc = run_command(command, args=list(args))
    return rc, capsys.readouterr().err


# Ranges and the one line of bad input


def test_a_batch_of_zero_is_outside_its_range(drgan, tmp_path):
    """Every --batch lies in 1..4096: 0 is bad input (exit 1) named by its option, before any work."""
    line = one_error(*drgan(*NULL_SET, "--out", tmp_path / "set", "--count", "2", "--batch", "0"))
    assert line == "error: --batch 0: outside the range 1<=x<=4096"
    assert not (tmp_path / "set").exists()


def test_png_level_above_nine_is_outside_its_range(drgan, tmp_path):
    line = one_error(*drgan(*NULL_SET, "--out", tmp_path / "set", "--count", "2", "--png-level", "10"))
    assert line == "error: --png-level 10: outside the range 0<=x<=9"
    assert not (tmp_path / "set").exists()


def test_count_and_per_grade_together_are_a_usage_error(drgan, tmp_path):
    rc, out, err = drgan(*NULL_SET, "--out", tmp_path / "set", "--count", "5", "--per-grade", "1")
    assert one_error(rc, out, err, code=2) == "error: give exactly one of --count and --per-grade"
    assert not (tmp_path / "set").exists()


@pytest.mark.parametrize("option", ["--count", "--per-grade"])
def test_a_set_size_past_any_bound_is_one_line(drgan, tmp_path, option):
    """10**20 was an OverflowError traceback in Plan.shard_size; 2**61 per grade started a run of ages."""
    rc, out, err = drgan(*NULL_SET, "--out", tmp_path / "set", option, str(10**20))
    assert one_error(rc, out, err).startswith(f"error: {option} {10**20}")
    assert not (tmp_path / "set").exists()


def test_a_set_of_more_grades_than_its_bound_allows_is_one_line_naming_per_grade(drgan, tmp_path):
    rc, out, err = drgan(*NULL_SET, "--out", tmp_path / "set", "--per-grade", "2500000")
    assert one_error(rc, out, err) == "error: --per-grade 2500000: 5 grades of it are 12,500,000 images, past 10,000,000 in a set"
    assert not (tmp_path / "set").exists()


def test_control_characters_in_a_path_are_escaped_in_the_error_line(drgan, tmp_path):
    """An escape sequence (ESC) or DEL in a path must not reach the terminal as a control character."""
    rc, _, err = drgan("data", "validate", tmp_path / "a\x1b[2Jb\x7fc")
    assert rc == 1 and err == f"error: {tmp_path}/a\\x1b[2Jb\\x7fc: dataset folder not found\n"


def test_characters_that_split_lines_are_escaped_in_the_error_line(drgan, tmp_path):
    """str.splitlines() also breaks at C1 NEL and the Unicode line and paragraph separators."""
    rc, out, err = drgan("data", "validate", tmp_path / "a\x85b\u2028c\u2029d\x9be")
    assert one_error(rc, out, err) == f"error: {tmp_path}/a\\x85b\\u2028c\\u2029d\\x9be: dataset folder not found"


# Datasets given twice, options repeated by design


def test_the_same_dataset_as_argument_and_data_option_is_one_dataset(drgan, data):
    rc, out, err = drgan("data", "validate", data, "--data", data, "--json")
    assert rc == 0, err
    assert json.loads(out)["checked"] == 10


def test_an_option_that_takes_several_values_may_be_repeated(drgan, tmp_path, data):
    """--baseline is repeatable: given twice it is not refused as an option given twice; the command
    goes on to its own checks (here: an output under a file)."""
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "aug"
    rc, o, err = drgan("experiment", "augment", "--real", data, "--synthetic", data, "--test", data, "--preset", "tiny-64",
                       "--device", "cpu", "--baseline", "mixup", "--baseline", "cutmix", "--out", out)
    assert one_error(rc, o, err) == f"error: {out}: cannot write ({tmp_path / 'file'} is a file, not a folder)"


# Failures no check foresaw


def test_a_memory_error_is_one_out_of_memory_line(drgan, tmp_path, monkeypatch):
    """Python's MemoryError carries no text: the line says out of memory and how to need less."""
    from drgan.synthesis import runner

    def fails(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(runner, "make_backend", fails)
    line = one_error(*drgan(*NULL_SET, "--out", tmp_path / "s", "--count", "2"))
    assert line == "error: out of memory. A smaller --batch (where the command takes one) needs less."
    assert not (tmp_path / "s").exists()


def test_a_file_system_failure_is_one_line_naming_the_file(capsys, tmp_path):
    @click.command()
    def fails() -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked"))

    rc, err = invoke(fails, capsys)
    assert (rc, err) == (1, f"error: {tmp_path / 'locked'}: Permission denied\n")


@pytest.mark.parametrize("error, line", [(OSError(5, "Input/output error"), "Input/output error"),
                                         (ConnectionResetError("peer went away"), "peer went away"),
                                         (OSError(), "OSError")])
def test_an_os_error_without_a_path_is_its_reason_in_one_line(capsys, error, line):
    """Without a file name there is nothing to name: the line is the reason alone (not 'None: ...'),
    and no traceback."""
    @click.command()
    def fails() -> None:
        raise error

    assert invoke(fails, capsys) == (1, f"error: {line}\n")


def test_a_command_that_exits_through_its_context_keeps_its_exit_code(capsys):
    @click.command()
    @click.pass_context
    def exits(ctx: click.Context) -> None:
        ctx.exit(3)

    assert invoke(exits, capsys) == (3, "")


def test_what_a_command_function_returns_is_no_exit_code(capsys):
    @click.command()
    def returns() -> str:
        return "a path"

    assert invoke(returns, capsys) == (0, "")


def test_a_click_exception_is_bad_input(capsys):
    @click.command()
    def fails() -> None:
        raise click.ClickException("the archive is damaged")

    assert invoke(fails, capsys) == (1, "error: the archive is damaged\n")


def test_a_system_exit_other_than_sigterms_is_not_called_terminated(capsys):
    @click.command()
    def exits() -> None:
        sys.exit(3)

    with pytest.raises(SystemExit) as exc:
        run_command(exits, args=[])
    assert exc.value.code == 3 and "terminated" not in capsys.readouterr().err


# The scripts beside the commands (bench/)


def test_a_script_gives_bad_input_as_one_line_and_its_exit_code(capsys):
    def bad() -> None:
        raise ParameterError("{batch} 0: need at least one")

    assert run_script(bad) == 1
    assert capsys.readouterr().err == "error: --batch 0: need at least one\n"

    def refused() -> None:
        raise DrganError("a\nb")

    assert run_script(refused) == 1 and capsys.readouterr().err == "error: a\\nb\n"


def test_a_script_interrupted_says_aborted_and_exits_130(capsys):
    def interrupted() -> None:
        raise KeyboardInterrupt

    assert run_script(interrupted) == 130 and capsys.readouterr().err == "aborted\n"
    assert run_script(lambda: None) == 0


# Every option reaches the library call


class _Stop(DrganError):
    """Ends a command at the library call whose arguments a test records."""


def _recorder(monkeypatch, module, name: str) -> list:
    calls: list = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        raise _Stop("recorded")

    monkeypatch.setattr(module, name, record)
    return calls


def test_synthesize_passes_every_option_to_the_runner(drgan, tmp_path, data, monkeypatch):
    from drgan.synthesis import runner

    calls = _recorder(monkeypatch, runner, "synthesize")
    rc, _, err = drgan(*NULL_SET, "--out", tmp_path / "set", "--per-grade", "3", "--grades", "1,3", "--seed", "7",
                       "--batch", "4", "--format", "jpeg", "--quality", "60", "--structures", data,
                       "--structures-split", "all", "--label", "predicted", "--verify", "--save-masks")
    assert rc == 1 and err.endswith("error: recorded\n"), err
    (opts,), _ = calls[0]
    assert (opts.count, opts.grades, opts.seed, opts.batch, opts.format, opts.quality) == (6, (1, 3), 7, 4, "jpeg", 60)
    assert (opts.structures, opts.structures_split, opts.label, opts.verify, opts.save_masks) == \
        (str(data), "all", "predicted", True, True)
    drgan(*NULL_SET, "--out", tmp_path / "set", "--count", "2", "--png-level", "6")
    (opts,), _ = calls[1]
    assert (opts.count, opts.format, opts.png_level, opts.seed, opts.batch) == (2, "png", 6, 0, 8)  # and the defaults


def test_an_interrupted_synthesis_names_a_rerun_once_its_set_is_claimed(drgan, tmp_path, monkeypatch):
    """The set's fingerprint claims the folder: an interrupt after it says that a rerun resumes."""
    from drgan.synthesis import runner
    from drgan.synthesis.fingerprint import FILE_NAME

    def interrupted(opts):
        Path(opts.out).mkdir()
        (Path(opts.out) / FILE_NAME).write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "synthesize", interrupted)
    rc, _, err = drgan(*NULL_SET, "--out", tmp_path / "set", "--count", "2")
    assert rc == 130 and err.splitlines()[-1] == "aborted; rerun the same command to resume (the images written are kept)"


def test_evaluate_passes_every_option_to_its_metric(drgan, tmp_path, data, monkeypatch):
    from drgan.metrics import fid, fidelity, grade_prediction, registry, swd

    fids = _recorder(monkeypatch, fid, "compute_fid")
    assert drgan("evaluate", "fid", "--real", data, "--fake", data, "--device", "cpu", "--batch", "3", "--per-grade",
                 "--no-cache")[0] == 1
    assert {k: fids[0][1][k] for k in ("per_grade", "device", "batch", "cache_dir")} == \
        {"per_grade": True, "device": "cpu", "batch": 3, "cache_dir": None}
    drgan("evaluate", "fid", "--real", data, "--fake", data, "--device", "cpu", "--cache", tmp_path / "cache")
    assert fids[1][1]["cache_dir"] == tmp_path / "cache" and fids[1][1]["batch"] == 32
    swds = _recorder(monkeypatch, swd, "compute_swd")
    drgan("evaluate", "swd", "--real", data, "--fake", data, "--device", "cpu", "--resolution", "32", "--max-images", "5",
          "--seed", "9", "--per-grade")
    assert {k: swds[0][1][k] for k in ("resolution", "max_images", "seed", "per_grade")} == \
        {"resolution": 32, "max_images": 5, "seed": 9, "per_grade": True}
    grades = _recorder(monkeypatch, grade_prediction, "grade_dataset")
    drgan("evaluate", "grading", "--grader", data, "--fake", data, "--split", "test", "--device", "cpu", "--batch", "5")
    assert grades[0][0] == (data, data, "test", "cpu", 5)
    fidelities = _recorder(monkeypatch, fidelity, "evaluate_fidelity")
    drgan("evaluate", "fidelity", "--fake", data, "--real", data, "--real-split", "val", "--resolution", "48",
          "--max-images", "7")
    assert fidelities[0][0][:6] == (data, data, "val", None, 48, 7)
    metrics = _recorder(monkeypatch, registry, "calc_metric")
    drgan("evaluate", "metrics", "--fake", data, "--real", data, "--metrics", "swd", "--max-images", "4", "--seed", "5",
          "--per-grade", "--device", "cpu")
    name, inputs = metrics[0][0]
    assert name == "swd" and (inputs.max_images, inputs.seed, inputs.per_grade, inputs.device) == (4, 5, True, "cpu")


def test_metrics_warnings_reach_stderr(drgan, data, monkeypatch):
    from drgan.metrics import registry

    monkeypatch.setattr(registry, "calc_metric", lambda name, inputs: {"swd": 1.0, "warnings": ["few images"]})
    rc, out, err = drgan("evaluate", "metrics", "--fake", data, "--real", data, "--metrics", "swd", "--json")
    assert rc == 0 and json.loads(out) == {"swd": 1.0} and "warning: few images" in err.splitlines()


def test_metrics_device_without_a_metric_that_uses_it_is_a_usage_error(drgan, data):
    rc, out, err = drgan("evaluate", "metrics", "--fake", data, "--metrics", "fidelity", "--device", "cpu")
    assert one_error(rc, out, err, code=2).startswith("error: --device runs fid, kid, prdc, swd and grading only")


def test_augment_batch_of_one_is_outside_its_range(drgan, tmp_path, data):
    """Batch normalization needs two images: experiment augment's --batch starts at 2."""
    line = one_error(*drgan("experiment", "augment", "--real", data, "--synthetic", data, "--test", data,
                            "--preset", "tiny-64", "--device", "cpu", "--batch", "1", "--out", tmp_path / "aug"))
    assert line == "error: --batch 1: outside the range 2<=x<=4096"
    assert not (tmp_path / "aug").exists()


# Dataset commands


def test_validate_skip_bad_with_no_usable_sample_fails(drgan, tmp_path, data):
    import shutil

    bad = shutil.copytree(data, tmp_path / "bad")
    for image in (bad / "images").iterdir():
        image.write_bytes(b"not an image")
    rc, out, err = drgan("data", "validate", "--data", bad, "--skip-bad")
    assert one_error(rc, out, err) == f"error: {bad}: 10 problem(s) found (listed above)"
    assert "usable samples remain" not in out + err


def test_import_of_an_unknown_release_is_a_usage_error_and_names_are_case_blind(drgan, tmp_path, monkeypatch):
    from drgan.data import importers

    rc, out, err = drgan("data", "import", "messidor", tmp_path, "--out", tmp_path / "ds")
    assert one_error(rc, out, err, code=2).startswith("error: Invalid value for 'KIND': 'messidor' is not one of")
    calls = _recorder(monkeypatch, importers, "import_release")
    drgan("data", "import", "EyePACS", tmp_path / "src", "--out", tmp_path / "ds", "--size", "64", "--workers", "0")
    assert calls[0][0] == ("eyepacs", str(tmp_path / "src"), str(tmp_path / "ds"))
    assert calls[0][1] == {"size": 64, "vessels": "extract", "workers": 0}


def test_import_size_below_64_is_outside_its_range(drgan, tmp_path):
    line = one_error(*drgan("data", "import", "eyepacs", tmp_path, "--out", tmp_path / "ds", "--size", "63"))
    assert line == "error: --size 63: outside the range 64<=x<=4096"


def test_contact_sheet_creates_its_folder_and_keeps_per_grade_images_a_row(drgan, tmp_path, data, monkeypatch):
    from drgan.data import contact_sheet

    rc, _, err = drgan("data", "contact-sheet", data, "--out", tmp_path / "new" / "sheet.png", "--size", "16")
    assert rc == 0 and (tmp_path / "new" / "sheet.png").is_file(), err
    calls = _recorder(monkeypatch, contact_sheet, "save_contact_sheet")
    drgan("data", "contact-sheet", data, "--out", tmp_path / "s.png", "--size", "16", "--per-grade", "1")
    rows, _path, labels = calls[0][0]
    assert [len(row) for row in rows] == [1] * 5 and labels == [f"grade {g}" for g in range(5)]


def test_fit_lesions_refuses_an_output_inside_its_dataset_and_passes_its_split(drgan, tmp_path, data, monkeypatch):
    from drgan.data import lesion_fit

    inside = data / "stats.json"
    line = one_error(*drgan("data", "fit-lesions", data, "--out", inside))
    assert line == f"error: {inside}: inside {data}, a folder this command uses; write it elsewhere"
    assert not inside.exists()
    calls = _recorder(monkeypatch, lesion_fit, "fit_lesion_stats")
    for split, passed in (("all", None), ("val", "val")):
        drgan("data", "fit-lesions", data, "--out", tmp_path / "stats.json", "--split", split, "--skip-bad")
        assert calls[-1][1] == {"skip_bad": True, "split": passed}


def test_phantom_contact_sheet_inside_the_new_dataset_is_refused_before_rendering(drgan, tmp_path):
    out = tmp_path / "ph"
    line = one_error(*drgan("phantom", "--out", out, "--count", "2", "--size", "64", "--contact-sheet", out / "s.png"))
    assert line == f"error: {out / 's.png'}: inside {out}, a folder this command uses; write it elsewhere"
    assert not out.exists()


def test_masks_extract_grade_past_four_is_outside_its_range(drgan, tmp_path, data):
    image = next((data / "images").iterdir())
    line = one_error(*drgan("masks", "extract", image, "--out", tmp_path / "mx", "--grade", "5"))
    assert line == "error: --grade 5: outside the range 0<=x<=4"
    assert not (tmp_path / "mx").exists()


def test_masks_extract_duplicate_names_are_refused_before_any_work(drgan, tmp_path, data):
    image = next((data / "images").iterdir())
    (tmp_path / "other").mkdir()
    copy = tmp_path / "other" / image.name
    copy.write_bytes(image.read_bytes())
    line = one_error(*drgan("masks", "extract", image, copy, "--out", tmp_path / "mx"))
    assert line == f"error: duplicate image names ['{image.stem}']: ids come from file names"
    assert not (tmp_path / "mx").exists()


def test_a_global_stage_run_is_warned_of_before_synthesis(drgan, tmp_path, monkeypatch):
    """Its conditions were averaged down in training: synthesis draws them otherwise, and says so."""
    from synthesis_fixtures import make_run

    from drgan.synthesis import runner

    run = make_run(tmp_path / "global", stage="global", preset_name="tiny-128")
    calls = _recorder(monkeypatch, runner, "synthesize")
    rc, _, err = drgan("synthesize", "--run", run, "--out", tmp_path / "set", "--count", "5", "--device", "cpu")
    assert rc == 1 and len(calls) == 1
    assert [line for line in err.splitlines() if line.startswith("warning")] == [
        f"warning: {run} is a global-stage run: it trained on conditions averaged down to 64 px, with soft edges, and "
        "synthesis draws lesions with hard ones (synthesize from the local stage's run)"]


def test_swd_max_images_below_two_is_outside_its_range(drgan, data):
    line = one_error(*drgan("evaluate", "swd", "--real", data, "--fake", data, "--device", "cpu", "--max-images", "1"))
    assert line == "error: --max-images 1: outside the range x>=2"


def test_a_rerun_stopped_while_importing_says_the_set_resumes(capsys, tmp_path, monkeypatch):
    """Ctrl-C in the first second of a rerun, while torch is still being imported, names the resume
    as one later does."""
    import types

    from drgan.cli import cli

    class Importing(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            raise KeyboardInterrupt  # the command's `from ... import` of the runner

    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "fingerprint.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "drgan.synthesis.runner", Importing("drgan.synthesis.runner"))
    rc, err = invoke(cli, capsys, *NULL_SET, "--out", str(tmp_path / "set"), "--count", "2")
    assert (rc, err.splitlines()[-1]) == (130, "aborted; rerun the same command to resume (the images written are kept)")
