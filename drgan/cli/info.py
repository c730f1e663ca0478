"""`drgan info`: parameters and FLOPs per module of a preset."""
from __future__ import annotations

import json

import click

from drgan.config import PRESETS, STAGES, preset
from drgan.errors import UsageError


@click.command()
@click.option("--preset", "preset_name", type=click.Choice(list(PRESETS)), default=None, help="Model config.  [default: paper-1280]")
@click.option("--stage", type=click.Choice(STAGES), default=None, help="Generator stage.  [default: local]")
@click.option("--run", "--checkpoint", "run", type=click.Path(exists=True, file_okay=False), default=None,
              help="A run folder: its model config (ablations included), stage and training options instead of a preset "
                   "(a grader run: its network, epochs and validation metrics).")
@click.option("--json", "as_json", is_flag=True, help="Print the parameters and FLOPs (and a run's options) as JSON.")
def info(preset_name: str | None, stage: str | None, run: str | None, as_json: bool) -> None:
    """Parameters per module and FLOPs per image (attention vs convolutions), without running the model."""
    from drgan.info import cost_report, format_report, format_run

    if run is None:
        preset_name = preset_name or "paper-1280"
        report = cost_report(preset(preset_name), preset_name, stage or "local")
        click.echo(json.dumps(report) if as_json else format_report(report))
        return
    if preset_name is not None or stage is not None:  # the run's own config and stage would silently win
        given = "{preset}" if preset_name is not None else "{stage}"
        raise UsageError(f"{{run}} {run}: the run gives the model and stage; drop " + given)
    from drgan.runs import read_run

    meta = read_run(run)
    if meta.kind == "grader":  # no generator: the grader's size, epochs and validation metrics
        from drgan.info import format_grader, grader_report

        report = grader_report(run)
        click.echo(json.dumps(report) if as_json else format_grader(report) + "\n\n" + format_run(meta.options))
        return
    report = cost_report(meta.cfg, run, meta.stage)
    if as_json:
        click.echo(json.dumps({**report, "options": meta.options}))
        return
    click.echo(format_report(report))
    click.echo("\n" + format_run({"stage": meta.stage, **meta.options}))
