"""The exception types for bad input: the CLI prints their message as one line and exits 1."""
from __future__ import annotations

import re
from typing import Callable, Iterable

_FIELD = re.compile(r"\{([a-z][a-z0-9_]*)\}")


class DrganError(Exception):
    """A user-facing error: the message names the culprit (file, option, value) and the reason."""

    exit_code = 1


class ParameterError(DrganError):
    """A bad parameter value. The message names parameters as `{name}` fields: a Python caller
    reads the parameter (`count must be >= 1`), the command line reads its flag (`--count`)."""

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.render(lambda name: name))

    @property
    def params(self) -> list[str]:
        return _FIELD.findall(self.template)

    def render(self, name_of: Callable[[str], str]) -> str:
        return _FIELD.sub(lambda m: name_of(m.group(1)), self.template)


class UsageError(ParameterError):
    """A required option missing, two options that exclude each other ("give exactly one of"), one
    that needs another, or a malformed value: a usage error, exit 2, as click gives for the options
    it checks itself."""

    exit_code = 2


def name_list(names: Iterable[str], first: int = 3) -> str:
    """Names for a one-line message: a short list whole, a long one as its count and first few."""
    names = list(names)
    if len(names) <= first:
        return ", ".join(names)
    return f"{len(names)} names ({first_names(names, first)})"


def first_names(names: list[str], first: int = 3) -> str:
    """The first few of `names`, "..." after them when there are more (where the count is said beside)."""
    return ", ".join(names[:first]) + (", ..." if len(names) > first else "")
