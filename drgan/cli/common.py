"""What every command shares: bad input becomes one line on stderr and exit code 1; usage
errors (unknown option, missing argument or required option, two options that exclude each other,
a value of the wrong type) exit 2; `-h` is help."""
from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from drgan.config import MAX_BATCH, SEED_MAX
from drgan.errors import DrganError, ParameterError, UsageError

DEVICE_HELP = "auto (CUDA when visible, else CPU), cpu, cuda or cuda:N."

# On the commands that are also console scripts: click keeps a command's help option once made, so
# passing these names to main() alone is not enough once the command has run another way.
HELP_NAMES = {"help_option_names": ["-h", "--help"]}

# Library parameters whose flag is not the parameter's name with dashes.
_FLAGS = {"fmt": "--format"}


def flag(param: str) -> str:
    """The command-line flag of a library parameter (the one mapping of parameters to flags)."""
    return _FLAGS.get(param, "--" + param.replace("_", "-"))


class _BadInputRange:
    """A number outside the option's range is bad input (exit 1, one line), not a usage error;
    the help shows the range as click's own range types do."""

    base: click.ParamType

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = self.base.convert(value, param, ctx)  # not a number at all: a usage error
        try:
            return super().convert(number, param, ctx)  # type: ignore[misc]
        except click.BadParameter:
            name = param.opts[0] if param is not None and param.opts else "value"
            raise DrganError(f"{name} {number}: outside the range {self._describe_range()}") from None  # type: ignore[attr-defined]


class IntRange(_BadInputRange, click.IntRange):
    base = click.INT


# The range of every --batch (experiment augment's starts at 2, for batch normalization) and --seed.
BATCH = IntRange(1, MAX_BATCH)
SEED = IntRange(0, SEED_MAX)


def dataset_folder(positional: str | None, option: str | None) -> str:
    """The dataset of a command that takes `--data DIR` and, as before, a positional DIR."""
    if positional is not None and option is not None and positional != option:
        raise UsageError(f"two datasets given ({positional} and --data {option}): give one")
    folder = option if option is not None else positional
    if folder is None:
        raise click.UsageError("Missing option '--data'.")
    return folder


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM (kill, a job scheduler) as SystemExit(143) while inside: Python's default ends the
    process at once, this lets cleanup (the `finally` that removes a temp folder) run first."""
    def exit_on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_rerun_hint: Callable[[], str] | None = None  # what an interrupt of the running command adds: how a rerun goes on


def resumes_on_rerun(marker: str | Path, kept: str) -> None:
    """Mark the running command as resumed by a rerun: an interrupt then says so, and what is kept,
    once the file `marker` that claims its output folder exists (a command stopped before it
    claimed the folder, or one that removed it as it found it, leaves nothing to resume)."""
    global _rerun_hint
    marker = Path(marker)

    def hint() -> str:
        return f"; rerun the same command to resume ({kept})" if marker.is_file() else ""
    _rerun_hint = hint


def restarts_on_rerun(checkpoint: str | Path) -> None:
    """Mark the running command as a new training run: an interrupt before its first `checkpoint`
    file says that the same command starts it again (the run's folder is removed, or left as given).
    After it, the trainer has named the checkpoint to --resume."""
    global _rerun_hint
    checkpoint = Path(checkpoint)

    def hint() -> str:
        return "" if checkpoint.is_file() else "; no step was checkpointed: rerun the same command to start the run again"
    _rerun_hint = hint


def _resume_hint() -> str:
    return _rerun_hint() if _rerun_hint is not None else ""


def strict_parsing(command: click.Command) -> None:
    """Make `command` and its subcommands refuse an option given twice, or under two of its names
    (`--run R --checkpoint C`), where click keeps the last value without a word; and an empty path
    (`--out ''`), which reads as no option at all where a default stands in for it."""
    parse = command.parse_args

    def parse_args(ctx: click.Context, args: list[str]) -> list[str]:
        try:
            values, _, order = command.make_parser(ctx).parse_args(args=list(args))
        except click.UsageError as exc:  # the parser's own ('--out' without its value) know no command
            exc.ctx = exc.ctx or ctx
            raise
        if any(set(getattr(p, "opts", ())) & set(ctx.help_option_names) for p in order):  # -h: the help, whatever else was typed
            return parse(ctx, args)
        options = [p for p in order if isinstance(p, click.Option) and not (p.multiple or p.count)]
        repeated = [p for p in dict.fromkeys(options) if options.count(p) > 1]
        if repeated:
            names = "/".join(repeated[0].opts + repeated[0].secondary_opts)
            raise UsageError(f"{names} given more than once: give it once")
        for param in command.params:
            if isinstance(param.type, click.Path) and values.get(param.name) == "":
                name = "/".join(param.opts) if isinstance(param, click.Option) else param.human_readable_name.strip("[]")
                raise UsageError(f"{name}: an empty path")
        return parse(ctx, args)

    command.parse_args = parse_args  # type: ignore[method-assign]
    for sub in getattr(command, "commands", {}).values():
        strict_parsing(sub)


# A control character in a message (a path holding a newline) would split the one error line: C0,
# DEL and C1, and the line and paragraph separators that str.splitlines() also breaks at.
_ESCAPES = {c: repr(chr(c))[1:-1] for c in [*range(32), *range(127, 160), 0x2028, 0x2029]}


def _error(message: str) -> None:
    click.echo(f"error: {message.translate(_ESCAPES)}", err=True)


def _report(exc: DrganError) -> int:
    """A drgan error as its one line (parameters named by their flags); its exit code."""
    _error(exc.render(flag) if isinstance(exc, ParameterError) else str(exc))
    return exc.exit_code


def run_script(main: Callable[[], None]) -> int:
    """The entry of a script beside the commands (bench/): bad input as one `error:` line and its
    exit code, Ctrl-C as `aborted` (130), as the commands give them."""
    try:
        main()
    except DrganError as exc:
        return _report(exc)
    except KeyboardInterrupt:
        click.echo("aborted", err=True)
        return 130
    return 0


def _usage(exc: click.UsageError) -> int:
    """A usage error click finds as one `error:` line, as the commands' own are (click prints a
    three-line block), naming where the help is."""
    _error(exc.format_message() + (f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""))
    return 2


def out_of_memory(exc: BaseException) -> str | None:
    """One line for an allocation that failed (torch's CUDA out-of-memory error, its CPU allocator's,
    Python's MemoryError); None for any other error. The allocator's own text says how much."""
    text = str(exc).strip()
    if isinstance(exc, RuntimeError) and "out of memory" not in text and "can't allocate memory" not in text:
        return None
    detail = text.split("DefaultCPUAllocator: ")[-1].split(" Error code")[0]  # drop the enforce-fail prefix
    detail = detail.split(" Of the allocated memory")[0].rstrip(".")          # CUDA: its summary alone
    return f"out of memory{': ' + detail if detail else ''}. A smaller --batch (where the command takes one) needs less."


def run_command(command: click.Command, **kwargs) -> int:
    global _rerun_hint
    _rerun_hint = None
    from drgan.training.interrupts import way_on_told
    way_on_told(reset=True)
    try:
        with terminate_as_exit():  # a killed command cleans up as an interrupted one does
            result = command.main(standalone_mode=False, **HELP_NAMES, **kwargs)
    except DrganError as exc:
        return _report(exc)
    except OSError as exc:  # a file-system failure no check foresaw; without a file name, its reason alone
        _error(f"{exc.filename}: {exc.strerror}" if exc.filename is not None else exc.strerror or str(exc) or type(exc).__name__)
        return 1
    except click.exceptions.Abort:
        if not way_on_told():  # an interrupted trainer's own line says it already
            click.echo("aborted" + _resume_hint(), err=True)
        return 130
    except SystemExit as exc:
        if exc.code == 128 + signal.SIGTERM and not way_on_told():
            click.echo("terminated" + _resume_hint(), err=True)
        raise
    except click.BadParameter as exc:
        if (exc.param is not None and isinstance(exc.param.type, click.Path)  # a missing file, a file for a folder
                and not isinstance(exc, click.MissingParameter)):  # an option not given at all is a usage error
            _error(exc.format_message())  # bad input, not a usage error
            return 1
        return _usage(exc)
    except click.UsageError as exc:
        return _usage(exc)
    except click.ClickException as exc:
        _error(exc.format_message())
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (MemoryError, RuntimeError) as exc:  # after click's: Abort and Exit are RuntimeErrors too
        line = out_of_memory(exc)
        if line is None:
            raise
        _error(line)
        return 1
    # ctx.exit(n) comes back as its code n; what a command's function returns is no exit code
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
