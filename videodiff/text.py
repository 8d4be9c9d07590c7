"""Prompts to text context ``[b n d]`` through a CLIP tokenizer and text encoder (transformers)."""

from __future__ import annotations

import re

import torch

from videodiff.log import notice
from videodiff.settings.sample import TRAVEL


def nearest_words(words: list[str], known: set[str] | list[str], cutoff: float = 0.75) -> dict[str, str]:
    """``{word: the known word nearest to it}`` for each of ``words`` that is close to one (a typo: ``cirle`` ->
    ``circle``, ``rigth`` -> ``right``), by :func:`difflib.get_close_matches`'s similarity ratio (at least
    ``cutoff``; 0.75 keeps ``on`` from reading as ``down``)."""
    import difflib

    pool = sorted(known)
    return {w: close[0] for w in words if (close := difflib.get_close_matches(w, pool, n=1, cutoff=cutoff))}


def unknown_words_notice(prompt: str, unknown: list[str], known: set[str], knows: str) -> str:
    """What a closed-vocabulary model says of a prompt with words it never saw: the words, the prompt with its
    typos mended where a known word is near (:func:`nearest_words`), and ``knows`` (what it does know)."""
    text = f"this model never saw the words {', '.join(unknown)}"
    mend = nearest_words(unknown, known)
    if mend:
        mended = re.sub(r"[A-Za-z0-9]+", lambda m: mend.get(m.group(0).lower(), m.group(0)), prompt)
        pairs = ", ".join(f"{w} -> {k}" for w, k in mend.items())
        text += f"; did you mean {mended!r}? ({pairs})"
    return f"{text}; it knows only {knows}"


def cut_words(tokenizer, prompt: str, max_length: int) -> str:
    """The words of ``prompt`` from the first one that does not fit whole in ``max_length`` tokens on.

    A word the limit falls inside is named whole (quoting the tokens after the limit would cut it
    mid-word, e.g. 'ach' of 'beach').
    """
    words = prompt.split()
    fits = lambda k: len(tokenizer(" ".join(words[:k]), truncation=False).input_ids) <= max_length  # noqa: E731
    low, high = 0, len(words)  # fits(low) holds; find the largest k that fits (the token count grows with k)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return " ".join(words[low:])


def _token_ids(tokenizer, prompts: list[str], device: torch.device | str) -> torch.Tensor:
    """``[b n]`` token ids padded to the tokenizer's max length; text past it is cut, with a notice that quotes
    what was cut."""
    expand = getattr(tokenizer, "videodiff_expand_prompt", None)
    if expand is not None:  # multi-vector textual-inversion tokens expand to all their vectors (set where they load)
        prompts = [expand(p) for p in prompts]
    max_length = tokenizer.model_max_length
    batch = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    for prompt in prompts:
        full = tokenizer(prompt, truncation=False).input_ids
        if len(full) > max_length:
            cut = cut_words(tokenizer, prompt, max_length)
            notice(
                f"prompt is longer than the text encoder's {max_length} tokens; these words were cut: {cut!r}",
                about="the prompt",
            )
    return batch.input_ids.to(device), batch.attention_mask.to(device)


@torch.no_grad()
def encode_prompts(
    tokenizer, text_encoder, prompts: list[str], device: torch.device | str, clip_skip: int | None = None
) -> torch.Tensor:
    """Encode ``prompts`` to ``[b n d]`` (n = the tokenizer's max length, 77 for CLIP).

    Text past the encoder's limit is cut, with a notice that quotes what was cut.
    ``clip_skip`` uses an earlier hidden layer (1 = the penultimate), through the final
    layer norm, as diffusers does.
    """
    ids, mask = _token_ids(tokenizer, prompts, device)
    mask = mask if getattr(text_encoder.config, "use_attention_mask", False) else None
    if clip_skip:
        out = text_encoder(ids, attention_mask=mask, output_hidden_states=True)
        hidden = out.hidden_states[-(clip_skip + 1)]
        # transformers 4 nests the modules in .text_model; 5 does not
        hidden = getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)
    else:
        hidden = text_encoder(ids, attention_mask=mask)[0]
    return hidden.to(dtype=text_encoder.dtype)


@torch.no_grad()
def encode_penultimate(
    tokenizers: list, text_encoders: list, prompts: list[str], device: torch.device | str, clip_skip: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's text: ``(context [b n d], pooled [b p])``.

    ``context``: each encoder's hidden states before its last layer (``clip_skip`` N: N layers further back),
    without the final layer norm, concatenated over the width in the encoders' order; ``pooled``: the last
    encoder's projected pooled output (``CLIPTextModelWithProjection.text_embeds``), as diffusers'
    ``StableDiffusionXLPipeline.encode_prompt`` computes them.
    """
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        ids, _ = _token_ids(tokenizer, prompts, device)
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-((clip_skip or 0) + 2)])
        pooled = out[0]  # the last encoder's wins: text_embeds of a CLIPTextModelWithProjection
    if pooled is None or pooled.ndim != 2:
        raise ValueError("the last text encoder gives no pooled projection (it must be a CLIPTextModelWithProjection)")
    dtype = text_encoders[-1].dtype
    return torch.cat(hidden, dim=-1).to(dtype=dtype), pooled.to(dtype=dtype)


def travel(keyframes: dict[int, torch.Tensor], frames: int, mode: str = "linear") -> torch.Tensor:
    """Prompt travel: a text context per frame ``[b f n d]`` from contexts ``[b n d]`` at keyframes.

    Before the first keyframe a frame has the first's context, after the last the last's; in between
    it blends the two keyframes around it by its place between them: ``linear`` (``(1 - w) a + w b``)
    or ``slerp`` (spherical, per token vector, keeping the vectors' lengths' blend).
    """
    if mode not in TRAVEL:
        raise ValueError(f"unknown travel mode {mode!r}")
    keys = sorted(keyframes)
    out = []
    for f in range(frames):
        after = next((k for k in keys if k > f), None)
        before = max((k for k in keys if k <= f), default=None)
        if before is None or after is None:
            out.append(keyframes[after if before is None else before])
            continue
        w = (f - before) / (after - before)
        out.append(_blend(keyframes[before], keyframes[after], w, mode))
    return torch.stack(out, dim=1)


def _blend(a: torch.Tensor, b: torch.Tensor, w: float, mode: str) -> torch.Tensor:
    if w == 0:
        return a
    if mode == "linear":
        return torch.lerp(a, b, w)
    # slerp over the last axis; nearly parallel vectors fall back to the linear blend
    a32, b32 = a.float(), b.float()
    na, nb = a32.norm(dim=-1, keepdim=True), b32.norm(dim=-1, keepdim=True)
    cos = ((a32 / na.clamp_min(1e-12)) * (b32 / nb.clamp_min(1e-12))).sum(-1, keepdim=True).clamp(-1, 1)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    safe = sin.abs() > 1e-4
    wa = torch.where(
        safe, torch.sin((1 - w) * theta) / sin.where(safe, torch.ones_like(sin)), torch.full_like(sin, 1 - w)
    )
    wb = torch.where(safe, torch.sin(w * theta) / sin.where(safe, torch.ones_like(sin)), torch.full_like(sin, w))
    return (wa * a32 + wb * b32).to(a.dtype)
