"""LoRA files' key grammar and scaling, for image LoRAs and MotionLoRAs alike.

:func:`parse_lora_keys` groups a file's keys into one :class:`LoraEntry` per targeted module
(its ``down``/``up``/``alpha`` keys), by names only; :func:`lora_factor` is that pair's
scaling: ``alpha / rank`` from a kohya/diffusers ``.alpha`` tensor, else PEFT's from
:func:`peft_configs` (``lora_alpha``, ``alpha_pattern``, ``use_rslora``: ``alpha / sqrt(rank)``;
the rank is the tensors', which is what ``r``/``rank_pattern`` describe), else 1. Where the
pairs go (U-Net, text encoder, motion modules) is the caller's business.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videodiff.errors import UserError
from videodiff.weights.safetensors_header import read_header

UNET, TEXT, TEXT2 = "unet", "text_encoder", "text_encoder_2"  # the components a key prefix can name

_KOHYA_SUFFIXES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
_DIFFUSERS_SUFFIXES = (
    (".lora_A.weight", "down", "peft"),
    (".lora_B.weight", "up", "peft"),
    (".lora_A.default.weight", "down", "peft"),  # PEFT's adapter name left in by some trainers
    (".lora_B.default.weight", "up", "peft"),
    (".lora.down.weight", "down", "diffusers-old"),
    (".lora.up.weight", "up", "diffusers-old"),
    (".lora_linear_layer.down.weight", "down", "diffusers-old"),
    (".lora_linear_layer.up.weight", "up", "diffusers-old"),
    (".lora_A.alpha", "alpha", None),
    (".lora.alpha", "alpha", None),
    (".alpha", "alpha", None),
)
_PROCESSOR_RE = re.compile(
    r"(?P<attn>.+?)\.(?:processor\.)?(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)\.weight"
)
_PROCESSOR_TARGETS = {
    UNET: {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
    TEXT: {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"},
}
_PROCESSOR_TARGETS[TEXT2] = _PROCESSOR_TARGETS[TEXT]
_KOHYA_PREFIXES = (("lora_unet_", UNET), ("lora_te1_", TEXT), ("lora_te2_", TEXT2), ("lora_te_", TEXT))
# Key parts of LoRA variants that are not plain low-rank pairs.
_UNSUPPORTED = (
    (re.compile(r"\.hada_"), "a LyCORIS LoHa"),
    (re.compile(r"\.lokr_"), "a LyCORIS LoKr"),
    (re.compile(r"\.lora_mid\."), "a LyCORIS LoCon with a Tucker mid tensor"),
    (re.compile(r"\.(dora_scale|lora_magnitude_vector)"), "a DoRA"),
    (re.compile(r"^lora_(unet|te)_[^.]+\.diff(_b)?$"), "a full-difference"),
)


@dataclass
class LoraEntry:
    """One targeted module as named in the file: its tensors' keys, before resolving."""

    component: str | None  # UNET, TEXT, or None = decide by the name
    name: str  # dotted (diffusers/PEFT) or underscored (kohya) module name
    style: str  # "kohya" or "dotted"
    fmt: str
    keys: dict[str, str] = field(default_factory=dict)  # "down" / "up" / "alpha" -> key


def unsupported_kind(key: str) -> str | None:
    """The LoRA variant a key belongs to when it is not a plain down/up pair (LoHa, LoKr, DoRA...), else None."""
    for pattern, kind in _UNSUPPORTED:
        if pattern.search(key):
            return kind
    return None


def parse_lora_keys(keys: list[str]) -> tuple[dict[tuple, LoraEntry], list[str], list[str]]:
    """Group keys by the module they target: ``(entries, unknown keys, keys for a second text encoder)``. Names only.

    Entries are keyed ``(component, name, style)``; a tensor named twice (two spellings of
    the same part) is reported as unknown, so it is never silently dropped.
    """
    entries: dict[tuple, LoraEntry] = {}
    unknown: list[str] = []
    sdxl: list[str] = []

    def add(component, name, style, fmt, part, key):
        entry = entries.setdefault((component, name, style), LoraEntry(component, name, style, fmt))
        if fmt != "any" and entry.fmt == "any":
            entry.fmt = fmt
        if part in entry.keys:
            unknown.append(key)  # the same tensor twice under two spellings: ambiguous
        entry.keys[part] = key

    for key in keys:
        if key.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")):
            sdxl.append(key)  # SDXL's two text encoders (kohya numbers both, PEFT the second)
        kohya = next(((p, c) for p, c in _KOHYA_PREFIXES if key.startswith(p)), None)
        if kohya is not None:
            prefix, component = kohya
            name, _, suffix = key[len(prefix) :].partition(".")
            part = _KOHYA_SUFFIXES.get(suffix)
            if part is None or not name:
                unknown.append(key)
                continue
            add(component, name, "kohya", "kohya", part, key)
            continue
        component: str | None = None
        rest = key
        dotted = (("unet.", UNET), ("text_encoder.", TEXT), ("text_encoder_2.", TEXT2), ("base_model.model.", None))
        for prefix, comp in dotted:
            if rest.startswith(prefix):
                component, rest = comp, rest[len(prefix) :]
                break
        match = _PROCESSOR_RE.fullmatch(rest)
        if match:
            comp = component or (TEXT if rest.startswith("text_model.") else UNET)
            target = _PROCESSOR_TARGETS[comp][match["proj"]]
            name = f"{match['attn'].replace('.processor', '')}.{target}"
            add(comp, name, "dotted", "diffusers-old", match["part"], key)
            continue
        for suffix, part, fmt in _DIFFUSERS_SUFFIXES:
            if rest.endswith(suffix) and len(rest) > len(suffix):
                name = rest[: -len(suffix)].replace(".processor.", ".")
                add(component, name, "dotted", fmt or "any", part, key)
                break
        else:
            unknown.append(key)
    return entries, unknown, sdxl


def format_name(entries) -> str:
    """The formats the entries are written in, ``+``-joined (``"kohya"``, ``"peft"``, ``"diffusers-old"``)."""
    fmts = sorted({e.fmt for e in entries} - {"any"})
    return "+".join(fmts) if fmts else "unknown"


def _metadata(path: Path) -> dict[str, str]:
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        return read_header(path).metadata
    except UserError:  # a bad header is reported by read_state_dict
        return {}


def peft_configs(path: Path) -> dict[str | None, dict[str, Any]]:
    """PEFT LoRA settings per component (None = any): from the safetensors header, else adapter_config.json."""
    configs: dict[str | None, dict[str, Any]] = {}
    raw = _metadata(path).get("lora_adapter_metadata")
    if raw:
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError:
            meta = {}
        for key, value in meta.items() if isinstance(meta, dict) else ():
            comp, _, setting = key.partition(".")
            if comp in (UNET, TEXT, TEXT2) and setting:
                configs.setdefault(comp, {})[setting] = value
    config_path = path.parent / "adapter_config.json"
    if not configs and config_path.is_file():
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{config_path}: not valid JSON ({exc})") from None
        if isinstance(data, dict):
            configs[None] = data
    return configs


def _peft_factor(config: dict[str, Any] | None, module: str, rank: int) -> float:
    if not config or "lora_alpha" not in config:
        return 1.0
    alpha = float(config["lora_alpha"])
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if module == pattern or module.endswith("." + pattern) or _pattern_matches(pattern, module):
            alpha = float(value)
            break
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _pattern_matches(pattern: str, module: str) -> bool:
    try:
        return re.fullmatch(rf"(.*\.)?(?:{pattern})", module) is not None
    except re.error:
        return False


def component_of(entry: LoraEntry) -> str:
    """The entry's component: its key prefix's, else the text encoder for ``text_model.*`` names, else the U-Net."""
    return entry.component or (TEXT if entry.name.startswith("text_model.") else UNET)


def lora_factor(
    source: str | Path, entry: LoraEntry, tensors: dict, rank: int, config: dict | None, module: str
) -> float:
    """The factor of ``up @ down`` for one pair: ``alpha / rank`` from its ``.alpha`` tensor, else PEFT's, else 1.

    ``config``: the PEFT config that applies (see :func:`peft_configs`); ``module``: the
    targeted module's name, matched against its ``alpha_pattern``.
    """
    if "alpha" in entry.keys:
        alpha = tensors[entry.keys["alpha"]]
        if alpha.numel() != 1:
            raise UserError(f"{source}: {entry.keys['alpha']} should hold one number, it has shape {alpha.shape}")
        return float(alpha.float().item()) / rank
    if entry.style == "dotted":
        return _peft_factor(config, module, rank)
    return 1.0
