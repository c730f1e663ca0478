"""`drgan info`: parameters and FLOPs per module of a preset."""
from __future__ import annotations

import click

from drgan.config import PRESETS, STAGES, preset
from drgan.errors import ParameterError


@click.command()
@click.option("--preset", "preset_name", default=None, help=f"One of {', '.join(PRESETS)}.  [default: paper-1280]")
@click.option("--stage", type=click.Choice(STAGES), default=None, help="Generator stage.  [default: local]")
@click.option("--run", type=click.Path(exists=True, file_okay=False), default=None,
              help="A run folder: its model config (ablations included), stage and training options instead of a preset.")
def info(preset_name: str | None, stage: str | None, run: str | None) -> None:
    """Parameters per module and FLOPs per image (attention vs convolutions), without running the model."""
    from drgan.info import format_report, format_run

    if run is None:
        preset_name = preset_name or "paper-1280"
        click.echo(format_report(preset(preset_name), preset_name, stage or "local"))
        return
    if preset_name is not None or stage is not None:  # the run's own config and stage would silently win
        given = "{preset}" if preset_name is not None else "{stage}"
        raise ParameterError(f"{{run}} {run}: the run gives the model and stage; drop " + given)
    from drgan.runs import read_run

    meta = read_run(run)
    click.echo(format_report(meta.cfg, run, meta.stage))
    click.echo("\n" + format_run({"stage": meta.stage, **meta.options}))
