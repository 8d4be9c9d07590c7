"""Key conversion of SD1.5 LDM checkpoints to the diffusers/transformers layout (diffusers' own helpers),
each model's config inferred from the converted shapes; and old diffusers VAE keys made current.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.weights.ldm_layout import (
    CLIP_PREFIX,
    EMA_PREFIX,
    NOT_SD15,
    UNET_PREFIX,
    Shapes,
    classify,
    indices,
    strip_prefix,
    text_config,
    unet_config,
    unet_layout,
    vae_config,
    vae_prefix,
)

if TYPE_CHECKING:
    import torch

# ---------------------------------------------------------------------------------------------
# Key conversion (diffusers' helpers)


def _check_family(shapes: Shapes, source: str) -> None:
    kind, description = classify(shapes)
    if kind == "sdxl":  # SDXL renders from diffusers folders; its single files are not converted yet
        raise UserError(f"{source}: {description}; SDXL single files are not supported yet: use a diffusers folder")
    if kind == "sd2":
        raise UserError(f"{source}: {description}, {NOT_SD15}")
    if kind == "vae":
        raise UserError(f"{source}: holds only a VAE ({description}); pass it with --vae")
    if kind != "sd15":
        raise UserError(f"{source}: not an SD1.5 single-file checkpoint (no {UNET_PREFIX}* U-Net keys)")


def _drop_missing(state: dict[str, Any]) -> dict[str, Any]:
    """diffusers' converters ``.get()`` keys, so an absent one arrives as None: let strict loading report it."""
    return {k: v for k, v in state.items() if v is not None}


def _convert_unet(state: Mapping[str, torch.Tensor], source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    _, per_block = unet_layout(strip_prefix(state, UNET_PREFIX), source)
    ema = sum(k.startswith(EMA_PREFIX) for k in state) > 100
    if ema:
        notice(f"{source}: holds EMA and training weights; using the EMA weights")
    converted = _drop_missing(convert_ldm_unet_checkpoint(state, {"layers_per_block": per_block}, extract_ema=ema))
    return unet_config({k: tuple(v.shape) for k, v in converted.items()}, source), converted


def convert_vae(state: Mapping[str, torch.Tensor], source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    prefix = vae_prefix(state.keys())
    if prefix is None:
        raise UserError(f"{source}: has no VAE (first_stage_model.* keys)")
    if prefix == "":  # diffusers' helper keeps every key of a bare file: pass it only the VAE's own
        state = {k: v for k, v in state.items() if k.split(".")[0] in ("encoder", "decoder") or "quant_conv" in k}
    levels = len(indices(state, rf"{re.escape(prefix)}encoder\.down\.(\d+)\."))
    layout = {"down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels}
    converted = _drop_missing(convert_ldm_vae_checkpoint(state, layout))
    return vae_config({k: tuple(v.shape) for k, v in converted.items()}, source), converted


def _convert_text(state: Mapping[str, torch.Tensor], source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    if not any(k.startswith(CLIP_PREFIX) for k in state):
        raise UserError(f"{source}: has no CLIP text encoder ({CLIP_PREFIX}* keys)")
    clip = {k: v for k, v in state.items() if k.startswith(CLIP_PREFIX)}
    converted = {}
    for key, tensor in convert_ldm_clip_checkpoint(clip).items():
        key = key.removeprefix("text_model.")  # some files omit it; models differ by transformers version
        if key != "embeddings.position_ids":  # a constant buffer, saved by old transformers versions
            converted[key] = tensor
    return text_config({k: tuple(v.shape) for k, v in converted.items()}, source), converted


def convert_ldm_checkpoint(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict[str, Any]:
    """Rename an SD1.5 LDM state dict to diffusers/transformers keys and infer each model's config.

    Returns ``{"unet": (config, state), "vae": (config, state), "text_encoder": (config, state)}``;
    the text encoder's keys have no ``text_model.`` prefix. Works on ``meta`` tensors too (shapes only).
    """
    _check_family({k: tuple(v.shape) for k, v in state_dict.items()}, source)
    parts = {
        "unet": _convert_unet(state_dict, source),
        "vae": convert_vae(state_dict, source),
        "text_encoder": _convert_text(state_dict, source),
    }
    cross, hidden = parts["unet"][0]["cross_attention_dim"], parts["text_encoder"][0]["hidden_size"]
    if cross != hidden:
        raise UserError(f"{source}: the text encoder is {hidden} wide but the U-Net attends to {cross}")
    return parts


# ---------------------------------------------------------------------------------------------
# Old diffusers VAE files

_OLD_ATTENTION = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}


def modern_vae_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old diffusers VAE files name the mid-block attention ``query/key/value/proj_attn``."""
    out = {}
    for key, tensor in state.items():
        if ".mid_block.attentions." in key:
            head, _, leaf = key.rpartition(".attentions.0.")
            for old, new in _OLD_ATTENTION.items():
                if leaf.startswith(old):
                    key = f"{head}.attentions.0.{new}{leaf[len(old) :]}"
                    tensor = tensor.flatten(1) if tensor.ndim > 2 else tensor
                    break
        out[key] = tensor
    return out
