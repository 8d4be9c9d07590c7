"""``videodiff interpolate`` and ``videodiff upscale``: post-processing steps on any video the user has."""

from __future__ import annotations

from typing import Any

import click

from videodiff.cli.options import options_from
from videodiff.settings.post import PostSettings
from videodiff.settings.render import WriteSettings


@click.command("interpolate")
@click.argument("video", type=click.Path(dir_okay=False))
@options_from(PostSettings, only=("interpolate", "interpolate_method", "interpolate_model"))
@click.option(
    "--loop", is_flag=True, help="The video is a closed loop: also make frames between the last and the first."
)
@options_from(WriteSettings, only=("output", "overwrite", "crf", "quiet"))
@click.option("--fps", type=float, default=None, help="Frames per second written (default: the video's times N).")
def interpolate_command(
    video: str, output: str | None, quiet: bool, fps: float | None, loop: bool, **settings: Any
) -> None:
    """Make in-between frames for any video: N-1 between each pair, at N times its frame rate.

    \b
    Example:
      videodiff interpolate clip.mp4 -o smooth.mp4 --interpolate 2                 # optical flow
      videodiff interpolate loop.gif -o smooth.gif --interpolate 3 --loop --interpolate-method blend
      videodiff interpolate clip.mp4 -o slow.mp4 --interpolate 4 --fps 8 --interpolate-method rife \\
        --interpolate-model flownet.pkl                                           # 4x slow motion
    """
    from videodiff.errors import UserError
    from videodiff.post.files import interpolate_video

    if output is None:
        raise UserError("-o/--output is needed: the file to write (.mp4/.gif/.webm, or a folder of PNG frames)")
    written, clip = interpolate_video(
        video, output, settings["interpolate"], settings["interpolate_method"], loop=loop,
        model=settings["interpolate_model"], fps=fps, crf=settings["crf"], overwrite=settings["overwrite"],
    )  # fmt: skip
    if not quiet:
        click.echo(f"wrote {written}: {clip.frames.shape[0]} frames, {clip.fps:g} fps")


@click.command("upscale")
@click.argument("video", type=click.Path(dir_okay=False))
@options_from(PostSettings, only=("upscale", "upscale_factor"))
@options_from(WriteSettings, only=("output", "overwrite", "crf", "quiet"))
def upscale_command(video: str, output: str | None, quiet: bool, **settings: Any) -> None:
    """Make every frame of any video larger: with an upscaler model file (tiled), or Lanczos.

    \b
    Example:
      videodiff upscale clip.mp4 -o big.mp4 --upscale-factor 2                      # Lanczos
      videodiff upscale clip.mp4 -o big.mp4 --upscale realesr-general-x4v3.pth       # the model's 4x
      videodiff upscale clip.mp4 -o big.mp4 --upscale RealESRGAN_x4plus.pth --upscale-factor 2
    """
    from videodiff.errors import UserError
    from videodiff.post.files import upscale_video

    if output is None:
        raise UserError("-o/--output is needed: the file to write (.mp4/.gif/.webm, or a folder of PNG frames)")
    written, clip = upscale_video(
        video, output, settings["upscale"], settings["upscale_factor"], crf=settings["crf"],
        overwrite=settings["overwrite"],
    )  # fmt: skip
    if not quiet:
        frames, height, width = clip.frames.shape[:3]
        click.echo(f"wrote {written}: {frames} frames, {width}x{height}")
