"""Single-file SD1.5 and SDXL checkpoints (``.safetensors`` / ``.ckpt``, LDM key layout), converted with no network.

A community SD1.5 checkpoint holds the U-Net under ``model.diffusion_model.``, the VAE under
``first_stage_model.`` and the CLIP text model under ``cond_stage_model.transformer.``; an SDXL one holds its
two text encoders under ``conditioner.embedders.0.transformer.`` (CLIP ViT-L) and ``conditioner.embedders.1.model.``
(OpenCLIP ViT-bigG). The keys are renamed to the diffusers/transformers layout with diffusers' own conversion
helpers (:mod:`diffusers.loaders.single_file_utils`); each model is built from the configs shipped in
``videodiff/assets/sd15`` or ``videodiff/assets/sdxl`` (changed only where the tensor shapes say otherwise, so
small test models load too) and loaded strictly. The CLIP tokenizers ship with the package as well.

Weights are read only through :func:`videodiff.weights.checkpoints.read_state_dict` (safetensors,
or pickle restricted to tensors). Models are built on the ``meta`` device and the file's
tensors are assigned into them, converted one at a time, so a float16 file never costs a
random float32 initialisation plus a second float32 copy.

The file's layout and each model's config: :mod:`videodiff.weights.ldm_layout`; the key conversion:
:mod:`videodiff.weights.ldm_convert`. This module reads files and builds the models (and describes a file
for ``videodiff inspect``); the public names of the other two are importable from here too.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.weights.checkpoints import PICKLE_SUFFIXES, load_strict, read_state_dict
from videodiff.weights.hub import WEIGHT_NAMES, quiet_hub_logging
from videodiff.weights.ldm_convert import convert_ldm_checkpoint, convert_vae, modern_vae_keys
from videodiff.weights.ldm_layout import (
    ASSETS,
    CLIP_PREFIX,
    EMA_PREFIX,
    OPEN_CLIP_PREFIX,
    SDXL_CLIP_PREFIX,
    SDXL_OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIXES,
    Shapes,
    classify,
    cross_attention_dim,
    is_diffusers_vae,
    is_ldm_checkpoint,
    shipped_config,
    shipped_tokenizer,
    strip_prefix,
    unet_layout,
    vae_config,
    vae_prefix,
)
from videodiff.weights.safetensors_header import read_header

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
    """A ``CLIPTextModel`` (or the ``CLIPTextModelWithProjection`` the config names); transformers 4.x names their
    keys ``text_model.*``, 5.x only the projection model's: match the installed one."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    cls = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in config.get("architectures", ()) else None

    def make():
        model = (cls or CLIPTextModel)(CLIPTextConfig(**cfg))
        keys = set(model.state_dict())
        for key in list(state):
            if key not in keys and f"text_model.{key}" in keys:
                state[f"text_model.{key}"] = state.pop(key)
        return model

    return _build(make, state, source, dtype)


def load_single_file(path: str | Path, *, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Load an SD1.5-family or SDXL single-file checkpoint with no network access.

    Returns ``{"tokenizer", "text_encoder", "vae", "unet", "scheduler_config"}`` (SDXL: also ``tokenizer_2``
    and ``text_encoder_2``), the objects :class:`videodiff.weights.models.ModelParts` holds, on the CPU in
    ``dtype`` (float32 by default; ``torch.float16`` keeps a float16 file's tensors without any copy). Raises
    :class:`UserError` (one line) for SD2.x files, SDXL refiners, inpainting U-Nets, unreadable files or keys
    that do not match.
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
    family = "sdxl" if "text_encoder_2" in parts else "sd15"
    (unet_cfg, unet_sd), (vae_cfg, vae_sd) = parts.pop("unet"), parts.pop("vae")
    unet = _build(lambda: UNet2DConditionModel.from_config(unet_cfg), unet_sd, source, dtype)
    vae = _build(lambda: AutoencoderKL.from_config(vae_cfg), vae_sd, source, dtype)
    loaded: dict[str, Any] = {}
    for name in ("text_encoder", "text_encoder_2") if family == "sdxl" else ("text_encoder",):
        encoder = _text_model(*parts.pop(name), source, dtype)
        tokenizer = shipped_tokenizer(name.replace("text_encoder", "tokenizer"), family)
        if encoder.config.vocab_size != len(tokenizer):
            notice(
                f"{source}: the text encoder{name.removeprefix('text_encoder').replace('_', ' ')} knows "
                f"{encoder.config.vocab_size} tokens, the CLIP tokenizer {len(tokenizer)}"
            )
        loaded[name], loaded[name.replace("text_encoder", "tokenizer")] = encoder, tokenizer
    return {
        **loaded,
        "vae": vae,
        "unet": unet,
        "scheduler_config": shipped_config("scheduler", family),
    }


# ---------------------------------------------------------------------------------------------
# Standalone VAEs (--vae)


def _diffusers_vae_config(folder: Path, state: Shapes, source: str, family: str) -> dict[str, Any]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        return vae_config(state, source, family)
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{config_path}: not valid JSON ({exc})") from None
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise UserError(f"{config_path}: describes a {config.get('_class_name')}, not an AutoencoderKL")
    return config


def load_vae_file(path: str | Path, *, dtype: torch.dtype = torch.float32, family: str = "sd15"):
    """An ``AutoencoderKL`` from ``--vae PATH``, with no network access.

    ``PATH`` is an LDM-layout VAE file (``encoder.*``, ``decoder.*``, ``quant_conv.*``, maybe under
    ``first_stage_model.``; a full SD1.5 or SDXL checkpoint gives its own VAE), a diffusers-layout VAE
    weights file (its ``config.json`` beside it is used where present, else the config is inferred),
    or a diffusers VAE folder (or a model folder with ``vae/`` inside). An inferred config starts from
    ``family``'s (``sdxl``: scaling factor 0.13025 and ``force_upcast``, for the model it will decode for).
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
    if vae_prefix(state.keys()) is not None:
        config, converted = convert_vae(state, source, family)
    elif is_diffusers_vae(state.keys()):
        converted = modern_vae_keys(state)
        shapes = {k: tuple(v.shape) for k, v in converted.items()}
        config = _diffusers_vae_config(path.parent, shapes, source, family)
    else:
        kind, description = classify({k: tuple(v.shape) for k, v in state.items()})
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
    kind, description = classify(shapes)
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
    if any(k.startswith(SDXL_CLIP_PREFIX) for k in shapes):
        components.update(text_encoder=SDXL_CLIP_PREFIX, text_encoder_2=SDXL_OPEN_CLIP_PREFIX)
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
    unet = strip_prefix(shapes, UNET_PREFIX)
    if unet:
        info["in_channels"] = int(unet["input_blocks.0.0.weight"][1]) if "input_blocks.0.0.weight" in unet else None
        info["cross_attention_dim"] = cross_attention_dim(unet)
        try:
            levels, per_block = unet_layout(unet, str(path))
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
