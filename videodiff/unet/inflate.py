"""Inflation: a 2D SD1.5-family U-Net plus a :class:`MotionStack` becomes a U-Net over videos.

The spatial layers are the image U-Net's own modules, run per frame with frames folded
into the batch; after every ResNet (and its cross-attention, where the block has one)
a temporal transformer mixes information across frames, where AnimateDiff places its
motion modules. The image U-Net's weights are never copied or modified.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from einops import rearrange, repeat
from torch import nn

from videodiff.errors import UserError
from videodiff.unet.temporal import AttentionBackend, MotionStack


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


class VideoUNet(nn.Module):
    """``(x [b c f h w], t, context [b n d] or [b f n d]) -> eps [b c f h w]``."""

    def __init__(self, unet: UNet2DConditionModel, motion: MotionStack) -> None:
        super().__init__()
        check_compatible(unet, motion)
        self.unet = unet
        self.motion = motion
        self.gradient_checkpointing = False

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
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor

        processor = {"sdpa": AttnProcessor2_0, "math": AttnProcessor, "xformers": XFormersAttnProcessor}[backend]
        self.unet.set_attn_processor(processor())
        self.motion.set_attention_backend(backend)

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
        x = self._run(resnet, x, emb)
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
        if sample.ndim != 5:
            raise ValueError(f"sample must be [b c f h w], got shape {tuple(sample.shape)}")
        b, _, num_frames, h, w = sample.shape
        if num_frames > self.max_frames:
            raise UserError(f"{num_frames} frames exceed the motion modules' limit of {self.max_frames}")
        unet = self.unet

        # 1. time embedding, one per video, then per frame
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)
        emb = unet.time_embedding(unet.time_proj(t).to(dtype=self.dtype), None)
        emb = repeat(emb, "b d -> (b f) d", f=num_frames)
        if context.ndim == 3:
            context = repeat(context, "b n d -> (b f) n d", f=num_frames)
        elif context.ndim == 4:
            context = rearrange(context, "b f n d -> (b f) n d")
        else:
            raise ValueError(f"context must be [b n d] or [b f n d], got shape {tuple(context.shape)}")

        # 2. down: every layer's output is a skip connection
        x = unet.conv_in(rearrange(sample, "b c f h w -> (b f) c h w"))
        skips = [x]
        for block, motion in zip(unet.down_blocks, self.motion.down_blocks):
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn, temporal in zip(block.resnets, attentions, motion.motion_modules):
                x = self._layer(resnet, attn, temporal, x, emb, context, num_frames)
                skips.append(x)
            for downsampler in block.downsamplers or []:
                x = downsampler(x)
                skips.append(x)

        # 3. middle: resnet, then (attention, motion, resnet) pairs
        mid = unet.mid_block
        if mid is not None:
            x = self._run(mid.resnets[0], x, emb)
            temporals = self.motion.mid_block.motion_modules if self.motion.mid_block is not None else None
            for i, (attn, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:])):
                x = self._spatial_attn(attn, x, context)
                if temporals is not None:
                    x = self._run(temporals[i], x, num_frames)
                x = self._run(resnet, x, emb)

        # 4. up: consume skips in reverse; force the upsampled size when h, w are not multiples of 2^levels
        odd_size = any(s % (2**unet.num_upsamplers) for s in (h, w))
        for i, (block, motion) in enumerate(zip(unet.up_blocks, self.motion.up_blocks)):
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn, temporal in zip(block.resnets, attentions, motion.motion_modules):
                x = torch.cat([x, skips.pop()], dim=1)
                x = self._layer(resnet, attn, temporal, x, emb, context, num_frames)
            size = skips[-1].shape[2:] if odd_size and i < len(unet.up_blocks) - 1 else None
            for upsampler in block.upsamplers or []:
                x = upsampler(x, output_size=size)

        # 5. out
        if unet.conv_norm_out is not None:
            x = unet.conv_act(unet.conv_norm_out(x))
        x = unet.conv_out(x)
        return rearrange(x, "(b f) c h w -> b c f h w", f=num_frames)
