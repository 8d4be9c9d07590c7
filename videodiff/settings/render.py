"""A render's settings besides sampling: what to load (:class:`LoadSettings`), what sampling starts from
(:class:`InputSettings`), what to write (:class:`WriteSettings`), and :class:`RenderConfig`, all stages flat
(post-processing's :class:`~videodiff.settings.post.PostSettings` among them).

Also the names these take (devices, dtypes, output formats ...), the keys a model may record as its own
defaults, and the sidecar's informational key. Each field's default, help, choices and bounds are written
once, with :func:`~videodiff.settings.fields.setting`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from videodiff.errors import UserError
from videodiff.settings.checks import MAX_FPS, MAX_STRIDE, MIN_FPS, check_types
from videodiff.settings.control import ControlSettings
from videodiff.settings.fields import check_bounds, check_choices, setting, shown
from videodiff.settings.ip_adapter import IPAdapterSettings
from videodiff.settings.parse import parse_image_at, parse_rgb, parse_trigger
from videodiff.settings.post import PostSettings
from videodiff.settings.sample import SampleSettings

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16")
ATTENTION = ("sdpa", "xformers", "math")
SPATIAL_NORMS = ("auto", "joint", "per-frame")
OFFLOAD = ("model", "sequential")
FITS = ("crop", "pad")  # how a picture of another aspect meets the video's size: cover and crop, or contain and pad
# What --format names, and the suffix each writes (png: a folder of frames, no suffix).
OUTPUT_FORMATS = {"mp4": ".mp4", "gif": ".gif", "webm": ".webm", "png": ""}
VIDEO_SUFFIXES = tuple(suffix for suffix in OUTPUT_FORMATS.values() if suffix)  # files a render writes

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
        "MotionAdapter folder, hub id or motion-module file; shapes-teacher: the built-in model's 16-step ones "
        "(default: the model's own) [env VIDEODIFF_MOTION_MODULE].",
        env="VIDEODIFF_MOTION_MODULE",
    )
    device: str = setting("auto", "|".join(DEVICES), choices=DEVICES)  # auto: cuda, then mps, then cpu
    dtype: str = setting("auto", "|".join(DTYPES), choices=DTYPES)  # auto: fp16 on cuda/mps, fp32 on cpu
    attention: str = setting("sdpa", "|".join(ATTENTION), choices=ATTENTION)  # xformers: optional extra, CUDA only
    vae: str | None = setting(None, "Swap the VAE: a VAE file (LDM or diffusers layout) or folder.")
    # use an earlier text-encoder layer, as many SD1.5 finetunes expect
    clip_skip: int | None = setting(
        None, "Use an earlier text-encoder layer (1 = penultimate; SDXL, which reads the penultimate: the one before).",
        min=0,
    )
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
        check_bounds(self, "clip_skip")
        check_choices(self, "offload", "device", "dtype", "attention", "spatial_norm")
        return self


IMG2VID_STRENGTH = 0.85  # img2vid's --strength without a motion prior (measured: docs, guides/img2vid-vid2vid.md)
IMG2VID_ANCHOR = 1.0  # img2vid's --anchor: pinned frames held through every step (measured: docs, img2vid guide)
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
        min=0,
        min_open=True,
        max=1,
        must="a number in (0, 1]",
    )
    # RePaint-style: the pinned frames follow their pictures for this part of the steps; 1 (to the end) is the only
    # value that keeps frame 0 as close to the picture as the VAE can (docs, guides/img2vid-vid2vid.md: 0.6 lost 2 dB)
    anchor: float = setting(
        IMG2VID_ANCHOR,
        "Fraction of the steps pinned frames are held to their pictures.",
        min=0,
        max=1,
        must="a number from 0 to 1",
    )
    # not a choice on the command line: a wrong one is reported by validate()
    fit: str = setting(
        "crop",
        "How pictures and videos of another aspect fit the size: " + "|".join(FITS) + ".",
        choices=FITS,
        cli_choice=False,
    )
    background: str = setting("0,0,0", "R,G,B (or #RRGGBB): what transparent pixels and --fit pad borders become.")
    stride: int = setting(  # beyond MAX_STRIDE a clip is a few pictures, and its fps (divided by N) ends near 0
        1,
        "vid2vid: take every N-th frame of the video (the output fps is divided by N).",
        min=1,
        max=MAX_STRIDE,
        must=f"a whole number from 1 to {MAX_STRIDE}",
    )

    def validate(self) -> InputSettings:
        """Raise :class:`UserError` (one line) for any of these settings that cannot work; return self."""
        check_types(self, InputSettings)
        pinned: dict[int, str] = {}
        for spec in self.image_at:
            frame, path = parse_image_at(spec)
            if frame in pinned:  # one picture per frame: a second would silently replace the first
                raise UserError(f"--image-at frame {frame} is given twice ({shown(pinned[frame])} and {shown(path)})")
            pinned[frame] = path
        if self.image_at and self.video:
            raise UserError("pin pictures (img2vid) or re-render a video (vid2vid), not both")
        check_bounds(self, "strength", "anchor", "stride")
        check_choices(self, "fit")
        parse_rgb(self.background)
        return self


@dataclass(frozen=True, kw_only=True)
class WriteSettings:
    """What to write: the output file, its format's settings, and what the terminal shows."""

    # .mp4/.gif/.webm, or no extension for a folder of PNGs; None: outputs/<date-time>-<prompt>-<seed>.mp4
    output: str | None = setting(
        None, "Output " + "/".join(VIDEO_SUFFIXES) + ", or a path without extension for PNG frames.", short="-o"
    )
    overwrite: bool = setting(False, "Replace an existing output.")  # never replace one unless asked
    fps: float = setting(  # AnimateDiff clips play at 8 fps; the writers store fps as a fraction of denominator <= 1001
        8.0,
        "Frames per second of the output (with --interpolate N, the written video's: the rendered frames play at 1/N).",
        min=MIN_FPS,
        max=MAX_FPS,
        must=f"a number from {MIN_FPS:g} to {MAX_FPS:g}",
    )
    # H.264/VP9 constant quality (lower is better; 18 is visually lossless for most content)
    crf: int = setting(18, "MP4/WebM quality (lower is better).", min=0, max=63, must="a whole number from 0 to 63")
    quiet: bool = setting(False, "No progress bar or notices.", short="-q")

    def validate(self) -> WriteSettings:
        """Raise :class:`UserError` (one line) for any of these settings that cannot work; return self."""
        check_types(self, WriteSettings)
        check_bounds(self, "fps", "crf")
        return self


STAGES = (SampleSettings, InputSettings, ControlSettings, IPAdapterSettings, PostSettings, LoadSettings, WriteSettings)


@dataclass(frozen=True, kw_only=True)
class RenderConfig(
    WriteSettings, LoadSettings, PostSettings, IPAdapterSettings, ControlSettings, InputSettings, SampleSettings
):
    """Every render setting, flat: the stages' fields, as YAML files, sidecars and the command line hold them.
    ``.sample``, ``.inputs``, ``.control``, ``.image_prompts``, ``.post``, ``.load`` and ``.write`` give each stage its
    typed settings."""

    def replace(self, **changes: Any) -> RenderConfig:
        return dataclasses.replace(self, **changes)

    @property
    def sample(self) -> SampleSettings:
        return stage_of(self, SampleSettings)

    @property
    def inputs(self) -> InputSettings:
        return stage_of(self, InputSettings)

    @property
    def control(self) -> ControlSettings:
        return stage_of(self, ControlSettings)

    @property
    def image_prompts(self) -> IPAdapterSettings:
        return stage_of(self, IPAdapterSettings)

    @property
    def post(self) -> PostSettings:
        return stage_of(self, PostSettings)

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
        self._validate_pins()
        return self

    def _validate_pins(self) -> None:
        """Two pictures pinned to one frame counted from both ends (7 and -1 of 8 frames) are refused here,
        before any model loads (a frame outside the video is the inputs check's error)."""
        seen: dict[int, int] = {}
        for spec in self.image_at:
            frame = parse_image_at(spec)[0]
            if not -self.frames <= frame < self.frames:
                continue
            index = frame % self.frames
            if index in seen:
                raise UserError(
                    f"--image-at frames {seen[index]} and {frame} are the same frame of {self.frames}; "
                    "pin one picture per frame"
                )
            seen[index] = frame


def stage_of(config: Any, cls: type) -> Any:
    """The ``cls`` part of a settings object that has all of its fields."""
    return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


FIELD_NAMES = tuple(f.name for f in fields(RenderConfig))
