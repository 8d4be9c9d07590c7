"""Image prompts (IP-Adapter): pictures through a CLIP vision encoder and the adapter's projection to image tokens,
added to the conditioning as its ``token_sets`` field (:class:`videodiff.sampling.cond.TokenSets`).

As diffusers' ``AnimateDiffPipeline.encode_image`` computes them: the picture through ``CLIPImageProcessor`` at the
encoder's size; a plain adapter reads the pooled ``image_embeds``, its negative tokens are those of zero embeddings;
Plus and full-face adapters read the penultimate hidden states, their negative tokens are those of a zero
(normalized) picture's hidden states. The encoder runs once per distinct picture and encoder, and with ``--offload``
it is released before sampling.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from videodiff import text
from videodiff.errors import UserError
from videodiff.sampling.cond import TOKEN_SETS, Cond, TokenSet, TokenSets
from videodiff.settings.ip_adapter import ImagePrompt, parse_image_prompts
from videodiff.weights.ip_adapter import IPAdapter, load_ip_adapter, locate_image_encoder

__all__ = ["adapter", "image_encoder", "image_tokens", "token_name", "with_image_prompts"]


def adapter(pipe, source: str) -> IPAdapter:
    """The IP-Adapter ``source`` names, loaded once per pipeline, its projections installed in the video U-Net under
    a name made from ``source`` (:func:`token_name`) and moved to the pipeline's device."""
    loaded = pipe.__dict__.setdefault("_ip_adapters", {})
    if source not in loaded:
        ip = load_ip_adapter(source, pipe.parts.unet)
        ip.projection.to(pipe.device, pipe.dtype)
        pairs = {name: p.to(pipe.device, pipe.dtype) for name, p in ip.projections.items()}
        pipe.unet.set_token_projections(token_name(source), pairs)
        loaded[source] = ip
    return loaded[source]


def token_name(source: str) -> str:
    """The token set's name for the adapter ``source`` (a module name: no dots)."""
    return "ip_" + hashlib.sha256(source.encode()).hexdigest()[:16]


def image_encoder(pipe, folder: str) -> tuple[Any, Any]:
    """``(CLIPVisionModelWithProjection, CLIPImageProcessor)`` from ``folder``, loaded once per pipeline."""
    loaded = pipe.__dict__.setdefault("_image_encoders", {})
    if folder not in loaded:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        try:
            encoder = CLIPVisionModelWithProjection.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise UserError(f"--image-encoder {folder}: not a CLIP vision model ({str(exc).splitlines()[0]})") from None
        size = encoder.config.image_size
        loaded[folder] = (encoder.to(pipe.device, pipe.dtype).eval(), CLIPImageProcessor(size=size, crop_size=size))
    return loaded[folder]


def _pixels(picture: Any) -> tuple[Any, str]:
    """A picture (a path, PIL image or array) as uint8 ``[h w 3]`` RGB, and the SHA-256 of those pixels: equal
    pictures, however given, share one encoder run."""
    import numpy as np

    from videodiff.media.images import read_image

    pixels = np.ascontiguousarray(read_image(picture))
    digest = hashlib.sha256(f"{pixels.shape}".encode())
    digest.update(pixels.tobytes())
    return pixels, digest.hexdigest()


def _embeddings(pipe, encoder, processor, pixels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """One encoder run for one picture (uint8 ``[h w 3]``): its pooled ``image_embeds`` ``[1 e]`` (plain adapters) and
    penultimate hidden states ``[1 s e]`` (Plus, full-face)."""
    from PIL import Image

    values = processor(Image.fromarray(pixels), return_tensors="pt").pixel_values.to(pipe.device, pipe.dtype)
    out = encoder(values, output_hidden_states=True)
    return out.image_embeds, out.hidden_states[-2]


def _zero_picture(pipe, encoder, processor, cache: dict, folder: str) -> torch.Tensor:
    """The hidden states of a zero (normalised) picture: diffusers' negative for Plus and full-face adapters, computed
    once per encoder (a plain adapter's negative is zeros like the pooled embedding)."""
    if (folder, "zeros") not in cache:
        size = processor.crop_size
        zeros = torch.zeros(1, 3, size["height"], size["width"], device=pipe.device, dtype=pipe.dtype)
        cache[folder, "zeros"] = encoder(zeros, output_hidden_states=True).hidden_states[-2]
    return cache[folder, "zeros"]


def image_tokens(pipe, prompt: ImagePrompt, frames: int, travel: str = "linear", cache: dict | None = None) -> TokenSet:
    """One image prompt's :class:`TokenSet` at the prompt's scale: tokens ``[1 m d]`` for one picture, or ``[1 f m d]``
    for keyframes (``image_at``): each keyframe's tokens at its frame, blended in between as prompt travel blends
    text (:func:`videodiff.text.travel`, ``travel`` ``linear`` or ``slerp``), held before the first and after the last.
    The negative tokens do not depend on the picture: ``[1 m d]``, one for every frame. ``cache`` (shared by a
    render's image prompts): encoder outputs by encoder and pixels, so that each distinct picture is encoded once."""
    ip = adapter(pipe, prompt.adapter)
    folder = locate_image_encoder(prompt.adapter, prompt.image_encoder)
    encoder, processor = image_encoder(pipe, folder)
    cache = {} if cache is None else cache
    keyed: dict[int, torch.Tensor] = {}
    negative = None
    for frame, picture in prompt.pictures(frames).items():
        pixels, digest = _pixels(picture)
        if (folder, digest) not in cache:
            cache[folder, digest] = _embeddings(pipe, encoder, processor, pixels)
        pooled, hidden = cache[folder, digest]
        cond = hidden if ip.hidden_states else pooled
        uncond = _zero_picture(pipe, encoder, processor, cache, folder) if ip.hidden_states else torch.zeros_like(cond)
        try:
            keyed[frame], negative = ip.projection(cond), ip.projection(uncond)
        except RuntimeError:
            raise UserError(
                f"--image-encoder {folder} does not fit --ip-adapter {prompt.adapter}: its outputs are "
                f"{cond.shape[-1]} wide, the adapter reads another width"
            ) from None
    tokens = keyed[0] if list(keyed) == [0] and not prompt.image_at else text.travel(keyed, frames, travel)
    return TokenSet(token_name(prompt.adapter), tokens, negative, float(prompt.scale))


def with_image_prompts(pipe, cond: Cond, ip_adapters: Any, frames: int, travel: str = "linear") -> Cond:
    """``cond`` with the image prompts' token sets for a video of ``frames`` frames (none given: ``cond`` as is)."""
    prompts = parse_image_prompts(ip_adapters)
    if not prompts:
        return cond
    pipe.family.require("IP-Adapter")
    names = [p.adapter for p in prompts]
    if len(set(names)) != len(names):
        raise UserError("an IP-Adapter is named twice; give each adapter once")
    cache: dict = {}
    sets = tuple(image_tokens(pipe, p, frames, travel, cache) for p in prompts)
    if pipe.offload:  # the encoders' memory goes back before sampling; they load again for the next render
        import gc

        pipe.__dict__.pop("_image_encoders", None)
        gc.collect()
        if pipe.device.type == "cuda":
            torch.cuda.empty_cache()
    return cond.with_fields(**{TOKEN_SETS: TokenSets(sets)})
