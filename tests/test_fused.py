"""The fused gated GELU (videodiff/unet/fused.py) computes what the three-pass one does, and only where it may."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from videodiff.unet import fused
from videodiff.unet.lora import add_lora
from videodiff.unet.temporal import GEGLU

pytestmark = pytest.mark.skipif(fused._op() is None, reason="this PyTorch build has no oneDNN linear post-ops")


def plain(proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    value, gate = proj(x).chunk(2, dim=-1)
    return value * F.gelu(gate)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 40),
    tokens=st.integers(1, 9),
    dim=st.sampled_from([4, 8, 24, 64]),
    inner=st.sampled_from([4, 16, 96]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fused_geglu_equals_the_three_passes(rows, tokens, dim, inner, bias, seed):
    torch.manual_seed(seed)
    proj = nn.Linear(dim, 2 * inner, bias=bias)
    x = torch.randn(rows, tokens, dim) * 3
    with torch.no_grad():
        assert fused.applies(x, proj)
        got, want = fused.geglu(proj, x), plain(proj, x)
    assert got.shape == want.shape == (rows, tokens, inner)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_strided_input_is_fused_like_a_contiguous_one():
    torch.manual_seed(0)
    proj = nn.Linear(16, 32)
    x = torch.randn(5, 16, 7).transpose(1, 2)  # [5 7 16], not contiguous
    with torch.no_grad():
        torch.testing.assert_close(fused.geglu(proj, x), plain(proj, x), rtol=1e-5, atol=1e-5)


def test_where_it_does_not_apply_the_plain_path_runs():
    torch.manual_seed(0)
    proj = nn.Linear(8, 16)
    x = torch.randn(3, 8)
    assert not fused.applies(x, proj)  # autograd on: training keeps the plain path
    with torch.no_grad():
        assert fused.applies(x, proj)
        with fused.unfused():
            assert not fused.applies(x, proj)
        assert not fused.applies(x.bfloat16(), nn.Linear(8, 16).bfloat16())
        lora = add_lora(nn.Linear(8, 16), rank=2)
        assert not fused.applies(x, lora)  # a LoRA-wrapped projection is not a plain Linear
        with warnings.catch_warnings():  # flags() also sets oneDNN's TF32 switch, which warns on a CPU-only build
            warnings.simplefilter("ignore")
            with torch.backends.mkldnn.flags(enabled=False):
                assert not fused.applies(x, proj)
    y = fused.geglu(proj, x)  # with autograd: gradients flow through the plain path
    y.sum().backward()
    assert proj.weight.grad is not None


def test_install_swaps_diffusers_geglu_keeping_its_keys_and_output():
    from diffusers.models.activations import GEGLU as DiffusersGEGLU
    from diffusers.models.attention import FeedForward

    torch.manual_seed(0)
    ff = FeedForward(32, activation_fn="geglu")
    keys = list(ff.state_dict())
    x = torch.randn(2, 10, 32)
    with torch.no_grad():
        before = ff(x)
        assert fused.install(ff) == 1
        assert isinstance(ff.net[0], DiffusersGEGLU) and type(ff.net[0]) is not DiffusersGEGLU
        after = ff(x)
        with fused.unfused():
            unfused = ff(x)
    assert list(ff.state_dict()) == keys
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert torch.equal(unfused, before)
    assert fused.install(ff) == 0  # already swapped


def test_the_temporal_feed_forward_uses_it():
    torch.manual_seed(0)
    layer = GEGLU(16, 32)
    x = torch.randn(4, 6, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), plain(layer.proj, x), rtol=1e-5, atol=1e-5)
