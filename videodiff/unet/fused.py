"""Feed-forward layers with fused epilogues for inference on the CPU (oneDNN's inner product with post-ops).

The gated GELU that opens every feed-forward (Shazeer 2020, eq. 6: ``value * gelu(gate)`` from one projection
to ``2 * inner``) runs in eager PyTorch as one matrix product into a ``[.., 2 * inner]`` tensor, a GELU pass over
its second half, a product pass and, with a bias, a copy of the bias into the output first: four trips through
a tensor 8 times the layer's width. oneDNN's inner product applies an element-wise or a binary operation to each
result as it writes it (a post-op), so here the gate is ``gelu(x Wg^T + bg)`` in one call and the value
``(x Wv^T + bv) * gate`` in a second, the value never stored on its own. The arithmetic is the same (exact erf
GELU, fp32 accumulation); only where the bias and products are added differs, so results agree to rounding
(``tests/test_fused.py``; the frames within 2/255 of the plain path).

Where it applies: CPU, float32, no autograd (training keeps the plain path and its bitwise reproducibility), not
inside ``torch.compile`` (which fuses on its own), oneDNN available and enabled, and a plain ``nn.Linear``
projection holding its weights (a LoRA-wrapped one, or one that accelerate's offload hooks fill as it runs, takes
the plain path). :func:`unfused` turns it off for a block of code (``videodiff bench levers unfused`` measures it).
The ops are PyTorch's own (``torch.ops.mkldnn._linear_pointwise``, what inductor emits for the same
fusion on the CPU); where a build lacks them, the plain path runs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

_OFF: ContextVar[bool] = ContextVar("videodiff_unfused", default=False)


@functools.cache
def _op():
    """oneDNN's inner product with post-ops, or None where this build lacks it (looked up once)."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
    return op if op is not None and hasattr(op, "binary") else None


@contextlib.contextmanager
def unfused() -> Iterator[None]:
    """While inside, the feed-forwards take the plain path (for measuring what the fusion gives)."""
    token = _OFF.set(True)
    try:
        yield
    finally:
        _OFF.reset(token)


def applies(x: torch.Tensor, proj: nn.Module) -> bool:
    """Whether :func:`geglu` fuses for input ``x`` and projection ``proj`` (see the module's notes)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and type(proj) is nn.Linear
        and proj.weight.dtype == torch.float32
        and proj.weight.device.type == "cpu"  # not meta: accelerate's offload hooks fill weights as proj() runs
        and not hasattr(proj, "_hf_hook")
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()  # a compiled graph does its own fusion
        and not _OFF.get()
        and torch.backends.mkldnn.enabled
        and _op() is not None
    )


def geglu(proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``value * gelu(gate)`` where ``value, gate = proj(x).chunk(2, -1)``: fused where :func:`applies`, else so."""
    if not applies(x, proj):
        value, gate = proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)
    return _fused_geglu(proj, x)


def _fused_geglu(proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """:func:`geglu`'s fused path; the caller has checked :func:`applies`."""
    op, inner = _op(), proj.out_features // 2
    weight, bias = proj.weight, proj.bias
    bias_value, bias_gate = (None, None) if bias is None else (bias[:inner], bias[inner:])
    x = x.contiguous()
    gate = op(x, weight[inner:], bias_gate, "gelu", [], "none")
    return op.binary(x, gate, weight[:inner], bias_value, "mul")


@functools.cache
def _diffusers_geglu() -> type[nn.Module]:
    """diffusers' ``GEGLU`` with the fused forward (made once, on first use: diffusers is imported only then)."""
    from diffusers.models.activations import GEGLU

    class FusedGEGLU(GEGLU):
        """diffusers' ``GEGLU`` whose forward fuses where :func:`applies` (same parameters and state-dict keys)."""

        def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if args or kwargs or not applies(hidden_states, self.proj):
                return super().forward(hidden_states, *args, **kwargs)
            return _fused_geglu(self.proj, hidden_states)

    return FusedGEGLU


def install(module: nn.Module) -> int:
    """Give every diffusers ``GEGLU`` inside ``module`` the fused forward (its class becomes a subclass that
    keeps its parameters, keys and ``isinstance``); returns how many. The plain path stays for whatever
    :func:`applies` refuses."""
    from diffusers.models.activations import GEGLU

    fused = _diffusers_geglu()
    count = 0
    for layer in module.modules():
        if type(layer) is GEGLU:
            layer.__class__ = fused
            count += 1
    return count
