"""VAE encode/decode for video latents, in frame chunks, with the scaling factor and a NaN guard."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange

from videodiff.errors import UserError
from videodiff.log import notice


def _decode_chunk(vae, z: torch.Tensor) -> torch.Tensor:
    return vae.decode(z.to(vae.dtype)).sample


def default_chunk(device: torch.device | str) -> int:
    """Frames per VAE decode call: 2 on the CPU, where a frame's activations then stay in the cache and the heap
    (16 frames of ``cpu-small``'s 256x256 VAE took 12.8 s, 2 frames at a time 10.9 s), 16 on a GPU."""
    return 2 if torch.device(device).type == "cpu" else 16


@torch.no_grad()
def decode(vae, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Decode ``[b c f h w]`` latents to pixels ``[b 3 f H W]`` in ``[-1, 1]`` (float32), ``chunk`` frames at a time.

    In half precision the SD VAE can overflow to NaN/inf (black frames): such a chunk
    is decoded again in float32, with a notice, instead of being written out broken.
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be [b c f h w], got shape {tuple(latents.shape)}")
    b = latents.shape[0]
    flat = rearrange(latents, "b c f h w -> (b f) c h w") / vae.config.scaling_factor
    pieces = []
    for start in range(0, flat.shape[0], chunk):
        z = flat[start : start + chunk]
        x = _decode_chunk(vae, z)
        if vae.dtype != torch.float32 and not torch.isfinite(x).all():
            notice("the VAE overflowed in half precision; decoding those frames again in float32")
            original = vae.dtype
            vae.to(torch.float32)
            try:
                x = _decode_chunk(vae, z.float())
            finally:
                vae.to(original)
        if not torch.isfinite(x).all():  # never written out as black frames, silently
            where = "the latents" if not torch.isfinite(z).all() else "the VAE"
            raise UserError(
                f"frames {start}-{start + z.shape[0] - 1} decode to NaN/inf ({where} diverged): try --dtype fp32, "
                "another --scheduler or fewer --steps"
            )
        pieces.append(x.float())
    return rearrange(torch.cat(pieces), "(b f) c h w -> b c f h w", b=b)


@torch.no_grad()
def encode(
    vae, pixels: torch.Tensor, chunk: int = 16, generator: torch.Generator | None = None, sample: bool = False
) -> torch.Tensor:
    """Encode pixels ``[b 3 f H W]`` in ``[-1, 1]`` to scaled latents ``[b c f h w]`` (mean, or a sample)."""
    if pixels.ndim != 5:
        raise ValueError(f"pixels must be [b 3 f H W], got shape {tuple(pixels.shape)}")
    b = pixels.shape[0]
    flat = rearrange(pixels, "b c f h w -> (b f) c h w")
    pieces = []
    for start in range(0, flat.shape[0], chunk):
        dist = vae.encode(flat[start : start + chunk].to(vae.dtype)).latent_dist
        pieces.append(dist.sample(generator) if sample else dist.mean)
    z = torch.cat(pieces) * vae.config.scaling_factor
    return rearrange(z, "(b f) c h w -> b c f h w", b=b)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``[b 3 f H W]`` in ``[-1, 1]`` -> uint8 frames ``[b f H W 3]`` (rounded as diffusers does)."""
    x = (pixels.float() / 2 + 0.5).clamp(0, 1)
    x = rearrange(x, "b c f h w -> b f h w c").cpu().numpy()
    return (x * 255).round().astype(np.uint8)
