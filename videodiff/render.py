"""The render layer: settings in, a video file and its sidecar out. Used by the CLI, batches (and the web app).

Everything about files lives here: where the output goes (:func:`default_output`), whether it
may be written (checked before minutes of loading and sampling), the frame limit read from the
motion module's header before the weights load, the sidecar that reproduces the video, and
writing both so that nothing is left half-written. :mod:`videodiff.pipelines` deals in tensors
and arrays only.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from videodiff.config import INFO_KEY, RenderConfig, load_config_file, parse_image_at, resolve, to_dict
from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.media.atomic import write_text_atomic
from videodiff.media.images import file_sha256
from videodiff.media.video import check_output, save_video, sidecar_path
from videodiff.pipelines import VideoPipeline, VideoResult, input_from, too_many_frames
from videodiff.sampling import OnStep
from videodiff.weights.hub import package_versions, read_model_defaults


def slug(prompt: str, limit: int = 40) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return words[:limit].rstrip("-") or "video"


def default_output(prompt: str, seed: int, folder: str | Path = "outputs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(folder) / f"{stamp}-{slug(prompt)}-{seed}.mp4"


def resolve_render_config(
    command_line: dict[str, Any],
    config_file: str | None = None,
    environment: dict[str, Any] | None = None,
    derived: dict[str, Any] | None = None,
) -> RenderConfig:
    """Precedence: command line, then ``--config``, then environment variables (``VIDEODIFF_MODEL``...),
    then what the input implies (``derived``: vid2vid's frame rate), then the model's recorded defaults,
    then built-ins."""
    from_file = load_config_file(config_file) if config_file else {}
    environment = environment or {}
    model = command_line.get("model") or from_file.get("model") or environment.get("model")
    return resolve(read_model_defaults(model), derived or {}, environment, from_file, command_line)


@dataclass
class RenderOutcome:
    output: Path
    sidecar: Path
    seed: int
    result: VideoResult


def check_frame_limit(config: RenderConfig) -> None:
    """Refuse too many frames from the motion module's header, before minutes of loading weights."""
    from videodiff.weights.hub import BUILTIN_MODEL, BUILTIN_NAME
    from videodiff.weights.models import OWN_MOTION_FOLDER
    from videodiff.weights.motion_formats import frame_limit

    source = config.motion_module
    model = Path(config.model) if config.model and config.model != BUILTIN_NAME else BUILTIN_MODEL
    if source is None and (model / OWN_MOTION_FOLDER).is_dir():
        source = str(model / OWN_MOTION_FOLDER)
    if source is None:
        return
    try:
        limit = frame_limit(source, config.motion_config)
    except UserError:
        return  # loading reports what is wrong with the file, with its full context
    if config.frames > limit:
        raise too_many_frames(config.frames, limit)


def render(config: RenderConfig, pipe: VideoPipeline | None = None, on_step: OnStep | None = None) -> RenderOutcome:
    """Render ``config`` to its output file with a sidecar beside it; nothing is left half-written.

    ``pipe``: an already loaded pipeline (batches, the web app); ``on_step`` is handed to the sampler
    (progress, previews; raising :class:`videodiff.sampling.Cancelled` stops before anything is written).
    """
    config.validate()
    if not config.prompt:
        raise UserError("no prompt given: pass PROMPT or set 'prompt' in the --config file")
    drawn = config.seed is None
    seed = secrets.randbelow(2**32) if drawn else config.seed
    config = config.replace(seed=seed)
    output = Path(config.output) if config.output else default_output(config.prompt, seed)
    # fail before the work, and create no folder until there is something to write
    check_output(output, fps=config.fps, crf=config.crf, overwrite=config.overwrite, create=False)
    side = sidecar_path(output)
    if side.exists() and not config.overwrite:
        raise UserError(f"{side} already exists; pass --overwrite to replace it")
    source = input_from(config.inputs)
    check_inputs(config)
    if pipe is None:
        check_frame_limit(config)
        pipe = VideoPipeline.load(config.load)
    pipe.check_frames(config.frames)
    if drawn:
        notice(f"seed {seed} (pass --seed {seed} to render this video again)")
    result = pipe.generate(config.sample, source=source, progress=not config.quiet, on_step=on_step)
    written = save_video(result.frames, output, fps=config.fps, crf=config.crf, overwrite=config.overwrite)
    record = sidecar_record(config, result, pipe, written)
    write_text_atomic(side, json.dumps(record, indent=2) + "\n")
    return RenderOutcome(written, side, seed, result)


def check_inputs(config: RenderConfig) -> None:
    """img2vid's pictures and vid2vid's clip checked from their headers, and pinned frames inside the video,
    before minutes of loading."""
    from videodiff.media.clips import check_video
    from videodiff.media.images import check_image

    for frame, path in map(parse_image_at, config.image_at):
        if not -config.frames <= frame < config.frames:
            last = config.frames - 1
            raise UserError(f"--image-at frame {frame} is outside the video's {config.frames} frames (0 to {last})")
        check_image(path)
    if config.video:
        check_video(config.video)


def input_paths(config: RenderConfig) -> list[str]:
    """The picture and video files a render reads (img2vid's ``image_at``, vid2vid's ``video``)."""
    return [path for _, path in map(parse_image_at, config.image_at)] + ([config.video] if config.video else [])


def sidecar_record(config: RenderConfig, result: VideoResult, pipe: VideoPipeline, output: Path) -> dict[str, Any]:
    """What reproduces a video: the resolved settings, plus an informational part that ``--config`` ignores."""
    settings = to_dict(config)
    settings.update({k: result.settings[k] for k in ("seed", "height", "width", "frames")})
    for transient in ("output", "overwrite", "quiet"):
        settings.pop(transient)
    # inputs by absolute path, so that the sidecar renders the video again from anywhere
    settings["image_at"] = [f"{frame}:{Path(path).resolve()}" for frame, path in map(parse_image_at, config.image_at)]
    if config.video:
        settings["video"] = str(Path(config.video).resolve())
    settings[INFO_KEY] = {
        "output": str(output),
        "inputs": {str(Path(path).resolve()): file_sha256(path) for path in input_paths(config)},
        "strength": result.settings.get("strength"),
        "frames_written": int(result.frames.shape[0]),
        "size_written": [int(result.frames.shape[2]), int(result.frames.shape[1])],
        "sources": pipe.parts.sources,
        "motion_lora_triggered": list(result.triggered),
        "motion_prior_velocity": result.settings["motion"] if result.settings["motion_prior"] > 0 else None,
        "device": str(pipe.device),
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "attention": pipe.attention,
        "versions": package_versions(),
        "created": datetime.now().isoformat(timespec="seconds"),
    }
    return settings
