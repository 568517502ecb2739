"""Errors a user can fix. The CLI prints them without a traceback and exits 2."""


class UserError(Exception):
    """Bad input: a recipe key, a data file or line, a path. The message says what to fix."""

    exit_code = 2


class RunFailed(Exception):
    """Something broke while running a correct recipe (exit code 1)."""

    exit_code = 1
