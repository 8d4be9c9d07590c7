"""The conditioning object: a field says once how it batches, slices and moves, and reaches the U-Net through
every wrapper; the U-Net's extra inputs (residuals, token sets) against diffusers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

from videodiff import sampling
from videodiff.cache import FeatureCache
from videodiff.errors import UserError
from videodiff.sampling import Cond, Residuals, TensorField, TokenSet, TokenSets
from videodiff.schedulers import make_scheduler
from videodiff.unet import VideoUNet
from videodiff.unet.inflate import FrameAttention, TokenProjections, cross_attentions
from videodiff.weights.motion_formats import load_motion_folder
from videodiff.windows import Windowed, WindowPlan

# ------------------------------------------------------------------------ a new field, defined here


@dataclass(frozen=True)
class FrameTag:
    """A per-frame input [b f] unknown to videodiff: the conditional half holds 1000 + the frame's index, the
    unconditional half -(index + 1). It implements the Field protocol itself (no TensorField)."""

    cond: torch.Tensor
    uncond: torch.Tensor | None

    def paired(self) -> FrameTag:
        return FrameTag(torch.cat([self.uncond, self.cond]), None)

    def frames(self, index: torch.Tensor) -> FrameTag:
        pick = (lambda x: None if x is None else x.index_select(1, index))  # noqa: E731
        return FrameTag(pick(self.cond), pick(self.uncond))

    def to(self, device=None, dtype=None) -> FrameTag:
        return self


def test_a_new_per_frame_field_reaches_the_unet_through_guidance_windows_and_the_cache(tiny_pipe):
    """Guidance batches it [uncond, cond], each window gets its own frames, cached steps still carry it: and not one
    line of the loop, the guides, the windows or the cache knows the field."""
    unet, frames, steps = tiny_pipe.unet, 11, 4
    index = torch.arange(frames, dtype=torch.float32)[None]
    cond = Cond.text(tiny_pipe.encode("a red circle"), tiny_pipe.encode("")).with_fields(
        tag=FrameTag(1000 + index, -(index + 1))
    )
    seen = []
    real_begin = unet._begin

    def spy(sample, timestep, c):  # every U-Net call, full or cached, starts here
        seen.append(c["tag"].cond.clone())
        return real_begin(sample, timestep, c)

    plan = WindowPlan(frames, 4, 1)
    cache = FeatureCache(unet, 2)
    latents = torch.randn(1, 4, frames, 2, 2, generator=torch.Generator().manual_seed(0))
    unet._begin = spy
    try:
        with torch.no_grad():
            sampling.sample(
                Windowed(cache, plan),
                latents,
                make_scheduler("ddim", tiny_pipe.parts.scheduler_config),
                steps=steps,
                guide=sampling.guide_for(3.0, cond),
                on_step=cache.hook(),
                progress=False,
            )
    finally:
        del unet._begin
    windows = plan.indices()
    assert len(seen) == steps * len(windows) and cache.cached_steps == (steps // 2) * len(windows)
    for k, tag in enumerate(seen):
        w = torch.tensor(windows[k % len(windows)], dtype=torch.float32)
        assert tag.shape == (2, len(w))  # both guidance halves, this window's frames only
        assert torch.equal(tag[0], -(w + 1)) and torch.equal(tag[1], 1000 + w)


# ------------------------------------------------------------------------ the object itself


def test_fields_pair_slice_and_move_by_their_own_rule():
    text, uncond = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    per_frame = torch.randn(1, 6, 3, 8)
    cond = Cond.text(text, uncond).with_fields(
        maps=TensorField(torch.randn(1, 3, 6, 4, 4), frame_axis=2),
        tokens=TokenSets((TokenSet("a", per_frame, torch.zeros_like(per_frame), 0.5),)),
        res=Residuals((torch.randn(1, 2, 6, 4, 4),)),
    )
    paired = cond.paired()
    assert torch.equal(paired.context, torch.cat([uncond, text]))
    assert torch.equal(paired["maps"], cond["maps"].repeat(2, 1, 1, 1, 1))  # no uncond: both halves the same
    assert torch.equal(paired["tokens"].sets[0].tokens[0], torch.zeros_like(per_frame[0]))
    assert paired["tokens"].sets[0].scale == 0.5
    index = torch.tensor([4, 1])
    cut = cond.frames(index)
    assert torch.equal(cut.context, text)  # per video: every window the same
    assert torch.equal(cut["maps"], cond["maps"][:, :, [4, 1]])
    assert torch.equal(cut["tokens"].sets[0].tokens, per_frame[:, [4, 1]])
    assert torch.equal(cut["res"].values[0], cond["res"].values[0][:, :, [4, 1]])
    half = cond.with_fields(ids=TensorField(torch.tensor([[3, 4]]))).to(dtype=torch.float16)
    assert half.context.dtype == torch.float16 and half["ids"].dtype == torch.int64  # only floats change dtype
    travel = Cond.text(torch.randn(1, 6, 5, 8), uncond)  # one negative prompt for a prompt per frame
    assert travel.uncond.shape == (1, 5, 8) and travel.frames(index).uncond.shape == (1, 5, 8)  # kept once
    assert torch.equal(travel.frames(index).paired().context[0], uncond[0, None].expand(2, 5, 8))


def test_malformed_conditioning_is_refused():
    with pytest.raises(ValueError, match="context"):
        Cond.text(torch.randn(5, 8))
    with pytest.raises(ValueError, match="uncond"):
        TensorField(torch.randn(1, 3), torch.randn(1, 4))
    with pytest.raises(TypeError, match="not a Field"):
        Cond.text(torch.randn(1, 5, 8)).with_fields(bad=torch.randn(3))
    with pytest.raises(ValueError, match="unconditional"):
        sampling.ClassifierFreeGuidance(3.0, Cond.text(torch.randn(1, 5, 8)))
    assert isinstance(sampling.guide_for(3.0, Cond.text(torch.randn(1, 5, 8))), sampling.NoGuidance)


# ------------------------------------------------------------------------ residuals (ControlNet, SparseCtrl)


@pytest.fixture(scope="module")
def unet2d(tiny_model):
    return UNet2DConditionModel.from_pretrained(tiny_model / "unet").eval()


def _residuals(unet: VideoUNet, x: torch.Tensor, context: torch.Tensor, seed: int = 0):
    """Random residuals shaped like the U-Net's skips ([b c f h w]) and middle output, from one real pass's shapes."""
    shapes = []
    real = unet._down

    def record(x_, run, levels=None):
        out = real(x_, run, levels)
        shapes.extend(tuple(s.shape) for s in run.skips)
        shapes.append(tuple(out.shape))
        return out

    unet._down = record
    try:
        with torch.no_grad():
            unet(x, 500, context)
    finally:
        del unet._down
    g = torch.Generator().manual_seed(seed)
    b, f = x.shape[0], x.shape[2]
    video = [torch.randn(b, s[1], f, *s[2:], generator=g) for s in shapes]
    return video[:-1], video[-1]


def test_residuals_match_diffusers_unet_motion_model(unet2d, tiny_motion):
    adapter = MotionAdapter.from_pretrained(tiny_motion)
    reference = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
    ours = VideoUNet(unet2d, load_motion_folder(tiny_motion)).eval()
    ours.set_attention_backend("sdpa")
    torch.manual_seed(0)
    frames = 5
    x, context = torch.randn(2, 4, frames, 16, 16), torch.randn(2, 77, 32)
    down, mid = _residuals(ours, x, context)
    fold = lambda r: r.permute(0, 2, 1, 3, 4).reshape(-1, *r.shape[1:2], *r.shape[3:])  # noqa: E731
    cond = Cond.text(context).with_fields(down_residuals=Residuals(tuple(down)), mid_residual=TensorField(mid, None, 2))
    with torch.no_grad():
        expected = reference(
            x,
            500,
            encoder_hidden_states=context.repeat_interleave(frames, 0),
            down_block_additional_residuals=tuple(fold(r) for r in down),
            mid_block_additional_residual=fold(mid),
        ).sample
        got = ours(x, 500, cond)
        plain = ours(x, 500, context)
    assert (got - plain).abs().max() > 1e-2  # the residuals matter
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    zeros = cond.with_fields(down_residuals=Residuals(tuple(torch.zeros_like(r) for r in down)))
    with torch.no_grad():
        assert torch.equal(ours(x, 500, zeros.without("mid_residual")), plain)
    with pytest.raises(ValueError, match="skip connections"):
        ours(x, 500, cond.with_fields(down_residuals=Residuals(tuple(down[:-1]))))


def test_a_cached_step_adds_the_shallow_residuals_only(tiny_pipe):
    unet = tiny_pipe.unet
    x, context = torch.randn(1, 4, 3, 8, 8), tiny_pipe.encode("a red circle")
    down, mid = _residuals(unet, x, context, seed=1)
    with torch.no_grad():
        _, deep = unet.forward_split(x, 500, context, 1)
        shallow = len([s for s in range(len(down)) if down[s].shape[-1] == down[0].shape[-1]])

        def cached(down_, mid_):
            cond = Cond.text(context).with_fields(
                down_residuals=Residuals(tuple(down_)), mid_residual=TensorField(mid_, None, 2)
            )
            return unet.forward_split(x, 400, cond, 1, deep)[0]

        base = cached(down, mid)
        deeper = [r if i < shallow else r * 5 for i, r in enumerate(down)]
        assert torch.equal(cached(deeper, mid * 5), base)  # below the cut: the kept features stand in
        nudged = [r * 5 if i == 1 else r for i, r in enumerate(down)]
        assert not torch.allclose(cached(nudged, mid), base)  # a shallow skip's residual still counts


# ------------------------------------------------------------------------ token sets (IP-Adapter)


def _projections(unet2d, token_dim: int, seed: int) -> dict[str, TokenProjections]:
    torch.manual_seed(seed)
    layers = cross_attentions(unet2d)
    return {name: TokenProjections(token_dim, attn.to_k.out_features) for name, attn in layers.items()}


def test_token_attention_matches_diffusers_ip_adapter_processor(unet2d):
    name, attn = next(iter(cross_attentions(unet2d).items()))
    inner, dim = attn.to_q.out_features, attn.to_k.in_features
    projections = TokenProjections(dim, inner)
    reference = IPAdapterAttnProcessor2_0(attn.to_q.in_features, dim, num_tokens=(4,), scale=0.7)
    reference.to_k_ip[0].load_state_dict(projections.to_k.state_dict())
    reference.to_v_ip[0].load_state_dict(projections.to_v.state_dict())
    attn.token_projections = torch.nn.ModuleDict({"ip": projections})
    try:
        frames = 3
        hidden = torch.randn(2 * frames, 10, attn.to_q.in_features)
        text, tokens = torch.randn(2, 7, dim), torch.randn(2, 4, dim)
        with torch.no_grad():
            got = FrameAttention()(attn, hidden, text, token_sets=[("ip", tokens, 0.7)])
            expected = reference(
                attn, hidden, (text.repeat_interleave(frames, 0), [tokens.repeat_interleave(frames, 0)])
            )
            plain = FrameAttention()(attn, hidden, text)
        assert (got - plain).abs().max() > 1e-3
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    finally:
        del attn.token_projections


def test_token_sets_through_the_video_unet(unet2d, tiny_motion):
    ours = VideoUNet(unet2d, load_motion_folder(tiny_motion)).eval()
    ours.set_attention_backend("sdpa")
    ours.set_token_projections("ip", _projections(unet2d, 24, seed=3))
    try:
        frames = 4
        x, context, tokens = torch.randn(1, 4, frames, 8, 8), torch.randn(1, 77, 32), torch.randn(1, 4, 24)

        def run(*sets: TokenSet) -> torch.Tensor:
            with torch.no_grad():
                return ours(x, 500, Cond.text(context).with_fields(token_sets=TokenSets(sets)))

        with torch.no_grad():  # as run(): inference takes the fused paths (videodiff.unet.fused), autograd not
            plain = ours(x, 500, context)
        assert torch.equal(run(TokenSet("ip", tokens, scale=0.0)), plain)
        per_video = run(TokenSet("ip", tokens))
        assert (per_video - plain).abs().max() > 1e-3
        same_each_frame = tokens[:, None].expand(-1, frames, -1, -1)
        torch.testing.assert_close(run(TokenSet("ip", same_each_frame)), per_video, rtol=1e-5, atol=1e-5)
        with pytest.raises(UserError, match="'other'"):
            run(TokenSet("other", tokens))
    finally:
        for attn in cross_attentions(unet2d).values():
            del attn.token_projections


def test_token_projections_must_cover_every_cross_attention(unet2d, tiny_motion):
    ours = VideoUNet(unet2d, load_motion_folder(tiny_motion))
    some = dict(list(_projections(unet2d, 24, seed=0).items())[:1])
    with pytest.raises(UserError, match="do not fit"):
        ours.set_token_projections("ip", some)
