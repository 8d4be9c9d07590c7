"""ControlNet control: parity with diffusers' AnimateDiff ControlNet pipelines, maps, step ranges, windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from videodiff.control import Controlled, in_range
from videodiff.schedulers import make_scheduler
from videodiff.settings.control import Control
from videodiff.tiny import build_tiny_controlnet, diffusers_controlnet_reference

PROMPT = "a red circle moving right"
FRAMES, H, W = 8, 32, 40


@pytest.fixture(scope="module")
def tiny_controlnets(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("controlnets")
    return [build_tiny_controlnet(root / f"cn{i}", tiny_model, seed=i) for i in range(2)]


@pytest.fixture(scope="module")
def map_frames(tmp_path_factory):
    """A folder of 8 maps, a white bar moving right, and the same maps as uint8 frames."""
    folder = tmp_path_factory.mktemp("maps")
    frames = np.zeros((FRAMES + 1, H, W, 3), np.uint8)
    for i in range(FRAMES + 1):
        frames[i, 8:24, 2 + 4 * i : 8 + 4 * i] = 255
        Image.fromarray(frames[i]).save(folder / f"{i:04d}.png")
    shifted = folder.parent / "shifted"
    shifted.mkdir()
    for i in range(FRAMES):
        Image.fromarray(frames[i + 1]).save(shifted / f"{i:04d}.png")
    return folder, frames[:FRAMES], shifted


def _reference(tiny_pipe, tiny_model, tiny_motion, controlnets, frames, **kwargs):
    scheduler = make_scheduler("ddim", tiny_pipe.parts.scheduler_config)
    pipe = diffusers_controlnet_reference(tiny_model, tiny_motion, scheduler, controlnets)
    video = [Image.fromarray(f) for f in frames]
    out = pipe(
        PROMPT,
        negative_prompt="cat",
        num_frames=FRAMES,
        height=H,
        width=W,
        num_inference_steps=4,
        guidance_scale=7.5,
        conditioning_frames=video if len(controlnets) == 1 else [video] * len(controlnets),
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
        **kwargs,
    ).frames[0]
    return (out * 255).round().astype(np.uint8)


def _ours(tiny_pipe, controls):
    kwargs = dict(negative_prompt="cat", num_frames=FRAMES, height=H, width=W, num_inference_steps=4, seed=3)
    return tiny_pipe(PROMPT, scheduler="ddim", controls=controls, **kwargs).frames


def test_one_controlnet_matches_diffusers(tiny_pipe, tiny_model, tiny_motion, tiny_controlnets, map_frames):
    """One ControlNet at scale 0.5 on steps 0.25 to 1: every pixel within 2/255 of AnimateDiffControlNetPipeline;
    another scale, another range or the maps one frame later each give a video more than 2/255 away."""
    folder, frames, shifted = map_frames
    cn = str(tiny_controlnets[0])
    expected = _reference(
        tiny_pipe, tiny_model, tiny_motion, [cn], frames,
        controlnet_conditioning_scale=0.5, control_guidance_start=0.25, control_guidance_end=1.0,
    )  # fmt: skip
    ours = _ours(tiny_pipe, [Control(maps=str(folder), controlnet=cn, scale=0.5, range=(0.25, 1.0))])
    assert ours.shape == expected.shape == (FRAMES, H, W, 3)
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 2
    uncontrolled = _ours(tiny_pipe, [])
    assert np.abs(uncontrolled.astype(int) - expected.astype(int)).max() > 2
    for wrong in (
        Control(maps=str(folder), controlnet=cn, scale=1.0, range=(0.25, 1.0)),
        Control(maps=str(folder), controlnet=cn, scale=0.5, range=(0.0, 1.0)),
        Control(maps=str(shifted), controlnet=cn, scale=0.5, range=(0.25, 1.0)),
    ):
        assert np.abs(_ours(tiny_pipe, [wrong]).astype(int) - expected.astype(int)).max() > 2


def test_two_controlnets_match_diffusers(tiny_pipe, tiny_model, tiny_motion, tiny_controlnets, map_frames):
    """Two ControlNets with different scales and step ranges: within 2/255 of diffusers' MultiControlNetModel."""
    folder, frames, shifted = map_frames
    cns = [str(c) for c in tiny_controlnets]
    expected = _reference(
        tiny_pipe, tiny_model, tiny_motion, cns, frames,
        controlnet_conditioning_scale=[0.7, 1.2], control_guidance_start=[0.0, 0.5], control_guidance_end=[0.5, 1.0],
    )  # fmt: skip
    controls = [
        {"maps": str(folder), "controlnet": cns[0], "scale": 0.7, "range": [0.0, 0.5]},
        {"maps": str(folder), "controlnet": cns[1], "scale": 1.2, "range": "0.5,1"},
    ]
    ours = _ours(tiny_pipe, controls)
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 2
    swapped = [{**controls[0], "scale": 1.2}, {**controls[1], "scale": 0.7}]
    assert np.abs(_ours(tiny_pipe, swapped).astype(int) - expected.astype(int)).max() > 2


def test_step_range_is_diffusers_rule():
    kept = [i for i in range(10) if in_range(i, 10, 0.2, 0.65)]
    assert kept == [2, 3, 4, 5]  # 6/10 <= 0.65 but 7/10 > 0.65
    assert [i for i in range(4) if in_range(i, 4, 0.0, 1.0)] == [0, 1, 2, 3]
    assert not any(in_range(i, 4, 0.5, 0.5) for i in range(4))


def test_controls_run_only_in_range():
    calls = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, **kw):
            calls.append(float(t))
            return (torch.zeros_like(x),), torch.zeros_like(x)

    from videodiff.control import ControlInput, ControlInputs
    from videodiff.sampling import Cond

    timesteps = [900.0, 600.0, 300.0, 0.0]
    seen = []
    denoiser = Controlled(lambda x, t, cond: seen.append("down_residuals" in cond) or x, [Net()], timesteps)
    maps = torch.zeros(1, 3, 2, 8, 8)
    cond = Cond.text(torch.zeros(1, 4, 8)).with_fields(controls=ControlInputs((ControlInput(0, maps, 1.0, 0.5, 1.0),)))
    for t in timesteps:
        denoiser(torch.zeros(1, 4, 2, 8, 8), torch.tensor(t), cond)
    assert calls == [300.0, 0.0] and seen == [False, False, True, True]


def test_each_window_gets_its_own_frames_maps():
    """Under sliding windows the ControlNet of each window call sees the maps of that window's frames."""
    from videodiff.control import ControlInput, ControlInputs
    from videodiff.sampling import Cond
    from videodiff.windows import Windowed, plan_windows

    seen = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, controlnet_cond, **kw):
            seen.append(controlnet_cond[:, 0, 0, 0].tolist())  # frame numbers, folded into the batch
            return (torch.zeros_like(x),), torch.zeros_like(x)

    frames = 40
    plan = plan_windows(frames, window=16, overlap=4, train_frames=16, limit=32)
    maps = torch.arange(frames, dtype=torch.float32).view(1, 1, frames, 1, 1).expand(1, 3, frames, 8, 8)
    cond = Cond.text(torch.zeros(1, 4, 8)).with_fields(controls=ControlInputs((ControlInput(0, maps),)))
    denoiser = Windowed(Controlled(lambda x, t, c: x, [Net()], [1.0]), plan)
    denoiser(torch.zeros(1, 4, frames, 8, 8), torch.tensor(1.0), cond)
    assert seen == [[float(i) for i in w] for w in plan.indices()]


@pytest.mark.slow
def test_windows_keep_their_seams_under_control(tiny_pipe, tiny_controlnets, tmp_path):
    """64 frames in 16-frame windows, 8 seeds: the controlled render's seam ratio is at most the uncontrolled's plus
    0.1 (README's long-video check: the largest change at a window seam over the median change elsewhere)."""
    from videodiff.shapes.long import seam_ratio

    frames = 64
    for i in range(frames):
        picture = np.zeros((24, 24, 3), np.uint8)
        x = i * 18 // frames
        picture[8:16, x : x + 6] = 255
        Image.fromarray(picture).save(tmp_path / f"{i:04d}.png")
    control = [Control(maps=str(tmp_path), controlnet=str(tiny_controlnets[0]), scale=0.5)]
    kwargs = dict(num_frames=frames, height=24, width=24, num_inference_steps=3, window=16, overlap=4)
    plan = tiny_pipe.windows_for(tiny_pipe.settings(PROMPT, **kwargs))
    rows = []
    for seed in range(8):
        plain = tiny_pipe(PROMPT, seed=seed, **kwargs).frames
        controlled = tiny_pipe(PROMPT, seed=seed, controls=control, **kwargs).frames
        rows.append((seam_ratio(plain, plan.indices()), seam_ratio(controlled, plan.indices())))
    assert all(c <= p + 0.1 for p, c in rows), rows


@pytest.mark.parametrize(
    "extra",
    [{"free_init": 1}, {"guidance_interval": (0.0, 0.5)}, {"cache": 2}, {"image": True}],
    ids=["free-init", "guidance-interval", "cache", "img2vid"],
)
def test_control_works_with_every_mode(tiny_pipe, tiny_controlnets, map_frames, monkeypatch, extra):
    """FreeInit, the guidance interval, feature caching and img2vid each render under control, and differently from
    the same render without it; the ControlNet runs on every denoiser call of every step (with --cache too: its
    residuals reach the skips that run, videodiff.cache states the rule)."""
    from videodiff.control import controlnet as control_module

    folder = map_frames[0]
    runs = []
    real = control_module.run_controlnet
    monkeypatch.setattr(control_module, "run_controlnet", lambda *a: runs.append(1) or real(*a))
    kwargs = dict(num_frames=FRAMES, height=H, width=W, num_inference_steps=4, seed=3, **extra)
    call = tiny_pipe.__call__
    if kwargs.pop("image", None):
        picture = np.full((H, W, 3), 200, np.uint8)
        call = lambda prompt, **kw: tiny_pipe.img2vid(picture, prompt, **kw)  # noqa: E731
    control = [Control(maps=str(folder), controlnet=str(tiny_controlnets[0]))]
    plain = call(PROMPT, **kwargs)
    controlled = call(PROMPT, controls=control, **kwargs)
    assert np.abs(plain.frames.astype(int) - controlled.frames.astype(int)).max() > 2
    steps = 4 * (2 if extra.get("free_init") else 1)
    assert len(runs) >= (steps if "image" not in extra else 1)
