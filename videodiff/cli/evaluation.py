"""``videodiff eval``: score videos with detectors that know nothing of the model (``eval shapes``)."""

from __future__ import annotations

import click
from click.core import ParameterSource

from videodiff.cli.options import choice_help, given, options_from
from videodiff.config import DEVICES, DTYPES, InputSettings, SampleSettings


@click.group("eval")
def eval_group() -> None:
    """Score videos with detectors that know nothing of the model."""


@eval_group.command("shapes")
@click.option(
    "--model",
    envvar="VIDEODIFF_MODEL",
    help="Model to score; shapes (the default): the built-in shapes model [env VIDEODIFF_MODEL].",
)
@click.option(
    "--motion-module", envvar="VIDEODIFF_MOTION_MODULE", help="Its motion modules [env VIDEODIFF_MOTION_MODULE]."
)
@click.option(
    "--seeds", type=click.IntRange(min=1), default=2, show_default=True, help="Videos per combination (seeds 0..N-1)."
)
@click.option("--out", help="Write the reports as JSON here.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option(
    "--combos", type=click.Choice(["all", "heldout", "train"]), default="all", show_default=True, help="Prompts scored."
)
@click.option("--ground-truth-only", is_flag=True, help="Only score generated clips (the detector's own error).")
@click.option(
    "--roundtrip",
    type=click.Choice(["gif", "mp4", "none"]),
    default="gif",
    show_default=True,
    help="Also score generated clips after writing and reading this format (the dataset's).",
)
@options_from(SampleSettings, only=("steps", "guidance", "motion_prior", "cache"))  # as render has them
@click.option(
    "--img2vid",
    "img2vid",
    is_flag=True,
    help="Score img2vid: animate each ground-truth clip's first frame; frame 0's PSNR is reported too.",
)
@click.option(
    "--keyframes",
    is_flag=True,
    help="Score keyframes: pin each ground-truth clip's first and last frames; the track between them is scored too.",
)
@options_from(InputSettings, only=("strength", "anchor"))  # img2vid's
@click.option(
    "--controlled",
    is_flag=True,
    help="Score control: each colour and shape along held-out paths, controlled by the path's blob maps.",
)
@click.option("--controlnet", help="With --controlled: the ControlNet (default: the model's own).")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other render setting (sampling or post-processing, as in a --config file); repeatable.",
)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, help=choice_help(DEVICES))
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True, help=choice_help(DTYPES))
@click.option("-q", "--quiet", is_flag=True, help="No progress notices.")
@click.pass_context
def eval_shapes(
    ctx: click.Context,
    model: str | None,
    motion_module: str | None,
    seeds: int,
    out: str | None,
    overwrite: bool,
    combos: str,
    ground_truth_only: bool,
    roundtrip: str,
    steps: int | None,
    guidance: float | None,
    motion_prior: float | None,
    cache: int | None,
    img2vid: bool,
    keyframes: bool,
    strength: float | None,
    anchor: float | None,
    controlled: bool,
    controlnet: str | None,
    settings: tuple[str, ...],
    device: str,
    dtype: str,
    quiet: bool,
) -> None:
    """Colour, shape, direction and presence accuracy on the shapes world, trained vs held-out combinations.

    Scores generated ground-truth clips (raw, after a file round trip and after the
    model's VAE: the detector's and the latent space's own error), then the model's videos.

    \b
    Example:
      videodiff eval shapes --seeds 2 --out report.json        # the built-in model
      videodiff eval shapes --ground-truth-only --seeds 2
      videodiff eval shapes --model runs/shapes/model --seeds 2
      videodiff eval shapes --motion-prior 0 --seeds 2           # sampling from pure noise
      videodiff eval shapes --img2vid --seeds 2                  # animating each clip's first frame
      videodiff eval shapes --keyframes --seeds 2                # from each clip's first frame to its last
      videodiff eval shapes --cache 2 --seeds 2                  # with feature caching
      videodiff eval shapes --set scheduler=ddim --set steps=20  # any render setting
      videodiff eval shapes --img2vid --set paste=true           # a post-processing step, evaluated
      videodiff eval shapes --controlled --seeds 1               # the object follows a drawn path
    """
    # the settings' own options show their defaults; what was not typed stays the model's (None), as render does
    typed = given(ctx, ParameterSource.COMMANDLINE)
    steps, guidance, motion_prior, cache, strength, anchor = (
        typed.get(name) for name in ("steps", "guidance", "motion_prior", "cache", "strength", "anchor")
    )
    import json

    from videodiff.log import setup_cli_logging
    from videodiff.media.atomic import prepare_output, write_text_atomic
    from videodiff.shapes.evaluate import is_eval_report, run_shapes_eval

    setup_cli_logging(quiet)
    target = prepare_output(out, overwrite=overwrite, file_ok=is_eval_report, kind="evaluation report") if out else None
    if controlled or controlnet:
        if img2vid or keyframes or ground_truth_only or cache is not None:
            raise click.UsageError(
                "--controlled scores text-to-video: not with --img2vid, --keyframes, --cache or --ground-truth-only"
            )
        results = _controlled(
            model, motion_module, seeds, controlnet, steps, guidance, motion_prior, settings, device, dtype
        )
    else:
        results = run_shapes_eval(
            model=model,
            motion_module=motion_module,
            seeds=seeds,
            combos=combos,
            ground_truth_only=ground_truth_only,
            roundtrip_suffix=None if roundtrip == "none" else f".{roundtrip}",
            device=device,
            dtype=dtype,
            steps=steps,
            guidance=guidance,
            motion_prior=motion_prior,
            cache=cache,
            img2vid={
                **{k: v for k, v in (("strength", strength), ("anchor", anchor)) if v is not None},
                **({"keyframes": True} if keyframes else {}),
            }
            if img2vid or keyframes
            else None,
            echo=click.echo,
            settings=settings,
        )
    if target is not None:
        write_text_atomic(target, json.dumps(results, indent=2) + "\n")
        click.echo(str(target))


def _controlled(model, motion_module, seeds, controlnet, steps, guidance, motion_prior, settings, device, dtype):
    """``eval shapes --controlled`` (:func:`videodiff.shapes.controlled.run_controlled_eval`)."""
    from videodiff.settings.files import parse_settings
    from videodiff.settings.sample import SampleSettings as Sample
    from videodiff.shapes.controlled import run_controlled_eval
    from videodiff.shapes.evaluate import refuse_fixed

    (overrides,) = parse_settings(settings, Sample)
    refuse_fixed(overrides, ("prompt", "prompt_at", "seed", "frames", "height", "width"))  # the evaluation's own
    given = dict(num_inference_steps=steps, guidance_scale=guidance, motion_prior=motion_prior)
    given = {k: v for k, v in given.items() if v is not None} | overrides
    return run_controlled_eval(
        model,
        motion_module,
        seeds=seeds,
        controlnet=controlnet,
        given=given,
        echo=click.echo,
        device=device,
        dtype=dtype,
    )


# ---- eval interp: frame interpolation against the shapes world's ground truth (videodiff.shapes.interp_eval)
@eval_group.command("interp")
@click.option("--clips", type=click.IntRange(min=1), default=10, show_default=True, help="Held-out clips scored.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which clips (the world's clip seed).")
@click.option("--factor", type=click.IntRange(2, 8), default=2, show_default=True, help="Keep every N-th frame.")
@click.option("--size", type=click.IntRange(16, 1024), default=64, show_default=True, help="Frame size in pixels.")
@click.option("--rife", "rife", default=None, help="Also score this RIFE v4.x file (flownet.pkl or .safetensors).")
@click.option("--with-model", is_flag=True, help="Also score the built-in model's own in-betweens (loads it; slower).")
@click.option("--steps", type=click.IntRange(1, 1000), default=None, help="Sampling steps for --with-model.")
def eval_interp(
    clips: int, seed: int, factor: int, size: int, rife: str | None, with_model: bool, steps: int | None
) -> None:
    """PSNR and centroid error of each --interpolate-method against the frames it replaces.

    \b
    Example:
      videodiff eval interp --clips 10              # every other frame of 10 held-out clips
      videodiff eval interp --factor 4 --size 128
      videodiff eval interp --clips 4 --with-model --rife flownet.pkl
    """
    from videodiff.shapes.interp_eval import model_fill, run_interp_eval

    fill = None
    if rife:
        from videodiff.settings.post import check_model

        check_model("rife", rife)
    if with_model:
        from videodiff.pipelines import load_pipeline

        fill = model_fill(load_pipeline(None), steps=steps, seed=seed)
    rows = run_interp_eval(clips, seed=seed, factor=factor, size=size, rife=rife, fill=fill)
    click.echo("| method | PSNR (dB) | centroid error (px) | s per made frame |")
    click.echo("|---|---|---|---|")
    for row in rows:
        click.echo(
            f"| {row['method']} | {row['psnr']:.2f} | {row['centroid_error']:.3f} | {row['seconds_per_frame']:.4f} |"
        )


# ---- eval upscale: upscaling against the shapes world's ground truth (videodiff.shapes.upscale_eval)
@eval_group.command("upscale")
@click.option("--clips", type=click.IntRange(min=1), default=10, show_default=True, help="Held-out clips scored.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which clips (the world's clip seed).")
@click.option("--factor", type=click.IntRange(2, 8), default=2, show_default=True, help="How many times larger.")
@click.option("--size", type=click.IntRange(16, 512), default=64, show_default=True, help="Small frames' size (px).")
@click.option("--upscale", "models", multiple=True, help="Also score this upscaler model file (repeatable).")
def eval_upscale(clips: int, seed: int, factor: int, size: int, models: tuple[str, ...]) -> None:
    """PSNR of Lanczos (and bicubic, nearest, any --upscale model) against the world's true large frames.

    \b
    Example:
      videodiff eval upscale --clips 10             # 64 -> 128 pixels, 10 held-out clips
      videodiff eval upscale --factor 4 --upscale realesr-general-x4v3.pth
    """
    from videodiff.post.upscale import check_upscaler
    from videodiff.shapes.upscale_eval import run_upscale_eval

    for model in models:
        check_upscaler(model)
    click.echo(f"| method | PSNR (dB) vs true {size * factor} px | s per frame |")
    click.echo("|---|---|---|")
    for row in run_upscale_eval(clips, seed=seed, size=size, factor=factor, models=models):
        click.echo(f"| {row['method']} | {row['psnr']:.2f} | {row['seconds_per_frame']:.4f} |")
