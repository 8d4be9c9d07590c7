"""Inflation: a 2D SD1.5-family U-Net plus a :class:`MotionStack` becomes a U-Net over videos.

The spatial layers are the image U-Net's own modules, run per frame with frames folded
into the batch; after every ResNet (and its cross-attention, where the block has one)
a temporal transformer mixes information across frames, where AnimateDiff places its
motion modules. The image U-Net's weights are never copied or modified.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from einops import rearrange, repeat
from torch import nn

from videodiff import families
from videodiff.errors import UserError
from videodiff.families import Family
from videodiff.sampling.cond import (
    DOWN_RESIDUALS,
    MID_RESIDUAL,
    TOKEN_SETS,
    Cond,
    TokenSets,
    as_cond,
)
from videodiff.unet import fused
from videodiff.unet.temporal import AttentionBackend, MotionStack, sdpa


def check_compatible(unet: UNet2DConditionModel, motion: MotionStack, *, supported_only: bool = True) -> Family:
    """The image U-Net's model family (:mod:`videodiff.families`); :class:`UserError` when the motion stack cannot sit
    inside it, or (``supported_only``) when videodiff does not render that family yet."""
    cfg = unet.config
    family = families.of_unet(cfg)
    if supported_only:
        families.require_supported(family, "the image model is")
    got, want = list(motion.config["block_out_channels"]), list(cfg.block_out_channels)
    made_for = families.of_motion_channels(got, motion.mid_block is not None)
    if made_for is not family and len(got) != len(want):  # the blocks do not line up: say whose they are
        what = f"{made_for.title} ({len(got)} blocks)"
        raise UserError(f"the motion modules are for {what}, but the image model is {family.title}")
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
    return family


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
    padded on the CPU where faster). For cross-attention diffusers repeats the context once per frame,
    so every frame projects the same 77 tokens to keys and values again; here
    ``encoder_hidden_states`` may arrive once per video (``[b n d]`` against ``[(b f) t c]``
    queries) and its keys and values are projected once, then broadcast to the frames.
    The result is the same attention. Anything unusual (masks, norms on the context or on
    q/k, a residual or rescaled output) takes diffusers' own processor.

    ``token_sets`` (a list of ``(name, tokens, scale)``, tokens ``[b m d]`` per video or ``[(b f) m d]`` per
    frame): extra token sets for cross-attention, each through the key/value projections the attention layer
    holds under its name (:class:`TokenProjections`, ``attn.token_projections``), added to the text attention
    times ``scale`` before the output projection: IP-Adapter's decoupled cross-attention (Ye et al. 2023, eq. 5),
    as diffusers' ``IPAdapterAttnProcessor2_0`` computes it.
    """

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.fallback = AttnProcessor2_0()

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, token_sets=None, **kwargs
    ):
        context = encoder_hidden_states
        token_sets = token_sets if context is not None else None  # self-attention takes no extra tokens
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
            if token_sets:
                raise UserError("image token sets (IP-Adapter) need plain cross-attention (--attention sdpa)")
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        q = rearrange(attn.to_q(hidden_states), "n t (h d) -> n h t d", h=attn.heads)
        if context is None:
            k, v = (
                rearrange(proj(hidden_states), "n t (h d) -> n h t d", h=attn.heads) for proj in (attn.to_k, attn.to_v)
            )
        else:
            k, v = (_per_frame(proj, context, hidden_states.shape[0], attn.heads) for proj in (attn.to_k, attn.to_v))
        out = sdpa(q, k, v, scale=attn.scale)
        for name, tokens, scale in token_sets or ():
            projections = _token_projections(attn, name)
            k, v = (_per_frame(proj, tokens, hidden_states.shape[0], attn.heads) for proj in projections.pair())
            out = out + scale * sdpa(q, k, v, scale=attn.scale)
        out = attn.to_out[0](rearrange(out, "n h t d -> n t (h d)").to(q.dtype))
        return attn.to_out[1](out)


def _per_frame(proj: nn.Module, tokens: torch.Tensor, rows: int, heads: int) -> torch.Tensor:
    """Keys or values ``[rows h m d]`` for ``rows`` query rows (frames folded into the batch) from ``tokens`` given
    per video (``[b m d]``: projected once, then repeated to the frames) or already per frame (``[rows m d]``)."""
    if rows % tokens.shape[0]:
        raise ValueError(f"tokens for a batch of {tokens.shape[0]} cannot serve {rows} frames")
    return repeat(proj(tokens), "b m (h d) -> (b f) h m d", h=heads, f=rows // tokens.shape[0])


class TokenProjections(nn.Module):
    """One extra token set's key and value projections in one cross-attention layer (IP-Adapter's
    ``to_k_ip``/``to_v_ip``): ``tokens [.. m d_tokens] -> [.. m inner]``, no bias."""

    def __init__(self, token_dim: int, inner_dim: int) -> None:
        super().__init__()
        self.to_k = nn.Linear(token_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(token_dim, inner_dim, bias=False)

    def pair(self) -> tuple[nn.Module, nn.Module]:
        return self.to_k, self.to_v


def _token_projections(attn: nn.Module, name: str) -> TokenProjections:
    held = getattr(attn, "token_projections", None)
    if held is None or name not in held:
        raise UserError(f"the U-Net has no projections for the token set {name!r} (load its adapter first)")
    return held[name]


def cross_attentions(unet: UNet2DConditionModel) -> dict[str, nn.Module]:
    """The image U-Net's text cross-attention layers by name (``...attn2``), in diffusers' processor order."""
    names = [n[: -len(".processor")] for n in unet.attn_processors if n.endswith("attn2.processor")]
    return {n: unet.get_submodule(n) for n in names}


class VideoUNet(nn.Module):
    """``(x [b c f h w], t, cond) -> eps [b c f h w]``: ``cond`` is the conditioning object
    (:class:`videodiff.sampling.Cond`; a bare text context ``[b n d]`` or ``[b f n d]`` is wrapped). The fields
    it reads are listed in :mod:`videodiff.sampling.cond`: text context, residuals added to the down blocks'
    skips and the middle block's output, added time-embedding conditioning, extra cross-attention token sets."""

    def __init__(self, unet: UNet2DConditionModel, motion: MotionStack, *, supported_only: bool = True) -> None:
        super().__init__()
        self.family = check_compatible(unet, motion, supported_only=supported_only)
        self.unet = unet
        self.motion = motion
        fused.install(unet)  # the feed-forwards' gated GELU fused on the CPU in inference (videodiff.unet.fused)
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

    def set_token_projections(self, name: str, projections: dict[str, TokenProjections]) -> None:
        """Install one extra token set's key/value projections, ``{cross-attention layer name: projections}`` for
        every layer :func:`cross_attentions` names (an IP-Adapter's weights); ``cond``'s ``token_sets`` then use
        them by ``name``."""
        layers = cross_attentions(self.unet)
        if set(projections) != set(layers):
            missing, extra = sorted(set(layers) - set(projections)), sorted(set(projections) - set(layers))
            raise UserError(f"token projections {name!r} do not fit the U-Net: missing {missing}, unknown {extra}")
        for layer, module in layers.items():
            if not hasattr(module, "token_projections"):
                module.token_projections = nn.ModuleDict()
            module.token_projections[name] = projections[layer]

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

    def _spatial_attn(self, attn: nn.Module, x: torch.Tensor, run: _Run) -> torch.Tensor:
        kwargs = {"cross_attention_kwargs": {"token_sets": run.token_sets}} if run.token_sets else {}

        def call(x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            return attn(x, encoder_hidden_states=context, return_dict=False, **kwargs)[0]

        return self._run(call, x, run.context)

    def _layer(self, resnet, attn, temporal, x, run: _Run):
        """One U-Net layer: ResNet, cross-attention (if any), temporal transformer."""
        x = self._resnet(resnet, x, run.emb, run.num_frames)
        if attn is not None:
            x = self._spatial_attn(attn, x, run)
        return self._run(temporal, x, run.num_frames)

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor | float | int, cond: Cond | torch.Tensor
    ) -> torch.Tensor:
        """Predict the noise of every frame of ``sample`` (``[b c f h w]``) at diffusion time ``timestep``.

        ``cond``'s text context is ``[b n d]`` (one prompt per video) or ``[b f n d]`` (a prompt per frame); it
        and every other per-video input are expanded per frame here and only here.
        """
        x, run = self._begin(sample, timestep, cond)
        x = self._down(x, run)
        x = self._middle(x, run)
        x = self._up(x, run, range(len(self.unet.up_blocks)))
        return self._end(x, run)

    def forward_split(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        cond: Cond | torch.Tensor,
        level: int,
        deep: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DeepCache's two passes (Ma et al. 2024): ``(eps [b c f h w], deep features [(b f) c' h' w'])``.

        The U-Net is cut below its ``level`` shallowest down/up block pairs (``1 <= level <`` the number of
        down blocks). ``deep=None``: the whole U-Net runs (``eps`` equals :meth:`forward`'s bitwise) and the
        input of the ``level``-th last up block (what comes up from below the cut, upsampled) is returned too.
        With ``deep`` (as a full pass returned it, for the same batch and frames): only the blocks above the cut
        run (their ResNets, attention and motion modules, on the skip connections they consume) and ``deep``
        takes the place of everything below it; ``deep`` is returned as given. Extra residuals then reach only the
        skips that run (:mod:`videodiff.cache` states the rule).
        """
        ups = len(self.unet.up_blocks)
        if not 1 <= level < len(self.unet.down_blocks):
            raise ValueError(f"level must be from 1 to {len(self.unet.down_blocks) - 1}, got {level}")
        x, run = self._begin(sample, timestep, cond)
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
        self, sample: torch.Tensor, timestep: torch.Tensor | float | int, cond: Cond | torch.Tensor
    ) -> tuple[torch.Tensor, _Run]:
        """1. time embedding, one per video, then per frame; the context as the attention takes it; ``conv_in``."""
        if sample.ndim != 5:
            raise ValueError(f"sample must be [b c f h w], got shape {tuple(sample.shape)}")
        b, _, num_frames, h, w = sample.shape
        if num_frames > self.max_frames and self.motion.window_frames != num_frames:
            raise UserError(f"{num_frames} frames exceed the motion modules' limit of {self.max_frames}")
        unet, cond = self.unet, as_cond(cond)
        context = cond.context
        if context.ndim == 3:
            if not self._context_once_per_video():
                context = repeat(context, "b n d -> (b f) n d", f=num_frames)
        elif context.ndim == 4:
            context = rearrange(context, "b f n d -> (b f) n d")
        else:
            raise ValueError(f"context must be [b n d] or [b f n d], got shape {tuple(context.shape)}")
        emb = self._time_embedding(timestep, cond, b, num_frames, sample.device)
        # force the upsampled size when h, w are not multiples of 2^levels
        odd_size = any(s % (2**unet.num_upsamplers) for s in (h, w))
        x = unet.conv_in(rearrange(sample, "b c f h w -> (b f) c h w"))
        run = _Run(emb, context, num_frames, odd_size, [x])
        run.down_residuals = _frames_folded(cond.get(DOWN_RESIDUALS))
        mid = cond.get(MID_RESIDUAL)
        run.mid_residual = None if mid is None else rearrange(mid, "b c f h w -> (b f) c h w")
        run.token_sets = self._token_sets(cond.get(TOKEN_SETS), num_frames)
        return x, run

    def _time_embedding(self, timestep, cond: Cond, b: int, f: int, device: torch.device) -> torch.Tensor:
        """The time embedding ``[(b f) d]`` of each frame: the timestep's, plus the added conditioning the image U-Net
        takes (SDXL's ``text_time``: pooled text ``text_embeds`` and size ``time_ids`` from ``cond``, each ``[b d]``,
        or ``[b f d]`` when it changes over frames), as diffusers' ``UNet2DConditionModel`` adds it."""
        unet = self.unet
        t = torch.as_tensor(timestep, device=device)
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)
        emb = repeat(unet.time_embedding(unet.time_proj(t).to(dtype=self.dtype), None), "b d -> (b f) d", f=f)
        if self.family.added_conditioning:
            missing = [name for name in self.family.added_conditioning if name not in cond]
            if missing:
                raise ValueError(f"a {self.family.title} U-Net's time embedding needs {missing} in the conditioning")
            added = {name: _per_frame_rows(cond[name], f) for name in self.family.added_conditioning}
            emb = emb + unet.get_aug_embed(emb=emb, encoder_hidden_states=cond.context, added_cond_kwargs=added)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        return emb

    def _token_sets(self, sets: TokenSets | None, num_frames: int) -> list[tuple[str, torch.Tensor, float]]:
        """Extra token sets as the cross-attention takes them: per video ``[b m d]``, per frame ``[(b f) m d]``."""
        if not sets:
            return []
        if not self._context_once_per_video():
            raise UserError("image token sets (IP-Adapter) need plain cross-attention (--attention sdpa)")
        out = []
        for s in sets.sets:
            tokens = rearrange(s.tokens, "b f m d -> (b f) m d") if s.tokens.ndim == 4 else s.tokens
            out.append((s.name, tokens, s.scale))
        return out

    def _down(self, x: torch.Tensor, run: _Run, levels: int | None = None) -> torch.Tensor:
        """2. down: every layer's output is a skip connection. ``levels``: only the first ``levels`` blocks,
        the last of them without its downsampler (the skips the last ``levels`` up blocks consume)."""
        blocks = list(zip(self.unet.down_blocks, self.motion.down_blocks))
        for i, (block, motion) in enumerate(blocks if levels is None else blocks[:levels]):
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn, temporal in zip(block.resnets, attentions, motion.motion_modules):
                x = self._layer(resnet, attn, temporal, x, run)
                run.skips.append(x)
            if levels is not None and i == levels - 1:
                break
            for downsampler in block.downsamplers or []:
                x = downsampler(x)
                run.skips.append(x)
        if run.down_residuals is not None:  # the skips only: the middle block takes x as it is (as diffusers does)
            residuals = run.down_residuals
            if len(residuals) < len(run.skips) or (levels is None and len(residuals) != len(run.skips)):
                raise ValueError(f"{len(residuals)} down residuals for the U-Net's {len(run.skips)} skip connections")
            run.skips = [skip + r for skip, r in zip(run.skips, residuals)]
        return x

    def _middle(self, x: torch.Tensor, run: _Run) -> torch.Tensor:
        """3. middle: resnet, then (attention, motion, resnet) pairs."""
        mid, emb, num_frames = self.unet.mid_block, run.emb, run.num_frames
        if mid is not None:
            x = self._resnet(mid.resnets[0], x, emb, num_frames)
            temporals = self.motion.mid_block.motion_modules if self.motion.mid_block is not None else None
            for i, (attn, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:])):
                x = self._spatial_attn(attn, x, run)
                if temporals is not None:
                    x = self._run(temporals[i], x, num_frames)
                x = self._resnet(resnet, x, emb, num_frames)
        if run.mid_residual is not None:
            x = x + run.mid_residual
        return x

    def _up(self, x: torch.Tensor, run: _Run, blocks: range) -> torch.Tensor:
        """4. up blocks ``blocks`` (indices): consume the skips in reverse."""
        unet = self.unet
        for i in blocks:
            block, motion = unet.up_blocks[i], self.motion.up_blocks[i]
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn, temporal in zip(block.resnets, attentions, motion.motion_modules):
                x = torch.cat([x, run.skips.pop()], dim=1)
                x = self._layer(resnet, attn, temporal, x, run)
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


def _per_frame_rows(x: torch.Tensor, f: int) -> torch.Tensor:
    """A per-video ``[b d]`` or per-frame ``[b f d]`` input as one row per frame, ``[(b f) d]``."""
    return rearrange(x, "b f d -> (b f) d") if x.ndim == 3 else repeat(x, "b d -> (b f) d", f=f)


def _frames_folded(residuals) -> list[torch.Tensor] | None:
    """``Residuals`` of ``[b c f h w]`` tensors as the U-Net's skips hold them, ``[(b f) c h w]``."""
    if residuals is None:
        return None
    return [rearrange(r, "b c f h w -> (b f) c h w") for r in residuals.values]


@dataclass
class _Run:
    """What one forward pass carries between its stages: per-frame time embedding ``[(b f) d]``, the context as
    the attention takes it, the frame count, whether h, w are odd for the upsamplers, the skip connections, and
    the extra inputs of the conditioning object as the blocks take them."""

    emb: torch.Tensor
    context: torch.Tensor
    num_frames: int
    odd_size: bool
    skips: list[torch.Tensor]
    down_residuals: list[torch.Tensor] | None = None  # [(b f) c h w] per skip
    mid_residual: torch.Tensor | None = None  # [(b f) c h w]
    token_sets: list[tuple[str, torch.Tensor, float]] = field(default_factory=list)
