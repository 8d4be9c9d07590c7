"""Text-to-video: glue in numbered stages (encode prompt, noise, sample, decode, export); no maths here."""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videodiff import heap, sampling, text, vae
from videodiff import noise as noise_priors
from videodiff.config import INFO_KEY, SPATIAL_NORMS, RenderConfig, load_config_file, merge, to_dict
from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.media.atomic import write_text_atomic
from videodiff.media.video import check_output, save_video, sidecar_path
from videodiff.motion_prior import prompt_features, start_step
from videodiff.schedulers import make_scheduler
from videodiff.unet import VideoUNet
from videodiff.unet.triggers import TriggeredLoRAs
from videodiff.weights.hub import builtin_model, package_versions, read_model_defaults
from videodiff.weights.models import ModelParts, load_model_parts

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``: CUDA, then Apple's MPS, then the CPU; an unavailable device is a user error."""
    name = str(device or "auto")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but MPS is not available")
    return torch.device(name)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``: fp16 on accelerators, fp32 on the CPU (half precision is slow and lossy there)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if device.type == "cpu" else torch.float16
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; choose one of: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def too_many_frames(frames: int, limit: int) -> UserError:
    return UserError(
        f"{frames} frames exceed the motion modules' positional encoding of {limit} frames; render at most {limit}"
    )


def pick_attention(requested: str, device: torch.device) -> str:
    """xformers only where CUDA is present and its kernels load; otherwise a notice and SDPA."""
    if requested != "xformers":
        return requested
    if device.type != "cuda":
        notice("xformers needs a CUDA device; using PyTorch SDPA attention")
        return "sdpa"
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken xformers install must not stop a render
        notice("xformers is not installed or its kernels do not load (pip install videodiff[xformers]); using SDPA")
        return "sdpa"
    return "xformers"


@dataclass
class VideoResult:
    frames: np.ndarray | None  # uint8 [F, H, W, 3]; None for output_type="latent"
    latents: torch.Tensor  # final latents [1, C, F, h, w]
    seed: int | None
    settings: dict[str, Any] = field(default_factory=dict)  # what reproduces it (RenderConfig field names)
    triggered: tuple[str, ...] = ()  # trigger words of the MotionLoRAs merged for this prompt


class VideoPipeline:
    """An SD1.5-family model inflated with motion modules; call it with a prompt to get frames."""

    def __init__(
        self,
        parts: ModelParts,
        device: torch.device,
        dtype: torch.dtype,
        attention: str = "sdpa",
        clip_skip: int | None = None,
        offload: str | None = None,
    ) -> None:
        self.parts = parts
        self.device, self.dtype = device, dtype
        self.tokenizer = parts.tokenizer
        self.offload = offload
        # with offloading the weights stay on the CPU and accelerate's hooks move them in when used
        home = torch.device("cpu") if offload else device
        self.text_encoder = parts.text_encoder.to(home, dtype)
        self.vae = parts.vae.to(home, dtype)
        self.unet = VideoUNet(parts.unet, parts.motion).to(home, dtype).eval()
        if offload == "sequential" and parts.triggers:
            raise UserError("motion LoRA triggers cannot switch weights with --offload sequential; use model")
        # after the move: the trigger LoRAs keep a copy of the weights they touch as they are now
        self.triggers = TriggeredLoRAs(parts.motion, parts.triggers) if parts.triggers else None
        if offload:
            self._install_offload(offload)
        self.attention = pick_attention(attention, device)
        self.unet.set_attention_backend(self.attention)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.clip_skip = clip_skip
        self._context_cache: dict[str, torch.Tensor] = {}

    @property
    def max_frames(self) -> int:
        return self.unet.max_frames

    def _install_offload(self, mode: str) -> None:
        """``model``: each model moves to the device while it runs (text encoder, U-Net, VAE in turn);
        ``sequential``: each layer does (smallest memory, slowest). Both from accelerate."""
        from accelerate import cpu_offload, cpu_offload_with_hook

        if mode == "sequential":
            for module in (self.text_encoder, self.unet, self.vae):
                cpu_offload(module, execution_device=self.device)
            return
        if mode != "model":
            raise UserError(f"unknown --offload {mode!r}; choose one of: model, sequential")
        hook = None
        for module in (self.text_encoder, self.unet, self.vae):
            _, hook = cpu_offload_with_hook(module, execution_device=self.device, prev_module_hook=hook)

    def enable_memory_savers(self, *, vae_tiling: bool = False, attention_slicing: bool = False) -> None:
        """VAE tiling for large frames; attention computed in slices (spatial: diffusers' sliced processor;
        temporal: chunks of positions). Outputs stay within float rounding of the plain path."""
        if vae_tiling:
            self.vae.enable_tiling()
        if attention_slicing:
            self.unet.unet.set_attention_slice("auto")
            self.unet.motion.set_attention_chunk(4096)

    def check_frames(self, num_frames: int) -> None:
        if num_frames > self.max_frames:
            raise too_many_frames(num_frames, self.max_frames)

    def default_size(self) -> tuple[int, int]:
        d = self.parts.defaults
        size = self.parts.unet.config.sample_size * self.vae_scale
        return int(d.get("height", size)), int(d.get("width", size))

    def encode(self, prompt: str) -> torch.Tensor:
        """``[1 n d]`` text context, cached per prompt (the empty prompt is reused every call)."""
        if prompt not in self._context_cache:
            self._context_cache[prompt] = text.encode_prompts(
                self.tokenizer, self.text_encoder, [prompt], self.device, clip_skip=self.clip_skip
            )
        return self._context_cache[prompt]

    def prior_guess(
        self,
        context: torch.Tensor,
        shape: tuple[int, int, int, int, int],
        generator: torch.Generator | None,
        motion: tuple[float, float] | None = None,
    ) -> tuple[torch.Tensor, tuple[float, float]]:
        """The motion prior's clean latent video for a prompt's ``context``, and its velocity in pixels per frame."""
        prior = self.parts.motion_prior
        if prior is None:
            raise UserError(
                "--motion-prior needs motion modules with a motion prior (fitted by `videodiff train --motion-prior`)"
            )
        guess = prior.predict(prompt_features(context))
        cells = None if motion is None else (motion[1] / self.vae_scale, motion[0] / self.vae_scale)
        clean = prior.video(guess, shape, generator, cells)
        vy, vx = cells if cells is not None else guess.velocity
        return clean.to(self.device), (round(vx * self.vae_scale, 4), round(vy * self.vae_scale, 4))

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        return (1, self.unet.in_channels, num_frames, height // self.vae_scale, width // self.vae_scale)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        latents: torch.Tensor | None = None,
        noise: str | None = None,
        noise_alpha: float | None = None,
        motion_prior: float | None = None,
        motion: tuple[float, float] | None = None,
        scheduler: str | None = None,
        decode_chunk: int | None = None,
        output_type: str = "np",
        progress: bool = False,
    ) -> VideoResult:
        """Render ``prompt`` to ``num_frames`` frames; returns a :class:`VideoResult` (``.frames`` uint8 ``[F H W 3]``).

        ``latents`` (``[1, C, F, h, w]``) replaces the seeded initial noise, as in diffusers;
        it is taken as unit-variance noise and scaled by the scheduler's ``init_noise_sigma``.
        ``motion_prior`` (from 0 up to 1) starts that fraction into the schedule from the model's
        motion prior (:mod:`videodiff.motion_prior`): its guess of the prompt's moving object,
        moving at ``motion`` (pixels per frame, ``(dx, dy)``) or at the velocity it predicts,
        noised with the initial noise; the first ``round(steps * motion_prior)`` steps are skipped.
        Settings left as ``None`` take the model's recorded defaults (``videodiff.json``), else
        16 frames, 25 steps, guidance 7.5, ddim and independent noise.
        """
        d = self.parts.defaults
        default_h, default_w = self.default_size()
        height, width = height or default_h, width or default_w
        num_frames = int(num_frames if num_frames is not None else d.get("frames", 16))
        num_inference_steps = int(num_inference_steps if num_inference_steps is not None else d.get("steps", 25))
        guidance_scale = float(guidance_scale if guidance_scale is not None else d.get("guidance", 7.5))
        scheduler = scheduler or d.get("scheduler", "ddim")
        noise = noise or d.get("noise", "independent")
        noise_alpha = float(noise_alpha if noise_alpha is not None else d.get("noise_alpha", 1.0))
        motion_prior = float(motion_prior if motion_prior is not None else d.get("motion_prior", 0.0))
        if motion_prior > 0 and self.parts.motion_prior is None and motion_prior == d.get("motion_prior"):
            # the model recommends a start for its own motion modules; these have no prior to start from
            notice(
                f"the model's motion_prior {motion_prior:g} does not apply: these motion modules have no motion prior"
            )
            motion_prior = 0.0
        negative_prompt = negative_prompt if negative_prompt is not None else d.get("negative")
        if seed is None and latents is None:
            seed = secrets.randbelow(2**32)
        settings = RenderConfig(
            prompt=prompt,
            negative=negative_prompt,
            frames=num_frames,
            steps=num_inference_steps,
            guidance=float(guidance_scale),
            seed=seed,
            height=height,
            width=width,
            scheduler=scheduler,
            noise=noise,
            noise_alpha=float(noise_alpha),
            motion_prior=motion_prior,
            motion=tuple(motion) if motion is not None else None,
            decode_chunk=decode_chunk,
        ).validate()
        self.check_frames(num_frames)
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {output_type!r}")
        guide = sampling.uses_guidance(guidance_scale)
        if negative_prompt and not guide:
            notice(f"the negative prompt has no effect at guidance {guidance_scale:g} (it needs guidance above 1)")

        # 0. the MotionLoRAs this prompt's words trigger
        triggered = tuple(t.word for t in self.triggers.select(prompt)) if self.triggers else ()
        # 1. encode the prompt (and the negative one for guidance)
        context = self.encode(prompt)
        uncond = self.encode(negative_prompt or "") if guide else None
        # 2. scheduler
        sched = make_scheduler(scheduler, self.parts.scheduler_config)
        # 3. initial noise, drawn on the CPU so a seed means the same video on any device
        generator = torch.Generator("cpu").manual_seed(seed) if seed is not None else None
        shape = self.latent_shape(num_frames, height, width)
        if latents is None:
            latents = noise_priors.sample_noise(shape, kind=noise, alpha=noise_alpha, generator=generator)
        elif tuple(latents.shape) != shape:
            raise UserError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        start = 0
        if motion_prior > 0:  # start part-way from the motion prior's guess, noised with that noise
            start = start_step(num_inference_steps, motion_prior)
            clean, velocity = self.prior_guess(context, shape, generator, motion)
            settings = dataclasses.replace(settings, motion=velocity)
            latents = sampling.noised_start(sched, num_inference_steps, start, clean, latents.float().to(self.device))
            latents = latents.to(self.device, self.dtype)
        else:
            if motion is not None:
                notice("--motion has no effect without --motion-prior")
            latents = latents.to(self.device, self.dtype) * sched.init_noise_sigma
        with heap.render_heap(self.device):  # the CPU heap keeps each step's freed activations for the next
            # 4. denoise
            latents = sampling.sample(
                self.unet,
                latents,
                sched,
                steps=num_inference_steps,
                context=context,
                uncond_context=uncond,
                guidance=guidance_scale,
                generator=generator,
                progress=progress,
                start=start,
            )
            # 5. decode
            frames = None
            if output_type == "np":
                chunk = decode_chunk or vae.default_chunk(self.device)
                frames = vae.to_uint8(vae.decode(self.vae, latents, chunk))[0]
        return VideoResult(frames, latents, seed, to_dict(settings), triggered)


def load_pipeline(
    model: str | None = None,
    motion_module: str | None = None,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    attention: str = "sdpa",
    vae: str | None = None,
    lora: tuple[str, ...] | list[str] = (),
    embedding: tuple[str, ...] | list[str] = (),
    motion_lora: tuple[str, ...] | list[str] = (),
    motion_lora_trigger: tuple[str, ...] | list[str] = (),
    motion_config: str | None = None,
    clip_skip: int | None = None,
    spatial_norm: str = "auto",
    offload: str | None = None,
    vae_tiling: bool = False,
    attention_slicing: bool = False,
) -> VideoPipeline:
    """Load an SD1.5-family model (diffusers folder, hub id or single file) inflated with motion modules.

    With no ``model``, the built-in shapes model (``a {color} {shape} moving {direction}``).
    With ``motion_module=None`` the model's own motion modules are used, if it ships
    them. ``lora``/``motion_lora`` take ``PATH[:SCALE]`` strings, ``motion_lora_trigger``
    ``WORD=PATH[:SCALE]`` (that MotionLoRA only for prompts with the word); ``embedding`` takes
    textual-inversion files; ``spatial_norm`` is ``auto``, ``joint`` (original v1) or
    ``per-frame`` (diffusers). For small GPUs: ``offload`` (``model`` or ``sequential`` CPU
    offload), ``vae_tiling`` and ``attention_slicing``.
    """
    if not model:
        model = builtin_model()
    if spatial_norm not in SPATIAL_NORMS:
        raise UserError(f"unknown --spatial-norm {spatial_norm!r}; choose one of: {', '.join(SPATIAL_NORMS)}")
    dev = resolve_device(device)
    parts = load_model_parts(
        model,
        motion_module,
        motion_config=motion_config,
        vae=vae,
        loras=tuple(lora),
        embeddings=tuple(embedding),
        motion_loras=tuple(motion_lora),
        motion_lora_triggers=tuple(motion_lora_trigger),
    )
    if offload and dev.type == "cpu":
        notice("--offload has no effect on the CPU (the weights are there already)")
        offload = None
    pipe = VideoPipeline(parts, dev, resolve_dtype(dtype, dev), attention, clip_skip=clip_skip, offload=offload)
    pipe.enable_memory_savers(vae_tiling=vae_tiling, attention_slicing=attention_slicing)
    joint = parts.norm_over_frames if spatial_norm == "auto" else spatial_norm == "joint"
    pipe.unet.set_norm_over_frames(joint)
    return pipe


def slug(prompt: str, limit: int = 40) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return words[:limit].rstrip("-") or "video"


def default_output(prompt: str, seed: int, folder: str | Path = "outputs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(folder) / f"{stamp}-{slug(prompt)}-{seed}.mp4"


def resolve_render_config(
    command_line: dict[str, Any], config_file: str | None = None, environment: dict[str, Any] | None = None
) -> RenderConfig:
    """Precedence: command line, then ``--config``, then environment variables (``VIDEODIFF_MODEL``...),
    then the model's recorded defaults, then built-ins."""
    from_file = load_config_file(config_file) if config_file else {}
    environment = environment or {}
    model = command_line.get("model") or from_file.get("model") or environment.get("model")
    return merge(read_model_defaults(model), environment, from_file, command_line).validate()


@dataclass
class RenderOutcome:
    output: Path
    sidecar: Path
    seed: int
    result: VideoResult


def pipeline_for(config: RenderConfig, device: str | torch.device | None = None) -> VideoPipeline:
    """The pipeline a render config asks for (model, add-ons, device, memory savers)."""
    return load_pipeline(
        config.model,
        config.motion_module,
        device=device or config.device,
        dtype=config.dtype,
        attention=config.attention,
        vae=config.vae,
        lora=config.lora,
        embedding=config.embedding,
        motion_lora=config.motion_lora,
        motion_lora_trigger=config.motion_lora_trigger,
        motion_config=config.motion_config,
        clip_skip=config.clip_skip,
        spatial_norm=config.spatial_norm,
        offload=config.offload,
        vae_tiling=config.vae_tiling,
        attention_slicing=config.attention_slicing,
    )


def check_frame_limit(config: RenderConfig) -> None:
    """Refuse too many frames from the motion module's header, before minutes of loading weights."""
    from videodiff.weights.hub import BUILTIN_MODEL
    from videodiff.weights.models import OWN_MOTION_FOLDER
    from videodiff.weights.motion_formats import frame_limit

    source = config.motion_module
    model = Path(config.model) if config.model else BUILTIN_MODEL
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


def render(config: RenderConfig, pipe: VideoPipeline | None = None) -> RenderOutcome:
    """Render ``config`` to its output file with a sidecar beside it; nothing is left half-written."""
    config.validate()
    if not config.prompt:
        raise UserError("no prompt given: pass PROMPT or set 'prompt' in the --config file")
    seed = config.seed if config.seed is not None else secrets.randbelow(2**32)
    output = Path(config.output) if config.output else default_output(config.prompt, seed)
    # fail before the work, and create no folder until there is something to write
    check_output(output, fps=config.fps, crf=config.crf, overwrite=config.overwrite, create=False)
    side = sidecar_path(output)
    if side.exists() and not config.overwrite:
        raise UserError(f"{side} already exists; pass --overwrite to replace it")
    if pipe is None:
        check_frame_limit(config)
        pipe = pipeline_for(config)
    pipe.check_frames(config.frames)
    if config.seed is None:
        notice(f"seed {seed} (pass --seed {seed} to render this video again)")
    result = pipe(
        config.prompt,
        negative_prompt=config.negative,
        num_frames=config.frames,
        height=config.height,
        width=config.width,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        seed=seed,
        noise=config.noise,
        noise_alpha=config.noise_alpha,
        motion_prior=config.motion_prior,
        motion=config.motion,
        scheduler=config.scheduler,
        decode_chunk=config.decode_chunk,
        progress=not config.quiet,
    )
    written = save_video(result.frames, output, fps=config.fps, crf=config.crf, overwrite=config.overwrite)
    record = sidecar_record(config, result, pipe, written)
    write_text_atomic(side, json.dumps(record, indent=2) + "\n")
    return RenderOutcome(written, side, seed, result)


def sidecar_record(config: RenderConfig, result: VideoResult, pipe: VideoPipeline, output: Path) -> dict[str, Any]:
    """What reproduces a video: the resolved settings, plus an informational part that ``--config`` ignores."""
    settings = to_dict(config)
    settings.update({k: result.settings[k] for k in ("seed", "height", "width")})
    for transient in ("output", "overwrite", "quiet"):
        settings.pop(transient)
    settings[INFO_KEY] = {
        "output": str(output),
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
