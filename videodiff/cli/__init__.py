"""The command line: parse, build a config, call the package. No logic of its own.

One module per command group: :mod:`.rendering` (render, img2vid, vid2vid), :mod:`.training` (train),
:mod:`.models` (convert, inspect), :mod:`.datasets` (data), :mod:`.evaluation` (eval shapes) with
:mod:`.long_eval` (eval long, travel, sweep), :mod:`.bench` (bench), :mod:`.serving` (serve);
:mod:`.group` holds the click group and how errors and interrupts end a command, :mod:`.options`
the options made from the settings dataclasses. This module registers the commands and holds :func:`main`.
"""

from __future__ import annotations

import sys

import click

from videodiff import coldstart
from videodiff.cli.bench import bench_cache, bench_coldstart, bench_diffusers, bench_group, bench_levers, bench_long
from videodiff.cli.datasets import data, data_shapes
from videodiff.cli.evaluation import eval_group, eval_interp, eval_shapes, eval_upscale
from videodiff.cli.group import (
    EXIT_USER_ERROR,
    KEPT_ON_INTERRUPT,
    Group,
    Interrupted,
    OneLineError,
    cli,
    sigterm_as_interrupt,
)
from videodiff.cli.long_eval import eval_long, eval_sweep, eval_travel
from videodiff.cli.models import convert, inspect
from videodiff.cli.options import CONFIG_OPTION, given, options_from, parse_motion
from videodiff.cli.postprocess import interpolate_command, upscale_command
from videodiff.cli.rendering import img2vid, render, render_one, vid2vid
from videodiff.cli.serving import SERVE_OPTIONS, serve
from videodiff.cli.training import train
from videodiff.errors import UserError

__all__ = [
    "CONFIG_OPTION",
    "EXIT_USER_ERROR",
    "KEPT_ON_INTERRUPT",
    "SERVE_OPTIONS",
    "bench_cache",
    "bench_coldstart",
    "bench_diffusers",
    "bench_group",
    "bench_levers",
    "bench_long",
    "Group",
    "Interrupted",
    "OneLineError",
    "cli",
    "convert",
    "data",
    "data_shapes",
    "eval_group",
    "eval_interp",
    "eval_long",
    "eval_shapes",
    "eval_sweep",
    "eval_travel",
    "eval_upscale",
    "given",
    "img2vid",
    "inspect",
    "interpolate_command",
    "main",
    "options_from",
    "parse_motion",
    "render",
    "render_one",
    "run",
    "serve",
    "sigterm_as_interrupt",
    "train",
    "upscale_command",
    "vid2vid",
]

for _command in (render, img2vid, vid2vid, train, convert, inspect, data, eval_group, bench_group, serve):
    cli.add_command(_command)
cli.add_command(interpolate_command)
cli.add_command(upscale_command)
for _command in (eval_long, eval_travel, eval_sweep, eval_interp):
    eval_group.add_command(_command)


def main() -> None:
    coldstart.install()  # import only what runs (VIDEODIFF_EAGER_IMPORTS=1 turns it off)
    try:
        cli.main(prog_name="videodiff")
    except UserError as exc:  # raised outside a command (should not happen, but never show a traceback)
        click.echo(f"videodiff: error: {exc}", err=True)
        sys.exit(EXIT_USER_ERROR)


def run() -> None:
    """The ``videodiff`` program: :func:`main`, then the process ends without the interpreter's teardown
    (:func:`videodiff.coldstart.exit_now`) once the command has returned. :func:`main` alone (for a
    caller in its own process) exits through ``SystemExit`` as usual."""
    try:
        main()
    except SystemExit as exc:
        coldstart.exit_now(exc.code)  # returns only where the usual exit is needed
        raise


if __name__ == "__main__":
    run()
