"""Notices and progress for people: one logger, ``videodiff``, that the CLI prints to stderr.

Library code calls :func:`notice` for anything a user should see (a padded frame size, a truncated prompt, a
fallback); ``-q`` silences notices but not errors. Notices ``about`` one subject (the prompt) said inside
:func:`gathered` are held and said together, as one message. :class:`Progress` shows done/total and the
time left for each stage of a long job (``eval shapes``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

logger = logging.getLogger("videodiff")

# the notices held by the innermost gathered() scope: (subject, message), in order; None outside one
_held: ContextVar[list[tuple[str, str]] | None] = ContextVar("videodiff_held_notices", default=None)


def notice(message: str, *, about: str | None = None) -> None:
    """Tell the user something they should know but that is not an error.

    ``about`` names its subject (``"the prompt"``): inside :func:`gathered` the notices about one subject are
    held and said as one message; outside one, at once.
    """
    held = _held.get() if about else None
    if held is None:
        logger.warning(message)
    elif (about, message) not in held:
        held.append((about, message))


def merged(held: list[tuple[str, str]]) -> list[str]:
    """One message per subject: a lone notice as it is; several under a headline, one per line."""
    subjects: dict[str, list[str]] = {}
    for about, message in held:
        subjects.setdefault(about, []).append(message)
    return [
        notes[0] if len(notes) == 1 else f"{len(notes)} notes on {about}:" + "".join(f"\n  - {n}" for n in notes)
        for about, notes in subjects.items()
    ]


def say_held() -> None:
    """Say the notices held so far (before the long part of a job: what it will do is known by then)."""
    held = _held.get()
    if held:
        messages = merged(held)
        held.clear()
        for message in messages:
            logger.warning(message)


@contextlib.contextmanager
def gathered() -> Iterator[None]:
    """Hold the notices ``about`` a subject said inside, and say them at the end (or at :func:`say_held`), those
    about one subject as one message. Inside another ``gathered`` scope, the outer one holds them."""
    if _held.get() is not None:
        yield
        return
    token = _held.set([])
    try:
        yield
        say_held()
    except Exception:  # an error still says what was held (it may explain it); an interrupt does not
        say_held()
        raise
    finally:
        _held.reset(token)


F = TypeVar("F", bound=Callable[..., Any])


def gathering(func: F) -> F:
    """``func`` run inside :func:`gathered`."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        with gathered():
            return func(*args, **kwargs)

    return run  # type: ignore[return-value]


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """One stage's progress on stderr: ``stage: done/total unit``, the time so far and the time left.

    On a terminal (stderr a TTY) one line redrawn in place (a tqdm bar: notices go above it); otherwise plain
    lines through the logger, at every tenth of ``total``, at least every ``every`` seconds, and at the end.
    Nothing when notices are off (``-q``) or ``total`` is 0. Use as a context manager, :meth:`update` per item.
    """

    def __init__(
        self,
        stage: str,
        total: int,
        unit: str = "videos",
        *,
        every: float = 30.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.stage, self.total, self.unit, self.every = stage, int(total), unit, every
        self.clock = clock or time.monotonic
        self.done, self.start = 0, self.clock()
        self.last_said, self.next_tenth = self.start, 1
        self.shown = self.total > 0 and logger.isEnabledFor(logging.WARNING)
        self.bar = None
        if self.shown and _is_terminal(sys.stderr):
            from tqdm import tqdm

            columns, lines = _terminal_size(sys.stderr)
            self.bar = tqdm(  # the size asked once: a terminal that reports none gets 80x24, not a hidden bar
                ncols=columns,
                nrows=lines,
                total=self.total,
                file=sys.stderr,
                desc=f"videodiff: {stage}",
                bar_format="{desc}: {n_fmt}/{total_fmt} " + unit + ", {remaining} left ({elapsed} so far) |{bar:10}|",
            )

    def update(self, n: int = 1) -> None:
        """``n`` more items done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        if not self.shown:
            return
        now = self.clock()
        tenth = self.done * 10 >= self.next_tenth * self.total
        if self.done >= self.total or tenth or now - self.last_said >= self.every:
            while self.next_tenth * self.total <= self.done * 10:
                self.next_tenth += 1
            self.last_said = now
            logger.warning(self.line(now))

    def line(self, now: float | None = None) -> str:
        """``stage: 20/192 videos, 1:40 so far, about 14:20 left``."""
        elapsed = (now if now is not None else self.clock()) - self.start
        head = f"{self.stage}: {self.done}/{self.total} {self.unit}, {_clock(elapsed)}"
        if self.done >= self.total:
            return head + " in all"
        left = elapsed / self.done * (self.total - self.done) if self.done else None
        return head + " so far, " + (f"about {_clock(left)} left" if left is not None else "time left not known yet")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _terminal_size(stream: Any) -> tuple[int, int]:
    """``(columns, lines)`` of the terminal ``stream`` is on; 80x24 for a size of 0 (some ptys report that)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return 80, 24
    return size.columns or 80, size.lines or 24


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed, or a stand-in without isatty
        return False


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
