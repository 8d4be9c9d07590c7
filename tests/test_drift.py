"""Drift noise and the motion prior: noise that moves, motion measured in clips, motion predicted from prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import invoke
from clips import write_clip
from safetensors import safe_open
from safetensors.torch import save_file

from videodiff.config import TrainConfig
from videodiff.errors import UserError
from videodiff.io.models import load_model_parts
from videodiff.io.video import sidecar_path
from videodiff.motion_prior import PRIOR_FILE, MotionPrior, estimate_motion, prompt_features
from videodiff.noise import sample_noise
from videodiff.training.loop import Trainer


def gen(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------------
# drift noise


@pytest.mark.parametrize("motion", [(0, 1), (1, 0), (-1, 2)])
def test_drift_noise_carries_its_shared_part_along_the_motion(motion):
    dy, dx = motion
    # alpha 1e4: the per-frame part weighs 1e-4, so frames are the moving shared field
    noise = sample_noise((1, 2, 6, 12, 12), kind="drift", alpha=1e4, motion=motion, generator=gen(0))[0]
    for i in range(5):
        now, later = noise[:, i], noise[:, i + 1]
        # what sat at (y, x) in frame i sits at (y + dy, x + dx) in frame i + 1
        ys, xs = slice(max(0, -dy), 12 - max(0, dy)), slice(max(0, -dx), 12 - max(0, dx))
        ys2, xs2 = slice(ys.start + dy, ys.stop + dy), slice(xs.start + dx, xs.stop + dx)
        assert torch.allclose(later[:, ys2, xs2], now[:, ys, xs], atol=1e-3)
        assert not torch.allclose(later, now, atol=0.5)  # it did move


def test_drift_noise_is_unit_gaussian_and_one_motion_per_video():
    noise = sample_noise((2, 4, 8, 32, 32), kind="drift", alpha=2.0, motion=[(0.5, -0.3), (0.0, 0.8)], generator=gen(1))
    assert abs(noise.mean().item()) < 0.02 and abs(noise.var().item() - 1) < 0.03
    got = estimate_motion(noise)
    assert torch.allclose(got, torch.tensor([[0.5, -0.3], [0.0, 0.8]]), atol=0.1), got
    with pytest.raises(UserError, match="one finite"):
        sample_noise((2, 4, 8, 8, 8), kind="drift", motion=[(0, 1), (0, 1), (0, 1)])
    with pytest.raises(UserError, match="one finite"):
        sample_noise((1, 4, 8, 8, 8), kind="drift", motion=(float("nan"), 0))


# ---------------------------------------------------------------------------------------------------------------------
# motion measured in clips


def blob_video(dy: float, dx: float, frames: int = 16, size: int = 16) -> torch.Tensor:
    """``[1 4 f h w]``: a soft blob on a flat background moving ``(dy, dx)`` cells per frame (sub-cell positions)."""
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = torch.zeros(1, 4, frames, size, size)
    cy0, cx0 = size / 2 - dy * (frames - 1) / 2, size / 2 - dx * (frames - 1) / 2
    for f in range(frames):
        blob = torch.exp(-((y - cy0 - dy * f) ** 2 + (x - cx0 - dx * f) ** 2) / 4.0)
        out[0, :, f] = blob * torch.tensor([1.0, -0.5, 0.3, 0.8])[:, None, None] + 0.2
    return out


@pytest.mark.parametrize("motion", [(0.0, 0.55), (0.0, -0.45), (0.7, 0.0), (-0.4, 0.0), (0.3, -0.3), (0.0, 0.0)])
def test_estimate_motion_follows_a_moving_object(motion):
    got = estimate_motion(blob_video(*motion))[0]
    assert torch.allclose(got, torch.tensor(motion), atol=0.08), (motion, got)


def test_estimate_motion_of_one_frame_is_zero():
    assert torch.equal(estimate_motion(torch.randn(3, 4, 1, 8, 8)), torch.zeros(3, 2))


# ---------------------------------------------------------------------------------------------------------------------
# the motion prior


def test_prior_fit_recovers_a_linear_map_and_round_trips(tmp_path):
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=rng, dtype=torch.float64) * torch.arange(1, 7) + 3
    true = torch.randn(6, 2, generator=rng, dtype=torch.float64)
    y = x @ true + torch.tensor([0.5, -1.0], dtype=torch.float64)
    prior = MotionPrior.fit(x, y)
    assert torch.allclose(prior.predict(x), y, atol=1e-2)
    loaded = MotionPrior.load(prior.save(tmp_path / PRIOR_FILE))
    assert torch.allclose(loaded.predict(x), prior.predict(x), atol=1e-4)


def test_prior_load_refuses_other_files(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"mean": torch.zeros(3)}, str(other))
    with pytest.raises(UserError, match="not a videodiff motion prior") as info:
        MotionPrior.load(other)
    assert "\n" not in str(info.value)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 40)
    with pytest.raises(UserError, match="not a readable motion prior"):
        MotionPrior.load(broken)
    wrong = tmp_path / "wrong.safetensors"
    save_file(
        {"mean": torch.zeros(3), "scale": torch.ones(3), "weight": torch.zeros(4, 2), "bias": torch.zeros(2)},
        str(wrong),
        metadata={"format": "videodiff-motion-prior"},
    )
    with pytest.raises(UserError, match="wrong shapes"):
        MotionPrior.load(wrong)


def test_prior_needs_two_clips():
    with pytest.raises(UserError, match="at least two"):
        MotionPrior.fit(torch.zeros(1, 3), torch.zeros(1, 2))


# ---------------------------------------------------------------------------------------------------------------------
# sampling with drift noise


def test_drift_needs_a_motion_or_a_prior(tiny_pipe):
    assert tiny_pipe.parts.motion_prior is None
    with pytest.raises(UserError, match="--motion DX,DY") as info:
        tiny_pipe("a red square", noise="drift", num_frames=4, height=16, width=16, num_inference_steps=1, seed=0)
    assert "\n" not in str(info.value)


def test_drift_motion_moves_the_initial_noise_and_is_recorded(tiny_pipe):
    common = dict(num_frames=4, height=16, width=16, num_inference_steps=1, seed=3, output_type="latent")
    still = tiny_pipe("a red square", noise="drift", motion=(0, 0), **common)
    moving = tiny_pipe("a red square", noise="drift", motion=(4.0, 0), **common)
    mixed = tiny_pipe("a red square", noise="mixed", **common)
    assert moving.settings["motion"] == (4.0, 0.0) and moving.settings["noise"] == "drift"
    assert mixed.settings["motion"] is None
    assert not torch.equal(still.latents, moving.latents)


def test_the_prior_chooses_the_drift_from_the_prompt(tiny_pipe, monkeypatch):
    prompts = ["a red square moving left", "a red square moving right"]
    features = torch.cat([prompt_features(tiny_pipe.encode(p)) for p in prompts])
    prior = MotionPrior.fit(features.repeat(2, 1), torch.tensor([[-3.0, 0.0], [3.0, 0.0]]).repeat(2, 1))
    monkeypatch.setattr(tiny_pipe.parts, "motion_prior", prior)
    common = dict(num_frames=4, height=16, width=16, num_inference_steps=1, seed=5, output_type="latent")
    left = tiny_pipe(prompts[0], noise="drift", **common)
    right = tiny_pipe(prompts[1], noise="drift", **common)
    assert left.settings["motion"][0] < -2 and right.settings["motion"][0] > 2
    # the prior's guess is exactly what passing it as --motion does
    again = tiny_pipe(prompts[1], noise="drift", motion=right.settings["motion"], **common)
    assert torch.equal(again.latents, right.latents)


def test_cli_motion_flag(models, tmp_path):
    out = tmp_path / "v.gif"
    result = invoke(
        "render", "a red square", *models, "--frames", 4, "--height", 16, "--width", 16, "--steps", 1,
        "--seed", 1, "--noise", "drift", "--motion", "2,-1", "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    side = json.loads(sidecar_path(out).read_text())
    assert side["motion"] == [2.0, -1.0] and side["noise"] == "drift"
    bad = invoke("render", "a red square", *models, "--noise", "drift", "--motion", "2,x", "-o", tmp_path / "w.gif")
    assert bad.exit_code == 2 and "--motion must be DX,DY" in bad.output
    assert len(bad.output.strip().splitlines()) == 1 and not (tmp_path / "w.gif").exists()
    none = invoke("render", "a red square", *models, "--noise", "drift", "-o", tmp_path / "n.gif")
    assert none.exit_code == 2 and "motion prior" in none.output


# ---------------------------------------------------------------------------------------------------------------------
# training with drift noise


def sliding_square(direction: int, frames: int = 12, size: int = 32) -> np.ndarray:
    """A red square on grey sliding 2 px per frame, right (+1) or left (-1), never wrapping."""
    out = np.full((frames, size, size, 3), 96, np.uint8)
    for k in range(frames):
        left = 2 * k if direction > 0 else size - 8 - 2 * k
        out[k, 12:20, left : left + 8] = (230, 30, 30)
    return out


@pytest.fixture(scope="module")
def sharp_model(tiny_model, tmp_path_factory) -> Path:
    """``tiny_model`` with a VAE whose posterior has (almost) no spread, like a trained one: a random VAE's
    latent samples are mostly noise (std about 1 against a mean of 0.25), which hides any motion."""
    import shutil

    from diffusers import AutoencoderKL

    folder = tmp_path_factory.mktemp("sharp") / "model"
    shutil.copytree(tiny_model, folder)
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    half = vae.quant_conv.out_channels // 2
    with torch.no_grad():  # the log-variance half of the moments: -30 everywhere
        vae.quant_conv.weight[half:] = 0
        vae.quant_conv.bias[half:] = -30
    vae.save_pretrained(folder / "vae")
    return folder


@pytest.fixture(scope="module")
def two_ways(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("two-ways")
    for i in range(2):
        write_clip(folder / f"right{i}.mp4", sliding_square(+1), "a red square moving right")
        write_clip(folder / f"left{i}.mp4", sliding_square(-1), "a red square moving left")
    return folder


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "decoded"])
def test_training_with_drift_noise_fits_a_prior_that_reads_the_direction(sharp_model, two_ways, tmp_path, cache):
    torch.set_num_threads(1)
    config = TrainConfig(
        model=str(sharp_model), data=str(two_ways), output=str(tmp_path / "run"), frames=4, stride=2, resolution=16,
        steps=2, lr=1e-3, cache_latents=cache, caption_dropout=0.0, save_every=1000, num_workers=0, quiet=True,
        noise="drift", noise_alpha=2.0,
    )  # fmt: skip
    Trainer(config).train()
    folder = tmp_path / "run" / "motion_module"
    with safe_open(str(folder / PRIOR_FILE), "pt") as fh:
        assert json.loads(fh.metadata()["info"])["clips"] == 4
    parts = load_model_parts(str(sharp_model), str(folder))
    assert parts.motion_prior is not None
    from videodiff.pipelines import VideoPipeline

    pipe = VideoPipeline(parts, torch.device("cpu"), torch.float32)
    right = parts.motion_prior.predict(prompt_features(pipe.encode("a red square moving right")))[0]
    left = parts.motion_prior.predict(prompt_features(pipe.encode("a red square moving left")))[0]
    # the clips move 2 px per frame of the source, every 2nd frame, at half size: about 2 px per sampled frame
    assert right[0] > 1 and left[0] < -1 and abs(right[1]) < 0.5 and abs(left[1]) < 0.5, (right, left)


def test_training_noise_drifts_along_each_clips_motion(sharp_model, two_ways, tmp_path, monkeypatch):
    from videodiff.training import loop

    seen = []
    real = loop.noise_priors.sample_noise

    def spy(shape, **kw):
        seen.append(kw.get("motion"))
        return real(shape, **kw)

    monkeypatch.setattr(loop.noise_priors, "sample_noise", spy)
    config = TrainConfig(
        model=str(sharp_model), data=str(two_ways), output=str(tmp_path / "run"), frames=4, stride=2, resolution=16,
        steps=2, batch_size=4, cache_latents=True, caption_dropout=0.0, num_workers=0, quiet=True,
        noise="drift",
    )  # fmt: skip
    Trainer(config).train()
    assert len(seen) == 2 and all(m is not None and m.shape == (4, 2) for m in seen)
    # every batch holds the four clips: two move right (dx > 0), two left
    assert all(sorted(m[:, 1].sign().tolist()) == [-1, -1, 1, 1] for m in seen), seen
