"""The conditioning object: everything a denoiser is told besides the latents and the timestep.

One :class:`Cond` travels from the pipeline's conditioning stage through every guide and denoiser
wrapper (guidance, guidance interval, sliding windows, feature caching, control) to the video U-Net,
in the place a bare text context used to take (k-diffusion's ``model(x, sigma, **extra_args)``, with
the batching rules stated once). It holds named :class:`Field` s; each kind of field says, once:

- how it is batched for classifier-free guidance (:meth:`Field.paired`: ``[uncond, cond]`` on the
  batch axis, the order diffusers' pipelines use),
- how it is sliced for a window of frames (:meth:`Field.frames`),
- how it moves to a device and dtype (:meth:`Field.to`).

A wrapper that batches, slices or moves a :class:`Cond` never looks inside a field, so a new kind of
input (a ControlNet's maps, an IP-Adapter's image tokens, SDXL's pooled text) needs no change to the
sampling loop, the guides, the windows or the cache: only a field, and the code that reads it.

Names the video U-Net reads (:mod:`videodiff.unet.inflate`):

- ``context``: text tokens ``[b n d]``, or ``[b f n d]`` when prompts change over frames (required);
- ``down_residuals``: a tuple of ``[b c f h w]``, one per skip connection of the down blocks, added to
  them (ControlNet, SparseCtrl: diffusers' ``down_block_additional_residuals``);
- ``mid_residual``: ``[b c f h w]`` added to the middle block's output (``mid_block_additional_residual``);
- ``text_embeds``, ``time_ids``: added conditioning of the time embedding (SDXL's pooled text and size ids,
  diffusers' ``added_cond_kwargs``), ``[b d]`` and ``[b 6]``;
- ``token_sets``: extra token sets for cross-attention with their own key/value projections and scale
  (IP-Adapter), :class:`TokenSets`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import torch

CONTEXT = "context"
DOWN_RESIDUALS = "down_residuals"
MID_RESIDUAL = "mid_residual"
TEXT_EMBEDS = "text_embeds"
TIME_IDS = "time_ids"
TOKEN_SETS = "token_sets"


@runtime_checkable
class Field(Protocol):
    """One conditioning input; the three things a wrapper may do with it."""

    def paired(self) -> Field:
        """Both guidance halves in one batch, ``[uncond, cond]`` on the batch axis."""
        ...

    def frames(self, index: torch.Tensor) -> Field:
        """The field for a window: the frames ``index`` (``[w]`` int64) of a per-frame input; a per-video one as is."""
        ...

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Field:
        """The field on ``device``, floating tensors in ``dtype`` (``None``: unchanged)."""
        ...


def _move(x: torch.Tensor, device, dtype) -> torch.Tensor:
    return x.to(device=device, dtype=dtype if dtype is not None and x.is_floating_point() else None)


@dataclass(frozen=True)
class TensorField:
    """A tensor, batch first: ``value`` is the conditional half, ``uncond`` the unconditional one.

    ``uncond=None``: both halves of a guided batch see ``value`` (repeated). ``frame_axis``: the axis
    that holds frames (``None``: one value per video, the same for every window). After :meth:`paired`
    ``value`` holds both halves and ``uncond`` is ``None``.
    """

    value: torch.Tensor
    uncond: torch.Tensor | None = None
    frame_axis: int | None = None

    def __post_init__(self) -> None:
        if self.frame_axis is not None and not 0 < self.frame_axis < self.value.ndim:
            raise ValueError(f"frame_axis {self.frame_axis} is not an axis after the batch of {self.value.ndim}")
        if self.uncond is not None and self.uncond.shape != self.value.shape and not self._uncond_per_video:
            raise ValueError(f"uncond has shape {tuple(self.uncond.shape)}, value {tuple(self.value.shape)}")

    @property
    def _uncond_per_video(self) -> bool:
        """One unconditional value for every frame of a per-frame value (prompt travel's one negative prompt): the
        value's shape without its frame axis."""
        if self.uncond is None or self.frame_axis is None:
            return False
        shape = list(self.value.shape)
        del shape[self.frame_axis]
        return list(self.uncond.shape) == shape

    def paired(self) -> TensorField:
        uncond = self.value if self.uncond is None else self.uncond
        if self._uncond_per_video:  # repeated to every frame only here, where the halves meet in one batch
            uncond = uncond.unsqueeze(self.frame_axis).expand_as(self.value)
        return TensorField(torch.cat([uncond, self.value]), None, self.frame_axis)

    def frames(self, index: torch.Tensor) -> TensorField:
        if self.frame_axis is None:
            return self
        axis = self.frame_axis
        uncond = self.uncond
        if uncond is not None and not self._uncond_per_video:
            uncond = uncond.index_select(axis, index.to(uncond.device))
        return TensorField(self.value.index_select(axis, index.to(self.value.device)), uncond, axis)

    def to(self, device=None, dtype=None) -> TensorField:
        uncond = None if self.uncond is None else _move(self.uncond, device, dtype)
        return TensorField(_move(self.value, device, dtype), uncond, self.frame_axis)


@dataclass(frozen=True)
class Residuals:
    """Residuals added inside the U-Net, each ``[b c f h w]`` (frames on axis 2); the same in both guidance halves
    unless given per half (a ControlNet run on the guided batch returns both halves already)."""

    values: tuple[torch.Tensor, ...]

    def __post_init__(self) -> None:
        for r in self.values:
            if r.ndim != 5:
                raise ValueError(f"residuals must be [b c f h w], got shape {tuple(r.shape)}")

    def paired(self) -> Residuals:
        return Residuals(tuple(torch.cat([r, r]) for r in self.values))

    def frames(self, index: torch.Tensor) -> Residuals:
        return Residuals(tuple(r.index_select(2, index.to(r.device)) for r in self.values))

    def to(self, device=None, dtype=None) -> Residuals:
        return Residuals(tuple(_move(r, device, dtype) for r in self.values))

    def __add__(self, other: Residuals) -> Residuals:
        """Several controls at once: their residuals summed, as diffusers' ``MultiControlNetModel`` does."""
        if len(other.values) != len(self.values):
            raise ValueError(f"cannot add {len(other.values)} residuals to {len(self.values)}")
        return Residuals(tuple(a + b for a, b in zip(self.values, other.values)))


@dataclass(frozen=True)
class TokenSet:
    """One extra token set for cross-attention (IP-Adapter's image tokens, Ye et al. 2023, eq. 5).

    ``tokens``: ``[b m d]`` (per video) or ``[b f m d]`` (per frame); ``uncond`` the unconditional half's tokens
    (IP-Adapter: the tokens of a zero image; ``None``: the same tokens); ``scale`` multiplies its attention
    output; ``name`` picks the key/value projections the U-Net's cross-attention layers hold for it
    (:class:`videodiff.unet.inflate.TokenProjections`).
    """

    name: str
    tokens: torch.Tensor
    uncond: torch.Tensor | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.tokens.ndim not in (3, 4):
            raise ValueError(f"tokens must be [b m d] or [b f m d], got shape {tuple(self.tokens.shape)}")

    def field(self) -> TensorField:
        return TensorField(self.tokens, self.uncond, 1 if self.tokens.ndim == 4 else None)

    def with_field(self, f: TensorField) -> TokenSet:
        return TokenSet(self.name, f.value, f.uncond, self.scale)


@dataclass(frozen=True)
class TokenSets:
    """Several :class:`TokenSet` s (several IP-Adapters at once); each batches and slices as its tokens do."""

    sets: tuple[TokenSet, ...]

    def _each(self, fn) -> TokenSets:
        return TokenSets(tuple(s.with_field(fn(s.field())) for s in self.sets))

    def paired(self) -> TokenSets:
        return self._each(TensorField.paired)

    def frames(self, index: torch.Tensor) -> TokenSets:
        return self._each(lambda f: f.frames(index))

    def to(self, device=None, dtype=None) -> TokenSets:
        return self._each(lambda f: f.to(device, dtype))


@dataclass(frozen=True)
class Cond:
    """The conditioning of one denoiser call: named :class:`Field` s, ``context`` (the text) always among them.

    Built by :meth:`text` (and :meth:`with_fields` for the rest); read with ``cond.context`` (the text tensor),
    ``cond[name]`` (a field's value: a :class:`TensorField`'s tensor, else the field itself) and ``name in cond``.
    """

    fields: Mapping[str, Field] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if CONTEXT not in self.fields:
            raise ValueError("a Cond needs a text context")
        for name, f in self.fields.items():
            if not isinstance(f, Field):
                raise TypeError(f"conditioning field {name!r} is a {type(f).__name__}, not a Field")

    @classmethod
    def text(cls, context: torch.Tensor, uncond: torch.Tensor | None = None) -> Cond:
        """Text context ``[b n d]`` (or ``[b f n d]``: a prompt per frame) and its unconditional counterpart
        (``[b n d]`` with a per-frame context: one negative prompt for every frame, repeated only when guidance pairs
        the halves)."""
        if context.ndim not in (3, 4):
            raise ValueError(f"context must be [b n d] or [b f n d], got shape {tuple(context.shape)}")
        return cls({CONTEXT: TensorField(context, uncond, 1 if context.ndim == 4 else None)})

    def with_fields(self, **fields: Field) -> Cond:
        """A copy with ``fields`` added (or replaced)."""
        return replace(self, fields={**self.fields, **fields})

    def without(self, *names: str) -> Cond:
        """A copy without the fields ``names`` (the text context stays)."""
        return replace(self, fields={k: v for k, v in self.fields.items() if k not in names or k == CONTEXT})

    @property
    def context(self) -> torch.Tensor:
        """The text tokens ``[b n d]`` or ``[b f n d]``."""
        return self.fields[CONTEXT].value  # type: ignore[attr-defined]

    @property
    def uncond(self) -> torch.Tensor | None:
        """The unconditional text tokens, ``None`` when there are none (guidance cannot run)."""
        return self.fields[CONTEXT].uncond  # type: ignore[attr-defined]

    @property
    def batch(self) -> int:
        return self.context.shape[0]

    def __contains__(self, name: object) -> bool:
        return name in self.fields

    def __iter__(self) -> Iterator[str]:
        return iter(self.fields)

    def __getitem__(self, name: str):
        f = self.fields[name]
        return f.value if isinstance(f, TensorField) else f

    def get(self, name: str, default=None):
        return self[name] if name in self.fields else default

    def paired(self) -> Cond:
        """Every field batched ``[uncond, cond]`` for one guided denoiser call (:class:`ClassifierFreeGuidance`)."""
        return Cond({k: f.paired() for k, f in self.fields.items()})

    def frames(self, index: torch.Tensor) -> Cond:
        """Every field for the window of frames ``index`` (:class:`videodiff.windows.Windowed`)."""
        return Cond({k: f.frames(index) for k, f in self.fields.items()})

    def to(self, device=None, dtype=None) -> Cond:
        return Cond({k: f.to(device, dtype) for k, f in self.fields.items()})


def as_cond(cond: Cond | torch.Tensor) -> Cond:
    """A :class:`Cond` as is; a bare text context tensor (the older call form, still accepted) wrapped in one."""
    return cond if isinstance(cond, Cond) else Cond.text(cond)
