"""What every command shares: bad input becomes one line on stderr and a non-zero exit."""
from __future__ import annotations

import click

from drgan.errors import DrganError

def run_command(command: click.Command, **kwargs) -> int:
    try:
        command.main(standalone_mode=False, **kwargs)
    except DrganError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


class NotYetAvailable(DrganError):
    """A command whose capability has not landed yet: exit code 2, never a traceback."""

    exit_code = 2

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is not yet available in this version of drgan")
