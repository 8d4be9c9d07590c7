"""Sliding windows (videodiff.windows): how frames are cut, fused, and that one window is plain sampling."""

from __future__ import annotations

import logging

import pytest
import torch

from videodiff.errors import UserError
from videodiff.sampling import as_cond
from videodiff.windows import Windowed, WindowPlan, fuse_weights, plan_windows, window_indices

PROMPT = "a red circle moving right"


def coverage(frames: int, window: int, overlap: int, loop: bool, fuse: str) -> torch.Tensor:
    total = torch.zeros(frames)
    for w in window_indices(frames, window, overlap, loop):
        assert len(w) == min(window, frames) and len(set(w)) == len(w)  # no window shorter, no frame twice
        total.index_add_(0, torch.tensor(w), fuse_weights(len(w), fuse, overlap))
    return total


@pytest.mark.parametrize("fuse", ["pyramid", "flat", "overlap-linear"])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize(
    ("frames", "window", "overlap"), [(64, 16, 4), (37, 16, 4), (17, 16, 0), (10, 16, 4), (50, 8, 7)]
)
def test_every_frame_is_covered_with_positive_weight(frames, window, overlap, loop, fuse):
    assert (coverage(frames, window, overlap, loop, fuse) > 0).all()


def test_frames_not_a_multiple_of_the_stride_end_with_a_full_window_at_the_last_frame():
    windows = window_indices(37, 16, 4)  # stride 12: 0, 12, then 21 (not 24) so the last window ends at frame 36
    assert [w[0] for w in windows] == [0, 12, 21]
    assert windows[-1] == list(range(21, 37))


def test_frames_shorter_than_a_window_are_one_window_and_no_plan():
    assert window_indices(10, 16, 4) == [list(range(10))]
    assert plan_windows(10, window=None, overlap=None, train_frames=16, limit=32) is None
    assert plan_windows(16, window=None, overlap=None, train_frames=16, limit=32) is None
    plan = plan_windows(17, window=None, overlap=None, train_frames=16, limit=32)
    assert (plan.window, plan.overlap) == (16, 4)  # defaults: train_frames and a quarter of it


def test_loop_wraps_the_last_windows_around_to_the_first_frames():
    windows = window_indices(20, 8, 2, loop=True)  # stride 6: starts 0, 6, 12, 18
    assert [w[0] for w in windows] == [0, 6, 12, 18]
    assert windows[-1] == [18, 19, 0, 1, 2, 3, 4, 5]
    assert not any(0 in w and 19 in w for w in window_indices(20, 8, 2, loop=False))


def test_last_windows_weights_dominate_the_frames_only_it_covers():
    """The last window (moved back to end at the last frame) alone sets the frames past the one before it."""
    plan = WindowPlan(20, 16, 4, "pyramid")  # windows 0-15 and 4-19
    calls = []

    def which_window(x, t, context):
        calls.append(x.shape[2])
        return torch.full_like(x, float(len(calls)))

    out = Windowed(which_window, plan)(torch.zeros(1, 1, 20, 2, 2), torch.tensor(1), torch.zeros(1, 3, 4))
    per_frame = out[0, 0, :, 0, 0]
    assert calls == [16, 16]
    assert (per_frame[:4] == 1).all() and (per_frame[16:] == 2).all()
    middle = per_frame[4:16]
    assert ((middle > 1) & (middle < 2)).all()
    assert middle[0] < middle[-1]  # pyramid: the first window's middle frames weigh more near its middle


def test_pyramid_and_overlap_linear_weights():
    assert fuse_weights(6, "pyramid").tolist() == [1, 2, 3, 3, 2, 1]
    assert fuse_weights(6, "flat").tolist() == [1] * 6
    assert fuse_weights(8, "overlap-linear", 2).tolist() == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1, 2 / 3, 1 / 3])
    with pytest.raises(UserError, match="--fuse"):
        fuse_weights(4, "bogus")


@pytest.mark.parametrize("loop", [False, True])
def test_a_per_frame_denoiser_windowed_equals_it_unwindowed(loop):
    """Fusion is a weighted mean of the same per-frame outputs, so a frame-wise denoiser is unchanged."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 27, 4, 4)  # b=2: the guide's doubled batch

    def denoiser(x, t, cond):
        return torch.tanh(x) * t + as_cond(cond).context.mean()

    windowed = Windowed(denoiser, WindowPlan(27, 8, 3, "pyramid", loop))
    ctx = torch.randn(2, 5, 7)
    torch.testing.assert_close(windowed(x, torch.tensor(3.0), ctx), denoiser(x, torch.tensor(3.0), ctx))


def test_per_frame_context_is_sliced_to_each_windows_frames():
    frames = 21
    context = torch.arange(frames, dtype=torch.float32).view(1, frames, 1, 1).expand(2, frames, 3, 4)  # [b f n d]
    seen = []

    def denoiser(x, t, cond):
        ctx = cond.context
        assert ctx.shape[:2] == (2, x.shape[2])
        seen.append(ctx[0, :, 0, 0].tolist())
        return ctx[:, None, :, :1, 0].expand(-1, x.shape[1], -1, x.shape[3]).unsqueeze(-1).expand_as(x).clone()

    plan = WindowPlan(frames, 8, 2)
    out = Windowed(denoiser, plan)(torch.zeros(2, 1, frames, 1, 1), torch.tensor(1), context)
    assert seen == [[float(i) for i in w] for w in plan.indices()]
    assert out[0, 0, :, 0, 0].tolist() == pytest.approx(list(range(frames)))


def test_windows_and_frames_beyond_their_limits_are_refused():
    with pytest.raises(UserError, match="1024"):
        plan_windows(1025, window=None, overlap=None, train_frames=16, limit=32)
    with pytest.raises(UserError, match="positional encoding of 32"):
        plan_windows(64, window=33, overlap=None, train_frames=16, limit=32)
    with pytest.raises(UserError, match="--overlap"):
        plan_windows(64, window=16, overlap=16, train_frames=16, limit=32)


def test_a_window_of_the_whole_video_is_plain_sampling_exactly(tiny_pipe):
    kw = dict(num_frames=6, height=16, width=16, num_inference_steps=2, seed=3, guidance_scale=3.0)
    plain = tiny_pipe(PROMPT, **kw, output_type="latent").latents
    windowed = tiny_pipe(PROMPT, **kw, window=6, output_type="latent").latents
    assert torch.equal(plain, windowed)
    # the wrapper itself, given one window of every frame, calls the U-Net once on the input as it is
    x, t, ctx = torch.randn(2, 4, 6, 2, 2), torch.tensor(500), torch.randn(2, 77, 32)
    wrapped = Windowed(tiny_pipe.unet, WindowPlan(6, 6, 0))
    assert torch.equal(wrapped(x, t, ctx), tiny_pipe.unet(x, t, ctx))


def test_more_frames_than_a_window_render_through_windows_with_guidance(tiny_pipe):
    calls = []
    unet = tiny_pipe.unet
    original = unet.forward

    def spy(sample, timestep, context):
        calls.append(tuple(sample.shape))
        return original(sample, timestep, context)

    unet.forward = spy
    try:
        result = tiny_pipe(PROMPT, num_frames=11, window=4, overlap=1, height=16, width=16, num_inference_steps=2,
                           seed=1, guidance_scale=3.0)  # fmt: skip
    finally:
        del unet.forward
    assert result.frames.shape == (11, 16, 16, 3)
    assert calls and all(shape[0] == 2 and shape[2] == 4 for shape in calls)  # CFG's doubled batch, 4 frames at most
    assert len(calls) == 2 * len(WindowPlan(11, 4, 1).indices())


# ----------------------------------------------------------------------------- windows in the temporal layers only


def _block(seed: int = 0):
    from videodiff.unet.temporal import TemporalBlock

    torch.manual_seed(seed)
    return TemporalBlock(dim=16, heads=2, max_frames=16).eval()


def _windows(frames: int, window: int, overlap: int, fuse: str = "pyramid"):
    plan = WindowPlan(frames, window, overlap, fuse)
    return [(torch.tensor(i), w) for i, w in zip(plan.indices(), plan.weights())]


def test_temporal_windows_attend_within_each_window_and_fuse_before_the_feed_forward():
    block, x = _block(), torch.randn(3, 10, 16)
    windows = _windows(10, 4, 1)
    with torch.no_grad():
        out = block(x, windows)
        fused, total = torch.zeros_like(x), torch.zeros(10)
        for index, weight in windows:  # positions restart at each window's first frame
            fused[:, index] += block.attend(x[:, index]) * weight.view(1, -1, 1)
            total[index] += weight
        fused = fused / total.view(1, -1, 1)
        torch.testing.assert_close(out, fused + block.ff(block.norm3(fused)), rtol=1e-5, atol=1e-6)
        # a frame only hears the frames of its own windows: frame 0 (window 0-3) cannot reach frames 4-9
        nudged = x.clone()
        nudged[:, 0] += torch.randn(16)  # not a constant: the norms would remove that
        moved = block(nudged, windows)
        assert torch.equal(moved[:, 4:], out[:, 4:]) and not torch.allclose(moved[:, 1:4], out[:, 1:4])
        # without windows frame 0 reaches every frame
        assert not torch.allclose(block(nudged)[:, 9], block(x)[:, 9])


def test_one_temporal_window_of_every_frame_is_plain_attention_bitwise():
    block, x = _block(1), torch.randn(2, 7, 16)
    with torch.no_grad():
        assert torch.equal(block(x, [(torch.arange(7), torch.ones(7))]), block(x))


def test_temporal_windows_let_the_unet_run_past_its_positional_limit_only_while_set(tiny_pipe):
    unet = tiny_pipe.unet
    frames = unet.max_frames + 5
    x, t, ctx = torch.randn(1, 4, frames, 2, 2), torch.tensor(500), torch.randn(1, 77, 32)
    with pytest.raises(UserError, match="limit"):
        unet(x, t, ctx)
    plan = WindowPlan(frames, unet.max_frames, 4)
    with torch.no_grad(), unet.motion.temporal_windows(frames, list(zip(plan.indices(), plan.weights()))):
        out = unet(x, t, ctx)
        with pytest.raises(UserError, match="limit"):  # windows are for `frames` frames, not any other count
            unet(x[:, :, :-1], t, ctx)
    assert out.shape == x.shape and torch.isfinite(out).all()
    from videodiff.unet.temporal import TemporalTransformer

    modules = [m for m in unet.motion.modules() if isinstance(m, TemporalTransformer)]
    assert unet.motion.window_frames is None and modules and all(m.windows is None for m in modules)
    with pytest.raises(ValueError, match="window of"):
        with unet.motion.temporal_windows(frames, [(list(range(frames)), torch.ones(frames))]):
            pass


def test_window_layers_temporal_runs_the_unet_once_on_every_frame(tiny_pipe):
    calls = []
    unet = tiny_pipe.unet
    original = unet.forward

    def spy(sample, timestep, context):
        calls.append((tuple(sample.shape), unet.motion.window_frames))
        return original(sample, timestep, context)

    kw = dict(num_frames=11, window=4, overlap=1, height=16, width=16, num_inference_steps=2, seed=1,
              guidance_scale=3.0, output_type="latent")  # fmt: skip
    unet.forward = spy
    try:
        temporal = tiny_pipe(PROMPT, **kw, window_layers="temporal")
    finally:
        del unet.forward
    assert calls == [((2, 4, 11, 8, 8), 11)] * 2  # one call per step: CFG's doubled batch, all 11 frames
    whole = tiny_pipe(PROMPT, **kw)
    assert temporal.settings["window_layers"] == "temporal" and whole.settings["window_layers"] == "unet"
    assert torch.isfinite(temporal.latents).all() and not torch.equal(temporal.latents, whole.latents)
    # a video that fits one window is plain sampling either way
    one = dict(kw, num_frames=4)
    assert torch.equal(tiny_pipe(PROMPT, **one, window_layers="temporal").latents, tiny_pipe(PROMPT, **one).latents)


def test_window_layers_is_a_closed_choice():
    with pytest.raises(UserError, match="--window-layers"):
        plan_windows(64, window=16, overlap=4, layers="spatial", train_frames=16, limit=32)


def test_a_render_longer_than_the_motion_modules_names_its_windows_once(tiny_pipe, caplog):
    assert tiny_pipe.train_frames == 16
    kw = dict(height=16, width=16, num_inference_steps=1, seed=3, output_type="latent")
    with caplog.at_level(logging.WARNING, logger="videodiff"):
        tiny_pipe(PROMPT, num_frames=20, **kw)
    said = [r.getMessage() for r in caplog.records if "window" in r.getMessage()]
    assert len(said) == 1 and "windows of 16 frames overlapping by 4" in said[0], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="videodiff"):
        tiny_pipe(PROMPT, num_frames=8, **kw)  # one window: nothing to say
    assert not [r for r in caplog.records if "window" in r.getMessage()]
