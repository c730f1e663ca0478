"""`drgan export` / `drgan-export`: ONNX, TensorRT, AOTInductor."""
from __future__ import annotations

import click

from drgan.cli.common import NotYetAvailable


@click.command()
def export() -> None:
    """Export the inference generator."""
    raise NotYetAvailable("drgan export")
