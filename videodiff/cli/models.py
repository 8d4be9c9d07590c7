"""``videodiff convert`` and ``inspect``: motion-module files between layouts, and what a checkpoint is."""

from __future__ import annotations

import click


@click.command()
@click.argument("input_path", metavar="INPUT")
@click.argument("output_path", metavar="OUTPUT")
@click.option(
    "--to",
    "to",
    type=click.Choice(["diffusers", "original"]),
    required=True,
    help="diffusers: a MotionAdapter folder; original: an AnimateDiff-layout .safetensors.",
)
@click.option("--motion-config", help="Override version detection: v1, v2, v3 or a MotionAdapter config.json.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT.")
@click.option(
    "--default",
    "defaults",
    multiple=True,
    metavar="KEY=VALUE",
    help="Record a render default in the folder's videodiff.json (steps, scheduler, timestep_spacing, "
    "guidance, ...); repeatable.",
)
def convert(
    input_path: str, output_path: str, to: str, motion_config: str | None, overwrite: bool, defaults: tuple[str, ...]
) -> None:
    """Convert a motion module between the diffusers and the original AnimateDiff layouts.

    \b
    Example:
      videodiff convert mm_sd_v15_v2.ckpt motion-v2/ --to diffusers
      videodiff convert motion-v2/ mm_v2.safetensors --to original
      videodiff convert animatediff_lightning_4step_diffusers.safetensors lightning-4step/ --to diffusers \\
        --default steps=4 --default scheduler=euler --default timestep_spacing=trailing --default guidance=1
    """
    from videodiff.config import parse_defaults
    from videodiff.log import setup_cli_logging
    from videodiff.weights.motion_formats import convert_motion_module

    setup_cli_logging()
    recorded = parse_defaults(defaults)  # before any weights are read
    out = convert_motion_module(input_path, output_path, to, motion_config, overwrite=overwrite, defaults=recorded)
    click.echo(str(out))


@click.command()
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect(path: str, as_json: bool) -> None:
    """Say what a checkpoint file or folder is, without building a model.

    \b
    Example:
      videodiff inspect mm_sd_v15_v2.ckpt
    """
    import json

    from videodiff.weights.inspect import describe

    info = describe(path)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    for key, value in info.items():
        click.echo(f"{key:>18}: {value}")
