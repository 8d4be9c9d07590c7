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

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.weights.checkpoints import read_state_dict
from videodiff.weights.lora_pairs import (
    TEXT,
    TEXT2,
    UNET,
    LoraEntry,
    component_of,
    format_name,
    lora_factor,
    parse_lora_keys,
    peft_configs,
    unsupported_kind,
)
from videodiff.weights.safetensors_header import read_header

# Files looked for when a LoRA is given as a folder.
LORA_FILE_NAMES = (
    "pytorch_lora_weights.safetensors",
    "adapter_model.safetensors",
    "pytorch_lora_weights.bin",
    "adapter_model.bin",
)
_COMPONENT_WORDS = {UNET: "U-Net", TEXT: "text encoder", TEXT2: "second text encoder"}
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
            if kind in (TEXT, TEXT2):  # transformers 4.x names CLIPTextModel's modules text_model.*, 5.x does not
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

    def resolve(self, entry: LoraEntry) -> tuple[str | None, bool]:
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


@dataclass
class _Patch:
    component: str
    name: str
    module: nn.Module
    down: torch.Tensor
    up: torch.Tensor
    factor: float


def _check_shapes(path: Path, entry: LoraEntry, name: str, module: nn.Module, down, up) -> None:
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


def _plan(path: Path, state: dict, unet, text_encoder, text_encoder_2=None) -> tuple[str, list[_Patch]]:
    entries, unknown, sdxl = parse_lora_keys(list(state))
    if sdxl and text_encoder_2 is None:
        raise UserError(f"{path}: an SDXL LoRA (e.g. key {sdxl[0]}); this model is SD1.5-family")
    for key in unknown:
        kind = unsupported_kind(key)
        if kind:
            raise UserError(f"{path}: {kind} file (key {key}); only plain LoRA (down/up pairs) is supported")
    if unknown:
        raise UserError(f"{path}: {len(unknown)} keys are not LoRA keys videodiff knows (e.g. {unknown[0]})")
    if not entries:
        raise UserError(f"{path}: holds no LoRA weights")
    indexes = {UNET: _Index(unet, UNET), TEXT: _Index(text_encoder, TEXT), TEXT2: _Index(text_encoder_2, TEXT2)}
    configs = peft_configs(path) if any(e.style == "dotted" for e in entries.values()) else {}
    fmt = format_name(entries.values())
    patches: list[_Patch] = []
    unmatched: list[str] = []
    used_ldm = False
    for entry in entries.values():
        sample = next(iter(entry.keys.values()))
        component = component_of(entry)
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
        config = configs.get(component) or configs.get(None)
        factor = lora_factor(path, entry, state, down.shape[0], config, name)
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


def apply_lora(unet, text_encoder, path: str | Path, scale: float = 1.0, text_encoder_2=None) -> LoraReport:
    """Merge the LoRA at ``path`` (a file, or a folder holding one) into ``unet`` and ``text_encoder`` (and SDXL's
    ``text_encoder_2``: kohya's ``lora_te1_``/``lora_te2_``, PEFT's ``text_encoder_2.``) in place.

    Checks every key and shape before changing anything; raises :class:`UserError` if the
    file does not fit this model.
    """
    path = _lora_file(Path(path).expanduser())
    scale = float(scale)
    if not math.isfinite(scale):
        raise UserError(f"{path}: LoRA scale must be a finite number, got {scale}")
    state = read_state_dict(path)
    fmt, patches = _plan(path, state, unet, text_encoder, text_encoder_2)
    for patch in patches:
        _merge(patch, scale)
    report = LoraReport(
        path=str(path),
        format=fmt,
        scale=scale,
        unet_modules=sum(p.component == UNET for p in patches),
        text_encoder_modules=sum(p.component in (TEXT, TEXT2) for p in patches),
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
    entries, unknown, sdxl = parse_lora_keys(list(shapes))
    counts = {UNET: 0, TEXT: 0}
    ranks: set[int] = set()
    text_dims: set[int] = set()
    cross_dims: set[int] = set()
    for entry in entries.values():
        component = component_of(entry)
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
        "format": format_name(entries.values()) if entries else "unknown",
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
