"""``videodiff train``: fine-tune the temporal layers (or more) on clips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from videodiff.cli.options import given, options_from
from videodiff.config import TrainConfig

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


@click.command()
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
