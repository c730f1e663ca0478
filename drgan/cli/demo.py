"""`drgan demo`: the embedded default, end to end on phantom data."""
from __future__ import annotations

import click

from drgan.cli.common import NotYetAvailable


@click.command()
@click.option("--out", default="out/demo", show_default=True, help="Output folder.")
def demo(out: str) -> None:
    """Phantom data, short grader + GAN training, balanced synthesis, contact sheet, report."""
    raise NotYetAvailable("drgan demo")
