"""vid2vid with a ControlNet: parity with diffusers' AnimateDiffVideoToVideoControlNetPipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from videodiff.schedulers import make_scheduler
from videodiff.settings.control import Control
from videodiff.tiny import build_tiny_controlnet, diffusers_vid2vid_controlnet_reference

PROMPT = "a red circle moving right"
FRAMES, H, W = 8, 32, 40
STRENGTH = 0.75  # 4 steps: the first is skipped, 3 run (diffusers' get_timesteps and videodiff's start agree)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model):
    """The ControlNet, the clip (a block moving right, uint8 ``[f h w 3]``), its maps as a folder (a bar moving
    down) and the maps one frame later."""
    root = tmp_path_factory.mktemp("vid2vid_control")
    net = build_tiny_controlnet(root / "cn", tiny_model, seed=4)
    clip = np.full((FRAMES, H, W, 3), 30, np.uint8)
    maps = np.zeros((FRAMES + 1, H, W, 3), np.uint8)
    for i in range(FRAMES + 1):
        if i < FRAMES:
            clip[i, 10:22, 2 + 4 * i : 12 + 4 * i] = (200, 40, 40)
        maps[i, 2 + 3 * i : 6 + 3 * i, 4:36] = 255
    folders = [root / "maps", root / "shifted"]
    for folder, frames in zip(folders, (maps[:FRAMES], maps[1:])):
        folder.mkdir()
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{i:04d}.png")
    return str(net), clip, maps[:FRAMES], [str(f) for f in folders]


def _ours(tiny_pipe, clip, control):
    kwargs = dict(negative_prompt="cat", num_frames=FRAMES, height=H, width=W, num_inference_steps=4, seed=3)
    return tiny_pipe.vid2vid(
        clip, PROMPT, strength=STRENGTH, scheduler="ddim", controls=[control] if control else [], **kwargs
    ).frames.astype(int)


def test_vid2vid_with_a_controlnet_matches_diffusers(tiny_pipe, tiny_model, tiny_motion, inputs, monkeypatch):
    """One ControlNet at scale 0.5 on the range 0 to 0.7, strength 0.75 over 4 steps: every pixel within 2/255 of
    AnimateDiffVideoToVideoControlNetPipeline started from the same noised latents (its VAE draws a sample of the
    clip's posterior, videodiff takes the mean: the start is handed over as ``latents``, in place of the clip, and
    the comparison is of the loop).

    The step range counts the steps the run takes, as diffusers' video-to-video pipeline counts them (its
    ``controlnet_keep`` is built over the timesteps ``get_timesteps`` left): of the 3 steps run, the first two are
    controlled (``(i + 1) / 3 <= 0.7`` for i = 0, 1). Counted over the whole 4-step schedule only the first would be
    (``3 / 4 > 0.7``): the render with only the first run step controlled (range 0 to 0.4) is more than 2/255 away,
    as are another scale and the maps one frame later."""
    net, clip, maps, (folder, shifted) = inputs
    starts = []
    original = tiny_pipe.video_start

    def video_start(*args, **kwargs):
        begin = original(*args, **kwargs)
        starts.append(begin.latents.clone())
        return begin

    monkeypatch.setattr(tiny_pipe, "video_start", video_start)
    control = Control(maps=folder, controlnet=net, scale=0.5, range=(0.0, 0.7))
    ours = _ours(tiny_pipe, clip, control)
    scheduler = make_scheduler("ddim", tiny_pipe.parts.scheduler_config)
    pipe = diffusers_vid2vid_controlnet_reference(tiny_model, tiny_motion, scheduler, net)
    expected = pipe(
        prompt=PROMPT,
        negative_prompt="cat",
        height=H,
        width=W,
        num_inference_steps=4,
        strength=STRENGTH,
        guidance_scale=7.5,
        latents=starts[0].float(),
        conditioning_frames=[Image.fromarray(m) for m in maps],
        controlnet_conditioning_scale=0.5,
        control_guidance_start=0.0,
        control_guidance_end=0.7,
        output_type="np",
    ).frames[0]
    expected = (expected * 255).round().astype(int)
    assert ours.shape == expected.shape == (FRAMES, H, W, 3)
    assert np.abs(ours - expected).max() <= 2
    for wrong in (
        Control(maps=folder, controlnet=net, scale=0.5, range=(0.0, 0.4)),  # the range counted over all 4 steps
        Control(maps=folder, controlnet=net, scale=1.0, range=(0.0, 0.7)),
        Control(maps=shifted, controlnet=net, scale=0.5, range=(0.0, 0.7)),
    ):
        assert np.abs(_ours(tiny_pipe, clip, wrong) - expected).max() > 2
    assert all(torch.equal(s, starts[0]) for s in starts)  # every render started from the same latents
