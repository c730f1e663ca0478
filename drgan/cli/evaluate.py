"""`drgan evaluate fid|swd|grading` and `drgan experiment augment`."""
from __future__ import annotations

import click

from drgan.cli.common import NotYetAvailable


@click.group()
def evaluate() -> None:
    """Fidelity (FID, SWD) and grading metrics."""


@evaluate.command()
def fid() -> None:
    """Frechet Inception Distance between two image folders."""
    raise NotYetAvailable("drgan evaluate fid")


@click.group()
def experiment() -> None:
    """Experiments of the paper."""


@experiment.command()
def augment() -> None:
    """Grader trained on real vs real + synthetic data."""
    raise NotYetAvailable("drgan experiment augment")
