"""`drgan demo`: the embedded default, end to end on phantom data."""
from __future__ import annotations

from pathlib import Path

import click

from drgan.cli.common import DEVICE_HELP, resumes_on_rerun


@click.command()
@click.option("--out", default="out/demo", show_default=True, type=click.Path(), help="Output folder.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.option("--quick", is_flag=True, help="Seconds-long smoke run of every stage (tiny sizes).")
def demo(out: str, device: str, quick: bool) -> None:
    """Phantom data, short grader + GAN training, balanced synthesis, contact sheet, report."""
    from drgan.demo import FIRST_STAGE, done_file, run_demo
    from drgan.io import check_writable_dir
    from drgan.runtime import resolve_device

    resolve_device(device)  # a bad name stops before the phantom data is rendered
    check_writable_dir(out)  # before minutes of training
    resumes_on_rerun(done_file(Path(out), FIRST_STAGE, 0), "finished stages are reused")  # once one is
    run_demo(out, device=device, quick=quick, log=click.echo)
