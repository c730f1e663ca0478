"""`drgan train grader|gan` / `drgan-train`."""
from __future__ import annotations

import click

from drgan.cli.common import NotYetAvailable


@click.group()
def train() -> None:
    """Train the grader (grading spaces) and the GAN."""


@train.command()
def grader() -> None:
    """ResNet-50 grader and grading spaces."""
    raise NotYetAvailable("drgan train grader")


@train.command()
def gan() -> None:
    """DR-GAN, global or local stage."""
    raise NotYetAvailable("drgan train gan")
