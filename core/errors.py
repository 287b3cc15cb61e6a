"""The one exception type for mistakes a user can fix (bad input, bad config, bad flags)."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: the CLI prints it as one line and exits non-zero.

    The message must say what is wrong and where (file, column, rows or config key), so
    that nobody needs a traceback to fix it.
    """
