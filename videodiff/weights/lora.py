"""Image-model LoRAs (SD1.5), merged into the U-Net and text-encoder weights in place.

Merging is "fused": for every targeted ``nn.Linear`` / ``nn.Conv2d`` the weight becomes
``W + scale * factor * up @ down`` (computed in float32, cast back to the weight's dtype),
so inference costs nothing extra and no LoRA library is needed. ``factor`` is
``alpha / rank`` when the file says what alpha is, else 1 (diffusers-saved LoRAs, whose
alpha is their rank).

Formats, told apart by their key names:

* ``kohya`` (sd-scripts, most community files): ``lora_unet_<module>.lora_down.weight`` /
  ``.lora_up.weight`` / ``.alpha`` and ``lora_te_<module>...``, where ``<module>`` is the
  diffusers (or transformers) dotted module name with ``.`` written as ``_``. The
  original-SD (LDM) naming, ``lora_unet_input_blocks_1_1_...``, is mapped onto diffusers'
  blocks too (reported as ``kohya-ldm``). 1x1 conv LoRAs and LoCon 3x3 ones (down 3x3,
  up 1x1) are reshaped onto the conv weight.
* ``peft`` (diffusers >= 0.27, PEFT): ``unet.<dotted>.lora_A.weight`` / ``lora_B.weight``,
  ``text_encoder.<dotted>...``; alpha from ``<dotted>.alpha`` keys, the safetensors
  ``lora_adapter_metadata`` header, or an ``adapter_config.json`` beside the file.
* ``diffusers-old``: the attention-processor layout
  (``...attn1.processor.to_q_lora.down.weight``) and ``.lora.down`` / ``.lora_linear_layer.down``.

Nothing is changed unless the whole file fits: every key must be used and every shape
must match, else :class:`UserError` names the file and the key.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.weights.checkpoints import read_state_dict
from videodiff.weights.safetensors_header import read_header

# Files looked for when a LoRA is given as a folder.
LORA_FILE_NAMES = (
    "pytorch_lora_weights.safetensors",
    "adapter_model.safetensors",
    "pytorch_lora_weights.bin",
    "adapter_model.bin",
)
UNET, TEXT = "unet", "text_encoder"
_COMPONENT_WORDS = {UNET: "U-Net", TEXT: "text encoder"}

_KOHYA_SUFFIXES = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}
_DIFFUSERS_SUFFIXES = (
    (".lora_A.weight", "down", "peft"),
    (".lora_B.weight", "up", "peft"),
    (".lora.down.weight", "down", "diffusers-old"),
    (".lora.up.weight", "up", "diffusers-old"),
    (".lora_linear_layer.down.weight", "down", "diffusers-old"),
    (".lora_linear_layer.up.weight", "up", "diffusers-old"),
    (".alpha", "alpha", None),
)
_PROCESSOR_RE = re.compile(
    r"(?P<attn>.+?)\.(?:processor\.)?(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)\.weight"
)
_PROCESSOR_TARGETS = {
    UNET: {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"},
    TEXT: {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"},
}
# Key parts of LoRA variants that are not plain low-rank pairs.
_UNSUPPORTED = (
    (re.compile(r"\.hada_"), "a LyCORIS LoHa"),
    (re.compile(r"\.lokr_"), "a LyCORIS LoKr"),
    (re.compile(r"\.lora_mid\."), "a LyCORIS LoCon with a Tucker mid tensor"),
    (re.compile(r"\.(dora_scale|lora_magnitude_vector)"), "a DoRA"),
    (re.compile(r"^lora_(unet|te)_[^.]+\.diff(_b)?$"), "a full-difference"),
)
# LDM (original Stable Diffusion) ResBlock parts -> diffusers ResnetBlock2D names (underscored).
_LDM_RESNET = {
    "in_layers_0": "norm1",
    "in_layers_2": "conv1",
    "emb_layers_1": "time_emb_proj",
    "out_layers_0": "norm2",
    "out_layers_3": "conv2",
    "skip_connection": "conv_shortcut",
}


@dataclass
class LoraReport:
    """What :func:`apply_lora` did."""

    path: str
    format: str
    scale: float
    unet_modules: int = 0
    text_encoder_modules: int = 0
    ranks: list[int] = field(default_factory=list)

    @property
    def modules(self) -> int:
        return self.unet_modules + self.text_encoder_modules


@dataclass
class _Entry:
    """One targeted module as named in the file: its tensors' keys, before resolving."""

    component: str | None  # UNET, TEXT, or None = decide by the name
    name: str  # dotted (diffusers/PEFT) or underscored (kohya) module name
    style: str  # "kohya" or "dotted"
    fmt: str
    keys: dict[str, str] = field(default_factory=dict)  # "down" / "up" / "alpha" -> key


def _unsupported_kind(key: str) -> str | None:
    for pattern, kind in _UNSUPPORTED:
        if pattern.search(key):
            return kind
    return None


def _parse_keys(keys: list[str]) -> tuple[dict[tuple, _Entry], list[str], list[str]]:
    """Group keys by the module they target: ``(entries, unknown keys, SDXL-only keys)``. Names only."""
    entries: dict[tuple, _Entry] = {}
    unknown: list[str] = []
    sdxl: list[str] = []

    def add(component, name, style, fmt, part, key):
        entry = entries.setdefault((component, name, style), _Entry(component, name, style, fmt))
        if fmt != "any" and entry.fmt == "any":
            entry.fmt = fmt
        if part in entry.keys:
            unknown.append(key)  # the same tensor twice under two spellings: ambiguous
        entry.keys[part] = key

    for key in keys:
        if key.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")):
            sdxl.append(key)
            continue
        if key.startswith(("lora_unet_", "lora_te_")):
            component = UNET if key.startswith("lora_unet_") else TEXT
            body = key[len("lora_unet_") :] if component == UNET else key[len("lora_te_") :]
            name, _, suffix = body.partition(".")
            part = _KOHYA_SUFFIXES.get(suffix)
            if part is None or not name:
                unknown.append(key)
                continue
            add(component, name, "kohya", "kohya", part, key)
            continue
        component: str | None = None
        rest = key
        for prefix, comp in (("unet.", UNET), ("text_encoder.", TEXT), ("base_model.model.", None)):
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


def _format_name(entries) -> str:
    fmts = sorted({e.fmt for e in entries} - {"any"})
    return "+".join(fmts) if fmts else "unknown"


def _ldm_map(unet: nn.Module) -> dict[str, tuple[str, bool]]:
    """LDM block prefixes (underscored) -> (diffusers prefix, is a resnet), built from ``unet``'s own blocks."""
    out: dict[str, tuple[str, bool]] = {
        "input_blocks_0_0": ("conv_in", False),
        "time_embed_0": ("time_embedding_linear_1", False),
        "time_embed_2": ("time_embedding_linear_2", False),
        "out_0": ("conv_norm_out", False),
        "out_2": ("conv_out", False),
    }
    idx = 1
    for level, block in enumerate(getattr(unet, "down_blocks", [])):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            out[f"input_blocks_{idx}_0"] = (f"down_blocks_{level}_resnets_{j}", True)
            if attentions is not None and j < len(attentions):
                out[f"input_blocks_{idx}_1"] = (f"down_blocks_{level}_attentions_{j}", False)
            idx += 1
        if getattr(block, "downsamplers", None):
            out[f"input_blocks_{idx}_0_op"] = (f"down_blocks_{level}_downsamplers_0_conv", False)
            idx += 1
    mid = getattr(unet, "mid_block", None)
    if mid is not None:
        out["middle_block_0"] = ("mid_block_resnets_0", True)
        if getattr(mid, "attentions", None):
            out["middle_block_1"] = ("mid_block_attentions_0", False)
            out["middle_block_2"] = ("mid_block_resnets_1", True)
        elif len(mid.resnets) > 1:
            out["middle_block_1"] = ("mid_block_resnets_1", True)
    idx = 0
    for level, block in enumerate(getattr(unet, "up_blocks", [])):
        attentions = getattr(block, "attentions", None)
        n = len(block.resnets)
        for j in range(n):
            out[f"output_blocks_{idx}_0"] = (f"up_blocks_{level}_resnets_{j}", True)
            has_attn = attentions is not None and j < len(attentions)
            if has_attn:
                out[f"output_blocks_{idx}_1"] = (f"up_blocks_{level}_attentions_{j}", False)
            if j == n - 1 and getattr(block, "upsamplers", None):
                upsampler = f"output_blocks_{idx}_{2 if has_attn else 1}_conv"
                out[upsampler] = (f"up_blocks_{level}_upsamplers_0_conv", False)
            idx += 1
    return out


def _ldm_to_diffusers(name: str, ldm: dict[str, tuple[str, bool]]) -> str | None:
    for prefix, (target, is_resnet) in ldm.items():
        if name == prefix:
            return target
        if name.startswith(prefix + "_"):
            rest = name[len(prefix) + 1 :]
            if is_resnet:
                for old, new in _LDM_RESNET.items():
                    if rest == old or rest.startswith(old + "_"):
                        rest = new + rest[len(old) :]
                        break
            return f"{target}_{rest}"
    return None


class _Index:
    """A model's modules by dotted name and by kohya's underscored name."""

    def __init__(self, model: nn.Module | None, kind: str):
        self.model = model
        self.kind = kind
        self.dotted: dict[str, nn.Module] = {}
        self.underscored: dict[str, str] = {}
        self._ldm: dict[str, tuple[str, bool]] | None = None
        if model is None:
            return
        clashes: set[str] = set()
        for name, module in model.named_modules():
            if not name:
                continue
            aliases = [name]
            if kind == TEXT:  # transformers 4.x names CLIPTextModel's modules text_model.*, 5.x does not
                short = name.removeprefix("text_model.")
                aliases.append(short if short != name else f"text_model.{name}")
            for alias in aliases:
                self.dotted[alias] = module
                under = alias.replace(".", "_")
                if under in self.underscored and self.underscored[under] != alias:
                    clashes.add(under)
                self.underscored[under] = alias
        for under in clashes:
            del self.underscored[under]

    def resolve(self, entry: _Entry) -> tuple[str | None, bool]:
        """The dotted module name an entry targets (or None), and whether LDM naming was used."""
        if entry.style == "dotted":
            return (entry.name if entry.name in self.dotted else None), False
        if entry.name in self.underscored:
            return self.underscored[entry.name], False
        if self.kind == UNET and self.model is not None:
            if self._ldm is None:
                self._ldm = _ldm_map(self.model)
            converted = _ldm_to_diffusers(entry.name, self._ldm)
            if converted is not None and converted in self.underscored:
                return self.underscored[converted], True
        return None, False


def _lora_file(path: Path) -> Path:
    if path.is_dir():
        for name in LORA_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path}: no LoRA file inside (expected one of {', '.join(LORA_FILE_NAMES)})")
    return path


def _safetensors_metadata(path: Path) -> dict[str, str]:
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        return read_header(path).metadata
    except UserError:  # a bad header is reported by read_state_dict
        return {}


def _peft_configs(path: Path) -> dict[str | None, dict[str, Any]]:
    """PEFT LoRA settings per component (None = any): from the safetensors header, else adapter_config.json."""
    configs: dict[str | None, dict[str, Any]] = {}
    raw = _safetensors_metadata(path).get("lora_adapter_metadata")
    if raw:
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError:
            meta = {}
        for key, value in meta.items() if isinstance(meta, dict) else ():
            comp, _, setting = key.partition(".")
            if comp in (UNET, TEXT) and setting:
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


@dataclass
class _Patch:
    component: str
    name: str
    module: nn.Module
    down: torch.Tensor
    up: torch.Tensor
    factor: float


def _check_shapes(path: Path, entry: _Entry, name: str, module: nn.Module, down, up) -> None:
    weight = module.weight
    w_shape = tuple(weight.shape)
    d_shape, u_shape = tuple(down.shape), tuple(up.shape)
    hint = " (a LoRA for another base model, e.g. SDXL or SD2?)"
    if down.dim() not in (2, 4) or up.dim() not in (2, 4):
        raise UserError(f"{path}: {entry.keys['down']} has an unsupported shape {d_shape}")
    rank = d_shape[0]
    if u_shape[1] != rank or any(s != 1 for s in u_shape[2:]):
        raise UserError(f"{path}: {entry.keys['up']} has shape {u_shape}, which does not pair with down {d_shape}")
    if u_shape[0] != w_shape[0]:
        raise UserError(f"{path}: {entry.keys['up']} has shape {u_shape}, {name} has {w_shape}{hint}")
    w_in, d_in = w_shape[1:], d_shape[1:]
    # Equal, or a linear LoRA on a 1x1 conv (and the reverse): only 1-sized kernel dims may differ.
    fits = d_in == w_in or (d_in[0] == w_in[0] and all(s == 1 for s in d_in[1:] + w_in[1:]))
    if not fits:
        raise UserError(f"{path}: {entry.keys['down']} has shape {d_shape}, {name} has {w_shape}{hint}")


def _plan(path: Path, state: dict[str, torch.Tensor], unet, text_encoder) -> tuple[str, list[_Patch]]:
    entries, unknown, sdxl = _parse_keys(list(state))
    if sdxl:
        raise UserError(f"{path}: an SDXL LoRA (e.g. key {sdxl[0]}); this model is SD1.5-family")
    for key in unknown:
        kind = _unsupported_kind(key)
        if kind:
            raise UserError(f"{path}: {kind} file (key {key}); only plain LoRA (down/up pairs) is supported")
    if unknown:
        raise UserError(f"{path}: {len(unknown)} keys are not LoRA keys videodiff knows (e.g. {unknown[0]})")
    if not entries:
        raise UserError(f"{path}: holds no LoRA weights")
    indexes = {UNET: _Index(unet, UNET), TEXT: _Index(text_encoder, TEXT)}
    configs = _peft_configs(path) if any(e.style == "dotted" for e in entries.values()) else {}
    fmt = _format_name(entries.values())
    patches: list[_Patch] = []
    unmatched: list[str] = []
    used_ldm = False
    for entry in entries.values():
        sample = next(iter(entry.keys.values()))
        component = entry.component
        if component is None:  # no prefix: the text encoder's names start with text_model.
            component = TEXT if entry.name.startswith("text_model.") else UNET
        index = indexes[component]
        if index.model is None:
            raise UserError(f"{path}: has {_COMPONENT_WORDS[component]} weights (e.g. {sample}) but no such model")
        name, ldm = index.resolve(entry)
        if name is None:
            unmatched.append(sample)
            continue
        used_ldm |= ldm
        missing = [p for p in ("down", "up") if p not in entry.keys]
        if missing:
            raise UserError(f"{path}: {sample} has no matching '{missing[0]}' tensor")
        module = index.dotted[name]
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise UserError(f"{path}: {sample} targets {name}, a {type(module).__name__}, not a linear or conv layer")
        down, up = state[entry.keys["down"]], state[entry.keys["up"]]
        _check_shapes(path, entry, name, module, down, up)
        rank = down.shape[0]
        if "alpha" in entry.keys:
            alpha_t = state[entry.keys["alpha"]]
            if alpha_t.numel() != 1:
                raise UserError(f"{path}: {entry.keys['alpha']} should hold one number, it has shape {alpha_t.shape}")
            factor = float(alpha_t.float().item()) / rank
        elif entry.style == "dotted":
            factor = _peft_factor(configs.get(component) or configs.get(None), name, rank)
        else:
            factor = 1.0
        patches.append(_Patch(component, name, module, down, up, factor))
    if unmatched:
        raise UserError(
            f"{path}: {len(unmatched)} LoRA modules match nothing in this model (e.g. {unmatched[0]}); "
            "is it a LoRA for another kind of model?"
        )
    if used_ldm:
        fmt = fmt.replace("kohya", "kohya-ldm")
    return fmt, patches


@torch.no_grad()
def _merge(patch: _Patch, scale: float) -> None:
    weight = patch.module.weight
    up = patch.up.to(device=weight.device, dtype=torch.float32).flatten(1)
    down = patch.down.to(device=weight.device, dtype=torch.float32).flatten(1)
    delta = (up @ down).reshape(weight.shape)
    merged = weight.detach().to(torch.float32) + delta * (scale * patch.factor)
    weight.copy_(merged.to(weight.dtype))


def apply_lora(unet, text_encoder, path: str | Path, scale: float = 1.0) -> LoraReport:
    """Merge the LoRA at ``path`` (a file, or a folder holding one) into ``unet`` and ``text_encoder`` in place.

    Checks every key and shape before changing anything; raises :class:`UserError` if the
    file does not fit this model.
    """
    path = _lora_file(Path(path).expanduser())
    scale = float(scale)
    if not math.isfinite(scale):
        raise UserError(f"{path}: LoRA scale must be a finite number, got {scale}")
    state = read_state_dict(path)
    fmt, patches = _plan(path, state, unet, text_encoder)
    for patch in patches:
        _merge(patch, scale)
    report = LoraReport(
        path=str(path),
        format=fmt,
        scale=scale,
        unet_modules=sum(p.component == UNET for p in patches),
        text_encoder_modules=sum(p.component == TEXT for p in patches),
        ranks=sorted({int(p.down.shape[0]) for p in patches}),
    )
    notice(
        f"LoRA {path.name} ({fmt}, scale {scale:g}): merged into {report.unet_modules} U-Net and "
        f"{report.text_encoder_modules} text-encoder modules"
    )
    return report


def _key_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix.lower() == ".safetensors":
        return read_header(path).shapes
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


def describe_lora(path: str | Path) -> dict[str, Any]:
    """What a LoRA file holds, from its key names and shapes only (no model, no weights read for safetensors)."""
    path = _lora_file(Path(path).expanduser())
    shapes = _key_shapes(path)
    entries, unknown, sdxl = _parse_keys(list(shapes))
    counts = {UNET: 0, TEXT: 0}
    ranks: set[int] = set()
    text_dims: set[int] = set()
    cross_dims: set[int] = set()
    for entry in entries.values():
        component = entry.component or (TEXT if entry.name.startswith("text_model.") else UNET)
        counts[component] += 1
        down = shapes.get(entry.keys.get("down", ""))
        if down:
            ranks.add(down[0])
            name = entry.name.replace("_", ".")
            if component == TEXT and name.endswith("q.proj") and len(down) == 2:
                text_dims.add(down[1])
            if component == UNET and name.endswith(("attn2.to.k", "attn2.to.v")) and len(down) == 2:
                cross_dims.add(down[1])
    dims = text_dims | cross_dims
    base = "sdxl" if sdxl or 2048 in dims else "sd2" if 1024 in dims else "sd1" if 768 in dims else None
    info: dict[str, Any] = {
        "kind": "lora",
        "path": str(path),
        "format": _format_name(entries.values()) if entries else "unknown",
        "ranks": sorted(ranks),
        "targets": [c for c in (UNET, TEXT) if counts[c]],
        "unet_modules": counts[UNET],
        "text_encoder_modules": counts[TEXT],
        "count": counts[UNET] + counts[TEXT],
        "tensors": len(shapes),
        "base": base,
    }
    if unknown or sdxl:
        info["unknown_keys"] = len(unknown) + len(sdxl)
    return info
