"""Render settings: one typed dataclass, YAML/JSON files that map 1:1 onto it, and precedence.

Precedence, highest first: the command line, then ``--config FILE``, then the model's
own recorded defaults (``videodiff.json`` in a model folder), then the defaults here.
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

SCHEDULERS = ("ddim", "euler", "euler-a", "dpm++", "model")
NOISE_KINDS = ("independent", "mixed", "progressive")  # priors of videodiff.noise
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16")
ATTENTION = ("sdpa", "xformers", "math")
SPATIAL_NORMS = ("auto", "joint", "per-frame")
OFFLOAD = ("model", "sequential")

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
)
# The informational part of a sidecar; a sidecar given to --config ignores it.
INFO_KEY = "info"


@dataclass(frozen=True)
class RenderConfig:
    prompt: str | None = None  # the text to render; may come from the config file
    negative: str | None = None  # negative prompt: what guidance steers away from (only with guidance > 1)
    frames: int = 16  # AnimateDiff's motion modules were trained on 16-frame clips
    steps: int = 25  # denoising steps; 25 DDIM steps is AnimateDiff's published setting
    guidance: float = 7.5  # classifier-free guidance scale, SD1.5's usual value; <= 1 disables guidance
    seed: int | None = None  # None draws one, which is printed and recorded in the sidecar
    height: int | None = None  # None: the model's preferred size, else its U-Net sample size
    width: int | None = None
    fps: float = 8.0  # AnimateDiff clips play at 8 frames per second
    model: str | None = None  # diffusers folder or hub id of the SD1.5-family image model
    motion_module: str | None = None  # MotionAdapter folder or hub id; None: the model's own
    scheduler: str = "ddim"  # ddim with AnimateDiff's linear betas is what the motion modules saw
    noise: str = "independent"  # initial noise prior: independent | mixed | progressive (PYoCo)
    noise_alpha: float = 1.0  # PYoCo's alpha: frame correlation a^2/(1+a^2) (mixed), a/sqrt(1+a^2) (progressive)
    motion_prior: float = 0.0  # start this fraction into the schedule from the motion prior's guess (0: pure noise)
    motion: tuple[float, float] | None = None  # the prior's velocity, pixels per frame (dx, dy); None: the prompt's
    output: str | None = None  # .mp4/.gif/.webm, or no extension for a folder of PNGs; None: outputs/<...>.mp4
    overwrite: bool = False  # never replace an existing output unless asked
    device: str = "auto"  # auto: cuda, then mps, then cpu
    dtype: str = "auto"  # auto: fp16 on cuda/mps, fp32 on cpu
    decode_chunk: int | None = None  # frames per VAE decode call; None: 2 on the CPU, 16 elsewhere
    crf: int = 18  # H.264/VP9 constant quality (lower is better; 18 is visually lossless for most content)
    attention: str = "sdpa"  # sdpa | xformers (optional extra, CUDA only) | math
    quiet: bool = False  # no progress bar or notices
    vae: str | None = None  # swap the model's VAE: a VAE file (LDM or diffusers layout) or folder
    clip_skip: int | None = None  # use an earlier text-encoder layer (1 = penultimate), as many SD1.5 finetunes expect
    lora: tuple[str, ...] = ()  # image-model LoRAs, PATH[:SCALE] each (kohya or diffusers/PEFT), merged in
    embedding: tuple[str, ...] = ()  # textual-inversion embeddings; the token is taken from the file or its name
    motion_lora: tuple[str, ...] = ()  # MotionLoRAs, PATH[:SCALE] each; scales add up
    motion_lora_trigger: tuple[str, ...] = ()  # WORD=PATH[:SCALE]: that MotionLoRA only for prompts with WORD
    motion_config: str | None = None  # v1 | v2 | v3 | a MotionAdapter config.json: overrides version detection
    spatial_norm: str = "auto"  # auto | joint (original v1: GroupNorm over all frames) | per-frame (diffusers)
    offload: str | None = None  # model | sequential: CPU offload for small GPUs (slower, far less GPU memory)
    vae_tiling: bool = False  # decode large frames tile by tile
    attention_slicing: bool = False  # attention in slices: less peak memory, a little slower

    def replace(self, **changes: Any) -> RenderConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> RenderConfig:
        """Raise :class:`UserError` (one line) for any setting that cannot work; return self."""
        check_types(self)
        for name in ("frames", "steps", "decode_chunk"):
            value = getattr(self, name)
            if value is None and name == "decode_chunk":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"--{_flag(name)} must be a positive whole number, got {value!r}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"--{name} must be a positive whole number, got {value!r}")
            if value % 8:
                nearest = max(8, int(round(value / 8)) * 8)
                raise UserError(f"--{name} {value} is not a multiple of 8; the nearest valid value is {nearest}")
        if not isinstance(self.guidance, (int, float)) or math.isnan(self.guidance) or self.guidance < 0:
            raise UserError(f"--guidance must be a number >= 0, got {self.guidance!r}")
        if math.isinf(self.guidance):
            raise UserError("--guidance must be finite")
        if not isinstance(self.fps, (int, float)) or not math.isfinite(self.fps) or self.fps <= 0:
            raise UserError(f"--fps must be a positive number, got {self.fps!r}")
        alpha = self.noise_alpha
        if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise UserError(f"--noise-alpha must be a finite number >= 0, got {self.noise_alpha!r}")
        start = self.motion_prior
        if not isinstance(start, (int, float)) or not 0 <= start < 1:
            raise UserError(f"--motion-prior must be a number from 0 up to (not including) 1, got {start!r}")
        numbers = [v for v in self.motion or () if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if self.motion is not None and (len(numbers) != 2 or not all(map(math.isfinite, numbers))):
            raise UserError(f"--motion must be two finite numbers DX,DY (pixels per frame), got {self.motion!r}")
        if self.motion_lora_trigger:
            for spec in self.motion_lora_trigger:
                parse_trigger(spec)  # the syntax, before any model is loaded
        if not isinstance(self.crf, int) or not 0 <= self.crf <= 63:
            raise UserError(f"--crf must be a whole number from 0 to 63, got {self.crf!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**64):
            raise UserError(f"--seed must be a whole number from 0 to 2^64-1, got {self.seed!r}")
        if self.clip_skip is not None and self.clip_skip < 0:
            raise UserError(f"--clip-skip must be a whole number >= 0, got {self.clip_skip!r}")
        if self.offload not in (None, *OFFLOAD):
            raise UserError(f"unknown --offload {self.offload!r}; choose one of: {', '.join(OFFLOAD)}")
        for name, allowed in (
            ("scheduler", SCHEDULERS),
            ("noise", NOISE_KINDS),
            ("device", DEVICES),
            ("dtype", DTYPES),
            ("attention", ATTENTION),
            ("spatial_norm", SPATIAL_NORMS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise UserError(f"unknown --{_flag(name)} {value!r}; choose one of: {', '.join(allowed)}")
        return self


FIELD_NAMES = tuple(f.name for f in fields(RenderConfig))


def check_types(config: Any) -> None:
    """Each field holds its declared kind (a config file can say ``seed: true`` or ``prompt: 123``)."""
    for f in fields(config):
        value, kind = getattr(config, f.name), str(f.type)
        if value is None:
            if "None" in kind:
                continue
            raise UserError(f"--{_flag(f.name)} needs a value")
        if kind.startswith("tuple[float"):
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
                "tuple[float": "two numbers",
                "tuple": "a list of text",
                "bool": "true or false",
                "str": "text",
                "int": "a whole number",
                "float": "a number",
            }
            expected = next(v for k, v in names.items() if kind.startswith(k))
            raise UserError(f"--{_flag(f.name)} must be {expected}, got {value!r}")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def check_keys(values: dict[str, Any], source: str, allowed: tuple[str, ...] = FIELD_NAMES) -> dict[str, Any]:
    """Fail on any key that is not a setting (a typo must not be silently ignored)."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(allowed)}")
    return values


def load_config_file(path: str | Path, allowed: tuple[str, ...] = FIELD_NAMES) -> dict[str, Any]:
    """Read a YAML (or JSON: YAML is a superset) settings file; keys are the flag names with underscores.

    A sidecar written beside an output is such a file: its ``info`` part is ignored.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {exc}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise UserError(f"config file {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of settings, not a {type(data).__name__}")
    data = {str(k): v for k, v in data.items() if k != INFO_KEY}
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


def to_dict(config: RenderConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


TRAINABLE = ("motion", "motion+attn", "lora", "all")
LR_SCHEDULES = ("constant", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")


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
        if not self.model:
            raise UserError("no model given: pass --model (a diffusers SD1.5 folder or hub id)")
        if not self.data:
            raise UserError("no training data given: pass --data (a folder of videos or a CSV/JSONL manifest)")
        if not self.output:
            raise UserError("no run folder given: pass --output DIR")
        if self.validate_every and not self.validation_prompt:
            raise UserError("--validate-every needs --validation-prompt")
        if self.latent_cache and not self.cache_latents:
            raise UserError("--latent-cache needs --cache-latents (without it, clips are encoded at every step)")
        return self

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


def words_of(prompt: str) -> set[str]:
    """The words of a prompt, lower case (what trigger words are looked up in)."""
    return set(WORD.findall(prompt.lower()))
