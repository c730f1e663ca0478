"""`drgan train grader|gan` / `drgan-train`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from drgan.cli.common import DEVICE_HELP, HELP_NAMES, flag, restarts_on_rerun
from drgan.config import MAX_BATCH, PRECISIONS, PRESETS, SEED_MAX, STAGES, preset as get_preset
from drgan.training.options import RESUMABLE_OVERRIDES

RESUMABLE_FLAGS = ", ".join(flag(name) for name in RESUMABLE_OVERRIDES)


@click.group(context_settings=HELP_NAMES)
def train() -> None:
    """Train the grader (grading spaces) and the GAN."""


@train.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Dataset folder (images/, masks/, labels.csv with train/val splits).")
@click.option("--out", type=click.Path(), help="New run folder (an existing run only with --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out.")
@click.option("--resume", type=click.Path(file_okay=False),
              help="Grader run folder to continue from its last checkpoint. Its options and dataset hold; --epochs, --device, --workers and --checkpoint-every may change.")
@click.option("--preset", type=click.Choice(list(PRESETS)), help="Model config.  [default: paper-1280]")
@click.option("--epochs", type=int, help="Training epochs, >= 1 (paper: 30).  [default: 30]")
@click.option("--batch", type=int, help=f"Batch size, 2..{MAX_BATCH} (paper: 64).  [default: 64]")
@click.option("--lr", type=float, help="Adam learning rate, > 0 (paper: 1e-3).  [default: 0.001]")
@click.option("--balanced/--no-balanced", default=None, help="Class-balanced sampling.  [default: no-balanced]")
@click.option("--device", help=DEVICE_HELP + "  [default: auto]")
@click.option("--seed", type=int, help=f"Random seed, 0..{SEED_MAX}.  [default: 0]")
@click.option("--workers", type=int, help="DataLoader worker processes, >= 0.  [default: 0]")
@click.option("--checkpoint-every", type=int, help="Also checkpoint every K steps inside an epoch, >= 1.  [default: 500]")
@click.option("--json", "as_json", is_flag=True, help="Print the result (run, validation metrics per epoch, grading spaces) as JSON.")
def grader(data_dir: str | None, out: str | None, overwrite: bool, resume: str | None, as_json: bool, **given) -> None:
    """ResNet-50 grader and grading spaces; a killed run continues with --resume."""
    from drgan.data.dataset import FundusDataset
    from drgan.errors import UsageError
    from drgan.runs import STATE_JSON, check_out, require_checkpoint, require_kind
    from drgan.training.grader_pretraining import GraderOptions, check_resumable, train_grader

    given = {k: v for k, v in given.items() if v is not None}
    if resume is None:
        if out is None or data_dir is None:
            raise UsageError("--data DIR and --out RUN are required (or --resume RUN)")
        opts = GraderOptions(**given)
        check_out(out, overwrite, "grader")  # before the datasets are opened
        restarts_on_rerun(Path(out) / STATE_JSON)
        resolution = get_preset(opts.preset).resolution
    else:
        if overwrite:
            raise UsageError("--overwrite starts a run over; --resume continues one: give one of them")
        if out is not None and Path(out).resolve() != Path(resume).resolve():
            raise UsageError(f"{{out}} {out}: {{resume}} {resume} continues in its own folder; drop {{out}}")
        info = require_kind(resume, "grader", "resume")
        require_checkpoint(resume)  # before the datasets are opened
        opts = GraderOptions.from_dict({**{k: v for k, v in info.options.items() if k != "trainer"}, **given})
        check_resumable(resume, opts)  # before the datasets are opened
        data_dir = _recorded_data(resume, info.extra, data_dir)
        out, resolution = resume, int(info.extra.get("resolution", get_preset(opts.preset).resolution))
    train_set = FundusDataset(data_dir, resolution, split="train", augment=True)
    val_set = FundusDataset(data_dir, resolution, split="val")
    report = train_grader(train_set, val_set, out, opts, overwrite=overwrite, resume=resume is not None, data=data_dir)
    if as_json:
        click.echo(json.dumps({"run": str(out), **report}))
        return
    click.echo(f"grader: validation accuracy {report['val_accuracy']:.3f}; grading spaces in {report['grading_space']}")


def _recorded_data(run: str, extra: dict, given: str | None) -> str:
    """The dataset a grader run trained on, the one run.json records (train_grader checks it is unchanged)."""
    from drgan.data.labels import LABELS_FILE
    from drgan.errors import DrganError, UsageError

    recorded = extra.get("data")
    if recorded is None:
        raise DrganError(f"{run}: its run.json names no dataset folder (trained from Python without one), so the command line cannot resume it")
    if given is not None and Path(given).resolve() != Path(recorded):
        raise UsageError(f"{{data}} {given}: {{resume}} {run} keeps the run's own dataset ({recorded})")
    labels = Path(recorded) / LABELS_FILE
    if not labels.is_file():
        raise DrganError(f"{labels}: the dataset of {run} is gone; put it back at {recorded} to resume")
    return recorded


@train.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Dataset folder (images/, masks/, labels.csv).")
@click.option("--grading-space", type=click.Path(dir_okay=False), help="grading_space.safetensors of `drgan train grader`.")
@click.option("--out", type=click.Path(), help="New run folder (an existing run only with --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out.")
@click.option("--stage", type=click.Choice(list(STAGES)), help="global: Gm at half resolution; local: Gm + Gl at full.  [default: global]")
@click.option("--init", "init_run", type=click.Path(file_okay=False), help="Global-stage run whose generator the local stage starts from.")
@click.option("--resume", type=click.Path(file_okay=False), help=f"Run folder to continue exactly. Its options hold; these may change: {RESUMABLE_FLAGS}.")
@click.option("--preset", type=click.Choice(list(PRESETS)), help="Model config.  [default: paper-1280]")
@click.option("--epochs", type=int, help="Epochs of this stage, >= 1.  [default: 10]")
@click.option("--max-steps", type=int, help="Train up to this many steps in total, >= 1; past the epochs unless --epochs is given too.")
@click.option("--batch", type=int, help=f"Per-process batch size, 1..{MAX_BATCH}.  [default: 16]")
@click.option("--device", help=DEVICE_HELP + " Under torchrun 'cuda' takes the local rank's GPU.  [default: auto]")
@click.option("--seed", type=int, help=f"Random seed, 0..{SEED_MAX}.  [default: 0]")
@click.option("--precision", type=click.Choice(PRECISIONS), help="fp32, bf16 autocast, or fp16 autocast with a gradient scaler.  [default: fp32]")
@click.option("--perceptual", type=click.Choice(["auto", "vgg19", "grader", "none"]),
              help="Perceptual feature network; auto: VGG-19 (the paper's) when --vgg19-weights is given or torchvision has "
                   "downloaded them ($TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth), else the grader of --grading-space's "
                   "run. The run records the one used.  [default: auto]")
@click.option("--vgg19-weights", type=click.Path(dir_okay=False), help="Local torchvision vgg19 weights (.safetensors or .pth; nothing is downloaded).")
@click.option("--gan-loss", type=click.Choice(["bce", "lsgan"]), help="Adversarial loss.  [default: bce]")
@click.option("--lr", type=float, help="Adam learning rate of G and D, > 0.  [default: 1e-4 (paper)]")
@click.option("--lambda-fm", type=float, help="Weight of feature matching (lambda1), >= 0; 0 removes it.  [default: 10]")
@click.option("--fm-norm", type=click.Choice(["l1", "l2"]), help="Feature-matching distance (l1: pix2pixHD's, whose lambda1 the paper takes).  [default: l1]")
@click.option("--lambda-perceptual", type=float, help="Weight of the perceptual loss (lambda2), >= 0; 0 removes it.  [default: 10]")
@click.option("--lambda-cls", type=float, help="Weight of D's focal grade loss (lambda3), >= 0; 0 removes it.  [default: 1]")
@click.option("--g-cls-weight", type=float, help="Weight of a focal grade loss for G too (ACGAN; not in the paper), >= 0.  [default: 0]")
@click.option("--lambda-l1", type=float, help="Weight of a pixel L1 to the paired image (pix2pix; not in the paper), >= 0.  [default: 0]")
@click.option("--sca/--no-sca", default=None, help="Ablation: --no-sca builds the synthesis blocks without attention.  [default: on]")
@click.option("--agm/--no-agm", default=None, help="Ablation: --no-agm drops the grading vector (instance norm with a learned affine instead of AdaIN).  [default: on]")
@click.option("--lesion-masks/--no-lesion-masks", default=None, help="Ablation: --no-lesion-masks zeroes the lesion channels for G and D.  [default: on]")
@click.option("--ema/--no-ema", default=None, help="Also keep G_ema, a moving average of G, which synthesis then loads (not in the paper).  [default: off]")
@click.option("--channels-last/--no-channels-last", default=None, help="NHWC activations end to end.  [default: on]")
@click.option("--checkpoint-activations", is_flag=True, default=None, help="Recompute the attention blocks in backward (less memory).")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the generator and discriminators.")
@click.option("--workers", type=int, help="DataLoader worker processes, >= 0.  [default: 0]")
@click.option("--log-every", type=int, help="TensorBoard scalars every K >= 1 steps.  [default: 50]")
@click.option("--sample-every", type=int, help="Image grid per grade every K >= 1 steps.  [default: 500]")
@click.option("--checkpoint-every", type=int, help="Checkpoint every K >= 1 steps.  [default: 1000]")
@click.option("--json", "as_json", is_flag=True, help="Print the result (steps, run, last losses) as JSON.")
def gan(data_dir, grading_space, out, overwrite, init_run, compile_, as_json, **given) -> None:
    """DR-GAN, global or local stage (the full objective of the paper's eq. 1)."""
    from drgan.errors import UsageError
    from drgan.runs import STATE_JSON
    from drgan.runtime import torchrun_ranks
    from drgan.training.gan import train_gan
    from drgan.training.options import GanOptions, resume_options, step_limits

    given.update(data=data_dir, grading_space=grading_space, out=out, init=init_run, compile=compile_)
    given = {k: v for k, v in given.items() if v is not None}
    resume = given.pop("resume", None)
    if resume is not None:
        if overwrite:
            raise UsageError("--overwrite starts a run over; --resume continues one: give one of them")
        opts = resume_options(resume, **given)
    elif out is None:
        raise UsageError("--out RUN is required (or --resume RUN)")
    else:
        opts = GanOptions(**{**given, **step_limits(given, GanOptions.epochs, None)})
        restarts_on_rerun(Path(out) / STATE_JSON)
    report = train_gan(opts, overwrite=overwrite)
    if torchrun_ranks().rank != 0:
        return  # rank 0 reports for all the processes of a torchrun job (the losses are their mean)
    last = report["log"][-1] if report["log"] else {}
    losses = {k.removeprefix("loss/"): round(v, 4) for k, v in last.items() if k.startswith("loss/")}
    if as_json:
        click.echo(json.dumps({"stage": report["stage"], "steps": report["steps"], "run": report["run"], "losses": losses}))
        return
    click.echo(f"gan {report['stage']}: {report['steps']} steps; checkpoint in {report['run']}")
    if losses:
        click.echo("losses: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
