"""Render settings: one typed dataclass, YAML/JSON files that map 1:1 onto it, and precedence.

Precedence, highest first: the command line, then ``--config FILE``, then the model's
own recorded defaults (``videodiff.json`` in a model folder), then the defaults here.
No torch import: this module must stay cheap for the CLI's ``--help``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from videodiff.errors import UserError

SCHEDULERS = ("ddim", "euler", "euler-a", "dpm++", "model")
NOISE_KINDS = ("independent", "mixed", "progressive")  # priors of videodiff.noise
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "fp16", "bf16")
ATTENTION = ("sdpa", "xformers", "math")

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
    output: str | None = None  # .mp4/.gif/.webm, or no extension for a folder of PNGs; None: outputs/<...>.mp4
    overwrite: bool = False  # never replace an existing output unless asked
    device: str = "auto"  # auto: cuda, then mps, then cpu
    dtype: str = "auto"  # auto: fp16 on cuda/mps, fp32 on cpu
    decode_chunk: int = 16  # frames per VAE decode call; lower it to save memory
    crf: int = 18  # H.264/VP9 constant quality (lower is better; 18 is visually lossless for most content)
    attention: str = "sdpa"  # sdpa | xformers (optional extra, CUDA only) | math
    quiet: bool = False  # no progress bar or notices

    def replace(self, **changes: Any) -> RenderConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> RenderConfig:
        """Raise :class:`UserError` (one line) for any setting that cannot work; return self."""
        for name in ("frames", "steps", "decode_chunk"):
            value = getattr(self, name)
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
        if not isinstance(self.crf, int) or not 0 <= self.crf <= 63:
            raise UserError(f"--crf must be a whole number from 0 to 63, got {self.crf!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**64):
            raise UserError(f"--seed must be a whole number from 0 to 2^64-1, got {self.seed!r}")
        for name, allowed in (
            ("scheduler", SCHEDULERS),
            ("noise", NOISE_KINDS),
            ("device", DEVICES),
            ("dtype", DTYPES),
            ("attention", ATTENTION),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise UserError(f"unknown --{name} {value!r}; choose one of: {', '.join(allowed)}")
        return self


FIELD_NAMES = tuple(f.name for f in fields(RenderConfig))


def _flag(name: str) -> str:
    return name.replace("_", "-")


def check_keys(values: dict[str, Any], source: str, allowed: tuple[str, ...] = FIELD_NAMES) -> dict[str, Any]:
    """Fail on any key that is not a setting (a typo must not be silently ignored)."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(allowed)}")
    return values


def load_config_file(path: str | Path) -> dict[str, Any]:
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
    return check_keys(data, str(path))


def merge(*layers: dict[str, Any]) -> RenderConfig:
    """Build a config from layers, lowest precedence first; ``None`` values in a layer do not override."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if v is not None})
    check_keys(values, "settings")
    # YAML may give 8 for fps or 7 for guidance: accept ints where floats are expected.
    for name in ("guidance", "fps", "noise_alpha"):
        if isinstance(values.get(name), int) and not isinstance(values.get(name), bool):
            values[name] = float(values[name])
    return RenderConfig(**values)


def to_dict(config: RenderConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
