"""Pictures far from a model's world get a notice by a stated rule: the VAE round trip's error above the threshold the
model records (videodiff/pipeline/familiar.py); the built-in model's own world never does."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from videodiff import load_pipeline
from videodiff.errors import UserError
from videodiff.media.images import load_image
from videodiff.pipeline import familiar
from videodiff.shapes.evaluate import ground_truth_render_fn
from videodiff.shapes.world import ALL_COMBOS, prompt_of

FAR = "is far from anything this model was trained on"
PHOTOS = ("chelsea.png", "coffee.png")
CLIPS = ("cockatoo.mp4", "newtonscradle.gif")


@pytest.fixture(scope="module")
def builtin():
    return load_pipeline()


def errors_of(pipe, pictures: np.ndarray) -> np.ndarray:
    return familiar.roundtrip_errors(pipe, pictures, pipe.encode_pictures(pictures))


def test_the_builtin_model_states_its_rule_and_the_docs_say_the_same(builtin):
    from pathlib import Path

    limit = familiar.threshold(builtin)
    page = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "builtin-model.md").read_text()
    assert f'"pictures": {{"roundtrip_error": {limit:g}}}' in page and f"The threshold, {limit:g}," in page


def test_the_192_ground_truth_first_frames_pass_silently(builtin, caplog):
    """The evaluation's set (96 combinations x seeds 0 and 1 of ground_truth_render_fn(0)): every first frame."""
    truth = ground_truth_render_fn(0)
    firsts = np.stack([truth(prompt_of(*combo), seed)[0] for combo in ALL_COMBOS for seed in (0, 1)])
    assert firsts.shape == (192, 64, 64, 3)
    with caplog.at_level("WARNING", logger="videodiff"):
        worst = familiar.tell_unfamiliar(builtin, firsts, builtin.encode_pictures(firsts), ["a frame"] * 192)
    assert worst <= familiar.threshold(builtin) and FAR not in caplog.text, worst


@pytest.mark.parametrize("name", PHOTOS)
def test_every_photograph_gets_the_notice(builtin, shared_data, name, caplog):
    for fit in ("crop", "pad"):
        for size in ((64, 64), (64, 112), (128, 128)):
            picture = load_image(shared_data / name, *size, fit=fit, background=(0, 0, 0))[None]
            assert errors_of(builtin, picture)[0] > familiar.threshold(builtin), (fit, size)
    with caplog.at_level("WARNING", logger="videodiff"):
        builtin.img2vid(shared_data / name, "a red circle moving right", seed=0, num_inference_steps=2)
    assert f"the picture {FAR}" in caplog.text and "use a model trained on such pictures" in caplog.text


def test_every_real_clip_gets_the_notice(builtin, shared_data, caplog):
    for name in CLIPS:
        caplog.clear()
        with caplog.at_level("WARNING", logger="videodiff"):
            builtin.vid2vid(shared_data / name, "a red circle moving right", seed=0, num_frames=4, steps=2)
        assert "the clip's frame" in caplog.text and FAR in caplog.text, name


def test_the_models_own_render_passes_through_img2vid_and_vid2vid(builtin, caplog):
    with caplog.at_level("WARNING", logger="videodiff"):
        clip = builtin("a red circle moving right", seed=1).frames
        builtin.img2vid(clip[0], "a red circle moving right", seed=1, num_inference_steps=2)
        builtin.vid2vid(clip, "a blue circle moving right", seed=1, num_frames=4, steps=2)
    assert FAR not in caplog.text


def test_models_without_a_rule_and_another_vae_get_no_notice(tiny_pipe, caplog):
    noise = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3)).astype(np.uint8)
    assert familiar.threshold(tiny_pipe) is None
    with caplog.at_level("WARNING", logger="videodiff"):
        assert familiar.tell_unfamiliar(tiny_pipe, noise, tiny_pipe.encode_pictures(noise), ["the picture"]) is None
    assert FAR not in caplog.text


def test_a_recorded_rule_is_read_and_checked(tiny_model, tiny_motion, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "videodiff.json").write_text(json.dumps({"pictures": {"roundtrip_error": 3}}))
    pipe = load_pipeline(str(model), str(tiny_motion))
    assert familiar.threshold(pipe) == 3.0
    pipe.parts.sources["vae"] = {"id": "another", "sha256": ""}  # measured with its own VAE: not another's
    assert familiar.threshold(pipe) is None
    for bad in ("3", 0, True, {"x": 1}):
        (model / "videodiff.json").write_text(json.dumps({"pictures": {"roundtrip_error": bad}}))
        familiar.recorded_threshold.cache_clear()
        with pytest.raises(UserError, match="roundtrip_error"):
            familiar.recorded_threshold(str(model))
