"""Test helper: diffusers/transformers state dicts -> the original (LDM) single-file key layout.

Written from the two layouts' module structure (the reverse of what ``videodiff.weights.single_file``
does with diffusers' converters), so tests can make community-style single files from tiny
random models, and full-size key/shape sets on the ``meta`` device. Tests only.
"""

from __future__ import annotations

import re

import torch

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP = "cond_stage_model.transformer."

_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's added projection (pooled text and size ids)
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_first(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise KeyError(rest)


def unet_key(key: str, layers_per_block: int, attention_up_blocks: set[int]) -> str:
    """One diffusers ``UNet2DConditionModel`` key in LDM ``UNetModel`` naming (no prefix)."""
    n = layers_per_block + 1
    head, _, param = key.rpartition(".")
    if head in _UNET_TOP:
        return f"{_UNET_TOP[head]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * n + layer
        if kind == "resnets":
            return f"input_blocks.{index}.0.{_rename_first(rest, _UNET_RESNET)}"
        return f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename_first(m[2], _UNET_RESNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * n + layer
        if kind == "resnets":
            return f"output_blocks.{index}.0.{_rename_first(rest, _UNET_RESNET)}"
        return f"output_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        slot = 2 if block in attention_up_blocks else 1
        return f"output_blocks.{block * n + layers_per_block}.{slot}.conv.{m[2]}"
    raise KeyError(key)


def unet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int, prefix: str = UNET) -> dict:
    attention_up = {int(k.split(".")[1]) for k in state if re.match(r"up_blocks\.\d+\.attentions\.", k)}
    return {prefix + unet_key(k, layers_per_block, attention_up): v for k, v in state.items()}


def vae_key(key: str, levels: int) -> str:
    """One diffusers ``AutoencoderKL`` key in LDM ``AutoencoderKL`` naming (no prefix)."""
    resnet = {"conv_shortcut": "nin_shortcut", "norm1": "norm1", "norm2": "norm2", "conv1": "conv1", "conv2": "conv2"}
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
        return f"{m[1]}.norm_out.{m[2]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_rename_first(m[3], resnet)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{_rename_first(m[3], resnet)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename_first(m[3], resnet)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_rename_first(m[2], _VAE_ATTENTION)}"
    if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out)\.(weight|bias)|(post_)?quant_conv\.(weight|bias)", key):
        return key
    raise KeyError(key)


def vae_to_ldm(state: dict[str, torch.Tensor], prefix: str = VAE) -> dict:
    """LDM keeps the VAE's mid-block attention projections as 1x1 convolutions."""
    levels = len({k.split(".")[2] for k in state if k.startswith("encoder.down_blocks.")})
    out = {}
    for key, tensor in state.items():
        new = vae_key(key, levels)
        if ".mid.attn_1." in new and new.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]
        out[prefix + new] = tensor
    return out


def text_to_ldm(state: dict[str, torch.Tensor], with_text_model: bool = True, prefix: str = CLIP) -> dict:
    """``cond_stage_model.transformer.text_model.*`` (or without ``text_model.``, as some files have)."""
    inner = "text_model." if with_text_model else ""
    return {prefix + inner + k.removeprefix("text_model."): v for k, v in state.items()}


def to_ldm(unet, vae, text_encoder, *, with_text_model: bool = True) -> dict[str, torch.Tensor]:
    """A whole single-file state dict from diffusers/transformers models (or their state dicts)."""

    def sd(m):
        return m if isinstance(m, dict) else m.state_dict()

    u, v, t = sd(unet), sd(vae), sd(text_encoder)
    per_block = len({k.split(".")[3] for k in u if k.startswith("down_blocks.0.resnets.")})
    return {
        **unet_to_ldm(u, per_block),
        **vae_to_ldm(v),
        **text_to_ldm(t, with_text_model),
    }


# --- SDXL (original SGM layout) ----------------------------------------------------------------------------------

CLIP_L = "conditioner.embedders.0.transformer."  # CLIP ViT-L, transformers names under text_model.
OPEN_CLIP = "conditioner.embedders.1.model."  # OpenCLIP ViT-bigG, OpenCLIP names
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str = OPEN_CLIP) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` state dict in OpenCLIP naming: q, k, v fused into ``in_proj`` (in that
    order), the embeddings, final norm and projection (OpenCLIP's is ``width x projection``: the transpose)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        key = key.removeprefix("text_model.")
        if key == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = tensor
        elif key == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = tensor
        elif key.startswith("final_layer_norm."):
            out[prefix + "ln_final." + key.rpartition(".")[2]] = tensor
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T.contiguous()
        elif key == "embeddings.position_ids":
            continue
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            fused.setdefault(f"{m[1]}.{m[3]}", {})[m[2]] = tensor
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key):
            out[f"{prefix}transformer.resblocks.{m[1]}.{_rename_first(m[2], _OPEN_CLIP_LAYER)}"] = tensor
        else:
            raise KeyError(key)
    for name, qkv in fused.items():
        layer, param = name.split(".")
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat([qkv[c] for c in "qkv"])
    return out


def sdxl_to_ldm(unet, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """A whole SDXL single-file state dict (SGM layout) from diffusers/transformers models (or state dicts)."""

    def sd(m):
        return m if isinstance(m, dict) else m.state_dict()

    u = sd(unet)
    per_block = len({k.split(".")[3] for k in u if k.startswith("down_blocks.0.resnets.")})
    return {
        **unet_to_ldm(u, per_block),
        **vae_to_ldm(sd(vae)),
        **text_to_ldm(sd(text_encoder), prefix=CLIP_L),
        **open_clip_to_ldm(sd(text_encoder_2)),
    }
