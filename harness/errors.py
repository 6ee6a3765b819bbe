"""Errors the CLI turns into one line on stderr and an exit code, never a traceback."""


class UserError(Exception):
    """Bad input from the user (spec, flag, data file): exit code 2.

    The message names the field or file, the bad value, what is allowed and,
    where there is one, the fix.
    """

    exit_code = 2


class RunFailed(Exception):
    """A run that started but did not finish (a rank died, training raised): exit code 1."""

    exit_code = 1
