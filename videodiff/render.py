"""The render layer: settings in, a video file and its sidecar out. Used by the CLI, batches (and the web app).

Everything about files lives here: where the output goes (:func:`default_output`), whether it
may be written (checked before minutes of loading and sampling), the frame limit read from the
motion module's header before the weights load, the sidecar that reproduces the video, and
writing both so that nothing is left half-written. :mod:`videodiff.pipelines` deals in tensors
and arrays only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
import types
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videodiff.config import (
    INFO_KEY,
    MAX_FRAMES,
    RenderConfig,
    lcm_steps_beyond,
    load_config_file,
    parse_image_at,
    resolve,
    to_dict,
    too_many_frames,
)
from videodiff.control.maps import map_source
from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.media.images import file_sha256
from videodiff.media.video import check_output, check_sidecar, save_video, sidecar_path
from videodiff.settings.control import check_sparse, control_record, flags_to_controls, parse_controls
from videodiff.settings.ip_adapter import adapter_file, find_image_encoder, flags_to_image_prompts, parse_image_prompts
from videodiff.weights.hub import package_versions, read_model_defaults

if TYPE_CHECKING:  # torch loads only when there is something to render (every check runs before it)
    from videodiff.pipelines import VideoPipeline, VideoResult
    from videodiff.sampling import OnStep


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
    then what the input implies (``derived``: vid2vid's frame rate), then the recorded defaults (a motion-module
    folder's, then the model's), then built-ins."""
    command_line = flags_to_controls(command_line)  # --controlnet/--control... -> controls
    command_line = flags_to_image_prompts(command_line)  # --ip-adapter/--ip-image... -> ip_adapters
    from_file = load_config_file(config_file) if config_file else {}
    environment = environment or {}
    model = command_line.get("model") or from_file.get("model") or environment.get("model")
    motion = command_line.get("motion_module") or from_file.get("motion_module") or environment.get("motion_module")
    return resolve(read_model_defaults(model, motion), derived or {}, environment, from_file, command_line)


@dataclass
class RenderOutcome:
    output: Path
    sidecar: Path
    seed: int
    result: VideoResult
    seconds: float = 0.0  # from the first check to the sidecar written


def check_frame_limit(config: RenderConfig) -> None:
    """Refuse more than MAX_FRAMES (1024) frames, a ``--window`` longer than the motion module's positional
    encoding (read from its header), an ``--overlap`` not shorter than the default window (the motion modules'
    recorded ``train_frames``) and more lcm steps than a distilled motion module's solver grid, before minutes
    of loading weights. Longer videos are sampled in windows."""
    if config.frames > MAX_FRAMES:
        raise too_many_frames(config.frames)
    from videodiff.weights.hub import (
        BUILTIN_MODEL,
        BUILTIN_NAME,
        OWN_MOTION_FOLDER,
        locate,
        recorded_lcm_steps,
        recorded_train_frames,
    )
    from videodiff.weights.motion_headers import frame_limit

    source = config.motion_module
    model = Path(config.model) if config.model and config.model != BUILTIN_NAME else BUILTIN_MODEL
    own = source is None
    if own and (model / OWN_MOTION_FOLDER).is_dir():
        source = str(model / OWN_MOTION_FOLDER)
    if source is None:
        return
    grid = recorded_lcm_steps(Path(source).expanduser()) if config.scheduler == "lcm" else None
    if grid is not None and config.steps > grid:
        raise lcm_steps_beyond(config.steps, grid)
    try:
        limit = frame_limit(source, config.motion_config)
    except UserError:
        return  # loading reports what is wrong with the file, with its full context
    if config.window is not None and config.window > limit:
        raise UserError(
            f"--window {config.window} exceeds the motion modules' positional encoding of {limit} frames; "
            f"use --window {limit} or less"
        )
    if config.window is not None or config.overlap is None:
        return  # validate() compared a given window and overlap; the default overlap is a quarter of the window
    location = locate(source, "motion module")  # found: frame_limit read its header
    # the default window, as the loaded pipeline takes it (ModelParts.train_frames, videodiff.windows.plan_windows)
    size = min(recorded_train_frames(location if location.is_dir() else None, model if own else None), limit)
    if config.frames > size and config.overlap >= size:  # one window (frames <= size) samples plainly
        raise UserError(
            f"--overlap must be from 0 to {size - 1} (less than the window of {size}), got {config.overlap}"
        )


def check_render(config: RenderConfig) -> tuple[RenderConfig, Path, bool]:
    """Every check that needs no model, before torch is imported: settings, prompt, output and sidecar.

    Returns the config with its seed set, the output path and whether the seed was drawn.
    """
    config.validate()
    if not (config.prompt and config.prompt.strip()) and not config.prompt_at:
        raise UserError("no prompt given: pass PROMPT (or --prompt-at) or set 'prompt' in the --config file")
    drawn = config.seed is None
    seed = secrets.randbelow(2**32) if drawn else config.seed
    config = config.replace(seed=seed)
    output = Path(config.output) if config.output else default_output(next(iter(config.keyframes().values())), seed)
    # fail before the work, and create no folder until there is something to write
    output = check_output(output, fps=config.fps, crf=config.crf, overwrite=config.overwrite, create=False)
    check_sidecar(output, overwrite=config.overwrite)
    check_memory(config)
    check_inputs(config)
    return config, output, drawn


# Bytes per output pixel that a render holds at least once: the decoded float32 frames and the uint8 video.
_BYTES_PER_PIXEL = 3 * 4 + 3


def check_memory(config: RenderConfig, total: int | None = None) -> None:
    """Refuse a video whose decoded frames alone would not fit in this machine's memory (before any work)."""
    if config.height is None or config.width is None:
        return  # the model's own size
    needed = config.frames * config.height * config.width * _BYTES_PER_PIXEL
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return
    if needed > total:
        raise UserError(
            f"{config.frames} frames of {config.width}x{config.height} need about {needed / 2**30:.1f} GiB for the "
            f"decoded video alone; this machine has {total / 2**30:.1f} GiB: use fewer frames or a smaller size"
        )


def render(config: RenderConfig, pipe: VideoPipeline | None = None, on_step: OnStep | None = None) -> RenderOutcome:
    """Render ``config`` to its output file with a sidecar beside it; nothing is left half-written.

    ``pipe``: an already loaded pipeline (batches, the web app); ``on_step`` is handed to the sampler
    (progress, previews; raising :class:`videodiff.sampling.Cancelled` stops before anything is written).
    """
    started = time.monotonic()
    config, output, drawn = check_render(config)
    seed = config.seed
    try:
        if pipe is None:
            check_frame_limit(config)
            from videodiff.pipelines import VideoPipeline

            pipe = VideoPipeline.load(config.load)
        pipe.check_frames(config.frames, config.window)
        if drawn:
            notice(f"seed {seed} (pass --seed {seed} to render this video again)")
        from videodiff.pipelines import input_from

        source = input_from(config.inputs)
        result = pipe.generate(
            config.sample, source=source, progress=not config.quiet, on_step=on_step, post=config.post, fps=config.fps,
            controls=config.control, ip_adapters=config.image_prompts,
        )
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError; so is the MPS one
        if not is_out_of_memory(exc):
            raise
        raise out_of_memory(config) from None
    record = sidecar_record(config, result, pipe, output)
    # the sidecar is moved into place with the video (before it, signals held): never a video without it
    written = save_video(
        result.frames,
        output,
        fps=result.fps or config.fps,
        crf=config.crf,
        overwrite=config.overwrite,
        sidecar=json.dumps(record, indent=2) + "\n",
    )
    return RenderOutcome(written, sidecar_path(written), seed, result, time.monotonic() - started)


def is_out_of_memory(exc: BaseException) -> bool:
    """A GPU (or MPS) out-of-memory error, recognised without importing torch."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def out_of_memory(config: RenderConfig) -> UserError:
    """What to try when the GPU runs out of memory, concretely, for this render."""
    size = f"{config.width}x{config.height}" if config.height and config.width else "the model's size"
    chunk = max(1, (config.decode_chunk or 16) // 2)
    advice = [f"fewer --frames than {config.frames}", f"--decode-chunk {chunk}"]
    if config.dtype not in ("fp16", "bf16"):
        advice.append("--dtype fp16")
    if config.offload is None:
        advice.append("--offload model")
    if not config.attention_slicing:
        advice.append("--attention-slicing")
    if not config.vae_tiling:
        advice.append("--vae-tiling")
    return UserError(f"out of GPU memory rendering {config.frames} frames of {size}; try {', '.join(advice)}")


def summary(outcome: RenderOutcome, fps: float) -> str:
    """One line after a render: what was written, frames, size, fps, duration and the time it took."""
    frames, height, width = (int(n) for n in outcome.result.frames.shape[:3])
    fps = outcome.result.fps or fps  # a post-processing step may have changed it
    return (
        f"wrote {outcome.output}: {frames} frames, {width}x{height}, {fps:g} fps, "
        f"{frames / fps:.2f} s of video, in {outcome.seconds:.1f} s"
    )


def check_inputs(config: RenderConfig) -> None:
    """img2vid's pictures, vid2vid's clip, the controls' maps and image prompts checked from their headers, and
    pinned frames inside the video, before minutes of loading."""
    from videodiff.control.maps import check_maps
    from videodiff.media.clips import check_moving_video
    from videodiff.media.images import check_image

    for frame, path in map(parse_image_at, config.image_at):
        if not -config.frames <= frame < config.frames:
            last = config.frames - 1
            raise UserError(f"--image-at frame {frame} is outside the video's {config.frames} frames (0 to {last})")
        check_image(path)
    frames = config.frames
    if config.video:  # the frames vid2vid will read, budgeted from the file's header (videodiff.media.budget)
        size = (config.height, config.width) if config.height and config.width else None
        available = check_moving_video(config.video, frames=config.frames, stride=config.stride, size=size).num_frames
        frames = min(frames, len(range(0, available, config.stride)))  # a shorter clip makes a shorter video
    check_sparse(config.controls, frames)  # SparseCtrl's pictures: frames inside the video, files that exist
    for control in parse_controls(config.controls):
        if control.maps is not None:
            check_maps(control.parsed_maps, frames, config.stride if config.video else 1)
        if control.controlnet is None and own_controlnet(config.model) is None:
            raise UserError("--control without --controlnet needs a model that records its own ControlNet; name one")
    for prompt in parse_image_prompts(config.ip_adapters):  # IP-Adapters: weights, an encoder, pictures in the video
        find_image_encoder(adapter_file(prompt.adapter), prompt.image_encoder)
        check_adapter_width(adapter_file(prompt.adapter), config.model)
        for path in prompt.pictures(frames).values():
            check_image(path)


def check_adapter_width(adapter: Path, model: str | None) -> None:
    """A ``.safetensors`` IP-Adapter made for another cross-attention width than a local model folder's
    (``unet/config.json``), told from the headers before anything loads; other cases are checked as it loads."""
    from videodiff.weights.hub import BUILTIN_MODEL, BUILTIN_NAME
    from videodiff.weights.safetensors_header import read_header

    config = (BUILTIN_MODEL if model in (None, BUILTIN_NAME) else Path(model)) / "unet" / "config.json"
    if adapter.suffix.lower() != ".safetensors" or not config.is_file():
        return
    try:
        width = json.loads(config.read_text(encoding="utf-8")).get("cross_attention_dim")
    except (OSError, ValueError, AttributeError):
        return  # the model's own load reports it
    shape = read_header(adapter).shapes.get("ip_adapter.1.to_k_ip.weight")
    if isinstance(width, int) and shape is not None and len(shape) == 2 and shape[1] != width:
        raise UserError(
            f"--ip-adapter {adapter}: made for {shape[1]}-wide text, the model's is {width}; "
            "an adapter for another model family"
        )


def control_source(control, frames: int) -> dict[str, Any]:
    """What a sidecar records of where a control's maps (or SparseCtrl's pictures) came from, with digests."""
    if control.maps is not None:
        return map_source(control.parsed_maps)
    from videodiff.control.sparse import picture_sources

    return {"pictures": picture_sources(control, frames)}


def own_controlnet(model: str | None) -> str | None:
    """The ControlNet a local model folder records as its own (``videodiff.json``), from its files alone."""
    from videodiff.weights.hub import BUILTIN_MODEL, BUILTIN_NAME, recorded_controlnet

    root = BUILTIN_MODEL if model in (None, BUILTIN_NAME) else Path(model)
    return recorded_controlnet(root) if root.is_dir() else None


def input_paths(config: RenderConfig) -> list[str]:
    """The picture and video files a render reads (img2vid's ``image_at``, vid2vid's ``video``, image prompts)."""
    pictures = [path for _, path in map(parse_image_at, config.image_at)]
    prompts = [path for p in parse_image_prompts(config.ip_adapters) for path in p.paths()]
    return pictures + ([config.video] if config.video else []) + prompts


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
    controls = parse_controls(config.controls)
    settings["controls"] = [control_record(c) for c in controls]
    settings["ip_adapters"] = [p.record() for p in parse_image_prompts(config.ip_adapters)]
    settings[INFO_KEY] = {
        "controls": [control_source(c, int(result.frames.shape[0])) for c in controls],
        "output": str(output),
        "inputs": {str(Path(path).resolve()): file_sha256(path) for path in input_paths(config)},
        "strength": result.settings.get("strength"),
        "frames_written": int(result.frames.shape[0]),
        "fps_written": result.fps or config.fps,
        "post": result.post,
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


class _RenderModule(types.ModuleType):
    """``videodiff.render`` names both this module and its :func:`render` (the Python API's
    ``videodiff.render(config)``): importing the module puts the module in the package's attribute, in place of the
    function the package gives lazily, so the module itself renders when called."""

    def __call__(self, config: RenderConfig, pipe: VideoPipeline | None = None, on_step: OnStep | None = None):
        return render(config, pipe, on_step)


sys.modules[__name__].__class__ = _RenderModule
