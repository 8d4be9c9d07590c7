"""ControlNets from the command line, settings files and sidecars; bad control input is one line before loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import assert_user_error, invoke, ok, read_json
from PIL import Image

from videodiff.media.clips import read_video
from videodiff.media.video import sidecar_path
from videodiff.tiny import build_tiny_controlnet

SIZE = ("--frames", "8", "--height", "32", "--width", "40", "--steps", "2", "--seed", "1")


@pytest.fixture(scope="module")
def controlnet(tmp_path_factory, tiny_model):
    return build_tiny_controlnet(tmp_path_factory.mktemp("cn") / "cn", tiny_model)


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("maps")
    for i in range(10):
        frame = np.zeros((32, 40, 3), np.uint8)
        frame[8:24, 2 + 3 * i : 8 + 3 * i] = 255
        Image.fromarray(frame).save(folder / f"{i:04d}.png")
    return folder


def test_render_with_a_controlnet_writes_a_sidecar_that_renders_it_again(tmp_path, models, controlnet, maps):
    out = tmp_path / "a.gif"
    ok(invoke("render", "x", *models, *SIZE, "--controlnet", controlnet, "--control", maps, "--control-scale", "0.7",
              "--control-range", "0,0.5", "-o", out))  # fmt: skip
    sidecar = read_json(sidecar_path(out))
    (item,) = sidecar["controls"]
    assert item == {"maps": str(maps.resolve()), "controlnet": str(controlnet.resolve()), "scale": 0.7,
                    "range": [0.0, 0.5]}  # fmt: skip
    (source,) = sidecar["info"]["controls"]
    assert source["path"] == str(maps.resolve()) and sorted(source["sha256"]) == [f"{i:04d}.png" for i in range(10)]
    again = tmp_path / "again.gif"
    ok(invoke("render", "--config", sidecar_path(out), "-o", again))
    assert np.array_equal(read_video(out, frames=None)[0], read_video(again, frames=None)[0])
    plain = tmp_path / "plain.gif"
    ok(invoke("render", "x", *models, *SIZE, "-o", plain))
    assert not np.array_equal(read_video(out, frames=None)[0], read_video(plain, frames=None)[0])


def test_canny_maps_are_computed_and_recorded(tmp_path, models, controlnet, maps):
    out = tmp_path / "c.gif"
    canny = f"canny:50,150:{maps}"
    ok(invoke("render", "x", *models, *SIZE, "--controlnet", controlnet, "--control", canny, "-o", out))
    sidecar = read_json(sidecar_path(out))
    assert sidecar["controls"][0]["maps"] == f"canny:50,150:{maps.resolve()}"
    assert sidecar["info"]["controls"][0] | {"sha256": None} == {
        "path": str(maps.resolve()), "detector": "canny", "low": 50, "high": 150, "sha256": None,
    }  # fmt: skip


def test_controls_in_a_settings_file(tmp_path, models, controlnet, maps):
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"controls": [{"controlnet": str(controlnet), "maps": str(maps), "scale": 0.5}]}))
    out = tmp_path / "y.gif"
    ok(invoke("render", "x", *models, *SIZE, "--config", config, "-o", out))
    assert read_json(sidecar_path(out))["controls"][0]["scale"] == 0.5


def test_canny_is_opencv_on_the_colour_picture():
    import cv2

    from videodiff.control.maps import canny

    picture = np.zeros((32, 40, 3), np.uint8)
    picture[8:24, 10:30] = (200, 40, 90)
    edges = canny(picture, 100, 200)
    assert edges.shape == (32, 40, 3) and set(np.unique(edges)) == {0, 255}
    assert np.array_equal(edges[:, :, 0], cv2.Canny(picture, 100, 200))
    assert edges[11:21, 13:27].sum() == 0 and edges[:, 10].any()  # the rectangle's outline, not its inside


def _bad(tmp_path, maps, controlnet):
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(image)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    few = tmp_path / "few"
    few.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(few / f"{i}.png")
    return {
        "not a picture": (["--controlnet", controlnet, "--control", text], "not"),
        "missing": (["--controlnet", controlnet, "--control", tmp_path / "nope.mp4"], "no such file"),
        "too few": (["--controlnet", controlnet, "--control", few], "3 images"),
        "unknown detector": (["--controlnet", controlnet, "--control", f"sobel:{maps}"], "no such file"),
        "bad thresholds": (["--controlnet", controlnet, "--control", f"canny:9,3:{maps}"], "LOW <= HIGH"),
        "scale not finite": (["--controlnet", controlnet, "--control", maps, "--control-scale", "nan"], "finite"),
        "scale too big": (["--controlnet", controlnet, "--control", maps, "--control-scale", "11"], "from 0 to 10"),
        "range outside": (["--controlnet", controlnet, "--control", maps, "--control-range", "0,1.5"], "START <= END"),
        "range reversed": (["--controlnet", controlnet, "--control", maps, "--control-range", "0.8,0.2"], "START"),
        "range text": (["--controlnet", controlnet, "--control", maps, "--control-range", "half"], "two numbers"),
        "more controls": (["--controlnet", controlnet, "--control", maps, "--control", image], "2 --control for 1"),
        "scales count": (["--control", maps, "--control", image, "--control-scale", "1"], "1 --control-scale for 2"),
        "scale alone": (["--controlnet", controlnet], "need --control"),
    }




@pytest.mark.parametrize(
    "case",
    ["not a picture", "missing", "too few", "unknown detector", "bad thresholds", "scale not finite", "scale too big",
     "range outside", "range reversed", "range text", "more controls", "scales count", "scale alone"],
)  # fmt: skip
def test_bad_control_input_is_one_line_before_loading(tmp_path, models, controlnet, maps, case):
    args, named = _bad(tmp_path, maps, controlnet)[case]
    out = tmp_path / "out.gif"
    message = assert_user_error(invoke("render", "x", *models, *SIZE, *args, "-o", out))
    assert named in message
    assert not out.exists() and not sidecar_path(out).exists()


def test_control_without_a_controlnet_needs_the_models_own(tmp_path, models, maps):
    out = tmp_path / "out.gif"
    message = assert_user_error(invoke("render", "x", *models, *SIZE, "-q", "--control", maps, "-o", out))
    assert "records its own ControlNet" in message
    assert not out.exists()


def test_sparsectrl_from_the_command_line_and_its_sidecar(tmp_path, models, tiny_model, maps):
    from videodiff.tiny import build_tiny_sparsectrl

    sparse = build_tiny_sparsectrl(tmp_path / "sparse", tiny_model, kind="scribble")
    first, last = maps / "0000.png", maps / "0009.png"
    out = tmp_path / "s.gif"
    ok(invoke("render", "x", *models, *SIZE, "--sparsectrl", sparse, "--sparse-at", f"0:{first}",
              "--sparse-at", f"-1:{last}", "--sparse-scale", "0.8", "-o", out))  # fmt: skip
    sidecar = read_json(sidecar_path(out))
    (item,) = sidecar["controls"]
    assert item["sparse_at"] == [f"0:{first.resolve()}", f"-1:{last.resolve()}"] and item["scale"] == 0.8
    assert [p["frame"] for p in sidecar["info"]["controls"][0]["pictures"]] == [0, 7]
    again = tmp_path / "again.gif"
    ok(invoke("render", "--config", sidecar_path(out), "-o", again))
    assert np.array_equal(read_video(out, frames=None)[0], read_video(again, frames=None)[0])
    late = ("--sparsectrl", sparse, "--sparse-at", f"8:{first}")
    outside = assert_user_error(invoke("render", "x", *models, *SIZE, *late, "-o", tmp_path / "o.gif"))
    assert "8" in outside and not (tmp_path / "o.gif").exists()


def test_prompt_file_items_carry_their_own_controls(tmp_path, models, controlnet, maps):
    prompts = tmp_path / "p.yaml"
    prompts.write_text(json.dumps([
        {"prompt": "a", "output": "with.gif", "controls": [{"controlnet": str(controlnet), "maps": str(maps)}]},
        {"prompt": "a", "output": "without.gif"},
    ]))  # fmt: skip
    ok(invoke("render", *models, *SIZE, "--prompt-file", prompts, "-o", tmp_path / "batch"))
    with_, without = (read_json(sidecar_path(tmp_path / "batch" / n)) for n in ("with.gif", "without.gif"))
    assert len(with_["controls"]) == 1 and without["controls"] == []
    a, b = (read_video(tmp_path / "batch" / n, frames=None)[0] for n in ("with.gif", "without.gif"))
    assert not np.array_equal(a, b)


def test_control_path_draws_a_blob_at_constant_speed():
    from videodiff.control.maps import path_maps, path_positions
    from videodiff.shapes.detect import objects_per_frame

    points = [(8, 32), (40, 32), (40, 0)]  # 32 px right, then 32 px up: the corner at the middle frame
    positions = path_positions(points, 9)
    assert np.allclose(positions[[0, 4, 8]], [(8, 32), (40, 32), (40, 0)])
    assert np.allclose(np.linalg.norm(np.diff(positions, axis=0), axis=1), 8)
    maps = path_maps(points, 9, 64, 64)
    assert maps.shape == (9, 64, 64, 3) and set(np.unique(maps)) == {0, 255}
    for frame, (x, y) in zip(maps, positions):
        ys, xs = np.nonzero(frame[:, :, 0])
        assert abs(xs.mean() + 0.5 - x) < 1 and abs(min(y, 63) - ys.mean() - 0.5) < 4  # clipped at the top edge
    assert list(objects_per_frame(maps)) == [1] * 9


def test_control_path_from_the_command_line_is_recorded(tmp_path, models, controlnet):
    out = tmp_path / "p.gif"
    ok(invoke("render", "x", *models, *SIZE, "--controlnet", controlnet, "--control-path", "4,16:36,16", "-o", out))
    sidecar = read_json(sidecar_path(out))
    assert sidecar["controls"][0]["maps"] == "path:4,16:36,16"
    assert sidecar["info"]["controls"][0] == {"detector": "path", "points": [[4.0, 16.0], [36.0, 16.0]]}
    message = assert_user_error(invoke("render", "x", *models, *SIZE, "--controlnet", controlnet,
                                       "--control-path", "4,16", "-o", tmp_path / "q.gif"))  # fmt: skip
    assert "2 to 1000 points" in message
