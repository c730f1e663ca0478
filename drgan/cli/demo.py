"""`drgan demo`: the embedded default, end to end on phantom data."""
from __future__ import annotations

import click


@click.command()
@click.option("--out", default="out/demo", show_default=True, type=click.Path(), help="Output folder.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option("--quick", is_flag=True, help="Seconds-long smoke run of every stage (tiny sizes).")
def demo(out: str, device: str, quick: bool) -> None:
    """Phantom data, short grader + GAN training, balanced synthesis, contact sheet, report."""
    from drgan.demo import run_demo

    run_demo(out, device=device, quick=quick, log=click.echo)
