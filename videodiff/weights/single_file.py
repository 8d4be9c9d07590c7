"""Single-file SD1.5 checkpoints (``.safetensors`` / ``.ckpt``, LDM key layout), converted with no network.

A community checkpoint holds the U-Net under ``model.diffusion_model.``, the VAE under
``first_stage_model.`` and the CLIP text model under ``cond_stage_model.transformer.``. The
keys are renamed to the diffusers/transformers layout with diffusers' own conversion helpers
(:mod:`diffusers.loaders.single_file_utils`); each model is built from the configs shipped in
``videodiff/assets/sd15`` (changed only where the tensor shapes say otherwise, so small test
models load too) and loaded strictly. The CLIP tokenizer ships with the package as well.

Weights are read only through :func:`videodiff.weights.checkpoints.read_state_dict` (safetensors,
or pickle restricted to tensors). Models are built on the ``meta`` device and the file's
tensors are assigned into them, converted one at a time, so a float16 file never costs a
random float32 initialisation plus a second float32 copy.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.weights.checkpoints import PICKLE_SUFFIXES, load_strict, read_state_dict
from videodiff.weights.hub import WEIGHT_NAMES, quiet_hub_logging
from videodiff.weights.safetensors_header import read_header

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "sd15"

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD2.x (OpenCLIP ViT-H text encoder)
SDXL_PREFIX = "conditioner.embedders."
EMA_PREFIX = "model_ema."

NOT_SD15 = "not an SD1.5-family checkpoint; videodiff supports Stable Diffusion 1.x models only"

Shapes = Mapping[str, Sequence[int]]

__all__ = [
    "ASSETS",
    "convert_ldm_checkpoint",
    "describe_checkpoint",
    "is_ldm_checkpoint",
    "load_single_file",
    "load_vae_file",
    "shipped_config",
    "shipped_tokenizer",
]


# ---------------------------------------------------------------------------------------------
# Shipped configs


def shipped_config(part: str) -> dict[str, Any]:
    """The SD1.5 config of ``part`` (``unet``, ``vae``, ``text_encoder`` or ``scheduler``), a fresh dict."""
    name = "scheduler_config.json" if part == "scheduler" else "config.json"
    return json.loads((ASSETS / part / name).read_text(encoding="utf-8"))


def shipped_tokenizer():
    """The SD1.5 CLIP tokenizer (ViT-L/14 BPE, 49,408 tokens), read from the package: no network."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(ASSETS / "tokenizer"), local_files_only=True)


# ---------------------------------------------------------------------------------------------
# Recognising checkpoints


def is_ldm_checkpoint(state_dict: Mapping[str, Any]) -> bool:
    """True for an original-layout (LDM) Stable Diffusion checkpoint: U-Net keys under ``model.diffusion_model.``.

    This is about the key layout, not the family: SD2.x and SDXL files are LDM checkpoints too
    (:func:`load_single_file` then says they are not SD1.5-family).
    """
    return any(k.startswith(UNET_PREFIX) for k in state_dict)


def _strip(shapes: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}


def _indices(keys, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) at the start of ``keys``."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _vae_prefix(keys) -> str | None:
    """The prefix of an LDM-layout VAE inside ``keys`` (``''`` for a bare VAE file), or None."""
    for prefix in (*VAE_PREFIXES, ""):
        if f"{prefix}encoder.conv_in.weight" in keys and any(k.startswith(f"{prefix}encoder.down.") for k in keys):
            return prefix
    return None


def _is_diffusers_vae(keys) -> bool:
    return "encoder.conv_in.weight" in keys and any(k.startswith("encoder.down_blocks.") for k in keys)


def _cross_attention_dim(unet: Shapes) -> int | None:
    for key, shape in unet.items():
        if key.endswith("attn2.to_k.weight"):
            return int(shape[1])
    return None


def _classify(shapes: Shapes) -> tuple[str, str]:
    """``(kind, description)``: kind is ``sd15``, ``sd2``, ``sdxl``, ``vae`` or ``unknown``."""
    keys = shapes.keys()
    if any(k.startswith(SDXL_PREFIX) for k in keys):
        return "sdxl", "SDXL checkpoint (conditioner.embedders.*)"
    unet = _strip(shapes, UNET_PREFIX)
    if unet:
        if any(k.startswith(OPEN_CLIP_PREFIX) for k in keys):
            return "sd2", "SD2.x checkpoint (OpenCLIP text encoder, cond_stage_model.model.*)"
        cross = _cross_attention_dim(unet)
        if any(k.startswith("label_emb.") for k in unet) or cross == 2048:
            return "sdxl", "SDXL-style U-Net (label embeddings / 2048-wide cross-attention)"
        if cross == 1024:
            return "sd2", "SD2.x-style U-Net (1024-wide cross-attention)"
        return "sd15", "SD1.5-family single-file checkpoint (LDM layout)"
    if _vae_prefix(keys) is not None:
        return "vae", "standalone VAE (LDM layout)"
    if _is_diffusers_vae(keys):
        return "vae", "standalone VAE (diffusers layout)"
    return "unknown", "not a recognised Stable Diffusion checkpoint"


# ---------------------------------------------------------------------------------------------
# Config inference from tensor shapes (diffusers key layout)


def _unet_layout(ldm_unet: Shapes, source: str) -> tuple[int, int]:
    """``(levels, layers_per_block)`` of an LDM U-Net, from its block counts."""
    inputs = _indices(ldm_unet, r"input_blocks\.(\d+)\.")
    outputs = _indices(ldm_unet, r"output_blocks\.(\d+)\.")
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
    if value != config.get(key, default):
        config[key] = value


def _unet_config(unet: Shapes, source: str) -> dict[str, Any]:
    """The U-Net config: SD1.5's, with what the tensor shapes determine put in."""
    config = shipped_config("unet")
    try:
        out_ch, in_ch = (int(x) for x in unet["conv_in.weight"][:2])
        levels = _indices(unet, r"down_blocks\.(\d+)\.")
        channels = [int(unet[f"down_blocks.{b}.resnets.0.conv2.weight"][0]) for b in levels]
        per_block = len(_indices(unet, r"down_blocks\.0\.resnets\.(\d+)\."))
        out_channels = int(unet["conv_out.weight"][0])
        time_dim = int(unet["time_embedding.linear_1.weight"][0])
    except KeyError as exc:
        raise UserError(f"{source}: incomplete U-Net (no {exc.args[0]})") from None
    if in_ch == 9:
        raise UserError(f"{source}: inpainting checkpoints are not supported (the U-Net takes 9 input channels)")
    if in_ch != 4:
        raise UserError(f"{source}: U-Nets with {in_ch} input channels are not supported (SD1.5 text-to-image has 4)")
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
    cross = _cross_attention_dim(unet)
    if cross is not None:
        config["cross_attention_dim"] = cross
    if channels and channels[0] != out_ch:
        raise UserError(f"{source}: unexpected U-Net layout (conv_in gives {out_ch} channels, block 0 {channels[0]})")
    _set(config, "time_embedding_dim", time_dim, 4 * channels[0])
    if not any(k.startswith("mid_block.attentions.") for k in unet):
        _set(config, "mid_block_type", "UNetMidBlock2D", "UNetMidBlock2DCrossAttn")
    depths = [len(_indices(unet, rf"down_blocks\.{b}\.attentions\.0\.transformer_blocks\.(\d+)\.")) for b in levels]
    depths = [d for d in depths if d]
    if depths and set(depths) != {1}:
        config["transformer_layers_per_block"] = depths[0] if len(set(depths)) == 1 else depths
    proj = next((s for k, s in unet.items() if k.endswith(".proj_in.weight")), None)
    _set(config, "use_linear_projection", proj is not None and len(proj) == 2, False)
    return config


def _vae_config(vae: Shapes, source: str) -> dict[str, Any]:
    """The VAE config: SD1.5's, with channels, depth and latent size taken from the shapes."""
    config = shipped_config("vae")
    try:
        levels = _indices(vae, r"encoder\.down_blocks\.(\d+)\.")
        config.update(
            in_channels=int(vae["encoder.conv_in.weight"][1]),
            out_channels=int(vae["decoder.conv_out.weight"][0]),
            latent_channels=int(vae["decoder.conv_in.weight"][1]),
            block_out_channels=[int(vae[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"][0]) for i in levels],
            layers_per_block=len(_indices(vae, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")),
            down_block_types=["DownEncoderBlock2D"] * len(levels),
            up_block_types=["UpDecoderBlock2D"] * len(levels),
        )
    except KeyError as exc:
        raise UserError(f"{source}: incomplete VAE (no {exc.args[0]})") from None
    _set(config, "mid_block_add_attention", any(k.startswith("encoder.mid_block.attentions.") for k in vae), True)
    _set(config, "use_quant_conv", "quant_conv.weight" in vae, True)
    _set(config, "use_post_quant_conv", "post_quant_conv.weight" in vae, True)
    return config


def _text_config(text: Shapes, source: str) -> dict[str, Any]:
    """The CLIP text config (keys without ``text_model.``): widths and depth from the shapes.

    The head count is not in the weights: CLIP's text encoders use 64-wide heads (ViT-L/14:
    768 / 64 = 12); widths that are not a multiple of 64 (small test models, as
    :func:`videodiff.tiny.build_tiny_model` builds them) are taken to use 8-wide heads.
    """
    config = shipped_config("text_encoder")
    try:
        vocab, hidden = (int(x) for x in text["embeddings.token_embedding.weight"])
        config.update(
            vocab_size=vocab,
            hidden_size=hidden,
            max_position_embeddings=int(text["embeddings.position_embedding.weight"][0]),
            num_hidden_layers=len(_indices(text, r"encoder\.layers\.(\d+)\.")),
            intermediate_size=int(text["encoder.layers.0.mlp.fc1.weight"][0]),
            num_attention_heads=hidden // 64 if hidden % 64 == 0 else max(1, hidden // 8),
        )
    except KeyError as exc:
        raise UserError(f"{source}: incomplete text encoder (no {exc.args[0]})") from None
    if hidden != 768:
        config["projection_dim"] = hidden
    return config


# ---------------------------------------------------------------------------------------------
# Key conversion (diffusers' helpers)


def _check_family(shapes: Shapes, source: str) -> None:
    kind, description = _classify(shapes)
    if kind in ("sd2", "sdxl"):
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

    _, per_block = _unet_layout(_strip(state, UNET_PREFIX), source)
    ema = sum(k.startswith(EMA_PREFIX) for k in state) > 100
    if ema:
        notice(f"{source}: holds EMA and training weights; using the EMA weights")
    converted = _drop_missing(convert_ldm_unet_checkpoint(state, {"layers_per_block": per_block}, extract_ema=ema))
    return _unet_config({k: tuple(v.shape) for k, v in converted.items()}, source), converted


def _convert_vae(state: Mapping[str, torch.Tensor], source: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    prefix = _vae_prefix(state.keys())
    if prefix is None:
        raise UserError(f"{source}: has no VAE (first_stage_model.* keys)")
    if prefix == "":  # diffusers' helper keeps every key of a bare file: pass it only the VAE's own
        state = {k: v for k, v in state.items() if k.split(".")[0] in ("encoder", "decoder") or "quant_conv" in k}
    levels = len(_indices(state, rf"{re.escape(prefix)}encoder\.down\.(\d+)\."))
    layout = {"down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels}
    converted = _drop_missing(convert_ldm_vae_checkpoint(state, layout))
    return _vae_config({k: tuple(v.shape) for k, v in converted.items()}, source), converted


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
    return _text_config({k: tuple(v.shape) for k, v in converted.items()}, source), converted


def convert_ldm_checkpoint(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict[str, Any]:
    """Rename an SD1.5 LDM state dict to diffusers/transformers keys and infer each model's config.

    Returns ``{"unet": (config, state), "vae": (config, state), "text_encoder": (config, state)}``;
    the text encoder's keys have no ``text_model.`` prefix. Works on ``meta`` tensors too (shapes only).
    """
    _check_family({k: tuple(v.shape) for k, v in state_dict.items()}, source)
    parts = {
        "unet": _convert_unet(state_dict, source),
        "vae": _convert_vae(state_dict, source),
        "text_encoder": _convert_text(state_dict, source),
    }
    cross, hidden = parts["unet"][0]["cross_attention_dim"], parts["text_encoder"][0]["hidden_size"]
    if cross != hidden:
        raise UserError(f"{source}: the text encoder is {hidden} wide but the U-Net attends to {cross}")
    return parts


# ---------------------------------------------------------------------------------------------
# Building models


def _read(path: Path) -> dict[str, torch.Tensor]:
    """:func:`read_state_dict`, with a pickle that ``weights_only`` refused reported as such.

    (torch's refusal starts "Weights only load failed", which ``read_state_dict`` reports as merely unreadable.)
    """
    try:
        return read_state_dict(path)
    except UserError as exc:
        text = str(exc)
        if path.suffix.lower() in PICKLE_SUFFIXES and (
            "Weights only load failed" in text or "Unsupported global" in text
        ):
            raise UserError(
                f"{path}: refused: loading it would run code stored in the file (only tensors are allowed); "
                "use a .safetensors version, or convert it to .safetensors with a tool you trust"
            ) from None
        raise


def _build(make: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor], source: str, dtype) -> Any:
    """Build a model on the meta device, check ``state`` strictly, then assign its tensors (emptying ``state``)."""
    from accelerate import init_empty_weights

    try:
        with init_empty_weights(include_buffers=False):
            model = make()
    except (TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{source}: unsupported model configuration ({str(exc).strip().splitlines()[0]})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copying into meta parameters is a no-op; the tensors are assigned below
        load_strict(model, state, source)
    tensors = {}
    for key in list(state):  # one tensor at a time: each float16 original is freed once converted
        tensor = state.pop(key)
        tensors[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    model.load_state_dict(tensors, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise RuntimeError(f"{type(model).__name__} kept meta tensors after loading")
    return model.requires_grad_(False).eval()


def _text_model(config: dict[str, Any], state: dict[str, torch.Tensor], source: str, dtype):
    """A ``CLIPTextModel``; transformers 4.x names its keys ``text_model.*``, 5.x does not: match the installed one."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}

    def make():
        model = CLIPTextModel(CLIPTextConfig(**cfg))
        if next(iter(model.state_dict())).startswith("text_model."):
            for key in list(state):
                state[f"text_model.{key}"] = state.pop(key)
        return model

    return _build(make, state, source, dtype)


def load_single_file(path: str | Path, *, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Load an SD1.5-family single-file checkpoint with no network access.

    Returns ``{"tokenizer", "text_encoder", "vae", "unet", "scheduler_config"}``, the objects
    :class:`videodiff.weights.models.ModelParts` holds, on the CPU in ``dtype`` (float32 by default;
    ``torch.float16`` keeps a float16 file's tensors without any copy). Raises :class:`UserError`
    (one line) for SD2.x/SDXL files, inpainting U-Nets, unreadable files or keys that do not match.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    quiet_hub_logging()
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a single-file checkpoint (load diffusers folders as models)")
    source = str(path)
    state = _read(path)
    parts = convert_ldm_checkpoint(state, source)
    del state  # the converted dicts hold the only references now; the rest (EMA, buffers) is freed
    (unet_cfg, unet_sd), (vae_cfg, vae_sd), (text_cfg, text_sd) = parts["unet"], parts["vae"], parts["text_encoder"]
    parts.clear()
    unet = _build(lambda: UNet2DConditionModel.from_config(unet_cfg), unet_sd, source, dtype)
    vae = _build(lambda: AutoencoderKL.from_config(vae_cfg), vae_sd, source, dtype)
    text_encoder = _text_model(text_cfg, text_sd, source, dtype)
    tokenizer = shipped_tokenizer()
    if text_encoder.config.vocab_size != len(tokenizer):
        notice(
            f"{source}: the text encoder knows {text_encoder.config.vocab_size} tokens, "
            f"the SD1.5 CLIP tokenizer {len(tokenizer)}"
        )
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "unet": unet,
        "scheduler_config": shipped_config("scheduler"),
    }


# ---------------------------------------------------------------------------------------------
# Standalone VAEs (--vae)

_OLD_ATTENTION = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}


def _modern_vae_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def _diffusers_vae_config(folder: Path, state: Shapes, source: str) -> dict[str, Any]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        return _vae_config(state, source)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{config_path}: not valid JSON ({exc})") from None
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise UserError(f"{config_path}: describes a {config.get('_class_name')}, not an AutoencoderKL")
    return config


def load_vae_file(path: str | Path, *, dtype: torch.dtype = torch.float32):
    """An ``AutoencoderKL`` from ``--vae PATH``, with no network access.

    ``PATH`` is an LDM-layout VAE file (``encoder.*``, ``decoder.*``, ``quant_conv.*``, maybe under
    ``first_stage_model.``; a full SD1.5 checkpoint gives its own VAE), a diffusers-layout VAE
    weights file (its ``config.json`` beside it is used where present, else the config is inferred),
    or a diffusers VAE folder (or a model folder with ``vae/`` inside).
    """
    from diffusers import AutoencoderKL

    quiet_hub_logging()
    path = Path(path).expanduser()
    if path.is_dir():
        folder = path / "vae" if not (path / "config.json").is_file() and (path / "vae").is_dir() else path
        weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
        if weights is None:
            raise UserError(f"{folder}: not a VAE folder (expected one of {', '.join(WEIGHT_NAMES)})")
        path = weights
    elif not path.is_file():
        raise UserError(f"VAE {str(path)!r} not found: no such file or folder")
    source = str(path)
    state = _read(path)
    if _vae_prefix(state.keys()) is not None:
        config, converted = _convert_vae(state, source)
    elif _is_diffusers_vae(state.keys()):
        converted = _modern_vae_keys(state)
        config = _diffusers_vae_config(path.parent, {k: tuple(v.shape) for k, v in converted.items()}, source)
    else:
        kind, description = _classify({k: tuple(v.shape) for k, v in state.items()})
        raise UserError(f"{source}: not a VAE ({description})")
    del state
    return _build(lambda: AutoencoderKL.from_config(config), converted, source, dtype)


# ---------------------------------------------------------------------------------------------
# Describing a file without loading it


def _numel(shape: Sequence[int]) -> int:
    total = 1
    for d in shape:
        total *= int(d)
    return total


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """What a weights file holds, for ``videodiff inspect``: kind, parameter counts, dtype, U-Net channels.

    ``.safetensors`` files are described from their header alone (a 4 GB file is not loaded);
    pickle checkpoints have no header and are read (tensors only). ``kind`` is ``sd15``,
    ``vae``, ``sdxl``, ``sd2`` or ``unknown``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    metadata: dict[str, str] = {}
    if path.suffix.lower() == ".safetensors":
        header = read_header(path)
        shapes, dtypes, metadata = header.shapes, header.dtypes, header.metadata
        fmt = "safetensors"
    else:
        state = _read(path)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        dtypes = {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()}
        fmt = "pickle"
        del state
    kind, description = _classify(shapes)
    floats = {k for k, d in dtypes.items() if d.startswith(("float", "bfloat"))}
    by_dtype: dict[str, int] = {}
    for k in floats:
        by_dtype[dtypes[k]] = by_dtype.get(dtypes[k], 0) + _numel(shapes[k])
    components = {
        "unet": UNET_PREFIX,
        "vae": next((p for p in VAE_PREFIXES if any(k.startswith(p) for k in shapes)), VAE_PREFIXES[0]),
        "text_encoder": CLIP_PREFIX if not any(k.startswith(OPEN_CLIP_PREFIX) for k in shapes) else OPEN_CLIP_PREFIX,
        "ema": EMA_PREFIX,
    }
    counts = {name: sum(_numel(shapes[k]) for k in floats if k.startswith(p)) for name, p in components.items()}
    info: dict[str, Any] = {
        "path": str(path),
        "format": fmt,
        "size_bytes": path.stat().st_size,
        "kind": kind,
        "description": description,
        "tensors": len(shapes),
        "parameters": sum(_numel(shapes[k]) for k in floats),
        "component_parameters": {name: n for name, n in counts.items() if n},
        "dtype": next(iter(by_dtype)) if len(by_dtype) == 1 else ("mixed: " + ", ".join(sorted(by_dtype))),
        "unet_channels": None,
        "in_channels": None,
        "cross_attention_dim": None,
    }
    unet = _strip(shapes, UNET_PREFIX)
    if unet:
        info["in_channels"] = int(unet["input_blocks.0.0.weight"][1]) if "input_blocks.0.0.weight" in unet else None
        info["cross_attention_dim"] = _cross_attention_dim(unet)
        try:
            levels, per_block = _unet_layout(unet, str(path))
            info["unet_channels"] = [
                int(unet[f"input_blocks.{1 + level * (per_block + 1)}.0.out_layers.3.weight"][0])
                for level in range(levels)
            ]
        except (UserError, KeyError):
            pass
        if info["in_channels"] == 9:
            info["description"] += "; inpainting U-Net (9 input channels), not supported"
    if metadata:
        info["metadata"] = dict(metadata)
    return info
