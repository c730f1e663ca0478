"""GAN training on phantom retinas at tiny-64: losses, logging, checkpoints, exact resume, local init."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from drgan import runs
from drgan.runs import generator_weights, read_run
from drgan.config import preset
from drgan.errors import DrganError, ParameterError, UsageError
from drgan.runtime import deterministic_algorithms
from drgan.training import gan, state
from drgan.training.gan import D_TERMS, G_TERMS, GanTrainer, train_gan
from drgan.training.options import GanOptions, resume_options
from training_fixtures import PhantomSet, options, write_space

CFG = preset("tiny-64")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def space(tmp_path):
    return write_space(tmp_path / "space.safetensors")


def _event_tags(run: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "logs"))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_gan_steps_finite_logged_and_checkpointed(tmp_path, space):
    report = train_gan(options(tmp_path, space, max_steps=2, sample_every=2, ema=True), PhantomSet(6))
    run = tmp_path / "run"
    assert report["steps"] == 2 and len(report["log"]) == 2
    for row in report["log"]:
        assert all(np.isfinite(v) for v in row.values())
    fidelity = {f"{kind}/{name}" for kind in ("fidelity", "fidelity_real") for name in ("vessel", "red_lesion", "bright_lesion")}
    expected = {f"loss/{k}" for k in G_TERMS + D_TERMS} | {"lr/G", "lr/D", "samples/l1_real"} | fidelity
    assert expected <= _event_tags(run)
    assert report["samples"][-1]["fidelity_real"]["vessel"] > 0.8  # the fixed real phantoms show their vessels
    for name in ("run.json", "G.safetensors", "G_ema.safetensors", "D.safetensors", "grading_space.safetensors",
                 "state.json", "state.safetensors", "environment.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "state.json").read_text())["step"] == 2
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["grades-0000000.png", "grades-0000002.png"]
    info = read_run(run)
    cfg, stage, opts = info.cfg, info.stage, info.options
    assert (cfg, stage, opts["batch"]) == (CFG, "global", 2)


def test_default_run_keeps_no_ema_and_synthesis_loads_g(tmp_path, space):
    train_gan(options(tmp_path, space, max_steps=1), PhantomSet(2))
    run = tmp_path / "run"
    assert not (run / "G_ema.safetensors").exists()
    assert generator_weights(run) == run / "G.safetensors"


def test_generator_objective_is_the_papers_by_default(tmp_path, space):
    """Eq. 1: no focal term for G (only D minimises it) and no pixel L1 unless asked for."""
    report = train_gan(options(tmp_path, space, max_steps=1), PhantomSet(2))
    t = {k[5:]: v for k, v in report["log"][-1].items() if k.startswith("loss/")}
    assert t["G_cls"] > 0 and t["G_l1"] > 0
    paper = t["G_adv"] + 10 * t["G_fm"] + t["G_encoder"]  # perceptual 'none' in these options
    assert t["G_total"] == pytest.approx(paper, rel=1e-5)
    report = train_gan(options(tmp_path, space, out=str(tmp_path / "acgan"), max_steps=1, g_cls_weight=0.5, lambda_l1=2.0,
                               fm_norm="l2"), PhantomSet(2))
    t = {k[5:]: v for k, v in report["log"][-1].items() if k.startswith("loss/")}
    assert t["G_total"] == pytest.approx(t["G_adv"] + 10 * t["G_fm"] + 0.5 * t["G_cls"] + 2 * t["G_l1"] + t["G_encoder"], rel=1e-5)


def _assert_same_run(a: Path, b: Path,
                     names: tuple[str, ...] = ("G.safetensors", "G_ema.safetensors", "D.safetensors", "state.safetensors")) -> None:
    for name in names:
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}:{k} differs"


def test_resume_is_exact(tmp_path, space):
    with deterministic_algorithms():
        data = PhantomSet(10)  # 5 batches per epoch: the resumed half crosses an epoch boundary
        train_gan(options(tmp_path, space, out=str(tmp_path / "full"), max_steps=8, ema=True), data)
        train_gan(options(tmp_path, space, out=str(tmp_path / "half"), max_steps=4, ema=True), data)
        report = train_gan(GanOptions(resume=str(tmp_path / "half"), max_steps=8), data)
    assert report["steps"] == 8 and report["epoch"] == 1
    _assert_same_run(tmp_path / "full", tmp_path / "half")


def _interrupt_in_step(monkeypatch, index: int, signum: int = signal.SIGINT) -> None:
    """Send `signum` during step `index` (0-based): held until the step ends."""
    step = gan.GanTrainer.train_step

    def interrupted_step(self, batch, i):
        if i == index:
            os.kill(os.getpid(), signum)
        return step(self, batch, i)

    monkeypatch.setattr(gan.GanTrainer, "train_step", interrupted_step)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_inside_a_step_checkpoints_that_step(tmp_path, space, monkeypatch, signum):
    """Ctrl-C (or SIGTERM, which the commands turn into an exit) during step 3 of a run that
    checkpoints every 1000: the step finishes, is checkpointed, and the resume ends as a run
    never stopped."""
    from drgan.cli.common import terminate_as_exit

    with deterministic_algorithms():
        data = PhantomSet(10)
        train_gan(options(tmp_path, space, out=str(tmp_path / "full"), max_steps=5), data)
        _interrupt_in_step(monkeypatch, 2, signum)
        with terminate_as_exit(), pytest.raises(KeyboardInterrupt if signum == signal.SIGINT else SystemExit):
            train_gan(options(tmp_path, space, out=str(tmp_path / "cut"), max_steps=5), data)
        monkeypatch.undo()
        assert json.loads((tmp_path / "cut" / "state.json").read_text())["step"] == 3
        train_gan(GanOptions(resume=str(tmp_path / "cut"), max_steps=5), data)
    _assert_same_run(tmp_path / "full", tmp_path / "cut", ("G.safetensors", "D.safetensors", "state.safetensors"))


def test_interrupt_in_a_sample_step_keeps_its_samples(tmp_path, space, monkeypatch, capsys):
    """Ctrl-C during the last step (a sample step): its grid and fidelity scalars are written before
    the interrupt is delivered; the run, finished, then has nothing left to resume."""
    data = PhantomSet(10)
    _interrupt_in_step(monkeypatch, 4)
    run = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_gan(options(tmp_path, space, out=str(run), max_steps=5), data)
    assert json.loads((run / "state.json").read_text())["step"] == 5
    assert (run / "samples" / "grades-0000005.png").is_file()
    assert {"fidelity/vessel", "samples/l1_real"} <= _event_tags(run)
    assert f"interrupted: step 5 checkpointed in {run}; the run is complete\n" in capsys.readouterr().err


def test_interrupt_just_after_a_checkpoint_still_says_how_to_go_on(tmp_path, space, monkeypatch, capsys):
    data = PhantomSet(10)
    _interrupt_in_step(monkeypatch, 2)
    run = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):  # step 3 ends in its own checkpoint: nothing left to save
        train_gan(options(tmp_path, space, out=str(run), max_steps=5, checkpoint_every=1), data)
    assert f"interrupted: step 3 checkpointed in {run}; continue with --resume\n" in capsys.readouterr().err
    from drgan.training.interrupts import resumed_by_rerun

    with resumed_by_rerun(), pytest.raises(KeyboardInterrupt):  # inside the demo: its own rerun goes on
        train_gan(options(tmp_path, space, out=str(tmp_path / "in_demo"), max_steps=5, checkpoint_every=1), data)
    assert f"interrupted: step 3 checkpointed in {tmp_path / 'in_demo'}\n" in capsys.readouterr().err


def test_second_interrupt_while_checkpointing_the_first_is_ignored(tmp_path, space, monkeypatch):
    """An impatient second Ctrl-C inside the interrupt's checkpoint cut it, and a run with no
    earlier checkpoint then had its folder removed as unfinished."""
    data = PhantomSet(10)
    save = gan.GanTrainer.save_checkpoint

    def impatient_save(self):
        os.kill(os.getpid(), signal.SIGINT)  # ignored while the checkpoint is written
        return save(self)

    _interrupt_in_step(monkeypatch, 2)
    monkeypatch.setattr(gan.GanTrainer, "save_checkpoint", impatient_save)
    with pytest.raises(KeyboardInterrupt):
        train_gan(options(tmp_path, space, out=str(tmp_path / "cut"), max_steps=5), data)
    assert json.loads((tmp_path / "cut" / "state.json").read_text())["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_checkpoint_cut_short_leaves_the_previous_one(tmp_path, space, monkeypatch):
    """A full disk after G and D are written and before the state: one error, and the run resumes
    from the checkpoint before (which the old file-by-file writing had mixed with the new G/D)."""
    data, run = PhantomSet(4), tmp_path / "run"
    train_gan(options(tmp_path, space, max_steps=1), data)
    g_before = (run / "G.safetensors").read_bytes()
    monkeypatch.setattr(gan, "save_state", _full_disk)
    with pytest.raises(DrganError, match=f"{run}: disk full while writing checkpoint.next"):
        train_gan(GanOptions(resume=str(run), max_steps=2), data)
    monkeypatch.undo()
    assert sorted(p.name for p in run.iterdir() if "checkpoint" in p.name) == []  # no temp folder left
    assert (run / "G.safetensors").read_bytes() == g_before
    assert json.loads((run / "state.json").read_text())["step"] == 1
    assert train_gan(GanOptions(resume=str(run), max_steps=2), data)["steps"] == 2


def test_a_run_stopped_while_moving_its_first_checkpoint_names_the_way_on(tmp_path, space, monkeypatch):
    from drgan.runs import generator_weights

    data, run = PhantomSet(4), tmp_path / "run"
    monkeypatch.setattr(state, "finish_checkpoint", lambda run: None)
    train_gan(options(tmp_path, space, max_steps=1), data)
    monkeypatch.undo()
    with pytest.raises(DrganError, match=rf"stopped while moving its first checkpoint .*`drgan train gan --resume {run}`"):
        generator_weights(run)  # it read 'G.safetensors: file not found'
    with pytest.raises(DrganError, match=r"already at step 1, its limit \(max_steps 1\)"):
        train_gan(GanOptions(resume=str(run), max_steps=1), data)
    assert generator_weights(run).is_file()


def test_committed_checkpoint_is_finished_on_resume(tmp_path, space, monkeypatch):
    """Killed after the new checkpoint folder was committed, before its files replaced the run's."""
    data, run = PhantomSet(4), tmp_path / "run"
    train_gan(options(tmp_path, space, max_steps=1), data)
    monkeypatch.setattr(state, "finish_checkpoint", lambda run: None)
    train_gan(GanOptions(resume=str(run), max_steps=2), data)
    monkeypatch.undo()
    assert json.loads((run / "checkpoint.next" / "state.json").read_text())["step"] == 2
    assert json.loads((run / "state.json").read_text())["step"] == 1
    with pytest.raises(DrganError, match=r"already at step 2, its limit \(max_steps 2\)"):
        train_gan(GanOptions(resume=str(run), max_steps=2), data)
    assert not (run / "checkpoint.next").exists()
    assert load_file(str(run / "G.safetensors")) and json.loads((run / "state.json").read_text())["step"] == 2


def test_full_disk_while_saving_weights_is_one_error(tmp_path, monkeypatch):
    from drgan import checkpoint

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DrganError, match=f"^{tmp_path}: disk full while writing G.safetensors$"):
        checkpoint.save_tensors({"w": torch.zeros(2)}, tmp_path / "G.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_weights_are_written_without_safetensors_own_temp_file(tmp_path, monkeypatch):
    """safetensors' save_file writes through a .tmpXXXXXX of its own, which a SIGKILL leaves behind
    and drgan.io's cleanup cannot tell from a user's file: while weights are written, every file
    in the folder is one of drgan's temp files."""
    from drgan import checkpoint
    from drgan.io import is_temp_name

    seen, write = [], Path.write_bytes

    def watched(self, data):
        count = write(self, data)
        seen.extend(p.name for p in tmp_path.iterdir())
        return count

    monkeypatch.setattr(Path, "write_bytes", watched)
    checkpoint.save_tensors({"w": torch.arange(4.0)}, tmp_path / "G.safetensors", metadata={"step": "3"})
    assert len(seen) == 1 and is_temp_name(seen[0])
    assert torch.equal(checkpoint.load_tensors(tmp_path / "G.safetensors")["w"], torch.arange(4.0))


def test_local_stage_starts_from_global_weights(tmp_path, space):
    data = PhantomSet(4)
    train_gan(options(tmp_path, space, out=str(tmp_path / "global"), max_steps=1, ema=True), data)
    trainer = GanTrainer(options(tmp_path, space, out=str(tmp_path / "local"), stage="local", init=str(tmp_path / "global"),
                                 max_steps=1, ema=True), data)
    own = trainer.G.state_dict()
    assert any(k.startswith("local.") for k in own)
    for name, module in (("G", trainer.G), ("G_ema", trainer.G_ema)):
        saved = load_file(str(tmp_path / "global" / f"{name}.safetensors"))
        shared = [k for k in saved if not k.startswith("global_gen.to_rgb.")]  # Gm's RGB head is dropped
        assert len(shared) > 50 and set(shared) < set(own)
        for k in shared:
            assert torch.equal(module.state_dict()[k], saved[k]), f"{name}:{k}"
    report = trainer.fit()
    assert report["steps"] == 1 and all(np.isfinite(v) for v in report["log"][-1].values())
    assert read_run(tmp_path / "local").stage == "local"


def test_init_must_be_a_global_run_of_the_same_preset(tmp_path, space):
    data = PhantomSet(4)
    train_gan(options(tmp_path, space, out=str(tmp_path / "global"), max_steps=1), data)
    with pytest.raises(DrganError, match=r"another model config \(resolution 64 there, 256 now"):
        GanTrainer(options(tmp_path, space, out=str(tmp_path / "l"), stage="local", preset="small-256", init=str(tmp_path / "global")), data)
    with pytest.raises(DrganError, match=r"another model config \(sca True there, False now; preset tiny-64 and"):
        GanTrainer(options(tmp_path, space, out=str(tmp_path / "l"), stage="local", sca=False, init=str(tmp_path / "global")), data)
    # A global stage given --init was told its own run was "not the global stage of this model".
    with pytest.raises(DrganError, match="only the local stage starts from a global-stage run"):
        GanTrainer(options(tmp_path, space, out=str(tmp_path / "g2"), stage="global", init=str(tmp_path / "global")), data)


class _NanImages(PhantomSet):
    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        return {**item, "image": torch.full_like(item["image"], float("nan"))}


def test_non_finite_loss_stops_with_checkpoint(tmp_path, space):
    """A non-finite loss from finite weights (here: bad pixels) stops the run with those weights saved."""
    trainer = GanTrainer(options(tmp_path, space, max_steps=3), _NanImages(4))
    with pytest.raises(DrganError, match="non-finite loss at step 0 .*checkpoint of the last good step saved"):
        trainer.fit()
    assert json.loads((tmp_path / "run" / "state.json").read_text())["step"] == 0


def test_non_finite_loss_from_diverged_weights_saves_nothing(tmp_path, space):
    trainer = GanTrainer(options(tmp_path, space, max_steps=3), PhantomSet(4))
    with torch.no_grad():
        trainer.G.global_gen.to_rgb.weight.fill_(float("nan"))
    with pytest.raises(DrganError, match="non-finite loss at step 0 .*; the weights are NaN or infinite; nothing saved"):
        trainer.fit()
    assert not (tmp_path / "run" / "state.json").exists()


def test_perceptual_auto_is_vgg19_where_torchvision_keeps_it_else_the_grader(tmp_path, space, monkeypatch, capsys):
    from drgan.training import losses
    from drgan.training.vgg import VGG19Features

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(DrganError, match="^perceptual auto: no VGG-19 weights"):
        GanTrainer(options(tmp_path, space, perceptual="auto"), PhantomSet(4))
    (Path(space).parent / "grader.safetensors").touch()
    assert losses.resolve_perceptual("auto", None, str(space)) == ("grader", None)
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    hub.parent.mkdir(parents=True)
    torch.save(VGG19Features().state_dict(), hub)   # torchvision's format: a .pth state dict
    trainer = GanTrainer(options(tmp_path, space, perceptual="auto"), PhantomSet(4))
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"perceptual loss: VGG-19 with {hub}"
    assert trainer.perceptual is not None
    recorded = read_run(tmp_path / "run").options
    assert (recorded["perceptual"], recorded["vgg19_weights"]) == ("vgg19", str(hub))
    assert GanOptions().perceptual == "auto"


def test_a_bad_loss_weight_or_interval_names_its_option_alone(tmp_path, space, capsys):
    """One negative weight listed all five; one interval of 0 all three."""
    from drgan.cli import cli
    from drgan.cli.common import flag, run_command

    for kw, line in ((dict(lambda_fm=-1.0), "--lambda-fm -1.0 must be >= 0"),
                     (dict(g_cls_weight=-0.5), "--g-cls-weight -0.5 must be >= 0"),
                     (dict(log_every=0), "--log-every 0 must be >= 1"),
                     (dict(checkpoint_every=0), "--checkpoint-every 0 must be >= 1")):
        with pytest.raises(ParameterError) as refused:
            options(tmp_path, space, **kw)
        assert refused.value.render(flag) == line
    assert options(tmp_path, space, lambda_fm=0.0, lambda_perceptual=0.0, lambda_cls=0.0).lambda_fm == 0  # 0 removes a term
    args = ["train", "gan", "--data", tmp_path, "--out", tmp_path / "run", "--perceptual", "none", "--vgg19-weights", space]
    assert run_command(cli, args=[str(a) for a in args], prog_name="drgan") == 2  # an option the other leaves unused: usage
    assert capsys.readouterr().err == \
        "error: --vgg19-weights is used by --perceptual vgg19 or auto only, not none; drop one of them\n"


def test_bad_inputs_are_one_line_errors(tmp_path, space, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no VGG-19 weights there
    with pytest.raises(DrganError, match="needs vgg19_weights FILE"):
        GanTrainer(options(tmp_path, space, perceptual="vgg19"), PhantomSet(4))
    with pytest.raises(UsageError, match="^vgg19_weights is used by perceptual vgg19 or auto only, not none"):
        options(tmp_path, space, perceptual="none", vgg19_weights=str(space))  # it was ignored
    run = tmp_path / "older"  # started when the pair was accepted: it still resumes
    train_gan(options(tmp_path, space, out=str(run), max_steps=1), PhantomSet(4))
    with pytest.raises(ParameterError, match=rf"^no_sca: resume {re.escape(str(run))} keeps the run's own value \(on\); only epochs, "):
        resume_options(run, sca=False)  # a switch reads as its flag, not as Python's False
    info = json.loads((run / "run.json").read_text())
    info["options"]["vgg19_weights"] = str(space)
    (run / "run.json").write_text(json.dumps(info))
    assert train_gan(GanOptions(resume=str(run), max_steps=2), PhantomSet(4))["steps"] == 2
    with pytest.raises(DrganError, match="grading space of 5 grades x 256"):
        GanTrainer(options(tmp_path, space, preset="small-256"), PhantomSet(4))
    with pytest.raises(DrganError, match="fewer than one batch"):
        GanTrainer(options(tmp_path, space, batch=8), PhantomSet(4))
    with pytest.raises(DrganError, match="^precision 'fp8'"):  # the parameter; the CLI maps it to --precision
        options(tmp_path, space, precision="fp8")
    with pytest.raises(DrganError, match="^kernel_impl 'cuda' is not one of .*'sdpa'"):  # when set, not at a forward
        options(tmp_path, space, kernel_impl="cuda")
    with pytest.raises(DrganError, match="^kernel_impl 'gluon' is not one of .*'sdpa'\\)$"):  # spatial attention's alone
        options(tmp_path, space, kernel_impl="gluon")
    assert options(tmp_path, space, kernel_impl="sdpa").kernel_impl == "sdpa"
    for name, value in (("lr", float("inf")), ("lambda_l1", float("nan")), ("lambda_fm", float("inf"))):
        with pytest.raises(DrganError, match=f"^{name} {value}: not a finite number"):  # inf passes ">= 0", nan every check
            options(tmp_path, space, **{name: value})


def test_diverged_weights_are_not_checkpointed(tmp_path, space):
    """A huge learning rate gives finite losses and NaN weights: refused at the checkpoint, the new run
    folder removed (a set synthesized from such weights would be blank)."""
    with pytest.raises(DrganError, match="^the weights became NaN or infinite by step 1 .*nothing saved .*try a lower lr"):
        train_gan(options(tmp_path, space, max_steps=1, lr=1e308), PhantomSet(2))
    assert not (tmp_path / "run").exists()


def test_bf16_autocast_and_activation_checkpointing_step(tmp_path, space):
    report = train_gan(options(tmp_path, space, max_steps=1, precision="bf16", checkpoint_activations=True, gan_loss="lsgan"), PhantomSet(2))
    assert all(np.isfinite(v) for v in report["log"][-1].values())


def test_fp16_scaler_skips_overflowing_steps(tmp_path, space):
    """--precision fp16: the scaled loss overflows fp16 gradients, so the step is skipped (weights and
    Adam untouched) and the scale backs off; the CPU runs the same GradScaler logic as CUDA."""
    data = PhantomSet(2)
    trainer = GanTrainer(options(tmp_path, space, precision="fp16"), data)
    assert trainer.scaler.is_enabled()
    trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": 2.0**100})
    before = [p.detach().clone() for m in (trainer.G, trainer.D) for p in m.parameters()]
    values = trainer.train_step(next(iter(torch.utils.data.DataLoader(data, batch_size=2))), 0)
    assert all(np.isfinite(v) for v in values.values())  # the losses are fine, only the scaled gradients overflow
    after = [p.detach() for m in (trainer.G, trainer.D) for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert not trainer.opt_G.state and not trainer.opt_D.state
    assert trainer.scaler.get_scale() == 2.0**99
    trainer.save_checkpoint()
    assert GanTrainer(GanOptions(resume=str(tmp_path / "run")), data).scaler.get_scale() == 2.0**99


def test_fp16_resume_is_exact_with_the_scaler_state(tmp_path, space):
    with deterministic_algorithms():
        data = PhantomSet(4)
        full = train_gan(options(tmp_path, space, out=str(tmp_path / "full"), max_steps=2, precision="fp16"), data)
        train_gan(options(tmp_path, space, out=str(tmp_path / "half"), max_steps=1, precision="fp16"), data)
        train_gan(GanOptions(resume=str(tmp_path / "half"), max_steps=2), data)
    scale = full["log"][-1]["amp/scale"]
    assert json.loads((tmp_path / "full" / "state.json").read_text())["scaler"]["scale"] == scale
    assert json.loads((tmp_path / "half" / "state.json").read_text())["scaler"]["scale"] == scale
    _assert_same_run(tmp_path / "full", tmp_path / "half", ("G.safetensors", "D.safetensors", "state.safetensors"))


@pytest.mark.parametrize("switch", ["sca", "agm", "lesion_masks"])
def test_ablation_switches_train_are_recorded_and_shown(tmp_path, space, switch, capsys):
    from drgan.cli import cli
    from drgan.cli.common import run_command
    from drgan.nn import SCA, AdaIN, DRGANGenerator

    report = train_gan(options(tmp_path, space, max_steps=1, **{switch: False}), PhantomSet(2))
    assert all(np.isfinite(v) for v in report["log"][-1].values())
    cfg = read_run(tmp_path / "run").cfg
    assert getattr(cfg, switch) is False and all(getattr(cfg, s) for s in ("sca", "agm", "lesion_masks") if s != switch)
    g = DRGANGenerator(cfg, "global").eval()
    cond, z = PhantomSet(2)[1]["cond"][None], torch.randn(2, CFG.z_dim)
    cond = torch.nn.functional.avg_pool2d(cond, 2).expand(2, -1, -1, -1)
    with torch.no_grad():
        out, _ = g(cond, z, 0)
        if switch == "sca":
            assert not any(isinstance(m, SCA) for m in g.modules())
        elif switch == "agm":  # the grading vector has no effect
            assert g.mapping is None and not any(isinstance(m, AdaIN) for m in g.modules())
            assert torch.equal(out, g(cond, torch.randn(2, CFG.z_dim), 0)[0])
        else:  # the lesion channels have no effect
            assert torch.equal(out, g(torch.cat([cond[:, :2], torch.rand_like(cond[:, 2:])], 1), z, 0)[0])
    assert run_command(cli, args=["info", "--run", str(tmp_path / "run")], prog_name="drgan") == 0
    assert f"ablations: no {switch.replace('_', ' ')}" in capsys.readouterr().out


@pytest.mark.parametrize("damage, message", [
    (lambda m: m.pop("rng"), r"damaged training state \(missing or invalid: rng\)"),
    (lambda m: m.update(step=-1), r"missing or invalid: step"),
    (lambda m: m.update(next_batch=9999), r"next_batch 9999 of an epoch of 2 batches"),  # looped forever
    (lambda m: m.update(world_size=4, next_batch=3), r"saved with 4 process\(es\), resumed with 1"),
    (lambda m: m["optimizer_G"].update(param_groups=[]), r"damaged training state \(ValueError"),
])
def test_hand_damaged_state_is_one_error(tmp_path, space, damage, message):
    data, run = PhantomSet(4), tmp_path / "run"
    train_gan(options(tmp_path, space, max_steps=1), data)
    meta = json.loads((run / "state.json").read_text())
    damage(meta)
    (run / "state.json").write_text(json.dumps(meta))
    with pytest.raises(DrganError, match=message):
        train_gan(GanOptions(resume=str(run), max_steps=2), data)


def test_resume_after_a_kill_logs_each_step_once(tmp_path, space, monkeypatch):
    """Killed after step 3 with the checkpoint of step 2: TensorBoard shows steps 1..4 once each
    (the checkpoint's own step 2 kept, the lost step 3 replaced by the resumed run's)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data, run = PhantomSet(10), tmp_path / "run"
    save = gan.GanTrainer.save_checkpoint
    monkeypatch.setattr(gan.GanTrainer, "save_checkpoint", lambda self: save(self) if self.step <= 2 else None)
    train_gan(options(tmp_path, space, max_steps=3, checkpoint_every=2), data)  # as if killed after step 3
    monkeypatch.undo()
    # Event files are read in name order: <seconds>.<host>.<pid>.<writer count>. A resume is a new
    # process in a later second; here the same process must not resume within the same second,
    # where a writer count past 9 (10 < 9 as text) would order the files backwards.
    time.sleep(1.01 - time.time() % 1)
    train_gan(GanOptions(resume=str(run), max_steps=4), data)
    acc = EventAccumulator(str(run / "logs"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/G_total")] == [1, 2, 3, 4]


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # TensorBoard's writer, left running
def test_a_failed_new_run_leaves_its_folder_as_given(tmp_path, space, monkeypatch, lock_holder):
    """A folder the user made (empty) stays, emptied, however often a run fails in it; one the run
    made goes; a run refused by another process's lock touches nothing of it."""
    from drgan.training.logger import RunLogger

    def fail(*args, **kwargs):
        raise DrganError("disk gone")

    monkeypatch.setattr(RunLogger, "scalars", fail)  # after run.json and logs/ are written
    given = tmp_path / "mine"
    given.mkdir()
    for _ in range(2):
        with pytest.raises(DrganError, match="disk gone"):
            train_gan(options(tmp_path, space, out=str(given), max_steps=1), PhantomSet(4))
        assert given.is_dir() and list(given.iterdir()) == []
    made = tmp_path / "made"
    with pytest.raises(DrganError, match="disk gone"):
        train_gan(options(tmp_path, space, out=str(made), max_steps=1), PhantomSet(4))
    assert not made.exists()
    other = tmp_path / "other"
    lock_holder(other)  # another process's new run: it writes run.json once this one has looked
    check_out = runs.check_out

    def looked(out, *args):
        found = check_out(out, *args)
        (out / "run.json").write_text("{}")
        return found

    monkeypatch.setattr(runs, "check_out", looked)
    with pytest.raises(DrganError, match="in use by another drgan process"):
        train_gan(options(tmp_path, space, out=str(other), max_steps=1), PhantomSet(4))
    assert (other / "run.json").read_text() == "{}"


def test_resume_into_a_folder_it_cannot_write_trains_no_step(tmp_path, space, monkeypatch):
    """Before: the steps were trained, then the checkpoint (or TensorBoard's writer thread, with a
    traceback) failed, and the steps were lost."""
    import os

    run = tmp_path / "run"
    train_gan(options(tmp_path, space, max_steps=1), PhantomSet(4))
    access = os.access
    for folder in (run, run / "logs"):
        monkeypatch.setattr("drgan.io.os.access", lambda p, mode, f=folder: Path(p) != f and access(p, mode))
        with pytest.raises(DrganError, match=f"^{folder}: cannot write \\({folder} is not writable\\)$"):
            train_gan(GanOptions(resume=str(run), max_steps=2), PhantomSet(4))
        assert json.loads((run / "state.json").read_text())["step"] == 1


def test_the_grader_as_perceptual_network_says_why_only_when_auto_chose_it(tmp_path):
    from drgan.training.losses import describe_perceptual, torchvision_weights_path

    space = str(tmp_path / "grader" / "grading_space.safetensors")
    assert describe_perceptual("grader", None, space, auto=False) == f"perceptual loss: the grader of {tmp_path / 'grader'}"
    assert describe_perceptual("grader", None, space, auto=True) == (
        f"perceptual loss: the grader of {tmp_path / 'grader'} (no VGG-19 weights given or at {torchvision_weights_path()})")


def test_a_dataset_without_vessel_masks_is_refused_before_any_step(tmp_path, space):
    """Missing masks read as zeros: without vessel masks the generator would learn to ignore its
    conditions; the trainer refuses such a dataset and leaves no run folder."""
    import shutil

    from drgan.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", count=6, size=64, seed=0)
    for folder in (data / "masks").iterdir():
        (folder / "vessel.png").unlink()
    with pytest.raises(DrganError, match=r"no training image has a vessel mask \(masks/<id>/vessel.png\)"):
        train_gan(options(tmp_path, space, data=str(data), max_steps=1))
    assert not (tmp_path / "run").exists()
    shutil.rmtree(data / "masks")
    with pytest.raises(DrganError, match="no training image has a vessel mask"):
        train_gan(options(tmp_path, space, data=str(data), max_steps=1))


def test_grades_absent_from_the_training_images_are_named(tmp_path, space, capsys):
    from drgan.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", count=6, size=64, seed=0)
    rows = (data / "labels.csv").read_text().splitlines()
    (data / "labels.csv").write_text("\n".join([rows[0]] + [f"{r.split(',')[0]},2,{r.split(',')[2]}" for r in rows[1:]]) + "\n")
    train_gan(options(tmp_path, space, data=str(data), max_steps=1))
    assert (f"warning: {data}: no training image of grade(s) 0, 1, 3, 4: the generator learns nothing of them "
            "(train on every grade you will synthesize)\n") in capsys.readouterr().err


def test_training_images_without_lesion_masks_are_named(tmp_path, space, capsys):
    """A grades-only release (EyePACS, APTOS): the generator would draw lesions from the grading
    vector alone; a dataset with its lesion masks gets no warning."""
    import shutil

    from drgan.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", count=10, size=64, seed=0)
    train_gan(options(tmp_path, space, data=str(data), max_steps=1))
    assert "lesion mask" not in capsys.readouterr().err
    for folder in (data / "masks").iterdir():
        for name in ("ma", "he", "ex", "se", "laser", "membrane"):
            (folder / f"{name}.png").unlink(missing_ok=True)
    shutil.rmtree(tmp_path / "run")
    train_gan(options(tmp_path, space, data=str(data), max_steps=1))
    rows = [r.split(",") for r in (data / "labels.csv").read_text().splitlines()[1:]]
    diseased = sum(int(grade) > 0 for _, grade, split in rows if split == "train")
    assert diseased > 0
    assert (f"warning: {data}: 0 of the {diseased} training images of grade 1 or more have a lesion mask: the generator "
            "learns lesions from the grading vector rather than from masks") in capsys.readouterr().err


@pytest.mark.parametrize("keep, warned", [
    (lambda i, name: name == "ma", False),   # one lesion kind each is a lesion mask
    (lambda i, name: i < 2, False),          # half of the images: enough
    (lambda i, name: i < 1, True),           # a quarter: warned
])
def test_the_lesion_mask_warning_counts_images_with_any_lesion_mask(tmp_path, space, capsys, keep, warned):
    from drgan.data.format import open_dataset
    from drgan.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", count=10, size=64, seed=0)
    diseased = [s.id for s in open_dataset(data, split="train").samples if s.grade > 0]
    assert len(diseased) == 4 and all(any((data / "masks" / sid / f"{n}.png").is_file() for n in ("ma", "he")) for sid in diseased)
    for i, sid in enumerate(diseased):
        for name in ("ma", "he", "ex", "se", "laser", "membrane"):
            if not keep(i, name):
                (data / "masks" / sid / f"{name}.png").unlink(missing_ok=True)
    train_gan(options(tmp_path, space, data=str(data), max_steps=1))
    assert ("have a lesion mask" in capsys.readouterr().err) == warned


def test_overwrite_refuses_inputs_inside_the_run_it_would_empty(tmp_path, space):
    """--overwrite emptied --out before reading a grading space, an init run or a dataset kept inside it."""
    import shutil

    train_gan(options(tmp_path, space, max_steps=1), PhantomSet(2))
    run = tmp_path / "run"
    kept = sorted(p.name for p in run.iterdir())
    shutil.copy(space, run / "mine.safetensors")
    with pytest.raises(ParameterError) as err:
        train_gan(options(tmp_path, space, grading_space=str(run / "mine.safetensors"), max_steps=1), PhantomSet(2), overwrite=True)
    assert err.value.render(lambda name: f"--{name}") == (f"{run / 'mine.safetensors'}: inside {run}, the folder this run "
                                                           "writes and --overwrite empties; move it out first")
    assert sorted(p.name for p in run.iterdir()) == sorted(kept + ["mine.safetensors"])


def test_epochs_alone_on_resume_lifts_the_runs_step_cap(tmp_path, space):
    """A run started with --max-steps 2 kept that cap on every resume: --resume R --epochs 3 said
    'already trained 4 of 2 steps' and asked for the larger --epochs it had been given."""
    data, run = PhantomSet(4), tmp_path / "run"   # 2 steps per epoch at batch 2
    train_gan(options(tmp_path, space, max_steps=2), data)
    assert train_gan(GanOptions(resume=str(run), max_steps=4), data)["steps"] == 4
    assert train_gan(GanOptions(resume=str(run), epochs=3), data)["steps"] == 6
    with pytest.raises(ParameterError) as err:
        train_gan(GanOptions(resume=str(run), epochs=3), data)
    assert err.value.render(lambda n: f"--{n.replace('_', '-')}") == (
        f"--resume {run}: already at step 6, its limit (--epochs 3 of 2 steps each); give a larger --max-steps or --epochs to continue")
    with pytest.raises(ParameterError, match=r"already at step 6, past its limit of 4 \(epochs 2 of 2 steps each\)"):
        train_gan(GanOptions(resume=str(run), epochs=2), data)
