"""Errors a user can fix. The CLI prints them without a traceback and exits 2."""


class UserError(Exception):
    """Bad input: a recipe key, a data file or line, a path. The message says what to fix."""

    exit_code = 2


class RunFailed(Exception):
    """Something broke while running a correct recipe (exit code 1)."""

    exit_code = 1


class RunStopped(Exception):
    """A callback ended a run on purpose (a pruned search trial, a spent time budget): not a failure.
    The run folder is marked with `status` (e.g. "pruned") and the reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
