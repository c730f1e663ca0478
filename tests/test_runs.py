"""Run folders: refusal to overwrite, resume from anywhere, debris after failures, one-line errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from drgan.checkpoint import save_module
from drgan.cli import cli
from drgan.cli.common import run_command
from drgan.config import preset
from drgan.data.phantom import write_phantom_dataset
from drgan.errors import DrganError, ParameterError
from drgan.metrics.grade_prediction import load_grader
from drgan.nn import build_grader
from drgan.runs import GRADER_FILE, dataset_record, read_run, write_run_config
from drgan.training.gan import train_gan
from drgan.training.options import GanOptions
from synthesis_fixtures import make_run
from training_fixtures import PhantomSet, write_space

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--preset", "tiny-64", "--perceptual", "none", "--batch", "2", "--no-channels-last", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom") / "p", count=12, size=64, seed=0)


@pytest.fixture
def drgan(capsys):
    """Run `drgan ARGS` in-process as the console script does: (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        rc = run_command(cli, args=[str(a) for a in args], prog_name="drgan")
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def _one_error(rc: int, err: str) -> str:
    """Exit code 1 and one `error:` line (progress bars aside), no traceback."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error")]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, (rc, err)
    return lines[0]


def _new_run(drgan, tmp_path, data, *extra: str) -> Path:
    space = write_space(tmp_path / "space.safetensors")
    rc, _, err = drgan("train", "gan", "--data", data, "--grading-space", space, "--out", tmp_path / "run", *TINY, *extra)
    assert rc == 0, err
    return tmp_path / "run"


def _step(run: Path) -> int:
    return json.loads((run / "state.json").read_text())["step"]


def test_existing_run_is_refused_and_overwrite_starts_over(drgan, tmp_path, data):
    run = _new_run(drgan, tmp_path, data, "--max-steps", "2")
    weights = (run / "G.safetensors").read_bytes()
    args = ["train", "gan", "--data", data, "--grading-space", tmp_path / "space.safetensors", "--out", run, *TINY, "--max-steps", "1"]
    line = _one_error(*drgan(*args)[::2])
    assert "already holds a gan run" in line and "--resume" in line and "--overwrite" in line
    assert _step(run) == 2 and (run / "G.safetensors").read_bytes() == weights
    rc, _, err = drgan(*args, "--overwrite")
    assert rc == 0, err
    assert _step(run) == 1


def test_out_that_is_no_run_is_never_written(drgan, tmp_path, data):
    space = write_space(tmp_path / "space.safetensors")
    copy = shutil.copytree(data, tmp_path / "data")
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    for out in (copy, copy / "labels.csv"):
        line = _one_error(*drgan("train", "gan", "--data", data, "--grading-space", space, "--out", out, *TINY, "--overwrite")[::2])
        assert str(out) in line and ("not a drgan run" in line or "is a file" in line)
        line = _one_error(*drgan("train", "grader", "--data", data, "--out", out, "--preset", "tiny-64")[::2])
        assert str(out) in line
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before


def test_grader_run_is_refused_without_overwrite(drgan, tmp_path, data):
    write_run_config(tmp_path / "g", preset("tiny-64"), "global", {"trainer": "grader"})
    (tmp_path / "g" / "state.json").write_text("{}")
    line = _one_error(*drgan("train", "grader", "--data", data, "--out", tmp_path / "g", "--preset", "tiny-64")[::2])
    assert "already holds a grader run" in line and "--overwrite" in line


def test_run_killed_before_its_first_checkpoint_is_started_over_by_the_same_command(drgan, tmp_path, data):
    """SIGKILL before the first checkpoint leaves run.json and logs but nothing to resume: --resume
    says to rerun, and the same command starts the run over (the GAN and the grader alike)."""
    space = write_space(tmp_path / "space.safetensors")
    commands = {"gan": ["train", "gan", "--data", data, "--grading-space", space, *TINY, "--max-steps", "1"],
                "grader": ["train", "grader", "--data", data, "--preset", "tiny-64", "--batch", "4", "--epochs", "1"]}
    for kind, command in commands.items():
        run = tmp_path / kind
        options = {"trainer": kind, "preset": "tiny-64", **({"data": str(data), "grading_space": str(space)} if kind == "gan" else {})}
        write_run_config(run, preset("tiny-64"), "global", options, **({"data": str(data)} if kind == "grader" else {}))
        (run / "logs").mkdir()
        if kind == "gan":
            shutil.copy(space, run / "grading_space.safetensors")  # copied in as the run starts
        line = _one_error(*drgan("train", kind, "--resume", run)[::2])
        assert "no checkpoint written yet: then rerun the command that started it" in line
        rc, _, err = drgan(*command, "--out", run)
        assert rc == 0, err
        assert (run / "state.json").is_file() and read_run(run).options["max_steps" if kind == "gan" else "epochs"] == 1


def test_a_checkpoint_without_its_state_json_is_neither_resumed_nor_started_over(drgan, tmp_path, data):
    """state.json is written last, so weights without it are a damaged checkpoint: --resume said to
    rerun the command, and the rerun replaced the weights from step 0 without a word."""
    gan = _new_run(drgan, tmp_path, data, "--max-steps", "1")
    weights = (gan / "G.safetensors").read_bytes()
    (gan / "state.json").unlink()
    line = _one_error(*drgan("train", "gan", "--resume", gan)[::2])
    assert line.startswith(f"error: --resume {gan}: holds G.safetensors, D.safetensors, state.safetensors but no state.json")
    line = _one_error(*drgan("train", "gan", "--data", data, "--grading-space", tmp_path / "space.safetensors", "--out", gan, *TINY)[::2])
    assert line.startswith(f"error: --out {gan}: holds G.safetensors") and line.endswith("start over with --overwrite")
    assert (gan / "G.safetensors").read_bytes() == weights


def test_overwrite_never_replaces_a_run_of_the_other_kind(drgan, tmp_path, data):
    gan = _new_run(drgan, tmp_path, data, "--max-steps", "1")
    weights = (gan / "G.safetensors").read_bytes()
    line = _one_error(*drgan("train", "grader", "--data", data, "--out", gan, "--preset", "tiny-64", "--overwrite")[::2])
    assert line == f"error: --out {gan}: holds a gan run, not a grader run; choose a new or empty folder"
    assert (gan / "G.safetensors").read_bytes() == weights
    write_run_config(tmp_path / "g", preset("tiny-64"), "global", {"trainer": "grader"})
    line = _one_error(*drgan("train", "gan", "--data", data, "--grading-space", tmp_path / "space.safetensors",
                             "--out", tmp_path / "g", *TINY, "--overwrite")[::2])
    assert line == f"error: --out {tmp_path / 'g'}: holds a grader run, not a gan run; choose a new or empty folder"
    assert (tmp_path / "g" / "run.json").is_file()


def test_a_run_of_the_wrong_kind_is_named_with_the_commands_flag(drgan, tmp_path, data):
    grader, gan = make_run(tmp_path / "grader"), make_run(tmp_path / "gan")
    write_run_config(grader, preset("tiny-64"), "local", {"trainer": "grader"})
    write_run_config(gan, preset("tiny-64"), "local", {"trainer": "gan"})
    for command in (["synthesize", "--out", tmp_path / "set", "--count", "5", "--device", "cpu"], ["export", "--out", tmp_path / "exp"]):
        line = _one_error(*drgan(*command, "--run", grader)[::2])
        assert line == f"error: --run {grader}: a grader run, not a gan run"
    line = _one_error(*drgan("evaluate", "grading", "--grader", gan, "--data", data)[::2])
    assert line == f"error: --grader {gan}: a gan run, not a grader run"
    assert not (tmp_path / "set").exists() and not (tmp_path / "exp").exists()


def test_resume_from_another_folder_with_relative_paths(drgan, tmp_path, data, monkeypatch):
    shutil.copytree(data, tmp_path / "p")
    write_space(tmp_path / "space.safetensors")
    monkeypatch.chdir(tmp_path)
    rc, _, err = drgan("train", "gan", "--data", "p", "--grading-space", "space.safetensors", "--out", "run", *TINY, "--max-steps", "1")
    assert rc == 0, err
    options = read_run(tmp_path / "run").options
    assert options["data"] == str(tmp_path / "p") and options["grading_space"] == str(tmp_path / "space.safetensors")
    (tmp_path / "elsewhere" / "p").mkdir(parents=True)  # a different `p/` must not be picked up
    monkeypatch.chdir(tmp_path / "elsewhere")
    rc, _, err = drgan("train", "gan", "--resume", "../run", "--max-steps", "2")
    assert rc == 0, err
    assert _step(tmp_path / "run") == 2


def test_resume_checks_the_dataset_and_conflicting_options(drgan, tmp_path, data):
    shutil.copytree(data, tmp_path / "p")
    run = _new_run(drgan, tmp_path, tmp_path / "p", "--max-steps", "1")
    rc, _, err = drgan("train", "gan", "--resume", run, "--batch", "4", "--max-steps", "2")
    assert rc == 2 and err.startswith("error: --batch 4:") and "--max-steps" in err and "--epochs" in err
    rc, _, err = drgan("train", "gan", "--resume", run, "--data", data, "--max-steps", "2")
    assert rc == 2 and err.startswith(f"error: --data {data}:")
    rc, _, err = drgan("train", "gan", "--resume", run, "--data", tmp_path / "p", "--batch", "2", "--max-steps", "2")
    assert rc == 0, err  # equal to the run's own values: accepted
    labels = tmp_path / "p" / "labels.csv"
    labels.write_text(labels.read_text().replace(",0,", ",1,", 1))
    line = _one_error(*drgan("train", "gan", "--resume", run, "--max-steps", "3")[::2])
    assert str(labels) in line and "changed" in line
    assert _step(run) == 2


def test_resume_refuses_another_datasets_images_under_the_same_labels(drgan, tmp_path, data):
    """Phantoms of another seed have the same ids and grades, so the same labels.csv: a resume on
    them is refused by the files' listing; a run.json of an earlier version (labels.csv alone) resumes."""
    shutil.copytree(data, tmp_path / "p")
    run = _new_run(drgan, tmp_path, tmp_path / "p", "--max-steps", "1")
    recorded = dataset_record(tmp_path / "p")
    (tmp_path / "p" / "images" / ".DS_Store").write_bytes(b"x")  # hidden files: the reader skips them too
    (tmp_path / "p" / "masks" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "p" / "masks" / ".ipynb_checkpoints" / "a.png").write_bytes(b"x")
    assert dataset_record(tmp_path / "p") == recorded
    other = write_phantom_dataset(tmp_path / "other", count=12, size=64, seed=1)
    assert (other / "labels.csv").read_bytes() == (data / "labels.csv").read_bytes()
    for folder in ("images", "masks"):
        shutil.rmtree(tmp_path / "p" / folder)
        shutil.copytree(other / folder, tmp_path / "p" / folder)
    line = _one_error(*drgan("train", "gan", "--resume", run, "--max-steps", "2")[::2])
    assert line == (f"error: {tmp_path / 'p'}: its images or masks changed since {run} started (names or sizes differ); "
                    "resume on the same dataset")
    assert _step(run) == 1
    config = json.loads((run / "run.json").read_text())
    del config["dataset"]["files_sha256"]
    (run / "run.json").write_text(json.dumps(config))
    rc, _, err = drgan("train", "gan", "--resume", run, "--max-steps", "2")
    assert rc == 0 and _step(run) == 2, err


def test_max_steps_on_resume_goes_past_the_saved_epochs(drgan, tmp_path, data):
    run = _new_run(drgan, tmp_path, data, "--epochs", "1")
    per_epoch = _step(run)
    rc, _, err = drgan("train", "gan", "--resume", run, "--max-steps", per_epoch + 2)
    assert rc == 0, err
    assert _step(run) == per_epoch + 2
    rc, _, err = drgan("train", "gan", "--resume", run)
    line = _one_error(rc, err)
    assert "already at step" in line and "--max-steps" in line
    assert err.strip().splitlines() == [line]  # no progress or perceptual-loss line before the refusal


def test_max_steps_on_a_new_run_goes_past_the_default_epochs_not_given_ones(drgan, tmp_path, data):
    """As on resume: --max-steps alone trains up to it; --epochs given with it caps it."""
    for name in ("one", "steps", "capped"):
        (tmp_path / name).mkdir()
    per_epoch = _step(_new_run(drgan, tmp_path / "one", data, "--epochs", "1"))
    run = _new_run(drgan, tmp_path / "steps", data, "--max-steps", 10 * per_epoch + 1)  # the default is 10 epochs
    assert _step(run) == 10 * per_epoch + 1
    run = _new_run(drgan, tmp_path / "capped", data, "--max-steps", per_epoch + 1, "--epochs", "1")
    assert _step(run) == per_epoch


def test_resume_of_a_grader_run_or_a_truncated_checkpoint_is_one_line(drgan, tmp_path, data):
    write_run_config(tmp_path / "g", preset("tiny-64"), "global", {"trainer": "grader", "balanced": True})
    line = _one_error(*drgan("train", "gan", "--resume", tmp_path / "g")[::2])
    assert "a grader run, not a gan run" in line
    run = _new_run(drgan, tmp_path, data, "--max-steps", "1")
    for name in ("state.safetensors", "G.safetensors"):
        shutil.copy(run / name, tmp_path / name)
        (run / name).write_bytes((run / name).read_bytes()[:100])
        line = _one_error(*drgan("train", "gan", "--resume", run, "--max-steps", "2")[::2])
        assert str(run / name) in line
        shutil.copy(tmp_path / name, run / name)


class _FailingSet(PhantomSet):
    def __getitem__(self, index: int) -> dict:
        if index >= 4:  # after the fixed sample batch: fails inside the training loop
            raise DrganError("bad sample")
        return super().__getitem__(index)


def test_failed_new_run_leaves_no_folder(tmp_path):
    opts = GanOptions(out=str(tmp_path / "run"), grading_space=str(write_space(tmp_path / "s.safetensors")), preset="tiny-64",
                      perceptual="none", batch=2, max_steps=4, device="cpu")
    with pytest.raises(DrganError, match="bad sample"):
        train_gan(opts, _FailingSet(10))
    assert not (tmp_path / "run").exists()


def test_option_errors_name_the_parameter_in_python_and_the_flag_on_the_command_line(drgan, tmp_path, data):
    with pytest.raises(ParameterError, match=r"^max_steps 0 must be >= 1$"):
        GanOptions(max_steps=0)
    line = _one_error(*drgan("train", "gan", "--out", tmp_path / "r", "--max-steps", "0")[::2])
    assert line == "error: --max-steps 0 must be >= 1"
    rc, _, err = drgan("train", "gan", "--data", data, "--out", tmp_path / "r", "--device", "tpu")
    assert (rc, err) == (2, "error: --device 'tpu': expected auto, cpu, cuda or cuda:N\n")  # a wrong form: a usage error
    assert not (tmp_path / "r").exists()


def test_dataset_without_split_column_is_split_by_id_hash(drgan, tmp_path, capsys):
    from drgan.data.dataset import FundusDataset
    from drgan.data.labels import hash_split

    root = write_phantom_dataset(tmp_path / "nosplit", count=30, size=64, seed=0, split=False)
    train, val = FundusDataset(root, 64, split="train"), FundusDataset(root, 64, split="val")
    assert sorted(train.ids + val.ids) == sorted(FundusDataset(root, 64).ids) and len(val) >= 1
    assert all(hash_split(i) == "val" for i in val.ids)
    assert capsys.readouterr().err.count("split 90/10 into train/val by a hash of the id") == 1
    rc, _, err = drgan("train", "gan", "--data", root, "--grading-space", write_space(tmp_path / "s.safetensors"),
                       "--out", tmp_path / "run", *TINY, "--max-steps", "1")
    assert rc == 0, err


def test_grader_resolution_is_recorded_and_used(tmp_path):
    cfg = preset("tiny-64")
    save_module(build_grader(cfg), tmp_path / GRADER_FILE)
    write_run_config(tmp_path, cfg, "global", {"trainer": "grader"}, resolution=128)
    assert load_grader(tmp_path)[1] == 128


def test_help_and_exit_codes_of_the_console_scripts(capsys, monkeypatch):
    from drgan.cli import export_main, synthesize_main, train_main

    monkeypatch.setattr(sys, "argv", ["prog", "-h"])  # restored after the test
    for main in (train_main, synthesize_main, export_main):
        with pytest.raises(SystemExit) as exit_:
            main()
        assert exit_.value.code == 0 and "Usage:" in capsys.readouterr().out
    assert run_command(cli, args=["train", "gan", "--epochs", "x"]) == 2  # usage error
    assert run_command(cli, args=["train", "gan", "--resume", "/nonexistent"]) == 1  # bad input


def test_cli_errors_are_one_line_without_traceback(tmp_path, data):
    """In a real process: exit code 1, one `error:` line, no traceback."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    code = "from drgan.cli import main; main()"
    for args in (["train", "gan", "--out", str(tmp_path / "r"), "--data", str(data), "--device", "cuda:7"],
                 ["train", "grader", "--data", str(data), "--out", str(tmp_path / "x"), "--device", "cuda:7"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_control_character_in_a_path_keeps_the_error_one_line(drgan, tmp_path):
    rc, _, err = drgan("data", "validate", tmp_path / "a\nb\tc")
    assert rc == 1 and err == f"error: {tmp_path}/a\\nb\\tc: dataset folder not found\n"



@pytest.mark.parametrize("command", [
    ("phantom", "--out", "{out}", "--count", "3"),
    ("evaluate", "swd", "--real", "{data}", "--fake", "{data}"),
    ("evaluate", "metrics", "--real", "{data}", "--fake", "{data}", "--metrics", "swd"),
    ("train", "grader", "--data", "{data}", "--out", "{out}", "--preset", "tiny-64"),
    ("train", "gan", "--data", "{data}", "--out", "{out}", "--preset", "tiny-64"),
    ("synthesize", "--preset", "tiny-64", "--backend", "null", "--out", "{out}", "--count", "2"),
])
def test_a_seed_past_64_bits_is_one_line(drgan, tmp_path, data, command):
    """torch.manual_seed and SWD's order key take 64-bit seeds: a larger one is refused up front."""
    args = [a.format(out=tmp_path / "out", data=data) for a in command]
    line = _one_error(*drgan(*args, "--seed", str(2**64))[::2])
    assert line.startswith(f"error: --seed {2**64}") and line.endswith(f"{2**64 - 1}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [
    ("synthesize", "--preset", "tiny-64", "--backend", "null", "--out", "{out}", "--count", "2", "--batch"),
    ("evaluate", "fid", "--real", "{data}", "--fake", "{data}", "--batch"),
    ("train", "grader", "--data", "{data}", "--out", "{out}", "--preset", "tiny-64", "--batch"),
    ("train", "gan", "--data", "{data}", "--out", "{out}", "--preset", "tiny-64", "--batch"),
    ("export", "--run", "{data}", "--out", "{out}", "--max-batch"),
])
def test_a_batch_past_the_largest_is_one_line(drgan, tmp_path, data, command):
    """A batch of 2**63 made torch fail to unpack a size with a traceback: the bound comes first."""
    args = [a.format(out=tmp_path / "out", data=data) for a in command]
    line = _one_error(*drgan(*args, str(2**63))[::2])
    assert line.startswith("error: --") and f"{2**63}" in line and "4096" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("exc, detail", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.11 GiB "
                            "of which 3.12 GiB is free. Of the allocated memory 74.50 GiB is allocated by PyTorch."),
     "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.11 GiB of which 3.12 GiB is free"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 17592186044416 bytes. Error code 12 (Cannot allocate memory)"),
     "can't allocate memory: you tried to allocate 17592186044416 bytes"),
])
def test_an_allocation_that_fails_is_one_line_and_leaves_nothing(drgan, tmp_path, monkeypatch, exc, detail):
    from drgan.synthesis import runner

    def fails(*args, **kwargs):
        raise exc

    monkeypatch.setattr(runner, "make_backend", fails)
    line = _one_error(*drgan("synthesize", "--preset", "tiny-64", "--backend", "null", "--out", tmp_path / "s",
                             "--count", "2")[::2])
    assert line == f"error: out of memory: {detail}. A smaller --batch (where the command takes one) needs less."
    assert not (tmp_path / "s").exists()


def test_other_runtime_errors_are_not_taken_for_out_of_memory(drgan, tmp_path, monkeypatch):
    from drgan.synthesis import runner

    def fails(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(runner, "make_backend", fails)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        drgan("synthesize", "--preset", "tiny-64", "--backend", "null", "--out", tmp_path / "s", "--count", "2")


def test_failed_dataset_commands_leave_nothing_behind(drgan, tmp_path):
    line = _one_error(*drgan("phantom", "--out", tmp_path / "ph", "--count", "3", "--seed", "-1")[::2])
    assert line == f"error: --seed -1: outside the range 0<=x<={2**64 - 1}" and not (tmp_path / "ph").exists()
    line = _one_error(*drgan("masks", "extract", tmp_path / "missing.png", "--out", tmp_path / "mx")[::2])
    assert "missing.png" in line and not (tmp_path / "mx").exists()
    (tmp_path / "empty").mkdir()
    _one_error(*drgan("masks", "extract", tmp_path / "missing.png", "--out", tmp_path / "empty")[::2])
    assert (tmp_path / "empty").is_dir() and not any((tmp_path / "empty").iterdir())
    rc, _, err = drgan("phantom", "--out", tmp_path / "ph", "--count", "2", "--size", "64", "--workers", "0")
    assert rc == 0, err  # the retry is accepted


def test_fid_cache_that_cannot_be_written_fails_before_any_work(drgan, tmp_path, data):
    (tmp_path / "file").write_text("")
    cache = tmp_path / "file" / "fid"  # under a file: can never be created
    line = _one_error(*drgan("evaluate", "fid", "--real", data, "--fake", data, "--cache", cache, "--device", "cpu")[::2])
    assert line == f"error: --cache {cache}: {tmp_path / 'file'} is a file, not a folder"


def test_a_run_folder_in_use_is_refused(drgan, tmp_path, data, lock_holder):
    """A second writer would mix its run.json with the first one's state.json."""
    run = _new_run(drgan, tmp_path, data, "--max-steps", "1")
    pid = lock_holder(run)
    refusal = f"error: {run} is in use by another drgan process (pid {pid})"
    assert _one_error(*drgan("train", "gan", "--resume", run, "--max-steps", "2")[::2]) == refusal
    args = ["--data", data, "--grading-space", tmp_path / "space.safetensors", "--out", run, *TINY, "--max-steps", "1"]
    assert _one_error(*drgan("train", "gan", *args, "--lr", "0.5", "--overwrite")[::2]) == refusal
    assert _step(run) == 1 and read_run(run).kind == "gan"
    young = tmp_path / "young"  # still training towards its first checkpoint: it was "no state.json"
    young.mkdir()
    shutil.copy(run / "run.json", young / "run.json")
    pid = lock_holder(young)
    assert _one_error(*drgan("train", "gan", "--resume", young, "--max-steps", "2")[::2]) == \
        f"error: {young} is in use by another drgan process (pid {pid})"
    write_run_config(tmp_path / "g", preset("tiny-64"), "global", {"trainer": "grader"})
    pid = lock_holder(tmp_path / "g")
    assert _one_error(*drgan("train", "grader", "--data", data, "--out", tmp_path / "g", "--preset", "tiny-64", "--overwrite")[::2]) == \
        f"error: {tmp_path / 'g'} is in use by another drgan process (pid {pid})"


def test_the_lock_is_released_when_training_ends(tmp_path, data):
    """In a notebook the process lives on: another process may resume the run afterwards."""
    space = write_space(tmp_path / "space.safetensors")
    run = tmp_path / "run"
    opts = dict(grading_space=str(space), preset="tiny-64", perceptual="none", batch=2, device="cpu")
    train_gan(GanOptions(data=str(data), out=str(run), max_steps=1, **opts))
    train_gan(GanOptions(resume=str(run), max_steps=2))
    hold = "import sys; from drgan import locks; locks.hold(sys.argv[1])"
    assert subprocess.run([sys.executable, "-c", hold, str(run)]).returncode == 0


def test_a_claimed_folder_killed_while_writing_its_marker_is_taken_again(tmp_path):
    """A SIGKILL during the marker's write left its temp file, and the folder was refused for good
    as 'not empty and not' the job's; a dead writer's temp file of the results is removed too."""
    from drgan.io import HOST, TEMP_MARK
    from drgan.runs import claimed_folder
    from helpers import dead_pid

    out = tmp_path / "exp"
    out.mkdir()
    left = [out / f".experiment.json{TEMP_MARK}{dead_pid()}-1@{HOST}", out / f".results.json{TEMP_MARK}{dead_pid()}-1@{HOST}"]
    for path in left:
        path.write_text("{")
    with claimed_folder(out, "experiment.json", {"epochs": 1}, "an augmentation experiment"):
        assert json.loads((out / "experiment.json").read_text()) == {"epochs": 1}
    assert not any(path.exists() for path in left)


def test_claimed_folder_names_its_refusals(tmp_path):
    """Another job's marker names each differing setting with both values (a sha256 by its first
    digits); a marker that is not a settings object is unreadable, not a traceback; an upgrade
    of an older marker's settings resumes the folder and rewrites the marker."""
    from drgan.runs import claimed_folder

    out = tmp_path / "exp"
    digest = "ab" * 32
    with claimed_folder(out, "experiment.json", {"epochs": 1, "real_sha256": digest}, "an experiment"):
        pass
    with pytest.raises(DrganError, match=r"^out .*: holds an experiment with other settings \(epochs: 1 there, 2 now, "
                                         r"real_sha256: 'abababababab\.\.\.' there, 'cdcdcdcdcdcd\.\.\.' now\); "):
        with claimed_folder(out, "experiment.json", {"epochs": 2, "real_sha256": "cd" * 32}, "an experiment"):
            pass
    older = {"epochs": 1, "real": "data"}
    (out / "experiment.json").write_text(json.dumps(older))
    now = {"epochs": 1, "real_sha256": digest}
    with claimed_folder(out, "experiment.json", now, "an experiment", upgrade=lambda e: now if e == older else e):
        pass
    assert json.loads((out / "experiment.json").read_text()) == now
    (out / "experiment.json").write_text("[1, 2]")
    with pytest.raises(DrganError, match=r"unreadable experiment.json \(not a JSON object\)"):
        with claimed_folder(out, "experiment.json", now, "an experiment"):
            pass


@pytest.mark.parametrize("args, names", [
    (["synthesize", "--preset", "tiny-64", "--backend", "null", "--count", "5", "--count", "10", "--out"], "--count"),
    (["info", "--run", "A", "--checkpoint"], "--run/--checkpoint"),
    (["train", "gan", "--channels-last", "--no-channels-last", "--out"], "--channels-last/--no-channels-last"),
])
def test_an_option_given_twice_is_a_usage_error(drgan, tmp_path, args, names):
    """click keeps the last value of a repeated option without a word."""
    rc, _, err = drgan(*args, tmp_path / "out")
    assert rc == 2 and err == f"error: {names} given more than once: give it once\n"
    assert not (tmp_path / "out").exists()


def test_help_is_shown_whatever_else_was_typed(drgan):
    """-h asks for the help: a repeated option or an empty path beside it does not refuse it."""
    for args in (["synthesize", "--count", "5", "--count", "10", "-h"], ["export", "--out", "", "--help"]):
        rc, out, err = drgan(*args)
        assert rc == 0 and out.startswith(f"Usage: drgan {args[0]} [OPTIONS]") and err == "", args


def test_an_empty_path_is_a_usage_error(drgan, tmp_path):
    """`--out ''` read as no --out: export wrote into RUN/export."""
    run = make_run(tmp_path / "run")
    for args, name in ((["export", "--run", run, "--out", ""], "--out"), (["data", "validate", ""], "DATA")):
        rc, _, err = drgan(*args)
        assert rc == 2 and err == f"error: {name}: an empty path\n"
    assert not (run / "export").exists()


def test_a_file_given_as_a_run_is_named_a_file(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(DrganError) as err:
        read_run(tmp_path / "afile")
    assert str(err.value) == f"{tmp_path / 'afile'}: is a file, expected a run folder"


def test_a_run_is_never_written_inside_its_dataset(drgan, tmp_path, data):
    shutil.copytree(data, tmp_path / "p")
    inside = tmp_path / "p" / "run"
    space = write_space(tmp_path / "space.safetensors")
    for args in (["train", "grader", "--data", tmp_path / "p", "--out", inside, "--preset", "tiny-64"],
                 ["train", "gan", "--data", tmp_path / "p", "--grading-space", space, "--out", inside, *TINY]):
        line = _one_error(*drgan(*args)[::2])
        assert line == f"error: {inside}: inside {tmp_path / 'p'}, a folder this command uses; write it elsewhere"
        assert not inside.exists()
