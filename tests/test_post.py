"""The post-processing stage between decoding and writing: its steps, their order and records, and that every
path (render's files and sidecar, the Python API, eval shapes) runs it."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from cli_helpers import assert_user_error, invoke, ok

from videodiff import pipelines
from videodiff.post import Clip, run_post, steps_for
from videodiff.post.paste import Paste
from videodiff.settings.post import PostSettings

PROMPT = "a red circle moving right"
SMALL = ("--frames", 4, "--height", 16, "--width", 16, "--steps", 2, "--seed", 1, "-q")


class EveryOther:
    """A step that changes the frame count and the fps (as interpolation will): every other frame, half the rate."""

    name = "every-other"

    def __call__(self, clip: Clip) -> Clip:
        return replace(clip, frames=clip.frames[::2].copy(), fps=clip.fps / 2, pictures={})

    def record(self) -> dict:
        return {"kept": "every other frame"}


def frames(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)


def test_steps_are_chosen_in_order_and_recorded():
    picture = frames(1)[0]
    clip = Clip(frames(), 8.0, {2: picture})
    assert steps_for(PostSettings(), clip) == []
    assert steps_for(PostSettings(paste=True), replace(clip, pictures={})) == []  # nothing to paste
    (step,) = steps_for(PostSettings(paste=True), clip)
    assert isinstance(step, Paste)
    out, records = run_post(clip, [step, EveryOther()])
    assert records == [
        {"step": "paste", "frames": 4, "fps": 8.0},
        {"step": "every-other", "kept": "every other frame", "frames": 2, "fps": 4.0},
    ]
    assert out.frames.shape == (2, 8, 8, 3) and np.array_equal(out.frames[1], picture)  # pasted, then thinned


def test_a_clip_is_uint8_frames():
    with pytest.raises(ValueError, match="uint8"):
        Clip(frames().astype(np.float32))


def test_render_writes_what_the_post_steps_made(tmp_path, models, monkeypatch):
    """A step that changes frame count and fps: the file, the summary line and the sidecar follow it."""
    monkeypatch.setattr(pipelines, "steps_for", lambda settings, clip: [EveryOther()])
    out = tmp_path / "v.gif"
    result = ok(invoke("render", PROMPT, *models, *SMALL[:-1], "--fps", 8, "-o", out))  # not quiet: the summary
    info = json.loads((tmp_path / "v.gif.json").read_text())["info"]
    assert info["frames_written"] == 2 and info["fps_written"] == 4.0
    assert info["post"] == [{"step": "every-other", "kept": "every other frame", "frames": 2, "fps": 4.0}]
    assert "2 frames" in result.output and "4 fps" in result.output
    import imageio.v3 as iio

    assert iio.imread(out).shape[0] == 2


def test_img2vid_paste_is_a_recorded_post_step(tmp_path, models, tiny_pipe):
    picture = frames(1)[0].repeat(2, 0).repeat(2, 1)
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "p.png", picture)
    out = tmp_path / "a.mp4"
    ok(invoke("img2vid", tmp_path / "p.png", PROMPT, *models, *SMALL, "--paste", "-o", out))
    record = json.loads((tmp_path / "a.mp4.json").read_text())
    assert record["paste"] is True and record["info"]["post"][0]["step"] == "paste"
    # the Python API: the same step, the exact picture in frame 0
    small = dict(num_frames=4, num_inference_steps=2, height=16, width=16)
    result = tiny_pipe.img2vid(picture, PROMPT, seed=1, paste=True, **small)
    assert np.array_equal(result.frames[0], picture) and [s["step"] for s in result.post] == ["paste"]


def test_eval_shapes_runs_the_post_stage_and_any_setting(tiny_pipe):
    from videodiff.shapes.evaluate import model_render_fn

    render, settings, _ = model_render_fn(
        tiny_pipe, steps=2, frames=2, img2vid={"strength": 0.5}, overrides={"scheduler": "ddim"},
        post=PostSettings(paste=True),
    )  # fmt: skip
    render(PROMPT, 0)
    assert settings["scheduler"] == "ddim" and [s["step"] for s in settings["post"]] == ["paste"]


def test_eval_set_refuses_unknown_keys_and_bad_values(models):
    assert "KEY one of" in assert_user_error(invoke("eval", "shapes", *models, "--set", "bogus=1", "--seeds", 1))
    assert "--steps" in assert_user_error(invoke("eval", "shapes", *models, "--set", "steps=0", "--seeds", 1))
    assert "the seed itself" in assert_user_error(invoke("eval", "shapes", *models, "--set", "seed=3", "--seeds", 1))
