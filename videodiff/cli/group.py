"""The command group: user errors as one line (exit 2), Ctrl-C and SIGTERM as one line (exit 130/143)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from videodiff import __version__
from videodiff.errors import Terminated, UserError

EXIT_USER_ERROR = 2


class OneLineError(click.ClickException):
    """A user error shown as one line on stderr, exit status 2."""

    exit_code = EXIT_USER_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"videodiff: error: {self.message}", err=True)


class Interrupted(click.ClickException):
    """Ctrl-C (exit 130) or SIGTERM (exit 143): one line saying what was kept, as shells expect."""

    def __init__(self, interrupt: KeyboardInterrupt, command: str | None) -> None:
        kept = getattr(interrupt, "kept", None) or KEPT_ON_INTERRUPT.get(command or "", "nothing was written")
        super().__init__(f"interrupted; {kept}")
        self.exit_code = 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)

    def show(self, file: Any = None) -> None:
        click.echo(f"videodiff: {self.message}", err=True)


# What an interrupted command leaves (all others leave nothing: outputs appear whole or not at all).
KEPT_ON_INTERRUPT = {"train": "checkpoints saved before it are kept (resume with --resume latest)"}


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` while a command runs, so temporary outputs are removed as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except UserError as exc:
            raise OneLineError(str(exc)) from None
        except click.UsageError as exc:  # bad option values: one line, not usage + hint + error
            if exc.ctx is not None and exc.ctx.command is not self:
                raise OneLineError(exc.format_message()) from None
            raise
        except KeyboardInterrupt as exc:
            raise Interrupted(exc, ctx.invoked_subcommand) from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="videodiff")
def cli() -> None:
    """Text-to-video with Stable Diffusion 1.5-family models and AnimateDiff-style motion modules.

    \b
    Example:
      videodiff render "a red circle moving right" -o circle.gif      # the built-in shapes model
      videodiff render "a cat surfing" --model ./sd15 --motion-module ./motion-v2 -o cat.mp4
    """
