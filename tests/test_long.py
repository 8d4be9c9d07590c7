"""Long videos beyond the windows: FreeNoise noise, FreeInit, prompt travel, train_frames, their settings."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_user_error, invoke, ok

from videodiff.errors import UserError
from videodiff.noise import freenoise_order, lowpass_filter, mix_frequencies, reschedule, sample_noise

PROMPT = "a red circle moving right"
SMALL = ("--height", "16", "--width", "16", "--steps", "2")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- FreeNoise


def test_freenoise_order_is_seed_determined():
    assert freenoise_order(64, 16, 12, gen(1)) == freenoise_order(64, 16, 12, gen(1))
    assert freenoise_order(64, 16, 12, gen(1)) != freenoise_order(64, 16, 12, gen(2))
    noise = sample_noise((1, 2, 40, 3, 3), generator=gen(0))
    assert torch.equal(reschedule(noise, 16, 12, gen(5)), reschedule(noise, 16, 12, gen(5)))


@pytest.mark.parametrize(
    ("frames", "window", "stride"), [(64, 16, 12), (37, 16, 12), (50, 8, 1), (16, 16, 4), (9, 16, 4)]
)
def test_later_windows_hold_the_first_windows_noise_shuffled(frames, window, stride):
    order = freenoise_order(frames, window, stride, gen(3))
    assert len(order) == frames
    assert order[: min(window, frames)] == list(range(min(window, frames)))  # the first window keeps its own
    assert set(order) <= set(range(window))
    for begin in range(window, frames, stride):  # each stride of frames: the one a window earlier, reordered
        chunk = order[begin : begin + stride]
        source = order[begin - window : begin - window + stride]
        assert len(set(chunk)) == len(chunk) and set(chunk) <= set(source)  # the last may be cut short
        if len(chunk) == stride:
            assert sorted(chunk) == sorted(source)
    for start in range(0, frames - window + 1, stride):  # so every window on the stride grid is a permutation
        assert sorted(order[start : start + window]) == list(range(window))
    noise = sample_noise((1, 2, frames, 3, 3), kind="mixed", generator=gen(0))
    assert torch.equal(reschedule(noise, window, stride, gen(3)), noise[:, :, order])


def test_windowed_render_starts_from_rescheduled_noise(tiny_pipe):
    settings = tiny_pipe.settings(PROMPT, num_frames=12, window=4, overlap=1, height=16, width=16)
    drawn = tiny_pipe.initial_noise(settings, gen(7))
    plain = tiny_pipe.initial_noise(tiny_pipe.settings(PROMPT, num_frames=12, window=4, overlap=1, height=16, width=16,
                                                       window_noise="plain"), gen(7))  # fmt: skip
    assert torch.equal(drawn[:, :, :4], plain[:, :, :4]) and not torch.equal(drawn, plain)
    order = freenoise_order(12, 4, 3, gen(7).manual_seed(7))
    assert torch.equal(drawn, reschedule(sample_noise(drawn.shape, generator=gen(7)), 4, 3, _after_draw(drawn.shape)))
    assert len(order) == 12


def _after_draw(shape) -> torch.Generator:
    """The generator as the pipeline's is after drawing independent noise of ``shape``."""
    g = gen(7)
    torch.randn(shape, generator=g)
    return g


# ----------------------------------------------------------------------------- FreeInit


@pytest.mark.parametrize("kind", ["butterworth", "gaussian", "ideal"])
def test_lowpass_filters_pass_the_centre_and_mixing_splits_by_them(kind):
    f = lowpass_filter((1, 4, 8, 16, 16), kind)
    assert f.shape == (8, 16, 16) and ((f >= 0) & (f <= 1)).all()
    assert f[4, 8, 8] == 1 and f[0, 0, 0] < 0.5  # DC passes, the highest frequencies do not
    a, b = torch.randn(1, 2, 8, 16, 16), torch.randn(1, 2, 8, 16, 16)
    torch.testing.assert_close(mix_frequencies(a, b, torch.ones(8, 16, 16)), a, atol=1e-5, rtol=0)
    torch.testing.assert_close(mix_frequencies(a, b, torch.zeros(8, 16, 16)), b, atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="--free-init-filter"):
        lowpass_filter((8, 16, 16), "box")


def test_free_init_runs_every_pass_through_the_step_hook(tiny_pipe):
    seen = []
    kw = dict(num_frames=4, height=16, width=16, num_inference_steps=3, seed=2, output_type="latent")
    once = tiny_pipe(PROMPT, **kw).latents
    twice = tiny_pipe(PROMPT, **kw, free_init=2, on_step=lambda i, n, t, t2, x, p: seen.append((p, i))).latents
    assert seen == [(p, i) for p in range(3) for i in range(3)]
    assert not torch.equal(once, twice) and torch.isfinite(twice).all()


# ----------------------------------------------------------------------------- prompt travel


def test_travel_holds_keyframes_and_blends_between():
    from videodiff.text import travel

    a, b = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    for mode in ("linear", "slerp"):
        ctx = travel({2: a, 6: b}, 9, mode)
        assert ctx.shape == (1, 9, 3, 4)
        for f in (0, 1, 2):
            assert torch.equal(ctx[:, f], a)
        for f in (6, 7, 8):
            assert torch.equal(ctx[:, f], b)
    torch.testing.assert_close(travel({0: a, 4: b}, 5, "linear")[:, 2], (a + b) / 2)
    mid = travel({0: a, 4: b}, 5, "slerp")[:, 2]
    torch.testing.assert_close(mid.norm(dim=-1), ((a.norm(dim=-1) + b.norm(dim=-1)) / 2), atol=0.5, rtol=0.3)


def test_prompt_travel_conditions_each_frame_and_keeps_one_negative(tiny_pipe):
    settings = tiny_pipe.settings(None, num_frames=8, prompt_at={0: "a red circle", 5: "a blue square"}, guidance=3.0,
                                  negative="blurry", height=16, width=16)  # fmt: skip
    cond = tiny_pipe.conditioning(settings)
    assert cond.context.shape[:2] == (1, 8) and cond.uncond.ndim == 3
    assert torch.equal(cond.context[:, 0], tiny_pipe.encode("a red circle")[0:1])
    assert torch.equal(cond.context[:, 7], tiny_pipe.encode("a blue square")[0:1])
    guide = cond.guide(3.0)
    assert guide.batch_context.shape[:2] == (2, 8)
    result = tiny_pipe(None, num_frames=8, prompt_at={0: "a red circle", 5: "a blue square"}, window=4, overlap=1,
                       height=16, width=16, num_inference_steps=2, seed=1, guidance_scale=3.0)  # fmt: skip
    assert result.frames.shape == (8, 16, 16, 3)


def test_prompt_at_from_the_command_line_yaml_and_sidecar(tmp_path, models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    travel = ("--prompt-at", "0:a red circle", "--prompt-at", "4:a blue circle", "--travel", "slerp")
    args = ("--frames", "6", "--window", "4", "--seed", "1", "-o", "a.gif", *travel, "-q")
    out = ok(invoke("render", *models, *SMALL, *args))
    assert out
    sidecar = json.loads((tmp_path / "a.gif.json").read_text())
    assert sidecar["prompt_at"] == {"0": "a red circle", "4": "a blue circle"} and sidecar["travel"] == "slerp"
    # the sidecar renders again (JSON's text keys read back as frames), and YAML mappings work too
    ok(invoke("render", *models, "--config", "a.gif.json", "-o", "b.gif", "-q"))
    (tmp_path / "t.yaml").write_text("prompt_at:\n  0: a red circle\n  3: a blue circle\nframes: 6\n")
    ok(invoke("render", *models, *SMALL, "--config", "t.yaml", "--seed", "1", "-o", "c.gif", "-q"))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--prompt-at", "x:a red circle"], ["--prompt-at", "FRAME:TEXT"]),
        (["--prompt-at", "3"], ["--prompt-at"]),
        (["--prompt-at", "40:a blue circle"], ["40", "frames"]),
        (["--window", "33"], ["32", "--window"]),
        (["--frames", "1025"], ["1024"]),
        (["--overlap", "4", "--window", "4"], ["--overlap"]),
        (["--fuse", "median"], ["median", "pyramid"]),
        (["--free-init-filter", "box"], ["box", "butterworth"]),
        (["--free-init-spatial", "0"], ["--free-init-spatial"]),
        (["--travel", "cubic"], ["cubic", "slerp"]),
    ],
)
def test_bad_long_video_settings_are_one_line_errors(args, words, tmp_path, models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = assert_user_error(invoke("render", PROMPT, *models, *SMALL, "--frames", "8", *args, "-o", "x.gif"))
    for word in words:
        assert word in message, message
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- train_frames


def test_train_frames_from_the_motion_folder_then_the_model_then_16(tmp_path, tiny_model, tiny_motion):
    from videodiff import load_pipeline
    from videodiff.tiny import build_tiny_model
    from videodiff.weights.hub import recorded_train_frames

    assert load_pipeline(device="cpu").train_frames == 16  # the built-in model records it
    assert recorded_train_frames(tmp_path, None) == 16
    model = build_tiny_model(tmp_path / "m", with_motion_adapter=True, motion_max_seq_length=8)
    (model / "videodiff.json").write_text(json.dumps({"train_frames": 6}))
    pipe = load_pipeline(str(model), device="cpu")
    assert pipe.train_frames == 6
    assert pipe.windows_for(pipe.settings(PROMPT, num_frames=7)).window == 6
    (model / "motion_adapter" / "videodiff.json").write_text(json.dumps({"train_frames": 4}))
    assert load_pipeline(str(model), device="cpu").train_frames == 4
    # another motion module: the model folder's number does not speak for it
    assert load_pipeline(str(model), str(tiny_motion), device="cpu").train_frames == 16
    (model / "motion_adapter" / "videodiff.json").write_text(json.dumps({"train_frames": "many"}))
    with pytest.raises(UserError, match="train_frames"):
        load_pipeline(str(model), device="cpu")


def test_save_trained_records_train_frames(tmp_path, tiny_pipe):
    from videodiff.training.export import save_trained

    folder = save_trained(tiny_pipe.unet, tmp_path, "motion", {}, train_frames=12)
    assert json.loads((folder / "videodiff.json").read_text()) == {"train_frames": 12}
