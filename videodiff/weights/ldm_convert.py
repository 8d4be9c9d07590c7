"""Key conversion of SD1.5 and SDXL LDM checkpoints to the diffusers/transformers layout (diffusers' own helpers),
each model's config inferred from the converted shapes; and old diffusers VAE keys made current.

An SDXL file (original SGM layout) holds the U-Net under ``model.diffusion_model.`` (its added projection as
``label_emb.0``), the VAE under ``first_stage_model.``, CLIP ViT-L under ``conditioner.embedders.0.transformer.``
(transformers names) and OpenCLIP ViT-bigG under ``conditioner.embedders.1.model.`` (OpenCLIP names: fused q|k|v,
``text_projection`` transposed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.weights.ldm_layout import (
    CLIP_PREFIX,
    EMA_PREFIX,
    NOT_SD15,
    REFINER_PREFIX,
    SDXL_CLIP_PREFIX,
    SDXL_OPEN_CLIP_PREFIX,
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


def _is_refiner(shapes: Shapes) -> bool:
    return any(k.startswith(REFINER_PREFIX) for k in shapes) and not any(k.startswith(SDXL_CLIP_PREFIX) for k in shapes)


def _check_family(shapes: Shapes, source: str) -> str:
    """``sd15`` or ``sdxl``, the family of a file that can be converted; anything else is refused in one line."""
    kind, description = classify(shapes)
    if kind == "sdxl":
        if _is_refiner(shapes):
            raise UserError(f"{source}: {description}; the SDXL refiner is not supported: use an SDXL base model")
        if not any(k.startswith(UNET_PREFIX) for k in shapes):
            raise UserError(f"{source}: {description} without a U-Net (no {UNET_PREFIX}* keys)")
        return "sdxl"
    if kind == "sd2":
        raise UserError(f"{source}: {description}, {NOT_SD15}")
    if kind == "vae":
        raise UserError(f"{source}: holds only a VAE ({description}); pass it with --vae")
    if kind != "sd15":
        raise UserError(f"{source}: not an SD1.5 or SDXL single-file checkpoint (no {UNET_PREFIX}* U-Net keys)")
    return "sd15"


def _drop_missing(state: dict[str, Any]) -> dict[str, Any]:
    """diffusers' converters ``.get()`` keys, so an absent one arrives as None: let strict loading report it."""
    return {k: v for k, v in state.items() if v is not None}


def _convert_unet(
    state: Mapping[str, torch.Tensor], source: str, family: str = "sd15"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    _, per_block = unet_layout(strip_prefix(state, UNET_PREFIX), source)
    ema = sum(k.startswith(EMA_PREFIX) for k in state) > 100
    if ema:
        notice(f"{source}: holds EMA and training weights; using the EMA weights")
    layout: dict[str, Any] = {"layers_per_block": per_block}
    if family == "sdxl":  # the helper then renames label_emb.0 to add_embedding
        layout["addition_embed_type"] = "text_time"
    try:
        converted = _drop_missing(convert_ldm_unet_checkpoint(state, layout, extract_ema=ema))
    except KeyError as exc:  # the helper indexes label_emb.0.* directly
        raise UserError(f"{source}: keys do not match the model: missing {UNET_PREFIX}{exc.args[0]}") from None
    return unet_config({k: tuple(v.shape) for k, v in converted.items()}, source, family), converted


def convert_vae(
    state: Mapping[str, torch.Tensor], source: str, family: str = "sd15"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    prefix = vae_prefix(state.keys())
    if prefix is None:
        raise UserError(f"{source}: has no VAE (first_stage_model.* keys)")
    if prefix == "":  # diffusers' helper keeps every key of a bare file: pass it only the VAE's own
        state = {k: v for k, v in state.items() if k.split(".")[0] in ("encoder", "decoder") or "quant_conv" in k}
    levels = len(indices(state, rf"{re.escape(prefix)}encoder\.down\.(\d+)\."))
    layout = {"down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels}
    converted = _drop_missing(convert_ldm_vae_checkpoint(state, layout))
    return vae_config({k: tuple(v.shape) for k, v in converted.items()}, source, family), converted


def _convert_text(
    state: Mapping[str, torch.Tensor], source: str, prefix: str = CLIP_PREFIX, family: str = "sd15"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    if not any(k.startswith(prefix) for k in state):
        raise UserError(f"{source}: has no CLIP text encoder ({prefix}* keys)")
    clip = {k: v for k, v in state.items() if k.startswith(prefix)}
    converted = {}
    for key, tensor in convert_ldm_clip_checkpoint(clip, remove_prefix=prefix).items():
        key = key.removeprefix("text_model.")  # some files omit it; models differ by transformers version
        if key != "embeddings.position_ids":  # a constant buffer, saved by old transformers versions
            converted[key] = tensor
    return text_config({k: tuple(v.shape) for k, v in converted.items()}, source, family=family), converted


def _convert_open_clip(state: Mapping[str, torch.Tensor], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """SDXL's second text encoder: OpenCLIP keys to a ``CLIPTextModelWithProjection``'s (without ``text_model.``)."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    prefix = SDXL_OPEN_CLIP_PREFIX
    open_clip = {k: v for k, v in state.items() if k.startswith(prefix)}
    embedding = open_clip.get(f"{prefix}token_embedding.weight")
    if embedding is None:
        raise UserError(f"{source}: has no OpenCLIP text encoder ({prefix}token_embedding.weight)")
    if f"{prefix}text_projection" not in open_clip:  # the pooled text's width: needed before strict loading
        raise UserError(f"{source}: keys do not match the model: missing {prefix}text_projection")
    # the helper splits the fused q|k|v by text_projection's rows (the width), else by this model's width
    width = SimpleNamespace(config=SimpleNamespace(hidden_size=int(embedding.shape[1])))
    converted = convert_open_clip_checkpoint(width, open_clip, prefix)
    converted = _drop_missing({k.removeprefix("text_model."): v for k, v in converted.items()})
    shapes = {k: tuple(v.shape) for k, v in converted.items()}
    return text_config(shapes, source, "text_encoder_2", "sdxl"), converted


def _convert_sdxl(state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    parts = {
        "unet": _convert_unet(state, source, "sdxl"),
        "vae": convert_vae(state, source, "sdxl"),
        "text_encoder": _convert_text(state, source, SDXL_CLIP_PREFIX, "sdxl"),
        "text_encoder_2": _convert_open_clip(state, source),
    }
    unet, first, second = parts["unet"][0], parts["text_encoder"][0], parts["text_encoder_2"][0]
    widths = first["hidden_size"] + second["hidden_size"]
    if unet["cross_attention_dim"] != widths:
        raise UserError(
            f"{source}: the text encoders are {first['hidden_size']} + {second['hidden_size']} wide "
            f"but the U-Net attends to {unet['cross_attention_dim']}"
        )
    size_ids = unet["projection_class_embeddings_input_dim"] - second["projection_dim"]  # pooled text + 6 size ids
    if size_ids <= 0 or size_ids % 6:
        raise UserError(
            f"{source}: the U-Net's added projection takes {unet['projection_class_embeddings_input_dim']} values, "
            f"not the pooled text ({second['projection_dim']}) plus six size ids"
        )
    unet["addition_time_embed_dim"] = size_ids // 6
    return parts


def convert_ldm_checkpoint(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict[str, Any]:
    """Rename an SD1.5 or SDXL LDM state dict to diffusers/transformers keys and infer each model's config.

    Returns ``{"unet": (config, state), "vae": (config, state), "text_encoder": (config, state)}``, for SDXL
    also ``"text_encoder_2"``; the text encoders' keys have no ``text_model.`` prefix. Works on ``meta`` tensors
    too (shapes only).
    """
    if _check_family({k: tuple(v.shape) for k, v in state_dict.items()}, source) == "sdxl":
        return _convert_sdxl(state_dict, source)
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
