"""`drgan train grader|gan` / `drgan-train`."""
from __future__ import annotations

import json

import click

from drgan.config import PRESETS, STAGES


@click.group()
def train() -> None:
    """Train the grader (grading spaces) and the GAN."""


@train.command()
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False), help="Dataset folder (images/, masks/, labels.csv with train/val splits).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder to write.")
@click.option("--preset", default="paper-1280", show_default=True, type=click.Choice(list(PRESETS)), help="Model config.")
@click.option("--epochs", default=30, show_default=True, type=int, help="Training epochs (paper: 30).")
@click.option("--batch", default=64, show_default=True, type=int, help="Batch size (paper: 64).")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Adam learning rate (paper: 1e-3).")
@click.option("--balanced/--no-balanced", default=False, show_default=True, help="Class-balanced sampling.")
@click.option("--device", default="cpu", show_default=True, help="Torch device (cpu, cuda, cuda:1).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@click.option("--workers", default=0, show_default=True, type=int, help="DataLoader worker processes.")
def grader(data_dir: str, out: str, preset: str, epochs: int, batch: int, lr: float, balanced: bool, device: str, seed: int, workers: int) -> None:
    """ResNet-50 grader and grading spaces."""
    from drgan.data.dataset import FundusDataset
    from drgan.config import preset as get_preset
    from drgan.training.grader import GraderOptions, train_grader

    opts = GraderOptions(preset=preset, epochs=epochs, batch=batch, lr=lr, balanced=balanced, seed=seed, device=device, workers=workers)
    resolution = get_preset(preset).resolution
    train_set = FundusDataset(data_dir, resolution, split="train", augment=True)
    val_set = FundusDataset(data_dir, resolution, split="val")
    report = train_grader(train_set, val_set, out, opts)
    click.echo(f"grader: validation accuracy {report['val_accuracy']:.3f}; grading spaces in {report['grading_space']}")


@train.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Dataset folder (images/, masks/, labels.csv).")
@click.option("--grading-space", type=click.Path(dir_okay=False), help="grading_space.safetensors of `drgan train grader`.")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder to write.")
@click.option("--stage", type=click.Choice(list(STAGES)), help="global: Gm at half resolution; local: Gm + Gl at full.  [default: global]")
@click.option("--init", "init_run", type=click.Path(file_okay=False), help="Global-stage run whose generator the local stage starts from.")
@click.option("--resume", type=click.Path(file_okay=False), help="Run folder to continue exactly (its options hold).")
@click.option("--preset", type=click.Choice(list(PRESETS)), help="Model config.  [default: paper-1280]")
@click.option("--epochs", type=int, help="Epochs of this stage.  [default: 10]")
@click.option("--max-steps", type=int, help="Stop after this many steps in total.")
@click.option("--batch", type=int, help="Per-process batch size.  [default: 16]")
@click.option("--device", help="Torch device; under torchrun 'cuda' takes the local rank's GPU.  [default: cpu]")
@click.option("--seed", type=int, help="Random seed.  [default: 0]")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), help="fp32, bf16 autocast, or fp16 autocast with a gradient scaler.  [default: fp32]")
@click.option("--perceptual", type=click.Choice(["vgg19", "grader", "none"]), help="Perceptual feature network.  [default: vgg19]")
@click.option("--vgg19-weights", type=click.Path(dir_okay=False), help="Local safetensors file with torchvision vgg19 weights.")
@click.option("--gan-loss", type=click.Choice(["bce", "lsgan"]), help="Adversarial loss.  [default: bce]")
@click.option("--channels-last/--no-channels-last", default=None, help="NHWC activations end to end.  [default: on]")
@click.option("--checkpoint-activations", is_flag=True, default=None, help="Recompute the attention blocks in backward (less memory).")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the generator and discriminators.")
@click.option("--workers", type=int, help="DataLoader worker processes.  [default: 0]")
@click.option("--log-every", type=int, help="TensorBoard scalars every K steps.  [default: 50]")
@click.option("--sample-every", type=int, help="Image grid per grade every K steps.  [default: 500]")
@click.option("--checkpoint-every", type=int, help="Checkpoint every K steps.  [default: 1000]")
def gan(data_dir, grading_space, out, init_run, compile_, **given) -> None:
    """DR-GAN, global or local stage (the full objective of the paper's eq. 1)."""
    from drgan.errors import DrganError
    from drgan.training.gan import train_gan
    from drgan.training.options import GanOptions

    given.update(data=data_dir, grading_space=grading_space, out=out, init=init_run, compile=compile_)
    given = {k: v for k, v in given.items() if v is not None}
    if "resume" not in given and "out" not in given:
        raise DrganError("--out RUN is required (or --resume RUN)")
    opts = GanOptions(**given)
    report = train_gan(opts)
    last = report["log"][-1] if report["log"] else {}
    click.echo(f"gan {report['stage']}: {report['steps']} steps; checkpoint in {report['run']}")
    if last:
        click.echo(json.dumps({k: round(v, 4) for k, v in last.items() if k.startswith("loss/")}))
