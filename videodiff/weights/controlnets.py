"""Loading ControlNets: diffusers ``ControlNetModel`` and ``SparseControlNetModel`` folders and hub ids, and single
files, detected by their keys:

- the original ControlNet layout (lllyasviel's ``control_v11p_sd15_*.pth`` / ``.safetensors``: LDM keys
  ``input_blocks``, ``middle_block``, ``zero_convs``, ``input_hint_block``, ``middle_block_out``, ``time_embed``,
  with or without ``control_model.`` in front; a whole-model file keeps only those), renamed by diffusers' own
  ``convert_controlnet_checkpoint``;
- a diffusers-layout ControlNet weights file on its own, SD1.5's or SDXL's (``add_embedding`` keys: most SDXL
  ControlNet files, e.g. diffusers/controlnet-canny-sdxl-1.0's weights); an SDXL ControlNet in the original layout
  (``label_emb`` keys) is refused in one line (:func:`check_family`);
- AnimateDiff v3's SparseCtrl files (``v3_sd15_sparsectrl_rgb.ckpt`` / ``_scribble.ckpt``): diffusers' key names
  outside the motion modules; inside them AnimateDiff's (``temporal_transformer``, ``attention_blocks.N``,
  ``norms.N``, ``ff_norm``, ``pos_encoder``), renamed here to diffusers' (``attnN+1``, ``normN+1``, ``norm3``,
  ``pos_embed``).

A file's model config comes from its tensor shapes (channels, depth, text width, conditioning channels and
embedding, motion-module length); what the weights cannot say is SD1.5's (8 attention heads; SparseCtrl's 8
motion heads; a conditioning mask concatenated to SparseCtrl's input, as both v3 files have), for an SDXL file the
U-Net's it steers (:func:`controlnet_config`). Pickles are read weights-only (as single-file models are: anything
else is refused in one line), and every model is loaded strictly. A ControlNet made for another family or channel
layout than the model it steers is refused in one line (:func:`check_fits` against the U-Net, naming both families).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from videodiff.errors import UserError
from videodiff.weights.checkpoints import quiet_loading_noise, read_state_dict
from videodiff.weights.hub import locate
from videodiff.weights.ldm_layout import Shapes, cross_attention_dim, indices
from videodiff.weights.safetensors_header import read_header
from videodiff.weights.single_file import _build as build_strict  # one strict, meta-device loader for every file
from videodiff.weights.single_file import _read as read_weights  # weights-only, its refusal in one line

__all__ = [
    "CONTROLNET_CLASSES",
    "check_family",
    "check_fits",
    "controlnet_config",
    "controlnet_kind",
    "describe_controlnet",
    "file_layout",
    "is_controlnet",
    "load_controlnet",
    "local_controlnet_kind",
    "sparsectrl_keys",
]

# diffusers' class name in a folder's config.json -> videodiff's name for the kind
CONTROLNET_CLASSES = {"ControlNetModel": "controlnet", "SparseControlNetModel": "sparsectrl"}
LDM_PREFIX = "control_model."  # ControlNet 1.0 files hold the whole model, the ControlNet under this prefix
LDM_MARKERS = ("input_hint_block.0.weight", "zero_convs.0.0.weight")
DIFFUSERS_MARKERS = ("controlnet_cond_embedding.conv_in.weight", "controlnet_down_blocks.0.weight")
SPARSE_EMBEDDINGS = ("controlnet_cond_embedding.weight", "controlnet_cond_embedding.conv_in.weight")
MOTION_LENGTH = 32  # SparseCtrl's positional encoding when a file leaves it out (AnimateDiff v3's length)
SDXL_TIME_ID_WIDTH = 256  # SDXL's addition_time_embed_dim, when no U-Net config says it


def controlnet_kind(folder: Path) -> str:
    """``controlnet`` or ``sparsectrl`` from a diffusers folder's ``config.json``; a one-line error for anything
    else."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"ControlNet {folder}: no readable config.json (a diffusers ControlNetModel folder)") from None
    name = config.get("_class_name") if isinstance(config, dict) else None
    if name not in CONTROLNET_CLASSES:
        raise UserError(f"ControlNet {folder}: config.json describes a {name or 'model of no class'}, not a ControlNet")
    return CONTROLNET_CLASSES[name]


# ---------------------------------------------------------------------------------------------
# Single files: layout, family and config from keys and shapes


def _without_prefix(shapes: Mapping[str, Any]) -> dict[str, Any]:
    """The ControlNet's own entries: those under ``control_model.`` when a file has any, else all of them."""
    if any(k.startswith(LDM_PREFIX) for k in shapes):
        return {k[len(LDM_PREFIX) :]: v for k, v in shapes.items() if k.startswith(LDM_PREFIX)}
    return dict(shapes)


def file_layout(keys) -> str | None:
    """``ldm`` (the original ControlNet layout), ``diffusers`` (a ControlNetModel's own keys), ``sparsectrl``
    (AnimateDiff's or diffusers' SparseCtrl keys) or ``None`` (not a ControlNet) from a file's keys."""
    own = _without_prefix(dict.fromkeys(keys))
    if any(k in own for k in SPARSE_EMBEDDINGS) and any(".motion_modules." in k for k in own):
        return "sparsectrl"
    if all(k in own for k in LDM_MARKERS):
        return "ldm"
    if all(k in own for k in DIFFUSERS_MARKERS):
        return "diffusers"
    return None


def is_controlnet(keys) -> bool:
    return file_layout(keys) is not None


def check_family(shapes: Shapes, source: str) -> None:
    """Refuse, before any model is built for it, a file this module cannot build: an SDXL ControlNet in the original
    layout (``label_emb`` keys: diffusers' converter reads SD1.5's only) or one with a class embedding. An SDXL
    ControlNet in diffusers' keys (``add_embedding``) loads (:func:`controlnet_config`)."""
    own = _without_prefix(shapes)
    if any(k.startswith("label_emb.") for k in own):
        raise UserError(
            f"ControlNet {source}: an SDXL ControlNet in the original layout (label_emb keys, "
            f"{cross_attention_dim(own) or 'unknown'}-wide text), which videodiff does not convert; give its "
            "diffusers version (a folder, a hub id or a .safetensors file in diffusers' keys)"
        )
    if any(k.startswith("class_embedding.") for k in own):
        raise UserError(f"ControlNet {source}: a class embedding, which no model videodiff renders has")


def _renamed_motion_key(key: str) -> str:
    """An AnimateDiff motion-module key in diffusers' words (the inverse of nothing here: the tests build files
    from the table in diffusers' ``scripts/convert_animatediff_sparsectrl_to_diffusers.py``)."""
    if ".motion_modules." not in key:
        return key
    key = key.replace(".temporal_transformer.", ".")
    key = re.sub(r"\.attention_blocks\.0\.pos_encoder\.", ".pos_embed.", key)
    key = re.sub(r"\.attention_blocks\.(\d+)\.", lambda m: f".attn{int(m[1]) + 1}.", key)
    key = re.sub(r"\.norms\.(\d+)\.", lambda m: f".norm{int(m[1]) + 1}.", key)
    return key.replace(".ff_norm.", ".norm3.")


def sparsectrl_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """A SparseCtrl state dict (or shapes) with AnimateDiff's motion-module names renamed to diffusers'; keys
    already in diffusers' words stay as they are."""
    return {_renamed_motion_key(k): v for k, v in state.items()}


def _ldm_to_diffusers(state: Mapping[str, Any]) -> dict[str, Any]:
    """The original layout renamed by diffusers' ``convert_controlnet_checkpoint`` (works on shapes too)."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    own = _without_prefix(state)
    inputs = indices(own, r"input_blocks\.(\d+)\.")
    levels = 1 + sum(f"input_blocks.{i}.0.op.weight" in own for i in inputs)
    per_block, rest = divmod(len(inputs) - 1 - (levels - 1), levels)
    if per_block < 1 or rest:
        raise UserError(f"ControlNet: unexpected layout ({len(inputs)} input blocks over {levels} levels)")
    converted = convert_controlnet_checkpoint(own, {"layers_per_block": per_block})
    return {k: v for k, v in converted.items() if v is not None}  # a key absent from the file: strict loading says


def _embedding_channels(shapes: Shapes) -> list[int]:
    """The conditioning embedding's channels: its first convolution's, then each downsampling block's."""
    blocks = indices(shapes, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    first = int(shapes["controlnet_cond_embedding.conv_in.weight"][0])
    return [first] + [int(shapes[f"controlnet_cond_embedding.blocks.{b}.weight"][0]) for b in blocks if b % 2]


def controlnet_config(
    shapes: Shapes, kind: str, source: str, unet_config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The diffusers config of a ControlNet (``kind`` ``controlnet``) or SparseCtrl (``sparsectrl``) from its
    tensors' shapes in diffusers' key names. An SDXL ControlNet (``add_embedding`` keys: pooled text and size ids in
    its time embedding) takes what its weights cannot say from ``unet_config``, the SDXL U-Net it steers (a
    ControlNet is made from its U-Net: the same attention heads and size-id width), else SDXL's (64-wide heads,
    256-wide size ids)."""
    try:
        levels = indices(shapes, r"down_blocks\.(\d+)\.")
        channels = [int(shapes[f"down_blocks.{b}.resnets.0.conv2.weight"][0]) for b in levels]
        config: dict[str, Any] = {
            "in_channels": int(shapes["conv_in.weight"][1]),
            "block_out_channels": channels,
            "layers_per_block": len(indices(shapes, r"down_blocks\.0\.resnets\.(\d+)\.")),
        }
        cross = [any(k.startswith(f"down_blocks.{b}.attentions.") for k in shapes) for b in levels]
        width = cross_attention_dim(shapes)
        if width is not None:
            config["cross_attention_dim"] = width
        depths = [
            len(indices(shapes, rf"down_blocks\.{b}\.attentions\.0\.transformer_blocks\.(\d+)\.")) for b in levels
        ]
        depths = [d or 1 for d in depths]
        config["transformer_layers_per_block"] = depths[0] if len(set(depths)) == 1 else depths
        proj = next((s for k, s in shapes.items() if k.endswith(".attentions.0.proj_in.weight")), None)
        config["use_linear_projection"] = proj is not None and len(proj) == 2
        if kind == "sparsectrl":
            config["down_block_types"] = ["CrossAttnDownBlockMotion" if c else "DownBlockMotion" for c in cross]
            simple = "controlnet_cond_embedding.weight" in shapes
            given = shapes["controlnet_cond_embedding.weight" if simple else "controlnet_cond_embedding.conv_in.weight"]
            config.update(
                use_simplified_condition_embedding=simple,
                concat_conditioning_mask=True,
                conditioning_channels=int(given[1]) - 1,  # the mask of the frames given is one more channel
            )
            if not simple:
                config["conditioning_embedding_out_channels"] = _embedding_channels(shapes)
            pe = next((s for k, s in shapes.items() if k.endswith(".pos_embed.pe")), None)
            config["motion_max_seq_length"] = int(pe[1]) if pe is not None else MOTION_LENGTH
            temporal = indices(shapes, r"down_blocks\.0\.motion_modules\.0\.transformer_blocks\.(\d+)\.")
            config["temporal_transformer_layers_per_block"] = max(1, len(temporal))
        else:
            config["down_block_types"] = ["CrossAttnDownBlock2D" if c else "DownBlock2D" for c in cross]
            config["conditioning_channels"] = int(shapes["controlnet_cond_embedding.conv_in.weight"][1])
            config["conditioning_embedding_out_channels"] = _embedding_channels(shapes)
            if not any(k.startswith("mid_block.attentions.") for k in shapes):
                config["mid_block_type"] = "UNetMidBlock2D"
            if "add_embedding.linear_1.weight" in shapes:
                config.update(_sdxl_config(shapes, channels, unet_config))
    except KeyError as exc:
        raise UserError(f"ControlNet {source}: incomplete (no {exc.args[0]})") from None
    if not levels:
        raise UserError(f"ControlNet {source}: incomplete (no down_blocks)")
    return config


def _sdxl_config(shapes: Shapes, channels: list[int], unet_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """An SDXL ControlNet's added-embedding config (:func:`controlnet_config`)."""
    model = unet_config if unet_config and unet_config.get("addition_embed_type") == "text_time" else {}
    config: dict[str, Any] = {
        "addition_embed_type": "text_time",
        "projection_class_embeddings_input_dim": int(shapes["add_embedding.linear_1.weight"][1]),
        "addition_time_embed_dim": int(model.get("addition_time_embed_dim") or SDXL_TIME_ID_WIDTH),
    }
    if model:
        config["attention_head_dim"] = model.get("attention_head_dim")
        config["num_attention_heads"] = model.get("num_attention_heads")
    else:
        config["attention_head_dim"] = [max(1, c // 64) for c in channels]  # diffusers reads these as head counts
    return config


def _converted(
    state: Mapping[str, Any], source: str, unet_config: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(kind, config, state in diffusers' keys)`` of a single file's entries (tensors or shapes)."""
    layout = file_layout(state.keys())
    if layout is None:
        raise UserError(
            f"ControlNet {source}: not a ControlNet (no input_hint_block/zero_convs keys of the original layout, "
            "no controlnet_cond_embedding of diffusers' or SparseCtrl's)"
        )
    shapes = {k: tuple(v.shape) if hasattr(v, "shape") else v for k, v in state.items()}
    check_family(shapes, source)
    if layout == "sparsectrl":
        kind, converted = "sparsectrl", sparsectrl_keys(_without_prefix(state))
    elif layout == "ldm":
        kind, converted = "controlnet", _ldm_to_diffusers(state)
    else:
        kind, converted = "controlnet", _without_prefix(state)
    shapes = {k: tuple(v.shape) if hasattr(v, "shape") else v for k, v in converted.items()}
    return kind, controlnet_config(shapes, kind, source, unet_config), converted


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """A weights file's tensor shapes: a safetensors header, or a weights-only pickle mapped, not read."""
    if path.suffix.lower() == ".safetensors":
        return dict(read_header(path).shapes)
    return {k: tuple(v.shape) for k, v in read_state_dict(path, mmap=True).items()}


def _fill_positions(state: dict[str, Any], length: int) -> None:
    """SparseCtrl's positional encodings where a file leaves them out: a fixed sinusoid, not learned."""
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    for key in [k for k in state if ".motion_modules." in k and k.endswith(".norm1.weight")]:
        block = key.removesuffix(".norm1.weight")
        if f"{block}.pos_embed.pe" not in state:
            state[f"{block}.pos_embed.pe"] = SinusoidalPositionalEmbedding(state[key].shape[0], length).pe


def _load_file(path: Path, dtype: torch.dtype, unet_config: Mapping[str, Any] | None) -> Any:
    from diffusers import ControlNetModel, SparseControlNetModel

    source = str(path)
    kind, config, state = _converted(read_weights(path), source, unet_config)
    cls = SparseControlNetModel if kind == "sparsectrl" else ControlNetModel
    if kind == "sparsectrl":
        _fill_positions(state, config["motion_max_seq_length"])
    return build_strict(lambda: cls.from_config(config), state, source, dtype)


def load_controlnet(
    source: str | Path, *, dtype: torch.dtype = torch.float32, unet_config: Mapping[str, Any] | None = None
) -> Any:
    """A ControlNet (diffusers ``ControlNetModel`` or ``SparseControlNetModel``) from a folder, hub id or single
    file (module docstring), on the CPU in ``dtype``, in eval mode. ``unet_config``: the U-Net it will steer, for
    what an SDXL single file's weights cannot say (:func:`controlnet_config`)."""
    path = locate(str(source), "ControlNet")
    quiet_loading_noise()
    if path.is_file():
        return _fused(_load_file(path, dtype, unet_config).eval().requires_grad_(False))
    if not path.is_dir():
        raise UserError(f"ControlNet {source}: not a file or folder")
    kind = controlnet_kind(path)
    from diffusers import ControlNetModel, SparseControlNetModel

    cls = SparseControlNetModel if kind == "sparsectrl" else ControlNetModel
    try:
        net = cls.from_pretrained(path, torch_dtype=dtype, use_safetensors=None)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"ControlNet {source} cannot be loaded: {first[:300]}") from None
    return _fused(net.eval().requires_grad_(False))


def _fused(net: Any) -> Any:
    """``net`` with its feed-forwards' gated GELU fused on the CPU in inference, as the U-Net's
    (:mod:`videodiff.unet.fused`)."""
    from videodiff.unet import fused

    fused.install(net)
    return net


def local_controlnet_kind(source: str) -> str | None:
    """``controlnet`` or ``sparsectrl`` for a local folder or file, read from its config or keys with no tensor
    loaded (before any model loads); ``None`` for a hub id (its kind is known once it is loaded)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return controlnet_kind(path)
    if not path.is_file():
        return None
    layout = file_layout(_file_shapes(path).keys())
    if layout is None:
        raise UserError(f"ControlNet {source}: not a ControlNet file")
    return "sparsectrl" if layout == "sparsectrl" else "controlnet"


# ---------------------------------------------------------------------------------------------
# Fit and description


def check_fits(net: Any, unet_config: Any, source: str) -> None:
    """Refuse a ControlNet whose residuals cannot meet this U-Net's skips: other latent channels, text width or
    block channels (another family, e.g. an SDXL ControlNet on an SD1.5 model). A ControlNet of the other family
    (SD1.5's or SDXL's, told by its added time embedding) is named as such first."""
    from videodiff import families

    mine, theirs = unet_config, net.config
    its = families.of_unet(theirs)
    families.require_same_controlnet_family(source, its, theirs.get("cross_attention_dim"), families.of_unet(mine))
    checks = (
        ("latent channels", mine.get("in_channels"), theirs.get("in_channels")),
        ("text width (cross_attention_dim)", mine.get("cross_attention_dim"), theirs.get("cross_attention_dim")),
        ("block channels", tuple(mine.get("block_out_channels", ())), tuple(theirs.get("block_out_channels", ()))),
        (
            "added embedding's input (pooled text and size ids)",
            mine.get("projection_class_embeddings_input_dim"),
            theirs.get("projection_class_embeddings_input_dim"),
        ),
    )
    for what, ours, its in checks:
        if ours != its:
            raise UserError(
                f"ControlNet {source} was made for another model: its {what} {its} differ from this model's {ours}"
            )


FAMILIES = {768: "SD1.5", 1024: "SD2.x", 2048: "SDXL"}  # by text width (cross_attention_dim)


def _summary(kind: str, config: Mapping[str, Any]) -> dict[str, Any]:
    width = config.get("cross_attention_dim")
    family = FAMILIES.get(width, "SD1.5-layout test model" if width and width < 768 else f"{width}-wide text")
    if config.get("addition_embed_type") == "text_time":  # pooled text and size ids in its time embedding
        family = "SDXL"
    channels = config.get("conditioning_channels")
    if kind == "sparsectrl":
        simple = config.get("use_simplified_condition_embedding", True)
        reads = f"{'VAE latents of RGB images' if simple else 'pixel maps (scribbles)'}, {channels} channels + mask"
        use = "videodiff render --sparsectrl PATH --sparse-at FRAME:PICTURE"
    else:
        reads, use = f"pixel maps, {channels} channels", "videodiff render --controlnet PATH --control MAPS"
    return {
        "kind": kind,
        "family": family,
        "conditioning_channels": channels,
        "conditioning": reads,
        "text_width": width,
        "block_channels": list(config.get("block_out_channels", ())),
        "use": use,
    }


def describe_controlnet(path: str | Path) -> dict[str, Any]:
    """What a ControlNet file or diffusers folder is, for ``videodiff inspect``: ``kind`` (``controlnet`` or
    ``sparsectrl``), family, conditioning channels and what they read; from a config or a header, no tensor
    loaded (a pickle is mapped, weights-only)."""
    path = Path(path).expanduser()
    if path.is_dir():
        kind = controlnet_kind(path)
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        return {"path": str(path), "format": "diffusers folder", **_summary(kind, config)}
    shapes = _file_shapes(path)
    source = str(path)
    layout = file_layout(shapes.keys())
    try:
        kind, config, _ = _converted(shapes, source)
    except UserError as exc:  # an SDXL file is still described: what it is, and that it is refused
        kind = "sparsectrl" if layout == "sparsectrl" else "controlnet"
        width = cross_attention_dim(_without_prefix(shapes))
        return {"path": source, "kind": kind, "layout": layout, "family": FAMILIES.get(width), "refused": str(exc)}
    names = {"ldm": "original ControlNet layout", "diffusers": "diffusers layout", "sparsectrl": "SparseCtrl"}
    return {
        "path": source,
        "format": "safetensors" if path.suffix.lower() == ".safetensors" else "pickle (weights only)",
        "layout": names[layout or ""],
        **_summary(kind, config),
    }
