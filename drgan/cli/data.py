"""`drgan data validate`, `drgan phantom`, `drgan masks extract`."""
from __future__ import annotations

import click

from drgan.cli.common import NotYetAvailable


@click.group()
def data() -> None:
    """Dataset tools."""


@data.command()
@click.argument("directory", type=click.Path())
def validate(directory: str) -> None:
    """Check every file of a dataset folder."""
    raise NotYetAvailable("drgan data validate")


@click.command()
def phantom() -> None:
    """Render procedural paired retinas (image, masks, grade)."""
    raise NotYetAvailable("drgan phantom")


@click.group()
def masks() -> None:
    """Structural masks from photographs."""


@masks.command()
def extract() -> None:
    """Extract vessel, disc and field-of-view masks from photographs."""
    raise NotYetAvailable("drgan masks extract")
