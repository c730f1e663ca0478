"""Bad input on the command line: one `error:` line naming the path or option and the cause (exit 1),
nothing left behind, warnings where a result would mislead, and the conventions of every command."""
from __future__ import annotations

import importlib.util
import json
import shutil
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from PIL import Image

from drgan.cli import cli
from drgan.checkpoint import load_tensors, save_tensors
from drgan.cli.common import HELP_NAMES, run_command
from drgan.data.phantom import write_phantom_dataset
from drgan.errors import DrganError, ParameterError
from drgan.grading_space import GradingSpace
from drgan.io import atomic_write_bytes
from drgan.synthesis.plan import Plan
from helpers import one_error
from synthesis_fixtures import make_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom") / "p", count=10, size=64, seed=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "run")


def usage_error(rc: int, out: str, err: str) -> str:
    """The one line of a usage error (exit 2)."""
    return one_error(rc, out, err, code=2)


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A path under a regular file: it can never be created, not even by root."""
    (tmp_path / "file").write_text("")
    return tmp_path / "file"


def test_outputs_under_a_file_are_one_line_before_any_work(drgan, tmp_path, data, run, blocked):
    cases = [
        (["export", "--run", run, "--out", blocked / "exp"], blocked / "exp"),
        (["data", "contact-sheet", "--data", data, "--out", blocked / "s.png"], blocked / "s.png"),
        (["data", "fit-lesions", "--data", data, "--out", blocked / "l.json"], blocked / "l.json"),
        (["masks", "extract", next((data / "images").iterdir()), "--out", blocked / "mx"], blocked / "mx"),
        (["experiment", "augment", "--real", data, "--synthetic", data, "--test", data, "--out", blocked / "aug",
          "--preset", "tiny-64", "--device", "cpu"], blocked / "aug"),
        (["demo", "--out", blocked / "demo", "--device", "cpu", "--quick"], blocked / "demo"),
        (["phantom", "--out", tmp_path / "ph", "--count", "2", "--size", "64", "--contact-sheet", blocked / "s.png"],
         blocked / "s.png"),
        (["train", "grader", "--data", data, "--out", blocked / "g", "--preset", "tiny-64"], blocked / "g"),
    ]
    for args, path in cases:
        line = one_error(*drgan(*args))
        assert line == f"error: {path}: cannot write ({blocked} is a file, not a folder)", args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing created, no temp file


def test_file_outputs_refuse_a_folder_and_a_missing_folder(drgan, tmp_path, data):
    (tmp_path / "folder").mkdir()
    for command in ("contact-sheet", "fit-lesions"):
        line = one_error(*drgan("data", command, "--data", data, "--out", tmp_path / "folder"))
        assert line == f"error: {tmp_path / 'folder'}: is a folder, expected a file path"
    assert not any((tmp_path / "folder").iterdir())
    line = one_error(*drgan("data", "fit-lesions", "--data", data, "--out", tmp_path / "missing" / "l.json"))
    assert line == f"error: {tmp_path / 'missing' / 'l.json'}: folder {tmp_path / 'missing'} does not exist"


def test_file_outputs_never_write_over_their_input_or_a_file_of_another_kind(drgan, tmp_path, data):
    """A contact sheet or lesion statistics over the dataset's labels.csv or one of its images, under
    the wrong suffix, or over a file that is not an earlier result: refused, nothing written. An
    earlier result is replaced (a rerun)."""
    copy = shutil.copytree(data, tmp_path / "data")
    image = next((copy / "images").iterdir())
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    (tmp_path / "notes.png").write_text("my notes")
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    shutil.copy(image, tmp_path / "photo.png")  # a PNG, but not a contact sheet
    cases = [(["contact-sheet", copy, "--out", copy / "labels.png"], f"{copy / 'labels.png'}: inside {copy}, a folder this command uses"),
             (["contact-sheet", copy, "--out", image], f"{image}: inside {copy}, a folder this command uses"),
             (["fit-lesions", copy, "--out", copy / "labels.csv"], f"{copy / 'labels.csv'}: lesion statistics is written as .json"),
             (["contact-sheet", copy, "--out", tmp_path / "s.jpg"], f"{tmp_path / 's.jpg'}: a contact sheet is written as .png"),
             (["contact-sheet", copy, "--out", tmp_path / "notes.png"], f"{tmp_path / 'notes.png'}: exists and is not a contact sheet"),
             (["contact-sheet", copy, "--out", tmp_path / "photo.png"], f"{tmp_path / 'photo.png'}: exists and is not a contact sheet"),
             (["fit-lesions", copy, "--out", tmp_path / "notes.json"], f"{tmp_path / 'notes.json'}: exists and is not lesion statistics")]
    for args, message in cases:
        assert one_error(*drgan("data", *args)).startswith(f"error: {message}"), args
    line = one_error(*drgan("phantom", "--out", tmp_path / "ph", "--count", "2", "--size", "64", "--contact-sheet", tmp_path / "ph" / "s.png"))
    assert line.startswith(f"error: {tmp_path / 'ph' / 's.png'}: inside {tmp_path / 'ph'}")
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    assert (tmp_path / "notes.png").read_text() == "my notes" and not (tmp_path / "s.jpg").exists()
    assert (tmp_path / "photo.png").read_bytes() == image.read_bytes()
    for _ in range(2):  # the second run replaces the first's results
        assert drgan("data", "contact-sheet", copy, "--out", tmp_path / "s.png", "--size", "16")[0] == 0
        assert drgan("data", "fit-lesions", copy, "--out", tmp_path / "l.json")[0] == 0


def test_failed_atomic_write_leaves_no_temp_file(blocked, tmp_path):
    with pytest.raises(DrganError, match="is a file, not a folder"):
        atomic_write_bytes(blocked / "x.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_result_named_near_the_file_name_limit_is_written(drgan, tmp_path):
    """Its temp sibling's name is cut to fit: it failed with 'File name too long' after the work."""
    from drgan.io import HOST, NAME_MAX, TEMP_MARK, remove_temp_files
    from helpers import dead_pid

    data = tmp_path / "d"
    assert drgan("phantom", "--out", data, "--count", "10", "--size", "64")[0] == 0
    name = "é" * 100 + "y" * (NAME_MAX - 200 - 4) + ".png"  # 2-byte characters: the cut falls between them
    assert len(name.encode()) == NAME_MAX
    assert drgan("data", "contact-sheet", data, "--out", tmp_path / name, "--size", "16")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", name]
    left = tmp_path / f".{'é' * 100}x{TEMP_MARK}{dead_pid()}-1@{HOST}"  # a dead writer's cut temp name is still its own
    left.write_bytes(b"")
    remove_temp_files(tmp_path, recursive=False)
    assert not left.exists()


def test_a_run_whose_images_no_reader_takes_is_refused(drgan, tmp_path):
    """tiny-64's global stage makes 32 px images: the set was written, then refused by every reader."""
    small = make_run(tmp_path / "global", stage="global")
    rc, out, err = drgan("synthesize", "--run", small, "--out", tmp_path / "set", "--count", "5", "--device", "cpu")
    assert one_error(rc, out, err) == (f"error: --run {small}: its global stage makes 32 px images; a set needs at "
                                       "least 64 px (synthesize from the local stage's run)")
    assert "warning" not in err
    assert not (tmp_path / "set").exists()


def test_an_output_that_is_a_link_to_nothing_is_named_so(drgan, tmp_path, run):
    """Each command said 'File exists' (exists() is False for the link, mkdir fails on it)."""
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "nowhere")
    expected = f"error: {out}: cannot write ({out} is a symbolic link to the missing {tmp_path / 'nowhere'})"
    assert one_error(*drgan("phantom", "--out", out, "--count", "10", "--size", "64")) == expected
    assert one_error(*drgan("synthesize", "--run", run, "--out", out, "--count", "2", "--device", "cpu")) == expected
    assert one_error(*drgan("data", "contact-sheet", run, "--out", out / "s.png")) == expected  # its folder is made


def test_bad_synthesize_options_name_the_option(drgan, tmp_path, run, monkeypatch):
    synth = ["synthesize", "--run", run, "--out", tmp_path / "set", "--device", "cpu"]
    assert one_error(*drgan(*synth, "--per-grade", "0")) == "error: --per-grade 0: outside the range 1<=x<=10000000"
    assert one_error(*drgan(*synth, "--count", "5", "--format", "jpeg", "--quality", "0")).startswith("error: --quality 0:")
    assert one_error(*drgan(*synth, "--count", "5", "--format", "jpeg", "--quality", "500")).startswith("error: --quality 500:")
    # An option the others leave unused, or one that needs another: usage errors.
    assert usage_error(*drgan(*synth, "--count", "5", "--quality", "50")).startswith("error: --quality is the JPEG quality; with --format png")
    assert usage_error(*drgan(*synth, "--count", "5", "--format", "jpeg", "--png-level", "3")).startswith(
        "error: --png-level is the PNG compression; with --format jpeg")
    assert usage_error(*drgan(*synth, "--count", "5", "--loader", "dali")).startswith("error: --loader reads --structures")
    assert usage_error(*drgan(*synth, "--count", "5", "--structures-split", "all")).startswith(
        "error: --structures-split reads --structures")
    assert usage_error(*drgan(*synth, "--count", "5", "--trt-plugin", tmp_path / "lib.so")) == \
        "error: --trt-plugin applies to --backend tensorrt, not torch"
    assert usage_error(*drgan(*synth[:-2], "--count", "5", "--device", "tpu")) == \
        "error: --device 'tpu': expected auto, cpu, cuda or cuda:N"
    from drgan.export import trt_build

    if importlib.util.find_spec("tensorrt") is None:  # the export an absent engine asks for needs it first
        assert one_error(*drgan(*synth, "--count", "5", "--backend", "tensorrt")) == f"error: {trt_build.INSTALL_HINT}"
    monkeypatch.setattr(trt_build, "import_tensorrt", lambda: None)
    line = one_error(*drgan(*synth, "--count", "5", "--backend", "tensorrt"))
    assert "not exported yet" in line and "--trt" in line
    (tmp_path / "file").write_text("")
    line = one_error(*drgan("synthesize", "--run", run, "--out", tmp_path / "file", "--count", "5", "--device", "cpu"))
    assert "not empty" not in line and "not a folder" in line
    assert not (tmp_path / "set").exists()


@pytest.mark.parametrize("bad", ["nan", "negative var"])
def test_an_unusable_grading_space_is_refused_at_load(drgan, tmp_path, data, bad):
    run = make_run(tmp_path / "run")
    path = run / "grading_space.safetensors"
    tensors = load_tensors(path)
    if bad == "nan":
        tensors["mean"][2, 5] = float("nan")
    else:
        tensors["var"][1, 0] = -1.0
    save_tensors(tensors, path)
    line = one_error(*drgan("synthesize", "--run", run, "--out", tmp_path / "set", "--count", "5", "--device", "cpu"))
    assert line.startswith(f"error: {path}: not a usable grading space (") and bad.split()[0] in line.lower(), line
    assert not (tmp_path / "set").exists()
    line = one_error(*drgan("train", "gan", "--data", data, "--grading-space", path, "--out", tmp_path / "gan",
                            "--preset", "tiny-64", "--perceptual", "none", "--batch", "2", "--device", "cpu", "--max-steps", "1"))
    assert line.startswith(f"error: {path}: not a usable grading space (")


def test_run_json_out_of_range_or_unlike_its_weights_is_refused_before_building(drgan, tmp_path, monkeypatch):
    import json

    from drgan import nn

    built = []

    class Recorded(nn.DRGANGenerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(next(self.parameters()).device.type)

    monkeypatch.setattr(nn, "DRGANGenerator", Recorded)
    run = make_run(tmp_path / "run")
    meta = json.loads((run / "run.json").read_text())
    for w_dim, expected in ((200_000, f"error: {run / 'run.json'}: invalid model config: w_dim 200000 is out of range"),
                            (128, f"error: {run / 'G_ema.safetensors'}: weights do not match the model")):
        meta["model"]["w_dim"] = w_dim
        (run / "run.json").write_text(json.dumps(meta))
        line = one_error(*drgan("synthesize", "--run", run, "--out", tmp_path / "set", "--count", "5", "--device", "cpu"))
        assert line.startswith(expected), line
    assert "cpu" not in built, built   # the mismatch was found on the meta device, before any allocation


def test_bad_lesion_stats_are_one_line_naming_the_file(drgan, tmp_path):
    import json

    from drgan.data.lesion_stats import DEFAULT_STATS

    data = DEFAULT_STATS.to_dict()
    data["grades"]["1"]["ma"]["count_hist"] = [-1.0, 2.0]
    (tmp_path / "stats.json").write_text(json.dumps(data))
    line = one_error(*drgan("synthesize", "--preset", "tiny-64", "--backend", "null", "--out", tmp_path / "set", "--count", "5",
                            "--lesion-stats", tmp_path / "stats.json", "--device", "cpu"))
    assert line.startswith(f"error: {tmp_path / 'stats.json'}: invalid lesion statistics: grades.1.ma.count_hist"), line


@pytest.mark.timeout(120)
@pytest.mark.parametrize("env, expected", [
    ({"RANK": "abc"}, "error: RANK='abc' (torchrun's environment): not a whole number"),
    ({"WORLD_SIZE": "0"}, "error: WORLD_SIZE=0 (torchrun's environment): need at least 1"),
    ({"RANK": "5", "WORLD_SIZE": "2"}, "error: RANK=5 with WORLD_SIZE=2 (torchrun's environment): need 0 <= RANK < WORLD_SIZE"),
    ({"WORLD_SIZE": "2"}, "error: WORLD_SIZE=2 without RANK (torchrun's environment sets both)"),
])
def test_torchrun_environment_is_checked_as_shard_is(drgan, tmp_path, data, monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    line = one_error(*drgan("synthesize", "--preset", "tiny-64", "--backend", "null", "--out", tmp_path / "set",
                            "--count", "5", "--device", "cpu"))
    assert line == expected
    assert not (tmp_path / "set").exists()
    space = tmp_path / "space.safetensors"
    GradingSpace(torch.zeros(5, 256), torch.ones(5, 256), 0.5).save(space)
    line = one_error(*drgan("train", "gan", "--data", data, "--grading-space", space, "--out", tmp_path / "gan",
                            "--preset", "tiny-64", "--perceptual", "none", "--batch", "2", "--device", "cpu", "--max-steps", "1"))
    assert line == expected


def test_a_shard_that_disagrees_with_torchruns_environment_is_refused(drgan, tmp_path, monkeypatch):
    """Under torchrun each rank given the same --shard would write the same part."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["synthesize", "--preset", "tiny-64", "--backend", "null", "--count", "10", "--device", "cpu"]
    rc, _, err = drgan(*args, "--out", tmp_path / "a", "--shard", "0/2")
    assert rc == 2 and err == "error: --shard 0/2: torchrun's environment gives RANK=1 WORLD_SIZE=2; give one of them\n"
    assert not (tmp_path / "a").exists()
    rc, _, err = drgan(*args, "--out", tmp_path / "b", "--shard", "1/2")
    assert rc == 0, err


def test_unbalanced_count_is_named(drgan, tmp_path):
    rc, _, err = drgan("synthesize", "--preset", "tiny-64", "--backend", "null", "--out", tmp_path / "set", "--count", "3",
                       "--device", "cpu")
    assert rc == 0, err
    warnings = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("warning")]
    assert warnings == ["warning: --count 3 over 5 grades is not balanced: grade(s) 0, 1, 2 get 1, the others 0 "
                        "(--per-grade gives each grade the same number)"]
    rc, out, err = drgan("synthesize", "--preset", "tiny-64", "--backend", "null", "--out", tmp_path / "set2", "--count", "3",
                         "--device", "cpu", "--json")
    assert rc == 0 and json.loads(out)["warnings"] == [warnings[0].removeprefix("warning: ")]


def test_a_run_trained_on_resampled_masks_gets_lesions_resampled_as_it_saw_them(drgan, tmp_path):
    """Training resamples a dataset's masks to the run's resolution (soft lesion edges, a small
    lesion a faint blob): synthesis draws lesions at the data's side (at most 4 times the run's)
    and resamples them the same way, and records that in the set's fingerprint; data of the run's
    side gets them drawn at its resolution, hard, as before."""
    from drgan.runs import RUN_FILE, dataset_record

    data = write_phantom_dataset(tmp_path / "data", 4, 96, seed=0)
    assert dataset_record(data)["dataset"]["image_side"] == 96
    for side, drawn_at in ((64, None), (70, 70), (96, 96), (51, 51), (1000, 256)):
        run = make_run(tmp_path / f"run{side}")                       # tiny-64: 64 px
        record = json.loads((run / RUN_FILE).read_text())
        (run / RUN_FILE).write_text(json.dumps({**record, "dataset": {"image_side": side}}))
        out = tmp_path / f"set{side}"
        rc, text, err = drgan("synthesize", "--run", run, "--out", out, "--count", "10", "--device", "cpu", "--save-masks",
                              "--json")
        assert rc == 0, err
        assert json.loads(text)["warnings"] == [] and "warning" not in err
        recorded = json.loads((out / "fingerprint.json").read_text())
        assert recorded.get("lesions_drawn_at") == drawn_at and ("lesions_drawn_at" in recorded) == (drawn_at is not None)
        levels = set()
        for folder in (out / "masks").iterdir():
            for name in ("ma", "he", "ex", "se"):
                if (folder / f"{name}.png").is_file():
                    levels |= set(np.unique(np.asarray(Image.open(folder / f"{name}.png"))).tolist())
        assert {0, 255} <= levels and (len(levels) > 2) == (drawn_at is not None), levels
    made_hard = json.loads((out / "fingerprint.json").read_text())    # a set begun by an earlier version
    del made_hard["lesions_drawn_at"]
    (out / "fingerprint.json").write_text(json.dumps(made_hard))
    rc, _, err = drgan("synthesize", "--run", run, "--out", out, "--count", "10", "--device", "cpu", "--save-masks")
    assert rc == 1 and "(lesions_drawn_at not set there, 256 now: lesions are drawn at the side of the run's training" in err
    # A global-stage run trained on conditions averaged down from the preset's resolution, whatever the data.
    from drgan.synthesis.runner import condition_shift

    from drgan.runs import require_kind
    from drgan.synthesis.runner import lesion_side

    glob = make_run(tmp_path / "global", stage="global", preset_name="tiny-128")
    record = json.loads((glob / RUN_FILE).read_text())
    (glob / RUN_FILE).write_text(json.dumps({**record, "dataset": {"image_side": 256}}))
    assert lesion_side(require_kind(glob, "gan", "run")) is None   # warned of instead
    assert condition_shift(glob) == (f"{glob} is a global-stage run: it trained on conditions averaged down to 64 px, "
                                     "with soft edges, and synthesis draws lesions with hard ones (synthesize from "
                                     "the local stage's run)")
    assert condition_shift(tmp_path / "missing") is None and condition_shift(None) is None
    assert condition_shift(tmp_path / "run96") is None


def test_repeated_or_unknown_grades_are_refused_before_the_balance_warning(drgan, tmp_path):
    synth = ["synthesize", "--preset", "tiny-64", "--backend", "null", "--out", tmp_path / "set", "--count", "5", "--device", "cpu"]
    for grades, reason in (("1,1", "each grade once"), ("1,9", "grades must lie in 0..4")):
        rc, out, err = drgan(*synth, "--grades", grades)
        assert one_error(rc, out, err).endswith(reason) and "warning" not in err
    assert not (tmp_path / "set").exists()


def test_malformed_grades_or_shard_are_usage_errors_out_of_range_ones_bad_input(drgan, tmp_path):
    synth = ["synthesize", "--preset", "tiny-64", "--backend", "null", "--out", tmp_path / "set", "--count", "5", "--device", "cpu"]
    assert usage_error(*drgan(*synth, "--grades", "a")) == "error: --grades 'a': expected comma-separated grades, e.g. 0,1,2,3,4"
    assert usage_error(*drgan(*synth, "--shard", "x")) == "error: --shard 'x': expected i/n, e.g. 0/4"
    assert one_error(*drgan(*synth, "--shard", "3/2")) == "error: --shard '3/2': need 0 <= i < n"
    assert not (tmp_path / "set").exists()


def test_info_of_a_run_refuses_a_preset_or_stage_it_would_ignore(drgan, run):
    for extra in (["--preset", "paper-1280"], ["--stage", "local"]):  # options that exclude each other: usage
        assert drgan("info", "--run", run, *extra) == \
            (2, "", f"error: --run {run}: the run gives the model and stage; drop {extra[0]}\n")
    rc, out, _ = drgan("info", "--checkpoint", run)
    assert rc == 0 and "stage 'local'" in out
    total = next(line for line in out.splitlines() if line.startswith("total:"))
    assert " MFLOP per image" in total and not total.startswith("total: 0.0 ")  # GFLOP read 0.0 at tiny sizes
    rc, out, _ = drgan("info", "--run", run, "--json")
    report = json.loads(out)
    assert rc == 0 and report["stage"] == "local" and report["params"] == sum(m["params"] for m in report["modules"])


def test_synthesize_device_tpu_in_a_process_is_one_line():
    proc = subprocess.run([sys.executable, "-c", "from drgan.cli import main; main()", "synthesize", "--preset", "tiny-64",
                           "--backend", "null", "--out", "unused", "--count", "5", "--device", "tpu"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2 and proc.stderr == "error: --device 'tpu': expected auto, cpu, cuda or cuda:N\n", proc.stderr


def test_sizes_name_the_option(drgan, tmp_path, data):
    line = one_error(*drgan("data", "contact-sheet", "--data", data, "--out", tmp_path / "s.png", "--size", "0"))
    assert line == "error: --size 0: outside the range 8<=x<=1024"
    assert run_command(cli, args=["data", "contact-sheet", str(data), "--out", "s.png", "--size", "x"]) == 2  # wrong type


def test_swd_of_one_image_is_refused(drgan, tmp_path, data):
    (tmp_path / "one").mkdir()
    image = next((data / "images").iterdir())
    (tmp_path / "one" / image.name).write_bytes(image.read_bytes())
    line = one_error(*drgan("evaluate", "swd", "--real", tmp_path / "one", "--fake", data, "--device", "cpu"))
    assert line == f"error: {tmp_path / 'one'}: 1 image; SWD needs at least 2 images per set"


def test_a_required_option_left_out_is_a_usage_error(drgan, tmp_path, data, run):
    """Exit 2, as for the options click checks itself, also where a command checks it by hand."""
    cases = [(("synthesize", "--run", run, "--out", tmp_path / "s"), "give exactly one of --count and --per-grade"),
             (("train", "grader", "--out", tmp_path / "g"), "--data DIR and --out RUN are required (or --resume RUN)"),
             (("train", "gan", "--data", data), "--out RUN is required (or --resume RUN)"),
             (("train", "gan", "--data", data, "--out", tmp_path / "r", "--preset", "tiny-64"),
              "--grading-space FILE is required (grading_space.safetensors of `drgan train grader`)")]
    for args, message in cases:
        rc, out, err = drgan(*args)
        assert (rc, err.strip().splitlines()[-1]) == (2, f"error: {message}"), args


def test_a_missing_run_and_a_file_for_a_dataset_are_named_as_such(drgan, tmp_path, data):
    image = next((data / "images").iterdir())
    assert one_error(*drgan("data", "validate", image)) == f"error: {image}: is a file, expected a dataset folder"
    missing = tmp_path / "nope"
    assert one_error(*drgan("train", "gan", "--resume", missing)) == f"error: {missing}: run folder not found"


def test_a_run_folder_is_not_an_image_set(drgan, data, run):
    """Its sample grids were scored as a set of two images."""
    (run / "samples").mkdir(exist_ok=True)
    shutil.copy(next((data / "images").iterdir()), run / "samples" / "grades-0000001.png")
    for command in ("swd", "fid"):
        line = one_error(*drgan("evaluate", command, "--real", data, "--fake", run, "--device", "cpu"))
        assert line == f"error: {run}: a drgan run folder, not an image set (synthesize a set from it first)", command


def test_fid_over_few_images_warns_that_it_is_biased():
    from drgan.metrics.fid import FEATURE_DIM, small_set_warnings

    warnings = small_set_warnings({"real": 10, "fake": FEATURE_DIM})
    assert len(warnings) == 1 and warnings[0].startswith("FID over 10 real images is biased upwards")


def test_long_tensor_name_lists_are_capped(tmp_path, run):
    with pytest.raises(DrganError) as err:
        GradingSpace.load(run / "G_ema.safetensors")
    message = str(err.value)
    assert len(message) < 300 and re.search(r"found \d+ names \(", message), message


def test_library_errors_name_the_parameter():
    with pytest.raises(ParameterError) as err:
        Plan(count=0, grades=(0,), seed=0, batch=1)
    assert str(err.value) == "count 0: need at least one image"
    assert err.value.render(lambda name: "--" + name) == "--count 0: need at least one image"


def test_dataset_commands_take_data_and_the_positional_folder(drgan, tmp_path, data):
    assert drgan("data", "validate", "--data", data)[0] == 0
    assert drgan("data", "validate", data)[0] == 0
    rc, _, err = drgan("data", "fit-lesions", "--out", tmp_path / "l.json")
    assert rc == 2 and "Missing option '--data'" in err
    assert drgan("data", "fit-lesions", data, "--data", tmp_path, "--out", tmp_path / "l.json")[0] == 2


def _commands(command: click.Command, name: str = "drgan"):
    if isinstance(command, click.Group):
        for sub_name, sub in command.commands.items():
            yield from _commands(sub, f"{name} {sub_name}")
    else:
        yield name, command


def test_every_option_has_help_and_every_number_its_range():
    for name, command in _commands(cli):
        for param in command.params:
            if not isinstance(param, click.Option) or param.name == "help":
                continue
            assert param.help, (name, param.opts)
            if isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType)):
                ranged = isinstance(param.type, click.types._NumberRangeBase) or re.search(r">=|<=|>|\.\.", param.help)
                assert ranged, (name, param.opts, param.help)
    # The commands' help names: click keeps the help option of the first context it meets (run_command's, later).
    synthesize_help = cli.commands["synthesize"].get_help(click.Context(cli.commands["synthesize"], **HELP_NAMES))
    assert "one of them is required" in " ".join(synthesize_help.split())


def test_every_device_option_says_the_same_and_opset_its_bounds():
    """Four evaluate commands gave 'auto, cpu, cuda, cuda:1, ...'; --opset had no upper bound."""
    from drgan.cli.common import DEVICE_HELP
    from drgan.export.onnx_export import MAX_OPSET, MIN_OPSET

    devices = [(name, p.help) for name, command in _commands(cli) for p in command.params if p.name == "device"]
    assert len(devices) >= 9 and all(DEVICE_HELP in text for _, text in devices), devices
    opset = next(p for p in cli.commands["export"].params if p.name == "opset")
    assert opset.help.startswith(f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} ")


def test_written_files_have_the_mode_of_a_plain_open(drgan, tmp_path, data):
    """Checkpoints (safetensors writes a temp file with 0600) and every other file: 0666 less the umask."""
    from drgan.io import _UMASK

    rc, _, err = drgan("train", "grader", "--data", data, "--out", tmp_path / "g", "--preset", "tiny-64", "--epochs", "1",
                       "--batch", "4", "--device", "cpu")
    assert rc == 0, err
    assert drgan("data", "contact-sheet", "--data", data, "--out", tmp_path / "sheet.png", "--size", "32")[0] == 0
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~_UMASK)}


def test_sigterm_runs_a_commands_cleanup_as_an_interrupt_does():
    """A job scheduler's SIGTERM: the command's cleanup (a new run folder removed, temp files
    deleted) runs and the exit status is 143, where Python's default would end the process at once."""
    import signal

    cleaned = []

    @click.command()
    def killed() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            cleaned.append(True)

    with pytest.raises(SystemExit) as exc:
        run_command(killed, args=[])
    assert exc.value.code == 143 and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored afterwards


@pytest.mark.parametrize("signum, line, code", [("SIGINT", "aborted", 130), ("SIGTERM", "terminated", 143)])
def test_an_interrupted_resumable_command_says_a_rerun_resumes_it(capsys, tmp_path, signum, line, code):
    import signal

    from drgan.cli.common import resumes_on_rerun

    @click.command()
    @click.argument("out")
    def long_job(out) -> None:
        resumes_on_rerun(Path(out) / "fingerprint.json", "the images written are kept")
        os.makedirs(out, exist_ok=True)
        (Path(out) / "fingerprint.json").write_text("{}")  # the folder is claimed
        os.kill(os.getpid(), getattr(signal, signum))
        time.sleep(5)

    def interrupted(out) -> str:
        try:
            assert run_command(long_job, args=[str(out)]) == code
        except SystemExit as exc:
            assert exc.code == code
        return capsys.readouterr().err

    assert interrupted(tmp_path / "set").splitlines()[-1] == f"{line}; rerun the same command to resume (the images written are kept)"

    @click.command()
    def other() -> None:  # the hint belongs to the command that set it
        raise KeyboardInterrupt

    assert run_command(other, args=[]) == 130 and capsys.readouterr().err.splitlines()[-1] == "aborted"

    @click.command()
    def killed() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    with pytest.raises(SystemExit) as exc:
        run_command(killed, args=[])
    assert exc.value.code == 143 and capsys.readouterr().err.splitlines()[-1] == "terminated"


def test_an_interrupted_command_that_left_nothing_promises_nothing(capsys, tmp_path):
    from drgan.cli.common import resumes_on_rerun

    @click.command()
    def stopped_early() -> None:  # its output folder was never claimed, or removed as it was found
        resumes_on_rerun(tmp_path / "set" / "fingerprint.json", "the images written are kept")
        (tmp_path / "set").mkdir()
        raise KeyboardInterrupt

    assert run_command(stopped_early, args=[]) == 130 and capsys.readouterr().err.splitlines()[-1] == "aborted"


@pytest.mark.parametrize("signame, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupted_trainers_own_line_is_the_last_word(capsys, signame, code):
    """`aborted` (or `terminated`) followed the trainer's `interrupted: ...; continue with --resume`.
    Inside a job that its own rerun resumes (the demo) the trainer names no way on: the job does."""
    import signal

    from drgan.cli.common import resumes_on_rerun
    from drgan.training.interrupts import interrupted_line, resumed_by_rerun

    def stop() -> None:
        if signame == "SIGINT":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    def run(command: click.Command) -> str:
        try:
            assert run_command(command, args=[]) == code
        except SystemExit as exc:
            assert exc.code == code
        return [line for line in capsys.readouterr().err.splitlines() if line][-1]  # click ends a Ctrl-C's line

    @click.command()
    def trainer() -> None:
        print(interrupted_line(3, "runs/r", complete=False), file=sys.stderr)
        stop()

    assert run(trainer) == "interrupted: step 3 checkpointed in runs/r; continue with --resume"

    @click.command()
    @click.option("--complete", is_flag=True)
    def demo(complete: bool) -> None:  # a stage that finished its run as it was stopped: the job goes on
        resumes_on_rerun(__file__, "the stages done are kept")
        with resumed_by_rerun():
            print(interrupted_line(3, "runs/r", complete=complete), file=sys.stderr)
            stop()

    word = "aborted" if signame == "SIGINT" else "terminated"
    for complete in ([], ["--complete"]):
        try:
            assert run_command(demo, args=complete) == code
        except SystemExit as exc:
            assert exc.code == code
        err = capsys.readouterr().err
        assert [line for line in err.splitlines() if line][-1] == f"{word}; rerun the same command to resume (the stages done are kept)"
    assert run(trainer) == "interrupted: step 3 checkpointed in runs/r; continue with --resume"

    @click.command()
    def other() -> None:  # what the trainer said belongs to its own command
        stop()

    assert run(other) == word


def test_a_missing_path_or_a_file_for_a_folder_is_bad_input(drgan, tmp_path, data, blocked):
    """click.Path's own checks: one error line and exit 1, as the commands' own path checks give."""
    cases = [(("info", "--run", blocked), f"error: Invalid value for '--run' / '--checkpoint': Directory '{blocked}' is a file."),
             (("evaluate", "swd", "--real", tmp_path / "none", "--fake", data),
              f"error: Invalid value for '--real': Directory '{tmp_path / 'none'}' does not exist.")]
    for args, expected in cases:
        assert one_error(*drgan(*args)) == expected
    assert drgan("info", "--no-such-option")[0] == 2  # a usage error stays one
    # A path option or argument not given at all is a usage error too, though its type is click.Path.
    for args in (("export",), ("synthesize", "--count", "5", "--run", data), ("data", "import", "eyepacs"),
                 ("masks", "extract", "--out", tmp_path / "m")):
        rc, _out, err = drgan(*args)
        assert usage_error(rc, _out, err).startswith("error: Missing "), args
    # click's usage errors are one line too (it printed Usage:, Try ... and Error: lines), the parser's included.
    rc, out, err = drgan("train", "grader", "--out")
    assert (rc, out, err) == (2, "", "error: Option '--out' requires an argument. (see drgan train grader --help)\n")
    rc, out, err = drgan("synthesize", "--format", "gif")
    assert (rc, out, err) == (2, "", "error: Invalid value for '--format': 'gif' is not one of 'png', 'jpeg'. "
                                     "(see drgan synthesize --help)\n")


def test_sizes_and_counts_have_an_upper_bound(drgan, tmp_path, data):
    """Past these a command ran out of memory with a traceback or hung building its job list."""
    cases = [(("phantom", "--out", tmp_path / "p", "--size", "100000"), "error: --size 100000: outside the range 64<=x<=4096"),
             (("phantom", "--out", tmp_path / "p", "--size", "32"), "error: --size 32: outside the range 64<=x<=4096"),  # unreadable
             (("phantom", "--out", tmp_path / "p", "--count", "99999999999999999999"),
              "error: --count 99999999999999999999: outside 1..1000000"),
             (("data", "contact-sheet", data, "--out", tmp_path / "s.png", "--size", "100000"),
              "error: --size 100000: outside the range 8<=x<=1024"),
             (("evaluate", "swd", "--real", data, "--fake", data, "--resolution", "100000"),
              "error: --resolution 100000: outside the range 16<=x<=4096")]
    for args, expected in cases:
        assert one_error(*drgan(*args)) == expected
    assert not (tmp_path / "p").exists()


def test_json_outputs_are_json_alone_on_stdout(drgan, tmp_path, data, run):
    rc, out, _ = drgan("data", "validate", "--data", data, "--json")
    report = json.loads(out)
    assert rc == 0 and report["ok"] == report["checked"] == 10 and report["problems"] == [] and sum(report["grades"].values()) == 10
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    next(bad.glob("images/*.png")).write_bytes(b"not a png")
    rc, out, err = drgan("data", "validate", "--data", bad, "--skip-bad", "--json")  # its summary line went to stdout
    assert rc == 0 and json.loads(out)["ok"] == 9 and "usable samples remain" in err
    rc, out, err = drgan("export", "--run", run, "--out", tmp_path / "exp", "--json")
    assert rc == 0, err
    assert set(json.loads(out)["files"]) == {"generator.onnx"} and "generator.onnx" in err  # progress on stderr
    rc, out, err = drgan("train", "grader", "--data", data, "--out", tmp_path / "g", "--preset", "tiny-64", "--epochs", "1",
                         "--batch", "4", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["run"] == str(tmp_path / "g") and [e["epoch"] for e in result["epochs"]] == [1]


def test_every_device_option_refuses_a_bad_device_in_one_line(drgan, tmp_path, data, run):
    """export's --device went to torch.device unchecked: a traceback for 'auto' and for 'bogus'."""
    expected = "error: --device 'bogus': expected auto, cpu, cuda or cuda:N"
    for args in (("export", "--run", run, "--out", tmp_path / "e", "--aoti"),  # the device of the package only
                 ("synthesize", "--run", run, "--out", tmp_path / "s", "--count", "2"),
                 ("evaluate", "fidelity", "--real", data, "--fake", data, "--grader", run)):  # grading's only
        assert usage_error(*drgan(*args, "--device", "bogus")) == expected, args


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_rank_0_alone_prints_a_torchrun_jobs_summary(drgan, tmp_path, data, monkeypatch, rank, printed):
    import drgan.training.gan as gan

    report = {"stage": "global", "steps": 4, "run": str(tmp_path / "gan"), "log": [{"loss/G_total": 1.0}]}
    monkeypatch.setattr(gan, "train_gan", lambda opts, overwrite: report)
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc, out, err = drgan("train", "gan", "--data", data, "--grading-space", tmp_path / "space.safetensors",
                         "--out", tmp_path / "gan")
    assert rc == 0, err
    summary = f"gan global: 4 steps; checkpoint in {tmp_path / 'gan'}\nlosses: G_total 1.0000\n"
    assert out == (summary if printed else "")


def test_a_set_is_never_written_inside_its_run_or_structure_dataset(drgan, tmp_path, run, data):
    trained = shutil.copytree(run, tmp_path / "trained")  # a run that records the dataset it trained on
    config = json.loads((trained / "run.json").read_text())
    config["options"]["data"] = str(data)
    (trained / "run.json").write_text(json.dumps(config))
    for args, folder in ((["--run", run], run), (["--preset", "tiny-64", "--backend", "null", "--structures", data], data),
                         (["--run", trained], data)):
        inside = folder / "set"
        line = one_error(*drgan("synthesize", *args, "--out", inside, "--count", "5", "--device", "cpu"))
        assert line == f"error: {inside}: inside {folder}, a folder this command uses; write it elsewhere"
        assert not inside.exists()


def test_a_run_given_as_structures_is_named_a_run(drgan, tmp_path, run):
    line = one_error(*drgan("synthesize", "--preset", "tiny-64", "--backend", "null", "--structures", run,
                            "--out", tmp_path / "set", "--count", "5", "--device", "cpu"))
    assert line == f"error: --structures {run}: a drgan run folder; give the dataset whose vessel and disc masks to use"
    assert not (tmp_path / "set").exists()


def test_two_datasets_for_one_command_are_one_usage_line(drgan, tmp_path, data):
    rc, _, err = drgan("data", "validate", data, "--data", tmp_path)
    assert rc == 2 and err == f"error: two datasets given ({data} and --data {tmp_path}): give one\n"


def test_a_generator_backend_without_a_run_asks_for_the_run(drgan, tmp_path):
    rc, _, err = drgan("synthesize", "--out", tmp_path / "set", "--count", "5", "--backend", "onnxruntime")
    assert rc == 2 and err == "error: --run is required: the onnxruntime backend runs a trained generator\n"
    rc, _, err = drgan("synthesize", "--preset", "tiny-64", "--out", tmp_path / "set", "--count", "5")
    assert rc == 2 and err.startswith("error: --preset needs --backend null"), err
    rc, _, err = drgan("synthesize", "--preset", "tiny-64", "--backend", "null", "--label", "predicted",
                       "--out", tmp_path / "set", "--count", "5")
    assert rc == 2 and err.startswith("error: --label predicted needs the generator's encoder"), err


@pytest.mark.parametrize("trainer", ["gan", "grader"])
def test_a_new_training_run_interrupted_before_its_first_checkpoint_says_the_same_command_starts_it_again(
        drgan, tmp_path, data, monkeypatch, trainer):
    """It printed only `aborted` (or `terminated`): the trainer names no checkpoint, as there is none."""
    from drgan.training import gan, grader_pretraining

    space = tmp_path / "space.safetensors"
    GradingSpace(torch.zeros(5, 256), torch.ones(5, 256), 0.5).save(space)
    out = tmp_path / "run"
    checkpointed = []

    def interrupted(*args, **kwargs):
        if checkpointed:
            out.mkdir()
            (out / "state.json").write_text("{}")  # the trainer then names it to --resume
        raise KeyboardInterrupt

    monkeypatch.setattr(gan, "train_gan", interrupted)
    monkeypatch.setattr(grader_pretraining, "train_grader", interrupted)
    args = (["train", "gan", "--grading-space", space, "--perceptual", "none"] if trainer == "gan"
            else ["train", "grader", "--preset", "tiny-64"])
    rc, _, err = drgan(*args, "--data", data, "--out", out, "--device", "cpu")
    assert rc == 130 and err.splitlines()[-1] == "aborted; no step was checkpointed: rerun the same command to start the run again"
    checkpointed.append(True)
    rc, _, err = drgan(*args, "--data", data, "--out", out, "--device", "cpu")
    assert rc == 130 and err.splitlines()[-1] == "aborted"
