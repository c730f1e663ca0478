"""The one exception type for bad input: the CLI prints its message as one line and exits non-zero."""


class DrganError(Exception):
    """A user-facing error: the message names the culprit (file, option, value) and the reason."""

    exit_code = 1
