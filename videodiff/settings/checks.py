"""The limits settings are held to, and the checks that are not one field's bounds.

Types (a settings file can say ``seed: true``), prompt text, ``--guidance-interval``, and the errors other
modules raise for the same limits (:func:`too_many_frames`, :func:`lcm_steps_beyond`). Each field's own
bounds are in its metadata (:mod:`videodiff.settings.fields`).
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from videodiff.errors import UserError
from videodiff.settings.fields import flag, shown

# Limits named in the errors, checked before any work (a typo must not become an hour or a 7 GiB allocation).
MAX_STEPS = 1000  # the schedules have 1000 training timesteps: more steps than that repeat timesteps
MAX_SIDE = 4096  # pixels; SD1.5-family models are trained at 512 (the VAE alone would need tens of GiB beyond this)
MAX_FRAMES = 1024  # frames of one video: longer than a motion module's clips, they are sampled in sliding windows
LCM_MAX_STEPS = 50  # the LCM scheduler picks its steps from a 50-step skipping schedule (original_inference_steps)
MAX_PROMPT_CHARS = 10_000  # the text encoder reads 77 tokens; a longer prompt is a mistake, not a description
MAX_SETTINGS_BYTES = 1 << 20  # settings and prompt files are text a person wrote: 1 MiB is far more than enough
MIN_FPS = 0.1  # frames per second of a written video: 10 s a frame; GIF delays and time bases hold it exactly
MAX_FPS = 240  # what players show; GIF's shortest delay is 2 cs (50 fps), video containers go to 240
MAX_STRIDE = 1000  # vid2vid/train: every N-th frame of a clip; a larger N leaves one frame of any real video
MAX_YAML_DEPTH = 100  # nesting of a settings document: settings are at most a few levels deep
MAX_YAML_ALIASES = 100  # *alias uses in one document: a person's file uses a few, an alias bomb thousands
MAX_YAML_NODES = 1 << 20  # values once aliases are expanded: a 1 MiB file without aliases holds fewer
MAX_NAMED = 5  # unknown keys named in an error; the rest are counted
MAX_CACHE = 10  # --cache: DeepCache's own runs reuse features for at most 9 steps in 10; beyond, the video degrades
MAX_FREE_INIT = 10  # --free-init: FreeInit's paper and runs use 1 to 5 extra passes; each is a whole render again


def too_many_frames(frames: int) -> UserError:
    """The error for more than :data:`MAX_FRAMES` frames (longer than a window is fine: windows)."""
    return UserError(f"{frames} frames exceed the ceiling of {MAX_FRAMES} frames; render at most {MAX_FRAMES}")


def lcm_steps_beyond(steps: int, grid: int) -> UserError:
    """The error for more lcm steps than the solver steps the motion modules were distilled on."""
    return UserError(
        f"--steps {steps} is too many for lcm with these motion modules: at most {grid} (the solver steps they were "
        "distilled on)"
    )


# What check_types calls each kind of field in its error, by how the annotation starts.
KIND_NAMES = {
    "dict[int, str]": "a mapping of frame numbers to text",
    "tuple[Any": "a list",
    "tuple[float": "two numbers",
    "tuple": "a list of text",
    "bool": "true or false",
    "str": "text",
    "int": "a whole number",
    "float": "a number",
}


def check_types(config: Any, cls: type | None = None) -> None:
    """Each field (of ``cls``, else all) holds its declared kind (a config file can say ``seed: true``)."""
    for f in fields(cls or config):
        value, kind = getattr(config, f.name), str(f.type)
        if value is None:
            if "None" in kind:
                continue
            raise UserError(f"--{flag(f.name)} needs a value")
        if kind.startswith("dict[int, str]"):
            ok = isinstance(value, dict) and all(
                isinstance(k, int) and not isinstance(k, bool) and isinstance(v, str) for k, v in value.items()
            )
        elif kind.startswith("tuple[Any"):  # composite items (controls), checked by their stage's validate()
            ok = isinstance(value, (tuple, list))
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
            expected = next(v for k, v in KIND_NAMES.items() if kind.startswith(k))
            raise UserError(f"--{flag(f.name)} must be {expected}, got {shown(value)}")
        texts = [value] if isinstance(value, str) else value if kind.startswith("tuple[str") else []
        if any("\0" in text for text in texts):  # a path with one cannot be opened; text with one is a mistake
            raise UserError(f"--{flag(f.name)} contains a NUL character")


def check_interval(interval: Any) -> None:
    """``--guidance-interval``: two finite numbers LOW,HIGH with 0 <= LOW <= HIGH <= 1 (or None: every step)."""
    if interval is None:
        return
    numbers = [v for v in interval if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) != 2 or len(interval) != 2 or not all(map(math.isfinite, numbers)):
        raise UserError(f"--guidance-interval must be two numbers LOW,HIGH from 0 to 1, got {shown(interval)}")
    low, high = numbers
    if not 0 <= low <= high <= 1:
        raise UserError(f"--guidance-interval must have 0 <= LOW <= HIGH <= 1, got {low:g},{high:g}")


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
