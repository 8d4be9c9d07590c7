"""The one exception type for mistakes a user can fix.

The CLI catches :class:`UserError` once and prints its message as a single line
with exit status 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input, a missing file, a setting that cannot work: the message says what to do."""
