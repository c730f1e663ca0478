"""`drgan synthesize` / `drgan-synthesize`: the main job."""
from __future__ import annotations

import click

from drgan.cli.common import NotYetAvailable


@click.command()
def synthesize() -> None:
    """Generate a balanced augmentation set."""
    raise NotYetAvailable("drgan synthesize")
