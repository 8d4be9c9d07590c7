"""``videodiff train``: fine-tune the temporal layers (or more) on clips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from videodiff.cli.options import given, options_from
from videodiff.config import TrainConfig


@click.command()
@options_from(TrainConfig)  # help and the environment variable from each field's metadata
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML with any of these settings (see configs/train/); the command line wins.",
)
@click.pass_context
def train(ctx: click.Context, config_file: str | None, **_: Any) -> None:
    """Fine-tune the temporal layers (or more) on your own clips.

    \b
    Example:
      videodiff train --model ./sd15 --motion-module ./motion-v2 --data clips/ --output runs/waves \\
          --frames 16 --stride 4 --resolution 256 --steps 2000 --trainable motion
      videodiff train --data data/shapes --output runs/shapes --resolution 64 --steps 200   # the built-in model
      # (keeps its motion prior: render with --motion-module runs/shapes/motion_module)
      videodiff train --distill lcm --data data/shapes --output runs/lcm --resolution 64 --stride 1   # 4-step student
      videodiff data shapes --out data/blobs --count 200 --maps --paths   # clips with blob maps beside them
      videodiff train --controlnet --data data/blobs/manifest.jsonl --output runs/blobs --resolution 64 \\
          --stride 1 --cache-latents   # a ControlNet: render --controlnet runs/blobs/controlnet --control MAPS
    Several GPUs: accelerate launch -m videodiff train ...
    """
    from videodiff.config import TRAIN_FIELD_NAMES, load_config_file, merge
    from videodiff.log import setup_cli_logging

    from_file = load_config_file(config_file, TRAIN_FIELD_NAMES) if config_file else {}
    command_line = given(ctx, ParameterSource.COMMANDLINE)
    command_line.pop("config_file", None)
    config = merge(given(ctx, ParameterSource.ENVIRONMENT), from_file, command_line, cls=TrainConfig).validate()
    setup_cli_logging(config.quiet)
    from videodiff.training.run import train as run_train  # torch (seconds, 300 MB): only once the flags are valid

    run = run_train(config)
    click.echo(str(Path(run).resolve()))  # absolute, as render prints its output
