"""`drgan info`: parameters and FLOPs per module of a preset."""
from __future__ import annotations

import click

from drgan.config import PRESETS, STAGES, preset


@click.command()
@click.option("--preset", "preset_name", default="paper-1280", show_default=True, help=f"One of {', '.join(PRESETS)}.")
@click.option("--stage", type=click.Choice(STAGES), default="local", show_default=True, help="Generator stage.")
@click.option("--run", type=click.Path(exists=True, file_okay=False), default=None,
              help="A run folder: its model config (ablations included), stage and training options instead of a preset.")
def info(preset_name: str, stage: str, run: str | None) -> None:
    """Parameters per module and FLOPs per image (attention vs convolutions), without running the model."""
    from drgan.info import format_report, format_run

    if run is None:
        click.echo(format_report(preset(preset_name), preset_name, stage))
        return
    from drgan.runs import read_run

    meta = read_run(run)
    click.echo(format_report(meta.cfg, run, meta.stage))
    click.echo("\n" + format_run({"stage": meta.stage, **meta.options}))
