"""``videodiff eval long``, ``eval travel`` and ``eval sweep``: the shapes world beyond one 16-frame clip per setting.

The logic is :mod:`videodiff.shapes.long` and :mod:`videodiff.shapes.sweep`; these commands join the
``eval`` group of :mod:`videodiff.cli.evaluation`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from videodiff.cli.bench import int_list


@contextlib.contextmanager
def _video_lines(stage: str, total: int) -> Iterator[Callable[[str], None]]:
    """An ``echo`` for commands that print one JSON line per video: each line also counts a video done on the
    stage's progress (stderr: done/total and the time left, :class:`videodiff.log.Progress`)."""
    from videodiff.log import Progress, setup_cli_logging

    setup_cli_logging()
    with Progress(stage, total) as progress:

        def echo(line: str) -> None:
            click.echo(line)
            progress.update()

        yield echo


TRAVEL_KEY_NAMES = ("centred", "blend")  # videodiff.shapes.long.TRAVEL_KEYS (tests/test_eval_long.py checks it)


@click.command("long")
@click.argument("settings", nargs=-1)
@click.option("--seeds", callback=int_list, default="1,2,3", show_default=True, metavar="N[,N...]", help="Seeds.")
@click.option("--frames", type=int, default=64, show_default=True)
@click.option("--prompt", default="a red circle moving right", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Also append the JSON lines to this file.")
def eval_long(settings: tuple[str, ...], seeds: tuple[int, ...], frames: int, prompt: str, out: Path | None) -> None:
    """Flicker and seams of long videos per setting on the built-in model, one JSON line per video.

    Each SETTING is key=value[,key=value...] of render settings (default: the model's, also when none
    is given); the videos have --motion 0.6,0. Per video: flicker (mean absolute change between consecutive
    frames, 0-255), seam_ratio (the largest change at a window seam over the median elsewhere), jitter_ratio
    (the same statistic over the steps not at a seam: the model's own jitter), seam_mean_ratio (the mean
    change at seams over the mean elsewhere), presence, colour, shape, the most objects in one frame, the
    direction of each 16-frame stretch and the render time.

    \b
    Example:
      OMP_NUM_THREADS=1 videodiff eval long default free_init=1 noise=mixed --seeds 1,2,3 --frames 64
      videodiff eval long default window_layers=temporal --seeds 1,2,3,4,5,6,7,8
    """
    from videodiff.media.atomic import check_appendable
    from videodiff.shapes.long import run_long_eval

    if out is not None:
        check_appendable(out)
    settings = settings or ("default",)
    with _video_lines("eval long", len(settings) * len(seeds)) as echo:
        run_long_eval(settings, seeds=seeds, frames=frames, prompt=prompt, out=out, echo=echo)


@click.command("travel")
@click.option("--seeds", callback=int_list, default="1,2,3", show_default=True, metavar="N[,N...]", help="Seeds.")
@click.option(
    "--keys",
    type=click.Choice(TRAVEL_KEY_NAMES),
    multiple=True,
    help="Keyframe sets (repeatable; default: both). centred: red held to frame 24, blue from 40; "
    "blend: red at 0, blue at 32.",
)
@click.option("--frames", type=int, default=48, show_default=True)
@click.option("--travel", default="linear", show_default=True, help="How prompts are interpolated between keys.")
def eval_travel(seeds: tuple[int, ...], keys: tuple[str, ...], frames: int, travel: str) -> None:
    """Prompt travel from "a red circle" to "a blue circle" on the built-in model, one JSON line per video.

    Per keyframe set and seed: the colour the detector sees in each frame (r red, b blue, c cyan,
    o orange, y yellow, p purple, g green, - none) and whether the frames before 24 are all red and
    those after 40 all blue.

    \b
    Example:
      OMP_NUM_THREADS=1 videodiff eval travel --seeds 1,2,3,4,5,6,7,8
      videodiff eval travel --keys blend --seeds 1
    """
    from videodiff.shapes.long import run_travel_eval

    keys = keys or TRAVEL_KEY_NAMES
    with _video_lines("eval travel", len(keys) * len(seeds)) as echo:
        run_travel_eval(seeds=seeds, keys=keys, frames=frames, travel=travel, echo=echo)


@click.command("sweep")
@click.argument("settings", nargs=-1, required=True)
@click.option(
    "--combos", type=click.Choice(["all", "heldout", "train"]), default="heldout", show_default=True, help="Prompts."
)
@click.option("--seeds", type=click.IntRange(min=1), default=8, show_default=True, help="Videos per combination.")
@click.option("--first-seed", type=int, default=0, show_default=True, help="Seeds FIRST..FIRST+SEEDS-1 (fresh seeds).")
@click.option("--out", help="Append JSON lines here: one per setting, with every video's detection.")
@click.option("--diff", is_flag=True, help="Also the mean absolute frame difference from the first setting.")
@click.option("--model", envvar="VIDEODIFF_MODEL", help="The model (default: the built-in one) [env VIDEODIFF_MODEL].")
@click.option("--motion-module", help="Other motion modules (e.g. a `videodiff train` run's).")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
    default="auto",
    show_default=True,
    help="Weights and activations: auto is fp16 on a GPU, fp32 on the CPU; bf16 is lossy (see the Benchmarks page).",
)
@click.option(
    "--against",
    help="A JSON-lines --out file of an earlier run: list the videos whose colour, shape, direction or "
    "steadiness changed from its first setting.",
)
def eval_sweep(
    settings: tuple[str, ...],
    combos: str,
    seeds: int,
    first_seed: int,
    out: str | None,
    diff: bool,
    model: str | None,
    motion_module: str | None,
    dtype: str,
    against: str | None,
) -> None:
    """Score the shapes world under several sampling settings, one model load, one line per setting.

    Each SETTING is key=value,key=value of render settings (steps, guidance, scheduler, motion_prior,
    noise, cache...; a value with commas of its own, guidance_interval=0,0.5, is a pair); default is the
    model's recorded defaults. Each line counts the videos right on colour, shape, direction, stable,
    steady and all four. For one setting with the full report, use `videodiff eval shapes --set KEY=VALUE`.

    \b
    Example:
      videodiff eval sweep --combos heldout --seeds 8 default motion_prior=0.42 steps=16
      videodiff eval sweep --combos all --seeds 1 --diff default cache=2 cache=3 cache=5
      videodiff eval sweep --seeds 8 --out base.jsonl default
      videodiff eval sweep --seeds 8 --motion-module run/motion_module --against base.jsonl default
      videodiff eval sweep --combos all --seeds 2 --dtype bf16 --against base.jsonl default
    """
    from videodiff.log import setup_cli_logging
    from videodiff.media.atomic import check_appendable
    from videodiff.shapes.sweep import run_sweep

    if out is not None:
        check_appendable(out)
    setup_cli_logging()  # notices, and each setting's progress (videodiff.shapes.evaluate.evaluate_model)
    run_sweep(
        settings,
        combos=combos,
        seeds=seeds,
        first_seed=first_seed,
        out=out,
        diff=diff,
        model=model,
        motion_module=motion_module,
        dtype=dtype,
        against=against,
        echo=click.echo,
    )
