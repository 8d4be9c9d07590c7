"""Stage 1: the prompts (and the MotionLoRAs their words trigger) as the conditioning object the sampler carries.

Functions of a loaded pipeline (:class:`videodiff.pipelines.VideoPipeline`, duck-typed: its text encoders,
trigger LoRAs and vocabulary). What differs between model families is asked of the pipeline's
:class:`~videodiff.families.Family`: which text layer it reads, whether an empty negative prompt is zeros, the added
conditioning its time embedding takes (SDXL's pooled text and size ids). Further conditioning inputs (control maps,
image prompts) join the :class:`~videodiff.sampling.Cond` built here.
"""

from __future__ import annotations

import torch

from videodiff import sampling, text
from videodiff.config import SampleSettings
from videodiff.log import notice
from videodiff.pipeline.inputs import Conditioning
from videodiff.sampling.cond import TEXT_EMBEDS, TIME_IDS, TensorField
from videodiff.settings.ip_adapter import parse_image_prompts
from videodiff.weights.hub import describe_vocabulary, unknown_words, vocabulary_words


def tell_unknown_words(pipe, prompt: str) -> None:
    """A closed-vocabulary model (the built-in one) renders noise for words it never saw: name them, once."""
    vocabulary = pipe.parts.vocabulary
    unknown = unknown_words(prompt, vocabulary)
    if unknown and prompt not in pipe._told_unknown:
        pipe._told_unknown.add(prompt)
        knows = describe_vocabulary(vocabulary, heldout=False)
        notice(text.unknown_words_notice(prompt, unknown, vocabulary_words(vocabulary), knows), about="the prompt")


def vae_dtype(family, vae, dtype: torch.dtype) -> torch.dtype:
    """The dtype the VAE runs in: float32 for a half-precision render of a family whose VAEs overflow in float16
    (its config's ``force_upcast``, as diffusers' SDXL pipelines upcast it), else the render's."""
    upcast = family.vae_upcast and dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    return torch.float32 if upcast else dtype


def encode(pipe, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(context [1 n d], pooled [1 p] or None)`` of ``prompt``, cached per prompt: the last text layer (SD1.5), or
    the penultimate layers of every encoder and the last one's pooled projection (SDXL), as the family reads it."""
    if prompt not in pipe._context_cache:
        skip = pipe.clip_skip
        if pipe.family.text_layer == "penultimate":
            got = text.encode_penultimate(pipe.parts.tokenizers, pipe.text_encoders, [prompt], pipe.device, skip)
        else:
            got = text.encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompt], pipe.device, clip_skip=skip), None
        pipe._context_cache[prompt] = got
    return pipe._context_cache[prompt]


def size_ids(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """SDXL's six size ids ``[1 6]``: original size, crop's top-left corner (0, 0), target size, all the render's
    (Podell et al. 2023, sec. 2.2; diffusers' ``_get_add_time_ids``), on ``like``'s device and in its dtype."""
    return torch.tensor([[height, width, 0, 0, height, width]], device=like.device, dtype=like.dtype)


def added_fields(pipe, settings: SampleSettings, guided: bool, context: torch.Tensor) -> dict[str, TensorField]:
    """The fields the family's time embedding takes besides the timestep: pooled text (``[1 p]``, or ``[1 f p]``
    with prompt travel, blended as the contexts are) with the negative prompt's, and size ids (in ``context``'s
    dtype, on its device)."""
    names, fields = pipe.family.added_conditioning, {}
    if TEXT_EMBEDS in names:
        prompts = settings.keyframes()
        if settings.prompt_at:
            pooled = {frame: encode(pipe, p)[1][:, None] for frame, p in prompts.items()}  # [1 1 p] each
            value = text.travel(pooled, settings.frames, settings.travel)[:, :, 0]  # [1 f p]
        else:
            value = encode(pipe, settings.prompt)[1]
        uncond = _negative(pipe, settings, 1) if guided else None
        fields[TEXT_EMBEDS] = TensorField(value, uncond, 1 if value.ndim == 3 else None)
    if TIME_IDS in names:
        fields[TIME_IDS] = TensorField(size_ids(settings.height, settings.width, context))
    return fields


def _negative(pipe, settings: SampleSettings, index: int) -> torch.Tensor:
    """The negative prompt's context (``index`` 0) or pooled text (1): zeros where the family reads no negative
    prompt as zeros (diffusers' ``force_zeros_for_empty_prompt``), else the encoding of the negative (or empty)
    prompt."""
    got = encode(pipe, settings.negative or "")[index]
    return torch.zeros_like(got) if pipe.family.zero_empty_negative and not settings.negative else got


def conditioning(pipe, settings: SampleSettings) -> Conditioning:
    """Stage 1: switch to the MotionLoRAs the prompt's words trigger; encode the prompt, and the negative
    one when guidance runs."""
    prompts = settings.keyframes()  # {frame: prompt}: one at frame 0, or prompt travel's
    words = " ".join(prompts.values())
    triggered = tuple(t.word for t in pipe.triggers.select(words)) if pipe.triggers else ()
    guided = sampling.uses_guidance(settings.guidance)
    if settings.negative and not guided:
        notice(f"the negative prompt has no effect at guidance {settings.guidance:g} (it needs guidance above 1)")
    if settings.guidance_interval is not None and not guided:
        notice(f"--guidance-interval has no effect at guidance {settings.guidance:g} (it needs guidance above 1)")
    for prompt in prompts.values():
        tell_unknown_words(pipe, prompt)
    if settings.prompt_at:  # prompt travel: a context per frame [1 f n d]
        contexts = {frame: pipe.encode(prompt) for frame, prompt in prompts.items()}
        context = text.travel(contexts, settings.frames, settings.travel)
    else:
        context = pipe.encode(settings.prompt)
    uncond = _negative(pipe, settings, 0) if guided else None
    cond = sampling.Cond.text(context, uncond)
    return Conditioning(cond.with_fields(**added_fields(pipe, settings, guided, context)), triggered)


def with_image_prompts(pipe, cond: sampling.Cond, ip_adapters, frames: int, travel: str) -> sampling.Cond:
    """``cond`` with IP-Adapter's image prompts (:mod:`videodiff.pipeline.image_prompts`, imported only when some
    are given, so a render without them loads none of IP-Adapter's code: tests/test_imports.py)."""
    if not parse_image_prompts(ip_adapters):
        return cond
    from videodiff.pipeline import image_prompts

    return image_prompts.with_image_prompts(pipe, cond, ip_adapters, frames, travel)
