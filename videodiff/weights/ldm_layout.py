"""What an SD checkpoint's keys and tensor shapes say, with no tensor read: the family and kind of a file
(SD1.5, SD2.x, SDXL, a standalone VAE) and each model's config (SD1.5's shipped config, changed where the
shapes say otherwise). Works on shapes alone, so it imports no torch.

Also the shipped SD1.5 and SDXL configs and CLIP tokenizers (``videodiff/assets/sd15``, ``videodiff/assets/sdxl``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from videodiff.errors import UserError

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "sd15"
SDXL_ASSETS = ASSETS.parent / "sdxl"  # its tokenizers read sd15's BPE files (the same CLIP vocabulary)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD2.x (OpenCLIP ViT-H text encoder)
SDXL_PREFIX = "conditioner.embedders."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."  # CLIP ViT-L (transformers names)
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."  # OpenCLIP ViT-bigG (OpenCLIP names)
REFINER_PREFIX = "conditioner.embedders.0.model."  # the SDXL refiner: OpenCLIP only, no CLIP ViT-L
EMA_PREFIX = "model_ema."

NOT_SD15 = "not an SD1.5-family checkpoint; videodiff supports Stable Diffusion 1.x and SDXL models"

Shapes = Mapping[str, Sequence[int]]


# ---------------------------------------------------------------------------------------------
# Shipped configs


def shipped_config(part: str, family: str = "sd15") -> dict[str, Any]:
    """The SD1.5 (or ``family="sdxl"``: SDXL base 1.0) config of ``part`` (``unet``, ``vae``, ``text_encoder``,
    ``scheduler``; SDXL also ``text_encoder_2``), a fresh dict."""
    name = "scheduler_config.json" if part == "scheduler" else "config.json"
    return json.loads(((SDXL_ASSETS if family == "sdxl" else ASSETS) / part / name).read_text(encoding="utf-8"))


def shipped_tokenizer(name: str = "tokenizer", family: str = "sd15"):
    """The CLIP tokenizer (ViT-L/14 BPE, 49,408 tokens), read from the package: no network. SDXL's ``tokenizer``
    and ``tokenizer_2`` (which pads with ``!``) have their own settings over the same vocabulary."""
    from transformers import CLIPTokenizer

    if family != "sdxl":
        return CLIPTokenizer.from_pretrained(str(ASSETS / "tokenizer"), local_files_only=True)
    bpe = ASSETS / "tokenizer"
    return CLIPTokenizer.from_pretrained(
        str(SDXL_ASSETS / name),
        vocab_file=str(bpe / "vocab.json"),
        merges_file=str(bpe / "merges.txt"),
        local_files_only=True,
    )


# ---------------------------------------------------------------------------------------------
# Recognising checkpoints


def is_ldm_checkpoint(state_dict: Mapping[str, Any]) -> bool:
    """True for an original-layout (LDM) Stable Diffusion checkpoint: U-Net keys under ``model.diffusion_model.``.

    This is about the key layout, not the family: SD2.x and SDXL files are LDM checkpoints too
    (:func:`videodiff.weights.single_file.load_single_file` then says they are not SD1.5-family).
    """
    return any(k.startswith(UNET_PREFIX) for k in state_dict)


def strip_prefix(shapes: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}


def indices(keys, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) at the start of ``keys``."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def vae_prefix(keys) -> str | None:
    """The prefix of an LDM-layout VAE inside ``keys`` (``''`` for a bare VAE file), or None."""
    for prefix in (*VAE_PREFIXES, ""):
        if f"{prefix}encoder.conv_in.weight" in keys and any(k.startswith(f"{prefix}encoder.down.") for k in keys):
            return prefix
    return None


def is_diffusers_vae(keys) -> bool:
    return "encoder.conv_in.weight" in keys and any(k.startswith("encoder.down_blocks.") for k in keys)


def cross_attention_dim(unet: Shapes) -> int | None:
    for key, shape in unet.items():
        if key.endswith("attn2.to_k.weight"):
            return int(shape[1])
    return None


def classify(shapes: Shapes) -> tuple[str, str]:
    """``(kind, description)``: kind is ``sd15``, ``sd2``, ``sdxl``, ``vae`` or ``unknown``."""
    keys = shapes.keys()
    if any(k.startswith(REFINER_PREFIX) for k in keys) and not any(k.startswith(SDXL_CLIP_PREFIX) for k in keys):
        return "sdxl", f"SDXL refiner checkpoint (OpenCLIP only, {REFINER_PREFIX}*)"
    if any(k.startswith(SDXL_PREFIX) for k in keys):
        return "sdxl", "SDXL checkpoint (conditioner.embedders.*)"
    unet = strip_prefix(shapes, UNET_PREFIX)
    if unet:
        if any(k.startswith(OPEN_CLIP_PREFIX) for k in keys):
            return "sd2", "SD2.x checkpoint (OpenCLIP text encoder, cond_stage_model.model.*)"
        cross = cross_attention_dim(unet)
        if any(k.startswith("label_emb.") for k in unet) or cross == 2048:
            return "sdxl", "SDXL-style U-Net (label embeddings / 2048-wide cross-attention)"
        if cross == 1024:
            return "sd2", "SD2.x-style U-Net (1024-wide cross-attention)"
        return "sd15", "SD1.5-family single-file checkpoint (LDM layout)"
    if vae_prefix(keys) is not None:
        return "vae", "standalone VAE (LDM layout)"
    if is_diffusers_vae(keys):
        return "vae", "standalone VAE (diffusers layout)"
    return "unknown", "not a recognised Stable Diffusion checkpoint"


# ---------------------------------------------------------------------------------------------
# Config inference from tensor shapes (diffusers key layout)


def unet_layout(ldm_unet: Shapes, source: str) -> tuple[int, int]:
    """``(levels, layers_per_block)`` of an LDM U-Net, from its block counts."""
    inputs = indices(ldm_unet, r"input_blocks\.(\d+)\.")
    outputs = indices(ldm_unet, r"output_blocks\.(\d+)\.")
    downs = [i for i in inputs if f"input_blocks.{i}.0.op.weight" in ldm_unet]
    levels = len(downs) + 1
    if not inputs or not outputs or len(outputs) % levels:
        raise UserError(f"{source}: unexpected U-Net layout ({len(inputs)} input / {len(outputs)} output blocks)")
    per_block = len(outputs) // levels - 1
    if per_block < 1 or len(inputs) != 1 + levels * per_block + (levels - 1):
        raise UserError(f"{source}: unexpected U-Net layout ({len(inputs)} input / {len(outputs)} output blocks)")
    return levels, per_block


def _set(config: dict[str, Any], key: str, value: Any, default: Any = None) -> None:
    """Set ``key`` where it changes the model: keep configs minimal so SD1.5 gives the shipped one."""
    current = config.get(key)
    if value != (default if current is None else current):
        config[key] = value


def sdxl_heads(width: int) -> int:
    """SDXL's attention heads at ``width`` channels: 64 wide (5, 10, 20 heads for 320, 640, 1280), else 8 wide."""
    return width // 64 if width % 64 == 0 else max(1, width // 8)


def unet_config(unet: Shapes, source: str, family: str = "sd15") -> dict[str, Any]:
    """The U-Net config: SD1.5's (or SDXL base's), with what the tensor shapes determine put in.

    SDXL's head counts are not in the weights: its attention uses 64-wide heads (5, 10, 20 heads for 320, 640,
    1280 channels); widths that are not a multiple of 64 (small test models) are taken to use 8-wide heads.
    Its added projection's input width (``projection_class_embeddings_input_dim``) is set here; the size-id
    width (``addition_time_embed_dim``) needs the pooled text's width too (:mod:`videodiff.weights.ldm_sdxl`).
    """
    config = shipped_config("unet", family)
    try:
        out_ch, in_ch = (int(x) for x in unet["conv_in.weight"][:2])
        levels = indices(unet, r"down_blocks\.(\d+)\.")
        channels = [int(unet[f"down_blocks.{b}.resnets.0.conv2.weight"][0]) for b in levels]
        per_block = len(indices(unet, r"down_blocks\.0\.resnets\.(\d+)\."))
        out_channels = int(unet["conv_out.weight"][0])
        time_dim = int(unet["time_embedding.linear_1.weight"][0])
    except KeyError as exc:
        raise UserError(f"{source}: incomplete U-Net (no {exc.args[0]})") from None
    if in_ch == 9:
        raise UserError(f"{source}: inpainting checkpoints are not supported (the U-Net takes 9 input channels)")
    if in_ch != 4:
        raise UserError(f"{source}: U-Nets with {in_ch} input channels are not supported (text-to-image has 4)")
    attention = [any(k.startswith(f"down_blocks.{b}.attentions.") for k in unet) for b in levels]
    up_attention = [any(k.startswith(f"up_blocks.{b}.attentions.") for k in unet) for b in levels]
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attention]
    config.update(
        in_channels=in_ch,
        out_channels=out_channels,
        block_out_channels=channels,
        layers_per_block=per_block,
        down_block_types=down,
        up_block_types=up,
    )
    cross = cross_attention_dim(unet)
    if cross is not None:
        config["cross_attention_dim"] = cross
    if channels and channels[0] != out_ch:
        raise UserError(f"{source}: unexpected U-Net layout (conv_in gives {out_ch} channels, block 0 {channels[0]})")
    _set(config, "time_embedding_dim", time_dim, 4 * channels[0])
    if not any(k.startswith("mid_block.attentions.") for k in unet):
        _set(config, "mid_block_type", "UNetMidBlock2D", "UNetMidBlock2DCrossAttn")
    depths = [len(indices(unet, rf"down_blocks\.{b}\.attentions\.0\.transformer_blocks\.(\d+)\.")) for b in levels]
    if family == "sdxl":
        config["transformer_layers_per_block"] = [max(1, d) for d in depths]  # one per level, attention or not
        config["attention_head_dim"] = [sdxl_heads(c) for c in channels]
        if "add_embedding.linear_1.weight" in unet:
            config["projection_class_embeddings_input_dim"] = int(unet["add_embedding.linear_1.weight"][1])
    depths = [d for d in depths if d]
    if family != "sdxl" and depths and set(depths) != {1}:
        config["transformer_layers_per_block"] = depths[0] if len(set(depths)) == 1 else depths
    proj = next((s for k, s in unet.items() if k.endswith(".proj_in.weight")), None)
    _set(config, "use_linear_projection", proj is not None and len(proj) == 2, False)
    return config


def vae_config(vae: Shapes, source: str, family: str = "sd15") -> dict[str, Any]:
    """The VAE config: SD1.5's (or SDXL base's), with channels, depth and latent size taken from the shapes."""
    config = shipped_config("vae", family)
    try:
        levels = indices(vae, r"encoder\.down_blocks\.(\d+)\.")
        config.update(
            in_channels=int(vae["encoder.conv_in.weight"][1]),
            out_channels=int(vae["decoder.conv_out.weight"][0]),
            latent_channels=int(vae["decoder.conv_in.weight"][1]),
            block_out_channels=[int(vae[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"][0]) for i in levels],
            layers_per_block=len(indices(vae, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")),
            down_block_types=["DownEncoderBlock2D"] * len(levels),
            up_block_types=["UpDecoderBlock2D"] * len(levels),
        )
    except KeyError as exc:
        raise UserError(f"{source}: incomplete VAE (no {exc.args[0]})") from None
    _set(config, "mid_block_add_attention", any(k.startswith("encoder.mid_block.attentions.") for k in vae), True)
    _set(config, "use_quant_conv", "quant_conv.weight" in vae, True)
    _set(config, "use_post_quant_conv", "post_quant_conv.weight" in vae, True)
    return config


def text_config(text: Shapes, source: str, part: str = "text_encoder", family: str = "sd15") -> dict[str, Any]:
    """The CLIP text config (keys without ``text_model.``): widths and depth from the shapes.

    The head count is not in the weights: CLIP's text encoders use 64-wide heads (ViT-L/14:
    768 / 64 = 12); widths that are not a multiple of 64 (small test models, as
    :func:`videodiff.tiny.build_tiny_model` builds them) are taken to use 8-wide heads. ``part`` and ``family``
    name the shipped config to start from (SDXL's ``text_encoder_2`` has a projection: its width is read too).
    """
    config = shipped_config(part, family)
    shipped_width = config["hidden_size"]
    try:
        vocab, hidden = (int(x) for x in text["embeddings.token_embedding.weight"])
        config.update(
            vocab_size=vocab,
            hidden_size=hidden,
            max_position_embeddings=int(text["embeddings.position_embedding.weight"][0]),
            num_hidden_layers=len(indices(text, r"encoder\.layers\.(\d+)\.")),
            intermediate_size=int(text["encoder.layers.0.mlp.fc1.weight"][0]),
            num_attention_heads=hidden // 64 if hidden % 64 == 0 else max(1, hidden // 8),
        )
    except KeyError as exc:
        raise UserError(f"{source}: incomplete text encoder (no {exc.args[0]})") from None
    if "text_projection.weight" in text:
        config["projection_dim"] = int(text["text_projection.weight"][0])
    elif hidden != shipped_width:
        config["projection_dim"] = hidden
    return config


# ---------------------------------------------------------------------------------------------
# The memory estimate of a single file (its header: no tensor read)


def sdxl_file_architecture(path: Path):
    """What :func:`videodiff.heap.estimate` reads of an SDXL single ``.safetensors`` file, from its header and the
    shipped SDXL configs (what :func:`videodiff.weights.single_file.load_single_file` will build), with
    ``parameters`` left at 0 for the caller; ``None`` for any other file or one whose header cannot be read."""
    from videodiff.heap import Architecture
    from videodiff.weights.safetensors_header import read_header

    if path.suffix.lower() != ".safetensors":
        return None
    try:
        shapes = read_header(path).shapes
    except UserError:
        return None
    if classify(shapes)[0] != "sdxl" or not any(k.startswith(SDXL_CLIP_PREFIX) for k in shapes):
        return None
    unet, vae = strip_prefix(shapes, UNET_PREFIX), strip_prefix(shapes, VAE_PREFIXES[0])
    try:
        levels, per_block = unet_layout(unet, str(path))
        first = [1 + level * (per_block + 1) for level in range(levels)]  # each level's first input block
        channels = [int(unet[f"input_blocks.{i}.0.out_layers.3.weight"][0]) for i in first]
        vae_levels = indices(vae, r"encoder\.down\.(\d+)\.")
        vae_channels = [int(vae[f"encoder.down.{i}.block.0.conv2.weight"][0]) for i in vae_levels]
    except (UserError, KeyError, IndexError, TypeError, ValueError):
        return None
    if not vae_channels:
        return None
    level = next((n for n, i in enumerate(first) if any(k.startswith(f"input_blocks.{i}.1.") for k in unet)), None)
    scale = 2 ** (len(vae_channels) - 1)
    return Architecture(
        vae_scale=scale,
        vae_width=vae_channels[min(1, len(vae_channels) - 1)],
        vae_tile=int(shipped_config("vae", "sdxl")["sample_size"]),
        unet_width=channels[0],
        attention_level=level,
        attention_heads=sdxl_heads(channels[level]) if level is not None else 8,
        parameters=0,
        size=int(shipped_config("unet", "sdxl")["sample_size"]) * scale,
    )
