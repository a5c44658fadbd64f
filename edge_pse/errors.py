"""The one exception type the CLI turns into a clear message and a non-zero exit (no traceback)."""


class EdgePseError(Exception):
    """A user-facing failure: bad input, a missing file, a failed gate. The message is what users read."""

    exit_code = 2
