"""Settings: one typed dataclass per render stage, YAML/JSON files that map 1:1 onto them, and precedence.

A render's settings are :class:`SampleSettings` (what to sample), :class:`LoadSettings` (what
to load) and :class:`WriteSettings` (what to write); :class:`RenderConfig` holds all three
flat, as settings files, sidecars and the ``render`` command's options do. Each field's
default and help text are written once, here.

Precedence, highest first: the command line, then ``--config FILE``, then environment
variables, then the model's own recorded defaults (``videodiff.json`` in a model folder),
then the defaults here; :func:`resolve` is the one place that layers them.
No torch import: this module must stay cheap for the CLI's ``--help``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from videodiff.errors import UserError

SCHEDULERS = ("ddim", "euler", "euler-a", "dpm++", "lcm", "model")
# How a scheduler spreads its steps over the 1000 training timesteps (diffusers' timestep_spacing); linspace is
# AnimateDiff's, trailing is what few-step models (AnimateDiff-Lightning) were distilled for (Lin et al. 2024)
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
LCM_MAX_STEPS = 50  # the LCM scheduler picks its steps from a 50-step skipping schedule (original_inference_steps)
NOISE_KINDS = ("independent", "mixed", "progressive")  # priors of videodiff.noise
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16")
ATTENTION = ("sdpa", "xformers", "math")
SPATIAL_NORMS = ("auto", "joint", "per-frame")
OFFLOAD = ("model", "sequential")
FUSE_KINDS = ("pyramid", "flat", "overlap-linear")  # weights of overlapping windows (videodiff.windows)
WINDOW_NOISE = ("freenoise", "plain")  # initial noise of windowed videos (videodiff.noise.reschedule)
# what runs per window: the whole U-Net (memory follows the window) or only the motion modules' attention
# (FreeNoise's way: the spatial layers see every frame, so memory grows with the video)
WINDOW_LAYERS = ("unet", "temporal")
FREE_INIT_FILTERS = ("butterworth", "gaussian", "ideal")  # FreeInit's low-pass filters (videodiff.noise)
TRAVEL = ("linear", "slerp")  # prompt travel: how embeddings are interpolated between keyframes
# where the motion prior draws its guess: resampled in latents, or moved in pixels and encoded by the VAE
MOTION_PRIOR_SPACES = ("latent", "pixels")

# Keys a model may recommend in its ``videodiff.json`` (``{"defaults": {...}}``).
MODEL_DEFAULT_KEYS = (
    "frames",
    "steps",
    "guidance",
    "height",
    "width",
    "fps",
    "scheduler",
    "negative",
    "noise",
    "noise_alpha",
    "motion_prior",
    "motion_prior_space",
    "timestep_spacing",
    "guidance_interval",
)
# The informational part of a sidecar; a sidecar given to --config ignores it.
INFO_KEY = "info"

# Limits named in the errors, checked before any work (a typo must not become an hour or a 7 GiB allocation).
MAX_STEPS = 1000  # the schedules have 1000 training timesteps: more steps than that repeat timesteps
MAX_SIDE = 4096  # pixels; SD1.5-family models are trained at 512 (the VAE alone would need tens of GiB beyond this)
MAX_FRAMES = 1024  # frames of one video: longer than a motion module's clips, they are sampled in sliding windows


def too_many_frames(frames: int) -> UserError:
    """The error for more than :data:`MAX_FRAMES` frames (longer than a window is fine: windows)."""
    return UserError(f"{frames} frames exceed the ceiling of {MAX_FRAMES} frames; render at most {MAX_FRAMES}")


def lcm_steps_beyond(steps: int, grid: int) -> UserError:
    """The error for more lcm steps than the solver steps the motion modules were distilled on."""
    return UserError(
        f"--steps {steps} is too many for lcm with these motion modules: at most {grid} (the solver steps they were "
        "distilled on)"
    )


MAX_PROMPT_CHARS = 10_000  # the text encoder reads 77 tokens; a longer prompt is a mistake, not a description
MAX_SETTINGS_BYTES = 1 << 20  # settings and prompt files are text a person wrote: 1 MiB is far more than enough
MAX_NAMED = 5  # unknown keys named in an error; the rest are counted
MAX_CACHE = 10  # --cache: DeepCache's own runs reuse features for at most 9 steps in 10; beyond, the video degrades


def setting(default: Any, help: str, **cli: Any) -> Any:
    """A settings field: its default (the one place it is written) and its command-line help.

    ``cli`` may name ``short`` (``"-o"``), ``env`` (an environment variable) and ``choices`` (a closed set:
    the flag becomes a choice, with completion) for the flag;
    the command line's options are made from these fields (:func:`videodiff.cli.options_from`).
    """
    return dataclasses.field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True, kw_only=True)
class SampleSettings:
    """What to sample: prompt, frames, size, steps, guidance, scheduler, noise, seed, where sampling starts."""

    prompt: str | None = setting(None, "The text to render.")  # may come from the config file
    negative: str | None = setting(None, "Negative prompt (used only with guidance above 1).")
    frames: int = setting(16, "Number of frames.")  # AnimateDiff's motion modules were trained on 16-frame clips
    steps: int = setting(25, "Denoising steps.")  # 25 DDIM steps is AnimateDiff's published setting
    guidance: float = setting(7.5, "Classifier-free guidance scale.")  # SD1.5's usual value; <= 1 disables it
    seed: int | None = setting(None, "Random seed (drawn, printed and recorded when omitted).")
    height: int | None = setting(None, "Frame height, a multiple of 8 (default: the model's).")  # None: the model's
    width: int | None = setting(None, "Frame width, a multiple of 8 (default: the model's).")  # preferred size
    # ddim with AnimateDiff's betas is what they saw
    scheduler: str = setting("ddim", "|".join(SCHEDULERS) + ".", choices=SCHEDULERS)
    timestep_spacing: str = setting(  # linspace: AnimateDiff's; few-step models record theirs (videodiff.json)
        "linspace",
        "How the steps spread over the schedule: " + "|".join(TIMESTEP_SPACINGS) + " (trailing for "
        "AnimateDiff-Lightning; every --scheduler but model, whose own config decides, and lcm, which has its own).",
        choices=TIMESTEP_SPACINGS,
    )
    guidance_interval: tuple[float, float] | None = setting(  # None: every step (the same as 0,1)
        None,
        "LOW,HIGH: run guidance's unconditional branch only for steps inside this part of the steps sampled "
        "(0 the first and noisiest, 1 the last); outside it the conditional prediction alone "
        "[default: the model's, else 0,1: every step].",
    )
    noise: str = setting("independent", "Initial noise: " + "|".join(NOISE_KINDS) + ".", choices=NOISE_KINDS)
    # PYoCo's alpha: frame correlation a^2/(1+a^2) (mixed), a/sqrt(1+a^2) (progressive)
    noise_alpha: float = setting(1.0, "Frame correlation strength for mixed/progressive noise (PYoCo's alpha).")
    motion_prior: float = setting(  # 0: pure noise
        0.0,
        "Start this fraction into the schedule from the model's motion prior (a guess of the moving object's "
        "track from the prompt); 0 starts from pure noise.",
    )
    motion_prior_space: str = setting(  # latent: what every sidecar written before the choice rendered
        "latent",
        "Where the motion prior draws its guess: latent (the patch resampled between latent cells) or pixels "
        "(moved in pixels and encoded by the VAE: one more VAE decode and encode) [default: the model's, else latent].",
        choices=MOTION_PRIOR_SPACES,
    )
    motion: tuple[float, float] | None = setting(  # None: the prompt's
        None,
        "The motion prior's velocity DX,DY in pixels per frame, x right, y down [default: predicted from the prompt].",
    )
    decode_chunk: int | None = setting(  # None: 2 on the CPU (heap reuse), 16 elsewhere
        None, "Frames per VAE decode call [default: 2 on the CPU, 16 on a GPU]."
    )
    # sliding windows: videos longer than the motion modules' training clips (videodiff.windows)
    window: int | None = setting(  # None: the motion modules' train_frames
        None, "Frames per sliding window when --frames exceeds it [default: the motion modules' training length]."
    )
    overlap: int | None = setting(None, "Frames shared by neighbouring windows [default: a quarter of the window].")
    fuse: str = setting(
        "pyramid", "How overlapping windows' outputs are weighted: " + "|".join(FUSE_KINDS) + ".", choices=FUSE_KINDS
    )
    loop: bool = setting(False, "Wrap the windows around the end: a closed loop (seamless GIFs).")
    window_noise: str = setting(  # FreeNoise (Qiu et al. 2023): windows agree on what they start from
        "freenoise",
        "Initial noise with windows: freenoise (the first window's noise, shuffled, for the later ones) or plain.",
        choices=WINDOW_NOISE,
    )
    window_layers: str = setting(
        "unet",
        "What runs per window: unet (the whole U-Net; memory follows the window) or temporal (only the motion "
        "modules' attention, FreeNoise's way; every other layer sees all frames, so memory grows with them).",
        choices=WINDOW_LAYERS,
    )
    free_init: int = setting(0, "FreeInit: re-noise the result (fresh high frequencies) and sample again N times.")
    free_init_filter: str = setting(
        "butterworth", "FreeInit's low-pass filter: " + "|".join(FREE_INIT_FILTERS) + ".", choices=FREE_INIT_FILTERS
    )
    free_init_spatial: float = setting(0.25, "FreeInit's spatial cutoff (normalised frequency, 0 to 1).")
    free_init_temporal: float = setting(0.25, "FreeInit's temporal cutoff (normalised frequency, 0 to 1).")
    prompt_at: dict[int, str] | None = setting(  # {frame: prompt}; PROMPT, if given too, is frame 0's
        None, "FRAME:TEXT: the prompt from that frame on (prompt travel); repeatable, PROMPT may then be omitted."
    )
    travel: str = setting(
        "linear", "How prompts blend between --prompt-at frames: " + "|".join(TRAVEL) + ".", choices=TRAVEL
    )
    cache: int = setting(  # 1: off (opt-in: it trades quality for time, see the README's table)
        1,
        f"Feature caching (DeepCache): run the deep U-Net blocks on every N-th step only and reuse their "
        f"features in between (1 to {MAX_CACHE}); 1: off.",
    )

    def validate(self) -> SampleSettings:
        """Raise :class:`UserError` (one line) for any of these settings that cannot work; return self."""
        check_types(self, SampleSettings)
        check_text(self.prompt, "the prompt")
        check_text(self.negative, "--negative")
        for name in ("frames", "steps", "decode_chunk"):
            value = getattr(self, name)
            if value is None and name == "decode_chunk":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"--{_flag(name)} must be a positive whole number, got {value!r}")
        if self.steps > MAX_STEPS:
            raise UserError(f"--steps {self.steps} is too many: at most {MAX_STEPS} (the schedule has 1000 timesteps)")
        if self.frames > MAX_FRAMES:
            raise UserError(f"--frames {self.frames} is too many: at most {MAX_FRAMES} frames in one video")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"--{name} must be a positive whole number, got {value!r}")
            if value > MAX_SIDE:
                raise UserError(f"--{name} {value} is too large: at most {MAX_SIDE} pixels (SD1.5 models work at 512)")
            if value % 8:
                nearest = max(8, int(round(value / 8)) * 8)
                raise UserError(f"--{name} {value} is not a multiple of 8; the nearest valid value is {nearest}")
        if not isinstance(self.guidance, (int, float)) or math.isnan(self.guidance) or self.guidance < 0:
            raise UserError(f"--guidance must be a number >= 0, got {self.guidance!r}")
        if math.isinf(self.guidance):
            raise UserError("--guidance must be finite")
        alpha = self.noise_alpha
        if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise UserError(f"--noise-alpha must be a finite number >= 0, got {self.noise_alpha!r}")
        start = self.motion_prior
        if not isinstance(start, (int, float)) or not 0 <= start < 1:
            raise UserError(f"--motion-prior must be a number from 0 up to (not including) 1, got {start!r}")
        numbers = [v for v in self.motion or () if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if self.motion is not None and (len(numbers) != 2 or not all(map(math.isfinite, numbers))):
            raise UserError(f"--motion must be two finite numbers DX,DY (pixels per frame), got {self.motion!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**64):
            raise UserError(f"--seed must be a whole number from 0 to 2^64-1, got {self.seed!r}")
        check_choices(self, (("scheduler", SCHEDULERS), ("noise", NOISE_KINDS)))
        check_choices(self, (("timestep_spacing", TIMESTEP_SPACINGS), ("motion_prior_space", MOTION_PRIOR_SPACES)))
        if self.scheduler == "lcm" and self.steps > LCM_MAX_STEPS:
            raise UserError(f"--steps {self.steps} is too many for lcm: at most {LCM_MAX_STEPS} (its own schedule)")
        check_interval(self.guidance_interval)
        self._validate_long()
        if not isinstance(self.cache, int) or isinstance(self.cache, bool) or not 1 <= self.cache <= MAX_CACHE:
            raise UserError(f"--cache must be a whole number from 1 (off) to {MAX_CACHE}, got {self.cache!r}")
        return self

    def _validate_long(self) -> None:
        """Windows, FreeInit and prompt travel."""
        if self.window is not None and self.window <= 0:
            raise UserError(f"--window must be a positive whole number, got {self.window!r}")
        if self.overlap is not None and self.overlap < 0:
            raise UserError(f"--overlap must be a whole number >= 0, got {self.overlap!r}")
        if self.window is not None and self.overlap is not None and self.overlap >= self.window:
            raise UserError(f"--overlap {self.overlap} must be less than --window {self.window}")
        if self.free_init < 0:
            raise UserError(f"--free-init must be a whole number >= 0, got {self.free_init!r}")
        for name in ("free_init_spatial", "free_init_temporal"):
            value = getattr(self, name)
            if not math.isfinite(value) or not 0 < value <= 1:
                raise UserError(f"--{_flag(name)} must be a number above 0 and at most 1, got {value!r}")
        for frame in self.prompt_at or {}:
            if not 0 <= frame < self.frames:
                raise UserError(f"--prompt-at frame {frame} is outside the video's frames 0 to {self.frames - 1}")
        check_choices(
            self,
            (
                ("fuse", FUSE_KINDS),
                ("window_noise", WINDOW_NOISE),
                ("window_layers", WINDOW_LAYERS),
                ("free_init_filter", FREE_INIT_FILTERS),
                ("travel", TRAVEL),
            ),
        )

    def keyframes(self) -> dict[int, str]:
        """Prompt travel's ``{frame: prompt}`` in frame order: ``prompt_at``, with ``prompt`` at frame 0 unless
        ``prompt_at`` names frame 0 (``{0: prompt}`` without ``prompt_at``)."""
        keys = dict(self.prompt_at or {})
        if self.prompt and 0 not in keys:
            keys[0] = self.prompt
        return dict(sorted(keys.items()))


@dataclass(frozen=True, kw_only=True)
class LoadSettings:
    """What to load: the model, its motion modules and add-ons, where and how it runs, memory savers."""

    model: str | None = setting(  # None: the built-in shapes model
        None,
        "Image model: diffusers folder, hub id or .safetensors file; shapes (the default): the built-in "
        "shapes model [env VIDEODIFF_MODEL].",
        env="VIDEODIFF_MODEL",
    )
    motion_module: str | None = setting(  # None: the model's own
        None,
        "MotionAdapter folder or hub id (default: the model's own) [env VIDEODIFF_MOTION_MODULE].",
        env="VIDEODIFF_MOTION_MODULE",
    )
    device: str = setting("auto", "|".join(DEVICES), choices=DEVICES)  # auto: cuda, then mps, then cpu
    dtype: str = setting("auto", "|".join(DTYPES), choices=DTYPES)  # auto: fp16 on cuda/mps, fp32 on cpu
    attention: str = setting("sdpa", "|".join(ATTENTION), choices=ATTENTION)  # xformers: optional extra, CUDA only
    vae: str | None = setting(None, "Swap the VAE: a VAE file (LDM or diffusers layout) or folder.")
    # use an earlier text-encoder layer, as many SD1.5 finetunes expect
    clip_skip: int | None = setting(None, "Use an earlier text-encoder layer (1 = penultimate).")
    lora: tuple[str, ...] = setting((), "Image-model LoRA PATH[:SCALE] (kohya or diffusers/PEFT); repeatable.")
    embedding: tuple[str, ...] = setting((), "Textual-inversion embedding file; repeatable.")  # token from file/name
    motion_lora: tuple[str, ...] = setting((), "MotionLoRA PATH[:SCALE]; repeatable, scales add up.")
    motion_lora_trigger: tuple[str, ...] = setting(
        (), "WORD=PATH[:SCALE]: merge that MotionLoRA only for prompts containing WORD; repeatable."
    )
    motion_config: str | None = setting(  # overrides version detection
        None, "Override motion-module detection: v1, v2, v3 or a MotionAdapter config.json."
    )
    spatial_norm: str = setting(  # joint: original v1's GroupNorm over all frames; per-frame: diffusers'
        "auto",
        "GroupNorm of the image ResNets: joint over all frames (original v1), per-frame (diffusers), "
        "or auto (joint for original-format v1 files).",
        choices=SPATIAL_NORMS,
    )
    offload: str | None = setting(  # slower, far less GPU memory
        None, "For small GPUs: model (whole models) or sequential (layer by layer) CPU offload.", choices=OFFLOAD
    )
    vae_tiling: bool = setting(False, "Decode large frames tile by tile.")
    attention_slicing: bool = setting(False, "Compute attention in slices: less memory, a bit slower.")

    def validate(self) -> LoadSettings:
        """Raise :class:`UserError` (one line) for any of these settings that cannot work; return self."""
        check_types(self, LoadSettings)
        for spec in self.motion_lora_trigger:
            parse_trigger(spec)  # the syntax, before any model is loaded
        if self.clip_skip is not None and self.clip_skip < 0:
            raise UserError(f"--clip-skip must be a whole number >= 0, got {self.clip_skip!r}")
        if self.offload not in (None, *OFFLOAD):
            raise UserError(f"unknown --offload {self.offload!r}; choose one of: {', '.join(OFFLOAD)}")
        check_choices(
            self,
            (("device", DEVICES), ("dtype", DTYPES), ("attention", ATTENTION), ("spatial_norm", SPATIAL_NORMS)),
        )
        return self


FITS = ("crop", "pad")  # how a picture of another aspect meets the video's size: cover and crop, or contain and pad
IMG2VID_STRENGTH = 0.85  # img2vid's --strength without a motion prior (measured: README, "img2vid")
IMG2VID_ANCHOR = 1.0  # img2vid's --anchor: pinned frames held through every step (measured: README, "img2vid")
VID2VID_STRENGTH = 0.6  # vid2vid's --strength: enough to restyle, little enough to keep the clip's motion


@dataclass(frozen=True, kw_only=True)
class InputSettings:
    """What sampling starts from besides noise: pictures pinned to frames (img2vid) or a video (vid2vid)."""

    image_at: tuple[str, ...] = setting(  # FRAME:PATH each; img2vid's IMAGE is 0:IMAGE
        (), "FRAME:PATH: pin a picture to a frame (0 is the first, -1 the last); repeatable."
    )
    video: str | None = setting(None, "The video to re-render (vid2vid).")
    strength: float | None = setting(  # None: img2vid 0.85, or the motion prior's own start; vid2vid 0.6
        None,
        "How far from the input sampling starts, in (0, 1]: 1 starts the moving frames from pure noise (most "
        "motion), lower stays closer to the input [default: the motion prior's start, else 0.85 (img2vid), "
        "0.6 (vid2vid)].",
    )
    # RePaint-style: the pinned frames follow their pictures for this part of the steps; 1 (to the end) is the only
    # value that keeps frame 0 as close to the picture as the VAE can (README, "img2vid": 0.6 lost 2 dB)
    anchor: float = setting(IMG2VID_ANCHOR, "Fraction of the steps pinned frames are held to their pictures.")
    fit: str = setting("crop", "How pictures and videos of another aspect fit the size: crop|pad.")
    background: str = setting("0,0,0", "R,G,B (or #RRGGBB): what transparent pixels and --fit pad borders become.")
    paste: bool = setting(  # off: the decoded frame 0 is the model's own; on: exact, colours matched around it
        False, "Put the exact pictures into their frames and match the other frames' colours to them."
    )
    stride: int = setting(1, "vid2vid: take every N-th frame of the video (the output fps is divided by N).")

    def validate(self) -> InputSettings:
        """Raise :class:`UserError` (one line) for any of these settings that cannot work; return self."""
        check_types(self, InputSettings)
        for spec in self.image_at:
            parse_image_at(spec)
        if self.image_at and self.video:
            raise UserError("pin pictures (img2vid) or re-render a video (vid2vid), not both")
        s = self.strength
        if s is not None and not (isinstance(s, (int, float)) and 0 < s <= 1):
            raise UserError(f"--strength must be a number in (0, 1], got {s!r}")
        if not (isinstance(self.anchor, (int, float)) and 0 <= self.anchor <= 1):
            raise UserError(f"--anchor must be a number from 0 to 1, got {self.anchor!r}")
        if self.stride <= 0:
            raise UserError(f"--stride must be a positive whole number, got {self.stride!r}")
        check_choices(self, (("fit", FITS),))
        parse_rgb(self.background)
        return self


def parse_image_at(spec: str) -> tuple[int, str]:
    """``FRAME:PATH`` (``--image-at``): the frame (negative counts from the end) and the picture's path."""
    frame, sep, path = str(spec).partition(":")
    try:
        index = int(frame)
    except ValueError:
        index = None
    if not sep or index is None or not path:
        raise UserError(f"--image-at must be FRAME:PATH, e.g. 0:start.png or -1:end.png; got {spec!r}")
    return index, path


def parse_rgb(text: str) -> tuple[int, int, int]:
    """``R,G,B`` (0-255 each) or ``#RRGGBB``."""
    value = str(text).strip()
    try:
        if value.startswith("#") and len(value) == 7:
            rgb = tuple(int(value[i : i + 2], 16) for i in (1, 3, 5))
        else:
            rgb = tuple(int(v) for v in value.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise UserError(f"--background must be R,G,B (0-255 each) or #RRGGBB, got {text!r}")
    return rgb  # type: ignore[return-value]


@dataclass(frozen=True, kw_only=True)
class WriteSettings:
    """What to write: the output file, its format's settings, and what the terminal shows."""

    # .mp4/.gif/.webm, or no extension for a folder of PNGs; None: outputs/<date-time>-<prompt>-<seed>.mp4
    output: str | None = setting(
        None, "Output .mp4/.gif/.webm, or a path without extension for PNG frames.", short="-o"
    )
    overwrite: bool = setting(False, "Replace an existing output.")  # never replace one unless asked
    fps: float = setting(8.0, "Frames per second of the output.")  # AnimateDiff clips play at 8 fps
    # H.264/VP9 constant quality (lower is better; 18 is visually lossless for most content)
    crf: int = setting(18, "MP4/WebM quality (lower is better).")
    quiet: bool = setting(False, "No progress bar or notices.", short="-q")

    def validate(self) -> WriteSettings:
        """Raise :class:`UserError` (one line) for any of these settings that cannot work; return self."""
        check_types(self, WriteSettings)
        if not isinstance(self.fps, (int, float)) or not math.isfinite(self.fps) or self.fps <= 0:
            raise UserError(f"--fps must be a positive number, got {self.fps!r}")
        if not isinstance(self.crf, int) or not 0 <= self.crf <= 63:
            raise UserError(f"--crf must be a whole number from 0 to 63, got {self.crf!r}")
        return self


STAGES = (SampleSettings, InputSettings, LoadSettings, WriteSettings)


@dataclass(frozen=True, kw_only=True)
class RenderConfig(WriteSettings, LoadSettings, InputSettings, SampleSettings):
    """Every render setting, flat: the stages' fields, as YAML files, sidecars and the command line hold them.
    ``.sample``, ``.inputs``, ``.load`` and ``.write`` give each stage its own typed settings."""

    def replace(self, **changes: Any) -> RenderConfig:
        return dataclasses.replace(self, **changes)

    @property
    def sample(self) -> SampleSettings:
        return stage_of(self, SampleSettings)

    @property
    def inputs(self) -> InputSettings:
        return stage_of(self, InputSettings)

    @property
    def load(self) -> LoadSettings:
        return stage_of(self, LoadSettings)

    @property
    def write(self) -> WriteSettings:
        return stage_of(self, WriteSettings)

    def validate(self) -> RenderConfig:
        """Raise :class:`UserError` (one line) for any setting that cannot work; return self."""
        check_types(self)  # first, so that the first wrong field is reported in the file's order
        for stage in STAGES:
            stage.validate(self)
        return self


def stage_of(config: Any, cls: type) -> Any:
    """The ``cls`` part of a settings object that has all of its fields."""
    return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def check_choices(config: Any, choices: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
    for name, allowed in choices:
        value = getattr(config, name)
        if value not in allowed:
            raise UserError(f"unknown --{_flag(name)} {value!r}; choose one of: {', '.join(allowed)}")


FIELD_NAMES = tuple(f.name for f in fields(RenderConfig))


def check_types(config: Any, cls: type | None = None) -> None:
    """Each field (of ``cls``, else all) holds its declared kind (a config file can say ``seed: true``)."""
    for f in fields(cls or config):
        value, kind = getattr(config, f.name), str(f.type)
        if value is None:
            if "None" in kind:
                continue
            raise UserError(f"--{_flag(f.name)} needs a value")
        if kind.startswith("dict[int, str]"):
            ok = isinstance(value, dict) and all(
                isinstance(k, int) and not isinstance(k, bool) and isinstance(v, str) for k, v in value.items()
            )
        elif kind.startswith("tuple[float"):
            ok = isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value)
        elif kind.startswith("tuple"):
            ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
        elif kind.startswith("bool"):
            ok = isinstance(value, bool)
        elif kind.startswith("str"):
            ok = isinstance(value, str)
        elif kind.startswith("int"):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind.startswith("float"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = True
        if not ok:
            names = {
                "dict[int, str]": "a mapping of frame numbers to text",
                "tuple[float": "two numbers",
                "tuple": "a list of text",
                "bool": "true or false",
                "str": "text",
                "int": "a whole number",
                "float": "a number",
            }
            expected = next(v for k, v in names.items() if kind.startswith(k))
            raise UserError(f"--{_flag(f.name)} must be {expected}, got {value!r}")


def parse_pair(text: str, flag: str, form: str = "LOW,HIGH, e.g. 0,0.5") -> tuple[float, float]:
    """``A,B``: two numbers (``--guidance-interval 0,0.5``); anything else is a one-line :class:`UserError`."""
    try:
        a, b = (float(v) for v in str(text).split(","))
    except ValueError:
        raise UserError(f"{flag} must be two numbers {form}; got {text!r}") from None
    return a, b


def check_interval(interval: Any) -> None:
    """``--guidance-interval``: two finite numbers LOW,HIGH with 0 <= LOW <= HIGH <= 1 (or None: every step)."""
    if interval is None:
        return
    numbers = [v for v in interval if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) != 2 or len(interval) != 2 or not all(map(math.isfinite, numbers)):
        raise UserError(f"--guidance-interval must be two numbers LOW,HIGH from 0 to 1, got {interval!r}")
    low, high = numbers
    if not 0 <= low <= high <= 1:
        raise UserError(f"--guidance-interval must have 0 <= LOW <= HIGH <= 1, got {low:g},{high:g}")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def check_text(text: str | None, what: str) -> None:
    """A prompt is valid UTF-8 (a terminal may pass raw bytes), holds no NUL and is of a sane length."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{what} is not valid UTF-8 text (check the encoding of the terminal or file)") from None
    if "\0" in text:
        raise UserError(f"{what} contains a NUL character")
    if len(text) > MAX_PROMPT_CHARS:
        raise UserError(
            f"{what} is {len(text)} characters long; at most {MAX_PROMPT_CHARS} (the text encoder reads 77 tokens)"
        )


def named(items: list[str], limit: int = MAX_NAMED) -> str:
    """``a, b, c`` or ``a, b, c and 199997 more``: an error names a few, never megabytes of them."""
    shown = ", ".join(str(i)[:80] for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_keys(values: dict[str, Any], source: str, allowed: tuple[str, ...] = FIELD_NAMES) -> dict[str, Any]:
    """Fail on any key that is not a setting (a typo must not be silently ignored)."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise UserError(f"{source}: unknown key(s) {named(unknown)}; valid keys: {', '.join(allowed)}")
    return values


def read_text_file(path: str | Path, what: str, limit: int = MAX_SETTINGS_BYTES) -> str:
    """The UTF-8 text of a settings or prompt file: a regular file of at most ``limit`` bytes (never a device,
    a FIFO or ``/dev/zero``, which would block or fill the memory), else a :class:`UserError`."""
    import os
    import stat

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise UserError(f"{what} {path} is a folder, not a file")
        if not stat.S_ISREG(mode):
            raise UserError(f"{what} {path} is not a regular file (a device, FIFO or socket)")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > limit:
        raise UserError(f"{what} {path} is larger than {limit // 1024} KiB; a settings or prompt file is smaller")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None


def parse_yaml(text: str, path: str | Path, what: str) -> Any:
    """YAML (or JSON) from a file a user gave; syntax errors and absurd nesting in one line."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise UserError(f"{what} {path} is not valid YAML: {first}") from None
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to be a settings file") from None


def load_config_file(path: str | Path, allowed: tuple[str, ...] = FIELD_NAMES) -> dict[str, Any]:
    """Read a YAML (or JSON: YAML is a superset) settings file; keys are the flag names with underscores.

    A sidecar written beside an output is such a file: its ``info`` part is ignored. A sidecar records every
    setting it rendered with, so one without ``motion_prior_space`` predates the choice and drew in ``latent``
    (the only way then), whatever the model's default is now; other files leave it to the model.
    """
    path = Path(path)
    data = parse_yaml(read_text_file(path, "config file"), path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of settings, not a {type(data).__name__}")
    sidecar = INFO_KEY in data
    data = {str(k): v for k, v in data.items() if k != INFO_KEY}
    if sidecar and "motion_prior_space" in allowed:
        data.setdefault("motion_prior_space", "latent")
    return check_keys(data, str(path), allowed)


def merge(*layers: dict[str, Any], cls: type = RenderConfig) -> Any:
    """Build a ``cls`` config from layers, lowest precedence first; ``None`` values in a layer do not override."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if v is not None})
    check_keys(values, "settings", tuple(f.name for f in fields(cls)))
    # YAML may give 8 for fps or 7 for guidance: accept ints where floats are expected; lists for repeatable flags.
    for f in fields(cls):
        value = values.get(f.name)
        if str(f.type).startswith("dict[int, str]") and isinstance(value, (dict, list, tuple, str)):
            values[f.name] = parse_mapping(value)  # JSON sidecars' keys are text; YAML may list FRAME:TEXT
            continue
        if str(f.type).startswith("tuple[float") and isinstance(value, str):  # YAML's `guidance_interval: 0,0.5`
            values[f.name] = parse_pair(value, f"--{_flag(f.name)}")
            continue
        if str(f.type).startswith("tuple") and isinstance(value, (list, str)):
            values[f.name] = tuple(value) if isinstance(value, list) else (value,)
            continue
        is_float = "float" in str(f.type) and "int" not in str(f.type)
        if is_float and isinstance(value, int) and not isinstance(value, bool):
            values[f.name] = float(value)
        elif is_float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as text
            try:
                values[f.name] = float(value)
            except ValueError:
                pass  # check_types reports it
    return cls(**values)


def resolve(model_defaults: dict[str, Any], *layers: dict[str, Any], cls: type = RenderConfig) -> Any:
    """The validated ``cls`` settings: the model's recorded defaults (those ``cls`` has), then ``layers``
    (lowest precedence first) over the built-in defaults. The one place settings meet a model's defaults."""
    names = {f.name for f in fields(cls)}
    recorded = {k: v for k, v in model_defaults.items() if k in names}
    return merge(recorded, *layers, cls=cls).validate()


def parse_defaults(specs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` settings for a folder's ``videodiff.json`` defaults (``videodiff convert --default``): keys of
    :data:`MODEL_DEFAULT_KEYS`, values read as YAML (``4``, ``trailing``, ``0,0.5``), checked as a render would."""
    import yaml

    values: dict[str, Any] = {}
    for spec in specs:
        key, sep, text = str(spec).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in MODEL_DEFAULT_KEYS:
            raise UserError(f"--default must be KEY=VALUE, KEY one of {', '.join(MODEL_DEFAULT_KEYS)}; got {spec!r}")
        try:
            values[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            values[key] = text
    settings = merge(values, cls=SampleSettings).validate()
    return {k: list(v) if isinstance(v, tuple) else v for k in values if (v := getattr(settings, k)) is not None}


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


TRAINABLE = ("motion", "motion+attn", "lora", "all")
LR_SCHEDULES = ("constant", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")
DISTILL_KINDS = ("lcm",)  # videodiff.training.distill: latent consistency distillation


@dataclass(frozen=True)
class TrainConfig:
    model: str | None = None  # the image model the motion modules learn on
    motion_module: str | None = None  # start from these; None: the model's own, else a fresh zero-initialised stack
    data: str | None = None  # folder of videos + same-stem .txt captions, or a CSV/JSONL manifest
    data_root: str | None = None  # WebVid-style CSV (videoid,name,page_dir): the folder holding page_dir/
    output: str | None = None  # run folder: checkpoints/, motion_module/, metrics.jsonl, validation/
    frames: int = 16  # frames per training clip; AnimateDiff trains on 16
    stride: int = 4  # take every 4th frame (AnimateDiff's sample_stride); lowered for short videos
    resolution: int = 256  # square side after resize and centre crop (AnimateDiff's sample_size)
    height: int | None = None  # overrides resolution for non-square training
    width: int | None = None
    flip: bool = False  # random horizontal flips (off: direction words in captions would lie)
    batch_size: int = 1  # clips per process per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    steps: int = 1000  # optimizer steps
    lr: float = 1e-4  # AnimateDiff's learning rate
    lr_schedule: str = "constant"  # constant | cosine
    warmup: int = 0  # linear warm-up steps
    trainable: str = "motion"  # motion | motion+attn (Tune-A-Video's query projections too) | lora | all
    lora_rank: int = 16  # MotionLoRA rank
    mixed_precision: str = "no"  # no | fp16 | bf16 (through accelerate)
    gradient_checkpointing: bool = False  # recompute activations: less memory, ~30% slower
    noise: str = "independent"  # the same priors sampling uses
    noise_alpha: float = 1.0
    caption_dropout: float = 0.1  # trains the unconditional branch for guidance (AnimateDiff: 0.1)
    late_timesteps: float = 0.0  # fraction of samples whose timestep is drawn from the noisiest quarter
    cache_latents: bool = False  # encode each clip once (a fixed clip per video), so CPU runs skip the VAE
    latent_cache: str | None = None  # cached latents' file (default <output>/latents.safetensors), reused if it matches
    seed: int = 0  # everything random derives from (seed, step, process): resume is exact
    save_every: int = 500  # checkpoint every N steps (and at the end)
    keep: int = 3  # checkpoints kept (oldest removed)
    validate_every: int = 0  # render a validation GIF every N steps (0: never)
    validation_prompt: str | None = None
    validation_steps: int = 25  # denoising steps of the validation render
    resume: str | None = None  # latest | a checkpoint folder
    num_workers: int = 2  # data-loading worker processes
    max_grad_norm: float = 1.0  # gradient clipping (AnimateDiff: 1.0)
    weight_decay: float = 1e-2  # AdamW (AnimateDiff: 1e-2)
    ema_decay: float = 0.0  # exponential moving average of the trained weights (0: off)
    motion_prior: bool = False  # at the end, fit a motion prior (prompt -> moving object's track) beside the modules
    max_nan_steps: int = 5  # consecutive non-finite losses before the run stops
    quiet: bool = False
    distill: str | None = None  # lcm: distil the model as loaded (the teacher) into a few-step student
    distill_steps: int = 50  # solver steps over the training schedule (LCM's 50: skipping k = 1000/50 = 20)
    distill_guidance: float | None = None  # the teacher's guidance; None: the model's recorded guidance, else 4
    distill_ema: float = 0.95  # decay of the target network (an EMA of the student)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> TrainConfig:
        """Raise :class:`UserError` (one line) for any setting that cannot work; return self."""
        check_types(self)
        for name in (
            "frames",
            "stride",
            "resolution",
            "batch_size",
            "grad_accum",
            "steps",
            "save_every",
            "keep",
            "lora_rank",
            "validation_steps",
            "max_nan_steps",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"--{_flag(name)} must be a positive whole number, got {value!r}")
        for name in ("warmup", "validate_every", "num_workers", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserError(f"--{_flag(name)} must be a whole number >= 0, got {value!r}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0 or value % 8):
                raise UserError(f"--{name} must be a positive multiple of 8, got {value!r}")
        if self.resolution % 8:
            raise UserError(f"--resolution must be a multiple of 8, got {self.resolution}")
        for name in ("resolution", "height", "width"):
            value = getattr(self, name)
            if value is not None and value > MAX_SIDE:
                raise UserError(f"--{name} {value} is too large: at most {MAX_SIDE} pixels")
        if self.frames > MAX_FRAMES:
            raise UserError(f"--frames {self.frames} is too many: at most {MAX_FRAMES} frames per clip")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive number, got {self.lr!r}")
        for name in ("caption_dropout", "late_timesteps"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"--{_flag(name)} must be between 0 and 1, got {getattr(self, name)!r}")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"--ema-decay must be in [0, 1), got {self.ema_decay!r}")
        if not (math.isfinite(self.noise_alpha) and self.noise_alpha >= 0):
            raise UserError(f"--noise-alpha must be a finite number >= 0, got {self.noise_alpha!r}")
        for name, allowed in (
            ("trainable", TRAINABLE),
            ("lr_schedule", LR_SCHEDULES),
            ("mixed_precision", MIXED_PRECISION),
            ("noise", NOISE_KINDS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise UserError(f"unknown --{_flag(name)} {value!r}; choose one of: {', '.join(allowed)}")
        if not self.data:
            raise UserError("no training data given: pass --data (a folder of videos or a CSV/JSONL manifest)")
        if not self.output:
            raise UserError("no run folder given: pass --output DIR")
        if self.validate_every and not self.validation_prompt:
            raise UserError("--validate-every needs --validation-prompt")
        if self.latent_cache and not self.cache_latents:
            raise UserError("--latent-cache needs --cache-latents (without it, clips are encoded at every step)")
        self._validate_distill()
        return self

    def _validate_distill(self) -> None:
        if self.distill is not None and self.distill not in DISTILL_KINDS:
            raise UserError(f"unknown --distill {self.distill!r}; choose one of: {', '.join(DISTILL_KINDS)}")
        steps = self.distill_steps
        if not isinstance(steps, int) or isinstance(steps, bool) or not 2 <= steps <= MAX_STEPS:
            raise UserError(f"--distill-steps must be a whole number from 2 to {MAX_STEPS}, got {steps!r}")
        if not (math.isfinite(self.distill_ema) and 0 <= self.distill_ema < 1):
            raise UserError(f"--distill-ema must be in [0, 1), got {self.distill_ema!r}")
        guidance = self.distill_guidance
        if guidance is not None and not (math.isfinite(guidance) and guidance >= 1):
            raise UserError(f"--distill-guidance must be a number >= 1, got {guidance!r}")
        if self.distill and self.late_timesteps:
            raise UserError("--late-timesteps does not apply to --distill (it draws solver steps uniformly)")

    @property
    def size(self) -> tuple[int, int]:
        return (self.height or self.resolution, self.width or self.resolution)


TRAIN_FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))


# ---------------------------------------------------------------------------------------------------------------------
# The syntax of add-on arguments (no files are read here)

WORD = re.compile(r"[\w']+")  # a trigger word, and how prompts are split into words


def parse_scaled_path(arg: str) -> tuple[str, float]:
    """``path[:SCALE]`` -> ``(path, scale)``; the part after the last colon is a scale only if it is a number.

    So ``C:\\loras\\x.safetensors`` stays a path, and ``C:\\loras\\x.safetensors:0.7`` has scale 0.7.
    """
    head, sep, tail = str(arg).rpartition(":")
    if sep and head and tail.strip():
        try:
            scale = float(tail)
        except ValueError:
            return str(arg), 1.0
        if not math.isfinite(scale):
            raise UserError(f"{arg}: the scale after the last ':' must be a finite number")
        return head, scale
    return str(arg), 1.0


def parse_trigger(spec: str) -> tuple[str, str, float]:
    """``WORD=PATH[:SCALE]`` -> ``(word, path, scale)``."""
    word, sep, rest = str(spec).partition("=")
    word = word.strip().lower()
    if not sep or not rest or not WORD.fullmatch(word):
        raise UserError(f"--motion-lora-trigger must be WORD=PATH[:SCALE] with one word, got {spec!r}")
    path, scale = parse_scaled_path(rest)
    return word, path, scale


def parse_keyed(spec: str) -> tuple[int, str]:
    """``FRAME:TEXT`` -> ``(frame, text)`` (``--prompt-at 32:a blue circle``)."""
    head, sep, text = str(spec).partition(":")
    try:
        frame = int(head.strip())
    except ValueError:
        frame = -1
    if not sep or frame < 0 or not text.strip():
        raise UserError(f"--prompt-at must be FRAME:TEXT with a frame number >= 0, got {spec!r}")
    return frame, text.strip()


def parse_mapping(value: Any) -> Any:
    """``{frame: text}`` from a mapping (keys may be digit strings, as JSON writes them) or ``FRAME:TEXT``
    strings; anything else is returned as it is, for :func:`check_types` to report."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)):
        return dict(parse_keyed(v) for v in value)
    if isinstance(value, dict):
        return {int(k) if isinstance(k, str) and k.strip().isdigit() else k: v for k, v in value.items()}
    return value


def words_of(prompt: str) -> set[str]:
    """The words of a prompt, lower case (what trigger words are looked up in)."""
    return set(WORD.findall(prompt.lower()))
