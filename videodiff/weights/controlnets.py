"""Loading ControlNets: diffusers ``ControlNetModel`` and ``SparseControlNetModel`` folders and hub ids.

A ControlNet made for another family or channel layout than the model it steers is refused in one line
(:func:`check_fits`): its residuals must match the U-Net's skips one for one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from videodiff.errors import UserError
from videodiff.weights.checkpoints import quiet_loading_noise
from videodiff.weights.hub import locate

__all__ = ["CONTROLNET_CLASSES", "check_fits", "controlnet_kind", "load_controlnet"]

# diffusers' class name in a folder's config.json -> videodiff's name for the kind
CONTROLNET_CLASSES = {"ControlNetModel": "controlnet", "SparseControlNetModel": "sparsectrl"}


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


def load_controlnet(source: str | Path, *, dtype: torch.dtype = torch.float32) -> Any:
    """A ControlNet (diffusers ``ControlNetModel`` or ``SparseControlNetModel``) from a folder or hub id, on the
    CPU in ``dtype``, in eval mode."""
    path = locate(str(source), "ControlNet")
    if not path.is_dir():
        raise UserError(f"ControlNet {source}: a diffusers ControlNetModel folder or hub id is expected")
    kind = controlnet_kind(path)
    quiet_loading_noise()
    from diffusers import ControlNetModel, SparseControlNetModel

    cls = SparseControlNetModel if kind == "sparsectrl" else ControlNetModel
    try:
        net = cls.from_pretrained(path, torch_dtype=dtype, use_safetensors=None)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"ControlNet {source} cannot be loaded: {first[:300]}") from None
    return net.eval().requires_grad_(False)


def check_fits(net: Any, unet_config: Any, source: str) -> None:
    """Refuse a ControlNet whose residuals cannot meet this U-Net's skips: other latent channels, text width or
    block channels (another family, e.g. an SDXL ControlNet on an SD1.5 model)."""
    mine, theirs = unet_config, net.config
    checks = (
        ("latent channels", mine.get("in_channels"), theirs.get("in_channels")),
        ("text width (cross_attention_dim)", mine.get("cross_attention_dim"), theirs.get("cross_attention_dim")),
        ("block channels", tuple(mine.get("block_out_channels", ())), tuple(theirs.get("block_out_channels", ()))),
    )
    for what, ours, its in checks:
        if ours != its:
            raise UserError(
                f"ControlNet {source} was made for another model: its {what} {its} differ from this model's {ours}"
            )
