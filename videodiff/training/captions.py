"""Captions to what the video U-Net is conditioned on in training, as the model's family reads them.

Each caption is encoded once per run (the text encoders are frozen): its text context ``[n d]`` and, for a family
whose time embedding takes pooled text (SDXL), its pooled text ``[p]``. A dropped caption (``caption_dropout``, so
that guidance has an unconditional branch to use) is the empty caption, or zeros for a family that renders without a
negative prompt from zeros (SDXL's ``force_zeros_for_empty_prompt``), as it will be sampled. SDXL's size ids are the
clips' own size (original and target), crop (0, 0), as :func:`videodiff.pipeline.prompts.size_ids`.
"""

from __future__ import annotations

import random

import torch

from videodiff import text
from videodiff.pipeline.prompts import size_ids
from videodiff.sampling.cond import TEXT_EMBEDS, TIME_IDS, Cond, TensorField


class Captions:
    """The captions' encodings for one run, cached (a resumed run encodes them again, to the same tensors)."""

    def __init__(self, parts, device: torch.device) -> None:
        self.parts, self.device = parts, device
        self.family = parts.family
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def encode(self, caption: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(context [n d], pooled [p] or None)`` of ``caption``."""
        if caption not in self.cache:
            p = self.parts
            if self.family.text_layer == "penultimate":
                context, pooled = text.encode_penultimate(p.tokenizers, p.text_encoders, [caption], self.device)
                self.cache[caption] = context[0], pooled[0]
            else:
                self.cache[caption] = text.encode_prompts(p.tokenizer, p.text_encoder, [caption], self.device)[0], None
        return self.cache[caption]

    def context(self, caption: str) -> torch.Tensor:
        """The text context ``[n d]`` of ``caption``."""
        return self.encode(caption)[0]

    def cond(self, captions: list[str], dropout: float, seed: str, height: int, width: int) -> Cond:
        """The conditioning of a micro-batch: each caption dropped with probability ``dropout`` (drawn from ``seed``),
        its text context ``[b n d]`` and the family's added fields for clips of ``height`` x ``width`` pixels."""
        rng = random.Random(seed)
        contexts, pooled = [], []
        for caption in captions:
            dropped = rng.random() < dropout
            context, pool = self.encode("" if dropped else caption)
            if dropped and self.family.zero_empty_negative:
                context, pool = torch.zeros_like(context), None if pool is None else torch.zeros_like(pool)
            contexts.append(context)
            pooled.append(pool)
        context = torch.stack(contexts)
        fields = {}
        if TEXT_EMBEDS in self.family.added_conditioning:
            fields[TEXT_EMBEDS] = TensorField(torch.stack(pooled))
        if TIME_IDS in self.family.added_conditioning:
            fields[TIME_IDS] = TensorField(size_ids(height, width, context).expand(len(captions), -1))
        return Cond.text(context).with_fields(**fields)
