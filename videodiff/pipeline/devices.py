"""Where and how a pipeline runs: device and dtype by name, the attention kernel, CPU offload, memory savers."""

from __future__ import annotations

import torch

from videodiff.errors import UserError
from videodiff.log import notice

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``: CUDA, then Apple's MPS, then the CPU; an unavailable device is a user error."""
    name = str(device or "auto")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but MPS is not available")
    return torch.device(name)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``: fp16 on accelerators, fp32 on the CPU (half precision is slow and lossy there)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if device.type == "cpu" else torch.float16
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; choose one of: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def pick_attention(requested: str, device: torch.device) -> str:
    """xformers only where CUDA is present and its kernels load; otherwise a notice and SDPA."""
    if requested != "xformers":
        return requested
    if device.type != "cuda":
        notice("xformers needs a CUDA device; using PyTorch SDPA attention")
        return "sdpa"
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken xformers install must not stop a render
        notice("xformers is not installed or its kernels do not load (pip install videodiff[xformers]); using SDPA")
        return "sdpa"
    return "xformers"


def install_offload(pipe, mode: str) -> None:
    """``pipe``'s models offloaded to the CPU. ``model``: each model moves to the device while it runs (text
    encoder, U-Net, VAE in turn); ``sequential``: each layer does (smallest memory, slowest). Both from accelerate."""
    from accelerate import cpu_offload, cpu_offload_with_hook

    if mode == "sequential":
        for module in (*pipe.text_encoders, pipe.unet, pipe.vae):
            cpu_offload(module, execution_device=pipe.device)
        return
    if mode != "model":
        raise UserError(f"unknown --offload {mode!r}; choose one of: model, sequential")
    hook = None
    for module in (*pipe.text_encoders, pipe.unet, pipe.vae):
        _, hook = cpu_offload_with_hook(module, execution_device=pipe.device, prev_module_hook=hook)

def enable_memory_savers(pipe, *, vae_tiling: bool = False, attention_slicing: bool = False) -> None:
    """``pipe``'s memory savers: VAE tiling for large frames; attention computed in slices (spatial: diffusers'
    sliced processor; temporal: chunks of positions). Outputs stay within float rounding of the plain path."""
    if vae_tiling:
        pipe.vae.enable_tiling()
    if attention_slicing:
        pipe.unet.unet.set_attention_slice("auto")
        pipe.unet.motion.set_attention_chunk(4096)
