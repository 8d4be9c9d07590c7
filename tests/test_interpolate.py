"""Frame interpolation (--interpolate, videodiff interpolate, eval interp): frame counts, rates, the sidecar,
refusals, and that optical flow puts the object where the world's ground truth has it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace

import numpy as np
import pytest
from cli_helpers import assert_user_error, invoke, ok

from videodiff.config import RenderConfig
from videodiff.errors import UserError
from videodiff.post import Clip, run_post, steps_for
from videodiff.post.interpolate import Interpolate, frames_after, interpolate
from videodiff.settings.post import PostSettings
from videodiff.shapes.interp_eval import WEIGHT_FREE

PROMPT = "a red circle moving right"
SMALL = ("--frames", 4, "--height", 16, "--width", 16, "--steps", 2, "--seed", 1, "-q")


def frames(n: int = 4, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


@pytest.mark.parametrize("method", WEIGHT_FREE)
@pytest.mark.parametrize("loop", [False, True])
def test_every_frame_is_kept_with_n_minus_1_between(method, loop):
    given = frames(4)
    out = interpolate(given, 3, method, loop=loop)
    assert out.shape == (frames_after(4, 3, loop=loop), 16, 16, 3) == ((12 if loop else 10), 16, 16, 3)
    assert np.array_equal(out[::3][:4], given)  # the originals at i * N
    if method == "repeat":
        assert np.array_equal(out[1], given[0]) and np.array_equal(out[2], given[0])
    if method == "blend":
        expected = np.rint(given[0] * (2 / 3) + given[1] * (1 / 3))
        assert np.abs(out[1].astype(int) - expected).max() <= 1
    if loop and method == "blend":  # the frames after the last lead back to the first
        expected = np.rint(given[3] * (2 / 3) + given[0] * (1 / 3))
        assert np.abs(out[10].astype(int) - expected).max() <= 1


def test_the_step_multiplies_the_rate_and_moves_pinned_pictures():
    picture = frames(1)[0]
    clip = Clip(frames(4), 8.0, {3: picture})
    steps = steps_for(PostSettings(paste=True, interpolate=2), clip)
    assert [s.name for s in steps] == ["paste", "interpolate"]  # paste first: interpolation starts from the pictures
    out, records = run_post(clip, steps)
    assert out.frames.shape[0] == 7 and out.fps == 16.0 and set(out.pictures) == {6}
    assert np.array_equal(out.frames[6], picture)
    assert records[1] == {"step": "interpolate", "factor": 2, "method": "flow", "loop": False, "frames": 7, "fps": 16.0}
    assert Interpolate(2)(replace(clip, fps=None)).fps is None  # no rate given: none made up
    one = Clip(frames(1), 8.0)
    assert steps_for(PostSettings(interpolate=2), one) == []  # nothing between
    looping = replace(one, loop=True)
    assert steps_for(PostSettings(interpolate=2), looping)[0](looping).frames.shape[0] == 2


def test_a_render_s_loop_reaches_the_post_stage(tmp_path, models):
    """The sampler's --loop is the clip's (one setting, read by the post stage from the clip): 4 looping frames
    interpolated 2x are 8, the last two leading back to the first."""
    out = tmp_path / "loop.gif"
    ok(invoke("render", PROMPT, *models, *SMALL, "--loop", "--interpolate", 2, "-o", out))
    record = json.loads((tmp_path / "loop.gif.json").read_text())
    assert record["loop"] is True and record["info"]["frames_written"] == 8
    assert record["info"]["post"][0]["loop"] is True
    assert "loop" not in {f.name for f in dataclasses.fields(PostSettings)}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"interpolate": 1}, "from 2 to 8"),
        ({"interpolate": 9}, "from 2 to 8"),
        ({"interpolate": 2, "interpolate_method": "warp"}, "choose one of: flow, blend, repeat, rife, model"),
        ({"interpolate": 2, "interpolate_method": "rife"}, "rife needs --interpolate-model FILE"),
        ({"interpolate": 2, "interpolate_model": "f.pkl"}, "read by --interpolate-method rife only"),
        ({"interpolate": 8, "fps": 8.0, "output": "x.gif"}, "a GIF plays at most 50 fps; use --interpolate 6"),
        ({"interpolate": 8, "fps": 60.0, "output": "x.mp4"}, "at most at 240 fps; use --interpolate 4"),
    ],
)
def test_settings_that_cannot_work_are_refused(changes, message):
    with pytest.raises(UserError, match=message):
        RenderConfig(prompt=PROMPT, **changes).validate()


def test_flow_puts_the_object_where_the_ground_truth_has_it():
    """Every other frame of held-out clips dropped and made back: flow's object is nearer its true place than
    repetition's, and its frames nearer the true ones than a cross-fade's."""
    from videodiff.shapes.interp_eval import run_interp_eval

    rows = {r["method"]: r for r in run_interp_eval(3, seed=5)}
    assert rows["flow"]["centroid_error"] < rows["repeat"]["centroid_error"]
    assert rows["flow"]["psnr"] > rows["blend"]["psnr"] > rows["repeat"]["psnr"]


def test_eval_interp_prints_a_row_per_method():
    result = ok(invoke("eval", "interp", "--clips", 1))
    assert [line.split("|")[1].strip() for line in result.output.splitlines()[2:]].count("flow") == 1
    assert len(result.output.splitlines()) == 2 + len(WEIGHT_FREE)


@pytest.fixture
def video(tmp_path):
    from videodiff.media.video import save_video

    return save_video(frames(5), tmp_path / "in.gif", fps=8)


def test_interpolate_any_video(video, tmp_path):
    import imageio.v3 as iio
    from PIL import Image

    out = tmp_path / "out.gif"
    result = ok(invoke("interpolate", video, "-o", out, "--interpolate", 2, "--interpolate-method", "blend"))
    assert "9 frames, 16 fps" in result.output
    assert iio.imread(out).shape[0] == 9
    with Image.open(out) as gif:  # 16 fps is 6.25 cs a frame: whole centiseconds that add up to no drift
        delays = [gif.seek(i) or gif.info["duration"] for i in range(gif.n_frames)]
    assert set(delays) <= {60, 70} and abs(sum(delays) - 9 / 16 * 1000) <= 5
    record = json.loads((tmp_path / "out.gif.json").read_text())
    assert record["interpolate"] == 2 and record["interpolate_method"] == "blend"
    assert record["info"]["post"][0]["factor"] == 2 and record["info"]["fps_written"] == 16.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--interpolate", 1), "from 2 to 8"),
        (("--interpolate", 9), "from 2 to 8"),
        ((), "--interpolate N is needed"),
        (("--interpolate", 7), "a GIF plays at most 50 fps"),
    ],
)
def test_interpolate_refuses_in_one_line_and_writes_nothing(video, tmp_path, args, message):
    before = sorted(tmp_path.iterdir())
    assert message in assert_user_error(invoke("interpolate", video, "-o", tmp_path / "o.gif", *args))
    assert sorted(tmp_path.iterdir()) == before


def test_interpolate_refuses_unreadable_videos_and_existing_outputs(video, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    before = sorted(tmp_path.iterdir())
    assert "bad.mp4" in assert_user_error(invoke("interpolate", bad, "-o", tmp_path / "o.mp4", "--interpolate", 2))
    assert "already exists" in assert_user_error(invoke("interpolate", video, "-o", video, "--interpolate", 2))
    assert sorted(tmp_path.iterdir()) == before


def test_render_interpolates_records_and_renders_again_from_the_sidecar(tmp_path, models):
    import imageio.v3 as iio

    out = tmp_path / "v.gif"
    ok(invoke("render", PROMPT, *models, *SMALL, "--fps", 16, "--interpolate", 2, "-o", out))  # --fps: written
    record = json.loads((tmp_path / "v.gif.json").read_text())
    assert record["interpolate"] == 2 and record["interpolate_method"] == "flow"
    info = record["info"]
    assert info["frames_written"] == 7 and info["fps_written"] == 16.0 and record["fps"] == 8.0
    assert [s["step"] for s in info["post"]] == ["interpolate"]
    again = tmp_path / "again.gif"
    ok(invoke("render", "--config", tmp_path / "v.gif.json", *models, "-q", "-o", again))
    assert np.array_equal(iio.imread(again), iio.imread(out))


def gif_delays(path) -> list[int]:
    from PIL import Image

    with Image.open(path) as gif:
        return [gif.seek(i) or gif.info["duration"] for i in range(gif.n_frames)]


def test_fps_sets_the_written_rate_and_a_gif_gets_whole_centiseconds_without_drift(video, tmp_path):
    """8 fps times 4 is 32 fps, 3.125 cs a frame: the delays are 3 and 4 cs, summing to the exact duration; with
    --fps 8 the same 17 frames play at 8 fps (slow motion), 12 and 13 cs alternating."""
    fast, slow = tmp_path / "fast.gif", tmp_path / "slow.gif"
    ok(invoke("interpolate", video, "-o", fast, "--interpolate", 4, "--interpolate-method", "blend"))
    ok(invoke("interpolate", video, "-o", slow, "--interpolate", 4, "--interpolate-method", "blend", "--fps", 8))
    for path, rate, allowed in ((fast, 32, {30, 40}), (slow, 8, {120, 130})):
        delays = gif_delays(path)
        assert len(delays) == 17 and set(delays) <= allowed
        ends = np.cumsum(delays)
        assert np.abs(ends - np.arange(1, 18) * 1000 / rate).max() <= 5  # every frame within half a cs
        assert json.loads(path.with_name(path.name + ".json").read_text())["info"]["fps_written"] == rate
    assert "a GIF plays at most 50 fps" in assert_user_error(
        invoke("interpolate", video, "-o", tmp_path / "x.gif", "--interpolate", 2, "--fps", 60)
    )
