"""RIFE v4.x (videodiff.post.rife): random-weight files in the released key layouts load by key and run.

No reference implementation installs here, so these check loading (every key of a file written in a released
layout, no missing or unexpected ones), the version read from keys and shapes, output shapes and ranges, and one
property that holds for any weights: with the flow and mask heads zeroed, the network is a cross-fade.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke, ok

from videodiff.errors import UserError
from videodiff.post.interpolate import interpolate
from videodiff.post.rife import interpolate_pair, layout_of, load_rife, read_weights

# (block inputs, widths c, lastconv channels after any shuffle, PReLU, ResConv, pixel shuffle, encoder)
# as the released IFNet_HDv3.py files of each version build them; encoder: (key, conv|up, in, out) per layer
VERSIONS = {
    "4.0": ((7, 12, 12, 12), (192, 128, 96, 64), 5, True, False, False, ()),
    "4.6": ((7, 12, 12, 12), (192, 128, 96, 64), 6, False, True, True, ()),
    "4.7": ((15, 20, 20, 20), (192, 128, 96, 64), 6, False, True, True, (("0", "conv", 3, 16), ("1", "up", 16, 4))),
    "4.10": (
        (23, 28, 28, 28), (192, 128, 96, 64), 6, False, True, True,
        (("0", "conv", 3, 32), ("2", "conv", 32, 32), ("4", "conv", 32, 32), ("6", "up", 32, 8)),
    ),
    "4.22": (
        (23, 36, 36, 36), (256, 192, 96, 48), 13, False, True, True,
        (("cnn0", "conv", 3, 32), ("cnn1", "conv", 32, 32), ("cnn2", "conv", 32, 32), ("cnn3", "up", 32, 8)),
    ),
    "4.26": (
        (15, 28, 28, 28, 28), (192, 128, 96, 64, 32), 13, False, True, True,
        (("cnn0", "conv", 3, 16), ("cnn1", "conv", 16, 16), ("cnn2", "conv", 16, 16), ("cnn3", "up", 16, 4)),
    ),
}
LABELS = {"4.0": "v4.0-4.1", "4.6": "v4.5-4.6", "4.7": "v4.7-4.20, 4.24", "4.10": "v4.7-4.20, 4.24",
          "4.22": "v4.21-4.23", "4.26": "v4.25-4.26"}  # fmt: skip


def released_state(version: str, *, seed: int = 0, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """Random weights under the keys (``module.`` prefixed, as released) and shapes of ``version``'s flownet.pkl."""
    inputs, widths, out, prelu, resconv, shuffle, encoder = VERSIONS[version]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(key: str, cin: int, cout: int, k: int = 3) -> None:
        shapes[f"{key}.weight"], shapes[f"{key}.bias"] = (cout, cin, k, k), (cout,)

    for i, (cin, c) in enumerate(zip(inputs, widths, strict=True)):
        b = f"block{i}"
        for j, (a, z) in enumerate(((cin, c // 2), (c // 2, c))):
            conv(f"{b}.conv0.{j}.0", a, z)
            if prelu:
                shapes[f"{b}.conv0.{j}.1.weight"] = (z,)
        for j in range(8):
            if resconv:
                conv(f"{b}.convblock.{j}.conv", c, c)
                shapes[f"{b}.convblock.{j}.beta"] = (1, c, 1, 1)
            else:
                conv(f"{b}.convblock.{j}.0", c, c)
                if prelu:
                    shapes[f"{b}.convblock.{j}.1.weight"] = (c,)
        last, channels = (f"{b}.lastconv.0", out * 4) if shuffle else (f"{b}.lastconv", out)
        shapes[f"{last}.weight"], shapes[f"{last}.bias"] = (c, channels, 4, 4), (channels,)
    for key, kind, cin, cout in encoder:
        if kind == "conv":
            conv(f"encode.{key}", cin, cout)
        else:
            shapes[f"encode.{key}.weight"], shapes[f"encode.{key}.bias"] = (cin, cout, 4, 4), (cout,)
    g = torch.Generator().manual_seed(seed)
    return {f"module.{k}": torch.randn(s, generator=g) * scale for k, s in shapes.items()}


def frames(h: int = 40, w: int = 56) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return tuple(rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(2))


@pytest.mark.parametrize("version", list(VERSIONS))
def test_a_released_layout_loads_by_key_and_makes_frames_of_the_input_size(version, tmp_path):
    path = tmp_path / "flownet.pkl"
    torch.save(released_state(version), path)
    net = load_rife(path)  # raises on any missing, unexpected or misshapen key
    assert net.layout.label == LABELS[version]
    expected = {k.removeprefix("module."): tuple(v.shape) for k, v in released_state(version).items()}
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expected
    a, b = frames()
    made = interpolate_pair(net, a, b, [0.25, 0.5])
    assert [m.shape for m in made] == [a.shape, a.shape] and all(m.dtype == np.uint8 for m in made)


@pytest.mark.parametrize("version", ["4.6", "4.26"])
def test_with_zeroed_heads_it_is_a_cross_fade_at_any_size(version, tmp_path):
    """Zero lastconv weights give zero flow and mask logits: both frames unwarped, weighted 1/2 each; the
    padding to a multiple of 32 (64 with five blocks) is cropped back exactly."""
    from safetensors.torch import save_file

    state = {k: (torch.zeros_like(v) if ".lastconv" in k else v) for k, v in released_state(version).items()}
    path = tmp_path / "zeroed.safetensors"
    save_file(state, str(path))
    a, b = frames(37, 70)
    net = load_rife(path)
    made = interpolate_pair(net, a, b, [0.5])[0]
    fade = (a.astype(np.float32) + b) / 2
    assert np.abs(made.astype(np.float32) - fade).max() <= 1
    out = interpolate(np.stack([a, b]), 2, "rife", net=net)  # the post step's function: originals kept at i * N
    assert out.shape == (3, 37, 70, 3) and np.array_equal(out[0], a) and np.array_equal(out[2], b)
    assert np.array_equal(out[1], made)


def test_version_is_read_from_shapes_and_unknown_layouts_are_named(tmp_path):
    state = read_weights(_saved(tmp_path, released_state("4.22")))
    assert all(not k.startswith("module.") for k in state)
    assert layout_of(state).carried == 8 and layout_of(state).features == 8
    bent = dict(state, **{"block1.conv0.0.0.weight": torch.zeros(96, 30, 3, 3)})
    with pytest.raises(UserError, match="take 23, 30, 36, 36 input channels"):
        layout_of(bent)
    with pytest.raises(UserError, match="not a RIFE v4.x IFNet.*top-level keys are conv_in, down"):
        layout_of({"conv_in.weight": torch.zeros(1), "down.0.weight": torch.zeros(1)})


def _saved(tmp_path, state, name="flownet.pkl"):
    path = tmp_path / name
    torch.save(state, path)
    return path


class Payload:
    """Unpickling this would create the file ``sentinel`` (what a hostile flownet.pkl does)."""

    sentinel = "/nonexistent"

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def hostile(path, sentinel):
    payload = Payload()
    payload.sentinel = str(sentinel)
    path.write_bytes(pickle.dumps({"block0.conv0.0.0.weight": payload}))
    return path


def test_bad_files_are_refused_in_one_line(tmp_path):
    sentinel = tmp_path / "ran"
    with pytest.raises(UserError, match="refused, it needs arbitrary code"):
        load_rife(hostile(tmp_path / "code.pkl", sentinel))
    assert not sentinel.exists()
    state = {k.removeprefix("module."): v for k, v in released_state("4.6").items()}
    del state["block2.convblock.3.beta"]
    with pytest.raises(UserError, match="1 missing .block2.convblock.3.beta"):
        load_rife(_saved(tmp_path, state, "short.pth"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_rife(junk)


@pytest.fixture
def video(tmp_path):
    from videodiff.media.video import save_video

    rng = np.random.default_rng(1)
    return save_video(rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), tmp_path / "in.mp4", fps=8)


def test_interpolate_command_runs_rife_and_records_the_file(video, tmp_path):
    import json

    model = _saved(tmp_path, released_state("4.26"))
    out = tmp_path / "out.mp4"
    ok(invoke("interpolate", video, "-o", out, "--interpolate", 3, "--interpolate-method", "rife",
              "--interpolate-model", model))  # fmt: skip
    record = json.loads((tmp_path / "out.mp4.json").read_text())
    step = record["info"]["post"][0]
    assert step["method"] == "rife" and step["layout"] == "v4.25-4.26" and step["frames"] == 7
    import hashlib

    assert step["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()


def _not_rife(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "esrgan.safetensors"
    save_file({"conv_first.weight": torch.zeros(64, 3, 3, 3), "body.0.weight": torch.zeros(1)}, str(path))
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--interpolate-method", "rife"), "needs --interpolate-model FILE"),
        (("--interpolate-method", "rife", "--interpolate-model", "missing.pkl"), "no such file"),
        (("--interpolate-model", "x.pkl"), "read by --interpolate-method rife only"),
        (("--interpolate-method", "model"), "renders the in-betweens on render commands only"),
    ],
)
def test_interpolate_command_refuses_in_one_line_and_writes_nothing(video, tmp_path, args, message):
    before = sorted(tmp_path.iterdir())
    got = assert_user_error(invoke("interpolate", video, "-o", tmp_path / "o.mp4", "--interpolate", 2, *args))
    assert message in got
    assert sorted(tmp_path.iterdir()) == before


def test_files_that_are_not_interpolators_are_refused_before_any_frame_is_written(video, tmp_path):
    code = hostile(tmp_path / "code.pkl", tmp_path / "ran")
    for model, message in ((_not_rife(tmp_path), "not a RIFE v4.x IFNet"), (code, "needs arbitrary code")):
        before = sorted(tmp_path.iterdir())
        got = assert_user_error(invoke("interpolate", video, "-o", tmp_path / "o.mp4", "--interpolate", 2,
                                       "--interpolate-method", "rife", "--interpolate-model", model))  # fmt: skip
        assert message in got and sorted(tmp_path.iterdir()) == before


def test_render_with_rife_and_with_the_model_s_own_inbetweens(tmp_path, models):
    """A render interpolated by RIFE records the file's SHA-256; the model's own in-betweens keep every rendered
    frame at i * N (pasted back exactly) and render the frames between; a file that is not RIFE is refused
    before anything renders."""
    import json

    import imageio.v3 as iio

    small = ("--frames", 3, "--height", 16, "--width", 16, "--steps", 2, "--seed", 1, "-q", "--fps", 8)
    model = _saved(tmp_path, released_state("4.6"))
    out = tmp_path / "rife.mp4"
    ok(invoke("render", "a red circle", *models, *small, "--interpolate", 2, "--interpolate-method", "rife",
              "--interpolate-model", model, "-o", out))  # fmt: skip
    record = json.loads((tmp_path / "rife.mp4.json").read_text())
    step = record["info"]["post"][0]
    assert step["method"] == "rife" and step["frames"] == 5 and len(step["sha256"]) == 64
    assert record["interpolate_model"] == str(model.resolve())
    plain, filled = tmp_path / "plain", tmp_path / "filled"
    ok(invoke("render", "a red circle", *models, *small, "-o", plain))
    ok(invoke("render", "a red circle", *models, *small, "--interpolate", 2, "--interpolate-method", "model",
              "-o", filled))  # fmt: skip
    kept = np.stack([iio.imread(plain / f"{i:04d}.png") for i in range(3)])
    made = np.stack([iio.imread(filled / f"{i:04d}.png") for i in range(5)])
    assert not (filled / "0005.png").exists()
    assert np.array_equal(made[::2], kept)  # every rendered frame kept, exactly, at i * N
    record = json.loads((tmp_path / "filled.json").read_text())
    assert record["frames"] == 3 and record["info"]["frames_written"] == 5  # the sidecar renders it again
    assert [s["step"] for s in record["info"]["post"]] == ["interpolate", "paste"]
    assert record["info"]["post"][0]["method"] == "model" and record["info"]["fps_written"] == 8.0  # --fps: written
    before = sorted(tmp_path.iterdir())
    got = assert_user_error(invoke("render", "a red circle", *models, *small, "--interpolate", 2,
                                   "--interpolate-method", "rife", "--interpolate-model", _not_rife(tmp_path),
                                   "-o", tmp_path / "no.mp4"))  # fmt: skip
    assert "not a RIFE v4.x IFNet" in got
    assert sorted(p for p in tmp_path.iterdir() if p.name != "esrgan.safetensors") == before


def test_eval_interp_scores_rife_and_the_model_s_own_inbetweens_when_asked(tmp_path, tiny_model, tiny_motion):
    from videodiff.pipelines import load_pipeline
    from videodiff.shapes.interp_eval import model_fill, run_interp_eval

    model = _saved(tmp_path, released_state("4.6"))
    fill = model_fill(load_pipeline(str(tiny_model), str(tiny_motion)), steps=1)
    rows = {r["method"]: r for r in run_interp_eval(1, size=32, rife=str(model), fill=fill)}
    assert set(rows) == {"flow", "blend", "repeat", "rife", "model"}
    assert all(np.isfinite(r["psnr"]) and r["centroid_error"] >= 0 for r in rows.values())
    result = ok(invoke("eval", "interp", "--clips", 1, "--size", 32, "--rife", model))
    assert [line.split("|")[1].strip() for line in result.output.splitlines()[2:]].count("rife") == 1
    assert "no such file" in assert_user_error(invoke("eval", "interp", "--rife", tmp_path / "none.pkl"))
