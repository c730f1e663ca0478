"""Grader pretraining and grading spaces at tiny-64, the grader perceptual loss, and the train CLI."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from drgan.runs import read_run
from drgan.config import preset
from drgan.data.dataset import FundusDataset
from drgan.data.phantom import write_phantom_dataset
from drgan.errors import DrganError
from drgan.grading_space import GradingSpace
from drgan.nn import build_grader
from drgan.training.gan import train_gan
from drgan.training.grader_pretraining import GraderOptions, train_grader
from drgan.training.options import GanOptions
from training_fixtures import PhantomSet

CFG = preset("tiny-64")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), count=50, size=64, seed=0)


def _mixup(images, grades, generator):
    """Soft targets: blend each sample with the next one (a MixUp of fixed weight)."""
    targets = torch.nn.functional.one_hot(grades, 5).float()
    return 0.7 * images + 0.3 * images.roll(1, 0), 0.7 * targets + 0.3 * targets.roll(1, 0)


def _random_mixup(images, grades, generator):
    """A MixUp whose partners and weight come from the transform's generator."""
    targets = torch.nn.functional.one_hot(grades, 5).float()
    partner, lam = torch.randperm(len(grades), generator=generator), torch.rand((), generator=generator)
    return lam * images + (1 - lam) * images[partner], lam * targets + (1 - lam) * targets[partner]


def test_grader_epochs_metrics_and_grading_space(tmp_path, phantom_dir, capsys):
    train = FundusDataset(phantom_dir, 64, split="train", augment=True)
    val = FundusDataset(phantom_dir, 64, split="val")
    opts = GraderOptions(preset="tiny-64", epochs=2, batch=8, balanced=True)
    report = train_grader(train, val, tmp_path / "grader", opts, batch_transform=_mixup)
    assert [e["epoch"] for e in report["epochs"]] == [1, 2]
    for e in report["epochs"]:
        assert np.isfinite(e["train_loss"]) and 0 <= e["val"]["accuracy"] <= 1
        assert len(e["val"]["tpr"]) == 5 and "kappa" in e["val"]
    space = GradingSpace.load(tmp_path / "grader" / "grading_space.safetensors")
    assert space.mean.shape == space.var.shape == (5, CFG.z_dim)
    assert torch.isfinite(space.mean).all() and (space.var >= 0).all()
    assert space.grader_accuracy == pytest.approx(report["val_accuracy"], abs=1e-6)
    info = read_run(tmp_path / "grader")
    cfg, options = info.cfg, info.options
    assert cfg == CFG and options["trainer"] == "grader" and options["balanced"] is True
    assert read_run(tmp_path / "grader").extra["resolution"] == 64  # what load_grader resizes to
    # Two epochs on 40 phantoms cannot reach the 80% the grading spaces need: one warning line.
    assert report["val_accuracy"] < 0.8
    err = capsys.readouterr().err
    assert err.count("warning: grader validation accuracy") == 1
    last = report["epochs"][-1]["val"]["tpr"]
    assert "TPR by grade " + " ".join("-" if t is None else f"{t:.2f}" for t in last) in err  # each epoch's line


class _OneGrade(FundusDataset):
    """Every training image labelled grade 0."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.grades = [0] * len(self.grades)


def test_grades_without_training_images_are_named_in_a_warning(tmp_path, phantom_dir, capsys):
    """A one-grade training split fits the other grades' spaces on the statistics of all grades:
    the report and stderr say which grades, and how many images they had."""
    report = train_grader(_OneGrade(phantom_dir, 64, split="train"), FundusDataset(phantom_dir, 64, split="val"),
                          tmp_path / "g", GraderOptions(preset="tiny-64", epochs=1, batch=8))
    expected = "grade(s) 1, 2, 3, 4 had fewer than 2 training images (0, 0, 0, 0)"
    assert any(w.startswith(expected) for w in report["warnings"])
    assert f"warning: {expected}" in capsys.readouterr().err


def test_grading_spaces_fit_on_unaugmented_training_images(tmp_path, phantom_dir):
    from drgan.metrics.grade_prediction import load_grader
    from drgan.training.grader_pretraining import grader_features

    train = FundusDataset(phantom_dir, 64, split="train", augment=True)
    train_grader(train, FundusDataset(phantom_dir, 64, split="val"), tmp_path / "g", GraderOptions(preset="tiny-64", epochs=1, batch=8))
    assert train.augment  # the caller's dataset is left as it was
    grader, _ = load_grader(tmp_path / "g")
    plain = FundusDataset(phantom_dir, 64, split="train")
    _, features, grades = grader_features(grader, plain, 8, torch.device("cpu"))
    expected = GradingSpace.fit(features, grades, 5, 0.0)
    space = GradingSpace.load(tmp_path / "g" / "grading_space.safetensors")
    torch.testing.assert_close(space.mean, expected.mean)
    torch.testing.assert_close(space.var, expected.var)


def test_diverged_grader_writes_no_grading_space(tmp_path, phantom_dir):
    """One step at a huge learning rate: a finite loss, NaN weights after it. No NaN grading space is
    written (a GAN conditioned on it draws NaN grading vectors); the new run folder is removed."""
    train, val = FundusDataset(phantom_dir, 64, split="train"), FundusDataset(phantom_dir, 64, split="val")
    with pytest.raises(DrganError, match=r"^grader: its weights are NaN or infinite by step \d+ \(it diverged\); nothing saved"):
        train_grader(train, val, tmp_path / "g", GraderOptions(preset="tiny-64", epochs=1, batch=64, lr=1e308))
    assert not (tmp_path / "g").exists()


def test_gan_with_grader_perceptual_loss(tmp_path, phantom_dir):
    train = FundusDataset(phantom_dir, 64, split="train")
    train_grader(train, FundusDataset(phantom_dir, 64, split="val"), tmp_path / "grader", GraderOptions(preset="tiny-64", epochs=1, batch=8))
    opts = GanOptions(out=str(tmp_path / "gan"), grading_space=str(tmp_path / "grader" / "grading_space.safetensors"),
                      preset="tiny-64", perceptual="grader", batch=2, max_steps=1, log_every=1)
    report = train_gan(opts, PhantomSet(4))
    assert report["log"][-1]["loss/G_perceptual"] > 0


def test_cli_trains_grader_then_gan_and_resumes(tmp_path, phantom_dir):
    from drgan.cli.train import train

    runner = CliRunner()
    res = runner.invoke(train, ["grader", "--data", str(phantom_dir), "--out", str(tmp_path / "g"), "--preset", "tiny-64", "--epochs", "1", "--batch", "8"])
    assert res.exit_code == 0, res.output
    gan_args = ["gan", "--data", str(phantom_dir), "--grading-space", str(tmp_path / "g" / "grading_space.safetensors"),
                "--out", str(tmp_path / "run"), "--preset", "tiny-64", "--batch", "4", "--max-steps", "1", "--perceptual", "none",
                "--no-channels-last", "--log-every", "1"]
    res = runner.invoke(train, gan_args)
    assert res.exit_code == 0, res.output
    res = runner.invoke(train, ["gan", "--resume", str(tmp_path / "run"), "--max-steps", "2"])
    assert res.exit_code == 0, res.output
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["step"] == 2
    options = read_run(tmp_path / "run").options
    assert options["channels_last"] is False and options["batch"] == 4


class _FailsInEpoch(FundusDataset):
    """Raises in the given epoch (0-based), as a killed process would stop there."""

    fail_epoch = 1

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.failing = epoch == self.fail_epoch

    def __getitem__(self, i: int) -> dict:
        if getattr(self, "failing", False):
            raise KeyboardInterrupt
        return super().__getitem__(i)


def _assert_resumes_to(run, whole_run, whole: dict, train, val, opts, transform) -> None:
    """Resuming `run` gives the per-epoch reports, weights and grading spaces of `whole_run`."""
    from drgan.checkpoint import load_tensors

    resumed = train_grader(train, val, run, opts, batch_transform=transform, resume=True)
    assert resumed["epochs"] == whole["epochs"]
    for name in ("grader.safetensors", "grading_space.safetensors"):
        a, b = load_tensors(whole_run / name), load_tensors(run / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_killed_grader_resumes_to_the_uninterrupted_result(tmp_path, phantom_dir):
    """A run stopped in epoch 2 keeps its folder with epoch 1's checkpoint; resuming it gives the
    weights, reports and grading spaces of a run that was never stopped."""
    val = FundusDataset(phantom_dir, 64, split="val")
    opts = GraderOptions(preset="tiny-64", epochs=3, batch=8, balanced=True)
    whole = train_grader(FundusDataset(phantom_dir, 64, split="train", augment=True), val, tmp_path / "whole", opts,
                         batch_transform=_mixup)
    with pytest.raises(KeyboardInterrupt):
        train_grader(_FailsInEpoch(phantom_dir, 64, split="train", augment=True), val, tmp_path / "cut", opts,
                     batch_transform=_mixup)
    assert json.loads((tmp_path / "cut" / "state.json").read_text())["epoch"] == 1
    assert not (tmp_path / "cut" / "grader.safetensors").exists()  # nothing that looks like a finished grader
    _assert_resumes_to(tmp_path / "cut", tmp_path / "whole", whole, FundusDataset(phantom_dir, 64, split="train", augment=True),
                       val, opts, _mixup)
    with pytest.raises(DrganError, match="already trained 3 of 3 epochs; give a larger epochs"):
        train_grader(FundusDataset(phantom_dir, 64, split="train"), val, tmp_path / "cut", opts, resume=True)
    meta = json.loads((tmp_path / "cut" / "state.json").read_text())
    (tmp_path / "cut" / "state.json").write_text(json.dumps({**meta, "report": None, "rng": {}}))  # hand-damaged
    with pytest.raises(DrganError, match=r"state.json: damaged training state \(missing or invalid: report\)"):
        train_grader(FundusDataset(phantom_dir, 64, split="train"), val, tmp_path / "cut", opts, resume=True)


class _FailsAtItem(FundusDataset):
    """Raises at the given read of epoch 1, as a process killed inside the epoch would stop there."""

    fail_at = 20
    reads = None

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.reads = 0 if epoch == 1 else None

    def __getitem__(self, i: int) -> dict:
        if self.reads is not None:
            self.reads += 1
            if self.reads > self.fail_at:
                raise KeyboardInterrupt
        return super().__getitem__(i)


def test_grader_killed_inside_an_epoch_resumes_from_its_batch(tmp_path, phantom_dir):
    """With a checkpoint every step, a run killed in its third batch of epoch 2 resumes after the
    second (not from epoch 1's end) and ends as a run never stopped: the batches it trained are
    not read again, and the batch transform continues its random stream."""
    val = FundusDataset(phantom_dir, 64, split="val")
    opts = GraderOptions(preset="tiny-64", epochs=2, batch=8, balanced=True, checkpoint_every=1)
    whole = train_grader(FundusDataset(phantom_dir, 64, split="train", augment=True), val, tmp_path / "whole", opts,
                         batch_transform=_random_mixup)
    with pytest.raises(KeyboardInterrupt):
        train_grader(_FailsAtItem(phantom_dir, 64, split="train", augment=True), val, tmp_path / "cut", opts,
                     batch_transform=_random_mixup)
    state = json.loads((tmp_path / "cut" / "state.json").read_text())
    per_epoch = state["step"] - state["position"]["batches"]  # batches in an epoch
    assert state["epoch"] == 1 and state["position"]["batches"] == 2 and per_epoch >= 3
    resumed_reads = _FailsAtItem(phantom_dir, 64, split="train", augment=True)
    resumed_reads.fail_at = 10 ** 6
    _assert_resumes_to(tmp_path / "cut", tmp_path / "whole", whole, resumed_reads, val,
                       GraderOptions(**{**opts.to_dict(), "checkpoint_every": 50}), _random_mixup)
    assert resumed_reads.reads == (per_epoch - 2) * opts.batch  # from the third batch on


@pytest.mark.parametrize("where", ["step", "validation"])
def test_interrupted_grader_checkpoints_its_last_step(tmp_path, phantom_dir, monkeypatch, where):
    """Ctrl-C inside the second step of epoch 2 (held until the step ends), or during epoch 2's
    validation: the run checkpoints the last whole step, and its resume ends as a run never stopped."""
    import signal

    from drgan.training import grader_pretraining

    val = FundusDataset(phantom_dir, 64, split="val")
    opts = GraderOptions(preset="tiny-64", epochs=2, batch=8, balanced=True)
    whole = train_grader(FundusDataset(phantom_dir, 64, split="train", augment=True), val, tmp_path / "whole", opts,
                         batch_transform=_random_mixup)
    calls = []

    def transform(images, grades, generator):
        calls.append(1)
        if where == "step" and len(calls) == 7:  # epoch 2 (5 batches an epoch), its second step
            os.kill(os.getpid(), signal.SIGINT)
        return _random_mixup(images, grades, generator)

    validate = grader_pretraining._validate

    def interrupted_validation(*args):
        if len(calls) == 10:
            raise KeyboardInterrupt
        return validate(*args)

    monkeypatch.setattr(grader_pretraining, "_validate", interrupted_validation)
    with pytest.raises(KeyboardInterrupt):
        train_grader(FundusDataset(phantom_dir, 64, split="train", augment=True), val, tmp_path / "cut", opts,
                     batch_transform=transform)
    monkeypatch.undo()
    state = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert (state["step"], state["epoch"], state["position"]["batches"]) == ((7, 1, 2) if where == "step" else (10, 1, 5))
    _assert_resumes_to(tmp_path / "cut", tmp_path / "whole", whole, FundusDataset(phantom_dir, 64, split="train", augment=True),
                       val, opts, _random_mixup)


def test_grader_interrupted_while_fitting_its_spaces_says_how_to_go_on(tmp_path, phantom_dir, monkeypatch, capsys):
    """After the last step, before grading_space.safetensors: it printed only 'aborted'."""
    from drgan.training import grader_pretraining

    train, val = FundusDataset(phantom_dir, 64, split="train", augment=True), FundusDataset(phantom_dir, 64, split="val")
    opts = GraderOptions(preset="tiny-64", epochs=1, batch=8)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(grader_pretraining, "_fit_grading_space", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_grader(train, val, tmp_path / "g", opts)
    assert f"interrupted: step 5 checkpointed in {tmp_path / 'g'}; continue with --resume" in capsys.readouterr().err
    monkeypatch.undo()
    train_grader(train, val, tmp_path / "g", opts, resume=True)
    assert (tmp_path / "g" / "grading_space.safetensors").is_file()


def test_grader_resume_on_the_command_line(tmp_path, phantom_dir, capsys):
    from drgan.cli import cli
    from drgan.cli.common import run_command

    def drgan(*args):
        rc = run_command(cli, args=[str(a) for a in args], prog_name="drgan")
        return rc, capsys.readouterr().err

    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    run = tmp_path / "g"
    new = ["train", "grader", "--data", data, "--out", run, "--preset", "tiny-64", "--batch", "8"]
    assert drgan(*new, "--epochs", "1")[0] == 0
    rc, err = drgan(*new, "--epochs", "2")
    assert rc == 1 and f"--out {run}: already holds a grader run; continue it with --resume, or start over with --overwrite" in err
    rc, err = drgan("train", "grader", "--resume", run, "--batch", "16")
    assert rc == 2 and f"--batch 16: --resume {run} keeps the run's own value (8)" in err
    rc, err = drgan("train", "grader", "--resume", run, "--balanced")  # a flag reads as one, not as Python's True
    assert rc == 2 and err.startswith(f"error: --balanced: --resume {run} keeps the run's own value (off); only --epochs")
    rc, err = drgan("train", "grader", "--resume", run, "--out", tmp_path / "other")  # two options that exclude each other
    assert (rc, err) == (2, f"error: --out {tmp_path / 'other'}: --resume {run} continues in its own folder; drop --out\n")
    rc, err = drgan("train", "grader", "--resume", run, "--data", phantom_dir, "--epochs", "2")
    assert rc == 2 and f"--data {phantom_dir}: --resume {run} keeps the run's own dataset ({data})" in err
    assert drgan("train", "grader", "--resume", run, "--epochs", "2")[0] == 0
    assert json.loads((run / "state.json").read_text())["epoch"] == 2
    assert read_run(run).options["epochs"] == 2
    with open(data / "labels.csv", "a") as f:
        f.write("\n")
    rc, err = drgan("train", "grader", "--resume", run, "--epochs", "3")
    assert rc == 1 and "labels.csv: changed since" in err


def test_info_describes_a_grader_run(tmp_path, phantom_dir, capsys):
    """`drgan info --run` on a grader run gives the grader (size, FLOPs at its input, epochs and
    their validation metrics), not a generator table."""
    from drgan.cli import cli
    from drgan.cli.common import run_command

    report = train_grader(FundusDataset(phantom_dir, 64, split="train"), FundusDataset(phantom_dir, 64, split="val"),
                          tmp_path / "g", GraderOptions(preset="tiny-64", epochs=1, batch=8))
    capsys.readouterr()
    assert run_command(cli, args=["info", "--run", str(tmp_path / "g")], prog_name="drgan") == 0
    out = capsys.readouterr().out
    accuracy = report["epochs"][0]["val"]["accuracy"]
    assert "grader run, ResNet-50 (width 8), input 64x64" in out and "generator" not in out
    assert f"epochs trained: 1 of 1 (last: val accuracy {accuracy:.3f}" in out and "grading spaces: written" in out
    assert run_command(cli, args=["info", "--run", str(tmp_path / "g"), "--json"], prog_name="drgan") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "grader" and info["epochs"] == report["epochs"] and info["flops"] > 0
    assert info["params"] == sum(p.numel() for p in build_grader(CFG).parameters())


def test_first_checkpoint_committed_but_not_moved_is_resumed_not_started_over(tmp_path):
    """Killed between committing the first checkpoint folder and moving it into the run: there is no
    state.json yet, but the run has a checkpoint to resume (the demo and the augmentation experiment
    decide by `interrupted`; starting over would delete it)."""
    from drgan.training.grader_pretraining import interrupted
    from drgan.training.state import kept_checkpoint

    run = tmp_path / "run"
    (run / "checkpoint.next").mkdir(parents=True)
    assert interrupted(run)
    assert kept_checkpoint(run) == f"the last checkpoint in {run} is kept"
    (run / "grading_space.safetensors").write_bytes(b"")
    assert not interrupted(run)


def test_overwrite_refuses_a_dataset_inside_the_run_it_would_empty(tmp_path, phantom_dir):
    """--overwrite emptied --out, and the dataset kept inside it, before reading it."""
    import shutil

    opts = GraderOptions(preset="tiny-64", epochs=1, batch=8)
    train_grader(FundusDataset(phantom_dir, 64, split="train"), FundusDataset(phantom_dir, 64, split="val"), tmp_path / "g", opts)
    data = shutil.copytree(phantom_dir, tmp_path / "g" / "mydata")
    with pytest.raises(DrganError, match=f"^{data}: inside {tmp_path / 'g'}, the folder this run writes and "):
        train_grader(FundusDataset(data, 64, split="train"), FundusDataset(data, 64, split="val"), tmp_path / "g", opts,
                     overwrite=True, data=data)
    assert (data / "labels.csv").is_file() and (tmp_path / "g" / "grader.safetensors").is_file()


class _EpochKeys(FundusDataset):
    """FundusDataset that records the keys its epochs are set to."""

    def set_epoch(self, key: int) -> None:
        self.keys = [*getattr(self, "keys", []), key]
        super().set_epoch(key)


def test_grader_augmentations_follow_the_seed(tmp_path, phantom_dir):
    """Two seeds train on differently augmented images (the seed once left them to the epoch alone)."""
    val = FundusDataset(phantom_dir, 64, split="val")
    keys = {}
    for seed in (0, 1):
        train = _EpochKeys(phantom_dir, 64, split="train", augment=True)
        train_grader(train, val, tmp_path / f"g{seed}", GraderOptions(preset="tiny-64", epochs=1, batch=8, seed=seed))
        keys[seed] = train.keys[0]
    assert keys[0] != keys[1]
    probe = FundusDataset(phantom_dir, 64, split="train", augment=True)
    seen = []
    for key in keys.values():
        probe.set_epoch(key)
        seen.append(torch.stack([probe[i]["image"] for i in range(6)]))
    assert not torch.equal(*seen)
