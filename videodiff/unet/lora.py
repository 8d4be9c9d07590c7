"""Low-rank adapters (Hu et al. 2021, eq. 3: W + B A, B zero-initialised) on linear layers, for MotionLoRA training.

An adapted layer keeps its own parameter names (``to_q.weight``) and gains
``to_q.lora_A.weight`` / ``to_q.lora_B.weight``, the PEFT naming, so a saved adapter
reads like any diffusers/PEFT LoRA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from videodiff.unet.temporal import MotionStack, TemporalAttention


class LoRALinear(nn.Linear):
    """``y = x W^T + b + scale * B(A(x))``."""

    lora_A: nn.Linear
    lora_B: nn.Linear
    lora_scale: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.lora_scale * self.lora_B(self.lora_A(x))


def add_lora(linear: nn.Linear, rank: int, scale: float = 1.0) -> LoRALinear:
    """Turn ``linear`` into a :class:`LoRALinear` in place (same weight tensors), with a zero ``lora_B``."""
    linear.__class__ = LoRALinear
    factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
    linear.lora_A = nn.Linear(linear.in_features, rank, bias=False, **factory)
    linear.lora_B = nn.Linear(rank, linear.out_features, bias=False, **factory)
    nn.init.kaiming_uniform_(linear.lora_A.weight, a=5**0.5)
    nn.init.zeros_(linear.lora_B.weight)
    linear.lora_scale = scale
    return linear  # type: ignore[return-value]


def add_motion_lora(stack: MotionStack, rank: int) -> list[str]:
    """Adapt every temporal attention projection (q, k, v, out); returns the adapted layers' names."""
    names = []
    for name, module in stack.named_modules():
        if isinstance(module, TemporalAttention):
            for proj, layer in (
                ("to_q", module.to_q),
                ("to_k", module.to_k),
                ("to_v", module.to_v),
                ("to_out.0", module.to_out[0]),
            ):
                add_lora(layer, rank)
                names.append(f"{name}.{proj}")
    return names


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors, keyed ``<layer>.lora_A.weight`` / ``<layer>.lora_B.weight``."""
    return {k: v for k, v in module.state_dict().items() if ".lora_A." in k or ".lora_B." in k}
