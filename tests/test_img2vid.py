"""img2vid and vid2vid: keyframe maths, the pipeline's anchoring, the commands and their bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke, ok, read_json
from PIL import Image

from videodiff import keyframes, load_pipeline
from videodiff.errors import UserError
from videodiff.media.video import save_video
from videodiff.post.paste import paste
from videodiff.sampling import Schedule
from videodiff.schedulers import make_scheduler
from videodiff.shapes.detect import keyframe_track, objects_per_frame
from videodiff.shapes.evaluate import detect, ground_truth_render_fn, psnr, vae_roundtrip

SMALL = dict(num_frames=4, height=16, width=16, num_inference_steps=4)


# ---------------------------------------------------------------- keyframe maths


def test_shifted_moves_the_picture_by_the_velocity():
    latent = torch.zeros(1, 2, 8, 8)
    latent[:, :, 3, 2] = 1.0
    video = keyframes.shifted(latent, 4, (0.0, 1.0))  # one cell right per frame
    for f in range(4):
        peak = video[0, 0, f].argmax()
        assert divmod(int(peak), 8) == (3, 2 + f)
    back = keyframes.shifted(latent, 4, (1.0, 0.0), at=3)  # pinned at the last frame, moving down
    assert divmod(int(back[0, 1, 3].argmax()), 8) == (3, 2) and divmod(int(back[0, 1, 0].argmax()), 8) == (0, 2)


def test_blended_keeps_the_keys_and_mixes_between_them():
    a, b = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    video = keyframes.blended({1: a, 5: b}, 7)
    assert video.shape == (1, 4, 7, 2, 2)
    assert torch.equal(video[:, :, 0], a) and torch.equal(video[:, :, 1], a)  # before the first key: the first
    assert torch.equal(video[:, :, 5], b) and torch.equal(video[:, :, 6], b)
    assert torch.allclose(video[:, :, 3], torch.full_like(a, 0.5))


def test_anchor_renoises_the_pinned_frames_then_lets_go():
    sched = make_scheduler("dpm++", {"num_train_timesteps": 1000})
    schedule = Schedule(sched, 6)
    clean, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 3, 8, 8)
    anchor = keyframes.Anchor({2: clean}, noise, schedule, until=0.5)
    latents = torch.randn(1, 4, 3, 8, 8)
    ts = schedule.timesteps
    held = anchor(0, 6, ts[0], ts[1], latents, 0)
    expected = sched.add_noise(clean, noise[:, :, 2], ts[1].reshape(1))
    assert torch.equal(held[:, :, 2], expected) and torch.equal(held[:, :, :2], latents[:, :, :2])
    assert anchor(3, 6, ts[3], ts[4], latents, 0) is None  # past half of the steps: let go
    last = keyframes.Anchor({0: clean}, noise, schedule, until=1.0)(5, 6, ts[5], None, latents, 0)
    assert torch.equal(last[:, :, 0], clean)  # after the last step: the clean latent itself


def test_paste_puts_the_pictures_and_matches_colours():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    other = rng.integers(40, 200, (8, 8, 3)).astype(np.uint8)
    dull = lambda x: (x.astype(np.float64) * 0.5 + 20).round().astype(np.uint8)  # noqa: E731 - a colour shift
    frames = np.stack([dull(picture), dull(other)])
    out = paste(frames, {0: picture})
    assert np.array_equal(out[0], picture)
    assert np.abs(out[1].astype(int) - other.astype(int)).max() <= 2  # the shift is undone on the other frame


# ---------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)


def test_frame_held_to_the_end_is_the_picture_through_the_vae(tiny_pipe, picture):
    result = tiny_pipe.img2vid(picture, "a square", seed=1, anchor=1.0, output_type="latent", **SMALL)
    expected = tiny_pipe.encode_pictures(picture[None])[:, :, 0]
    assert torch.equal(result.latents[:, :, 0], expected)
    free = tiny_pipe.img2vid(picture, "a square", seed=1, anchor=0.0, output_type="latent", **SMALL)
    assert not torch.equal(free.latents[:, :, 0], expected)  # never held: the model's own frame 0


def test_img2vid_keywords_and_bad_values(tiny_pipe, picture, tmp_path):
    pil = Image.fromarray(picture)
    a = tiny_pipe.img2vid(pil, "a square", seed=2, **SMALL)
    b = tiny_pipe.img2vid(picture, "a square", seed=2, **SMALL)
    assert np.array_equal(a.frames, b.frames) and a.settings["strength"] == 0.85
    pasted = tiny_pipe.img2vid(picture, "a square", seed=2, paste=True, **SMALL)
    assert np.array_equal(pasted.frames[0], picture)
    for bad in ({"strength": 0.0}, {"strength": 1.5}, {"anchor": 2.0}, {"fit": "stretch"}):
        with pytest.raises(UserError):
            tiny_pipe.img2vid(picture, "a square", seed=2, **bad, **SMALL)
    with pytest.raises(UserError, match="outside"):
        tiny_pipe.img2vid(None, "a square", image_at={4: picture}, **SMALL)
    with pytest.raises(UserError, match="needs a picture"):
        tiny_pipe.img2vid(None, "a square", **SMALL)


def test_vid2vid_keeps_the_clip_at_low_strength(tiny_pipe):
    rng = np.random.default_rng(3)
    clip = rng.integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    near = tiny_pipe.vid2vid(clip, "a square", seed=1, strength=0.25, **{**SMALL, "num_frames": 16})
    far = tiny_pipe.vid2vid(clip, "a square", seed=1, strength=1.0, **{**SMALL, "num_frames": 16})
    assert near.frames.shape[0] == 6 and near.settings["frames"] == 6  # a shorter clip: all its frames
    roundtrip = vae_roundtrip(tiny_pipe, clip).astype(int)
    assert np.abs(near.frames - roundtrip).mean() < np.abs(far.frames - roundtrip).mean()
    strided = tiny_pipe.vid2vid(clip, "a square", seed=1, stride=2, **SMALL)
    assert strided.frames.shape[0] == 3


# ---------------------------------------------------------------- the built-in model


@pytest.fixture(scope="module")
def builtin():
    return load_pipeline()


@pytest.mark.parametrize(
    "prompt", ["a red circle moving right", "a blue square moving up", "a green triangle moving left"]
)
def test_builtin_animates_the_picture_the_asked_way(builtin, prompt):
    picture = ground_truth_render_fn(0)(prompt, 0)[0]
    result = builtin.img2vid(picture, prompt, seed=0)
    found = detect(result.frames)
    color, shape, direction = prompt.split()[1], prompt.split()[2], prompt.split()[-1]
    assert (found.color, found.shape, found.direction) == (color, shape, direction)
    assert result.settings["strength"] == pytest.approx(1 - builtin.parts.defaults["motion_prior"])


def _picture(color: str, shape: str, cx: float, cy: float, across: float = 14.0) -> np.ndarray:
    """A shapes-world picture (64x64, plain background) with one object centred at ``(cx, cy)``."""
    from videodiff.shapes.world import PALETTE, _coverage

    bg = np.array([22, 24, 21], np.float32)
    alpha = _coverage(shape, np.array([cx]), np.array([cy]), across, 64, 64)[0][..., None]
    return np.clip(np.rint(bg + alpha * (np.asarray(PALETTE[color], np.float32) - bg)), 0, 255).astype(np.uint8)


def test_object_centre_finds_one_object_and_refuses_a_scene():
    assert keyframes.object_centre(_picture("red", "circle", 20.5, 40.0)) == pytest.approx((40.0, 20.5), abs=0.6)
    scene = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    assert keyframes.object_centre(scene) is None
    assert keyframes.object_centre(np.full((64, 64, 3), 30, np.uint8)) is None  # nothing stands out


def test_the_track_moves_the_object_at_an_even_pace_between_the_pictures():
    a, b = _picture("red", "circle", 12, 20), _picture("red", "circle", 52, 44)
    track = keyframes.pixel_track({0: a, 8: b}, 11)  # two frames after the last picture
    frames = ((track[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    centres = np.array([keyframes.object_centre(f) for f in frames])  # (y, x)
    want = np.array([(20 + 24 * k / 8, 12 + 40 * k / 8) for k in range(9)] + [(44, 52)] * 2)
    assert np.abs(centres - want).max() < 0.75
    assert objects_per_frame(frames) == [1] * 11
    scene = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    assert keyframes.pixel_track({0: scene, 8: b}, 9) is None  # nothing to follow: the latents are blended


def _clip_ends(prompt: str):
    return lambda seed: (prompt, ground_truth_render_fn(0)(prompt, seed))


KEYFRAME_PAIRS = {  # (prompt, pictures) for left to right, bottom to top, and a diagonal (the prompt names the larger)
    "left-right": _clip_ends("a red circle moving right"),
    "bottom-top": _clip_ends("a green square moving up"),
    "diagonal": lambda seed: ("a blue circle moving right", [_picture("blue", "circle", 14, 14),
                                                             _picture("blue", "circle", 50, 44)]),
}  # fmt: skip


def check_keyframe_track(builtin, pair: str, seed: int) -> None:
    """The issue's bar (:func:`videodiff.shapes.detect.keyframe_track`): one object in every frame, each end within
    4 px of its picture, no step over twice the even pace plus 2 px."""
    prompt, clip = KEYFRAME_PAIRS[pair](seed)
    result = builtin.img2vid(None, prompt, image_at={0: clip[0], -1: clip[-1]}, seed=seed)
    assert result.settings["track"] is True
    measured = keyframe_track(result.frames, clip[0], clip[-1])
    assert measured["ok"], measured


def test_the_track_measure_passes_a_true_track_and_fails_a_jump():
    clip = ground_truth_render_fn(0)("a red circle moving right", 2)
    assert keyframe_track(clip, clip[0], clip[-1])["ok"]
    jump = np.concatenate([np.repeat(clip[:1], 8, 0), np.repeat(clip[-1:], 8, 0)])
    measured = keyframe_track(jump, clip[0], clip[-1])
    assert not measured["ok"] and measured["single"] and measured["largest_step"] > 20
    both = np.maximum(clip[0], clip[-1])[None].repeat(16, 0)  # two circles at once
    assert objects_per_frame(both) == [2] * 16 and not keyframe_track(both, clip[0], clip[-1])["ok"]


def test_eval_keyframes_collects_the_track(tiny_pipe):
    from videodiff.shapes.evaluate import fidelity_summary, model_render_fn

    render, settings, fidelity = model_render_fn(tiny_pipe, steps=2, frames=4, img2vid={"keyframes": True})
    render("a red circle moving right", 0)
    assert isinstance(fidelity[0]["track"], bool) and settings["keyframes"] is True
    assert 0 <= fidelity_summary(fidelity)["track"] <= 100


@pytest.mark.parametrize("pair,seed", [("left-right", 0), ("diagonal", 1)])
def test_builtin_keyframes_make_a_track(builtin, pair, seed):
    check_keyframe_track(builtin, pair, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pair", sorted(KEYFRAME_PAIRS))
def test_builtin_keyframes_make_a_track_every_pair_and_seed(builtin, pair, seed):
    check_keyframe_track(builtin, pair, seed)


# ---------------------------------------------------------------- the commands


def write_picture(path, size=(64, 64), mode="RGB"):
    rng = np.random.default_rng(4)
    array = rng.integers(0, 256, (size[1], size[0], 4 if mode == "RGBA" else 3)).astype(np.uint8)
    Image.fromarray(array, mode).save(path)
    return path


def test_cli_img2vid_writes_a_video_whose_sidecar_renders_it_again(models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_picture(tmp_path / "still.png", (40, 24), "RGBA")
    flags = ("--frames", 4, "--height", 16, "--width", 16, "--steps", 3, "--seed", 1, "-q")
    ok(invoke("img2vid", "still.png", "a square", *models, *flags, "-o", "a.gif"))
    side = read_json(tmp_path / "a.gif.json")
    assert side["image_at"] == [f"0:{tmp_path / 'still.png'}"]
    assert len(side["info"]["inputs"][str(tmp_path / "still.png")]) == 64  # its SHA-256
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    ok(invoke("render", "--config", tmp_path / "a.gif.json", "-o", "b.gif", "-q"))
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in (tmp_path / "a.gif", tmp_path / "elsewhere/b.gif")]
    assert np.array_equal(*frames)


def test_cli_vid2vid_takes_the_clip_rate_over_the_stride(models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(5)
    save_video(rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8), tmp_path / "in.mp4", fps=12)
    flags = ("--height", 16, "--width", 16, "--steps", 3, "--seed", 1, "-q")
    ok(invoke("vid2vid", "in.mp4", "a square", *models, *flags, "--stride", 2, "-o", "out.mp4"))
    side = read_json(tmp_path / "out.mp4.json")
    assert (side["frames"], side["fps"], side["info"]["strength"]) == (4, 6.0, 0.6)
    ok(invoke("vid2vid", "in.mp4", "a square", *models, *flags, "--fps", 24, "-o", "fast.mp4"))
    assert read_json(tmp_path / "fast.mp4.json")["fps"] == 24.0


def test_cli_vid2vid_of_an_8_fps_gif_says_8_fps(models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(5)
    save_video(rng.integers(0, 256, (4, 16, 16, 3)).astype(np.uint8), tmp_path / "in.gif", fps=8)
    flags = ("--height", 16, "--width", 16, "--steps", 2, "--seed", 1)
    result = ok(invoke("vid2vid", "in.gif", "a square", *models, *flags, "-o", "out.gif"))
    assert "4 frames, 16x16, 8 fps, 0.50 s of video" in result.output
    assert read_json(tmp_path / "out.gif.json")["fps"] == 8.0


@pytest.mark.parametrize(
    "args, words",
    [
        (("img2vid", "still.png"), "no prompt"),
        (("img2vid", "still.png", "a square", "--strength", "0"), "strength"),
        (("img2vid", "still.png", "a square", "--strength", "1.01"), "strength"),
        (("img2vid", "a square", "--image-at", "9:still.png"), "outside"),
        (("img2vid", "a square", "--image-at", "still.png"), "FRAME:PATH"),
        (("img2vid", "notes.png", "a square"), "notes.png"),
        (("img2vid", "empty.png", "a square"), "empty.png"),
        (("img2vid", "missing.png", "a square"), "missing.png"),
        (("img2vid", "still.png", "a square", "--fit", "stretch"), "fit"),
        (("img2vid", "still.png", "a square", "--background", "red"), "background"),
        (("vid2vid", "notes.mp4", "a square"), "notes.mp4"),
        (("vid2vid", "empty.mp4", "a square"), "empty.mp4"),
        (("vid2vid", "still.png", "a square", "--stride", "0"), "stride"),
        (("vid2vid", "still.png", "a square"), "still.png is a still picture: animate it with videodiff img2vid"),
        (("vid2vid", "still.jpg", "a square"), "still.jpg is a still picture: animate it with videodiff img2vid"),
        (("vid2vid", "one.gif", "a square"), "one.gif is a still picture: animate it with videodiff img2vid"),
    ],
)
def test_bad_inputs_are_one_line_and_write_nothing(models, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    write_picture(tmp_path / "still.png")
    write_picture(tmp_path / "still.jpg")
    save_video(np.zeros((1, 16, 16, 3), np.uint8), tmp_path / "one.gif")
    (tmp_path / "notes.png").write_text("not a picture")
    (tmp_path / "notes.mp4").write_text("not a video")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "empty.mp4").write_bytes(b"")
    flags = ("--frames", 4, "--height", 16, "--width", 16, "--steps", 2, "--seed", 1)
    message = assert_user_error(invoke(*args, *models, *flags, "-o", "out.gif"))
    assert words in message
    assert not (tmp_path / "out.gif").exists() and not (tmp_path / "out.gif.json").exists()


def test_frame_zero_matches_the_picture_as_well_as_the_vae_does(builtin):
    """With the defaults (paste off) frame 0 is the model's own, held for --anchor of the steps: measured in the
    README over the evaluation's set; here on a few pictures, against the picture's own VAE round trip."""
    truth = ground_truth_render_fn(0)
    gaps = []
    for prompt in ("a red circle moving right", "a blue square moving down"):
        picture = truth(prompt, 2)[0]
        frame0 = builtin.img2vid(picture, prompt, seed=2).frames[0]
        gaps.append(psnr(vae_roundtrip(builtin, picture[None])[0], picture) - psnr(frame0, picture))
    assert max(gaps) <= 1.0, gaps


# ---------------------------------------------------------------- vid2vid on the built-in model

VID2VID_PAIRS = {  # a ground-truth clip, and a prompt asking for another colour (and keeping the shape and motion)
    "green-to-purple": ("a green square moving down", "a purple square moving down"),
    "orange-to-green": ("a orange square moving right", "a green square moving right"),
}


def check_vid2vid_follows(builtin, source: np.ndarray, prompt: str, seed: int) -> None:
    """The clip's track: one object in every frame, the prompt's colour, its centroid within 4 px of the clip's."""
    result = builtin.vid2vid(source, prompt, strength=0.6, seed=seed)
    found = detect(result.frames)
    error = np.linalg.norm(found.centroids - detect(source).centroids, axis=1)
    assert objects_per_frame(result.frames) == [1] * len(source)
    assert not np.isnan(error).any() and error.max() <= 4, np.round(error, 1).tolist()
    assert found.color == prompt.split()[1] and result.settings["track"] == "clip"


def test_builtin_vid2vid_follows_the_clip(builtin):
    source, prompt = VID2VID_PAIRS["green-to-purple"]
    check_vid2vid_follows(builtin, ground_truth_render_fn(0)(source, 0), prompt, seed=2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pair", sorted(VID2VID_PAIRS))
def test_builtin_vid2vid_follows_the_clip_every_pair_and_seed(builtin, pair, seed):
    source, prompt = VID2VID_PAIRS[pair]
    check_vid2vid_follows(builtin, ground_truth_render_fn(0)(source, 0), prompt, seed)


@pytest.mark.slow  # three renders
def test_the_readme_vid2vid_example_follows_its_source(builtin, tmp_path):
    """The README's chain: render circle.gif, img2vid it to moving.gif, vid2vid that to blue.gif (GIFs between)."""
    from videodiff.media.clips import read_video

    save_video(builtin("a red circle moving right", seed=1).frames, tmp_path / "circle.gif", fps=8)
    moving = builtin.img2vid(tmp_path / "circle.gif", "a red circle moving right", seed=1).frames
    save_video(moving, tmp_path / "moving.gif", fps=8)
    check_vid2vid_follows(builtin, read_video(tmp_path / "moving.gif")[0], "a blue circle moving right", seed=1)


# ---------------------------------------------------------------- real media (../shared/data)


@pytest.mark.parametrize("fit", ["crop", "pad"])
def test_real_photographs_through_img2vid(tiny_pipe, shared_data, fit):
    for name in ("chelsea.png", "coffee.png"):  # 451x300 and 600x400
        for height, width in ((16, 16), (16, 24), (24, 16)):
            result = tiny_pipe.img2vid(
                shared_data / name, "a cat", seed=1, fit=fit, background=(255, 0, 255), paste=True,
                num_frames=2, height=height, width=width, num_inference_steps=2,
            )  # fmt: skip
            assert result.frames.shape == (2, height, width, 3)


def test_real_clips_through_vid2vid(tiny_pipe, shared_data):
    for name in ("cockatoo.mp4", "cockatoo_yuv420.mp4", "newtonscradle.gif"):  # 4:4:4 and 4:2:0 H.264, a GIF
        for fit in ("crop", "pad"):
            result = tiny_pipe.vid2vid(
                shared_data / name, "a bird", seed=1, stride=3, fit=fit,
                num_frames=3, height=16, width=24, num_inference_steps=2,
            )  # fmt: skip
            assert result.frames.shape == (3, 16, 24, 3) and result.settings["source_fps"] > 0


@pytest.mark.slow
def test_real_media_on_the_sd_layout(shared_data, tmp_path):
    """cpu-small (SD1.5's layout and attention widths, random weights: the frames mean nothing) through both."""
    from videodiff.tiny import build_tiny_model, build_tiny_motion_adapter

    widths = (64, 128, 256, 256)
    attention = dict(cross_attention_dim=768, attention_head_dim=8)
    model = build_tiny_model(tmp_path / "model", block_out_channels=widths, vae_channels=widths, **attention)
    motion = build_tiny_motion_adapter(tmp_path / "motion", block_out_channels=widths, motion_heads=8)
    pipe = load_pipeline(str(model), str(motion), device="cpu")
    small = dict(num_frames=2, height=64, width=128, num_inference_steps=1, seed=1)
    assert pipe.img2vid(shared_data / "chelsea.png", "a cat", fit="pad", **small).frames.shape == (2, 64, 128, 3)
    assert pipe.vid2vid(shared_data / "cockatoo.mp4", "a bird", **small).frames.shape == (2, 64, 128, 3)


def test_eval_img2vid_render_fn_collects_frame_zero_fidelity(tiny_pipe):
    from videodiff.shapes.evaluate import fidelity_summary, model_render_fn

    render, settings, fidelity = model_render_fn(tiny_pipe, steps=2, frames=2, img2vid={"anchor": 1.0, "strength": 0.5})
    frames = render("a red circle moving right", 0)
    assert frames.shape[0] == 2 and len(fidelity) == 1 and settings["anchor"] == 1.0 and settings["strength"] == 0.5
    summary = fidelity_summary(fidelity)
    assert summary["videos"] == 1 and summary["within_1db"] == 100.0  # held to the end: the VAE's own frame 0
    assert model_render_fn(tiny_pipe, steps=2, frames=2)[2] is None


def test_pinned_pictures_work_through_sliding_windows(tiny_pipe, picture):
    """A video longer than one window (the tiny motion modules record no train_frames: windows of 16): the pinned
    first and last frames are held across windows, to the end."""
    frames = 2 * tiny_pipe.train_frames + 3
    result = tiny_pipe.img2vid(
        picture, "a square", image_at={-1: picture[::-1]}, seed=1, output_type="latent",
        num_frames=frames, height=16, width=16, num_inference_steps=2,
    )  # fmt: skip
    assert tiny_pipe.windows_for(tiny_pipe.settings("a square", num_frames=frames)) is not None
    keys = tiny_pipe.encode_pictures(np.stack([picture, picture[::-1].copy()]))
    assert torch.equal(result.latents[:, :, 0], keys[:, :, 0]) and torch.equal(result.latents[:, :, -1], keys[:, :, 1])


def test_vid2vid_pads_with_the_background(tiny_pipe):
    from videodiff.pipelines import VideoInput

    clip = np.full((3, 16, 16, 3), 128, np.uint8)  # square frames into a wide video: borders left and right
    fitted, fps = tiny_pipe.read_source(VideoInput(clip, fit="pad", background=(255, 0, 255)), 2, 16, 32)
    assert fitted.video.shape == (2, 16, 32, 3) and fps > 0
    assert (fitted.video[:, :, 0] == (255, 0, 255)).all() and (fitted.video[:, :, 16] == 128).all()
