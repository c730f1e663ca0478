"""`drgan demo`'s stages and report, and `drgan train` / `drgan info` details no other test pins:
what each stage hands its trainer, when a stage is reused or resumed, the contact sheet's rows
and the report's checks, and what the train and info commands pass on and print."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drgan.config import COND_CHANNELS, NUM_GRADES
from drgan.data.dataset import FundusDataset
from drgan.data.phantom import write_phantom_dataset
from drgan.demo import DEMO_RECIPE, SCALES, _contact_sheet, _DemoRun, _MASK_COLOURS, _write_report, render_conditions, run_demo
from helpers import one_error

QUICK = SCALES["quick"]


def _demo(out: Path, device: str = "cpu") -> _DemoRun:
    return _DemoRun(out, QUICK, device, lambda *_: None)


# --- drgan demo ----------------------------------------------------------------------------------

def test_demo_command_hands_its_options_to_run_demo(drgan, tmp_path, monkeypatch):
    """--out, --device and --quick reach run_demo as given, with click's echo as the log."""
    import click

    import drgan.demo as demo_module

    calls = []
    monkeypatch.setattr(demo_module, "run_demo", lambda out, **kw: calls.append((out, kw)))
    rc, _, err = drgan("demo", "--out", tmp_path / "d", "--device", "cpu", "--quick")
    assert rc == 0, err
    assert calls == [(str(tmp_path / "d"), {"device": "cpu", "quick": True, "log": click.echo})]


@pytest.mark.parametrize("device, quick, scale", [("cpu", False, "cpu"), ("cuda", False, "cuda"), ("cuda", True, "quick")])
def test_demo_scale_follows_the_device_and_quick(tmp_path, monkeypatch, device, quick, scale):
    """The folder's demo.json records the scale the stages run at: the CPU one, the GPU one, or --quick's."""
    import drgan.demo as demo_module

    monkeypatch.setattr(demo_module, "resolve_device", lambda name: torch.device(name))
    ran = []
    monkeypatch.setattr(_DemoRun, "stage", lambda self, name, fn: ran.append((name, self.scale, self.device)))
    monkeypatch.setattr(_DemoRun, "write_report", lambda self: self.out / "report.md")
    assert run_demo(tmp_path / "d", device=device, quick=quick, log=lambda *_: None) == tmp_path / "d" / "report.md"
    assert json.loads((tmp_path / "d" / "demo.json").read_text()) == dataclasses.asdict(SCALES[scale])
    assert [name for name, *_ in ran] == ["phantom dataset", "grader + grading spaces", "GAN global stage", "GAN local stage",
                                          "synthesis", "condition fidelity"]
    assert {(s, d) for _, s, d in ran} == {(SCALES[scale], device)}


def test_a_trainer_interrupted_inside_the_demo_leaves_how_to_go_on_to_the_demo(tmp_path, monkeypatch):
    """Inside run_demo a trainer's interrupt line names its checkpoint only (rerunning the demo resumes
    it); outside, it says to continue with --resume."""
    from drgan.training.interrupts import interrupted_line

    lines = []
    monkeypatch.setattr(_DemoRun, "stage", lambda self, name, fn: lines.append(interrupted_line(5, "R", False)))
    monkeypatch.setattr(_DemoRun, "write_report", lambda self: self.out / "report.md")
    run_demo(tmp_path / "d", device="cpu", quick=True, log=lambda *_: None)
    assert set(lines) == {"interrupted: step 5 checkpointed in R"}
    assert interrupted_line(5, "R", False) == "interrupted: step 5 checkpointed in R; continue with --resume"


def test_a_reused_stage_keeps_its_first_result_however_often_it_is_rerun(tmp_path):
    """A stage is timed; once finished it is not run again, and its result reads the same on every
    rerun, marked reused once."""
    import time

    first = _demo(tmp_path)
    first.stage("synthesis", lambda: time.sleep(0.05) or "10 images")
    (name, seconds, detail), = first.timings
    assert (name, detail) == ("synthesis", "10 images") and 0.05 <= seconds < 5

    def again():
        raise AssertionError("a finished stage ran again")

    for _ in range(2):
        rerun = _demo(tmp_path)
        rerun.stage("synthesis", again)
        assert rerun.timings[0][2] == "10 images (reused)"


def test_demo_gan_stages_use_the_demo_recipe_and_the_global_stage_for_the_local_one(tmp_path, monkeypatch):
    """Each GAN stage trains with DEMO_RECIPE at the scale's preset and batch, capped at its steps; the
    local stage starts from the global run; the detail names the last logged losses."""
    from drgan.training import gan

    seen = []
    report = {"steps": 3, "log": [{"loss/G_total": 9.0, "loss/D_total": 9.0}, {"loss/G_total": 1.25, "loss/D_total": 0.5}]}
    monkeypatch.setattr(gan, "train_gan", lambda opts, overwrite=False: seen.append((opts, overwrite)) or report)
    demo = _demo(tmp_path)
    assert demo.gan("global", 3, demo.global_run, None) == "3 steps (G_total 1.250, D_total 0.500)"
    assert demo.gan("local", 3, demo.local_run, demo.global_run) == "3 steps (G_total 1.250, D_total 0.500)"
    (first, overwrite), (second, _) = seen
    assert overwrite is True
    for opts, stage, run in ((first, "global", demo.global_run), (second, "local", demo.local_run)):
        assert (opts.stage, opts.out, opts.data) == (stage, str(run), str(demo.data))
        assert (opts.preset, opts.batch, opts.max_steps, opts.precision) == (QUICK.preset, QUICK.gan_batch, 3, "fp32")
        assert {k: getattr(opts, k) for k in DEMO_RECIPE} == DEMO_RECIPE
    assert (first.init, second.init) == (None, str(demo.global_run))


def test_demo_gan_stage_resumes_a_cut_run_and_starts_a_finished_unmarked_one_over(tmp_path, monkeypatch):
    """A run whose state.json is short of the stage's steps goes on from it; one that reached them
    (killed before the stage was marked done) is trained again from the start."""
    from drgan.training import gan, options

    calls = []
    monkeypatch.setattr(gan, "train_gan", lambda opts, overwrite=False: calls.append((opts, overwrite)) or {"steps": 3, "log": []})
    monkeypatch.setattr(options, "resume_options", lambda run: f"resume {run}")
    demo = _demo(tmp_path)
    demo.global_run.mkdir(parents=True)
    (demo.global_run / "state.json").write_text(json.dumps({"step": 2}))
    assert demo.gan("global", 3, demo.global_run, None) == "3 steps"
    assert calls.pop() == (f"resume {demo.global_run}", False)
    (demo.global_run / "state.json").write_text(json.dumps({"step": 3}))
    demo.gan("global", 3, demo.global_run, None)
    opts, overwrite = calls.pop()
    assert overwrite is True and opts.max_steps == 3


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("demo") / "data", count=20, size=64, seed=0)


def test_demo_grader_stage_resumes_an_interrupted_grader_and_validates_on_the_val_split(tmp_path, phantoms, monkeypatch):
    """A grader run with a checkpoint goes on (no overwrite); a fresh one starts over. It trains on the
    augmented train split, validates on the val split, records the dataset, and reports the last epoch."""
    from drgan.training import grader_pretraining

    calls = []

    def fake(train, val, run, opts, overwrite=False, resume=False, data=None):
        calls.append(dict(train=train, val=val, run=run, opts=opts, overwrite=overwrite, resume=resume, data=data))
        return {"epochs": [{"val": {"accuracy": 0.1, "kappa": 0.1}}, {"val": {"accuracy": 0.5, "kappa": None}}]}

    monkeypatch.setattr(grader_pretraining, "train_grader", fake)
    demo = _demo(tmp_path)
    demo.data = phantoms
    assert demo.grader() == "val accuracy 0.50, kappa n/a"
    (demo.grader_run / "checkpoint.next").mkdir(parents=True)  # a checkpoint committed by a killed grader
    demo.grader()
    fresh, cut = calls
    assert (fresh["overwrite"], fresh["resume"], cut["overwrite"], cut["resume"]) == (True, False, False, True)
    assert fresh["run"] == demo.grader_run and fresh["data"] == phantoms
    assert fresh["train"].augment and not fresh["val"].augment
    assert fresh["train"].ids == FundusDataset(phantoms, 64, split="train").ids
    assert fresh["val"].ids == FundusDataset(phantoms, 64, split="val").ids
    opts = fresh["opts"]
    assert (opts.preset, opts.epochs, opts.batch, opts.device) == (QUICK.preset, QUICK.grader_epochs, QUICK.grader_batch, "cpu")


# --- contact sheet and report --------------------------------------------------------------------

def test_conditions_are_drawn_in_each_channels_colour_on_black():
    masks = np.zeros((len(COND_CHANNELS), 4, len(COND_CHANNELS)), np.uint8)
    for k in range(len(COND_CHANNELS)):
        masks[k, :2, k] = 255
    picture = render_conditions(masks)
    assert picture.shape == (4, len(COND_CHANNELS), 3) and picture.dtype == np.uint8
    assert [tuple(picture[0, k]) for k in range(len(COND_CHANNELS))] == [_MASK_COLOURS[c] for c in COND_CHANNELS]
    assert not picture[2:].any()


def _synthetic_set(root: Path, per_grade: list[int]) -> Path:
    """A synthesized set's manifest, images and masks: per_grade[g] items of grade g, item i's image all value i."""
    (root / "images").mkdir(parents=True)
    rows, i = [], 0
    for grade, n in enumerate(per_grade):
        for _ in range(n):
            item = f"s{i:07d}"
            Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(root / "images" / f"{item}.png")
            (root / "masks" / item).mkdir(parents=True)
            for c, name in enumerate(COND_CHANNELS):
                Image.fromarray(np.full((8, 8), 255 if c == i % len(COND_CHANNELS) else 0, np.uint8)).save(root / "masks" / item / f"{name}.png")
            rows.append({"id": item, "file": f"images/{item}.png", "grade": grade})
            i += 1
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "file", "grade"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_contact_sheet_rows_are_grades_of_at_most_four_condition_image_pairs(tmp_path):
    """One row per grade, labelled with it: the conditions, then the image, of its first four items (eight tiles)."""
    synth = _synthetic_set(tmp_path / "set", [10, 0, 1, 0, 0])
    saved = []
    _contact_sheet(synth, tmp_path / "sheet.png", lambda tiles, path, labels: saved.append((tiles, path, labels)))
    [(tiles, path, labels)] = saved
    assert path == tmp_path / "sheet.png" and labels == [f"grade {g}" for g in range(NUM_GRADES)]
    assert [len(row) for row in tiles] == [8, 0, 2, 0, 0]
    conditions, image = tiles[2]
    assert (image == 10).all()  # the grade-2 item, the eleventh
    assert np.array_equal(conditions, np.broadcast_to(_MASK_COLOURS[COND_CHANNELS[10 % len(COND_CHANNELS)]], (8, 8, 3)))
    assert [int(tile[0, 0, 0]) for tile in tiles[0][1::2]] == list(range(4))  # the first four of grade 0, in order


def _report(tmp_path: Path, fidelity: dict) -> list[str]:
    timings = [("phantom dataset", 1.3, "50 phantoms"), ("synthesis", 2.5, "10 images")]
    _write_report(tmp_path / "report.md", QUICK, "cpu", timings, tmp_path / "contact_sheet.png", fidelity, "FIDELITY TABLE")
    return (tmp_path / "report.md").read_text().splitlines()


def test_report_marks_each_target_met_at_its_threshold_and_not_below(tmp_path):
    lines = _report(tmp_path, {"fraction_of_reference": {"vessel": 0.8, "ma": 0.79},
                               "grading": {"kappa": 0.6, "accuracy": 0.39}})
    assert "| vessel fidelity >= 80% of the real phantoms' above chance | 0.80 | yes |" in lines
    assert "| ma fidelity >= 80% of the real phantoms' above chance | 0.79 | no |" in lines
    assert "| grader kappa on the synthesized set >= 0.6 | 0.60 | yes |" in lines
    assert "| grader accuracy on the synthesized set >= 0.4 | 0.39 | no |" in lines
    assert "| phantom dataset | 1.3 | 50 phantoms |" in lines
    assert "| total | 3.8 | |" in lines and lines[-1] == "FIDELITY TABLE"


def test_report_of_an_undefined_kappa_meets_no_target(tmp_path):
    """A kappa of None (all one grade) reads n/a and is not met; accuracy at its threshold is."""
    lines = _report(tmp_path, {"fraction_of_reference": {}, "grading": {"kappa": None, "accuracy": 0.4}})
    assert "| grader kappa on the synthesized set >= 0.6 | n/a | no |" in lines
    assert "| grader accuracy on the synthesized set >= 0.4 | 0.40 | yes |" in lines


def test_a_bad_demo_device_is_a_usage_error_before_the_output_folder_is_looked_at(drgan, tmp_path):
    (tmp_path / "file").write_text("")
    rc, out, err = drgan("demo", "--out", tmp_path / "file" / "demo", "--device", "bogus")
    assert (rc, out, err) == (2, "", "error: --device 'bogus': expected auto, cpu, cuda or cuda:N\n")


def test_an_interrupted_demo_says_a_rerun_resumes_it_once_a_stage_is_done(drgan, tmp_path, monkeypatch):
    """Ctrl-C before the first stage is done says `aborted` alone; after it, that the same command resumes."""
    import drgan.demo as demo_module
    from drgan.demo import FIRST_STAGE, done_file

    out = tmp_path / "d"

    def interrupted(folder, **kw):
        if marked:
            Path(folder).mkdir()
            done_file(Path(folder), FIRST_STAGE, 0).write_text("50 phantoms")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_module, "run_demo", interrupted)
    marked = False
    rc, _, err = drgan("demo", "--out", out, "--quick", "--device", "cpu")
    assert rc == 130 and err.splitlines()[-1] == "aborted"
    marked = True
    rc, _, err = drgan("demo", "--out", out, "--quick", "--device", "cpu")
    assert rc == 130 and err.splitlines()[-1] == "aborted; rerun the same command to resume (finished stages are reused)"


# --- drgan train ---------------------------------------------------------------------------------

def test_grader_command_hands_the_trainer_the_presets_resolution_the_splits_and_the_dataset(drgan, tmp_path, phantoms, monkeypatch):
    """The train split augmented and the val split at the preset's resolution; --overwrite and the
    dataset folder passed on; the summary line and the JSON name the run, accuracy and grading spaces."""
    from drgan.training import grader_pretraining

    calls = []

    def fake(train, val, out, opts, **kw):
        calls.append((train, val, out, opts, kw))
        return {"val_accuracy": 0.25, "grading_space": "spaces.safetensors", "epochs": []}

    monkeypatch.setattr(grader_pretraining, "train_grader", fake)
    run = tmp_path / "g"
    args = ("train", "grader", "--data", phantoms, "--out", run, "--preset", "tiny-128", "--overwrite")
    assert drgan(*args) == (0, "grader: validation accuracy 0.250; grading spaces in spaces.safetensors\n", "")
    rc, out, _ = drgan(*args, "--json")
    assert rc == 0 and json.loads(out) == {"run": str(run), "val_accuracy": 0.25, "grading_space": "spaces.safetensors", "epochs": []}
    train, val, out_given, opts, kw = calls[0]
    assert (out_given, opts.preset, kw) == (str(run), "tiny-128", {"overwrite": True, "resume": False, "data": str(phantoms)})
    assert (train.resolution, val.resolution, train.augment, val.augment) == (128, 128, True, False)
    assert (train.ids, val.ids) == (FundusDataset(phantoms, 64, split="train").ids, FundusDataset(phantoms, 64, split="val").ids)


def test_grader_command_checks_out_before_it_reads_the_dataset(drgan, tmp_path):
    """An --out that can take no grader run is named even when --data is no dataset either."""
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep me")
    (tmp_path / "empty").mkdir()
    line = one_error(*drgan("train", "grader", "--data", tmp_path / "empty", "--out", out, "--preset", "tiny-64"))
    assert line.startswith(f"error: --out {out}: "), line
    assert (out / "todo.txt").read_text() == "keep me"


def test_gan_command_passes_init_compile_and_overwrite_on_and_prints_the_last_losses(drgan, tmp_path, monkeypatch):
    """The last log entry's losses, rounded and without their `loss/` prefix; other logged values are left out."""
    from drgan.training import gan

    calls = []
    log = [{"loss/G_total": 9.0, "lr": 0.1}, {"loss/G_total": 1.234567, "loss/D_total": 0.5, "lr": 0.1}]
    monkeypatch.setattr(gan, "train_gan", lambda opts, overwrite: calls.append((opts, overwrite)) or
                        {"stage": "local", "steps": 7, "run": "R", "log": log})
    args = ("train", "gan", "--grading-space", tmp_path / "space.safetensors", "--out", tmp_path / "run", "--stage", "local",
            "--init", tmp_path / "global", "--compile", "--overwrite", "--perceptual", "none")
    assert drgan(*args) == (0, "gan local: 7 steps; checkpoint in R\nlosses: G_total 1.2346, D_total 0.5000\n", "")
    rc, out, _ = drgan(*args, "--json")
    assert rc == 0 and json.loads(out) == {"stage": "local", "steps": 7, "run": "R", "losses": {"G_total": 1.2346, "D_total": 0.5}}
    opts, overwrite = calls[0]
    assert overwrite is True and opts.init == str(tmp_path / "global") and opts.compile is True
    log.clear()
    assert drgan(*args) == (0, "gan local: 7 steps; checkpoint in R\n", "")


@pytest.fixture(scope="module")
def grader_run(tmp_path_factory, phantoms) -> Path:
    """A finished grader run trained from Python at 32 px (not its preset's 64) on `phantoms`."""
    from drgan.training.grader_pretraining import GraderOptions, train_grader

    run = tmp_path_factory.mktemp("grader") / "g"
    train_grader(FundusDataset(phantoms, 32, split="train"), FundusDataset(phantoms, 32, split="val"), run,
                 GraderOptions(preset="tiny-64", epochs=1, batch=4), data=phantoms)
    return run


@pytest.fixture
def grader_calls(monkeypatch) -> list:
    """train_grader's calls from the command line, each (train, val, out, opts, keywords); it trains nothing."""
    from drgan.training import grader_pretraining

    calls = []

    def fake(train, val, out, opts, **kw):
        calls.append((train, val, out, opts, kw))
        return {"val_accuracy": 0.5, "grading_space": "spaces", "epochs": []}

    monkeypatch.setattr(grader_pretraining, "train_grader", fake)
    return calls


def test_grader_resume_trains_at_the_runs_resolution_on_its_dataset_given_by_any_path(drgan, grader_run, phantoms,
                                                                                     grader_calls, monkeypatch):
    """--out and --data naming the run's own folders by relative paths are accepted; the run goes on
    in its folder at the resolution it recorded, on the dataset it recorded, with the new --epochs."""
    monkeypatch.chdir(grader_run.parent)
    rc, _, err = drgan("train", "grader", "--resume", grader_run, "--out", grader_run.name,
                       "--data", os.path.relpath(phantoms), "--epochs", "2")
    assert rc == 0, err
    [(train, val, out, opts, kw)] = grader_calls
    assert out == str(grader_run) and kw == {"overwrite": False, "resume": True, "data": str(phantoms.resolve())}
    assert (train.resolution, val.resolution, opts.epochs, opts.batch) == (32, 32, 2, 4)


def test_grader_resume_names_a_dataset_that_is_gone_or_unrecorded(drgan, tmp_path, grader_run, grader_calls):
    run = shutil.copytree(grader_run, tmp_path / "g")
    config = json.loads((run / "run.json").read_text())
    config["data"] = str(tmp_path / "moved")
    (run / "run.json").write_text(json.dumps(config))
    line = one_error(*drgan("train", "grader", "--resume", run, "--epochs", "2"))
    assert line == f"error: {tmp_path / 'moved' / 'labels.csv'}: the dataset of {run} is gone; put it back at {tmp_path / 'moved'} to resume"
    del config["data"]
    (run / "run.json").write_text(json.dumps(config))
    line = one_error(*drgan("train", "grader", "--resume", run, "--epochs", "2"))
    assert line.startswith(f"error: {run}: its run.json names no dataset folder")
    assert grader_calls == []


@pytest.mark.parametrize("trainer", ["grader", "gan"])
def test_resume_with_overwrite_is_refused_before_the_run_is_read(drgan, tmp_path, trainer):
    """--overwrite beside --resume is a usage error, not a resume that drops --overwrite unsaid."""
    rc, out, err = drgan("train", trainer, "--resume", tmp_path / "missing", "--overwrite")
    assert (rc, out, err) == (2, "", "error: --overwrite starts a run over; --resume continues one: give one of them\n")


# --- drgan info ----------------------------------------------------------------------------------

def test_info_without_a_run_describes_the_paper_preset_unless_told(drgan):
    rc, out, _ = drgan("info", "--json")
    report = json.loads(out)
    assert rc == 0 and (report["name"], report["stage"], report["resolution"]) == ("paper-1280", "local", 1280)
    rc, out, _ = drgan("info", "--preset", "tiny-64", "--stage", "global", "--json")
    report = json.loads(out)
    assert rc == 0 and (report["name"], report["stage"], report["resolution"]) == ("tiny-64", "global", 32)


def test_info_of_a_global_run_describes_its_stage_and_options(drgan, tmp_path):
    from drgan.config import preset
    from drgan.runs import write_run_config

    run = tmp_path / "run"
    write_run_config(run, preset("tiny-64"), "global", {"trainer": "gan", "lr": 0.001, "batch": 2})
    rc, out, _ = drgan("info", "--run", run, "--json")
    report = json.loads(out)
    assert rc == 0 and (report["stage"], report["resolution"]) == ("global", 32)
    assert report["options"] == {"trainer": "gan", "lr": 0.001, "batch": 2}
    rc, out, _ = drgan("info", "--run", run)
    assert rc == 0 and out.endswith("\n\ntrainer            gan\nstage              global\nlr                 0.001\nbatch              2\n")


def test_info_of_a_grader_run_lists_its_training_options(drgan, grader_run):
    rc, out, _ = drgan("info", "--run", grader_run)
    assert rc == 0 and "\n\ntrainer            grader\npreset             tiny-64\n" in out


def test_demo_fidelity_stage_scores_the_set_against_the_unseen_test_split(tmp_path, monkeypatch):
    """The reference is the phantoms' test split (neither the grader nor the GAN trained on it), graded
    by the demo's grader at the preset's resolution; both reports are written beside the demo's."""
    from drgan.config import preset
    from drgan.metrics import fidelity

    calls = []

    def fake(synth, **kw):
        calls.append((synth, kw))
        return {"fraction_of_reference": {"vessel": 0.9}, "grading": {"kappa": 0.7, "accuracy": 0.5}}, "TABLE"

    monkeypatch.setattr(fidelity, "evaluate_fidelity", fake)
    demo = _demo(tmp_path)
    assert demo.fidelity() == "vessel 0.90 of the real phantoms' fidelity; grader kappa 0.70, accuracy 0.50"
    [(synth, kw)] = calls
    assert synth == demo.synth and kw == {"reference": demo.data, "reference_split": "test", "grader_run": demo.grader_run,
                                          "resolution": preset(QUICK.preset).resolution, "device": "cpu"}
    assert json.loads((tmp_path / "fidelity.json").read_text())["grading"]["kappa"] == 0.7
    assert (tmp_path / "fidelity.md").read_text() == "TABLE"


def test_demo_gan_stage_logs_samples_and_checkpoints_at_fractions_of_its_steps(tmp_path, monkeypatch):
    """Twenty log entries, four sample grids and two checkpoints per stage: a killed stage loses at most half."""
    from drgan.training import gan

    seen = []
    monkeypatch.setattr(gan, "train_gan", lambda opts, overwrite=False: seen.append(opts) or {"steps": 40, "log": []})
    demo = _demo(tmp_path)
    demo.gan("global", 40, demo.global_run, None)
    assert (seen[0].log_every, seen[0].sample_every, seen[0].checkpoint_every) == (2, 10, 20)
