"""The motion prior: tracks measured in latents, the prompt-to-track fit, its guess, files, sampling from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_user_error, invoke, ok, read_json
from safetensors.torch import save_file

from videodiff import load_pipeline, sampling
from videodiff.errors import UserError
from videodiff.keyframes import shift_frames
from videodiff.motion_prior import (
    PRIOR_FILE,
    MotionPrior,
    PixelCodec,
    clip_targets,
    object_tracks,
    object_windows,
    prompt_features,
)
from videodiff.schedulers import make_scheduler
from videodiff.starts import start_step

RENDER = dict(num_frames=4, height=16, width=16, num_inference_steps=4, output_type="latent")


def blob_clip(velocity, *, start, channel=0, sign=1.0, c=4, f=8, h=16, w=16, background=0.3) -> torch.Tensor:
    """``[c f h w]``: a constant background, a Gaussian blob (one channel) moving ``velocity`` cells/frame (dy, dx)."""
    ys, xs = torch.arange(h, dtype=torch.float32)[:, None], torch.arange(w, dtype=torch.float32)[None, :]
    clip = torch.full((c, f, h, w), background)
    for k in range(f):
        cy, cx = start[0] + velocity[0] * k, start[1] + velocity[1] * k
        clip[channel, k] += sign * 2.0 * torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / 2.0)
    return clip


def test_tracks_and_patches_read_a_moving_blob():
    clips = torch.stack([blob_clip((0.5, -0.75), start=(3.0, 12.0)), blob_clip((0.0, 1.0), start=(8.0, 2.0))])
    background, track, velocity = object_tracks(clips)
    assert torch.allclose(background, torch.full((2, 4), 0.3))
    assert torch.allclose(velocity, torch.tensor([[0.5, -0.75], [0.0, 1.0]]), atol=0.1)
    assert torch.allclose(track[1, 0], torch.tensor([8.0, 2.0]), atol=0.3)
    windows = object_windows(clips, background, track, 5)
    assert windows.shape == (2, 8, 4, 5, 5)
    patches = windows.mean(1)
    centre = patches[:, 0].flatten(1).argmax(1)
    assert centre.tolist() == [12, 12]  # the middle cell of 5x5: the blob sits on its track
    assert patches[:, 1:].abs().max() < 1e-6  # the other channels hold only background


def square_clip(velocity, *, start, side=3.0, c=4, f=8, h=16, w=16) -> torch.Tensor:
    """``[c f h w]``: a flat square ``side`` cells wide (channel 0, area-sampled edges) moving ``velocity``."""
    ys, xs = torch.arange(h, dtype=torch.float32)[:, None], torch.arange(w, dtype=torch.float32)[None, :]
    clip = torch.zeros((c, f, h, w))
    for k in range(f):
        cy, cx = start[0] + velocity[0] * k, start[1] + velocity[1] * k
        cover_y = (ys + 0.5).clamp(max=cy + side / 2) - (ys - 0.5).clamp(min=cy - side / 2)  # of each cell, 0..1
        cover_x = (xs + 0.5).clamp(max=cx + side / 2) - (xs - 0.5).clamp(min=cx - side / 2)
        clip[0, k] = cover_y.clamp(0, 1) * cover_x.clamp(0, 1)
    return clip


def test_the_track_is_found_to_a_fraction_of_a_cell_and_the_patch_is_centred_on_the_object():
    still = blob_clip((0.0, 0.0), start=(6.4, 9.6), f=4)  # between cells: a peak cell would say (6, 10)
    _, track, velocity = object_tracks(still[None])
    assert torch.allclose(track[0], torch.tensor([[6.4, 9.6]] * 4), atol=0.05)
    assert velocity.abs().max() < 1e-4
    # a square whose brightest cell is an edge or a corner: a peak track runs along that edge and the patch cut
    # along it is lopsided; the centroid track runs through the square's middle and its patch is symmetric
    square = square_clip((0.3, 0.45), start=(5.2, 4.1))
    _, track, velocity = object_tracks(square[None])
    assert torch.allclose(velocity[0], torch.tensor([0.3, 0.45]), atol=0.02)
    assert torch.allclose(track[0, 0], torch.tensor([5.2, 4.1]), atol=0.1)
    patch = clip_targets(square[None], 5).targets[0, 2 : 2 + 4 * 25].view(4, 5, 5)[0]
    assert torch.allclose(patch, patch.flip(0), atol=0.05) and torch.allclose(patch, patch.flip(1), atol=0.05)
    assert patch[2, 2] > 0.9 and patch[0].abs().max() < 0.25 and patch[:, 0].abs().max() < 0.25


def synthetic_set(n_per: int = 6):
    """Clips whose direction (features 0, 1) and colour channel (2, 3) are separate words; one pairing held out."""
    feats, clips, held = [], [], None
    g = torch.Generator().manual_seed(0)
    for right in (0, 1):
        for channel in (0, 1):
            v = (0.0, 0.8 if right else -0.8)
            words = torch.tensor([1.0 - right, right, 1.0 - channel, channel])
            if (right, channel) == (1, 1):
                held = words  # never in training: "right" with channel 1
                continue
            for i in range(n_per):
                x0 = 2.0 + 0.5 * i if right else 13.0 - 0.5 * i
                clips.append(blob_clip(v, start=(4.0 + i, x0), channel=channel))
                feats.append(torch.cat([words, 0.01 * torch.randn(4, generator=g)]))
    return torch.stack(feats), torch.stack(clips), torch.cat([held, torch.zeros(4)])


def test_fit_predicts_direction_and_appearance_even_for_a_held_out_pairing():
    feats, clips, held = synthetic_set()
    prior, fit = MotionPrior.fit(feats, clips, patch=5)
    assert fit["clips"] == len(clips) and fit["direction_agreement"] == 1.0
    assert fit["velocity_rms_cells_per_frame"] < 0.1
    assert prior.contrast == fit["contrast"] and 1.0 <= prior.contrast < 1.5  # one blob size: little to restore
    left_0 = prior.predict(feats[0])
    assert left_0.velocity[1] < -0.6 and abs(left_0.velocity[0]) < 0.1
    assert left_0.patch[0, 2, 2] > 1.0 and left_0.patch[1, 2, 2] < 0.3
    right_1 = prior.predict(held)  # the words' effects add up
    assert right_1.velocity[1] > 0.6
    assert right_1.patch[1, 2, 2] > 1.0 and right_1.patch[0, 2, 2] < 0.3
    assert torch.allclose(right_1.background, torch.full((4,), 0.3), atol=0.05)


def test_the_guess_moves_at_its_velocity_in_view_from_a_seeded_start():
    feats, clips, _ = synthetic_set()
    prior, _ = MotionPrior.fit(feats, clips, patch=5)
    guess = prior.predict(feats[0])
    shape = (1, 4, 16, 16, 16)
    videos = [prior.video(guess, shape, torch.Generator().manual_seed(s), velocity=(0.3, 0.6)) for s in (1, 1, 2)]
    assert videos[0].shape == shape
    assert torch.equal(videos[0], videos[1]) and not torch.equal(videos[0], videos[2])
    for video in videos:
        _, track, velocity = object_tracks(video)
        assert torch.allclose(velocity[0], torch.tensor([0.3, 0.6]), atol=0.1)
        assert track.min() >= 1.5 and track.max() <= 13.5  # the whole 5-cell patch in the 16-cell frame
    _, _, own = object_tracks(prior.video(guess, shape, torch.Generator().manual_seed(0)))
    assert own[0, 1] < -0.5  # without an override, the prompt's predicted velocity


class BlockCodec:
    """A lossless stand-in for a VAE with 4-pixel cells: a cell's channels 0-2, quartered into pixels' range, spread
    over its 4x4 pixels (decode); the mean of each 4x4 block back (encode), the fourth channel kept aside. Records
    what it encodes."""

    scale = 4

    def __init__(self):
        self.encoded, self.kept = [], None

    def decode(self, latents):
        self.kept = latents[:, 3:]
        return (latents[:, :3] / 4).repeat_interleave(4, -1).repeat_interleave(4, -2)

    def encode(self, pixels):
        self.encoded.append(pixels)
        b, ch, f, height, width = pixels.shape
        cells = pixels.reshape(b, ch, f, height // 4, 4, width // 4, 4).mean((-1, -3))
        return torch.cat([cells * 4, self.kept], 1)

    def codec(self):
        return PixelCodec(self.decode, self.encode, self.scale)


def pixel_centres(frames: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``[f 2]``: each frame's centre of mass of its deviation from ``background`` (``[ch]``), pixels ``(y, x)``."""
    weight = (frames[0] - background[:, None, None, None]).abs().sum(0)  # [f H W]
    ys = torch.arange(weight.shape[1], dtype=torch.float32)[:, None]
    xs = torch.arange(weight.shape[2], dtype=torch.float32)[None, :]
    total = weight.sum((-1, -2))
    return torch.stack([(weight * ys).sum((-1, -2)) / total, (weight * xs).sum((-1, -2)) / total], -1)


def test_shift_frames_moves_each_frame_by_its_own_offset():
    frames = torch.zeros(1, 1, 3, 12, 12)
    frames[..., 5, 5] = 1.0
    moved = shift_frames(frames, torch.tensor([[0.0, 0.0], [2.0, -1.0], [0.5, 0.25]]))
    assert torch.equal(moved[0, 0, 0], frames[0, 0, 0])
    assert moved[0, 0, 1, 7, 4] == 1.0 and moved[0, 0, 1].sum() == 1.0
    centre = pixel_centres(moved[:, :, 2:], torch.zeros(1))[0]
    assert torch.allclose(centre, torch.tensor([5.5, 5.25]))  # a fraction of a pixel: bilinear, mass kept


def test_the_guess_drawn_in_pixels_is_the_latent_one_at_whole_cells_and_on_the_track_between_them():
    feats, clips, _ = synthetic_set()
    prior, _ = MotionPrior.fit(feats, clips, patch=5)
    guess = prior.predict(feats[0])
    shape = (1, 4, 8, 16, 16)
    whole = BlockCodec()
    # on whole cells nothing is moved in pixels, and through a lossless codec the two drawings agree
    on_cells = torch.stack([torch.arange(8.0) + 4, 12 - torch.arange(8.0)], -1)
    latent = prior.paint(guess, shape, on_cells)
    assert torch.allclose(prior.paint_in_pixels(guess, shape, on_cells, whole.codec()), latent, atol=1e-5)
    # a fraction of a cell a frame: the frames the VAE is given hold the object exactly on the track (in
    # pixels), the same object in every frame; resampled in latents, its mass would be spread between cells
    block = BlockCodec()
    velocity = (0.3, 0.45)
    track = prior.track(velocity, shape, torch.Generator().manual_seed(3))
    assert torch.allclose(track[1:] - track[:-1], torch.tensor(velocity).expand(7, 2), atol=1e-5)
    inside = torch.tensor([5.3, 4.1]) + torch.tensor(velocity) * torch.arange(8.0)[:, None]  # clear of the edges
    prior.paint_in_pixels(guess, shape, inside, block.codec())
    (given,) = block.encoded
    centres = pixel_centres(given, guess.background[:3] / 4)
    offset = centres - inside * 4  # where in its cells the patch's centre of mass is: the same in every frame
    assert torch.allclose(offset, offset[:1].expand_as(offset), atol=0.05)
    # ... and as sharp in every frame; resampled between cells in latents, its peak flickers with the fraction
    peak = (given[0] - guess.background[:3, None, None, None] / 4).abs().sum(0).flatten(1).max(1).values
    assert peak.min() > 0.98 * peak.max()
    resampled = (prior.paint(guess, shape, inside)[0, :3] - guess.background[:3, None, None, None]).abs().sum(0)
    flicker = resampled.flatten(1).max(1).values
    assert flicker.min() < 0.9 * flicker.max()
    mass = (given[0] - guess.background[:3, None, None, None] / 4).abs().sum((0, 2, 3))
    assert torch.allclose(mass, mass[0].expand_as(mass), rtol=0.02)


def test_a_predicted_track_that_leaves_the_frame_is_slowed_into_view_and_a_given_one_is_not(caplog):
    feats, clips, _ = synthetic_set()
    prior, _ = MotionPrior.fit(feats, clips, patch=5)
    guess = prior.predict(feats[0])  # moving left at about 0.8 cells a frame
    short, long = (1, 4, 8, 16, 16), (1, 4, 64, 16, 16)
    assert prior.in_view(guess.velocity, short) == tuple(guess.velocity)  # 8 frames: the track fits as it is
    vy, vx = prior.in_view(guess.velocity, long)
    room = 16 - 1 - (5 - 1)  # centre positions that keep the whole 5-cell patch in view
    factor = room / (abs(guess.velocity[1]) * 63)  # the horizontal track is the one that does not fit
    assert factor < 1 and (vy, vx) == pytest.approx((guess.velocity[0] * factor, guess.velocity[1] * factor))
    context = feats[0].float().expand(1, 3, -1)  # its tokens average to the features of feats[0]
    with caplog.at_level("WARNING", logger="videodiff"):
        clean, velocity = prior.start_video(context, long, torch.Generator().manual_seed(0), 2)
    assert "out of view over 64 frames" in caplog.text
    _, track, _ = object_tracks(clean)
    assert track.min() >= 1.5 and track.max() <= 13.5  # in view in every one of the 64 frames
    clean, velocity = prior.start_video(context, long, torch.Generator().manual_seed(0), 2, motion=(-1.6, 0.0))
    assert velocity == (-1.6, 0.0)  # asked for: kept, whether or not it leaves the frame


def test_save_load_round_trip_and_bad_files(tmp_path):
    feats, clips, _ = synthetic_set(2)
    prior, fit = MotionPrior.fit(feats, clips, patch=3)
    path = prior.save(tmp_path / PRIOR_FILE, fit)
    back = MotionPrior.load(path)
    a, b = prior.predict(feats[1]), back.predict(feats[1])
    assert a.velocity == pytest.approx(b.velocity, abs=1e-5) and torch.allclose(a.patch, b.patch, atol=1e-5)
    assert back.contrast == prior.contrast
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    (tmp_path / "text.safetensors").write_text("not a safetensors file")
    for bad in (tmp_path / "other.safetensors", tmp_path / "text.safetensors", tmp_path / "missing.safetensors"):
        with pytest.raises(UserError) as info:
            MotionPrior.load(bad)
        assert "\n" not in str(info.value) and str(bad) in str(info.value)
    with pytest.raises(UserError, match="two captioned clips"):
        MotionPrior.fit(feats[:1], clips[:1])


def test_start_step_leaves_at_least_one_step():
    assert [start_step(12, f) for f in (0.0, 0.33, 0.5, 0.99)] == [0, 4, 6, 11]


def test_sampling_from_a_start_step_is_the_tail_of_the_schedule(tiny_pipe):
    """start=k runs exactly the last steps: the same as the full loop's tail from the same noised latents."""
    sched = make_scheduler("ddim", tiny_pipe.parts.scheduler_config)
    g = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(1, 4, 4, 8, 8, generator=g), torch.randn(1, 4, 4, 8, 8, generator=g)
    x = sampling.noised_start(sched, 6, 2, clean, noise)
    t = sched.timesteps[2]
    ab = sched.alphas_cumprod[t]
    assert torch.allclose(x, ab.sqrt() * clean + (1 - ab).sqrt() * noise, atol=1e-6)
    context = tiny_pipe.encode("a square")
    calls = []

    def denoiser(x, t, c):
        calls.append(int(t))
        return tiny_pipe.unet(x, t, c)

    sampling.sample(
        denoiser, x, sched, steps=6, guide=sampling.guide_for(1.0, context, None), progress=False, start=2
    )
    assert calls == [int(v) for v in sched.timesteps[2:]]


@pytest.fixture(scope="module")
def prior_motion(tiny_motion, tiny_pipe, tmp_path_factory) -> Path:
    """The tiny motion modules with a motion prior fitted to blob clips captioned left/right."""
    folder = tmp_path_factory.mktemp("prior") / "motion"
    shutil.copytree(tiny_motion, folder)
    feats, clips = [], []
    for i in range(6):
        for word, v in (("left", -0.8), ("right", 0.8)):
            feats.append(prompt_features(tiny_pipe.encode(f"a square moving {word}"))[0])
            clips.append(blob_clip((0.0, v), start=(4.0, 1.5 + 0.3 * i if v > 0 else 6.0 - 0.3 * i), f=4, h=8, w=8))
    prior, fit = MotionPrior.fit(torch.stack(feats), torch.stack(clips), patch=3)
    prior.save(folder / PRIOR_FILE, fit)
    return folder


def test_pipeline_starts_from_the_prior_only_when_asked(tiny_model, tiny_motion, prior_motion):
    plain = load_pipeline(str(tiny_model), str(tiny_motion))
    pipe = load_pipeline(str(tiny_model), str(prior_motion))
    assert pipe.parts.motion_prior is not None and plain.parts.motion_prior is None
    off = pipe("a square moving left", seed=1, **RENDER)
    assert torch.equal(off.latents, plain("a square moving left", seed=1, **RENDER).latents)
    on = pipe("a square moving left", seed=1, motion_prior=0.5, **RENDER)
    assert not torch.equal(on.latents, off.latents)
    dx, dy = on.settings["motion"]
    assert dx < -1.0 and abs(dy) < 0.5  # the prompt's velocity, in pixels per frame (x2 for this VAE)
    right = pipe("a square moving right", seed=1, motion_prior=0.5, **RENDER)
    assert right.settings["motion"][0] > 1.0
    forced = pipe("a square moving left", seed=1, motion_prior=0.5, motion=(2.0, 0.0), **RENDER)
    assert forced.settings["motion"] == (2.0, 0.0)
    # the start is the prior's guess noised with the seed's noise: the same seed gives the same video
    again = pipe("a square moving left", seed=1, motion_prior=0.5, **RENDER)
    assert torch.equal(again.latents, on.latents)
    with pytest.raises(UserError, match="motion prior"):
        plain("a square", seed=1, motion_prior=0.5, **RENDER)
    # drawn in pixels: recorded, seeded, another start than the latent drawing's, on the same track
    drawn = pipe("a square moving left", seed=1, motion_prior=0.5, motion_prior_space="pixels", **RENDER)
    assert drawn.settings["motion_prior_space"] == "pixels" and on.settings["motion_prior_space"] == "latent"
    assert drawn.settings["motion"] == on.settings["motion"] and not torch.equal(drawn.latents, on.latents)
    assert torch.equal(pipe("a square moving left", seed=1, motion_prior=0.5, motion_prior_space="pixels",
                            **RENDER).latents, drawn.latents)  # fmt: skip
    with pytest.raises(UserError, match="motion_prior_space|motion-prior-space"):
        pipe("a square moving left", seed=1, motion_prior=0.5, motion_prior_space="voxels", **RENDER)


def test_a_prior_for_another_model_is_refused_at_load(tiny_model, tiny_motion, tmp_path):
    folder = tmp_path / "motion"
    shutil.copytree(tiny_motion, folder)
    feats, clips, _ = synthetic_set(2)  # 8-wide features: the tiny text encoder's are wider
    MotionPrior.fit(feats, clips, patch=3)[0].save(folder / PRIOR_FILE)
    with pytest.raises(UserError, match="text embeddings"):
        load_pipeline(str(tiny_model), str(folder))


def test_cli_motion_prior_and_motion(tiny_model, tiny_motion, prior_motion, tmp_path):
    models = ("--model", str(tiny_model), "--motion-module", str(prior_motion))
    small = ("--frames", 4, "--height", 16, "--width", 16, "--steps", 2, "--seed", 1, "-q")
    out = tmp_path / "a.gif"
    ok(invoke("render", "a square moving right", *models, *small, "--motion-prior", 0.5, "--motion", "2,-1", "-o", out))
    side = read_json(out.with_name(out.name + ".json"))
    assert side["motion_prior"] == 0.5 and side["motion"] == [2.0, -1.0]
    assert side["info"]["motion_prior_velocity"] == [2.0, -1.0] and side["motion_prior_space"] == "latent"
    drawn = tmp_path / "p.gif"
    pixels = ("--motion-prior", 0.5, "--motion-prior-space", "pixels")
    ok(invoke("render", "a square", *models, *small, *pixels, "-o", drawn))
    assert read_json(drawn.with_name(drawn.name + ".json"))["motion_prior_space"] == "pixels"
    bad_flags = (("--motion", "2"), ("--motion", "a,b"), ("--motion-prior", 1), ("--motion-prior", -0.1))
    for bad in (*bad_flags, ("--motion-prior-space", "voxels")):
        assert_user_error(invoke("render", "a square", *models, *small, *bad, "-o", tmp_path / "b.gif"))
    plain = ("--model", str(tiny_model), "--motion-module", str(tiny_motion))
    assert_user_error(invoke("render", "a square", *plain, *small, "--motion-prior", 0.5, "-o", tmp_path / "c.gif"))
    assert not (tmp_path / "b.gif").exists() and not (tmp_path / "c.gif").exists()


def test_training_fits_a_prior_that_render_loads(tiny_model, tmp_path):
    from clips import write_dataset

    from videodiff.config import TrainConfig
    from videodiff.training.loop import train

    data = write_dataset(tmp_path / "clips", count=3)  # red squares moving right, 2 px per frame
    config = TrainConfig(
        model=str(tiny_model), data=str(data), output=str(tmp_path / "run"), frames=4, stride=2, resolution=16,
        steps=1, cache_latents=True, num_workers=0, quiet=True, motion_prior=True,
    )  # fmt: skip
    run = train(config)
    assert (run / "motion_module" / PRIOR_FILE).is_file()
    pipe = load_pipeline(str(tiny_model), str(run / "motion_module"))
    result = pipe("a red square moving right", seed=0, motion_prior=0.5, **RENDER)
    dx, dy = result.settings["motion"]
    assert dx > 1.0 and abs(dy) < 0.5  # about 2 px per frame at 16 px (4 px per kept frame at 32 px, halved)
    untrained = train(config.replace(output=str(tmp_path / "plain"), motion_prior=False))
    assert not (untrained / "motion_module" / PRIOR_FILE).exists()


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler-a", "dpm++"])
def test_every_scheduler_starts_part_way(tiny_model, prior_motion, scheduler):
    pipe = load_pipeline(str(tiny_model), str(prior_motion))
    result = pipe("a square moving right", seed=2, scheduler=scheduler, motion_prior=0.5, **RENDER)
    assert torch.isfinite(result.latents).all()
    assert result.latents.abs().max() < 50  # in the clean latents' range, not left at Euler's noise scale


def test_a_models_default_start_needs_motion_modules_with_a_prior(tiny_model, tiny_motion, prior_motion, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "videodiff.json").write_text('{"defaults": {"motion_prior": 0.5}}')
    with_prior = load_pipeline(str(model), str(prior_motion))("a square moving left", seed=1, **RENDER)
    assert with_prior.settings["motion_prior"] == 0.5 and with_prior.settings["motion"] is not None
    # other motion modules: the model's recommendation cannot apply, and the render goes on from noise
    other = load_pipeline(str(model), str(tiny_motion))
    result = other("a square moving left", seed=1, **RENDER)
    assert result.settings["motion_prior"] == 0.0
    reference = load_pipeline(str(tiny_model), str(tiny_motion))("a square moving left", seed=1, **RENDER)
    assert torch.equal(result.latents, reference.latents)
    with pytest.raises(UserError, match="motion prior"):  # asked for another start explicitly: an error
        other("a square moving left", seed=1, motion_prior=0.25, **RENDER)


def test_training_without_cached_latents_fits_the_prior_clip_by_clip(tiny_model, tmp_path):
    from clips import write_dataset

    from videodiff.config import TrainConfig
    from videodiff.training.loop import train

    data = write_dataset(tmp_path / "clips", count=2)
    config = TrainConfig(
        model=str(tiny_model), data=str(data), output=str(tmp_path / "run"), frames=4, stride=2, resolution=16,
        steps=1, num_workers=0, quiet=True, motion_prior=True,
    )  # fmt: skip
    prior = MotionPrior.load(train(config) / "motion_module" / PRIOR_FILE)
    assert prior.channels == 4 and prior.patch == 5


def test_fitting_clip_by_clip_equals_fitting_all_at_once():
    from videodiff.motion_prior import ClipTargets, clip_targets

    feats, clips, _ = synthetic_set(3)
    whole, fit = MotionPrior.fit(feats, clips, patch=5)
    parts = ClipTargets.cat([clip_targets(clip[None], 5) for clip in clips])
    streamed, fit2 = MotionPrior.fit_targets(feats, parts)
    assert fit2 == pytest.approx(fit)
    assert torch.allclose(whole.weight, streamed.weight) and whole.contrast == pytest.approx(streamed.contrast)


def test_training_with_a_prior_needs_captions_and_says_so_before_training(tiny_model, tmp_path):
    from clips import moving_square, write_clip

    from videodiff.config import TrainConfig
    from videodiff.training.loop import train

    write_clip(tmp_path / "clips" / "c0.mp4", moving_square(12, 32), "a red square moving right")
    write_clip(tmp_path / "clips" / "c1.mp4", moving_square(12, 32, phase=3))  # no caption
    config = TrainConfig(
        model=str(tiny_model), data=str(tmp_path / "clips"), output=str(tmp_path / "run"), frames=4, stride=2,
        resolution=16, steps=1, num_workers=0, quiet=True, motion_prior=True,
    )  # fmt: skip
    with pytest.raises(UserError, match="fewer than two clips"):
        train(config)
    assert not (tmp_path / "run" / "motion_module").exists()


def test_training_from_motion_modules_with_a_prior_keeps_it_unasked(tiny_model, prior_motion, tmp_path, caplog):
    """Without --motion-prior the teacher's prior is kept as it is, with the teacher's recorded start, and the result
    renders from it with no 'does not apply'; with --motion-prior it is refitted to the clips."""
    from clips import write_dataset

    from videodiff.config import TrainConfig
    from videodiff.training.loop import train

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    start = {"motion_prior": 0.5, "motion_prior_space": "latent"}
    (model / "videodiff.json").write_text(json.dumps({"defaults": start}))
    config = TrainConfig(
        model=str(model), motion_module=str(prior_motion), data=str(write_dataset(tmp_path / "clips", count=3)),
        output=str(tmp_path / "run"), frames=4, stride=2, resolution=16, steps=1, cache_latents=True,
        num_workers=0, quiet=True,
    )  # fmt: skip
    folder = train(config) / "motion_module"
    teacher = (prior_motion / PRIOR_FILE).read_bytes()
    assert (folder / PRIOR_FILE).read_bytes() == teacher
    assert read_json(folder / "videodiff.json")["defaults"] == start
    with caplog.at_level("WARNING", logger="videodiff"):
        result = load_pipeline(str(model), str(folder))("a square moving right", seed=0, **RENDER)
    assert "does not apply" not in caplog.text
    assert result.settings["motion_prior"] == 0.5 and result.settings["motion"][0] > 1.0
    refit = train(config.replace(output=str(tmp_path / "refit"), motion_prior=True)) / "motion_module"
    assert (refit / PRIOR_FILE).read_bytes() != teacher and read_json(refit / "videodiff.json")["defaults"] == start


def test_along_centres_the_prompts_object_on_each_frames_point():
    feats, clips, _ = synthetic_set()
    prior, _ = MotionPrior.fit(feats, clips, patch=5)
    guess = prior.predict(feats[0])
    block, drawn = BlockCodec(), []
    codec = PixelCodec(block.decode, lambda pixels: drawn.append(pixels) or torch.zeros(1, 4, 4, 16, 16), 4)
    centres = torch.tensor([[20.0, 12.5], [21.3, 18.0], [30.0, 40.2], [44.7, 50.0]])  # pixels (y, x), not a line
    assert prior.along(feats[0][None, None], (1, 4, 4, 16, 16), centres, codec).shape == (1, 4, 4, 16, 16)
    (drawn,) = drawn
    assert torch.allclose(pixel_centres(drawn, guess.background[:3] / 4), centres, atol=0.3)


def test_vid2vid_starts_from_the_prompts_object_on_the_clips_track_only_with_a_prior_and_one_object(
    tiny_model, tiny_motion, prior_motion
):
    from clips import moving_square

    pipe, plain = load_pipeline(str(tiny_model), str(prior_motion)), load_pipeline(str(tiny_model), str(tiny_motion))
    square = moving_square(4, 16, square=4, step=2)  # one red square on grey
    noise = torch.Generator().manual_seed(0)
    scene = torch.randint(0, 256, (4, 16, 16, 3), generator=noise, dtype=torch.uint8).numpy()  # no one object
    args = dict(seed=1, strength=0.6, **RENDER)
    on = pipe.vid2vid(square, "a square moving right", motion_prior=0.5, **args)
    assert on.settings["track"] == "clip" and on.settings["motion_prior"] == 0.5
    reference = plain.vid2vid(square, "a square moving right", **args).latents
    assert not torch.equal(on.latents, reference)
    for clip, prior in ((square, 0.0), (scene, 0.5)):  # the prior off, or no track to follow: the clip's own start
        off = pipe.vid2vid(clip, "a square moving right", motion_prior=prior, **args)
        assert "track" not in off.settings and off.settings["motion_prior"] == 0.0
        assert torch.equal(off.latents, plain.vid2vid(clip, "a square moving right", **args).latents)


def test_a_loops_track_swings_out_the_velocitys_way_and_back_in_view():
    feats, clips, _ = synthetic_set()
    prior, _ = MotionPrior.fit(feats, clips, patch=5)
    shape, velocity = (1, 4, 48, 16, 16), (0.1, -0.4)  # cells per frame: mostly left
    track = prior.track(velocity, shape, torch.Generator().manual_seed(0), loop=True)
    around = torch.cat([track, track[:1]])  # frame 48 would be frame 0
    steps = (around[1:] - around[:-1]).norm(dim=-1)
    assert steps.max() <= torch.pi / 2 * steps.mean() + 1e-4  # eased at the turns, no jump at the seam
    assert torch.allclose(steps.mean(), torch.tensor(velocity).norm(), rtol=0.02)  # the asked mean speed
    assert ((track >= 2) & (track <= 13)).all()  # the 5-cell patch stays in view
    assert track[24, 1] < track[0, 1] - 8 and track[24, 0] > track[0, 0]  # out along the velocity first
    assert prior.in_view((0.0, -0.6), shape, loop=True)[1] == pytest.approx(-11 / 24)  # out and back: 24 frames


def test_free_init_after_a_part_way_start_keeps_the_result_whole_and_renews_only_the_noise(tiny_pipe):
    """From pure noise FreeInit is the paper's (the result's high frequencies go with the noise's); from a start
    part-way (the motion prior, pictures, a clip) the result is kept whole and only its noise is renewed."""
    from videodiff.config import SampleSettings
    from videodiff.pipeline.freeinit import free_init_start
    from videodiff.starts import Start

    settings = SampleSettings(prompt="x", steps=8)
    scheduler = make_scheduler("ddim", tiny_pipe.parts.scheduler_config, "linspace")
    noise = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    results = [torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (2, 3)]

    def residuals(step: int) -> list[torch.Tensor]:
        schedule = sampling.Schedule(scheduler, 8, step)
        signal = scheduler.alphas_cumprod[int(schedule.timesteps[0])].sqrt()
        out = []
        for result in results:
            begin = Start(torch.zeros_like(noise), step)
            start = free_init_start(settings, result, begin, noise, scheduler, torch.Generator().manual_seed(4),
                                    None, torch.device("cpu"), torch.float32)  # fmt: skip
            out.append(start.latents - signal * result)
        return out

    part_way = residuals(3)
    assert torch.allclose(*part_way, atol=1e-5)  # what is not the result does not depend on it: renewed noise
    assert not torch.allclose(*residuals(0), atol=1e-3)  # the paper's: the result's high frequencies replaced
