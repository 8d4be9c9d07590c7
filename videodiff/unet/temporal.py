"""Temporal transformers: self-attention over frames at every spatial position.

Parameter names follow diffusers' ``MotionAdapter`` (``norm``, ``proj_in``,
``transformer_blocks.N.{norm1,attn1,norm2,attn2,norm3,ff}``, ``proj_out``) so its
weights load with a strict ``load_state_dict``. Shapes: the U-Net folds frames into
the batch, ``(b f) c h w``; attention runs over ``f`` for each of ``b h w`` positions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from videodiff.unet import fused

AttentionBackend = Literal["sdpa", "xformers", "math"]
# Windows over frames for the temporal attention: each window's frame indices [w] (int64) and positive weights [w]
FrameWindows = Sequence[tuple[torch.Tensor, torch.Tensor]]


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """Transformer positional encoding (Vaswani et al. 2017, sec. 3.5): ``[1, length, dim]``."""
    position = torch.arange(length).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(1, length, dim)
    table[0, :, 0::2] = torch.sin(position * div_term)
    table[0, :, 1::2] = torch.cos(position * div_term)
    return table


class SinusoidalPosition(nn.Module):
    """Adds the encoding of each frame's index; ``pe`` is stored so checkpoints record the length."""

    def __init__(self, dim: int, max_frames: int) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_table(max_frames, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[n f d]``."""
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


# CPU: PyTorch's flash-attention kernel can be slow for heads narrower than 16 (one AVX-512 register of
# float32); zero columns added to q, k and v change no dot product, and the output's extra columns are
# dropped. Whether that pays depends on the CPU: on an AMD EPYC (2 cores, torch 2.13) [32, 8, 1024, 8]
# self-attention went from 0.239 to 0.164 s padded; on an Intel Xeon with AMX it went from 0.116 to 0.136 s.
# So each process times both once per shape, on the first call, and keeps the faster (the two give the same
# attention). Over 16 frames ([2048, 8, 16, 8]) padding was slower on both, so only key sequences of 64 or
# more are candidates. Inference only: under autograd the padded kernel broke the bitwise equality of
# training with and without gradient checkpointing (tests/test_training.py), which training's
# reproducibility relies on.
PAD_HEAD_DIM = 16
PAD_MIN_KEYS = 64
_PADDED: ContextVar[bool | None] = ContextVar("videodiff_padded_heads", default=None)
_PAD_PICKS: dict[tuple, bool] = {}  # (q shape, k shape, dtype) -> padding was the faster on this machine


@contextmanager
def padded_heads(enabled: bool | None) -> Iterator[None]:
    """While inside, narrow heads are padded (``True``), not (``False``) or whichever was timed faster (``None``,
    the default): ``videodiff bench levers padded`` / ``unpadded``."""
    token = _PADDED.set(enabled)
    try:
        yield
    finally:
        _PADDED.reset(token)


def _padded_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    d = q.shape[-1]
    q, k, v = (F.pad(t, (0, PAD_HEAD_DIM - d)) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, scale=d**-0.5 if scale is None else scale)[..., :d]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` on ``[n heads len d]``; narrow heads padded on the CPU without autograd
    where that was timed faster (see ``PAD_HEAD_DIM``)."""
    candidate = (
        q.shape[-1] < PAD_HEAD_DIM
        and k.shape[-2] >= PAD_MIN_KEYS
        and q.device.type == "cpu"
        and not torch.is_grad_enabled()
    )
    if not candidate:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    pad = _PADDED.get()
    key = (tuple(q.shape), tuple(k.shape), q.dtype)
    if pad is None:
        pad = _PAD_PICKS.get(key)
    if pad is None:  # first call with this shape: time both, keep the faster
        start = time.perf_counter()
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        middle = time.perf_counter()
        _padded_sdpa(q, k, v, scale)
        _PAD_PICKS[key] = time.perf_counter() - middle < middle - start
        return out
    return _padded_sdpa(q, k, v, scale) if pad else F.scaled_dot_product_attention(q, k, v, scale=scale)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: AttentionBackend) -> torch.Tensor:
    """Scaled dot-product attention on ``[n heads len d]`` tensors."""
    if backend == "math":
        weights = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        return weights.softmax(dim=-1) @ v
    if backend == "xformers":
        import xformers.ops as xops  # optional extra; availability checked by the caller

        # xformers wants [n len heads d] and fails for batches of 65,536 or more: chunk.
        q, k, v = (rearrange(t, "n h l d -> n l h d").contiguous() for t in (q, k, v))
        step = 32768
        out = torch.cat(
            [
                xops.memory_efficient_attention(q[i : i + step], k[i : i + step], v[i : i + step])
                for i in range(0, q.shape[0], step)
            ]
        )
        return rearrange(out, "n l h d -> n h l d")
    return sdpa(q, k, v)


class TemporalAttention(nn.Module):
    """Multi-head self-attention over frames (``to_q/to_k/to_v`` without bias, ``to_out.0`` with)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(dropout)])
        self.backend: AttentionBackend = "sdpa"
        self.chunk: int | None = None  # positions per attention call (attention slicing), None: all at once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[n f d]`` (n = every spatial position of every video) -> ``[n f d]``."""
        if self.chunk and x.shape[0] > self.chunk:
            return torch.cat([self.forward_all(part) for part in x.split(self.chunk)])
        return self.forward_all(x)

    def forward_all(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            rearrange(proj(x), "n f (h d) -> n h f d", h=self.heads) for proj in (self.to_q, self.to_k, self.to_v)
        )
        out = rearrange(attention(q, k, v, self.backend), "n h f d -> n f (h d)")
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    """Gated GELU (Shazeer 2020, eq. 6): ``a * gelu(b)`` from one projection to ``2 * inner``."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused.geglu(self.proj, x)  # value * gelu(gate), fused on the CPU in inference


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TemporalBlock(nn.Module):
    """Two self-attentions over frames and a feed-forward, pre-norm; positions added after each norm."""

    def __init__(self, dim: int, heads: int, max_frames: int) -> None:
        super().__init__()
        self.pos_embed = SinusoidalPosition(dim, max_frames)
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = TemporalAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = TemporalAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, windows: FrameWindows | None = None) -> torch.Tensor:
        """``x``: ``[n f d]``. With ``windows`` (FreeNoise's way, Qiu et al. 2023) both attentions run on each
        window of frames, positions counted from the window's first frame, and the windows' results are fused
        (weighted where they overlap) before the feed-forward, which needs no neighbours."""
        if windows is None:
            x = self.attend(x)
        else:
            fused = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
            total = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
            for index, weight in windows:
                fused.index_add_(1, index, self.attend(x.index_select(1, index)).float() * weight.view(1, -1, 1))
                total.index_add_(0, index, weight)
            x = (fused / total.view(1, -1, 1)).to(x.dtype)
        return x + self.ff(self.norm3(x))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.pos_embed(self.norm1(x)))
        return x + self.attn2(self.pos_embed(self.norm2(x)))


class TemporalTransformer(nn.Module):
    """One motion module: GroupNorm over ``c`` (statistics over all frames), project, blocks, project back, residual.

    A freshly built module has a zero ``proj_out``, so it is the identity: an inflated
    U-Net then equals its image U-Net frame by frame (AnimateDiff's zero initialisation).
    """

    def __init__(self, channels: int, heads: int, max_frames: int, num_layers: int = 1, norm_groups: int = 32) -> None:
        super().__init__()
        self.max_frames = max_frames
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(TemporalBlock(channels, heads, max_frames) for _ in range(num_layers))
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        self.windows: tuple[int, FrameWindows] | None = None  # (frames, windows): see MotionStack.temporal_windows

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``x``: ``[(b f) c h w]`` -> same shape. Attention runs in :attr:`windows` when they are for
        ``num_frames`` frames (:meth:`MotionStack.temporal_windows`), else over all frames."""
        b_f, _, h, w = x.shape
        video = rearrange(x, "(b f) c h w -> b c f h w", f=num_frames)
        tokens = rearrange(self.norm(video), "b c f h w -> (b h w) f c")
        tokens = self.proj_in(tokens)
        windows = self.windows[1] if self.windows is not None and self.windows[0] == num_frames else None
        for block in self.transformer_blocks:
            tokens = block(tokens, windows)
        tokens = self.proj_out(tokens)
        return x + rearrange(tokens, "(b h w) f c -> (b f) c h w", h=h, w=w)


class MotionBlock(nn.Module):
    """The motion modules of one U-Net block (one per ResNet layer)."""

    def __init__(
        self, channels: int, count: int, heads: int, max_frames: int, layers: Sequence[int], groups: int
    ) -> None:
        super().__init__()
        self.motion_modules = nn.ModuleList(
            TemporalTransformer(channels, heads, max_frames, layers[i], groups) for i in range(count)
        )


def _per_block(value: int | Sequence, n: int) -> list:
    return [value] * n if isinstance(value, int) else list(value)


class MotionStack(nn.Module):
    """Every motion module of a video U-Net, laid out (and keyed) as diffusers' ``MotionAdapter``.

    ``config`` uses ``MotionAdapter``'s field names, so a diffusers folder's
    ``config.json`` builds the matching stack and the stack saves back as one.
    """

    def __init__(
        self,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        motion_layers_per_block: int | Sequence[int] = 2,
        motion_transformer_layers_per_block: int | Sequence[int] = 1,
        motion_mid_block_layers_per_block: int = 1,
        motion_transformer_layers_per_mid_block: int | Sequence[int] = 1,
        motion_num_attention_heads: int | Sequence[int] = 8,
        motion_norm_num_groups: int = 32,
        motion_max_seq_length: int = 32,
        use_motion_mid_block: bool = True,
        conv_in_channels: int | None = None,
    ) -> None:
        super().__init__()
        if conv_in_channels:
            raise ValueError("motion adapters with their own conv_in (SparseCtrl-style) are not supported")
        n = len(block_out_channels)
        layers = _per_block(motion_layers_per_block, n)
        t_layers = _per_block(motion_transformer_layers_per_block, n)
        heads = _per_block(motion_num_attention_heads, n)
        self.config = {
            "block_out_channels": list(block_out_channels),
            "motion_layers_per_block": motion_layers_per_block,
            "motion_transformer_layers_per_block": motion_transformer_layers_per_block,
            "motion_mid_block_layers_per_block": motion_mid_block_layers_per_block,
            "motion_transformer_layers_per_mid_block": motion_transformer_layers_per_mid_block,
            "motion_num_attention_heads": motion_num_attention_heads,
            "motion_norm_num_groups": motion_norm_num_groups,
            "motion_max_seq_length": motion_max_seq_length,
            "use_motion_mid_block": use_motion_mid_block,
        }
        self.max_frames = motion_max_seq_length
        self.window_frames: int | None = None  # the frame count temporal_windows() is set for
        g, m = motion_norm_num_groups, motion_max_seq_length

        def block(ch: int, count: int, h: int, tl: int | Sequence[int]) -> MotionBlock:
            return MotionBlock(ch, count, h, m, _per_block(tl, count), g)

        self.down_blocks = nn.ModuleList(
            block(block_out_channels[i], layers[i], heads[i], t_layers[i]) for i in range(n)
        )
        self.mid_block = (
            block(
                block_out_channels[-1],
                motion_mid_block_layers_per_block,
                heads[-1],
                motion_transformer_layers_per_mid_block,
            )
            if use_motion_mid_block
            else None
        )
        # Up blocks have one more ResNet each (the skip from the downsampler).
        self.up_blocks = nn.ModuleList(
            block(block_out_channels[n - 1 - i], layers[n - 1 - i] + 1, heads[n - 1 - i], t_layers[n - 1 - i])
            for i in range(n)
        )

    def set_attention_backend(self, backend: AttentionBackend) -> None:
        for module in self.modules():
            if isinstance(module, TemporalAttention):
                module.backend = backend

    @contextmanager
    def temporal_windows(self, frames: int, windows: Sequence[tuple[Sequence[int], torch.Tensor]]) -> Iterator[None]:
        """While inside, every motion module attends within ``windows`` (frame indices and positive fusing
        weights, each window at most :attr:`max_frames` long) when it runs on ``frames`` frames: the rest of the
        U-Net sees every frame, the temporal attention one window at a time (FreeNoise's way)."""
        for index, weight in windows:
            if len(index) > self.max_frames or len(index) != len(weight):
                raise ValueError(f"a window of {len(index)} frames, {len(weight)} weights (limit {self.max_frames})")
        device = next(self.parameters()).device  # once here, not on every block's every call
        prepared = tuple(
            (torch.as_tensor(list(i), dtype=torch.long, device=device), w.float().to(device)) for i, w in windows
        )
        modules = [m for m in self.modules() if isinstance(m, TemporalTransformer)]
        for module in modules:
            module.windows = (frames, prepared)
        self.window_frames = frames
        try:
            yield
        finally:
            for module in modules:
                module.windows = None
            self.window_frames = None

    def set_attention_chunk(self, chunk: int | None) -> None:
        """Run temporal attention over at most ``chunk`` positions at a time (less peak memory)."""
        for module in self.modules():
            if isinstance(module, TemporalAttention):
                module.chunk = chunk
