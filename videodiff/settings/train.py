"""What a training run does: :class:`TrainConfig` (the ``train`` command's options) and the names it takes.

Each field is written once with :func:`~videodiff.settings.fields.setting`: its default (with the reason
beside it), help, choices and bounds; ``validate()`` checks the bounds from there.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from typing import Any

from videodiff.errors import UserError
from videodiff.settings.checks import MAX_FRAMES, MAX_SIDE, MAX_STEPS, MAX_STRIDE, check_types
from videodiff.settings.fields import check_bounds, check_choices, setting, shown
from videodiff.settings.sample import NOISE_KINDS

TRAINABLE = ("motion", "motion+attn", "lora", "all")
LR_SCHEDULES = ("constant", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")
DISTILL_KINDS = ("lcm",)  # videodiff.training.distill: latent consistency distillation
NEW_CONTROLNET = "new"  # --controlnet with no folder: a new ControlNet made from the image U-Net's encoder

_TOO_LARGE = "--{flag} {value} is too large: at most {max} pixels"
_SIDE = {"min": 1, "max": MAX_SIDE, "step": 8, "must": "a positive multiple of 8", "too_large": _TOO_LARGE}
_FRACTION = {"min": 0, "max": 1, "must": "between 0 and 1"}
_DECAY = {"min": 0, "max": 1, "max_open": True, "must": "in [0, 1)"}


@dataclass(frozen=True)
class TrainConfig:
    """Every ``train`` setting: the command's options are made from these fields, :meth:`validate` checks them."""

    model: str | None = setting(  # the image model the motion modules learn on
        None,
        "Image model: diffusers folder or hub id; shapes (the default): the built-in shapes model "
        "[env VIDEODIFF_MODEL].",
        env="VIDEODIFF_MODEL",
    )
    motion_module: str | None = setting(  # None: the model's own, else a fresh zero-initialised stack
        None, "Start from these motion modules (default: the model's own, else new zero-initialised ones)."
    )
    data: str | None = setting(  # folder of videos + same-stem .txt captions, or a CSV/JSONL manifest
        None, "Folder of videos with same-stem .txt captions, or a CSV/JSONL manifest (path,caption)."
    )
    data_root: str | None = setting(  # WebVid-style CSV (videoid,name,page_dir): the folder holding page_dir/
        None, "For a WebVid-style CSV (videoid,name,page_dir): the folder holding the page_dir folders."
    )
    output: str | None = setting(None, "Run folder: checkpoints/, motion_module/, metrics.jsonl, validation/.")
    frames: int = setting(  # AnimateDiff trains on 16
        16,
        "Frames per training clip.",
        min=1,
        max=MAX_FRAMES,
        too_large="--{flag} {value} is too many: at most {max} frames per clip",
    )
    # take every 4th frame (AnimateDiff's sample_stride); lowered for short videos
    stride: int = setting(
        4,
        "Take every N-th frame (lowered for short videos).",
        min=1,
        max=MAX_STRIDE,
        too_large="--{flag} must be at most {max}, got {value}",
    )
    resolution: int = setting(  # AnimateDiff's sample_size
        256, "Square training size after resize and centre crop.", min=1, max=MAX_SIDE, step=8, too_large=_TOO_LARGE
    )
    height: int | None = setting(None, "Training height (overrides --resolution).", **_SIDE)  # non-square training
    width: int | None = setting(None, "Training width (overrides --resolution).", **_SIDE)
    flip: bool = setting(False, "Random horizontal flips.")  # off: direction words in captions would lie
    batch_size: int = setting(1, "Clips per process per micro-step.", min=1)
    grad_accum: int = setting(1, "Micro-steps per optimizer step.", min=1)
    steps: int = setting(1000, "Optimizer steps.", min=1)
    lr: float = setting(1e-4, "Learning rate.", min=0, min_open=True, must="a positive number")  # AnimateDiff's
    lr_schedule: str = setting("constant", "|".join(LR_SCHEDULES), choices=LR_SCHEDULES, cli_choice=False)
    warmup: int = setting(0, "Linear warm-up steps.", min=0)
    trainable: str = setting(  # motion+attn: Tune-A-Video's query projections too
        "motion", "|".join(TRAINABLE), choices=TRAINABLE, cli_choice=False
    )
    lora_rank: int = setting(16, "MotionLoRA rank (--trainable lora).", min=1)
    mixed_precision: str = setting(  # through accelerate
        "no", "|".join(MIXED_PRECISION), choices=MIXED_PRECISION, cli_choice=False
    )
    gradient_checkpointing: bool = setting(False, "Recompute activations to save memory.")  # ~30% slower
    noise: str = setting(  # the same priors sampling uses
        "independent",
        "|".join(NOISE_KINDS) + " (the priors sampling uses).",
        choices=NOISE_KINDS,
        cli_choice=False,
    )
    noise_alpha: float = setting(
        1.0, "Frame correlation strength for mixed/progressive noise.", min=0, must="a finite number >= 0"
    )
    caption_dropout: float = setting(  # trains the unconditional branch for guidance (AnimateDiff: 0.1)
        0.1, "Fraction of empty captions (trains the unconditional branch for guidance).", **_FRACTION
    )
    late_timesteps: float = setting(  # fraction of samples whose timestep is drawn from the noisiest quarter
        0.0,
        "Fraction of samples noised in the noisiest quarter of timesteps, where the layout and "
        "motion of a video are decided (more prompt-following motion).",
        **_FRACTION,
    )
    cache_latents: bool = setting(  # a fixed clip per video, so CPU runs skip the VAE
        False, "Encode every clip once (a fixed clip per video), so CPU training skips the VAE."
    )
    latent_cache: str | None = setting(  # default <output>/latents.safetensors, reused if it matches
        None,
        "File the cached latents are kept in (default: OUTPUT/latents.safetensors); a later run "
        "or --resume with the same VAE, clips and clip settings reads them instead of encoding again.",
    )
    # everything random derives from (seed, step, process): resume is exact
    seed: int = setting(0, "Seed of every random choice (resume is exact).", min=0)
    save_every: int = setting(500, "Checkpoint every N steps (and at the end).", min=1)
    keep: int = setting(3, "Checkpoints kept.", min=1)  # oldest removed
    validate_every: int = setting(0, "Render a validation GIF every N steps (0: never).", min=0)
    validation_prompt: str | None = setting(None, "Prompt of the validation GIFs.")
    validation_steps: int = setting(25, "Denoising steps of the validation GIFs.", min=1)
    resume: str | None = setting(None, "latest, or a checkpoint folder (DIR/checkpoints/step-N).")
    num_workers: int = setting(2, "Data-loading worker processes.", min=0)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.")  # AnimateDiff: 1.0
    weight_decay: float = setting(1e-2, "AdamW weight decay.")  # AnimateDiff: 1e-2
    ema_decay: float = setting(0.0, "EMA of the trained weights (0: off), e.g. 0.999.", **_DECAY)
    motion_prior: bool = setting(  # prompt -> moving object's track, fitted at the end
        False,
        "At the end, fit a motion prior beside the motion modules (the prompt's guess of the moving "
        "object's track, which `render --motion-prior` starts from); for clips of one moving object. Without it, "
        "motion modules trained from ones with a prior (the built-in model's) keep that prior as it is.",
    )
    max_nan_steps: int = setting(5, "Consecutive NaN/inf losses before the run stops.", min=1)
    quiet: bool = setting(False, "No progress bar or notices.")
    distill: str | None = setting(  # lcm: distil the model as loaded (the teacher) into a few-step student
        None,
        "lcm: latent consistency distillation of the trained parameters (--trainable) from the model as "
        "loaded (the frozen teacher); the motion_module folder renders in 4 lcm steps unasked.",
        choices=DISTILL_KINDS,
        cli_choice=False,
    )
    distill_steps: int = setting(  # LCM's 50: skipping k = 1000/50 = 20
        50,
        "Steps of the skipping-step DDIM solver over the 1000 training timesteps (LCM: 50).",
        min=2,
        max=MAX_STEPS,
        must=f"a whole number from 2 to {MAX_STEPS}",
    )
    distill_guidance: float | None = setting(  # None: the model's recorded guidance, else 4
        None, "The teacher's classifier-free guidance [default: the model's, else 4].", min=1, must="a number >= 1"
    )
    distill_ema: float = setting(0.95, "Decay of the target network (an EMA of the student).", **_DECAY)
    controlnet: str | None = setting(  # videodiff.training.controlnet: the image U-Net frozen, frame by frame
        None,
        "Train a ControlNet on the clips' control maps instead (a 'maps' column in the manifest, or NAME.maps.EXT "
        "beside each clip): alone, a new one made from the image U-Net's encoder; with a folder, continue that "
        "ControlNet. Saved as OUTPUT/controlnet (render --controlnet OUTPUT/controlnet --control MAPS).",
        optional_value=NEW_CONTROLNET,
        metavar="[FOLDER]",
    )

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> TrainConfig:
        """Raise :class:`UserError` (one line) for any setting that cannot work; return self."""
        check_types(self)
        positive = ("frames", "stride", "resolution", "batch_size", "grad_accum", "steps", "save_every", "keep")
        check_bounds(self, *positive, "lora_rank", "validation_steps", "max_nan_steps", upper=False)
        check_bounds(self, "warmup", "validate_every", "num_workers", "seed", upper=False)
        for name in ("height", "width"):
            check_bounds(self, name, upper=False)
            if getattr(self, name) is not None and getattr(self, name) % 8:
                raise UserError(f"--{name} must be a positive multiple of 8, got {shown(getattr(self, name))}")
        if self.resolution % 8:
            raise UserError(f"--resolution must be a multiple of 8, got {self.resolution}")
        check_bounds(self, "resolution", "height", "width", "frames", "stride", lower=False)
        check_bounds(self, "lr", "caption_dropout", "late_timesteps", "ema_decay", "noise_alpha")
        check_choices(self, "trainable", "lr_schedule", "mixed_precision", "noise")
        if not self.data:
            raise UserError("no training data given: pass --data (a folder of videos or a CSV/JSONL manifest)")
        if not self.output:
            raise UserError("no run folder given: pass --output DIR")
        if os.path.lexists(self.output) and not os.path.isdir(self.output):  # a file, a device, a dangling link
            raise UserError(f"--output {self.output} exists and is not a folder; name a new or a run folder")
        if self.validate_every and not self.validation_prompt:
            raise UserError("--validate-every needs --validation-prompt")
        if self.latent_cache and not self.cache_latents:
            raise UserError("--latent-cache needs --cache-latents (without it, clips are encoded at every step)")
        self._validate_distill()
        self._validate_controlnet()
        return self

    def _validate_controlnet(self) -> None:
        if self.controlnet is None:
            return
        if not self.controlnet.strip():
            raise UserError("--controlnet FOLDER: the folder name is empty (give --controlnet alone for a new one)")
        clashes = {
            "distill": "--distill",
            "motion_prior": "--motion-prior",
            "validate_every": "--validate-every",
        }
        for name, flag in clashes.items():
            if getattr(self, name):
                raise UserError(f"{flag} does not apply to --controlnet (it trains a ControlNet on the image U-Net)")
        if self.trainable != "motion":
            raise UserError("--trainable does not apply to --controlnet (the whole ControlNet trains, nothing else)")

    def _validate_distill(self) -> None:
        check_choices(self, "distill")
        check_bounds(self, "distill_steps", "distill_ema", "distill_guidance")
        if self.distill and self.late_timesteps:
            raise UserError("--late-timesteps does not apply to --distill (it draws solver steps uniformly)")

    @property
    def size(self) -> tuple[int, int]:
        return (self.height or self.resolution, self.width or self.resolution)


TRAIN_FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))
