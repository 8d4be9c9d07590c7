"""The render-mode tests (img2vid and keyframes, vid2vid, windows with FreeNoise, FreeInit, prompt travel, guidance
interval, feature caching, few-step schedulers) run again on the tiny SDXL model: each is the SD1.5 test itself,
called with the SDXL pipeline, so both families are held to the same properties."""

from __future__ import annotations

import numpy as np
import pytest
import test_cache as cache
import test_img2vid as img2vid
import test_long as long
import test_windows as windows
import torch

from videodiff import families
from videodiff.pipeline import prompts

PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_pipe, one_thread):
    assert tiny_sdxl_pipe.family is families.SDXL
    return tiny_sdxl_pipe


@pytest.fixture(scope="module")
def picture():
    return img2vid.picture.__wrapped__()


@pytest.mark.parametrize(
    "test",
    [
        img2vid.test_frame_held_to_the_end_is_the_picture_through_the_vae,
        img2vid.test_pinned_pictures_work_through_sliding_windows,
    ],
    ids=lambda t: t.__name__,
)
def test_img2vid_on_sdxl(pipe, picture, test):
    test(pipe, picture)


@pytest.mark.parametrize(
    "test",
    [
        img2vid.test_vid2vid_keeps_the_clip_at_low_strength,
        windows.test_more_frames_than_a_window_render_through_windows_with_guidance,
        windows.test_window_layers_temporal_runs_the_unet_once_on_every_frame,
        long.test_windowed_render_starts_from_rescheduled_noise,
        long.test_free_init_runs_every_pass_through_the_step_hook,
        long.test_prompt_travel_conditions_each_frame_and_keeps_one_negative,
        cache.test_cache_one_equals_no_cache_bitwise,
        cache.test_windows_render_with_caching,
        cache.test_img2vid_starts_with_a_full_step_where_sampling_starts,
    ],
    ids=lambda t: t.__name__,
)
def test_render_mode_on_sdxl(pipe, test):
    test(pipe)


def test_caching_stays_close_on_sdxl(pipe):
    cache.test_caching_differs_from_uncached_but_stays_close(pipe, 2)


def test_prompt_travel_blends_the_pooled_text_per_frame(pipe):
    """SDXL's pooled text travels with the tokens: one per frame, the keyframes' own at the keyframes."""
    settings = pipe.settings(None, num_frames=8, prompt_at={0: "a red circle", 5: "a cat"}, guidance=3.0,
                             height=16, width=16)  # fmt: skip
    pooled = pipe.conditioning(settings).cond["text_embeds"]
    assert pooled.shape[:2] == (1, 8)
    assert torch.equal(pooled[:, 0], prompts.encode(pipe, "a red circle")[1])
    assert torch.equal(pooled[:, 7], prompts.encode(pipe, "a cat")[1])
    assert not torch.equal(pooled[:, 2], pooled[:, 0]) and not torch.equal(pooled[:, 2], pooled[:, 7])


KW = dict(num_frames=6, height=16, width=16, num_inference_steps=4, seed=3, guidance_scale=3.0, output_type="latent")


def test_a_window_of_the_whole_video_and_a_full_guidance_interval_are_plain_sampling_exactly(pipe):
    """The SD1.5 tests' render-level halves (their wrapper-level halves take a bare text context, which an SDXL
    U-Net refuses: it needs the pooled text and size ids)."""
    plain = pipe(PROMPT, **KW).latents
    assert torch.equal(plain, pipe(PROMPT, window=6, **KW).latents)
    assert torch.equal(plain, pipe(PROMPT, guidance_interval=(0.0, 1.0), **KW).latents)
    assert not torch.equal(plain, pipe(PROMPT, guidance_interval=(0.0, 0.5), **KW).latents)


@pytest.mark.parametrize("scheduler", ["lcm", "euler"])
def test_few_step_schedulers_on_sdxl(pipe, scheduler):
    """Few-step sampling (LCM; trailing Euler, as Lightning's) renders SDXL in 2 steps, guidance off."""
    result = pipe("a red circle", scheduler=scheduler, timestep_spacing="trailing", num_inference_steps=2,
                  guidance_scale=1.0, num_frames=4, height=16, width=16, seed=1)  # fmt: skip
    assert result.frames.shape == (4, 16, 16, 3) and result.frames.std() > 1


def test_memory_savers_on_sdxl(pipe, tiny_sdxl_model, tiny_sdxl_motion):
    """Attention slicing and VAE tiling apply to the SDXL pipeline as to SD1.5's, and change nothing beyond float
    rounding (decode chunking too: one frame per VAE call)."""
    from videodiff import load_pipeline

    saver = load_pipeline(str(tiny_sdxl_model), str(tiny_sdxl_motion), device="cpu", attention_slicing=True,
                          vae_tiling=True)  # fmt: skip
    kw = {**KW, "output_type": "np"}
    plain, saved = pipe(PROMPT, **kw).frames, saver(PROMPT, decode_chunk=1, **kw).frames
    assert np.abs(plain.astype(int) - saved.astype(int)).max() <= 1
