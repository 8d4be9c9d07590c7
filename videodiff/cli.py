"""The command line: parse, build a config, call the package. No logic of its own."""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from videodiff import __version__, coldstart
from videodiff.config import DEVICES, DTYPES, InputSettings, LoadSettings, RenderConfig, TrainConfig
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


def given(ctx: click.Context, source: ParameterSource) -> dict[str, Any]:
    """Parameters set from ``source`` (so defaults never override a config file)."""
    return {k: v for k, v in ctx.params.items() if ctx.get_parameter_source(k) == source}


def parse_motion(text: str) -> tuple[float, float]:
    """``--motion DX,DY``: two numbers, pixels per frame."""
    try:
        dx, dy = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--motion must be DX,DY in pixels per frame, e.g. 2,0; got {text!r}") from None
    return dx, dy


def _choice_help(names: tuple[str, ...]) -> str:
    return "|".join(names)


def options_from(
    cls: type, helps: dict[str, str] | None = None, envvars: dict[str, str] | None = None, skip: tuple[str, ...] = ()
):
    """Click options for every field of a settings dataclass (flag = field name with dashes).

    Help, a short flag and an environment variable come from the field's metadata
    (:func:`videodiff.config.setting`), else from ``helps``/``envvars``. No option has a default
    of its own: commands read only what was given (:func:`given`), so a config file and the
    model's recorded defaults are never overridden; the help names the default instead.
    """
    import dataclasses

    from videodiff.config import MODEL_DEFAULT_KEYS

    def decorate(func):
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip:
                continue
            names = [*([f.metadata["short"]] if "short" in f.metadata else []), "--" + f.name.replace("_", "-")]
            kind = str(f.type)
            help_text = f.metadata.get("help") or (helps or {}).get(f.name, "")
            envvar = f.metadata.get("env") or (envvars or {}).get(f.name)
            recorded = f.name in MODEL_DEFAULT_KEYS and cls is not TrainConfig  # a model may record its own
            if recorded and f.default is not None:
                shown = f.default if isinstance(f.default, str) else f"{f.default:g}"
                help_text += f" [default: the model's, else {shown}]"
            extra: dict[str, Any] = {"help": help_text, "envvar": envvar}
            if kind.startswith("bool"):
                func = click.option(*names, is_flag=True, default=f.default, **extra)(func)
            elif kind.startswith("dict[int, str]"):  # KEY:TEXT, repeatable
                func = click.option(*names, multiple=True, callback=_keyed_texts, **extra)(func)
            elif kind.startswith("tuple[str"):
                func = click.option(*names, multiple=True, **extra)(func)
            elif kind.startswith("tuple[float"):  # DX,DY; LOW,HIGH
                func = click.option(*names, callback=_numbers_pair, **extra)(func)
            elif "choices" in f.metadata:  # a closed set: checked by click (with completion)
                choice = click.Choice(f.metadata["choices"])
                show = f.default is not None and not recorded
                func = click.option(*names, type=choice, default=f.default, show_default=show, **extra)(func)
            else:
                typ = int if kind.startswith("int") else float if kind.startswith("float") else str
                show = f.default is not None and not recorded
                func = click.option(*names, type=typ, default=f.default, show_default=show, **extra)(func)
        return func

    return decorate


def _keyed_texts(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[int, str] | None:
    from videodiff.config import parse_mapping

    return parse_mapping(list(value)) if value else None


def _numbers_pair(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float] | None:
    if value is None or param.name == "motion":
        return None if value is None else parse_motion(value)
    from videodiff.config import parse_pair

    return parse_pair(value, "--" + str(param.name).replace("_", "-"))


@cli.command()
@click.argument("prompt", required=False)
@options_from(RenderConfig, skip=("prompt", *(f.name for f in dataclasses.fields(InputSettings))))
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
@click.option("--num-videos", type=int, help="Render every prompt with N distinct drawn seeds.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["mp4", "gif", "webm", "png"]),
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


CONFIG_OPTION = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML (or a sidecar .json) with any of these settings; the command line wins.",
)


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


@cli.command()
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


@cli.command()
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


TRAIN_HELP = {
    "model": "Image model: diffusers folder or hub id; shapes (the default): the built-in shapes model "
    "[env VIDEODIFF_MODEL].",
    "motion_module": "Start from these motion modules (default: the model's own, else new zero-initialised ones).",
    "data": "Folder of videos with same-stem .txt captions, or a CSV/JSONL manifest (path,caption).",
    "data_root": "For a WebVid-style CSV (videoid,name,page_dir): the folder holding the page_dir folders.",
    "output": "Run folder: checkpoints/, motion_module/, metrics.jsonl, validation/.",
    "frames": "Frames per training clip.",
    "stride": "Take every N-th frame (lowered for short videos).",
    "resolution": "Square training size after resize and centre crop.",
    "height": "Training height (overrides --resolution).",
    "width": "Training width (overrides --resolution).",
    "flip": "Random horizontal flips.",
    "batch_size": "Clips per process per micro-step.",
    "grad_accum": "Micro-steps per optimizer step.",
    "steps": "Optimizer steps.",
    "lr": "Learning rate.",
    "lr_schedule": "constant|cosine",
    "warmup": "Linear warm-up steps.",
    "trainable": "motion|motion+attn|lora|all",
    "lora_rank": "MotionLoRA rank (--trainable lora).",
    "mixed_precision": "no|fp16|bf16",
    "gradient_checkpointing": "Recompute activations to save memory.",
    "noise": "independent|mixed|progressive (the priors sampling uses).",
    "noise_alpha": "Frame correlation strength for mixed/progressive noise.",
    "caption_dropout": "Fraction of empty captions (trains the unconditional branch for guidance).",
    "late_timesteps": "Fraction of samples noised in the noisiest quarter of timesteps, where the layout and "
    "motion of a video are decided (more prompt-following motion).",
    "cache_latents": "Encode every clip once (a fixed clip per video), so CPU training skips the VAE.",
    "latent_cache": "File the cached latents are kept in (default: OUTPUT/latents.safetensors); a later run "
    "or --resume with the same VAE, clips and clip settings reads them instead of encoding again.",
    "seed": "Seed of every random choice (resume is exact).",
    "save_every": "Checkpoint every N steps (and at the end).",
    "keep": "Checkpoints kept.",
    "validate_every": "Render a validation GIF every N steps (0: never).",
    "validation_prompt": "Prompt of the validation GIFs.",
    "validation_steps": "Denoising steps of the validation GIFs.",
    "resume": "latest, or a checkpoint folder (DIR/checkpoints/step-N).",
    "num_workers": "Data-loading worker processes.",
    "max_grad_norm": "Gradient clipping norm.",
    "weight_decay": "AdamW weight decay.",
    "ema_decay": "EMA of the trained weights (0: off), e.g. 0.999.",
    "motion_prior": "At the end, fit a motion prior beside the motion modules (the prompt's guess of the moving "
    "object's track, which `render --motion-prior` starts from); for clips of one moving object.",
    "max_nan_steps": "Consecutive NaN/inf losses before the run stops.",
    "quiet": "No progress bar or notices.",
    "distill": "lcm: latent consistency distillation of the trained parameters (--trainable) from the model as "
    "loaded (the frozen teacher); the motion_module folder renders in 4 lcm steps unasked.",
    "distill_steps": "Steps of the skipping-step DDIM solver over the 1000 training timesteps (LCM: 50).",
    "distill_guidance": "The teacher's classifier-free guidance [default: the model's, else 4].",
    "distill_ema": "Decay of the target network (an EMA of the student).",
}


@cli.command()
@options_from(TrainConfig, TRAIN_HELP, {"model": "VIDEODIFF_MODEL"})
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
      videodiff train --distill lcm --data data/shapes --output runs/lcm --resolution 64 --stride 1   # 4-step student
    Several GPUs: accelerate launch -m videodiff train ...
    """
    from videodiff.config import TRAIN_FIELD_NAMES, load_config_file, merge
    from videodiff.log import setup_cli_logging
    from videodiff.training.loop import train as run_train

    from_file = load_config_file(config_file, TRAIN_FIELD_NAMES) if config_file else {}
    command_line = given(ctx, ParameterSource.COMMANDLINE)
    command_line.pop("config_file", None)
    config = merge(given(ctx, ParameterSource.ENVIRONMENT), from_file, command_line, cls=TrainConfig).validate()
    setup_cli_logging(config.quiet)
    run = run_train(config)
    click.echo(str(Path(run).resolve()))  # absolute, as render prints its output


@cli.command()
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


@cli.command()
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


@cli.group()
def data() -> None:
    """Make training data."""


@data.command("shapes")
@click.option("--out", required=True, help="Folder for the clips, their .txt captions and manifest.jsonl.")
@click.option("--count", type=click.IntRange(min=1), default=1000, show_default=True, help="Number of clips.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of every random choice.")
@click.option(
    "--split",
    type=click.Choice(["train", "heldout", "all"]),
    default="train",
    show_default=True,
    help="Combinations drawn: the training ones, the 10 held-out ones, or all 96.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["gif", "mp4", "png"]),
    default="gif",
    show_default=True,
    help="gif (keeps the colours), mp4 (H.264 crf 10: smaller, blurs colour edges), or PNG folders "
    "(lossless; listed in the manifest only, videodiff train reads video files).",
)
@click.option("--overwrite", is_flag=True, help="Replace the clips of an earlier dataset in --out.")
def data_shapes(out: str, count: int, seed: int, split: str, fmt: str, overwrite: bool) -> None:
    """Clips of the shapes world: "a {color} {shape} moving {direction}", 16 frames of 64x64.

    \b
    Example:
      videodiff data shapes --out data/shapes --count 2000 --seed 0
      videodiff train --data data/shapes --output runs/shapes --resolution 64 --frames 16 --steps 200 --cache-latents
    (no --model: train on top of the built-in shapes model; --model ./sd15 for another)
    """
    from videodiff.shapes import write_dataset

    paths = write_dataset(out, count, seed=seed, split=split, format=fmt, overwrite=overwrite)
    click.echo(f"{out}: {len(paths)} clips ({split} combinations), captions and manifest.jsonl")


@cli.group("eval")
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
@click.option("--steps", type=int, help="Denoising steps (default: the model's, else 25).")
@click.option("--guidance", type=float, help="Guidance scale (default: the model's, else 7.5).")
@click.option(
    "--motion-prior",
    type=float,
    help="Start from the motion prior this far into the schedule (0: off; default: the model's).",
)
@click.option("--cache", type=int, help="Feature caching: the deep U-Net blocks on every N-th step only (1: off).")
@click.option(
    "--img2vid",
    "img2vid",
    is_flag=True,
    help="Score img2vid: animate each ground-truth clip's first frame; frame 0's PSNR is reported too.",
)
@click.option("--strength", type=float, help="img2vid's --strength (default: the prior's start, else 0.85).")
@click.option("--anchor", type=float, help="img2vid's --anchor (default 1: held to the end).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, help=_choice_help(DEVICES))
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True, help=_choice_help(DTYPES))
@click.option("-q", "--quiet", is_flag=True, help="No progress notices.")
def eval_shapes(
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
    strength: float | None,
    anchor: float | None,
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
      videodiff eval shapes --cache 2 --seeds 2                  # with feature caching
    """
    import json

    from videodiff.log import setup_cli_logging
    from videodiff.media.atomic import prepare_output, write_text_atomic
    from videodiff.shapes.evaluate import is_eval_report, run_shapes_eval

    setup_cli_logging(quiet)
    target = prepare_output(out, overwrite=overwrite, file_ok=is_eval_report, kind="evaluation report") if out else None
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
        img2vid={k: v for k, v in (("strength", strength), ("anchor", anchor)) if v is not None} if img2vid else None,
        echo=click.echo,
    )
    if target is not None:
        write_text_atomic(target, json.dumps(results, indent=2) + "\n")
        click.echo(str(target))


@cli.command()
@options_from(LoadSettings)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (others can reach it).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True, help="Port to listen on.")
@click.option("--outputs", default="outputs", show_default=True, help="Folder the videos are written to and read from.")
@click.option("--auth", help="USER:PASSWORD the page asks for (default: none).")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, outputs: str, auth: str | None, **_: Any) -> None:
    """A local web app: render, animate pictures, re-render clips, browse past runs (needs videodiff[ui]).

    \b
    Example:
      pip install 'videodiff[ui]'
      videodiff serve                                   # the built-in shapes model, http://127.0.0.1:7860
      videodiff serve --model ./sd15 --motion-module ./motion-v2 --outputs renders/ --port 7861
    The model is loaded once; renders are queued and run one at a time. Every video is written by the
    render layer with its sidecar, so `videodiff render --config OUTPUT.json` renders it again.
    """
    from videodiff.log import setup_cli_logging
    from videodiff.ui import parse_auth, require_gradio
    from videodiff.ui import serve as run_serve

    credentials = parse_auth(auth)
    require_gradio()  # before minutes of loading: one line saying how to install it
    from videodiff.pipelines import VideoPipeline
    from videodiff.render import resolve_render_config

    command_line = {k: v for k, v in given(ctx, ParameterSource.COMMANDLINE).items() if k not in SERVE_OPTIONS}
    environment = {k: v for k, v in given(ctx, ParameterSource.ENVIRONMENT).items() if k not in SERVE_OPTIONS}
    base = resolve_render_config(command_line, None, environment)
    setup_cli_logging(False)
    pipe = VideoPipeline.load(base.load)
    run_serve(pipe, outputs, base=base, host=host, port=port, auth=credentials)


SERVE_OPTIONS = ("host", "port", "outputs", "auth")


def main() -> None:
    coldstart.install()  # import only what runs (VIDEODIFF_EAGER_IMPORTS=1 turns it off)
    try:
        cli.main(prog_name="videodiff")
    except UserError as exc:  # raised outside a command (should not happen, but never show a traceback)
        click.echo(f"videodiff: error: {exc}", err=True)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
