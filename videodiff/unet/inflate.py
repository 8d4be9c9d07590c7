"""Inflation: a 2D SD1.5-family U-Net plus a :class:`MotionStack` becomes a U-Net over videos.

The spatial layers are the image U-Net's own modules, run per frame with frames folded
into the batch; after every ResNet (and its cross-attention, where the block has one)
a temporal transformer mixes information across frames, where AnimateDiff places its
motion modules. The image U-Net's weights are never copied or modified.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from einops import rearrange, repeat
from torch import nn

from videodiff.errors import UserError
from videodiff.unet.temporal import AttentionBackend, MotionStack, sdpa


def check_compatible(unet: UNet2DConditionModel, motion: MotionStack) -> None:
    """Raise :class:`UserError` when the motion stack cannot sit inside this image U-Net."""
    cfg = unet.config
    if cfg.get("addition_embed_type") or cfg.get("class_embed_type") or cfg.get("encoder_hid_dim_type"):
        raise UserError("only SD1.5-family U-Nets (no class/addition embeddings, e.g. not SDXL) can be inflated")
    got, want = list(motion.config["block_out_channels"]), list(cfg.block_out_channels)
    if got != want:
        raise UserError(f"motion modules are for U-Net channels {got}, but the image model has {want}")
    for i, block in enumerate(unet.down_blocks):
        if len(block.resnets) != len(motion.down_blocks[i].motion_modules):
            raise UserError(
                f"down block {i} has {len(block.resnets)} ResNet layers but the motion modules expect "
                f"{len(motion.down_blocks[i].motion_modules)}"
            )
    for i, block in enumerate(unet.up_blocks):
        if len(block.resnets) != len(motion.up_blocks[i].motion_modules):
            raise UserError(
                f"up block {i} has {len(block.resnets)} ResNet layers but the motion modules expect "
                f"{len(motion.up_blocks[i].motion_modules)}"
            )
    if motion.mid_block is not None:
        if unet.mid_block is None or not hasattr(unet.mid_block, "attentions"):
            raise UserError("the motion modules have a mid block but the image U-Net has no cross-attention mid block")
        if len(unet.mid_block.attentions) != len(motion.mid_block.motion_modules):
            raise UserError("mid-block layer counts of the image U-Net and the motion modules differ")


# Frames per video while a ResNet (or the output norm) runs with norms over frames; None: per frame.
_NORM_FRAMES: ContextVar[int | None] = ContextVar("videodiff_norm_frames", default=None)


class FrameGroupNorm(nn.GroupNorm):
    """A ``GroupNorm`` whose statistics span every frame of a video, as original AnimateDiff v1 ran it.

    v1 applied ``nn.GroupNorm`` to ``[b c f h w]`` tensors, so mean and variance were taken
    over ``c/g, f, h, w`` of each video; v2/v3 (and diffusers) normalise each frame alone.
    Folding frames into the height, ``(b f) c h w -> b c (f h) w``, lets ``F.group_norm``
    compute exactly those statistics with the same per-channel affine.

    :meth:`VideoUNet.set_norm_over_frames` swaps a ResNet norm's ``__class__`` to this
    subclass: parameters, state-dict keys and weights stay as they are. The frame count is
    not stored on the module: VideoUNet sets ``_NORM_FRAMES`` inside the very function it
    runs (also when gradient checkpointing re-runs it in backward); outside such a call,
    the norm is an ordinary per-frame ``GroupNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = _NORM_FRAMES.get()
        if frames is None or x.ndim != 4:
            return super().forward(x)
        video = rearrange(x, "(b f) c h w -> b c (f h) w", f=frames)
        out = F.group_norm(video, self.num_groups, self.weight, self.bias, self.eps)
        return rearrange(out, "b c (f h) w -> (b f) c h w", f=frames)


def _over_frames(module: nn.Module, num_frames: int):
    """``module`` as a function that runs with its frame-spanning norms told the frame count."""

    def call(*args):
        token = _NORM_FRAMES.set(num_frames)
        try:
            return module(*args)
        finally:
            _NORM_FRAMES.reset(token)

    return call


class FrameAttention:
    """Spatial attention processor for the frames of videos: self-attention and text cross-attention.

    Self-attention is diffusers' ``AttnProcessor2_0`` through :func:`sdpa` (narrow heads
    padded on the CPU). For cross-attention diffusers repeats the context once per frame,
    so every frame projects the same 77 tokens to keys and values again; here
    ``encoder_hidden_states`` may arrive once per video (``[b n d]`` against ``[(b f) t c]``
    queries) and its keys and values are projected once, then broadcast to the frames.
    The result is the same attention. Anything unusual (masks, norms on the context or on
    q/k, a residual or rescaled output) takes diffusers' own processor.
    """

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.fallback = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        context = encoder_hidden_states
        unusual = (
            attention_mask is not None
            or hidden_states.ndim != 3
            or (context is not None and (context.ndim != 3 or hidden_states.shape[0] % context.shape[0]))
            or attn.spatial_norm is not None
            or attn.group_norm is not None
            or attn.norm_cross
            or getattr(attn, "norm_q", None) is not None
            or getattr(attn, "norm_k", None) is not None
            or attn.residual_connection
            or attn.rescale_output_factor != 1.0
        )
        if unusual:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        q = rearrange(attn.to_q(hidden_states), "n t (h d) -> n h t d", h=attn.heads)
        if context is None:
            k, v = (
                rearrange(proj(hidden_states), "n t (h d) -> n h t d", h=attn.heads) for proj in (attn.to_k, attn.to_v)
            )
        else:
            frames = hidden_states.shape[0] // context.shape[0]
            k, v = (
                repeat(proj(context), "b m (h d) -> (b f) h m d", h=attn.heads, f=frames)
                for proj in (attn.to_k, attn.to_v)
            )
        out = sdpa(q, k, v, scale=attn.scale)
        out = attn.to_out[0](rearrange(out, "n h t d -> n t (h d)").to(q.dtype))
        return attn.to_out[1](out)


class VideoUNet(nn.Module):
    """``(x [b c f h w], t, context [b n d] or [b f n d]) -> eps [b c f h w]``."""

    def __init__(self, unet: UNet2DConditionModel, motion: MotionStack) -> None:
        super().__init__()
        check_compatible(unet, motion)
        self.unet = unet
        self.motion = motion
        self.gradient_checkpointing = False
        self.norm_over_frames = False

    @property
    def max_frames(self) -> int:
        return self.motion.max_frames

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def in_channels(self) -> int:
        return self.unet.config.in_channels

    def set_attention_backend(self, backend: AttentionBackend) -> None:
        """Choose the attention kernel for spatial (diffusers processors) and temporal layers."""
        from diffusers.models.attention_processor import AttnProcessor, XFormersAttnProcessor

        # sdpa: FrameAttention (cross-attention projects the shared text context once per video)
        processor = {"sdpa": FrameAttention, "math": AttnProcessor, "xformers": XFormersAttnProcessor}[backend]
        self.unet.set_attn_processor(processor())
        self.motion.set_attention_backend(backend)

    def _context_once_per_video(self) -> bool:
        """Whether every cross-attention takes the context per video (else it is repeated per frame)."""
        cross = [p for name, p in self.unet.attn_processors.items() if name.endswith("attn2.processor")]
        return bool(cross) and all(isinstance(p, FrameAttention) for p in cross)

    def _spatial_norms(self) -> list[nn.GroupNorm]:
        """The norms original AnimateDiff v1 ran over all frames: every ResNet's norm1/norm2, conv_norm_out."""
        unet = self.unet
        blocks = [*unet.down_blocks, *unet.up_blocks] + ([unet.mid_block] if unet.mid_block is not None else [])
        norms = [getattr(r, name) for b in blocks for r in b.resnets for name in ("norm1", "norm2")]
        if unet.conv_norm_out is not None:
            norms.append(unet.conv_norm_out)
        return [n for n in norms if isinstance(n, nn.GroupNorm)]

    def set_norm_over_frames(self, enabled: bool) -> None:
        """Run the spatial ResNet GroupNorms over all frames of each video (original AnimateDiff v1) or per frame.

        Enabling makes the norms :class:`FrameGroupNorm` (weights and keys do not change), and
        they stay that: such a norm is an ordinary ``GroupNorm`` unless a VideoUNet whose flag is
        on tells it the frame count while it runs, so VideoUNets that share one image U-Net
        (a pipeline and a training run, two pipelines) each keep their own setting.
        """
        if enabled:
            for norm in self._spatial_norms():
                norm.__class__ = FrameGroupNorm
        self.norm_over_frames = bool(enabled)

    def _resnet(self, resnet: nn.Module, x: torch.Tensor, emb: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self._run(_over_frames(resnet, num_frames) if self.norm_over_frames else resnet, x, emb)

    def _run(self, module: nn.Module, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def _spatial_attn(self, attn: nn.Module, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        def call(x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            return attn(x, encoder_hidden_states=context, return_dict=False)[0]

        return self._run(call, x, context)

    def _layer(self, resnet, attn, temporal, x, emb, context, num_frames):
        """One U-Net layer: ResNet, cross-attention (if any), temporal transformer."""
        x = self._resnet(resnet, x, emb, num_frames)
        if attn is not None:
            x = self._spatial_attn(attn, x, context)
        return self._run(temporal, x, num_frames)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | float | int, context: torch.Tensor
    ) -> torch.Tensor:
        """Predict the noise of every frame of ``sample`` (``[b c f h w]``) at diffusion time ``timestep``.

        ``context`` is the text embedding, ``[b n d]`` (one prompt per video) or
        ``[b f n d]`` (a prompt per frame); it is expanded per frame here and only here.
        """
        x, run = self._begin(sample, timestep, context)
        x = self._down(x, run)
        x = self._middle(x, run)
        x = self._up(x, run, range(len(self.unet.up_blocks)))
        return self._end(x, run)

    def forward_split(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        context: torch.Tensor,
        level: int,
        deep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DeepCache's two passes (Ma et al. 2024): ``(eps [b c f h w], deep features [(b f) c' h' w'])``.

        The U-Net is cut below its ``level`` shallowest down/up block pairs (``1 <= level <`` the number of
        down blocks). ``deep=None``: the whole U-Net runs (``eps`` equals :meth:`forward`'s bitwise) and the
        input of the ``level``-th last up block (what comes up from below the cut, upsampled) is returned too.
        With ``deep`` (as a full pass returned it, for the same batch and frames): only the blocks above the cut
        run (their ResNets, attention and motion modules, on the skip connections they consume) and ``deep``
        takes the place of everything below it; ``deep`` is returned as given.
        """
        ups = len(self.unet.up_blocks)
        if not 1 <= level < len(self.unet.down_blocks):
            raise ValueError(f"level must be from 1 to {len(self.unet.down_blocks) - 1}, got {level}")
        x, run = self._begin(sample, timestep, context)
        if deep is None:
            x = self._down(x, run)
            x = self._middle(x, run)
            deep = x = self._up(x, run, range(ups - level))
        else:
            x = self._down(x, run, levels=level)
            if deep.shape[0] != x.shape[0]:
                raise ValueError(f"the cached features are for a batch of {deep.shape[0]} frames, not {x.shape[0]}")
            x = deep
        x = self._up(x, run, range(ups - level, ups))
        return self._end(x, run), deep

    def _begin(
        self, sample: torch.Tensor, timestep: torch.Tensor | float | int, context: torch.Tensor
    ) -> tuple[torch.Tensor, _Run]:
        """1. time embedding, one per video, then per frame; the context as the attention takes it; ``conv_in``."""
        if sample.ndim != 5:
            raise ValueError(f"sample must be [b c f h w], got shape {tuple(sample.shape)}")
        b, _, num_frames, h, w = sample.shape
        if num_frames > self.max_frames and self.motion.window_frames != num_frames:
            raise UserError(f"{num_frames} frames exceed the motion modules' limit of {self.max_frames}")
        unet = self.unet

        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)
        emb = unet.time_embedding(unet.time_proj(t).to(dtype=self.dtype), None)
        emb = repeat(emb, "b d -> (b f) d", f=num_frames)
        if context.ndim == 3:
            if not self._context_once_per_video():
                context = repeat(context, "b n d -> (b f) n d", f=num_frames)
        elif context.ndim == 4:
            context = rearrange(context, "b f n d -> (b f) n d")
        else:
            raise ValueError(f"context must be [b n d] or [b f n d], got shape {tuple(context.shape)}")
        # force the upsampled size when h, w are not multiples of 2^levels
        odd_size = any(s % (2**unet.num_upsamplers) for s in (h, w))
        x = unet.conv_in(rearrange(sample, "b c f h w -> (b f) c h w"))
        return x, _Run(emb, context, num_frames, odd_size, [x])

    def _down(self, x: torch.Tensor, run: _Run, levels: int | None = None) -> torch.Tensor:
        """2. down: every layer's output is a skip connection. ``levels``: only the first ``levels`` blocks,
        the last of them without its downsampler (the skips the last ``levels`` up blocks consume)."""
        blocks = list(zip(self.unet.down_blocks, self.motion.down_blocks))
        for i, (block, motion) in enumerate(blocks if levels is None else blocks[:levels]):
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn, temporal in zip(block.resnets, attentions, motion.motion_modules):
                x = self._layer(resnet, attn, temporal, x, run.emb, run.context, run.num_frames)
                run.skips.append(x)
            if levels is not None and i == levels - 1:
                break
            for downsampler in block.downsamplers or []:
                x = downsampler(x)
                run.skips.append(x)
        return x

    def _middle(self, x: torch.Tensor, run: _Run) -> torch.Tensor:
        """3. middle: resnet, then (attention, motion, resnet) pairs."""
        mid, emb, context, num_frames = self.unet.mid_block, run.emb, run.context, run.num_frames
        if mid is not None:
            x = self._resnet(mid.resnets[0], x, emb, num_frames)
            temporals = self.motion.mid_block.motion_modules if self.motion.mid_block is not None else None
            for i, (attn, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:])):
                x = self._spatial_attn(attn, x, context)
                if temporals is not None:
                    x = self._run(temporals[i], x, num_frames)
                x = self._resnet(resnet, x, emb, num_frames)
        return x

    def _up(self, x: torch.Tensor, run: _Run, blocks: range) -> torch.Tensor:
        """4. up blocks ``blocks`` (indices): consume the skips in reverse."""
        unet = self.unet
        for i in blocks:
            block, motion = unet.up_blocks[i], self.motion.up_blocks[i]
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn, temporal in zip(block.resnets, attentions, motion.motion_modules):
                x = torch.cat([x, run.skips.pop()], dim=1)
                x = self._layer(resnet, attn, temporal, x, run.emb, run.context, run.num_frames)
            size = run.skips[-1].shape[2:] if run.odd_size and i < len(unet.up_blocks) - 1 else None
            for upsampler in block.upsamplers or []:
                x = upsampler(x, output_size=size)
        return x

    def _end(self, x: torch.Tensor, run: _Run) -> torch.Tensor:
        """5. out: norm, activation, ``conv_out``; frames back out of the batch."""
        unet = self.unet
        if unet.conv_norm_out is not None:
            norm = unet.conv_norm_out
            norm_out = _over_frames(norm, run.num_frames) if self.norm_over_frames else norm
            x = unet.conv_act(norm_out(x))
        x = unet.conv_out(x)
        return rearrange(x, "(b f) c h w -> b c f h w", f=run.num_frames)


@dataclass
class _Run:
    """What one forward pass carries between its stages: per-frame time embedding ``[(b f) d]``, the context as
    the attention takes it, the frame count, whether h, w are odd for the upsamplers, the skip connections."""

    emb: torch.Tensor
    context: torch.Tensor
    num_frames: int
    odd_size: bool
    skips: list[torch.Tensor]
