"""The video pipeline: a model inflated with motion modules, and the stages every kind of render shares.

Stages (methods of :class:`VideoPipeline`), each with typed inputs: encode the prompts
(:meth:`~VideoPipeline.conditioning`), draw the initial noise (:meth:`~VideoPipeline.initial_noise`),
choose where sampling starts (:meth:`~VideoPipeline.start`), denoise (:meth:`~VideoPipeline.denoise`),
decode (:meth:`~VideoPipeline.decode`), post-process (:mod:`videodiff.post`). Text-to-video
(:meth:`~VideoPipeline.generate`) chains them; img2vid and vid2vid reuse them with other starts and step
hooks. Tensors and arrays only: files are written by :mod:`videodiff.render`. No maths here. The parts that
are not the chain itself (devices, plain data, img2vid's and vid2vid's starts, FreeInit) are
:mod:`videodiff.pipeline`.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import torch

from videodiff import heap, keyframes, sampling, starts, vae, windows
from videodiff import noise as noise_priors
from videodiff.config import (
    IMG2VID_ANCHOR,
    InputSettings,
    LoadSettings,
    PostSettings,
    SampleSettings,
    lcm_steps_beyond,
    merge,
    parse_rgb,
    resolve,
    to_dict,
)
from videodiff.errors import UserError
from videodiff.log import gathering, notice, say_held
from videodiff.motion_prior import PixelCodec
from videodiff.pipeline import denoisers, prompts, starting
from videodiff.pipeline.devices import (
    DTYPES,
    enable_memory_savers,
    install_offload,
    pick_attention,
    resolve_device,
    resolve_dtype,
)
from videodiff.pipeline.freeinit import FreeInitProgress, free_init_start
from videodiff.pipeline.inputs import (
    CALL_NAMES,
    Conditioning,
    ImageInput,
    VideoInput,
    VideoResult,
    input_from,
    read_source,
)
from videodiff.post import Clip, run_post, steps_for
from videodiff.schedulers import make_scheduler
from videodiff.settings.control import parse_controls
from videodiff.unet import VideoUNet
from videodiff.unet.triggers import TriggeredLoRAs
from videodiff.weights.hub import builtin_model
from videodiff.weights.models import ModelParts, load_model_parts

__all__ = [  # the pipeline's public names, some defined in videodiff.pipeline and kept importable from here
    "CALL_NAMES", "DTYPES", "Conditioning", "FreeInitProgress", "ImageInput", "VideoInput", "VideoPipeline",
    "VideoResult", "input_from", "load_pipeline", "pick_attention", "resolve_device", "resolve_dtype",
]  # fmt: skip


class VideoPipeline:
    """An image model (SD1.5 or SDXL family) inflated with motion modules; call it with a prompt to get frames."""

    def __init__(
        self, parts: ModelParts, device: torch.device, dtype: torch.dtype, attention: str = "sdpa",
        clip_skip: int | None = None, offload: str | None = None,
    ) -> None:
        self.parts = parts
        self.device, self.dtype = device, dtype
        self.tokenizer = parts.tokenizer
        self.offload = offload
        # with offloading the weights stay on the CPU and accelerate's hooks move them in when used
        home = torch.device("cpu") if offload else device
        self.family = parts.family
        self.text_encoders = tuple(e.to(home, dtype) for e in parts.text_encoders)
        self.text_encoder = self.text_encoders[0]
        self.vae = parts.vae.to(home, prompts.vae_dtype(parts.family, parts.vae, dtype))
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
        self._context_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}  # prompts.encode's
        self._told_unknown: set[str] = set()  # prompts whose unknown words were named already
        self._told_start: set[tuple[int, int, str]] = set()  # the part-way starts already told

    @classmethod
    def load(cls, settings: LoadSettings, device: str | torch.device | None = None) -> VideoPipeline:
        """The pipeline ``settings`` ask for (model, add-ons, device, memory savers); ``device`` overrides
        ``settings.device`` (e.g. ``cuda:1`` for one process of a launched batch)."""
        settings.validate()
        dev = resolve_device(device or settings.device)
        parts = load_model_parts(
            settings.model or builtin_model(),  # "shapes" too means the built-in model (load_model_parts)
            settings.motion_module,
            motion_config=settings.motion_config,
            vae=settings.vae,
            loras=settings.lora,
            embeddings=settings.embedding,
            motion_loras=settings.motion_lora,
            motion_lora_triggers=settings.motion_lora_trigger,
        )
        offload = settings.offload
        if offload and dev.type == "cpu":
            notice("--offload has no effect on the CPU (the weights are there already)")
            offload = None
        dtype = resolve_dtype(settings.dtype, dev)
        pipe = cls(parts, dev, dtype, settings.attention, clip_skip=settings.clip_skip, offload=offload)
        pipe.enable_memory_savers(vae_tiling=settings.vae_tiling, attention_slicing=settings.attention_slicing)
        norm = settings.spatial_norm
        pipe.unet.set_norm_over_frames(parts.norm_over_frames if norm == "auto" else norm == "joint")
        return pipe

    @property
    def max_frames(self) -> int:
        """The longest window the motion modules' positional encoding allows."""
        return self.unet.max_frames

    @property
    def train_frames(self) -> int:
        """The clip length the motion modules were trained on (``train_frames``; 16 when not recorded)."""
        return self.parts.train_frames

    def windows_for(self, settings: SampleSettings) -> windows.WindowPlan | None:
        """The sliding windows ``settings`` sample through, or ``None`` when the video is one window."""
        return windows.plan_windows(
            settings.frames,
            window=settings.window,
            overlap=settings.overlap,
            fuse=settings.fuse,
            loop=settings.loop,
            layers=settings.window_layers,
            train_frames=self.train_frames,
            limit=self.max_frames,
        )

    def _install_offload(self, mode: str) -> None:
        install_offload(self, mode)

    def enable_memory_savers(self, *, vae_tiling: bool = False, attention_slicing: bool = False) -> None:
        """VAE tiling, attention slicing (:func:`videodiff.pipeline.devices.enable_memory_savers`)."""
        enable_memory_savers(self, vae_tiling=vae_tiling, attention_slicing=attention_slicing)

    def check_frames(self, num_frames: int, window: int | None = None) -> None:
        """At most MAX_FRAMES (1024) frames, and a ``window`` the positional encoding allows."""
        windows.plan_windows(
            num_frames, window=window, overlap=None, train_frames=self.train_frames, limit=self.max_frames
        )

    def default_size(self) -> tuple[int, int]:
        d = self.parts.defaults
        size = self.parts.unet.config.sample_size * self.vae_scale
        return int(d.get("height", size)), int(d.get("width", size))

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        return (1, self.unet.in_channels, num_frames, height // self.vae_scale, width // self.vae_scale)

    def settings(self, prompt: str | None = None, **given: Any) -> SampleSettings:
        """:class:`SampleSettings` from the Python API's keywords, resolved once against the model's recorded
        defaults (a keyword left out or ``None`` takes the model's default, else the built-in one)."""
        given = {CALL_NAMES.get(k, k): v for k, v in given.items()}
        for name in ("motion", "guidance_interval"):
            if given.get(name) is not None:
                given[name] = tuple(given[name])
        return resolve(self.parts.defaults, {"prompt": prompt, **given}, cls=SampleSettings)

    # ------------------------------------------------------------ stages

    def encode(self, prompt: str) -> torch.Tensor:
        """``[1 n d]`` text context, cached per prompt (:func:`videodiff.pipeline.prompts.encode`)."""
        return prompts.encode(self, prompt)[0]

    def tell_unknown_words(self, prompt: str) -> None:
        """Name the words a closed-vocabulary model never saw, once (:mod:`videodiff.pipeline.prompts`)."""
        prompts.tell_unknown_words(self, prompt)

    def conditioning(self, settings: SampleSettings) -> Conditioning:
        """Stage 1: the conditioning object from the prompts (:func:`videodiff.pipeline.prompts.conditioning`)."""
        return prompts.conditioning(self, settings)

    def initial_noise(self, settings: SampleSettings, generator: torch.Generator | None) -> torch.Tensor:
        """Stage 2: unit-variance noise ``[1 c f h w]`` of the chosen prior for ``settings`` (whose size is
        resolved), drawn on the CPU so that a seed means the same video on any device."""
        shape = self.latent_shape(settings.frames, settings.height, settings.width)
        noise = noise_priors.sample_noise(shape, kind=settings.noise, alpha=settings.noise_alpha, generator=generator)
        plan = self.windows_for(settings)
        if plan is not None and settings.window_noise == "freenoise":  # windows start from agreeing noise
            noise = noise_priors.reschedule(noise, plan.window, plan.stride, generator)
        return noise

    def start(self, settings, cond, noise, scheduler, generator) -> starts.Start:
        """Stage 3 of text-to-video (:func:`videodiff.pipeline.starting.text_start`)."""
        return starting.text_start(self, settings, cond, noise, scheduler, generator)

    def pixel_codec(self, chunk: int | None = None) -> PixelCodec:
        """The VAE as the motion prior draws through it (:func:`videodiff.pipeline.starting.pixel_codec`)."""
        return starting.pixel_codec(self, chunk)

    def prior_fraction(self, settings: SampleSettings) -> float:
        """How far into the schedule the motion prior starts (:func:`videodiff.pipeline.starting.prior_fraction`)."""
        return starting.prior_fraction(self, settings)

    def tell_start(self, steps: int, skipped: int, source: str) -> None:
        """Say once where sampling starts when it skips steps (the progress bar counts only the steps run)."""
        if skipped and (steps, skipped, source) not in self._told_start:
            self._told_start.add((steps, skipped, source))
            notice(f"starting {skipped} of {steps} steps in, {source}")

    def encode_pictures(self, pictures: np.ndarray) -> torch.Tensor:
        """uint8 pictures ``[n h w 3]`` to clean latents ``[1 c n h w]`` (the VAE's mean, scaled)."""
        pixels = torch.from_numpy(pictures).to(self.device, self.dtype).permute(3, 0, 1, 2)[None] / 127.5 - 1
        return vae.encode(self.vae, pixels, chunk=vae.default_chunk(self.device))

    def image_start(self, settings, cond, source, noise, scheduler):
        """Stage 3 of img2vid (:func:`videodiff.pipeline.starting.image_start`)."""
        return starting.image_start(self, settings, cond, source, noise, scheduler)

    def video_start(self, settings, source, noise, scheduler):
        """Stage 3 of vid2vid (:func:`videodiff.pipeline.starting.video_start`)."""
        return starting.video_start(self, settings, source, noise, scheduler)

    def denoise(
        self,
        begin: starts.Start,
        schedule: sampling.Schedule,
        guide: sampling.Guide,
        generator: torch.Generator | None,
        *,
        progress: bool = False,
        on_step: sampling.OnStep | None = None,
        windows: windows.WindowPlan | None = None,
        pass_index: int = 0,
        cache: int = 1,
        controlnets: tuple = (),
    ) -> torch.Tensor:
        """Stage 4: the sampling loop from ``begin`` over ``schedule``; ``on_step`` after each step.
        With ``windows`` the U-Net runs window by window, fused into one output per step
        (:class:`videodiff.windows.Windowed`), or with ``layers="temporal"`` once on every frame with its motion
        modules attending window by window; ``pass_index`` counts FreeInit's passes. ``cache > 1``: the deep
        U-Net blocks run on every ``cache``-th step only (:class:`videodiff.cache.FeatureCache`, one per call:
        per run, per window). ``controlnets``: those the conditioning's controls index
        (:mod:`videodiff.pipeline.denoisers`)."""
        denoiser, on_step, within = denoisers.assemble(self, windows, cache, on_step, controlnets, schedule.timesteps)
        with within:
            return sampling.sample(
                denoiser,
                begin.latents,
                schedule,
                steps=schedule.steps,
                guide=guide,
                generator=generator,
                progress=progress,
                start=begin.step,
                on_step=on_step,
                pass_index=pass_index,
            )

    def decode(self, latents: torch.Tensor, chunk: int | None = None) -> np.ndarray:
        """Stage 5: latents ``[1 c f h w]`` to uint8 frames ``[f h w 3]``, ``chunk`` frames per VAE call."""
        return vae.to_uint8(vae.decode(self.vae, latents, chunk or vae.default_chunk(self.device)))[0]

    # ------------------------------------------------------------ the chain

    @torch.no_grad()
    @gathering  # the notices about the prompt (stages 1-3) as one message
    def generate(
        self,
        settings: SampleSettings,
        *,
        source: ImageInput | VideoInput | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        progress: bool = False,
        on_step: sampling.OnStep | None = None,
        post: PostSettings | None = None,
        fps: float | None = None,
        controls: Any = (),
        ip_adapters: Any = (),
    ) -> VideoResult:
        """Render resolved ``settings`` (:meth:`settings`) through the stages: text-to-video, or img2vid /
        vid2vid with a ``source``. ``latents`` (``[1 C F h w]``, unit variance) replace the seeded initial noise.
        ``post``: the post-processing steps run on the decoded frames (:mod:`videodiff.post`; ``fps``, the rate
        the frames are meant for, is what they start from). ``controls``: ControlNets and their maps
        (:class:`~videodiff.settings.control.Control` s or mappings of its fields, or :class:`ControlSettings`);
        ``ip_adapters``: image prompts (:mod:`videodiff.pipeline.image_prompts`). :class:`videodiff.sampling.Cancelled`
        raised by ``on_step`` stops the render and propagates (nothing is decoded)."""
        settings.validate()
        if not settings.prompt and not settings.prompt_at:
            raise UserError("no prompt given")
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {output_type!r}")
        height, width = self.default_size()
        seed = settings.seed if settings.seed is not None or latents is not None else secrets.randbelow(2**32)
        changes: dict[str, Any] = {"seed": seed, "height": settings.height or height, "width": settings.width or width}
        record: dict[str, Any] = {}
        stride = source.stride if isinstance(source, VideoInput) else 1  # the maps' too (before the clip is read)
        fit = source.fit if source is not None else "crop"
        if isinstance(source, VideoInput):  # the clip decides the frame count (fewer when it is shorter)
            size = changes["height"], changes["width"]
            source, record["source_fps"] = self.read_source(source, settings.frames, *size)
            changes["frames"] = source.video.shape[0]
        settings = settings.__class__(**{**to_dict(settings), **changes})
        self.check_frames(settings.frames, settings.window)
        plan = self.windows_for(settings)
        if plan is not None:  # once per render: the motion modules see a window at a time, not the whole video
            notice(windows.describe(plan, self.train_frames))
        # 1. the prompts (and the MotionLoRAs their words trigger), and the controls
        cond = self.conditioning(settings)
        cond.cond = prompts.with_image_prompts(self, cond.cond, ip_adapters, settings.frames, settings.travel)
        cond.cond, nets = denoisers.with_controls(
            self, cond.cond, parse_controls(controls), settings.frames, settings.height, settings.width, stride, fit
        )
        # 2. scheduler and initial noise
        scheduler = make_scheduler(settings.scheduler, self.parts.scheduler_config, settings.timestep_spacing)
        grid = scheduler.config.get("original_inference_steps") if settings.scheduler == "lcm" else None
        if grid is not None and settings.steps > grid:  # a motion module distilled on a coarser solver grid
            raise lcm_steps_beyond(settings.steps, grid)
        generator = torch.Generator("cpu").manual_seed(seed) if seed is not None else None
        shape = self.latent_shape(settings.frames, settings.height, settings.width)
        if latents is None:
            latents = self.initial_noise(settings, generator)
        elif tuple(latents.shape) != shape:
            raise UserError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        # 3. where sampling starts (and, for pinned pictures, the hook that holds them)
        hook, pinned = on_step, {}
        if isinstance(source, ImageInput):
            begin, keys, pinned = self.image_start(settings, cond, source, latents, scheduler)
        elif isinstance(source, VideoInput):
            begin = self.video_start(settings, source, latents, scheduler)
        else:
            begin = self.start(settings, cond, latents, scheduler, generator)
        say_held()  # before the long part
        passes = settings.free_init + 1
        bar = FreeInitProgress(passes * (settings.steps - begin.step), progress, on_step) if passes > 1 else None
        hook, shown = (bar.on_step, False) if bar else (on_step, progress)
        schedule = sampling.Schedule(scheduler, settings.steps, begin.step, self.device)
        if pinned:  # pinned pictures are held before any other hook sees the latents
            hook = keyframes.Anchor(keys, latents.to(self.device), schedule, source.anchor, then=hook)
        with heap.render_heap(self.device):  # the CPU heap keeps each step's freed activations for the next
            # 4. denoise
            guide = cond.guide(settings.guidance, settings.guidance_interval)
            out = self.denoise(
                begin, schedule, guide, generator, progress=shown, on_step=hook, windows=plan, cache=settings.cache,
                controlnets=nets,
            )
            for index in range(1, passes):  # FreeInit: keep the result's low frequencies, fresh high ones, again
                begin = self.free_init_start(settings, out, begin, latents, scheduler, generator, plan)
                schedule = sampling.Schedule(scheduler, settings.steps, begin.step, self.device)
                out = self.denoise(
                    begin, schedule, guide, generator, on_step=hook, windows=plan, pass_index=index,
                    cache=settings.cache, controlnets=nets,
                )
            if bar:
                bar.close()
            # 5. decode
            frames = self.decode(out, settings.decode_chunk) if output_type == "np" else None
        # 6. post-process
        steps: list[dict[str, Any]] = []
        if frames is not None:
            clip = Clip(frames, fps, pinned, loop=settings.loop)
            clip, steps = run_post(clip, steps_for(post or PostSettings(), clip))
            frames, fps = clip.frames, clip.fps
        recorded = {**to_dict(settings), **begin.record, **record}
        return VideoResult(frames, out, seed, recorded, cond.triggered, fps=fps, post=steps)

    def read_source(self, source: VideoInput, frames: int, height: int, width: int) -> tuple[VideoInput, float]:
        """vid2vid's clip read and fitted (:func:`videodiff.pipeline.inputs.read_source`)."""
        return read_source(source, frames, height, width)

    def img2vid(
        self,
        image: Any = None,
        prompt: str | None = None,
        *,
        image_at: dict[int, Any] | None = None,
        strength: float | None = None,
        anchor: float = IMG2VID_ANCHOR,
        fit: str = "crop",
        background: tuple[int, int, int] | str = (0, 0, 0),
        paste: bool = False,
        **settings: Any,
    ) -> VideoResult:
        """Animate ``image`` (a path, PIL image or uint8 array; frame 0) and/or ``image_at`` (``{frame: image}``,
        keyframes anywhere; negative frames count from the end) under ``prompt``. ``strength`` in (0, 1]: 1 starts
        the moving frames from pure noise, lower nearer the picture (default: the motion prior's start, else
        0.85); ``anchor``: fraction of the steps the pinned frames are held; ``fit``: ``crop`` or ``pad`` (with
        ``background``, also what transparent pixels become); ``paste``: exact pictures in their frames, the
        other frames' colours matched. Other keywords as :meth:`__call__`."""
        images = dict(image_at or {})
        if image is not None:
            images.setdefault(0, image)
        if not images:
            raise UserError("img2vid needs a picture: IMAGE or --image-at FRAME:PATH")
        background = parse_rgb(background) if isinstance(background, str) else tuple(background)
        inputs = InputSettings(strength=strength, anchor=anchor, fit=fit).validate()
        source = ImageInput(images, inputs.strength, inputs.anchor, inputs.fit, background)
        return self._run(prompt, source, {**settings, "post": PostSettings(paste=paste)})

    def vid2vid(
        self,
        video: Any,
        prompt: str | None = None,
        *,
        strength: float | None = None,
        stride: int = 1,
        fit: str = "crop",
        **settings: Any,
    ) -> VideoResult:
        """Re-render ``video`` (a path PyAV reads, or uint8 frames ``[f h w 3]``) under ``prompt``, keeping its
        motion: its frames (``num_frames`` of them, default 16 or all of a shorter clip; every ``stride``-th)
        encoded and noised ``strength`` of the way back (default 0.6). The result's ``settings["source_fps"]`` is
        the clip's rate over the stride. Other keywords as :meth:`__call__`."""
        inputs = InputSettings(strength=strength, stride=stride, fit=fit).validate()
        return self._run(prompt, VideoInput(video, inputs.strength, inputs.stride, inputs.fit), settings)

    def _run(self, prompt: str | None, source: ImageInput | VideoInput, given: dict[str, Any]) -> VideoResult:
        keys = ("latents", "output_type", "progress", "on_step", "post", "fps", "controls", "ip_adapters")
        run = {k: given.pop(k) for k in keys if k in given}
        return self.generate(self.settings(prompt, **given), source=source, **run)

    def free_init_start(self, settings, result, begin, noise, scheduler, generator, plan) -> starts.Start:
        """FreeInit's next start (:func:`videodiff.pipeline.freeinit.free_init_start`)."""
        return free_init_start(settings, result, begin, noise, scheduler, generator, plan, self.device, self.dtype)

    def __call__(
        self,
        prompt: str | None = None,
        *,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        progress: bool = False,
        on_step: sampling.OnStep | None = None,
        post: PostSettings | None = None,
        controls: Any = (),
        ip_adapters: Any = (),
        **settings: Any,
    ) -> VideoResult:
        """Render ``prompt`` to frames; returns a :class:`VideoResult` (``.frames`` uint8 ``[F H W 3]``).

        ``settings`` are :class:`~videodiff.config.SampleSettings` fields or diffusers' names for them
        (``negative_prompt``, ``num_frames``, ``num_inference_steps``, ``guidance_scale``); left out or
        ``None`` they take the model's recorded defaults (``videodiff.json``), else the built-in ones
        (16 frames, 25 steps, guidance 7.5, ddim, independent noise). ``latents`` (``[1, C, F, h, w]``)
        replace the seeded initial noise, as in diffusers: unit-variance noise, scaled by the scheduler's
        ``init_noise_sigma``. ``motion_prior`` (from 0 up to 1) starts that fraction into the schedule
        from the model's motion prior (:mod:`videodiff.motion_prior`), moving at ``motion`` (pixels per
        frame, ``(dx, dy)``) or at the velocity it predicts, drawn in ``motion_prior_space`` (``"latent"`` or
        ``"pixels"``: through the VAE). ``on_step(i, total, t, t_next, latents,
        pass_index)`` is called after every scheduler step (:func:`videodiff.sampling.sample`).
        Long videos: ``num_frames`` above the motion modules' ``train_frames`` sample through sliding
        windows (``window``, ``overlap``, ``fuse``, ``loop``, ``window_noise``, ``window_layers``);
        ``free_init=N`` adds FreeInit passes; ``prompt_at={frame: prompt}`` (``prompt`` may then be ``None``) and
        ``travel`` for prompt travel. ``post``: post-processing after decoding (:mod:`videodiff.post`).
        ``controls``: ControlNets with their maps, ``[{"controlnet": ..., "maps": ..., "scale": ..., "range": ...}]``
        (:class:`~videodiff.settings.control.Control`). ``ip_adapters``: image prompts (IP-Adapter),
        ``[{"adapter": FILE, "image": PICTURE, "scale": ..., "image_encoder": FOLDER}]``."""
        resolved = self.settings(prompt, **settings)
        return self.generate(
            resolved, latents=latents, output_type=output_type, progress=progress, on_step=on_step, post=post,
            controls=controls, ip_adapters=ip_adapters,
        )


def load_pipeline(model: str | None = None, motion_module: str | None = None, **options: Any) -> VideoPipeline:
    """Load an SD1.5- or SDXL-family model (diffusers folder, hub id or single file) inflated with motion modules.

    With no ``model``, the built-in shapes model (``a {color} {shape} moving {direction}``).
    With ``motion_module=None`` the model's own motion modules are used, if it ships them.
    ``options`` are :class:`~videodiff.config.LoadSettings` fields: ``lora``/``motion_lora`` take
    ``PATH[:SCALE]`` strings, ``motion_lora_trigger`` ``WORD=PATH[:SCALE]`` (that MotionLoRA only for
    prompts with the word); ``embedding`` takes textual-inversion files; ``spatial_norm`` is ``auto``,
    ``joint`` (original v1) or ``per-frame`` (diffusers). For small GPUs: ``offload`` (``model`` or
    ``sequential`` CPU offload), ``vae_tiling`` and ``attention_slicing``. ``device`` may also name one
    device (``cuda:1``) and ``dtype`` may be a ``torch.dtype``.
    """
    device = options.pop("device", None)
    if isinstance(options.get("dtype"), torch.dtype):
        options["dtype"] = next(name for name, d in DTYPES.items() if d == options["dtype"])
    settings = merge({"model": model, "motion_module": motion_module}, options, cls=LoadSettings)
    return VideoPipeline.load(settings, device)
