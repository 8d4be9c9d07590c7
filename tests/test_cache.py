"""Feature caching (videodiff.cache, --cache N): the split U-Net, which steps run the deep blocks, windows, passes."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import assert_user_error, invoke, ok, read_json

from videodiff import cache as feature_cache
from videodiff.cache import FeatureCache
from videodiff.config import MAX_CACHE
from videodiff.errors import UserError
from videodiff.windows import Windowed, WindowPlan

PROMPT = "a red circle moving right"
SMALL = dict(num_frames=4, height=16, width=16, seed=1, guidance_scale=3.0, output_type="latent")


class BlockCalls:
    """Counts the calls of the deep blocks (the deepest down block's, the middle block's and the first up block's
    first ResNet: each must run as often as the others) and of the shallowest down block's first ResNet; and the
    batch (of frames) each deep call had."""

    def __init__(self, pipe):
        unet = pipe.unet.unet
        self.deep, self.shallow, self.others = [], [], []
        deep = (unet.down_blocks[-1].resnets[0], unet.up_blocks[0].resnets[0])
        self.handles = [
            unet.mid_block.resnets[0].register_forward_hook(lambda m, args, out: self.deep.append(args[0].shape[0])),
            unet.down_blocks[0].resnets[0].register_forward_hook(lambda m, a, o: self.shallow.append(a[0].shape[0])),
            *(m.register_forward_hook(lambda m, a, o: self.others.append(m)) for m in deep),
        ]

    def __enter__(self) -> BlockCalls:
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def inputs(frames: int = 4, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, frames, 8, 8, generator=g), torch.randn(batch, 77, 32, generator=g)


# ---------------------------------------------------------------- the split U-Net


@torch.no_grad()
def test_a_full_pass_equals_forward_and_reusing_its_own_features_reproduces_it_bitwise(tiny_pipe):
    unet = tiny_pipe.unet
    x, ctx = inputs()
    t = torch.tensor(500)
    plain = unet(x, t, ctx)
    full, deep = unet.forward_split(x, t, ctx, 1)
    again, kept = unet.forward_split(x, t, ctx, 1, deep)  # only the shallow blocks run, fed the same deep features
    assert torch.equal(full, plain) and torch.equal(again, plain) and kept is deep
    assert deep.shape[0] == x.shape[0] * x.shape[2]  # (b f): per frame, both guidance branches
    other, _ = unet.forward_split(x, t, ctx, 1, torch.zeros_like(deep))
    assert not torch.allclose(other, plain)  # the deep features really stand in for the blocks below the cut
    with pytest.raises(ValueError, match="level"):
        unet.forward_split(x, t, ctx, len(unet.unet.down_blocks))
    with pytest.raises(ValueError, match="batch"):
        unet.forward_split(x[:1], t, ctx[:1], 1, deep)


@torch.no_grad()
def test_feature_cache_of_one_is_the_unet_and_reuses_nothing(tiny_pipe):
    x, ctx = inputs()
    cache = FeatureCache(tiny_pipe.unet, 1)
    for i, t in enumerate((900, 500, 100)):
        assert torch.equal(cache(x, torch.tensor(t), ctx), tiny_pipe.unet(x, torch.tensor(t), ctx))
        cache.end_step(i)
    assert (cache.full_steps, cache.cached_steps, cache.features) == (3, 0, {})


def test_cache_one_equals_no_cache_bitwise(tiny_pipe):
    plain = tiny_pipe(PROMPT, num_inference_steps=5, **SMALL).latents
    assert torch.equal(tiny_pipe(PROMPT, num_inference_steps=5, cache=1, **SMALL).latents, plain)


# ---------------------------------------------------------------- which steps run the deep blocks


@pytest.mark.parametrize(("steps", "every", "full"), [(6, 2, 3), (5, 2, 3), (6, 3, 2), (5, 5, 1), (4, 1, 4)])
def test_deep_blocks_run_on_every_nth_step_only(tiny_pipe, steps, every, full):
    with BlockCalls(tiny_pipe) as calls:
        tiny_pipe(PROMPT, num_inference_steps=steps, cache=every, **SMALL)
    assert len(calls.deep) == full and len(calls.shallow) == steps  # the shallow level runs every step
    assert len(calls.others) == 2 * full  # the deep down and up blocks run with the middle block
    assert set(calls.deep) == {2 * 4}  # both guidance branches' 4 frames in one call


def test_the_steps_alternate_full_and_cached(tiny_pipe):
    pattern = []
    real = tiny_pipe.unet.forward_split

    def spy(x, t, ctx, level, deep=None):
        pattern.append("C" if deep is not None else "F")
        return real(x, t, ctx, level, deep)

    tiny_pipe.unet.forward_split = spy
    try:
        tiny_pipe(PROMPT, num_inference_steps=7, cache=3, **SMALL)
    finally:
        del tiny_pipe.unet.forward_split
    assert "".join(pattern) == "FCCFCCF"


@pytest.mark.parametrize("every", [2, 3, 5])
def test_caching_differs_from_uncached_but_stays_close(tiny_pipe, every):
    plain = tiny_pipe(PROMPT, num_inference_steps=10, **SMALL).latents
    cached = tiny_pipe(PROMPT, num_inference_steps=10, cache=every, **SMALL).latents
    moved = (cached - plain).abs().mean()
    assert torch.isfinite(cached).all() and moved > 0
    assert moved < 0.05 * plain.abs().mean()  # measured: about 1-2 % of the latents' size on this random model


def test_a_batch_that_changes_between_steps_runs_the_whole_unet(tiny_pipe):
    """Features kept for guidance's batch of 2 do not serve a call with one branch (a guidance interval)."""
    x, ctx = inputs()
    cache = FeatureCache(tiny_pipe.unet, 2)
    with torch.no_grad():
        cache(x, torch.tensor(900), ctx)
        cache.end_step(0)
        out = cache(x[:1], torch.tensor(800), ctx[:1])
        assert torch.equal(out, tiny_pipe.unet(x[:1], torch.tensor(800), ctx[:1]))
    assert (cache.full_steps, cache.cached_steps) == (2, 0)


# ---------------------------------------------------------------- windows, FreeInit, img2vid


@torch.no_grad()
def test_each_window_reuses_its_own_features(tiny_pipe):
    unet, plan = tiny_pipe.unet, WindowPlan(11, 4, 1)
    windows = [torch.tensor(w) for w in plan.indices()]
    assert len(windows) > 2
    (x0, ctx), (x1, _) = inputs(11), inputs(11, seed=1)
    t0, t1 = torch.tensor(900), torch.tensor(700)
    cached = Windowed(FeatureCache(unet, 2), plan)
    cached(x0, t0, ctx)
    cached.denoiser.end_step(0)
    got = cached(x1, t1, ctx)
    assert cached.denoiser.cached_steps == len(windows)
    # the reference: window k at the second step fed window k's features from the first
    deep = [unet.forward_split(x0.index_select(2, w), t0, ctx, 1)[1] for w in windows]
    calls = iter(range(len(windows)))
    want = Windowed(lambda x, t, c: unet.forward_split(x, t, c, 1, deep[next(calls)])[0], plan)(x1, t1, ctx)
    assert torch.equal(got, want)


def test_windows_render_with_caching(tiny_pipe):
    plan = WindowPlan(11, 4, 1)
    with BlockCalls(tiny_pipe) as calls:
        result = tiny_pipe(PROMPT, **{**SMALL, "num_frames": 11}, window=4, overlap=1, num_inference_steps=4, cache=2)
    assert result.latents.shape[2] == 11 and torch.isfinite(result.latents).all()
    assert len(calls.deep) == 2 * len(plan.indices()) and len(calls.shallow) == 4 * len(plan.indices())


def test_free_init_passes_each_start_a_fresh_cache(tiny_pipe, monkeypatch):
    made, steps = [], []
    real = feature_cache.FeatureCache

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(feature_cache, "FeatureCache", spy)
    tiny_pipe(PROMPT, num_inference_steps=4, cache=2, free_init=2, **SMALL,
              on_step=lambda i, total, t, tn, x, p: steps.append((p, i)))  # fmt: skip
    assert len(made) == 3 and all((c.full_steps, c.cached_steps) == (2, 2) for c in made)
    assert steps == [(p, i) for p in range(3) for i in range(4)]  # the caller's hook still sees every step


def test_img2vid_starts_with_a_full_step_where_sampling_starts(tiny_pipe):
    import numpy as np

    picture = np.full((16, 16, 3), 200, np.uint8)
    with BlockCalls(tiny_pipe) as calls:
        result = tiny_pipe.img2vid(picture, PROMPT, strength=0.5, cache=2, **{**SMALL, "num_inference_steps": 6})
    assert len(calls.shallow) == 3 and len(calls.deep) == 2  # 3 of 6 steps run: full, cached, full
    keys = tiny_pipe.encode_pictures(picture[None])
    assert torch.equal(result.latents[:, :, 0], keys[:, :, 0])  # the pinned frame is still held


# ---------------------------------------------------------------- settings and the command line


@pytest.mark.parametrize("bad", [0, -1, MAX_CACHE + 1, 2.5, True])
def test_bad_cache_values_are_user_errors(tiny_pipe, bad):
    with pytest.raises(UserError, match="--cache"):
        tiny_pipe(PROMPT, num_inference_steps=2, cache=bad, **SMALL)


@pytest.mark.parametrize("bad", ["0", str(MAX_CACHE + 1), "-3"])
def test_cli_bad_cache_is_one_line(models, tmp_path, bad):
    out = tmp_path / "x.mp4"
    message = assert_user_error(invoke("render", PROMPT, *models, "--cache", bad, "-o", out, "--steps", "2"))
    assert "--cache" in message and not out.exists()


def test_cli_not_a_number_is_a_usage_error(models, tmp_path):
    result = invoke("render", PROMPT, *models, "--cache", "often", "-o", tmp_path / "x.mp4")
    assert result.exit_code == 2 and "Traceback" not in result.output and "--cache" in result.output


def test_cli_cache_is_recorded_in_the_sidecar_and_renders_the_same_again(models, tmp_path):
    import numpy as np
    from PIL import Image

    flags = ("--frames", 4, "--height", 16, "--width", 16, "--steps", 3, "--seed", 0, "-q")
    ok(invoke("render", PROMPT, *models, *flags, "--cache", "2", "-o", tmp_path / "a.gif"))
    assert read_json(tmp_path / "a.gif.json")["cache"] == 2
    ok(invoke("render", "--config", tmp_path / "a.gif.json", "-o", tmp_path / "b.gif", "-q"))
    ok(invoke("render", PROMPT, *models, *flags, "-o", tmp_path / "c.gif"))
    a, b, c = (np.asarray(Image.open(tmp_path / f"{n}.gif").convert("RGB")) for n in "abc")
    assert np.array_equal(a, b) and read_json(tmp_path / "c.gif.json")["cache"] == 1


def test_level_is_the_shallowest(tiny_pipe):
    assert feature_cache.CACHE_LEVEL == 1 and FeatureCache(tiny_pipe.unet, 2).level == 1


def test_eval_shapes_takes_cache_and_refuses_a_bad_one_before_any_work(models, tiny_pipe):
    from videodiff.shapes.evaluate import model_render_fn

    assert "--cache" in assert_user_error(invoke("eval", "shapes", *models, "--cache", "0", "--seeds", "1"))
    render, settings, _ = model_render_fn(tiny_pipe, steps=2, frames=2, cache=2)
    render(PROMPT, 0)
    assert settings["cache"] == 2
