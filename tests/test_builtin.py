"""The built-in shapes model: shipped inside the package, the default of `render` and `load_pipeline()`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import assert_user_error, invoke, ok, read_json
from safetensors import safe_open

from videodiff import load_pipeline
from videodiff.motion_prior import PRIOR_FILE
from videodiff.shapes import parse_prompt, render_clip
from videodiff.shapes.evaluate import detect, vae_roundtrip
from videodiff.weights import hub as models

pytestmark = pytest.mark.skipif(
    not (models.BUILTIN_MODEL / "model_index.json").is_file(), reason="the built-in model is not packaged"
)


@pytest.fixture(scope="module")
def builtin_pipe():
    return load_pipeline(device="cpu")


def test_builtin_model_is_small_fp16_safetensors():
    files = [p for p in models.BUILTIN_MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 1024**2
    weights = [p for p in files if p.suffix not in (".json", ".txt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    for path in weights:
        if path.name == PRIOR_FILE:  # the motion prior's 29 kB of regression weights stay fp32
            continue
        with safe_open(str(path), "pt") as f:
            assert all(f.get_slice(k).get_dtype() == "F16" for k in f.keys()), path


def test_load_pipeline_without_arguments_is_the_builtin_model(builtin_pipe):
    assert builtin_pipe.parts.sources["model"]["id"] == str(models.BUILTIN_MODEL)
    assert builtin_pipe.default_size() == (64, 64) and builtin_pipe.vae_scale == 4
    defaults = builtin_pipe.parts.defaults
    assert {"steps", "guidance", "scheduler", "fps"} <= set(defaults)
    # settings left out of a call are the model's recorded defaults
    result = builtin_pipe("a red circle moving right", seed=0, output_type="latent")
    assert result.settings["steps"] == defaults["steps"] and result.settings["scheduler"] == defaults["scheduler"]
    assert result.latents.shape == (1, 4, 16, 16, 16)


def test_builtin_vae_keeps_colour_and_shape(builtin_pipe):
    rng = np.random.default_rng(5)
    for color, shape, direction in [("orange", "triangle", "up"), ("cyan", "circle", "left")]:
        clip = render_clip(color, shape, direction, rng=rng)
        back = vae_roundtrip(builtin_pipe, clip)
        assert np.abs(back.astype(int) - clip).mean() < 8  # mostly the background's noise, which it smooths
        found = detect(back)
        assert (found.color, found.shape, found.direction) == (color, shape, direction)


PROMPTS = [
    "a green square moving left",
    "a purple triangle moving down",
    "a orange circle moving up",
    "a white triangle moving right",
]


def test_builtin_model_draws_what_the_prompt_asks(builtin_pipe):
    """Colour, direction and presence for one seed of each direction (the evaluation measures the rates)."""
    shapes_right = 0
    for prompt in PROMPTS:
        color, shape, direction = parse_prompt(prompt)
        result = builtin_pipe(prompt, seed=0)
        assert result.frames.shape == (16, 64, 64, 3)
        assert result.settings["motion_prior"] > 0  # the model's default: start from its motion prior
        found = detect(result.frames)
        assert found.present and (found.color, found.direction) == (color, direction), prompt
        shapes_right += found.shape == shape
    assert shapes_right >= 3  # its known error: squares drawn with round corners, read as circles


def test_builtin_model_follows_an_explicit_motion(builtin_pipe):
    for motion, direction in (((-2.5, 0.0), "left"), ((0.0, 2.5), "down")):
        result = builtin_pipe("a red circle moving right", seed=1, motion=motion)
        assert result.settings["motion"] == motion
        assert detect(result.frames).direction == direction


def test_render_without_model_uses_builtin(tmp_path):
    out = tmp_path / "circle.gif"
    ok(invoke("render", "a red circle moving right", "--seed", 3, "-o", out, "-q"))
    import imageio.v3 as iio

    frames = iio.imread(out)
    assert frames.shape[:3] == (16, 64, 64)
    side = read_json(out.with_name(out.name + ".json"))
    assert side["model"] is None and side["info"]["sources"]["model"]["id"] == str(models.BUILTIN_MODEL)
    assert side["steps"] == json.loads((models.BUILTIN_MODEL / "videodiff.json").read_text())["defaults"]["steps"]
    # the sidecar re-renders the same video with no model named anywhere
    again = tmp_path / "again.gif"
    ok(invoke("render", "--config", out.with_name(out.name + ".json"), "-o", again, "-q"))
    assert np.array_equal(iio.imread(again), frames)


def test_missing_builtin_model_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "BUILTIN_MODEL", tmp_path / "gone")
    assert_user_error(invoke("render", "a red circle moving right", "-o", tmp_path / "x.gif"))
