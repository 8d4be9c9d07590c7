"""The render layer: settings in, a video file and its sidecar out. Used by the CLI, batches (and the web app).

Everything about files lives here: where the output goes (:func:`default_output`), whether it
may be written (checked before minutes of loading and sampling), the frame limit read from the
motion module's header before the weights load, the sidecar that reproduces the video, and
writing both so that nothing is left half-written. :mod:`videodiff.pipelines` deals in tensors
and arrays only.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import sys
import time
import types
from dataclasses import dataclass, replace
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
from videodiff.errors import UserError
from videodiff.heap import Architecture, Footprint, available_memory, estimate, likely_device
from videodiff.log import notice
from videodiff.media.images import file_sha256
from videodiff.media.video import check_output, check_sidecar, save_video, sidecar_path
from videodiff.post.interpolate import frames_after
from videodiff.settings.control import control_record, flags_to_controls, parse_controls
from videodiff.settings.ip_adapter import flags_to_image_prompts, parse_image_prompts
from videodiff.sources import check_inputs, control_source, input_paths
from videodiff.weights.hub import builtin_motion_module, package_versions, read_model_defaults
from videodiff.weights.ldm_layout import sdxl_file_architecture
from videodiff.weights.motion_headers import trained_at

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
    recorded = {**trained_at(motion), **read_model_defaults(model, motion)}  # a model's own videodiff.json wins
    config = resolve(recorded, derived or {}, environment, from_file, command_line)
    factor = config.interpolate or 1
    if command_line.get("fps") is not None and factor > 1:  # --fps names the written rate: the frames play at 1/N
        config = replace(config, fps=config.fps / factor)
    return config


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


def check_render(config: RenderConfig, pipe: VideoPipeline | None = None) -> tuple[RenderConfig, Path, bool]:
    """Every check that needs no model, before torch is imported: settings, prompt, output and sidecar, the memory
    the render needs against the memory available (:func:`check_memory`; ``pipe``: the pipeline already loaded, so
    its weights are not counted again), the inputs' headers.

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
    check_memory(config, pipe=pipe)
    check_inputs(config)
    return config, output, drawn


def model_architecture(config: RenderConfig) -> Architecture:
    """What :func:`videodiff.heap.estimate` needs of the model and motion modules ``config`` names, read from their
    config files and safetensors headers (no torch, no download); SD1.5's figures where a model is not a local
    folder or SDXL single file (a hub id, an SD1.5 single file) or its files cannot be read (loading reports
    those)."""
    model, motion = _local_paths(config)
    defaults = Architecture()
    motion_config = _small_json(motion / "config.json") if motion.is_dir() else {}
    motion_heads = motion_config.get("motion_num_attention_heads", defaults.motion_heads)
    motion_params = _parameters(motion) if motion.exists() else _SD15_MOTION_PARAMETERS
    if not model.is_dir():
        params = _parameters(model) if model.is_file() else defaults.parameters - _SD15_MOTION_PARAMETERS
        own = sdxl_file_architecture(model) if model.is_file() else None  # SD1.5's figures fit SD1.5 files
        return replace(own or defaults, parameters=params + motion_params, motion_heads=_first_int(motion_heads, 8))
    unet, vae = _small_json(model / "unet" / "config.json"), _small_json(model / "vae" / "config.json")
    try:
        vae_channels = [int(c) for c in vae.get("block_out_channels", (128, 256, 512, 512))]
        unet_channels = [int(c) for c in unet.get("block_out_channels", (320, 640, 1280, 1280))]
        kinds = [str(k) for k in unet.get("down_block_types", ["CrossAttnDownBlock2D"])]
        level = next((i for i, kind in enumerate(kinds) if kind.startswith("CrossAttn")), None)
        heads = unet.get("num_attention_heads") or unet.get("attention_head_dim", 8)
        if isinstance(heads, list) and level is not None:
            heads = heads[min(level, len(heads) - 1)]
        scale = 2 ** (len(vae_channels) - 1)
        return Architecture(
            vae_scale=scale,
            vae_width=vae_channels[min(1, len(vae_channels) - 1)],
            vae_tile=_first_int(vae.get("sample_size"), 512),
            unet_width=unet_channels[0],
            attention_level=level,
            attention_heads=_first_int(heads, 8),
            motion_heads=_first_int(motion_heads, 8),
            parameters=sum(_parameters(model / part) for part in ("unet", "vae", "text_encoder", "text_encoder_2"))
            + motion_params,
            size=_first_int(unet.get("sample_size"), 64) * scale,
        )
    except (TypeError, ValueError, IndexError, AttributeError):
        return defaults  # a broken config: loading says what is wrong with it


_SD15_MOTION_PARAMETERS = 453_209_280  # AnimateDiff's SD1.5 motion modules (v2, with the mid block)


def _local_paths(config: RenderConfig) -> tuple[Path, Path]:
    """Where the model and its motion modules would be, were they local (a hub id names no local path)."""
    from videodiff.weights.hub import BUILTIN_MODEL, BUILTIN_NAME, OWN_MOTION_FOLDER

    model = BUILTIN_MODEL if config.model in (None, BUILTIN_NAME) else Path(config.model).expanduser()
    given = builtin_motion_module(config.motion_module)
    motion = Path(given).expanduser() if given else model / OWN_MOTION_FOLDER
    return model, motion


def _first_int(value: Any, default: int) -> int:
    value = value[0] if isinstance(value, list) and value else value
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _small_json(path: Path) -> dict[str, Any]:
    """A config file as a dict; ``{}`` for anything that is not a small regular JSON file."""
    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _parameters(path: Path) -> int:
    """The parameters of the weights at ``path`` (a file, or the largest weights file in a folder): counted from a
    safetensors header, else the file's size over 2 (as if fp16: pickles cannot be read without torch)."""
    from videodiff.weights.safetensors_header import read_header

    files = [path] if path.is_file() else [p for p in path.glob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file()]
    counts = [0]
    for file in files:
        try:
            if file.suffix == ".safetensors":
                counts.append(sum(math.prod(shape) for shape in read_header(file).shapes.values()))
                continue
        except UserError:
            pass
        counts.append(file.stat().st_size // 2)
    return max(counts)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def memory_needed(
    config: RenderConfig, device: str, value_bytes: int | None = None, *, lower: bool = False
) -> Footprint:
    """:func:`videodiff.heap.estimate` for ``config`` on a ``device`` type (``cpu``, ``cuda``, ``mps``); ``lower``:
    its lower bound (for a GPU) instead of its upper bound."""
    from videodiff.weights.hub import recorded_train_frames

    arch = model_architecture(config)
    height, width = config.height or arch.size, config.width or arch.size
    model, motion = _local_paths(config)
    # frames per U-Net call: one window (the motion modules' training length by default), or every frame
    size = config.window or recorded_train_frames(motion if motion.is_dir() else None, model)
    window = min(config.frames, size)
    per_call = config.frames if config.window_layers == "temporal" else window
    guided = 2 if config.guidance > 1 else 1
    default_chunk = 2 if device == "cpu" else 16  # videodiff.vae.default_chunk
    if value_bytes is None:
        value_bytes = 4 if config.dtype == "fp32" or (config.dtype == "auto" and device == "cpu") else 2
    return estimate(
        arch,
        frames=config.frames,
        height=height,
        width=width,
        unet_frames=per_call * guided,
        window=window,
        chunk=min(config.frames, config.decode_chunk or default_chunk),
        encode=min(config.frames, default_chunk) if config.video or config.image_at else 0,
        attention=config.attention,
        sliced=config.attention_slicing,
        tiling=config.vae_tiling,
        value_bytes=value_bytes,
        lower=lower,
    )


def check_memory(config: RenderConfig, available: int | None = None, *, pipe: VideoPipeline | None = None) -> None:
    """Refuse, before any work, a render that would not fit in the memory available (``available`` bytes; default:
    :func:`videodiff.heap.available_memory`): on the CPU (and Apple's unified memory) everything
    :func:`memory_needed` counts, less the weights of an already loaded ``pipe``; with a CUDA GPU the host's part
    only (:func:`check_device_memory` checks the GPU's after loading)."""
    device = pipe.device.type if pipe is not None else config.device.split(":")[0]
    device = likely_device() if device == "auto" else device
    need = memory_needed(config, device, getattr(pipe.dtype, "itemsize", None) if pipe is not None else None)
    needed = need.total if device in ("cpu", "mps") else need.host
    if pipe is not None:
        needed -= need.runtime + need.weights  # resident already
    free = available_memory() if available is None else available
    if free is not None and needed > free:
        raise _too_big(config, need, needed, free)


def check_device_memory(config: RenderConfig, pipe: VideoPipeline, free: int | None = None) -> None:
    """After loading, before sampling: on a CUDA device, refuse a render whose sampling or VAE decode could not fit
    in the GPU's free memory (``torch.cuda.mem_get_info`` plus what torch's allocator holds unused), counting a lower
    bound (:func:`videodiff.heap.estimate` with ``lower``): only what cannot fit is refused. Elsewhere
    :func:`check_memory` again, with the device the pipeline got (``--device auto`` was a guess before loading)."""
    if pipe.device.type != "cuda":
        check_memory(config, free, pipe=pipe)
        return
    need = memory_needed(config, "cuda", getattr(pipe.dtype, "itemsize", None), lower=True)
    if free is None:
        import torch

        free = torch.cuda.mem_get_info(pipe.device)[0]
        free += torch.cuda.memory_reserved(pipe.device) - torch.cuda.memory_allocated(pipe.device)
    if need.device > free:
        raise _too_big(config, need, need.device, free, gpu=True)


def _too_big(config: RenderConfig, need: Footprint, needed: int, free: int, *, gpu: bool = False) -> UserError:
    """The one line saying what a render needs (``gpu``: at least, on the GPU) and what would make it fit."""
    size = f"{config.width}x{config.height}" if config.height and config.width else "the model's size"
    stages = {"sampling": need.sampling, "decoding": need.decoding, "converting": need.converting}
    stage = max(stages, key=stages.__getitem__)
    advice = []
    if stage == "decoding" and (config.decode_chunk or 2) > 1:
        advice.append("--decode-chunk 1")
    if stage == "decoding" and not config.vae_tiling:
        advice.append("--vae-tiling")
    if stage == "sampling" and (config.attention == "math" or config.attention_slicing):
        advice.append("--attention sdpa without --attention-slicing")
    if stage == "converting" or config.frames > 16:
        advice.append("fewer --frames")
    advice.append("a smaller --height/--width")
    amount = f"{'at least' if gpu else 'about'} {needed / 2**30:.1f} GiB ({need.parts(gpu)})"
    where = "GPU memory" if gpu else "memory"
    return UserError(
        f"{config.frames} frames of {size} need {amount}; {free / 2**30:.1f} GiB of {where} is available: "
        f"try {', '.join(advice)}"
    )


def render(config: RenderConfig, pipe: VideoPipeline | None = None, on_step: OnStep | None = None) -> RenderOutcome:
    """Render ``config`` to its output file with a sidecar beside it; nothing is left half-written.

    ``pipe``: an already loaded pipeline (batches, the web app); ``on_step`` is handed to the sampler
    (progress, previews; raising :class:`videodiff.sampling.Cancelled` stops before anything is written).
    """
    started = time.monotonic()
    config, output, drawn = check_render(config, pipe)
    seed = config.seed
    if config.interpolate and config.interpolate_method == "rife":  # what the file holds, before the model loads
        from videodiff.post.rife import load_rife

        load_rife(str(config.interpolate_model))
    try:
        if pipe is None:
            check_frame_limit(config)
            from videodiff.pipelines import VideoPipeline

            pipe = VideoPipeline.load(config.load)
        pipe.check_frames(config.frames, config.window)
        inbetweens = config.interpolate if config.interpolate_method == "model" else None
        if inbetweens:  # the second pass (videodiff.pipeline.inbetweens) renders this many frames
            pipe.check_frames(frames_after(config.frames, inbetweens, loop=config.loop), config.window)
        check_device_memory(config, pipe)
        if drawn:
            notice(f"seed {seed} (pass --seed {seed} to render this video again)")
        from videodiff.pipelines import input_from

        source = input_from(config.inputs)
        # the first pass's post stage: without interpolation, and upscaling comes after the in-betweens
        post = replace(config.post, interpolate=None, upscale=None, upscale_factor=None) if inbetweens else config.post
        result = pipe.generate(
            config.sample,
            source=source,
            progress=not config.quiet,
            on_step=on_step,
            post=post,
            fps=config.fps,
            controls=config.control,
            ip_adapters=config.image_prompts,
        )
        if inbetweens and result.frames is not None and (result.frames.shape[0] > 1 or config.loop):
            from videodiff.pipeline.inbetweens import model_inbetweens

            result = model_inbetweens(
                pipe, config.sample, result, inbetweens, fps=config.fps, progress=not config.quiet, on_step=on_step
            )
        if inbetweens and result.frames is not None and (config.upscale or config.upscale_factor):
            from videodiff.post import Clip, run_post
            from videodiff.post.upscale import Upscale

            clip, steps = run_post(Clip(result.frames, result.fps), [Upscale(config.upscale, config.upscale_factor)])
            result = replace(result, frames=clip.frames, post=[*result.post, *steps])
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
    if config.interpolate_model:
        settings["interpolate_model"] = str(Path(config.interpolate_model).resolve())
    if config.upscale:
        settings["upscale"] = str(Path(config.upscale).resolve())
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
