"""Edges of grader pretraining, the augmentation experiment's datasets and protocol, and the
interrupt helpers that no other test pins: the optimizer's numbers, the epochs' batches, the
report's accuracy and warnings, refusals, and what an interrupt leaves behind."""
from __future__ import annotations

import json
import signal
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drgan.checkpoint import load_tensors
from drgan.config import preset
from drgan.errors import DrganError
from drgan.grading_space import GradingSpace
from drgan.metrics.grading import grading_metrics
from drgan.nn import build_grader
from drgan.training import augmentation_experiment, grader_pretraining
from drgan.training.augmentation_experiment import MixedGradeDataset, _EpochSample, _Union, cutmix
from drgan.training.grader_pretraining import GraderOptions, _epoch_batches, batches_per_epoch, train_grader
from drgan.training.interrupts import ignored_signals, interrupted_line, whole_step
from training_fixtures import PhantomSet

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = preset("tiny-64")


class _Graded(torch.utils.data.Dataset):
    """Images filled with a per-item value; `grades` listed as FundusDataset lists them."""

    def __init__(self, grades, values=None, size=8):
        self.grades = list(grades)
        self.values = list(values) if values is not None else list(range(len(self.grades)))
        self.size = size
        self.epochs = []

    def __len__(self):
        return len(self.grades)

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __getitem__(self, j):
        return {"id": str(j), "image": torch.full((3, self.size, self.size), float(self.values[j])),
                "cond": torch.zeros(8, self.size, self.size), "grade": torch.tensor(self.grades[j])}


# -- grader pretraining ------------------------------------------------------------------------


def test_grader_steps_are_adam_steps_on_cross_entropy_over_each_epochs_batches(tmp_path):
    """The saved weights and each epoch's train loss are those of plain Adam (the run's lr and
    beta1, fresh gradients each step) on the cross entropy of the epoch's batches, from weights
    initialised by the run's seed."""
    train, val = PhantomSet(20), PhantomSet(10, seed=1)
    opts = GraderOptions(preset="tiny-64", epochs=2, batch=8, lr=2e-3, beta1=0.3, seed=3, device="cpu")
    torch.manual_seed(123)  # the run's seed, not the caller's RNG, sets the initial weights
    report = train_grader(train, val, tmp_path / "g", opts)

    torch.manual_seed(opts.seed)
    grader = build_grader(CFG)
    optim = torch.optim.Adam(grader.parameters(), lr=opts.lr, betas=(opts.beta1, 0.999))
    grader.train()
    for epoch in range(opts.epochs):
        losses = []
        for indices in _epoch_batches(train, opts, 5, epoch):
            items = [train[i] for i in indices]
            logits, _ = grader(torch.stack([it["image"] for it in items]))
            loss = F.cross_entropy(logits, torch.stack([it["grade"] for it in items]).long())
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.append(loss.item())
        assert report["epochs"][epoch]["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    saved = load_tensors(tmp_path / "g" / "grader.safetensors")
    for name, want in grader.state_dict().items():
        torch.testing.assert_close(saved[name], want, rtol=1e-4, atol=1e-5, msg=name)
    with torch.no_grad():  # the last epoch's report scores the grader's argmax grades, in eval mode
        logits, _ = grader.eval()(torch.stack([val[i]["image"] for i in range(len(val))]))
    truth = np.array([int(val[i]["grade"]) for i in range(len(val))])
    assert report["epochs"][-1]["val"] == grading_metrics(truth, logits.argmax(1).numpy(), 5)


def test_an_epoch_drops_its_incomplete_last_batch_unless_it_is_the_only_one():
    opts = GraderOptions(preset="tiny-64", batch=8)
    assert [batches_per_epoch(n, 8) for n in (3, 8, 9, 16, 23)] == [1, 1, 1, 2, 2]
    batches = _epoch_batches(_Graded([0] * 23), opts, 5, 0)
    assert [len(b) for b in batches] == [8, 8]
    assert [len(b) for b in _epoch_batches(_Graded([0] * 5), opts, 5, 0)] == [5]  # a split smaller than a batch still trains


def test_an_epochs_order_is_a_fresh_permutation_keyed_by_seed_and_epoch():
    data = _Graded([0] * 32)
    opts = GraderOptions(preset="tiny-64", batch=8, seed=5)
    first = _epoch_batches(data, opts, 5, 0)
    flat = [i for b in first for i in b]
    assert sorted(flat) == list(range(32)) and flat != list(range(32))  # each sample once, shuffled
    assert _epoch_batches(data, opts, 5, 0) == first  # a resume repeats it
    assert _epoch_batches(data, opts, 5, 1) != first
    assert _epoch_batches(data, GraderOptions(preset="tiny-64", batch=8, seed=6), 5, 0) != first


def test_balanced_sampling_draws_each_grade_about_equally_often():
    grades = [0] * 800 + [1] * 100 + [2] * 50 + [3] * 40 + [4] * 10
    data = _Graded(grades)
    batches = _epoch_batches(data, GraderOptions(preset="tiny-64", batch=50, balanced=True), 5, 0)
    drawn = np.bincount([grades[i] for b in batches for i in b], minlength=5) / 1000
    assert np.all(np.abs(drawn - 0.2) < 0.05), drawn


def _fixed_accuracy(monkeypatch, accuracy_by_epoch):
    validate = grader_pretraining._validate

    def validate_with(*args):
        report = validate(*args)
        report["val"]["accuracy"] = accuracy_by_epoch[report["epoch"]]
        return report

    monkeypatch.setattr(grader_pretraining, "_validate", validate_with)


@pytest.mark.parametrize("accuracies, warned", [({1: 0.1, 2: 0.8}, False), ({1: 0.9, 2: 0.79}, True)])
def test_the_grading_spaces_take_the_last_epochs_accuracy_and_warn_below_80_percent(tmp_path, monkeypatch, capsys,
                                                                                     accuracies, warned):
    """The grader handed to the GAN is the last epoch's: its accuracy is recorded, and warned of
    when below 0.80 (0.80 itself is enough)."""
    _fixed_accuracy(monkeypatch, accuracies)
    report = train_grader(PhantomSet(10), PhantomSet(5, seed=1), tmp_path / "g",
                          GraderOptions(preset="tiny-64", epochs=2, batch=5))
    assert report["val_accuracy"] == accuracies[2]
    assert GradingSpace.load(tmp_path / "g" / "grading_space.safetensors").grader_accuracy == pytest.approx(accuracies[2])
    low = [w for w in report["warnings"] if w.startswith("grader validation accuracy")]
    assert low == (["grader validation accuracy 0.790 is below 0.80: the grading spaces may not separate the grades "
                    "(the paper finds AGM needs about 80%)"] if warned else [])
    assert ("warning: grader validation accuracy" in capsys.readouterr().err) == warned


def test_a_grade_with_a_single_training_image_is_named_in_a_warning(tmp_path):
    """One image gives no variance: its grading space falls back as an absent grade's does."""
    report = train_grader(PhantomSet(9), PhantomSet(5, seed=1), tmp_path / "g", GraderOptions(preset="tiny-64", epochs=1, batch=4))
    assert any(w.startswith("grade(s) 4 had fewer than 2 training images (1)") for w in report["warnings"])


def test_empty_splits_and_overwrite_with_resume_are_refused_before_anything_is_written(tmp_path):
    opts = GraderOptions(preset="tiny-64", epochs=1, batch=4)
    with pytest.raises(DrganError, match="^grader: the training split is empty$"):
        train_grader(PhantomSet(0), PhantomSet(5), tmp_path / "a", opts)
    with pytest.raises(DrganError, match=r"^grader: the validation split is empty \(labels.csv needs rows with split 'val'\)$"):
        train_grader(PhantomSet(5), PhantomSet(0), tmp_path / "b", opts)
    with pytest.raises(DrganError) as err:
        train_grader(PhantomSet(5), PhantomSet(5), tmp_path / "c", opts, overwrite=True, resume=True)
    assert err.value.render(lambda n: f"--{n}") == "--overwrite starts a run over; --resume continues one: give one of them"
    assert not any(tmp_path.iterdir())


def test_a_resume_of_a_run_in_use_is_refused_and_leaves_it_alone(tmp_path, lock_holder):
    opts = GraderOptions(preset="tiny-64", epochs=1, batch=5)
    train_grader(PhantomSet(10), PhantomSet(5, seed=1), tmp_path / "g", opts)
    state = (tmp_path / "g" / "state.json").read_bytes()
    lock_holder(tmp_path / "g")
    with pytest.raises(DrganError, match="is in use by another drgan process"):
        train_grader(PhantomSet(10), PhantomSet(5, seed=1), tmp_path / "g", GraderOptions(**{**opts.to_dict(), "epochs": 2}),
                     resume=True)
    assert (tmp_path / "g" / "state.json").read_bytes() == state


class _StopsInEpoch(torch.utils.data.Dataset):
    """Raises KeyboardInterrupt at read `stop` + 1 of the given epoch (0-based), as a process killed
    there would stop."""

    def __init__(self, data, epoch, stop):
        self.data, self.epoch, self.stop, self.epochs, self.reads = data, epoch, stop, -1, 0

    def set_epoch(self, key):
        self.epochs += 1
        self.reads = 0

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.reads += 1
        if self.epochs == self.epoch and self.reads > self.stop:
            raise KeyboardInterrupt
        return self.data[i]


def test_a_resume_refuses_fewer_epochs_than_the_run_has_begun(tmp_path):
    """Stopped inside epoch 2, a resume with epochs 1 would drop the half-trained epoch's steps
    and finish as if the run had stopped after epoch 1."""
    opts = GraderOptions(preset="tiny-64", epochs=2, batch=5, checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):  # in epoch 2's second batch
        train_grader(_StopsInEpoch(PhantomSet(10), 1, 5), PhantomSet(5, seed=1), tmp_path / "g", opts)
    state = json.loads((tmp_path / "g" / "state.json").read_text())
    assert (state["epoch"], state["position"]["batches"]) == (1, 1)
    with pytest.raises(DrganError, match=r"epochs 1: resume .* has already begun epoch 2; give epochs >= 2"):
        train_grader(PhantomSet(10), PhantomSet(5, seed=1), tmp_path / "g", GraderOptions(**{**opts.to_dict(), "epochs": 1}),
                     resume=True)
    assert not (tmp_path / "g" / "grading_space.safetensors").exists()


def test_batch_transforms_draw_afresh_each_epoch(tmp_path):
    first_draws, calls = [], []

    def transform(images, grades, generator):
        draw = torch.rand(4, generator=generator)
        if len(calls) % 2 == 0:  # an epoch's first batch of two
            first_draws.append(draw)
        calls.append(1)
        return images, grades

    train_grader(PhantomSet(10), PhantomSet(5, seed=1), tmp_path / "g", GraderOptions(preset="tiny-64", epochs=2, batch=5),
                 batch_transform=transform)
    assert len(first_draws) == 2 and not torch.equal(first_draws[0], first_draws[1])


def test_a_resumed_runs_log_drops_what_was_logged_after_its_checkpoint(tmp_path, monkeypatch):
    """TensorBoard's purge_step: scalars a killed run logged past its checkpoint are not kept twice."""
    purges = []
    logger = grader_pretraining.RunLogger

    def spy(run, enabled, purge_step):
        purges.append(purge_step)
        return logger(run, enabled, purge_step)

    monkeypatch.setattr(grader_pretraining, "RunLogger", spy)
    opts = GraderOptions(preset="tiny-64", epochs=1, batch=5)
    train_grader(PhantomSet(10), PhantomSet(5, seed=1), tmp_path / "g", opts)
    train_grader(PhantomSet(10), PhantomSet(5, seed=1), tmp_path / "g", GraderOptions(**{**opts.to_dict(), "epochs": 2}),
                 resume=True)
    assert purges == [None, 2]  # epoch 2's scalars are logged at step 2


def test_the_recorded_resolution_is_the_training_images_not_the_presets(tmp_path):
    """Evaluation resizes to it: a grader trained on 32 px images is evaluated at 32 px."""
    from drgan.runs import read_run

    train_grader(PhantomSet(10, size=32), PhantomSet(5, size=32, seed=1), tmp_path / "g",
                 GraderOptions(preset="tiny-64", epochs=1, batch=5))
    assert read_run(tmp_path / "g").extra["resolution"] == 32


def test_a_new_run_interrupted_before_its_first_step_leaves_no_folder_and_no_line(tmp_path, capsys):
    """Nothing trained, nothing to resume: the folder goes, so the same command starts it again."""
    with pytest.raises(KeyboardInterrupt):
        train_grader(_StopsInEpoch(PhantomSet(10), 0, 0), PhantomSet(5, seed=1), tmp_path / "g",
                     GraderOptions(preset="tiny-64", epochs=1, batch=5))
    assert not (tmp_path / "g").exists()
    assert "interrupted:" not in capsys.readouterr().err


def test_an_interrupt_while_saving_an_epochs_checkpoint_checkpoints_the_finished_epoch(tmp_path, monkeypatch):
    """Ctrl-C during the end-of-epoch checkpoint: the one taken in its place holds the epoch as
    finished, not as a position inside it (a resume would then skip the next epoch's batches)."""
    write = grader_pretraining.write_checkpoint
    calls = []

    def interrupted_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return write(*args, **kwargs)

    monkeypatch.setattr(grader_pretraining, "write_checkpoint", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        train_grader(PhantomSet(10), PhantomSet(5, seed=1), tmp_path / "g", GraderOptions(preset="tiny-64", epochs=2, batch=5))
    state = json.loads((tmp_path / "g" / "state.json").read_text())
    assert (state["step"], state["epoch"], "position" in state) == (2, 1, False)


def _nan_images(images, grades, generator):
    return torch.full_like(images, float("nan")), grades


def test_a_non_finite_loss_is_refused_at_its_step(tmp_path):
    with pytest.raises(DrganError) as err:
        train_grader(PhantomSet(10), PhantomSet(5, seed=1), tmp_path / "g", GraderOptions(preset="tiny-64", epochs=1, batch=5),
                     batch_transform=_nan_images)
    assert str(err.value).startswith("grader: non-finite loss at epoch 1, step 0; ")
    assert not (tmp_path / "g").exists()


# -- the augmentation experiment's datasets --------------------------------------------------


def test_cutmix_pastes_a_box_of_exactly_the_share_asked_and_leaves_its_inputs_alone():
    a, b = torch.zeros(3, 9, 9), torch.ones(3, 9, 9)
    lam = 1 - (5 / 9) ** 2  # a 5 x 5 box
    rng = np.random.default_rng(0)
    areas = set()
    for _ in range(100):
        pasted = cutmix(a, b, lam, rng)[0]
        rows, cols = pasted.sum(1), pasted.sum(0)
        if pasted[0].sum() == 0 and pasted[-1].sum() == 0 and pasted[:, 0].sum() == 0 and pasted[:, -1].sum() == 0:
            areas.add(int(pasted.sum()))  # a box clear of the borders
        assert int((rows > 0).sum()) * int((cols > 0).sum()) == int(pasted.sum())  # one rectangle
    assert areas == {25}
    assert a.abs().sum() == 0 and torch.equal(b, torch.ones(3, 9, 9))


def test_cutmix_can_paste_onto_every_pixel():
    """Box centres cover the whole image, its last row and column included."""
    a, b = torch.zeros(1, 4, 4), torch.ones(1, 4, 4)
    rng = np.random.default_rng(1)
    lam = 1 - (1 / 4) ** 2  # a 1 x 1 box
    covered = sum(cutmix(a, b, lam, rng) for _ in range(400))
    assert bool((covered > 0).all()), covered


def _pair_values(kind, seed=0):
    """20 images mixed from two images per grade, valued 10 * grade and 10 * grade + 1."""
    source = _Graded([g for g in range(5) for _ in (0, 1)], [10 * g + k for g in range(5) for k in (0, 1)])
    return MixedGradeDataset(source, [i % 5 for i in range(20)], kind, seed)


def test_mixup_blends_two_distinct_images_and_cutmix_pastes_one_into_the_other():
    """With two images of a grade, every MixUp blends both (lam strictly between 0 and 1) and every
    CutMix shows their two values side by side, never a blend."""
    mixup = _pair_values("mixup")
    for i in range(len(mixup)):
        values = mixup[i]["image"].unique()
        g = int(mixup[i]["grade"])
        assert len(values) == 1 and 10 * g < float(values[0]) < 10 * g + 1, (i, values)
    cut = _pair_values("cutmix")
    for i in range(len(cut)):
        values = set(cut[i]["image"].unique().tolist())
        g = int(cut[i]["grade"])
        assert values <= {10.0 * g, 10.0 * g + 1}


def test_a_grade_with_one_real_image_mixes_it_with_itself():
    source = _Graded([0, 0, 1], [3, 4, 7])
    item = MixedGradeDataset(source, [1, 1], "mixup", seed=0)[1]
    assert int(item["grade"]) == 1 and torch.allclose(item["image"], torch.full((3, 8, 8), 7.0))


def test_the_seed_chooses_the_mixed_images():
    a, b = _pair_values("mixup", seed=0), _pair_values("mixup", seed=1)
    assert not all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(len(a)))
    assert all(torch.equal(a[i]["image"], _pair_values("mixup", seed=0)[i]["image"]) for i in range(len(a)))


def test_a_union_lists_the_grades_of_its_items_in_order_and_sets_every_parts_epoch():
    """The grader's balanced sampling weighs item i by grades[i]; augmentations follow the epoch."""
    first, second = _Graded([0, 0, 0]), _Graded([4, 3])
    union = _Union([first, second])
    assert union.grades == [int(union[i]["grade"]) for i in range(len(union))] == [0, 0, 0, 4, 3]
    union.set_epoch(7)
    assert first.epochs == second.epochs == [7]


def test_an_epoch_sample_passes_the_epoch_on_and_takes_no_more_than_there_is():
    data = _Graded([0, 1, 2, 3, 4])
    sample = _EpochSample(data, 8, seed=0)
    assert len(sample) == 5 and sorted(sample.indices) == [0, 1, 2, 3, 4]
    sample.set_epoch(3)
    assert data.epochs == [0, 3]


# -- the augmentation experiment's protocol ----------------------------------------------------


@pytest.fixture(scope="module")
def experiment_data(tmp_path_factory):
    from drgan.data.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("experiment")
    real = write_phantom_dataset(root / "real", 20, 64, seed=0)
    fake = write_phantom_dataset(root / "fake", 10, 64, seed=1, grades=[3, 4] * 5, split=False)
    return real, fake


class _Stopped(Exception):
    """A grader stopped after its checkpoint (the experiment's folder is claimed by then)."""


def _stopped_trainer(lines):
    def train(*args, **kwargs):
        lines.append(interrupted_line(4, "arm", complete=False))
        raise _Stopped
    return train


def test_an_experiment_interrupted_in_an_arm_leaves_the_way_on_to_its_rerun(tmp_path, monkeypatch, experiment_data):
    """Its grader names the checkpoint only: rerunning the experiment resumes the arm (the grader's
    own `--resume` is not how an experiment goes on)."""
    real, fake = experiment_data
    lines = []
    monkeypatch.setattr(augmentation_experiment, "train_grader", _stopped_trainer(lines))
    with pytest.raises(_Stopped):
        augmentation_experiment.run_augment_experiment(real, fake, real, tmp_path / "exp", preset="tiny-64", epochs=1, batch=8)
    assert lines == ["interrupted: step 4 checkpointed in arm"]
    assert interrupted_line(4, "arm", complete=False).endswith("; continue with --resume")  # outside it again


def test_an_experiment_with_equal_steps_does_not_continue_one_without(tmp_path, monkeypatch, experiment_data):
    """Arms trained for more steps must not sit beside arms of the real arm's steps."""
    real, fake = experiment_data
    monkeypatch.setattr(augmentation_experiment, "train_grader", _stopped_trainer([]))
    args = dict(preset="tiny-64", epochs=1, batch=8)
    with pytest.raises(_Stopped):
        augmentation_experiment.run_augment_experiment(real, fake, real, tmp_path / "exp", **args)
    with pytest.raises(DrganError, match=r"other settings \(equal_steps: not set there, True now\)"):
        augmentation_experiment.run_augment_experiment(real, fake, real, tmp_path / "exp", equal_steps=True, **args)


# -- interrupts --------------------------------------------------------------------------------


def test_a_step_delivers_each_held_signal_once_then_restores_the_handlers():
    calls = []
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with whole_step():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            assert calls == []  # held while the step runs
        assert calls == [signal.SIGTERM]
        signal.raise_signal(signal.SIGTERM)  # the step's own handler is gone
        assert calls == [signal.SIGTERM] * 2
    finally:
        signal.signal(signal.SIGTERM, before)


def test_interrupts_are_ignored_while_the_interrupts_checkpoint_is_written():
    try:
        with ignored_signals():
            signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        pytest.fail("a second Ctrl-C cut the checkpoint")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_step_outside_the_main_thread_runs_without_touching_the_handlers():
    """Only the main thread may set handlers (a DataLoader's or a user's thread trains too)."""
    errors, ran = [], []

    def step():
        try:
            with whole_step():
                ran.append(True)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=step)
    thread.start()
    thread.join()
    assert ran == [True] and errors == []


def test_a_checkpoint_of_the_step_stopped_at_names_that_step():
    assert interrupted_line(3, "runs/r", complete=False, at=3) == "interrupted: step 3 checkpointed in runs/r; continue with --resume"
    assert interrupted_line(2, "runs/r", complete=False, at=3) == (
        "interrupted: at step 3; its last checkpoint, step 2, is in runs/r; continue with --resume")
