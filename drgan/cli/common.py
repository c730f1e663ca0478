"""What every command shares: bad input becomes one line on stderr and exit code 1; usage
errors (unknown option, missing argument, a value of the wrong type) exit 2; `-h` is help."""
from __future__ import annotations

import click

from drgan.errors import DrganError, ParameterError

DEVICE_HELP = "auto (CUDA when visible, else CPU), cpu, cuda or cuda:N."

# Library parameters whose flag is not the parameter's name with dashes.
_FLAGS = {"checkpoint": "--run", "data_dir": "--data", "init_run": "--init", "fmt": "--format"}


def flag(param: str) -> str:
    """The command-line flag of a library parameter (the one mapping of parameters to flags)."""
    return _FLAGS.get(param, "--" + param.replace("_", "-"))


def run_command(command: click.Command, **kwargs) -> int:
    try:
        command.main(standalone_mode=False, help_option_names=["-h", "--help"], **kwargs)
    except ParameterError as exc:
        click.echo(f"error: {exc.render(flag)}", err=True)
        return exc.exit_code
    except DrganError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2 if isinstance(exc, click.UsageError) else 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0
