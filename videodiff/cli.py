"""The command line: parse, build a config, call the package. No logic of its own."""

from __future__ import annotations

import sys
from typing import Any

import click
from click.core import ParameterSource

from videodiff import __version__
from videodiff.config import ATTENTION, DEVICES, DTYPES, NOISE_KINDS, SCHEDULERS
from videodiff.errors import UserError

EXIT_USER_ERROR = 2


class OneLineError(click.ClickException):
    """A user error shown as one line on stderr, exit status 2."""

    exit_code = EXIT_USER_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"videodiff: error: {self.message}", err=True)


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            raise OneLineError(str(exc)) from None
        except click.UsageError as exc:  # bad option values: one line, not usage + hint + error
            if exc.ctx is not None and exc.ctx.command is not self:
                raise OneLineError(exc.format_message()) from None
            raise


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="videodiff")
def cli() -> None:
    """Text-to-video with Stable Diffusion 1.5-family models and AnimateDiff-style motion modules.

    \b
    Example:
      videodiff render "a red circle moving right" --model ./sd15 --motion-module ./motion-v2 -o circle.mp4
    """


def given(ctx: click.Context, source: ParameterSource) -> dict[str, Any]:
    """Parameters set from ``source`` (so defaults never override a config file)."""
    return {k: v for k, v in ctx.params.items() if ctx.get_parameter_source(k) == source}


def _choice_help(names: tuple[str, ...]) -> str:
    return "|".join(names)


@cli.command()
@click.argument("prompt", required=False)
@click.option("--negative", help="Negative prompt (used only with guidance above 1).")
@click.option("--frames", type=int, default=16, show_default=True, help="Number of frames.")
@click.option("--steps", type=int, default=25, show_default=True, help="Denoising steps.")
@click.option("--guidance", type=float, default=7.5, show_default=True, help="Classifier-free guidance scale.")
@click.option("--seed", type=int, help="Random seed (drawn, printed and recorded when omitted).")
@click.option("--height", type=int, help="Frame height, a multiple of 8 (default: the model's).")
@click.option("--width", type=int, help="Frame width, a multiple of 8 (default: the model's).")
@click.option("--fps", type=float, default=8.0, show_default=True, help="Frames per second of the output.")
@click.option(
    "--model",
    envvar="VIDEODIFF_MODEL",
    help="Image model: diffusers folder or hub id [env VIDEODIFF_MODEL].",
)
@click.option(
    "--motion-module",
    envvar="VIDEODIFF_MOTION_MODULE",
    help="MotionAdapter folder or hub id (default: the model's own) [env VIDEODIFF_MOTION_MODULE].",
)
@click.option("--scheduler", default="ddim", show_default=True, help=_choice_help(SCHEDULERS))
@click.option("--noise", default="independent", show_default=True, help=f"Initial noise: {_choice_help(NOISE_KINDS)}.")
@click.option(
    "--noise-alpha",
    type=float,
    default=1.0,
    show_default=True,
    help="Frame correlation strength for mixed/progressive noise (PYoCo's alpha).",
)
@click.option("-o", "--output", help="Output .mp4/.gif/.webm, or a path without extension for PNG frames.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--device", default="auto", show_default=True, help=_choice_help(DEVICES))
@click.option("--dtype", default="auto", show_default=True, help=_choice_help(DTYPES))
@click.option("--attention", default="sdpa", show_default=True, help=_choice_help(ATTENTION))
@click.option("--decode-chunk", type=int, default=16, show_default=True, help="Frames per VAE decode call.")
@click.option("--crf", type=int, default=18, show_default=True, help="MP4/WebM quality (lower is better).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML (or a sidecar .json) with any of these settings; the command line wins.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or notices.")
@click.pass_context
def render(ctx: click.Context, config_file: str | None, **_: Any) -> None:
    """Render a video from a text prompt.

    \b
    Example:
      videodiff render "a red circle moving right" --frames 16 --seed 1 -o circle.gif \\
          --model ./sd15 --motion-module ./motion-v2
    """
    from videodiff.log import setup_cli_logging
    from videodiff.pipelines import render as run_render
    from videodiff.pipelines import resolve_render_config

    command_line = given(ctx, ParameterSource.COMMANDLINE)
    command_line.pop("config_file", None)
    environment = given(ctx, ParameterSource.ENVIRONMENT)
    config = resolve_render_config(command_line, config_file, environment)
    setup_cli_logging(config.quiet)
    outcome = run_render(config)
    click.echo(str(outcome.output))


def main() -> None:
    try:
        cli.main(prog_name="videodiff")
    except UserError as exc:  # raised outside a command (should not happen, but never show a traceback)
        click.echo(f"videodiff: error: {exc}", err=True)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
