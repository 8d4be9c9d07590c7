"""Speed work that must not change results: padded narrow attention heads, the CPU heap policy, VAE chunks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from videodiff import heap, vae
from videodiff.unet import temporal
from videodiff.unet.inflate import FrameAttention


def _spy_sdpa(monkeypatch) -> list[tuple[int, ...]]:
    """Record the query shape of every ``F.scaled_dot_product_attention`` call."""
    shapes, real = [], F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        shapes.append(tuple(q.shape))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return shapes


@pytest.mark.parametrize("d,keys,padded", [(8, 256, True), (4, 77, True), (8, 16, False), (16, 256, False)])
@torch.no_grad()
def test_narrow_heads_are_padded_for_long_keys_only_and_give_the_same_attention(monkeypatch, d, keys, padded):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 40, d), torch.randn(3, 2, keys, d), torch.randn(3, 2, keys, d)
    expected = F.scaled_dot_product_attention(q, k, v)
    shapes = _spy_sdpa(monkeypatch)
    with temporal.padded_heads(True):
        got = temporal.sdpa(q, k, v)
        assert shapes == [(3, 2, 40, temporal.PAD_HEAD_DIM if padded else d)]
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        # an explicit scale is kept, not replaced by the padded width's
        torch.testing.assert_close(
            temporal.sdpa(q, k, v, scale=0.1), F.scaled_dot_product_attention(q, k, v, scale=0.1), rtol=1e-5, atol=1e-6
        )
    shapes.clear()
    with temporal.padded_heads(False):
        torch.testing.assert_close(temporal.sdpa(q, k, v), expected, rtol=1e-5, atol=1e-6)
    assert shapes == [(3, 2, 40, d)]


@torch.no_grad()
def test_by_default_both_widths_are_timed_once_per_shape_and_the_faster_kept(monkeypatch):
    torch.manual_seed(3)
    monkeypatch.setattr(temporal, "_PAD_PICKS", {})
    q, k, v = torch.randn(2, 2, 30, 8), torch.randn(2, 2, 90, 8), torch.randn(2, 2, 90, 8)
    expected = F.scaled_dot_product_attention(q, k, v)
    shapes = _spy_sdpa(monkeypatch)
    torch.testing.assert_close(temporal.sdpa(q, k, v), expected, rtol=1e-5, atol=1e-6)
    assert sorted(shapes) == [(2, 2, 30, 8), (2, 2, 30, temporal.PAD_HEAD_DIM)]  # both, once
    (pick,) = temporal._PAD_PICKS.values()
    shapes.clear()
    for _ in range(2):
        torch.testing.assert_close(temporal.sdpa(q, k, v), expected, rtol=1e-5, atol=1e-6)
    assert shapes == [(2, 2, 30, temporal.PAD_HEAD_DIM if pick else 8)] * 2  # the kept one only


def test_attention_under_autograd_is_not_padded_and_passes_plain_gradients(monkeypatch):
    """Training keeps the unpadded kernel: its runs must stay bitwise reproducible (see PAD_HEAD_DIM)."""
    torch.manual_seed(1)
    leaves = [torch.randn(2, 2, 70, 8, requires_grad=True) for _ in range(3)]
    shapes = _spy_sdpa(monkeypatch)
    temporal.sdpa(*leaves).square().sum().backward()
    assert shapes == [(2, 2, 70, 8)]
    padded = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    F.scaled_dot_product_attention(*leaves).square().sum().backward()
    for got, want in zip(padded, (t.grad for t in leaves)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def _attention(dim=32, heads=8, cross=None):
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    attn = Attention(dim, cross_attention_dim=cross, heads=heads, dim_head=dim // heads).eval()
    attn.set_processor(AttnProcessor2_0())
    return attn


def test_frame_attention_matches_diffusers_for_self_and_per_video_cross_attention():
    torch.manual_seed(2)
    frames, x = 3, torch.randn(2 * 3, 100, 32)
    context = torch.randn(2, 77, 24)
    with torch.no_grad():
        selfattn = _attention()
        expected = selfattn(x)
        selfattn.set_processor(FrameAttention())
        torch.testing.assert_close(selfattn(x), expected, rtol=1e-5, atol=1e-6)

        cross = _attention(cross=24)
        expected = cross(x, encoder_hidden_states=context.repeat_interleave(frames, 0))
        cross.set_processor(FrameAttention())
        torch.testing.assert_close(cross(x, encoder_hidden_states=context), expected, rtol=1e-5, atol=1e-6)


def test_frame_attention_hands_masks_to_diffusers(monkeypatch):
    attn = _attention()
    processor = FrameAttention()
    calls = []
    monkeypatch.setattr(processor, "fallback", lambda *args, **kwargs: calls.append(args) or args[1])
    attn.set_processor(processor)
    x = torch.randn(2, 10, 32)
    mask = torch.ones(2, 10, dtype=torch.bool)
    with torch.no_grad():
        attn(x, attention_mask=mask)
    assert len(calls) == 1


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_render_heap_keeps_freed_blocks_on_cpu_and_releases_them_after_even_on_error(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(heap, "_glibc", lambda: fake)
    monkeypatch.delenv("VIDEODIFF_HEAP", raising=False)
    with pytest.raises(RuntimeError, match="boom"):
        with heap.render_heap(torch.device("cpu")):
            assert fake.calls == [
                ("mallopt", heap.M_MMAP_THRESHOLD, heap.MMAP_THRESHOLD),
                ("mallopt", heap.M_TRIM_THRESHOLD, heap.TRIM_THRESHOLD),
            ]
            raise RuntimeError("boom")
    assert fake.calls[-1] == ("malloc_trim", 0)


def test_render_heap_leaves_gpus_and_opted_out_processes_alone(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(heap, "_glibc", lambda: fake)
    with heap.render_heap(torch.device("cuda")):
        pass
    monkeypatch.setenv("VIDEODIFF_HEAP", "system")
    assert not heap.enabled()
    with heap.render_heap("cpu"):
        pass
    assert fake.calls == []


@pytest.mark.skipif(heap._glibc() is None, reason="glibc only")
def test_heap_policy_applies_on_glibc(monkeypatch):
    monkeypatch.delenv("VIDEODIFF_HEAP", raising=False)
    assert heap.keep_freed()  # mallopt accepted both thresholds
    heap.release()


def test_a_render_uses_the_heap_policy_and_decodes_two_frames_at_a_time_on_cpu(tiny_pipe, monkeypatch):
    entered, chunks = [], []
    real_heap, real_decode = heap.render_heap, vae.decode

    def spy_heap(device):
        entered.append(torch.device(device).type)
        return real_heap(device)

    def spy_decode(model, latents, chunk=16):
        chunks.append(chunk)
        return real_decode(model, latents, chunk)

    monkeypatch.setattr(heap, "render_heap", spy_heap)
    monkeypatch.setattr(vae, "decode", spy_decode)
    auto = tiny_pipe("a cat", num_frames=3, num_inference_steps=2, seed=3)
    one = tiny_pipe("a cat", num_frames=3, num_inference_steps=2, seed=3, decode_chunk=1)
    assert entered == ["cpu", "cpu"] and chunks == [2, 1]
    assert auto.settings["decode_chunk"] is None
    assert abs(auto.frames.astype(int) - one.frames.astype(int)).max() <= 1
    assert vae.default_chunk("cuda") == 16


def test_bf16_on_cpu_is_an_opt_in_that_stays_close_to_fp32(tiny_model, tiny_motion, tiny_pipe):
    from videodiff import load_pipeline

    half = load_pipeline(str(tiny_model), str(tiny_motion), device="cpu", dtype="bf16")
    assert half.dtype == torch.bfloat16 and tiny_pipe.dtype == torch.float32
    settings = dict(num_frames=4, num_inference_steps=4, seed=5)
    a, b = half("a cat", **settings).frames.astype(int), tiny_pipe("a cat", **settings).frames.astype(int)
    delta = abs(a - b)
    assert 0 < delta.mean() < 4, delta.mean()  # it is a different computation, but the same video


def test_vae_decode_builds_no_autograd_graph(tiny_pipe):
    latents = torch.randn(1, 4, 2, 8, 8, requires_grad=True)  # with autograd on, the output would need grad
    assert not vae.decode(tiny_pipe.vae, latents, chunk=1).requires_grad
