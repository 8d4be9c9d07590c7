"""The syntax of flag strings: ``FRAME:TEXT``, ``FRAME:PATH``, ``PATH[:SCALE]``, ``WORD=PATH[:SCALE]``, ``R,G,B``,
``LOW,HIGH`` (no files are read here).

Each parser returns plain values or raises a one-line :class:`UserError` naming the flag and its form.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from videodiff.errors import UserError
from videodiff.settings.fields import shown

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
        raise UserError(f"--motion-lora-trigger must be WORD=PATH[:SCALE] with one word, got {shown(spec)}")
    path, scale = parse_scaled_path(rest)
    return word, path, scale


def parse_keyed(spec: str) -> tuple[int, str]:
    """``FRAME:TEXT`` -> ``(frame, text)`` (``--prompt-at 32:a blue circle``)."""
    if not isinstance(spec, str):  # a settings file's list may hold anything: never str() a nested value
        raise UserError(f"--prompt-at must be FRAME:TEXT with a frame number >= 0, got {shown(spec)}")
    head, sep, text = spec.partition(":")
    try:
        frame = int(head.strip())
    except ValueError:
        frame = -1
    if not sep or frame < 0 or not text.strip():
        raise UserError(f"--prompt-at must be FRAME:TEXT with a frame number >= 0, got {shown(spec)}")
    return frame, text.strip()


def parse_mapping(value: Any) -> Any:
    """``{frame: text}`` from a mapping (keys may be digit strings, as JSON writes them) or ``FRAME:TEXT``
    strings; anything else is returned as it is, for :func:`check_types` to report."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)):
        pairs = [parse_keyed(v) for v in value]
        counts = Counter(frame for frame, _ in pairs)
        twice = sorted(frame for frame, n in counts.items() if n > 1)
        if twice:  # a second prompt at one frame would silently replace the first
            raise UserError(f"--prompt-at frame {twice[0]} is given twice; give one prompt per frame")
        return dict(pairs)
    if isinstance(value, dict):
        return {int(k) if isinstance(k, str) and k.strip().isdigit() else k: v for k, v in value.items()}
    return value


def words_of(prompt: str) -> set[str]:
    """The words of a prompt, lower case (what trigger words are looked up in)."""
    return set(WORD.findall(prompt.lower()))


def parse_image_at(spec: str) -> tuple[int, str]:
    """``FRAME:PATH`` (``--image-at``): the frame (negative counts from the end) and the picture's path."""
    frame, sep, path = str(spec).partition(":")
    try:
        index = int(frame)
    except ValueError:
        index = None
    if not sep or index is None or not path:
        raise UserError(f"--image-at must be FRAME:PATH, e.g. 0:start.png or -1:end.png; got {shown(spec)}")
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
        raise UserError(f"--background must be R,G,B (0-255 each) or #RRGGBB, got {shown(text)}")
    return rgb  # type: ignore[return-value]


def parse_pair(text: str, flag: str, form: str = "LOW,HIGH, e.g. 0,0.5") -> tuple[float, float]:
    """``A,B``: two numbers (``--guidance-interval 0,0.5``); anything else is a one-line :class:`UserError`."""
    try:
        a, b = (float(v) for v in str(text).split(","))
    except ValueError:
        raise UserError(f"{flag} must be two numbers {form}; got {shown(text)}") from None
    return a, b
