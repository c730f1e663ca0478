"""The `drgan` command line. Each subcommand lives in its own module beside this one."""
from __future__ import annotations

import sys

import click
from tqdm import tqdm

from drgan.cli.common import HELP_NAMES, run_command, strict_parsing
from drgan.cli.data import data, masks, phantom
from drgan.cli.demo import demo
from drgan.cli.evaluate import evaluate, experiment
from drgan.cli.export import export
from drgan.cli.info import info
from drgan.cli.synthesize import synthesize
from drgan.cli.train import train


@click.group(context_settings=HELP_NAMES)
@click.version_option(package_name="drgan")
def cli() -> None:
    """DR-GAN: synthesize diabetic-retinopathy fundus photographs from masks and a grade."""


for command in (info, demo, data, phantom, masks, train, synthesize, export, evaluate, experiment):
    cli.add_command(command)
strict_parsing(cli)
tqdm.monitor_interval = 0  # no monitor thread: Ctrl-C at exit could end in its atexit traceback


def main() -> None:
    sys.exit(run_command(cli))


def train_main() -> None:
    sys.exit(run_command(train, prog_name="drgan-train"))


def synthesize_main() -> None:
    sys.exit(run_command(synthesize, prog_name="drgan-synthesize"))


def export_main() -> None:
    sys.exit(run_command(export, prog_name="drgan-export"))
