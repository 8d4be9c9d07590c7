"""Textual-inversion embeddings: new tokens for the CLIP tokenizer, new rows in the text encoder.

Formats:

* A1111 ``.pt`` (pickle, read with ``torch.load(weights_only=True)`` so no code runs):
  ``{"string_to_param": {"*": tensor[n, d]}, "name": ..., ...}``;
* A1111 ``.safetensors``: ``{"emb_params": tensor[n, d]}`` (or ``string_to_param.*``);
* diffusers ``learned_embeds.safetensors`` / ``.bin``: ``{"<token>": tensor[d] or [n, d]}``.

The token: the one the caller gives, used as is; else the diffusers file's key; else, for
A1111 files, the file name's stem, bare (``easynegative.safetensors`` -> ``easynegative``),
because that is what A1111 does and what prompts shared with such embeddings say; the
file's ``name`` field is only reported (:func:`describe_embedding`). CLIP lower-cases
prompts, so tokens match in any case.

An embedding of n vectors adds n tokens ``tok tok_1 ... tok_{n-1}``; a prompt names it
by ``tok`` alone, and :func:`expand_prompt` rewrites ``tok`` to all of them. The mapping is
kept on the tokenizer as ``tokenizer.videodiff_multi_tokens`` (``{tok: [tok, tok_1, ...]}``,
one entry per loaded embedding), and with it ``tokenizer.videodiff_expand_prompt`` (``prompt -> prompt``),
which the prompt encoder (:func:`videodiff.text.encode_prompts`) calls: it imports nothing of ``weights``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import torch

from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.weights.checkpoints import PICKLE_SUFFIXES, read_state_dict
from videodiff.weights.safetensors_header import read_header

MULTI_TOKENS_ATTR = "videodiff_multi_tokens"
EXPAND_ATTR = "videodiff_expand_prompt"  # the tokenizer's prompt -> prompt, for videodiff.text
_SDXL_KEYS = ("clip_l", "clip_g")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_pickle(path: Path) -> Any:
    """A pickle embedding file through ``torch.load(weights_only=True)``: tensors and plain containers only.

    (:func:`read_state_dict` wants a flat dict of tensors; A1111 files nest theirs, with
    strings and numbers beside them, so they are read here under the same restriction.)
    """
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad file, reported in one line
        full = str(exc)
        if any(s in full.lower() for s in ("weights only", "weights_only", "unsupported global")) or "GLOBAL" in full:
            raise UserError(
                f"{path}: refused, it needs arbitrary code to load (convert it to .safetensors with a tool you trust)"
            ) from None
        raise UserError(f"{path}: not a readable embedding file ({_first_line(exc)})") from None


def _vectors(path: Path, tensor: Any, what: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() == 0 or tensor.numel() == 0:
        raise UserError(f"{path}: {what} is not a tensor of embedding vectors")
    if tensor.dim() == 1:
        tensor = tensor.unsqueeze(0)
    elif tensor.dim() > 2:
        if any(s != 1 for s in tensor.shape[:-2]):
            raise UserError(f"{path}: {what} has shape {tuple(tensor.shape)}, expected [vectors, dims]")
        tensor = tensor.reshape(-1, tensor.shape[-1])
    return tensor.detach()


def _read_embedding(path: Path, pair: bool = False) -> tuple[str, list[tuple[str | None, torch.Tensor]], dict]:
    """``(format, [(token from the file or None, vectors [n, d])], extra info)``; ``pair``: an SDXL embedding,
    ``[("clip_l", vectors), ("clip_g", vectors)]`` for the first and second text encoder."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        data = _read_pickle(path)
        if isinstance(data, dict) and "string_to_param" in data:
            params = data["string_to_param"]
            if not isinstance(params, dict) or not params:
                raise UserError(f"{path}: string_to_param holds no embedding")
            if len(params) != 1:
                raise UserError(f"{path}: string_to_param holds {len(params)} embeddings, expected one")
            tensor = next(iter(params.values()))
            info = {"name": data["name"]} if isinstance(data.get("name"), str) else {}
            return "a1111", [(None, _vectors(path, tensor, "string_to_param"))], info
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise UserError(f"{path}: not a textual-inversion embedding (no string_to_param or token tensors)")
        state = data
    else:
        state = read_state_dict(path)
    if pair:
        if set(state) != set(_SDXL_KEYS):
            raise UserError(f"{path}: not an SDXL embedding (clip_l and clip_g tensors); this model is SDXL")
        return "sdxl", [(k, _vectors(path, state[k], k)) for k in _SDXL_KEYS], {}
    if any(k in state for k in _SDXL_KEYS):
        raise UserError(f"{path}: an SDXL embedding (clip_l/clip_g); this model is SD1.5-family")
    if "emb_params" in state:
        if len(state) != 1:
            raise UserError(f"{path}: emb_params beside other tensors ({', '.join(sorted(state)[:3])})")
        return "a1111", [(None, _vectors(path, state["emb_params"], "emb_params"))], {}
    a1111 = [k for k in state if k.startswith("string_to_param.")]
    if a1111:
        if len(state) != 1:
            raise UserError(f"{path}: expected one string_to_param tensor, found {len(state)} tensors")
        return "a1111", [(None, _vectors(path, state[a1111[0]], a1111[0]))], {}
    if not state:
        raise UserError(f"{path}: holds no embedding")
    return "diffusers", [(key, _vectors(path, t, key)) for key, t in state.items()], {}


def _token_names(token: str, n: int) -> list[str]:
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def _in_vocab(tokenizer, token: str) -> bool:
    vocab = tokenizer.get_vocab()
    lowered = token.lower() if getattr(tokenizer, "do_lower_case", True) else token
    return any(t in vocab for t in (token, lowered, token + "</w>", lowered + "</w>"))


def load_embedding(
    tokenizer, text_encoder, path: str | Path, token: str | None = None, second: tuple | None = None
) -> list[str]:
    """Add the embedding at ``path`` to ``tokenizer`` and ``text_encoder``; returns the new tokens.

    ``token`` overrides the token the file or its name gives (see the module docstring).
    A multi-vector embedding adds ``token``, ``token_1``, ...; its mapping is recorded on
    ``tokenizer.videodiff_multi_tokens`` for :func:`expand_prompt`. ``second``: SDXL's second
    ``(tokenizer, text_encoder)``; the file must then hold ``clip_l`` vectors (for the first) and
    ``clip_g`` ones (for the second), added under the same token names.
    """
    path = Path(path).expanduser()
    fmt, items, _ = _read_embedding(path, pair=second is not None)
    if second is not None:
        tokens = _add(tokenizer, text_encoder, path, fmt, [(None, items[0][1])], token)
        _add(*second, path, fmt, [(None, items[1][1])], token)
        return tokens
    return _add(tokenizer, text_encoder, path, fmt, items, token)


def _add(tokenizer, text_encoder, path: Path, fmt: str, items: list, token: str | None) -> list[str]:
    """:func:`load_embedding` for one tokenizer and text encoder."""
    if token is not None:
        token = token.strip()
        if not token:
            raise UserError(f"{path}: the token to load it as is empty")
        if len(items) != 1:
            raise UserError(f"{path}: holds {len(items)} embeddings; a single token cannot name them all")
        items = [(token, items[0][1])]
    embeddings = text_encoder.get_input_embeddings()
    dim = embeddings.weight.shape[1]
    plan: list[tuple[str, list[str], torch.Tensor]] = []
    seen: set[str] = set()
    for file_token, vectors in items:
        name = (file_token or path.stem).strip()
        if not name:
            raise UserError(f"{path}: the embedding has no usable token name; give one")
        if vectors.shape[1] != dim:
            hint = {1024: " (an SD2 embedding?)", 1280: " (an SDXL embedding?)"}.get(vectors.shape[1], "")
            raise UserError(
                f"{path}: embedding vectors have {vectors.shape[1]} dims, this text encoder uses {dim}{hint}"
            )
        names = _token_names(name, vectors.shape[0])
        for t in names:
            if _in_vocab(tokenizer, t) or t.lower() in seen:
                raise UserError(
                    f"{path}: token {t!r} is already in the tokenizer's vocabulary; load it under another token"
                )
            seen.add(t.lower())
        plan.append((name, names, vectors))
    new_tokens = [t for _, names, _ in plan for t in names]
    added = tokenizer.add_tokens(new_tokens)
    if added != len(new_tokens):
        raise UserError(f"{path}: the tokenizer accepted {added} of {len(new_tokens)} new tokens")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    weight = text_encoder.get_input_embeddings().weight
    mapping = dict(getattr(tokenizer, MULTI_TOKENS_ATTR, None) or {})
    with torch.no_grad():
        for name, names, vectors in plan:
            ids = tokenizer.convert_tokens_to_ids(names)
            weight[ids] = vectors.to(device=weight.device, dtype=weight.dtype)
            mapping[name] = names
    setattr(tokenizer, MULTI_TOKENS_ATTR, mapping)
    setattr(tokenizer, EXPAND_ATTR, functools.partial(expand_prompt, tokens_map=mapping))  # picklable
    summary = ", ".join(f"{name!r} ({len(names)} vector{'s' if len(names) > 1 else ''})" for name, names, _ in plan)
    notice(f"embedding {path.name} ({fmt}): added {summary}")
    return new_tokens


def expand_prompt(prompt: str, tokens_map: dict[str, list[str]] | None) -> str:
    """Rewrite each multi-vector token in ``prompt`` to all its tokens: ``tok`` -> ``tok tok_1 tok_2``.

    Matches whole words only (``tok_1`` or ``mytok`` are left alone), in any case (CLIP
    lower-cases prompts), and leaves an already-expanded prompt as it is.
    """
    for token, names in (tokens_map or {}).items():
        if len(names) < 2:
            continue
        left = r"(?<!\w)" if re.match(r"\w", token[0]) else ""
        right = r"(?!\w)" if re.match(r"\w", token[-1]) else ""
        already = r"(?!\s+" + re.escape(names[1]) + r"(?!\w))"
        pattern = re.compile(left + re.escape(token) + right + already, re.IGNORECASE)
        prompt = pattern.sub(lambda _m, names=names: " ".join(names), prompt)
    return prompt


def describe_embedding(path: str | Path) -> dict[str, Any]:
    """What an embedding file holds (format, token, vectors, dims); reads no model."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".safetensors":
        shapes = read_header(path).shapes
        if any(k in shapes for k in _SDXL_KEYS):
            return {
                "kind": "embedding",
                "path": str(path),
                "format": "sdxl",
                "base": "sdxl",
                "vectors": max((s[0] if len(s) > 1 else 1) for s in shapes.values()),
                "dims": {k: s[-1] for k, s in shapes.items()},
            }
        items = [(k, (s[0] if len(s) > 1 else 1) if s else 0, s[-1] if s else 0) for k, s in shapes.items()]
        fmt = "a1111" if any(k == "emb_params" or k.startswith("string_to_param.") for k in shapes) else "diffusers"
        extra: dict[str, Any] = {}
    else:
        fmt, loaded, extra = _read_embedding(path)
        items = [(k, v.shape[0], v.shape[1]) for k, v in loaded]
    tokens = [key if fmt == "diffusers" else path.stem for key, _, _ in items]
    dims = sorted({d for _, _, d in items})
    base = {768: "sd1", 1024: "sd2"}.get(dims[0]) if len(dims) == 1 else None
    info: dict[str, Any] = {
        "kind": "embedding",
        "path": str(path),
        "format": fmt,
        "token": tokens[0] if len(tokens) == 1 else tokens,
        "vectors": sum(n for _, n, _ in items),
        "dims": dims[0] if len(dims) == 1 else dims,
        "base": base,
        "count": len(items),
    }
    info.update(extra)
    return info
