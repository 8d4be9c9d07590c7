"""Image prompts (IP-Adapter, Ye et al. 2023): which adapters steer a render, from which pictures, how strongly.

One :class:`ImagePrompt` per adapter; :class:`IPAdapterSettings` holds them (``ip_adapters``) as the stage of a
render's settings. Torch-free: everything here is checked before any model loads.

On the command line ``--ip-adapter FILE --ip-image PATH [--ip-scale S]``, repeated (the n-th ``--ip-image`` and
``--ip-scale`` belong to the n-th ``--ip-adapter``), with ``--image-encoder FOLDER`` for every adapter that has no
``image_encoder/`` beside it. In settings files and Python: ``ip_adapters: [{adapter, image, scale, image_encoder}]``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

from videodiff.errors import UserError
from videodiff.settings.fields import composite_items, setting, shown

MAX_IP_ADAPTERS = 4  # each adapter adds one attention per cross-attention layer and step
MAX_IP_SCALE = 10.0  # ten times the image tokens' trained weight is far past any use
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
ENCODER_FOLDER = "image_encoder"  # where the peers (h94/IP-Adapter's models/, diffusers) keep the CLIP vision model


MEMORY = "memory:sha256="  # how a sidecar records a picture given in memory: the SHA-256 of its pixels


def in_memory(picture: Any) -> bool:
    """Whether ``picture`` is a picture in memory (a PIL image or an array: anything numpy reads), not a path."""
    return not isinstance(picture, (str, bytes, PathLike)) and (
        hasattr(picture, "__array_interface__") or hasattr(picture, "__array__")
    )


def pixels_sha256(picture: Any) -> str:
    """SHA-256 of a picture's pixels as given (``numpy.asarray``: a PIL image in its own mode), over its shape and
    dtype, then its bytes in C order."""
    import numpy as np

    array = np.ascontiguousarray(np.asarray(picture))
    digest = hashlib.sha256(f"{array.shape} {array.dtype.str}\n".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def parse_ip_image_at(spec: Any) -> tuple[int, Any]:
    """``FRAME:PATH`` (``--ip-image-at``), or ``(FRAME, PICTURE)`` in Python (a path, PIL image or array): the frame
    (negative counts from the end) and the picture."""
    if isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[0], bool) and isinstance(spec[0], int):
        if in_memory(spec[1]) or (isinstance(spec[1], str) and spec[1] and "\0" not in spec[1]):
            return spec
    frame, sep, path = str(spec).partition(":")
    try:
        index = int(frame)
    except ValueError:
        index = None
    if not isinstance(spec, str) or not sep or index is None or not path:
        raise UserError(f"--ip-image-at must be FRAME:PATH, e.g. 0:first.png or -1:last.png; got {shown(spec)}")
    if "\0" in path:
        raise UserError("--ip-image-at contains a NUL character")
    return index, path


@dataclass(frozen=True)
class ImagePrompt:
    """One IP-Adapter and its picture. ``adapter``: the weights file (or a folder holding one); ``image``: the
    picture (for every frame; with ``image_at``, the picture at frame 0); ``image_at``: ``FRAME:PATH`` keyframes,
    their image tokens blended between keyframes as prompt travel blends text (``travel``); ``scale``: diffusers'
    ``set_ip_adapter_scale``; ``image_encoder``: the CLIP vision model folder (``None``: ``image_encoder/`` beside
    the adapter)."""

    adapter: str
    image: Any = None  # a path; in Python also a PIL image or an array (numpy.asarray reads it)
    scale: float = 1.0
    image_encoder: str | None = None
    image_at: tuple[Any, ...] = ()  # "FRAME:PATH"; in Python also (FRAME, PICTURE)

    KEYS = ("adapter", "image", "scale", "image_encoder", "image_at")

    @classmethod
    def of(cls, value: Any) -> ImagePrompt:
        """An :class:`ImagePrompt` from itself or a mapping with its keys (a settings file's ``ip_adapters:`` item)."""
        if isinstance(value, ImagePrompt):
            return value.checked()
        if not isinstance(value, dict):
            raise UserError(f"each of ip_adapters must be a mapping of {', '.join(cls.KEYS)}; got {shown(value)}")
        unknown = [str(k) for k in value if k not in cls.KEYS]
        if unknown:
            raise UserError(f"ip_adapters: unknown key {shown(unknown[0])}; known: {', '.join(cls.KEYS)}")
        if value.get("adapter") is None:
            raise UserError("each of ip_adapters needs adapter")
        given = {k: value[k] for k in cls.KEYS if value.get(k) is not None}
        if "image_at" in given:
            items = given["image_at"]
            items = (items,) if isinstance(items, str) else items
            if not isinstance(items, (list, tuple)):
                raise UserError(f"ip_adapters: image_at must be a list of FRAME:PATH, got {shown(items)}")
            given["image_at"] = tuple(items)
        return cls(**given).checked()

    def checked(self) -> ImagePrompt:
        if self.image is None and not self.image_at:
            raise UserError("each IP-Adapter needs a picture: --ip-image PATH or --ip-image-at FRAME:PATH")
        if not isinstance(self.image_at, tuple):
            raise UserError(f"--ip-image-at must be a list of FRAME:PATH, got {shown(self.image_at)}")
        for spec in self.image_at:
            parse_ip_image_at(spec)
        for flag, text in (("--ip-adapter", self.adapter), ("--ip-image", self.image), ("--image-encoder", None)):
            text = self.image_encoder if flag == "--image-encoder" else text
            if (flag != "--ip-adapter" and text is None) or (flag == "--ip-image" and in_memory(text)):
                continue
            if not isinstance(text, str) or not text:
                also = " (in Python also a PIL image or an array)" if flag == "--ip-image" else ""
                raise UserError(f"{flag} must be a path{also}, got {shown(text)}")
            if "\0" in text:
                raise UserError(f"{flag} contains a NUL character")
            if flag == "--ip-image" and text.startswith(MEMORY) and not Path(text).exists():
                raise UserError(
                    f"--ip-image {text[:32]}...: a picture that was given in memory (Python), recorded by the SHA-256 "
                    "of its pixels; name a picture file to render it again"
                )
        scale = self.scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise UserError(f"--ip-scale must be a finite number, got {shown(scale)}")
        if not 0 <= scale <= MAX_IP_SCALE:
            raise UserError(f"--ip-scale must be from 0 to {MAX_IP_SCALE:g}, got {scale:g}")
        return self

    def pictures(self, frames: int) -> dict[int, Any]:
        """``{frame: picture}`` (a path, or a picture in memory) for a video of ``frames`` frames: ``image`` at frame 0
        (every frame when alone) and the ``image_at`` keyframes; a frame outside the video or given twice is a one-line
        :class:`UserError`."""
        out: dict[int, Any] = {} if self.image is None else {0: self.image}
        for spec in self.image_at:
            frame, path = parse_ip_image_at(spec)
            if not -frames <= frame < frames:
                last = frames - 1
                raise UserError(f"--ip-image-at frame {frame} is outside the video's {frames} frames (0 to {last})")
            index = frame % frames
            if index in out:
                first, second = (p if isinstance(p, str) else "a picture in memory" for p in (out[index], path))
                raise UserError(f"--ip-image-at gives frame {index} a second picture ({first} and {second})")
            out[index] = path
        return out

    def paths(self) -> list[str]:
        """Every picture file this prompt reads (pictures in memory are not files)."""
        every = [self.image] + [parse_ip_image_at(s)[1] for s in self.image_at]
        return [p for p in every if isinstance(p, str)]

    def record(self) -> dict[str, Any]:
        """The image prompt as a settings file holds it, local paths made absolute (a sidecar's item); a picture
        given in memory as ``memory:sha256=HEX``, the SHA-256 of its pixels (:func:`pixels_sha256`)."""
        def pinned(path: Any) -> str:
            if in_memory(path):
                return MEMORY + pixels_sha256(path)
            return str(Path(path).resolve()) if Path(path).exists() else path

        out: dict[str, Any] = {"adapter": pinned(self.adapter), "scale": self.scale}
        if self.image is not None:
            out["image"] = pinned(self.image)
        if self.image_encoder is not None:
            out["image_encoder"] = pinned(self.image_encoder)
        if self.image_at:
            out["image_at"] = [f"{f}:{pinned(p)}" for f, p in map(parse_ip_image_at, self.image_at)]
        return out


@dataclass(frozen=True, kw_only=True)
class IPAdapterSettings:
    """The IP-Adapters steering a render (none: no image prompt)."""

    ip_adapters: tuple[Any, ...] = setting(  # ImagePrompt items (mappings in settings files); the CLI builds them
        (), "IP-Adapters and their pictures: a list of {adapter, image, scale, image_encoder}."
    )

    def validate(self) -> IPAdapterSettings:
        """Raise :class:`UserError` (one line) for any image prompt that cannot work; return self."""
        self.parsed()
        return self

    def parsed(self) -> tuple[ImagePrompt, ...]:
        return composite_items(self.ip_adapters, "ip_adapters", "IP-Adapters", MAX_IP_ADAPTERS, ImagePrompt.of)


IP_ADAPTER_FIELDS = tuple(f.name for f in fields(IPAdapterSettings))
IP_FLAGS = ("ip_adapter", "ip_image", "ip_scale", "image_encoder", "ip_image_at")


def parse_image_prompts(value: Any) -> tuple[ImagePrompt, ...]:
    """Image prompts as the Python API takes them: ``None``, :class:`IPAdapterSettings`, or a list of
    :class:`ImagePrompt` s and mappings of its fields."""
    if value is None:
        return ()
    if isinstance(value, IPAdapterSettings):
        return value.validate().parsed()
    if isinstance(value, (ImagePrompt, dict)):
        value = (value,)
    return IPAdapterSettings(ip_adapters=tuple(value)).validate().parsed()


def image_prompts_from_flags(
    adapters: tuple[str, ...],
    images: tuple[str, ...],
    scales: tuple[float, ...],
    encoder: str | None,
    image_at: tuple[str, ...] = (),
) -> tuple[ImagePrompt, ...]:
    """``--ip-adapter``/``--ip-image``/``--ip-scale``/``--image-encoder``/``--ip-image-at`` as image prompts: the
    n-th of each for the n-th adapter; scales given for none or for each; ``--ip-image-at`` keyframes for one
    adapter only (several adapters with keyframes: a settings file's ``ip_adapters``)."""
    if not adapters:
        if images or scales or encoder or image_at:
            raise UserError("--ip-image, --ip-image-at, --ip-scale and --image-encoder need --ip-adapter FILE")
        return ()
    if image_at and len(adapters) > 1:
        raise UserError("--ip-image-at takes one --ip-adapter; give several adapters' keyframes in a settings file")
    if len(images) != len(adapters) and not (image_at and not images):
        raise UserError(f"{len(images)} --ip-image for {len(adapters)} --ip-adapter: give one picture per adapter")
    if scales and len(scales) != len(adapters):
        raise UserError(f"{len(scales)} --ip-scale for {len(adapters)} --ip-adapter: give none, or one per adapter")
    return tuple(
        ImagePrompt(a, images[i] if images else None, scales[i] if scales else 1.0, encoder, tuple(image_at)).checked()
        for i, a in enumerate(adapters)
    )


def flags_to_image_prompts(command_line: dict[str, Any]) -> dict[str, Any]:
    """The command line's values with its IP-Adapter flags (:data:`IP_FLAGS`) made into ``ip_adapters``."""
    given = [command_line.get(k) for k in IP_FLAGS]
    rest = {k: v for k, v in command_line.items() if k not in IP_FLAGS}
    if any(v not in (None, ()) for v in given):
        adapters, images, scales, encoder, image_at = given
        rest["ip_adapters"] = image_prompts_from_flags(
            tuple(adapters or ()), tuple(images or ()), tuple(scales or ()), encoder or None, tuple(image_at or ())
        )
    return rest


def adapter_file(source: str | Path) -> Path:
    """The weights file ``source`` names: the file, or the one IP-Adapter weights file in a folder."""
    path = Path(source)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
        if len(found) != 1:
            raise UserError(
                f"--ip-adapter {source}: a folder must hold one weights file, it holds {len(found)}; name the file"
            )
        return found[0]
    if not path.is_file():
        raise UserError(f"--ip-adapter {source}: no such file")
    return path


def find_image_encoder(source: str | Path, given: str | None) -> str:
    """The image encoder folder: ``given`` (``--image-encoder``), else ``image_encoder/`` beside the adapter file (or
    in its folder), as h94/IP-Adapter lays it out. Neither: a one-line :class:`UserError`."""
    if given is not None:
        if not Path(given).is_dir():
            raise UserError(f"--image-encoder {given}: no such folder (a CLIPVisionModelWithProjection folder)")
        return str(given)
    path = Path(source)
    for folder in (path / ENCODER_FOLDER, path.parent / ENCODER_FOLDER):
        if folder.is_dir():
            return str(folder)
    raise UserError(
        f"--ip-adapter {source}: no image encoder found beside it ({ENCODER_FOLDER}/); name one with --image-encoder"
    )
