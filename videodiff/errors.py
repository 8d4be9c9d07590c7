"""The one exception type for mistakes a user can fix.

The CLI catches :class:`UserError` once and prints its message as a single line
with exit status 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input, a missing file, a setting that cannot work: the message says what to do."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``timeout``, a container stop) as an exception: the same cleanup as Ctrl-C runs.

    The CLI installs the handler that raises it; code that keeps partial results (a batch) may set
    ``kept`` on the interrupt it re-raises, a line saying what was kept.
    """
