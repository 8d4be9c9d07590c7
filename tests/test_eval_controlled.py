"""``videodiff eval shapes --controlled``: the control score measures where the object is against the map."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import assert_user_error, invoke, ok

from videodiff.control.maps import path_maps
from videodiff.shapes import controlled
from videodiff.shapes.controlled import ControlledReport, controlled_videos, frame_errors, ground_truth, map_centroids
from videodiff.shapes.paths import HELDOUT_PATHS, net_direction
from videodiff.tiny import build_tiny_controlnet


def test_videos_cover_every_colour_shape_and_held_out_path():
    videos = controlled_videos(2)
    assert len(videos) == 8 * 3 * len(HELDOUT_PATHS) * 2
    assert {v.path for v in videos} == set(HELDOUT_PATHS)
    for v in videos[:: len(videos) // 7]:
        assert v.prompt == f"a {v.color} {v.shape} moving {net_direction(v.points)}"


def test_map_centroid_is_the_blob_centre_and_nan_without_a_blob():
    maps = path_maps(((20.0, 30.0), (44.0, 30.0)), 4, 64, 64)
    centres = map_centroids(maps)
    assert np.allclose(centres[:, 1], 30.0, atol=0.01)
    assert np.allclose(centres[:, 0], np.linspace(20, 44, 4), atol=0.01)
    gone = path_maps(((20.0, 30.0), (200.0, 30.0)), 4, 64, 64)  # leaves the frame
    assert np.isnan(map_centroids(gone)[-1]).all() and not np.isnan(map_centroids(gone)[0]).any()


def test_ground_truth_follows_its_maps_and_a_shifted_clip_does_not():
    video = controlled_videos(1, ("zigzag",))[0]
    frames, maps = ground_truth(video)
    centres = map_centroids(maps)
    error, found = frame_errors(frames, centres)
    assert found.color == video.color and found.shape == video.shape
    assert np.nanmax(error) < 3.5
    shifted = np.roll(frames, 6, axis=2)  # 6 px to the right: the object is not where the map says
    assert np.nanmin(frame_errors(shifted, centres)[0]) > 4


def test_report_counts_frames_within_the_limit_or_the_floor():
    video = controlled_videos(1, ("curve",))[0]
    frames, maps = ground_truth(video)
    error, found = frame_errors(frames, map_centroids(maps))
    error = error.copy()
    error[:4] = 5.0  # four frames 5 px off
    report = ControlledReport("x")
    report.add(video, error, found, None)
    assert report.rows[0]["follow"] == report.rows[0]["frames"] - 4
    floor = np.full(error.shape, 4.5)  # the VAE itself is 4.5 px off here: 5 px is within 1 px of it
    report.add(video, error, found, floor)
    assert report.rows[1]["follow"] == report.rows[1]["frames"]
    error[5] = np.inf  # a blob and no object
    report.add(video, error, found, floor)
    assert report.rows[2]["follow"] == report.rows[2]["frames"] - 1
    assert report.totals()["videos"] == 3 and "curve" in report.table()


@pytest.fixture(scope="module")
def tiny_cn(tmp_path_factory, tiny_model):
    return build_tiny_controlnet(tmp_path_factory.mktemp("cn") / "cn", tiny_model)


def test_cli_scores_a_model_with_a_controlnet(tmp_path, monkeypatch, tiny_model, tiny_motion, tiny_cn):
    two = controlled_videos(1, ("reversal",))[:2]
    monkeypatch.setattr(controlled, "controlled_videos", lambda seeds: two)
    out = tmp_path / "r.json"
    args = ["eval", "shapes", "--controlled", "--model", str(tiny_model), "--motion-module", str(tiny_motion)]
    args += ["--controlnet", str(tiny_cn), "--steps", "2", "--seeds", "1", "--out", str(out), "-q"]
    result = ok(invoke(*args))
    report = json.loads(out.read_text())
    assert report["model"]["total"]["videos"] == 2
    assert report["ground_truth"]["total"]["follow_pct"] > 90
    assert report["settings"]["model"]["controlnet"] == str(tiny_cn)
    assert "| **all** |" in result.output


def test_cli_refuses_without_a_controlnet_and_with_img2vid(tiny_model, tiny_motion):
    base = ["eval", "shapes", "--controlled", "-q", "--model", str(tiny_model), "--motion-module", str(tiny_motion)]
    assert "needs --controlnet" in assert_user_error(invoke(*base))
    assert "text-to-video" in assert_user_error(invoke(*base, "--img2vid"))
    assert "sets the frames itself" in assert_user_error(invoke(*base, "--set", "frames=8", "--controlnet", "x"))


def _cond_with_maps(maps):
    import torch

    from videodiff.control.controlnet import CONTROLS, ControlInput, ControlInputs
    from videodiff.sampling import Cond

    tensor = torch.from_numpy(maps).permute(3, 0, 1, 2)[None].float() / 255
    return Cond.text(torch.zeros(1, 3, 4)).with_fields(**{CONTROLS: ControlInputs((ControlInput(0, tensor),))})


def test_the_motion_prior_track_follows_the_blob_and_runs_on_where_it_leaves_the_frame():
    import torch

    from videodiff.pipeline.starting import control_track
    from videodiff.sampling import Cond

    points = ((10.0, 32.0), (110.0, 32.0))  # leaves the right edge half-way
    track = control_track(_cond_with_maps(path_maps(points, 16, 64, 64))).numpy()
    truth = np.linspace(10, 110, 16) - 0.5  # pixel indices, as object_centre has them
    inside = truth < 50
    assert np.allclose(track[inside, 1], truth[inside], atol=0.6) and np.allclose(track[:, 0], 31.5, atol=0.6)
    assert (np.diff(track[:, 1]) > 0).all() and track[-1, 1] > 64  # on out of the frame, not held at the edge
    assert control_track(Cond.text(torch.zeros(1, 3, 4))) is None
    assert control_track(_cond_with_maps(np.zeros((16, 64, 64, 3), np.uint8))) is None


def test_without_a_control_the_built_in_model_renders_as_if_it_had_no_controlnet():
    """The built-in model records its own ControlNet; a render that gives no control is the same, bit for bit, as
    one of the model without it (so its scores on the 192 and 80 videos stay those of the model without it)."""
    import dataclasses

    from videodiff.pipelines import load_pipeline

    pipe = load_pipeline(None, None)
    assert pipe.parts.controlnet is not None
    args = dict(seed=3, num_frames=8, num_inference_steps=4)
    with_it = pipe("a red circle moving right", **args).frames
    pipe.parts = dataclasses.replace(pipe.parts, controlnet=None)
    assert np.array_equal(with_it, pipe("a red circle moving right", **args).frames)
