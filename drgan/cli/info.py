"""`drgan info`: parameters and FLOPs per module of a preset."""
from __future__ import annotations

import click

from drgan.config import PRESETS, STAGES, preset


@click.command()
@click.option("--preset", "preset_name", default="paper-1280", show_default=True, help=f"One of {', '.join(PRESETS)}.")
@click.option("--stage", type=click.Choice(STAGES), default="local", show_default=True, help="Generator stage.")
def info(preset_name: str, stage: str) -> None:
    """Parameters per module and FLOPs per image (attention vs convolutions), without running the model."""
    from drgan.info import format_report

    click.echo(format_report(preset(preset_name), preset_name, stage))
