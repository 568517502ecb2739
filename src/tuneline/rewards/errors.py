"""The one error graders raise for a fixable mistake in a grader definition or a data row."""

from __future__ import annotations

from ..errors import UserError


class GraderError(UserError, ValueError):
    """A ValueError (what callers of check_specs catch) that is also a UserError, so the command
    line prints the message, which names the key path and the fix, without a traceback."""
