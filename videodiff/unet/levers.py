"""Speed levers for the video U-Net on the CPU that keep fp32 frames within 2/255 of the plain path.

Each lever is applied alone, inside :func:`applied`, and undone on leaving (a pipeline is shared by many
renders). Which ones pay is measured by ``videodiff bench levers`` (:mod:`videodiff.bench.levers`) and recorded in
docs/benchmarks.md; tests/test_levers.py checks that each leaves the frames within 2/255 of the plain path.

- ``channels-last``: the 2D U-Net's parameters in channels-last memory format (NHWC). Convolutions then
  produce NHWC activations, which oneDNN prefers, and diffusers' spatial transformer's ``b c h w -> b (h w) c``
  becomes a view instead of a copy.
- ``sdpa-math``: every attention through PyTorch's reference ("math") kernel instead of the one it picks.
- ``onednn-off``: ``torch.backends.mkldnn`` disabled (PyTorch's own convolution kernels instead of oneDNN's).
- ``compile``: ``torch.compile`` of the video U-Net (inductor; its FX graph cache on disk, so a new process
  with the same shapes reuses the compiled code).
- ``unfused``: the feed-forwards' gated GELU as three passes instead of oneDNN's fused epilogues
  (:mod:`videodiff.unet.fused`, on by default): measures what the fusion gives.
- ``unpadded`` / ``padded``: narrow attention heads never / always padded to 16 floats
  (``videodiff.unet.temporal.PAD_HEAD_DIM``; by default each process times both once per shape and keeps the
  faster): measures what each choice gives on this machine.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

LEVERS = ("channels-last", "sdpa-math", "onednn-off", "compile", "unfused", "unpadded", "padded")


@contextlib.contextmanager
def applied(unet: nn.Module, lever: str | None) -> Iterator[nn.Module]:
    """While inside, ``unet`` (a :class:`~videodiff.unet.VideoUNet`) runs with ``lever`` (one of :data:`LEVERS`,
    or None: as it is); yields the module to call (``compile`` compiles ``unet`` in place)."""
    if lever is None:
        yield unet
    elif lever == "channels-last":
        unet.unet.to(memory_format=torch.channels_last)
        try:
            yield unet
        finally:
            unet.unet.to(memory_format=torch.contiguous_format)
    elif lever == "sdpa-math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.MATH]):
            yield unet
    elif lever == "onednn-off":
        with warnings.catch_warnings():  # flags() also sets oneDNN's TF32 switch, which warns on a CPU-only build
            warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
            with torch.backends.mkldnn.flags(enabled=False):
                yield unet
    elif lever == "compile":
        unet.compile(dynamic=False)
        try:
            yield unet
        finally:
            unet._compiled_call_impl = None  # nn.Module.compile's slot: back to eager calls
            torch._dynamo.reset()
    elif lever == "unfused":
        from videodiff.unet.fused import unfused

        with unfused():
            yield unet
    elif lever in ("unpadded", "padded"):
        from videodiff.unet.temporal import padded_heads

        with padded_heads(lever == "padded"):
            yield unet
    else:
        raise ValueError(f"unknown lever {lever!r}; choose from {', '.join(LEVERS)}")
