"""``videodiff render``, ``img2vid`` and ``vid2vid``: one video, or a batch, through the render layer."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from videodiff.batch import MAX_VIDEOS
from videodiff.cli.options import CONFIG_OPTION, given, options_from
from videodiff.config import OUTPUT_FORMATS, InputSettings, RenderConfig
from videodiff.errors import UserError


@click.command()
@click.argument("prompt", required=False)
@options_from(RenderConfig, skip=("prompt", "paste", *(f.name for f in dataclasses.fields(InputSettings))))
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML (or a sidecar .json) with any of these settings; the command line wins.",
)
@click.option(
    "--prompt-file",
    type=click.Path(dir_okay=False),
    help="Render every prompt of a file: text (one per line, # comments) or YAML (a list of prompts "
    "or of mappings with per-item settings).",
)
@click.option("--seeds", help="Render every prompt once per seed: a comma list, e.g. 1,2,3.")
@click.option(
    "--num-videos",
    type=int,
    help=f"Render every prompt with N distinct drawn seeds (a batch renders at most {MAX_VIDEOS} videos).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(list(OUTPUT_FORMATS)),
    help="Format of the names videodiff makes (default mp4; png: a folder of frames).",
)
@click.option("--skip-existing", is_flag=True, help="Skip items whose output and sidecar exist (resume a batch).")
@click.pass_context
def render(ctx: click.Context, config_file: str | None, **_: Any) -> None:
    """Render a video from a text prompt, or a batch from a prompt file and seeds.

    \b
    Example:
      videodiff render "a red circle moving right" --seed 1 -o circle.gif    # the built-in shapes model
      videodiff render "a cat surfing" --frames 16 --seed 1 -o cat.mp4 \\
          --model ./sd15 --motion-module ./motion-v2
    \b
    A batch (one model load; DIR/<item>-<prompt>-<seed>.mp4, default outputs/batch-<file stem>/):
      videodiff render --prompt-file prompts.txt --seeds 1,2 --output clips/ --skip-existing ...
    Several GPUs: accelerate launch -m videodiff render --prompt-file prompts.txt ...
    
    The built-in shapes model (no --model, or --model shapes) knows one grammar, other words are noise to it:
      "a {color} {shape} moving {direction}"
      colors: red, green, blue, yellow, purple, orange, white, cyan
      shapes: circle, square, triangle;  directions: left, right, up, down
      held out of its training: a red circle moving left, a green square moving right,
        a green triangle moving left, a blue circle moving right, a blue triangle moving up,
        a yellow circle moving down, a purple square moving left, a orange triangle moving right,
        a white circle moving up, a cyan square moving down
    """
    from videodiff import batch
    from videodiff.log import notice, setup_cli_logging
    from videodiff.render import render as run_render
    from videodiff.render import resolve_render_config, summary

    command_line = given(ctx, ParameterSource.COMMANDLINE)
    command_line.pop("config_file", None)
    options = {k: command_line.pop(k, None) for k in ("prompt_file", "seeds", "num_videos", "fmt", "skip_existing")}
    environment = given(ctx, ParameterSource.ENVIRONMENT)
    config = resolve_render_config(command_line, config_file, environment)
    setup_cli_logging(config.quiet)
    if any(v is not None for v in options.values()) or batch.launched():
        batch.render_batch(
            config,
            prompt_file=options["prompt_file"],
            seeds=options["seeds"],
            num_videos=options["num_videos"],
            fmt=options["fmt"],
            skip_existing=bool(options["skip_existing"]),
            seed_given="seed" in command_line,
            prompt_given="prompt" in command_line,
            echo=click.echo,
        )
        return
    outcome = run_render(config)
    notice(summary(outcome, config.fps))
    click.echo(str(outcome.output))


def render_one(ctx: click.Context, config_file: str | None, derived: dict[str, Any] | None = None) -> None:
    """img2vid's and vid2vid's one video: settings from the command line, ``--config``, the environment, what the
    input implies (``derived``) and the model; rendered by the render layer, its path printed."""
    from videodiff.log import notice, setup_cli_logging
    from videodiff.render import render as run_render
    from videodiff.render import resolve_render_config, summary

    command_line = given(ctx, ParameterSource.COMMANDLINE)
    command_line.pop("config_file", None)
    config = resolve_render_config(command_line, config_file, given(ctx, ParameterSource.ENVIRONMENT), derived)
    setup_cli_logging(config.quiet)
    outcome = run_render(config)
    notice(summary(outcome, config.fps))
    click.echo(str(outcome.output))


@click.command()
@click.argument("image", required=False)
@click.argument("prompt", required=False)
@options_from(RenderConfig, skip=("prompt", "video", "stride"))
@CONFIG_OPTION
@click.pass_context
def img2vid(ctx: click.Context, image: str | None, prompt: str | None, config_file: str | None, **_: Any) -> None:
    """Animate a still picture: frame 0 is IMAGE, held through sampling; or pin pictures anywhere with --image-at.

    \b
    Example:
      videodiff img2vid red-circle.png "a red circle moving right" --seed 1 -o moving.gif
      videodiff img2vid "a red circle moving right" --image-at 0:left.png --image-at -1:right.png -o across.gif
      videodiff img2vid photo.jpg "a boat on a lake" --model ./sd15 --motion-module ./motion-v2 --strength 0.85
    With --image-at, a single positional argument is the prompt.
    """
    if image is not None and prompt is None and ctx.params.get("image_at"):
        image, prompt = None, image  # `img2vid PROMPT --image-at ...`
    if image is not None and prompt is None:
        raise UserError("no prompt given: pass IMAGE PROMPT (or PROMPT with --image-at FRAME:PATH)")
    if image is not None:
        ctx.params["image_at"] = (f"0:{image}", *(ctx.params.get("image_at") or ()))
        ctx.set_parameter_source("image_at", ParameterSource.COMMANDLINE)
    if prompt is not None:
        ctx.params["prompt"] = prompt
        ctx.set_parameter_source("prompt", ParameterSource.COMMANDLINE)
    ctx.params.pop("image", None)
    render_one(ctx, config_file)


@click.command()
@click.argument("video")
@click.argument("prompt", required=False)
@options_from(RenderConfig, skip=("prompt", "video", "image_at", "anchor", "paste"))
@CONFIG_OPTION
@click.pass_context
def vid2vid(ctx: click.Context, video: str, prompt: str | None, config_file: str | None, **_: Any) -> None:
    """Re-render a clip under a new prompt, keeping its motion: its frames encoded, noised, denoised.

    \b
    Example:
      videodiff vid2vid circle.gif "a blue circle moving right" --strength 0.6 --seed 1 -o blue.gif
      videodiff vid2vid walk.mp4 "a watercolour painting of a walk" --frames 16 --stride 2 --model ./sd15 ...
    The output plays at the clip's frame rate over --stride unless --fps says otherwise.
    """
    from videodiff.media.clips import UnreadableVideo, probe

    ctx.params.update(video=video, prompt=prompt)
    for name in ("video", "prompt"):
        if ctx.params[name] is not None:
            ctx.set_parameter_source(name, ParameterSource.COMMANDLINE)
    stride = ctx.params.get("stride") or 1
    try:
        info = probe(video) if Path(video).is_file() else None
    except UnreadableVideo:
        info = None  # the render layer reads the clip and reports what is wrong with it, in one line
    derived = {"fps": info.fps / stride} if info is not None and info.fps else None
    render_one(ctx, config_file, derived)
