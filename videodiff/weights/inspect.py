"""``videodiff inspect``: what a file or folder is, read from its keys and shapes only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from videodiff.errors import UserError
from videodiff.weights.checkpoints import read_state_dict
from videodiff.weights.embeddings import describe_embedding
from videodiff.weights.lora import describe_lora
from videodiff.weights.motion_formats import describe_motion_module
from videodiff.weights.safetensors_header import read_header
from videodiff.weights.single_file import describe_checkpoint


def _keys(path: Path) -> list[str]:
    if path.suffix.lower() == ".safetensors":
        return list(read_header(path).shapes)
    try:
        return list(read_state_dict(path))
    except UserError:
        return []  # nested pickles (A1111 embeddings) are recognised by their own reader below


def describe(path: str) -> dict[str, Any]:
    """Kind-specific description of a model folder, motion module, SD checkpoint, LoRA or embedding."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{path}: no such file or folder")
    if not (p.is_dir() or p.is_file()):  # a FIFO would block the read forever, /dev/zero never ends
        raise UserError(f"{path}: not a regular file or folder (a device, FIFO or socket)")
    if p.is_dir():
        if (p / "model_index.json").is_file() or (p / "unet").is_dir():
            return {
                "kind": "diffusers model folder",
                "path": str(p),
                "components": sorted(d.name for d in p.iterdir() if d.is_dir()),
                "own motion modules": (p / "motion_adapter").is_dir(),
            }
        config = p / "config.json"
        if config.is_file() and json.loads(config.read_text()).get("_class_name") == "MotionAdapter":
            return describe_motion_module(p)
        if config.is_file() and json.loads(config.read_text()).get("_class_name") == "AutoencoderKL":
            return {"kind": "diffusers VAE folder", "path": str(p)}
        raise UserError(f"{path}: a folder that is neither a diffusers model, a MotionAdapter nor a VAE")
    keys = _keys(p)
    if any(
        k.startswith(("model.diffusion_model.", "first_stage_model.", "encoder.", "decoder.", "conditioner."))
        for k in keys
    ):
        return describe_checkpoint(p)
    if any("lora" in k for k in keys):
        if any("motion_modules" in k for k in keys):
            return {"kind": "motion LoRA", "path": str(p), "tensors": len(keys)}
        return describe_lora(p)
    if any("motion_modules" in k for k in keys):
        return describe_motion_module(p)
    return describe_embedding(p)
