"""The text-to-video pipeline: parity with diffusers' AnimateDiffPipeline, seeds, guidance, decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videodiff import sampling, vae
from videodiff.errors import UserError
from videodiff.noise import sample_noise
from videodiff.schedulers import make_scheduler
from videodiff.tiny import diffusers_reference

PROMPT = "a red circle moving right"


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler-a", "dpm++"])
def test_same_frames_as_diffusers_animatediff(tiny_pipe, tiny_model, tiny_motion, scheduler):
    """Same weights, seed and scheduler: every pixel within 2/255 of diffusers' AnimateDiffPipeline (fp32, CPU)."""
    kwargs = dict(negative_prompt="cat", num_frames=8, height=32, width=40, num_inference_steps=4)
    ours = tiny_pipe(PROMPT, seed=3, scheduler=scheduler, **kwargs).frames
    reference = diffusers_reference(
        tiny_model, tiny_motion, make_scheduler(scheduler, tiny_pipe.parts.scheduler_config)
    )
    out = reference(
        PROMPT, guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(3), output_type="np", **kwargs
    ).frames[0]
    expected = (out * 255).round().astype(np.uint8)
    assert ours.shape == expected.shape == (8, 32, 40, 3)
    assert ours.std() > 5  # a real picture, not a constant
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 2


def test_seed_is_the_documented_initial_noise(tiny_pipe):
    """--noise independent: latents are exactly randn(shape, CPU generator(seed)) times init_noise_sigma."""
    seed, shape = 11, tiny_pipe.latent_shape(4, 32, 32)
    by_seed = tiny_pipe(PROMPT, num_frames=4, height=32, width=32, num_inference_steps=2, seed=seed)
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
    by_latents = tiny_pipe(PROMPT, num_frames=4, height=32, width=32, num_inference_steps=2, latents=latents)
    assert np.array_equal(by_seed.frames, by_latents.frames)
    other = tiny_pipe(PROMPT, num_frames=4, height=32, width=32, num_inference_steps=2, seed=seed + 1)
    assert not np.array_equal(by_seed.frames, other.frames)


def test_seed_drawn_when_missing_and_reproduces(tiny_pipe):
    first = tiny_pipe(PROMPT, num_frames=3, height=16, width=16, num_inference_steps=2)
    assert isinstance(first.seed, int)
    again = tiny_pipe(PROMPT, num_frames=3, height=16, width=16, num_inference_steps=2, seed=first.seed)
    assert np.array_equal(first.frames, again.frames)


def test_guidance_at_one_is_the_conditional_branch(tiny_pipe):
    """At scale 1 guidance is off: the negative prompt cannot matter and one U-Net batch is run."""
    calls = []

    def spy(x, t, context):
        calls.append(x.shape[0])
        return tiny_pipe.unet(x, t, context)

    latents = sample_noise(tiny_pipe.latent_shape(3, 16, 16), generator=torch.Generator().manual_seed(0))
    sched = make_scheduler("ddim", tiny_pipe.parts.scheduler_config)
    context, uncond = tiny_pipe.encode(PROMPT), tiny_pipe.encode("cat")
    a = sampling.sample(spy, latents.clone(), sched, steps=2, guide=sampling.guide_for(1.0, context, uncond))
    assert calls == [1, 1]
    b = sampling.sample(tiny_pipe.unet, latents.clone(), sched, steps=2, guide=sampling.guide_for(1.0, context, None))
    torch.testing.assert_close(a, b)


def test_guided_is_the_cfg_formula():
    u, c = torch.randn(2, 4), torch.randn(2, 4)
    torch.testing.assert_close(sampling.guided(u, c, 1.0), c)
    torch.testing.assert_close(sampling.guided(u, c, 0.0), u)
    torch.testing.assert_close(sampling.guided(u, c, 3.0), u + 3 * (c - u))


def test_negative_prompt_changes_guided_video(tiny_pipe):
    kwargs = dict(num_frames=3, height=16, width=16, num_inference_steps=2, seed=5)
    a = tiny_pipe(PROMPT, **kwargs).frames
    b = tiny_pipe(PROMPT, negative_prompt="cat", **kwargs).frames
    assert not np.array_equal(a, b)


def test_negative_prompt_without_guidance_gives_a_notice(tiny_pipe, caplog):
    with caplog.at_level("INFO", logger="videodiff"):
        tiny_pipe(
            PROMPT,
            negative_prompt="cat",
            guidance_scale=1.0,
            num_frames=2,
            height=16,
            width=16,
            num_inference_steps=1,
            seed=0,
        )
    assert any("negative prompt" in r.getMessage() for r in caplog.records)


def test_long_prompt_warns_with_the_cut_text(tiny_pipe, caplog):
    words = " ".join(["cat"] * 100) + " zebra"
    with caplog.at_level("INFO", logger="videodiff"):
        tiny_pipe(words, num_frames=2, height=16, width=16, num_inference_steps=1, seed=0, output_type="latent")
    messages = [r.getMessage() for r in caplog.records if "cut" in r.getMessage()]
    assert messages and "zebra" in messages[0]


@pytest.mark.parametrize("noise", ["mixed", "progressive"])
def test_noise_priors_reach_the_video(tiny_pipe, noise):
    kwargs = dict(num_frames=3, height=16, width=16, num_inference_steps=2, seed=2, output_type="latent")
    a = tiny_pipe(PROMPT, **kwargs).latents
    b = tiny_pipe(PROMPT, noise=noise, noise_alpha=2.0, **kwargs).latents
    assert not torch.equal(a, b)


def test_chunked_decode_equals_one_batch(tiny_pipe):
    latents = torch.randn(1, 4, 5, 8, 8)
    whole = vae.decode(tiny_pipe.vae, latents, chunk=16)
    chunked = vae.decode(tiny_pipe.vae, latents, chunk=2)
    torch.testing.assert_close(whole, chunked, rtol=1e-4, atol=1e-4)
    assert whole.shape == (1, 3, 5, 16, 16)


def test_half_precision_nan_is_redecoded_in_fp32(tiny_pipe, monkeypatch, caplog):
    """A NaN chunk in half precision is decoded again in float32, never written as black frames."""
    real = vae._decode_chunk

    def overflowing(model, z):
        out = real(model, z)
        return out if model.dtype == torch.float32 else torch.full_like(out, float("nan"))

    monkeypatch.setattr(vae, "_decode_chunk", overflowing)
    tiny_pipe.vae.to(torch.bfloat16)
    try:
        with caplog.at_level("INFO", logger="videodiff"):
            pixels = vae.decode(tiny_pipe.vae, torch.randn(1, 4, 3, 8, 8), chunk=2)
    finally:
        tiny_pipe.vae.to(torch.float32)
    assert torch.isfinite(pixels).all()
    assert tiny_pipe.vae.dtype == torch.float32
    assert any("float32" in r.getMessage() for r in caplog.records)


def test_bad_arguments_are_user_errors(tiny_pipe):
    with pytest.raises(UserError, match="32"):  # a window over the positional encoding (40 frames alone are fine)
        tiny_pipe(PROMPT, num_frames=40, window=40, height=16, width=16, num_inference_steps=1)
    with pytest.raises(UserError, match="1024"):
        tiny_pipe(PROMPT, num_frames=1025, height=16, width=16, num_inference_steps=1)
    with pytest.raises(UserError, match="multiple of 8"):
        tiny_pipe(PROMPT, num_frames=2, height=20, width=16, num_inference_steps=1)
    with pytest.raises(UserError, match="expected"):
        tiny_pipe(PROMPT, num_frames=2, height=16, width=16, num_inference_steps=1, latents=torch.randn(1, 4, 3, 8, 8))


def test_model_without_motion_modules_asks_for_one(tiny_model):
    from videodiff import load_pipeline

    with pytest.raises(UserError, match="--motion-module"):
        load_pipeline(str(tiny_model), device="cpu")


def test_model_shipping_its_own_motion_modules(tmp_path):
    from videodiff import load_pipeline
    from videodiff.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "m", with_motion_adapter=True, motion_max_seq_length=8)
    pipe = load_pipeline(str(model), device="cpu")
    assert pipe.max_frames == 8
    assert pipe(PROMPT, num_frames=8, height=16, width=16, num_inference_steps=1, seed=0).frames.shape == (8, 16, 16, 3)


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_cpu_offload_hooks_keep_the_output(tiny_model, tiny_motion, offload):
    """Offloading only moves weights; with the CPU as execution device the frames are the same."""
    from videodiff.pipelines import VideoPipeline
    from videodiff.weights.models import load_model_parts

    kwargs = dict(num_frames=3, height=16, width=16, num_inference_steps=2, seed=9)
    plain = VideoPipeline(load_model_parts(str(tiny_model), str(tiny_motion)), torch.device("cpu"), torch.float32)
    hooked = VideoPipeline(
        load_model_parts(str(tiny_model), str(tiny_motion)), torch.device("cpu"), torch.float32, offload=offload
    )
    assert hasattr(hooked.unet, "_hf_hook") or any(hasattr(m, "_hf_hook") for m in hooked.unet.modules())
    assert np.array_equal(plain(PROMPT, **kwargs).frames, hooked(PROMPT, **kwargs).frames)


def test_attention_slicing_and_vae_tiling_stay_close(tiny_model, tiny_motion):
    from videodiff.pipelines import VideoPipeline
    from videodiff.weights.models import load_model_parts

    kwargs = dict(num_frames=3, height=32, width=32, num_inference_steps=2, seed=9)
    plain = VideoPipeline(load_model_parts(str(tiny_model), str(tiny_motion)), torch.device("cpu"), torch.float32)
    saver = VideoPipeline(load_model_parts(str(tiny_model), str(tiny_motion)), torch.device("cpu"), torch.float32)
    saver.enable_memory_savers(attention_slicing=True, vae_tiling=True)
    saver.unet.motion.set_attention_chunk(7)  # force several chunks at this tiny size
    assert all(m.chunk == 7 for m in saver.unet.motion.modules() if hasattr(m, "chunk"))
    a, b = plain(PROMPT, **kwargs).frames, saver(PROMPT, **kwargs).frames
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_offline_hub_id_not_in_cache_is_one_clear_error(tmp_path, monkeypatch):
    from videodiff import load_pipeline

    monkeypatch.setenv("VIDEODIFF_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache" / "hub"))
    with pytest.raises(UserError, match="offline") as info:
        load_pipeline("someone/not-cached-model", device="cpu")
    assert "\n" not in str(info.value)


def test_unreachable_hub_searches_the_cache_at_once_and_says_what_to_pass(tmp_path, monkeypatch):
    """No network and no VIDEODIFF_OFFLINE: one connection attempt, then the local cache only (no timeouts),
    and one line naming the cache and what to pass instead (not LocalEntryNotFoundError)."""
    import socket

    import huggingface_hub

    from videodiff.weights import hub

    monkeypatch.delenv("VIDEODIFF_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(hub, "_REACHABLE", {})
    attempts, calls = [], []

    def no_network(address, timeout=None, **kwargs):
        attempts.append((address, timeout))
        raise OSError("Network is unreachable")

    def snapshot(repo_id, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    for _ in range(2):
        with pytest.raises(UserError) as info:
            hub.locate("someone/not-cached-model", "model")
        message = str(info.value)
        assert "cannot be reached" in message and "local cache" in message and "local folder" in message
        assert huggingface_hub.constants.HF_HUB_CACHE in message
        assert "LocalEntryNotFoundError" not in message and "\n" not in message
    assert calls == [True, True]  # the cache only, never a download that would wait for timeouts
    assert len(attempts) == 1 and attempts[0][1] <= 5  # asked once per process, with a short timeout
