"""The web page's form <-> render settings, and uploads accepted into the outputs folder (no Gradio, no torch).

The page sends plain values (text, numbers, a picked file); :func:`build_config` turns them into the
same validated :class:`~videodiff.config.RenderConfig` the command line builds, with the output named
by the render layer inside the outputs folder. :func:`form_from_run` goes the other way ("use these
settings"). Uploads are checked by the same guarded readers as the CLI's inputs, then copied into
``OUTPUTS/inputs/`` under their content hash, so that a sidecar renders the video again later.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import shutil
from collections.abc import Collection
from dataclasses import fields
from pathlib import Path
from typing import Any

from videodiff.config import (
    FIELD_NAMES,
    OUTPUT_FORMATS,
    InputSettings,
    PostSettings,
    RenderConfig,
    merge,
    parse_image_at,
    parse_keyed,
    to_dict,
)
from videodiff.errors import UserError
from videodiff.render import default_output
from videodiff.ui.gallery import INPUTS_FOLDER, Run, inside

MODES = ("text", "img2vid", "vid2vid", "travel")
FORMATS = tuple(name for name, suffix in OUTPUT_FORMATS.items() if suffix)  # video files: not a folder of PNGs
# The settings the page shows: the common ones, then those under "Advanced".
COMMON = (
    "frames",
    "width",
    "height",
    "steps",
    "guidance",
    "seed",
    "scheduler",
    "noise",
    "strength",
    "window",
    "overlap",
    "loop",
)
ADVANCED = (
    "negative",
    "noise_alpha",
    "motion_prior",
    "motion_prior_space",
    "fuse",
    "window_noise",
    "window_layers",
    "free_init",
    "free_init_filter",
    "free_init_spatial",
    "free_init_temporal",
    "travel",
    "anchor",
    "fit",
    "background",
    "paste",
    "stride",
    "decode_chunk",
    "fps",
    "crf",
)
POST = ("interpolate", "interpolate_method", "upscale_factor")  # the Post-processing section
FORM_FIELDS = COMMON + ADVANCED + POST
OFF = "off"  # interpolate's and upscale_factor's choice for none (the frames as decoded)
UPSCALE_CHOICES = ("1.5", "2", "3", "4")  # the page's upscale factors (Lanczos, or after the server's --upscale)
TEXT_FIELDS = ("negative", "background")
# Fields the page never sets: what is loaded is the server's, where it is written is the render layer's.
# Controls and image prompts come from the page's Control and Image prompt sections (videodiff.ui.controls,
# videodiff.ui.prompts), never from the server's settings.
_SERVER_ONLY = (
    "output",
    "overwrite",
    "quiet",
    "prompt",
    "prompt_at",
    "image_at",
    "video",
    "motion",
    "controls",
    "ip_adapters",
    "interpolate_model",  # a file on the server: the page offers the weight-free methods and the model's own
    "upscale",  # a model file on the server: never named by a page
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
UPLOAD_VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")  # what vid2vid reads (PyAV)
MAX_IMAGE_BYTES = 20 << 20  # 20 MiB: a large photo; what the model sees is 512 pixels a side at most
MAX_VIDEO_BYTES = 200 << 20  # 200 MiB: minutes of phone video; vid2vid reads a few seconds of it
MAX_UPLOAD_BYTES = MAX_VIDEO_BYTES  # the server refuses larger requests before they reach the app

_KINDS = {f.name: str(f.type) for f in fields(RenderConfig)}


def draw_seed() -> int:
    return secrets.randbelow(2**32)


def value_of(name: str, value: Any) -> Any:
    """A page value as the setting's type: empty is ``None`` (the default), whole floats are ints where needed."""
    if value is None or (isinstance(value, str) and not value.strip() and name not in ("negative",)):
        return None
    if name in ("interpolate", "upscale_factor") and isinstance(value, str) and value.strip().lower() == OFF:
        return None
    kind = _KINDS[name]
    if isinstance(value, str) and kind.startswith(("int", "float")):  # an optional number's text box
        try:
            value = float(value.strip())
        except ValueError:
            raise UserError(
                f"{name.replace('_', ' ')} must be a number or empty (the default), got {value!r}"
            ) from None
    if kind.startswith("int") and isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise UserError(f"{name.replace('_', ' ')} must be a whole number, got {value:g}")
        return int(value)
    if kind.startswith("str") and not isinstance(value, str):
        return str(value)
    return value


def parse_keyframes(text: str) -> dict[int, str]:
    """Prompt travel's lines ``FRAME: TEXT`` (blank lines and ``#`` comments skipped)."""
    keys: dict[int, str] = {}
    for line in str(text or "").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            frame, prompt = parse_keyed(line)
            keys[frame] = prompt
    if not keys:
        raise UserError("prompt travel needs at least one line FRAME: TEXT, e.g. 0: a red circle moving right")
    return keys


def keyframes_text(keys: dict[int, str]) -> str:
    return "\n".join(f"{frame}: {text}" for frame, text in sorted(keys.items()))


def unique_output(prompt: str, seed: int, outputs: Path, fmt: str) -> Path:
    """The render layer's name for this prompt and seed in ``outputs`` (``-2``, ``-3``... if taken this second)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return free_name(default_output(prompt, seed, outputs).with_suffix("." + fmt))


def free_name(first: Path, taken: Collection[str] = ()) -> Path:
    """``first``, or ``NAME-2``, ``NAME-3``... : the first with neither a file, a sidecar nor a queued render
    (``taken``: the outputs of renders queued and running) of that name."""
    path, n = first, 1
    while str(path) in taken or path.exists() or path.with_name(path.name + ".json").exists():
        n += 1
        path = first.with_name(f"{first.stem}-{n}{first.suffix}")
    return path


def build_config(
    mode: str, values: dict[str, Any], base: RenderConfig, outputs: str | Path, fmt: str = "mp4"
) -> RenderConfig:
    """The validated settings of one render from the page's ``values`` over the server's ``base``.

    ``values``: :data:`FORM_FIELDS` plus the tab's own: ``prompt`` (text, img2vid, vid2vid), ``keyframes``
    (travel: lines ``FRAME: TEXT``), ``image`` and ``last_image`` (img2vid, accepted uploads), ``video``
    (vid2vid). A seed left empty (or below 0) is drawn here, so the output is named by the seed it renders.
    """
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}")
    outputs = Path(outputs)
    layer: dict[str, Any] = {}
    for name in FORM_FIELDS:
        if name in values:
            layer[name] = value_of(name, values[name])
    if layer.get("seed") is None or layer["seed"] < 0:
        layer["seed"] = draw_seed()
    prompt = str(values.get("prompt") or "").strip()
    if mode == "travel":
        layer["prompt_at"] = parse_keyframes(values.get("keyframes", ""))
    elif not prompt:
        raise UserError("type a prompt first, e.g. a red circle moving right")
    else:
        layer["prompt"] = prompt
    if mode == "img2vid":
        if not values.get("image"):
            raise UserError("img2vid needs a picture: upload one (PNG, JPEG, WebP...)")
        pins = [f"0:{inside(outputs, values['image'])}"]
        if values.get("last_image"):
            pins.append(f"-1:{inside(outputs, values['last_image'])}")
        layer["image_at"] = tuple(pins)
    elif mode == "vid2vid":
        if not values.get("video"):
            raise UserError("vid2vid needs a video: upload one (MP4, WebM, GIF...)")
        layer["video"] = str(inside(outputs, values["video"]))
    # settings that belong to other tabs do not travel into this one's sidecar
    if mode not in ("img2vid", "vid2vid"):
        layer["strength"] = None
    defaults = {f.name: f.default for f in (*fields(InputSettings), *fields(PostSettings))}
    if mode != "img2vid":
        layer.update({k: defaults[k] for k in ("anchor", "paste")})
    if mode != "vid2vid":
        layer["stride"] = defaults["stride"]
    if mode != "travel":
        layer.pop("travel", None)
    start = {k: v for k, v in to_dict(base).items() if k not in _SERVER_ONLY and k not in layer}
    # merge: None in a layer keeps the lower one; an emptied field means the base's (the model's) default
    config = merge(start, layer, cls=RenderConfig)
    config = config.replace(**{k: None for k in ("strength",) if layer.get(k, 0) is None})
    config = config.validate()
    first = next(iter(config.keyframes().values()))
    return config.replace(output=str(unique_output(first, config.seed, outputs, fmt)), overwrite=False, quiet=True)


def form_from_run(run: Run, outputs: str | Path) -> tuple[str, dict[str, Any], list[str]]:
    """ "Use these settings": the tab, the form's values and notices for what could not be carried over
    (inputs outside the outputs folder, or gone)."""
    settings = {k: v for k, v in run.settings.items() if k in FIELD_NAMES}
    values: dict[str, Any] = {k: settings[k] for k in FORM_FIELDS if k in settings}
    notices: list[str] = []
    mode = run.mode
    if mode == "travel":
        keys = merge({"prompt_at": settings.get("prompt_at"), "prompt": settings.get("prompt")}, cls=RenderConfig)
        values["keyframes"] = keyframes_text(keys.keyframes())
    else:
        values["prompt"] = settings.get("prompt") or ""
    for spec in settings.get("image_at") or ():
        try:
            frame, path = parse_image_at(spec)
            picked = inside(outputs, path)
        except UserError:
            notices.append(f"the picture {spec} is not in the outputs folder: upload it again")
            continue
        if not picked.is_file():
            notices.append(f"the picture {picked.name} is gone: upload it again")
            continue
        values["image" if frame == 0 else "last_image"] = str(picked)
    if settings.get("video"):
        try:
            picked = inside(outputs, settings["video"])
            if not picked.is_file():
                raise UserError("gone")
            values["video"] = str(picked)
        except UserError:
            notices.append("the input video is not in the outputs folder: upload it again")
    if settings.get("controls"):  # uploaded maps live only as long as their render; a ControlNet is chosen anew
        notices.append("this run was steered by a ControlNet: choose it and upload its maps again in Control")
    if settings.get("ip_adapters"):  # likewise the image prompt's picture
        notices.append("this run had an image prompt: choose its IP-Adapter and upload its picture again")
    values["format"] = run.output.suffix.lstrip(".") if run.output.suffix.lstrip(".") in FORMATS else "mp4"
    return mode, values, notices


def accept_upload(path: str | Path, outputs: str | Path, kind: str) -> Path:
    """An uploaded picture (``kind="image"``) or clip (``"video"``), checked by type, size and the CLI's guarded
    readers, copied to ``OUTPUTS/inputs/<sha256>.<ext>``; one-line :class:`UserError` otherwise."""
    from videodiff.media.atomic import atomic_file
    from videodiff.media.clips import check_moving_video
    from videodiff.media.images import check_file, check_image

    source = Path(path)
    suffixes, limit = (IMAGE_SUFFIXES, MAX_IMAGE_BYTES) if kind == "image" else (UPLOAD_VIDEO_SUFFIXES, MAX_VIDEO_BYTES)
    suffix = source.suffix.lower()
    if suffix not in suffixes:
        raise UserError(f"{source.name}: not a {kind} file this app takes ({' '.join(suffixes)})")
    size = check_file(source, kind).stat().st_size
    if size > limit:
        raise UserError(f"{source.name} is {size / 2**20:.0f} MiB; {kind}s up to {limit >> 20} MiB are taken")
    if kind == "image":
        check_image(source)
    else:
        check_moving_video(source)
    digest = hashlib.sha256()
    with open(source, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    target = Path(outputs) / INPUTS_FOLDER / f"{digest.hexdigest()[:24]}{suffix}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target) as tmp:
            shutil.copyfile(source, tmp)
    return target
