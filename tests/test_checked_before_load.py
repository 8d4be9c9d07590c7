"""Mistakes that only the loaded model used to find (issue 30, item 16): a truncated picture and an ``--overlap``
as long as the default window are one line before any model is loaded."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_user_error, invoke
from PIL import Image

from videodiff.errors import UserError

PROMPT = "a red circle moving right"
SMALL = ("--height", "16", "--width", "16", "--steps", "1", "--seed", "1", "-q")
NOT_LOADED = "the model was loaded"


@pytest.fixture(autouse=True)
def _no_model(monkeypatch, tmp_path):
    """Loading raises: a check that comes after it shows as that AssertionError (exit 1), not as one line."""
    from videodiff.pipelines import VideoPipeline

    def load(*args, **kwargs):
        raise AssertionError(NOT_LOADED)

    monkeypatch.setattr(VideoPipeline, "load", load)
    monkeypatch.chdir(tmp_path)


def reached_the_model(result) -> bool:
    return isinstance(result.exception, AssertionError) and NOT_LOADED in str(result.exception)


def picture_bytes(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(out, fmt)
    return out.getvalue()


# ---------------------------------------------------------------- a truncated picture


@pytest.mark.parametrize("fmt", ["JPEG", "GIF", "BMP", "TIFF", "PNG"])
def test_a_truncated_picture_is_one_line_before_the_model(fmt):
    data = picture_bytes(fmt)
    Path("cut.img").write_bytes(data[: len(data) - len(data) // 3])  # the header is whole, the data cut off
    message = assert_user_error(invoke("img2vid", "cut.img", PROMPT, *SMALL, "--frames", "2", "-o", "out.gif"))
    assert "cut.img" in message and ("truncated" in message or "Truncated" in message), message
    assert not Path("out.gif").exists()


def test_a_truncated_picture_pinned_to_a_frame_is_one_line_before_the_model():
    Path("whole.png").write_bytes(picture_bytes("PNG"))
    data = picture_bytes("JPEG")
    Path("cut.jpg").write_bytes(data[: len(data) // 2])
    args = ("whole.png", PROMPT, *SMALL, "--frames", "4", "--image-at", "3:cut.jpg", "-o", "out.gif")
    assert "cannot decode image cut.jpg: image file is truncated" in assert_user_error(invoke("img2vid", *args))


def test_a_whole_picture_still_reaches_the_model():
    Path("whole.jpg").write_bytes(picture_bytes("JPEG"))
    assert reached_the_model(invoke("img2vid", "whole.jpg", PROMPT, *SMALL, "--frames", "2", "-o", "out.gif"))


def test_a_huge_jpeg_is_checked_at_reduced_size(tmp_path):
    from videodiff.media.images import check_image

    Image.new("RGB", (8000, 6000), (10, 20, 30)).save("huge.jpg", quality=30)
    assert check_image("huge.jpg") == (8000, 6000)  # decoded at 1/8 (1000x750), every byte read
    data = Path("huge.jpg").read_bytes()
    Path("cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        check_image("cut.jpg")


# ---------------------------------------------------------------- --overlap against the default window


def test_overlap_as_long_as_the_default_window_is_one_line_before_the_model():
    from videodiff.windows import plan_windows

    # the built-in model's motion modules record train_frames 16: the default window
    result = invoke("render", PROMPT, *SMALL, "--frames", "24", "--overlap", "20", "-o", "out.gif")
    message = assert_user_error(result)
    with pytest.raises(UserError) as later:  # what the loaded pipeline says: the same words
        plan_windows(24, window=None, overlap=20, train_frames=16, limit=32)
    assert message == str(later.value)
    assert not Path("out.gif").exists()
    assert "less than the window of 16" in assert_user_error(
        invoke("render", PROMPT, *SMALL, "--frames", "24", "--overlap", "16", "-o", "out.gif")
    )


@pytest.mark.parametrize(
    "flags",
    [
        ("--frames", "24", "--overlap", "15"),  # shorter than the window
        ("--frames", "16", "--overlap", "20"),  # one window: no overlap is used
        ("--frames", "40", "--window", "24", "--overlap", "20"),  # a given window
    ],
)
def test_an_overlap_that_works_still_reaches_the_model(flags):
    assert reached_the_model(invoke("render", PROMPT, *SMALL, *flags, "-o", "out.gif"))


def test_the_default_window_is_the_motion_modules_recorded_train_frames(tmp_path):
    from videodiff.weights.hub import BUILTIN_MODEL, OWN_MOTION_FOLDER

    motion = tmp_path / "motion"
    shutil.copytree(BUILTIN_MODEL / OWN_MOTION_FOLDER, motion)
    (motion / "videodiff.json").write_text(json.dumps({"train_frames": 8}), encoding="utf-8")
    flags = ("--motion-module", motion, "--frames", "24", "-o", "out.gif")
    assert "less than the window of 8" in assert_user_error(invoke("render", PROMPT, *SMALL, *flags, "--overlap", "8"))
    assert reached_the_model(invoke("render", PROMPT, *SMALL, *flags, "--overlap", "7"))


def test_a_batch_checks_the_overlap_before_the_model():
    Path("prompts.txt").write_text("a red circle moving right\na blue square moving up\n", encoding="utf-8")
    args = ("--prompt-file", "prompts.txt", "--seeds", "1,2", *SMALL[:-3], "--frames", "24", "-o", "clips")
    assert "less than the window of 16" in assert_user_error(invoke("render", *args, "--overlap", "20"))
    assert not Path("clips").exists()
    assert reached_the_model(invoke("render", *args, "--overlap", "4"))
