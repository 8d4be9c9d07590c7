"""Notices for people: one logger, ``videodiff``, that the CLI prints to stderr.

Library code calls :func:`notice` for anything a user should see (a padded frame
size, a truncated prompt, a fallback); ``-q`` silences notices but not errors.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("videodiff")


def notice(message: str) -> None:
    """Tell the user something they should know but that is not an error."""
    logger.warning(message)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (test runners swap it), not the one at set-up."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        """Through tqdm's ``write``: a notice during a progress bar goes above it, not into its line."""
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - as logging's own handlers do
            self.handleError(record)


def setup_cli_logging(quiet: bool = False) -> None:
    """Print notices as ``videodiff: message`` lines on stderr (used by the CLI only)."""
    for handler in list(logger.handlers):
        if getattr(handler, "_videodiff_cli", False):
            logger.removeHandler(handler)
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("videodiff: %(message)s"))
    handler._videodiff_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.INFO)
    logger.propagate = False
