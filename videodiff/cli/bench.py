"""``videodiff bench``: speed and memory measurements a maintainer re-runs (the logic is :mod:`videodiff.bench`)."""

from __future__ import annotations

from pathlib import Path

import click

from videodiff.bench import BENCH_CACHE

# the names of videodiff.bench.parity's presets and dtypes, kept here so that --help imports no torch
# (tests/test_bench.py checks they match)
PRESET_NAMES = ("cpu-small", "cpu-small-lcm", "cpu-small-lightning", "gpu-sd15", "tiny", "tiny-lcm", "tiny-lightning")
BENCH_DTYPES = ("bf16", "fp16", "fp32")
# videodiff.unet.levers.LEVERS (not imported here: the command line loads it only when the command runs)
LEVER_NAMES = ("channels-last", "sdpa-math", "onednn-off", "compile", "unfused", "unpadded", "padded")


def int_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    """``1,2,3`` as ``(1, 2, 3)``; nothing given, ``()``."""
    if not value:
        return ()
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of whole numbers") from None


CACHE_OPTION = click.option(
    "--cache",
    type=click.Path(path_type=Path),
    default=BENCH_CACHE,
    show_default=True,
    help="Where the presets' random-weight models are built once.",
)
JSON_OPTION = click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the results here.")


@click.group("bench")
def bench_group() -> None:
    """Speed and memory measurements (the tables in the docs' Benchmarks page)."""


@bench_group.command("diffusers")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="tiny", show_default=True, help="Model and size.")
@click.option("--steps", type=int, help="Override the preset's denoising steps.")
@click.option("--frames", type=int, help="Override the preset's frame count.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--guidance", type=float, help="Default: the preset's, else 7.5.")
@click.option("--repeat", type=int, default=1, show_default=True, help="Alternate the two sides this many times each.")
@CACHE_OPTION
@JSON_OPTION
@click.option("--device", help="cpu or cuda (default: the preset's).")
@click.option("--dtype", type=click.Choice(BENCH_DTYPES), help="Default: the preset's (fp32 on CPU).")
@click.option("--tolerance", type=int, help="Largest allowed pixel difference (default 2, 8 in fp16/bf16).")
@click.option("--peak-tflops", type=float, default=989.0, show_default=True, help="The GPU's dense fp16/bf16 peak.")
@click.option(
    "--live-memory",
    is_flag=True,
    help="CPU: fix glibc's mmap threshold at 128 KiB in both sides, so the RSS peak is the live tensors' peak "
    "rather than what the allocator kept from freed blocks.",
)
@click.option(
    "--diffusers-tuned",
    is_flag=True,
    help="CPU: give diffusers videodiff's heap policy (videodiff.heap) and VAE chunk too, "
    "so the comparison shows what the rest of videodiff gains.",
)
@click.option(
    "--lossy-dtype",
    type=click.Choice(BENCH_DTYPES),
    help="Also run videodiff once in this dtype (e.g. bf16 on a CPU with AVX512-BF16): its time and how far "
    "its frames move from diffusers' (reported, not checked against the tolerance).",
)
@click.option(
    "--feature-cache",
    callback=int_list,
    metavar="N[,N...]",
    help="Also run videodiff with --cache N (feature caching) for each N: times, speed-up and pixel "
    "difference against uncached videodiff.",
)
@click.option(
    "--renders",
    type=int,
    default=1,
    show_default=True,
    help="Renders per process: the first is timed as usual, the later ones (same pipeline, same process) "
    "are reported as repeat_s, and the pipeline's load time as load_s.",
)
@click.option(
    "--variants",
    help="Further sides, comma-separated: diffusers-compile, diffusers-xformers, "
    "videodiff-xformers (default: the preset's; gpu-sd15 has all three). 'none': no further sides.",
)
@click.option("--table", is_flag=True, help="Print the side-by-side table (medians) instead of the JSON.")
def bench_diffusers(
    preset: str,
    steps: int | None,
    frames: int | None,
    seed: int,
    guidance: float | None,
    repeat: int,
    cache: Path,
    json_path: Path | None,
    device: str | None,
    dtype: str | None,
    tolerance: int | None,
    peak_tflops: float,
    live_memory: bool,
    diffusers_tuned: bool,
    lossy_dtype: str | None,
    feature_cache: tuple[int, ...],
    renders: int,
    variants: str | None,
    table: bool,
) -> None:
    """videodiff against diffusers' AnimateDiffPipeline on identical random weights, each side in a fresh process.

    Same weights, initial noise and scheduler for both; prints the timings, peak memory and the largest
    pixel difference as JSON, and fails if that difference is above the tolerance. The first call is
    included in the timing. Presets: tiny (16x64x64), cpu-small (SD1.5 layout at widths 64-256,
    16x256x256), gpu-sd15 (full SD1.5 + v2 motion modules, 16x512x512, 25 steps, fp16, CUDA), and
    -lightning (4 euler steps, trailing, guidance 1) and -lcm (4 lcm steps, guidance 2) samplings of tiny
    and cpu-small.

    \b
    Example:
      videodiff bench diffusers --preset tiny
      videodiff bench diffusers --preset cpu-small --repeat 2
      videodiff bench diffusers --preset gpu-sd15
      videodiff bench diffusers --preset cpu-small --feature-cache 2,3,5
      videodiff bench diffusers --preset cpu-small --repeat 3 --renders 2 --table
    """
    import json

    from videodiff.bench.parity import VARIANTS, run_parity, tolerance_of

    chosen = None if variants is None else tuple(v for v in variants.split(",") if v and v != "none")
    for name in chosen or ():
        if name not in VARIANTS:
            raise click.BadParameter(f"{name!r} is not one of {', '.join(VARIANTS)}", param_hint="--variants")
    results = run_parity(
        preset=preset,
        steps=steps,
        frames=frames,
        seed=seed,
        guidance=guidance,
        repeat=repeat,
        cache=cache,
        device=device,
        dtype=dtype,
        peak_tflops=peak_tflops,
        live_memory=live_memory,
        diffusers_tuned=diffusers_tuned,
        lossy_dtype=lossy_dtype,
        feature_cache=feature_cache,
        renders=renders,
        variants=chosen,
    )
    if table:
        from videodiff.bench.table import side_by_side

        click.echo("\n".join(side_by_side(results)))
    else:
        click.echo(json.dumps(results, indent=2))
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))
    allowed = tolerance_of(results["dtype"], tolerance)
    if results["max_pixel_diff"] > allowed:
        raise click.ClickException(f"outputs differ by {results['max_pixel_diff']}/255 (tolerance {allowed}/255)")


@bench_group.command("cache")
@click.argument("every", type=int, nargs=-1, required=True)
@click.option("--rounds", type=int, default=3, show_default=True, help="Rounds of every prompt at every N.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--motion-module", help="Other motion modules for the built-in model (e.g. shapes-teacher).")
@click.option(
    "--dtype",
    "dtypes",
    type=click.Choice(["bf16", "fp16"]),
    multiple=True,
    help="Also time the uncached render with the model loaded in this dtype (lossy; repeatable).",
)
@JSON_OPTION
def bench_cache(
    every: tuple[int, ...],
    rounds: int,
    seed: int,
    motion_module: str | None,
    dtypes: tuple[str, ...],
    json_path: Path | None,
) -> None:
    """Feature caching (--cache N) on the built-in model: render seconds per N, interleaved in one process.

    EVERY are the Ns to time (1: uncached; the first is the baseline). One model load and one warm-up
    render, then each round renders three prompts once at every N. Prints the median render time per N
    (loading excluded), its speed-up over the first N and the mean frame difference from its videos (0-255).
    The random-weight cpu-small preset is `videodiff bench diffusers --preset cpu-small --feature-cache 2,3,5`.

    \b
    Example:
      videodiff bench cache --rounds 3 1 2 3 5
      videodiff bench cache --rounds 3 --dtype bf16 1 2
      videodiff bench cache --rounds 3 --motion-module shapes-teacher --dtype bf16 1 2
    """
    import json

    from videodiff.bench.feature_cache import run_cache_bench

    results = run_cache_bench(list(every), rounds=rounds, seed=seed, dtypes=dtypes, motion_module=motion_module)
    click.echo(json.dumps(results, indent=2))
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))


@bench_group.command("coldstart")
@click.option("--runs", type=int, default=5, show_default=True, help="Fresh processes per mode.")
@click.option(
    "--eager/--no-eager", default=True, show_default=True, help="Also measure with VIDEODIFF_EAGER_IMPORTS=1."
)
def bench_coldstart(runs: int, eager: bool) -> None:
    """Cold start of `videodiff render` on the built-in model, split by phase, in seconds.

    Runs fresh processes alternately with the CLI's deferred imports on (the default) and off
    (VIDEODIFF_EAGER_IMPORTS=1), each `render "a red circle moving right" --seed 1`, after one warm-up
    process; prints the median of each phase: interpreter start, the imports of torch, transformers,
    diffusers and videodiff, the CLI's checks, load, sampling, decode, write, exit, total.

    \b
    Example:
      videodiff bench coldstart --runs 5
    """
    from videodiff.bench.coldstart import format_coldstart, run_coldstart

    for line in format_coldstart(run_coldstart(runs, eager), runs):
        click.echo(line)


@bench_group.command("long")
@click.option("--frames", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--prompt", default="a red circle moving right", show_default=True)
@click.option("--window", type=int, help="Frames per window (default: the model's).")
@click.option("--window-layers", default="unet", show_default=True, help="unet or temporal.")
@click.option("--steps", type=int, help="Default: the model's (the preset's with --preset).")
@click.option("--preset", type=click.Choice(PRESET_NAMES), help="A `bench diffusers` preset (random weights).")
@click.option(
    "--cache",
    type=click.Path(path_type=Path),
    default=BENCH_CACHE,
    show_default=True,
    help="Where --preset models are built once.",
)
def bench_long(
    frames: int,
    seed: int,
    prompt: str,
    window: int | None,
    window_layers: str,
    steps: int | None,
    preset: str | None,
    cache: Path,
) -> None:
    """Time and peak memory of one long render, in this process, as one JSON line.

    Prints frames, windows, render seconds (sampling and decode, model load excluded) and the process's
    peak RSS (getrusage: the whole process, model load included) after the load and at the end.

    \b
    Example:
      videodiff bench long --frames 64
      videodiff bench long --frames 64 --window-layers temporal    # windows in the motion modules only
      videodiff bench long --preset cpu-small --frames 128 --steps 1
    """
    import json

    from videodiff.bench.long import run_long_bench

    record = run_long_bench(
        frames=frames,
        seed=seed,
        prompt=prompt,
        window=window,
        window_layers=window_layers,
        steps=steps,
        preset=preset,
        cache=cache,
    )
    click.echo(json.dumps(record))


@bench_group.command("control")
@click.option("--preset", type=click.Choice(("tiny", "cpu-small")), default="tiny", show_default=True)
@click.option("--rounds", type=int, default=1, show_default=True, help="Rounds of the three renders.")
@click.option("--long-frames", type=int, default=64, show_default=True, help="Frames of the long controlled render.")
@click.option("--steps", type=int, help="Override the preset's denoising steps.")
@CACHE_OPTION
@JSON_OPTION
def bench_control(
    preset: str, rounds: int, long_frames: int, steps: int | None, cache: Path, json_path: Path | None
) -> None:
    """What one ControlNet costs: a render with it against the same render without, and a long controlled render.

    On the preset's random weights and a ControlNet built from its U-Net; one load, then interleaved rounds. Prints
    the median seconds of each render, the controlled/uncontrolled ratio and the long render's seconds per frame
    over the short controlled one's.

    \b
    Example:
      videodiff bench control --preset cpu-small --rounds 1
    """
    import json

    from videodiff.bench.control import run_control_bench

    results = run_control_bench(preset, cache, rounds=rounds, long_frames=long_frames, steps=steps)
    click.echo(json.dumps(results, indent=2))
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))


@bench_group.command("upscale")
@click.option("--frames", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--size", type=click.IntRange(16, 2048), default=512, show_default=True, help="Input frames' side (px).")
@click.option("--convs", type=click.IntRange(1, 64), default=16, show_default=True, help="Compact's body convs.")
@click.option("--tile", type=click.IntRange(16, 4096), default=None, help="Input pixels per tile (default: 128).")
def bench_upscale(frames: int, size: int, convs: int, tile: int | None) -> None:
    """Peak resident memory of upscaling FRAMES frames of SIZE x SIZE 4x with a random-weight Compact, tiled.

    \b
    Example:
      OMP_NUM_THREADS=1 videodiff bench upscale                 # 16 frames of 512x512 -> 2048x2048
    """
    import json

    from videodiff.bench.upscale import run_upscale_bench

    click.echo(json.dumps(run_upscale_bench(frames, size, convs=convs, tile=tile), indent=2))


@bench_group.command("levers")
@click.argument("levers", nargs=-1, type=click.Choice(LEVER_NAMES))
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="cpu-small", show_default=True)
@click.option("--repeat", type=click.IntRange(1), default=3, show_default=True, help="Fresh processes per variant.")
@click.option("--calls", type=click.IntRange(1), default=3, show_default=True, help="Guided U-Net calls per process.")
@CACHE_OPTION
@JSON_OPTION
def bench_levers(
    levers: tuple[str, ...], preset: str, repeat: int, calls: int, cache: Path, json_path: Path | None
) -> None:
    """Each speed lever alone against the plain path: one guided U-Net call, in fresh processes.

    One process per variant and round, the order alternating between rounds; prints the median wall and CPU
    seconds of the first call and of the later ones, the speed-up over the plain path, and how far the U-Net's
    output moved (no levers named: all of them but compile).

    \b
    Example:
      OMP_NUM_THREADS=2 videodiff bench levers --preset cpu-small --repeat 3
      videodiff bench levers compile --calls 4
    """
    import json

    from videodiff.bench.levers import format_levers, run_levers

    chosen = list(levers) or [name for name in LEVER_NAMES if name != "compile"]
    results = run_levers(chosen, preset=preset, repeat=repeat, calls=calls, cache=cache)
    for line in format_levers(results):
        click.echo(line)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2))
