"""Upscaling (--upscale, --upscale-factor, videodiff upscale, eval upscale): the two families load by key from
files in their released layouts, tiles agree with whole frames, bad files and factors are refused in one line,
and the sidecar names the model by SHA-256."""

from __future__ import annotations

import hashlib
import json
import pickle
import re

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke, ok

from videodiff.config import RenderConfig
from videodiff.errors import UserError
from videodiff.post import Clip, run_post, steps_for
from videodiff.post.upscale import Upscale, check_upscaler, lanczos, load_upscaler, tiled
from videodiff.post.upscalers import Compact, RRDBNet, build
from videodiff.settings.post import PostSettings

PROMPT = "a red circle moving right"
SMALL = ("--frames", 2, "--height", 16, "--width", 16, "--steps", 1, "--seed", 1, "-q")


def frames(n: int = 3, height: int = 12, width: int = 14) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, height, width, 3)).astype(np.uint8)


def random_state(net: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A network's state with random weights (torch's initialisation, seeded), RRDBNet's output shifted to mid-grey
    so that frames are not clamped to black."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: (torch.rand(v.shape, generator=gen) - 0.5) * 0.2 for k, v in net.state_dict().items()}
    if "conv_last.bias" in state:
        state["conv_last.bias"] += 0.5
    return state


def to_esrgan(state: dict[str, torch.Tensor], nb: int) -> dict[str, torch.Tensor]:
    """BasicSR's RRDBNet names as the original ESRGAN release spells them (``model.0``, ``model.1.sub.N...``)."""
    names = {"conv_first": "model.0", "conv_body": f"model.1.sub.{nb}", "conv_up1": "model.3", "conv_up2": "model.6",
             "conv_hr": "model.8", "conv_last": "model.10"}  # fmt: skip
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)", key):
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}"] = value
        else:
            head, kind = key.rsplit(".", 1)
            out[f"{names[head]}.{kind}"] = value
    return out


def save(state: dict[str, torch.Tensor], path, wrapper: str | None = None):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({wrapper: state} if wrapper else state, str(path))
    return path


# Each released layout: (how the file is made, the scale it says, its family)
LAYOUTS = {
    "compact.safetensors": (lambda: random_state(Compact(8, 2, 4)), 4, "compact"),
    "compact-x2.pth": (lambda: random_state(Compact(8, 2, 2)), 2, "compact"),  # params wrapper, below
    "x4plus.pth": (lambda: random_state(RRDBNet(8, 2, 4)), 4, "esrgan"),  # params_ema wrapper, below
    "x2plus.safetensors": (lambda: random_state(RRDBNet(8, 1, 4, unshuffle=2)), 2, "esrgan"),
    "esrgan-original.pth": (lambda: to_esrgan(random_state(RRDBNet(8, 2, 4)), 2), 4, "esrgan"),
}
WRAPPERS = {"compact-x2.pth": "params", "x4plus.pth": "params_ema"}


@pytest.fixture(scope="module")
def upscalers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upscalers")
    return {name: save(make(), folder / name, WRAPPERS.get(name)) for name, (make, _, _) in LAYOUTS.items()}


@pytest.mark.parametrize("name", LAYOUTS)
def test_released_layouts_load_by_key_and_tiles_match_whole_frames(upscalers, name):
    _, scale, family = LAYOUTS[name]
    info = check_upscaler(upscalers[name])  # from names and shapes only
    net, loaded, digest = load_upscaler(upscalers[name])
    assert (info.family, info.scale) == (loaded.family, loaded.scale) == (family, scale)
    assert digest == hashlib.sha256(upscalers[name].read_bytes()).hexdigest()
    frame = frames(1, 30, 34)[0]
    whole = tiled(net, frame, scale, tile=1000, overlap=0, multiple=loaded.unshuffle)
    parts = tiled(net, frame, scale, tile=12, overlap=8, multiple=loaded.unshuffle)
    assert whole.shape == (30 * scale, 34 * scale, 3)
    assert np.abs(whole.astype(int) - parts).max() <= 1  # within 1/255
    assert whole.std() > 5  # not a constant picture: the comparison says something


def test_the_original_esrgan_layout_is_the_same_network_as_basicsr_s():
    state = random_state(RRDBNet(8, 2, 4), seed=3)
    x = torch.rand(1, 3, 10, 10)
    ours, _ = build(state)
    theirs, info = build(to_esrgan(state, 2))
    assert info.layout == "esrgan" and torch.equal(ours(x), theirs(x))


def test_sizes_are_read_from_shapes():
    _, info = build(random_state(Compact(12, 3, 3)))
    assert (info.features, info.blocks, info.scale) == (12, 3, 3)
    _, info = build(random_state(RRDBNet(16, 3, 8)))
    assert (info.features, info.blocks, info.growth, info.scale) == (16, 3, 8, 4)


def test_a_model_s_step_records_its_sha256_and_renders_the_same_frames_again(upscalers):
    path = upscalers["compact.safetensors"]
    clip = Clip(frames(2), 8.0, {0: frames(1)[0]})
    settings = PostSettings(upscale=str(path))
    out, records = run_post(clip, steps_for(settings, clip))
    again, _ = run_post(clip, steps_for(settings, clip))
    assert out.frames.shape == (2, 48, 56, 3) and out.pictures == {} and np.array_equal(out.frames, again.frames)
    assert records[0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert records[0]["architecture"] == "compact" and records[0]["factor"] == 4
    # another factor: the model's 4x, then Lanczos to 1.5x
    out, records = run_post(clip, [Upscale(str(path), 1.5)])
    assert out.frames.shape == (2, 18, 21, 3) and records[0]["method"] == "model+lanczos"


def test_lanczos_without_a_model_and_the_stage_order():
    clip = Clip(frames(3), 8.0)
    steps = steps_for(PostSettings(interpolate=2, interpolate_method="blend", upscale_factor=2), clip)
    assert [s.name for s in steps] == ["interpolate", "upscale"]
    out, records = run_post(clip, steps)
    assert out.frames.shape == (5, 24, 28, 3) and records[1]["method"] == "lanczos"
    flat = np.full((1, 8, 8, 3), 77, np.uint8)
    assert np.all(lanczos(flat, (16, 16)) == 77)  # a flat picture stays flat


@pytest.mark.parametrize("factor", [0, 1, 1.0, 8.5, 9, float("inf"), float("nan"), -2])
def test_factors_that_cannot_work_are_refused(factor):
    with pytest.raises(UserError, match="--upscale-factor must be a number above 1 and at most 8"):
        RenderConfig(prompt=PROMPT, upscale_factor=factor).validate()


def _bad_files(folder):
    """Files that must be refused: (path, what the one line says)."""
    code = folder / "code.pth"
    code.write_bytes(pickle.dumps(print))  # a pickle that names a function: it would run code to load
    truncated = folder / "truncated.safetensors"
    whole = save(random_state(Compact(8, 2, 4)), folder / "whole.safetensors").read_bytes()
    truncated.write_bytes(whole[: len(whole) - 100])
    garbage = folder / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    other = save({"encoder.weight": torch.zeros(4, 4)}, folder / "other.safetensors")
    empty_pickle = folder / "list.pt"
    torch.save([torch.zeros(2)], str(empty_pickle))
    inconsistent = random_state(Compact(8, 2, 4))
    inconsistent["body.2.weight"] = torch.zeros(8, 8, 5, 5)  # a 5x5 conv where Compact has 3x3
    inconsistent = save(inconsistent, folder / "inconsistent.safetensors")
    old_no_tail = to_esrgan(random_state(RRDBNet(8, 1, 4)), 1)
    old_no_tail = save({k: v for k, v in old_no_tail.items() if not k.startswith("model.1.sub.1.")}, folder / "o.pth")
    onnx = folder / "model.onnx"
    onnx.write_bytes(b"\x08\x07")
    return [
        (code, "needs arbitrary code to load"),
        (truncated, "not a readable weights file"),
        (garbage, "not a readable weights file"),
        (other, "neither an ESRGAN/RRDBNet nor a Real-ESRGAN Compact upscaler (1 tensors: encoder.weight)"),
        (empty_pickle, "does not hold a state dict of tensors"),
        (inconsistent, "body.2.weight shaped [8, 8, 5, 5], not [8, 8, 3, 3]"),
        (old_no_tail, "an incomplete or inconsistent esrgan file: missing conv_body.bias, conv_body.weight"),
        (folder / "missing.pth", "no such file"),
        (onnx, "use a .safetensors, .pth or .pt upscaler file"),
    ]


@pytest.fixture
def video(tmp_path):
    from videodiff.media.video import save_video

    return save_video(frames(3, 16, 16), tmp_path / "in.gif", fps=8)


def test_upscale_any_video_with_a_sidecar(video, upscalers, tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "big.gif"
    result = ok(invoke("upscale", video, "-o", out, "--upscale", upscalers["compact-x2.pth"]))
    assert "3 frames, 32x32" in result.output and iio.imread(out).shape == (3, 32, 32, 3)
    record = json.loads((tmp_path / "big.gif.json").read_text())
    step = record["info"]["post"][0]
    assert step["sha256"] == hashlib.sha256(upscalers["compact-x2.pth"].read_bytes()).hexdigest()
    ok(invoke("upscale", video, "-o", tmp_path / "lanczos.gif", "--upscale-factor", 3))
    assert iio.imread(tmp_path / "lanczos.gif").shape == (3, 48, 48, 3)


def test_upscale_refuses_bad_inputs_in_one_line_and_writes_nothing(video, tmp_path):
    cases = _bad_files(tmp_path)
    unreadable = tmp_path / "bad.mp4"
    unreadable.write_bytes(b"not a video")
    before = sorted(tmp_path.iterdir())
    for path, message in cases:
        assert message in assert_user_error(invoke("upscale", video, "-o", tmp_path / "o.gif", "--upscale", path))
    for factor in ("0", "1", "9", "nan", "inf"):
        line = assert_user_error(invoke("upscale", video, "-o", tmp_path / "o.gif", "--upscale-factor", factor))
        assert "--upscale-factor" in line
    assert "--upscale MODEL_FILE or --upscale-factor S" in assert_user_error(invoke("upscale", video, "-o", "x.gif"))
    assert "bad.mp4" in assert_user_error(
        invoke("upscale", unreadable, "-o", tmp_path / "o.mp4", "--upscale-factor", 2)
    )
    assert sorted(tmp_path.iterdir()) == before


def test_a_render_refuses_a_bad_upscaler_before_loading_and_upscales_with_lanczos(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    out = tmp_path / "v.mp4"
    assert "not a readable weights file" in assert_user_error(
        invoke("render", PROMPT, *SMALL, "-o", out, "--upscale", bad)
    )
    assert not out.exists()
    ok(invoke("render", PROMPT, *SMALL, "-o", tmp_path / "v.gif", "--upscale-factor", 2))
    record = json.loads((tmp_path / "v.gif.json").read_text())
    assert record["upscale_factor"] == 2 and record["info"]["size_written"] == [32, 32]
    assert record["info"]["post"][-1]["method"] == "lanczos"


def test_spandrel_is_used_for_other_architectures_when_it_imports(monkeypatch, tmp_path):
    import sys
    import types

    class Descriptor:
        scale, input_channels, output_channels = 2, 3, 3
        architecture = types.SimpleNamespace(id="FakeArch")
        model = torch.nn.Upsample(scale_factor=2, mode="nearest")

    fake = types.ModuleType("spandrel")
    fake.ModelLoader = lambda: types.SimpleNamespace(load_from_file=lambda path: Descriptor())
    monkeypatch.setitem(sys.modules, "spandrel", fake)
    path = save({"something.else.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    assert check_upscaler(path).family == "spandrel:FakeArch"
    clip = Clip(frames(1), 8.0)
    out, records = run_post(clip, [Upscale(str(path))])
    assert np.array_equal(out.frames[0], clip.frames[0].repeat(2, 0).repeat(2, 1))
    assert records[0]["architecture"] == "spandrel:FakeArch"


def test_batch_items_and_the_web_form_carry_the_upscale_settings(tmp_path):
    from videodiff.batch import plan_batch
    from videodiff.ui import form

    plan = plan_batch(RenderConfig(frames=4), [{"prompt": "a", "upscale_factor": 2}, {"prompt": "b"}], output="clips")
    assert [c.upscale_factor for c in plan] == [2, None]
    values = {"prompt": "x", "frames": 4, "upscale_factor": "off"}
    assert form.build_config("text", values, RenderConfig(), tmp_path).upscale_factor is None
    assert (
        form.build_config("text", {**values, "upscale_factor": "1.5"}, RenderConfig(), tmp_path).upscale_factor == 1.5
    )
    with pytest.raises(UserError, match="--upscale-factor"):
        form.build_config("text", {**values, "upscale_factor": "9"}, RenderConfig(), tmp_path)


def test_eval_upscale_scores_against_the_world_s_true_large_frames(upscalers):
    """Lanczos is nearer the true 2x frames than nearest neighbour; a model file adds its row."""
    from videodiff.shapes.upscale_eval import pairs, run_upscale_eval

    ((small, big),) = pairs(1, size=16, factor=2, frames=2)
    assert small.shape == (2, 16, 16, 3) and big.shape == (2, 32, 32, 3)
    rows = {r["method"]: r["psnr"] for r in run_upscale_eval(2, size=32, models=(upscalers["compact-x2.pth"],))}
    assert rows["lanczos"] > rows["nearest"] and "model compact-x2.pth" in rows
    result = ok(invoke("eval", "upscale", "--clips", 1, "--size", 16))
    assert [line.split("|")[1].strip() for line in result.output.splitlines()[2:]] != []
    assert len(result.output.splitlines()) == 2 + 3


def test_an_upscaled_clip_too_large_is_refused_before_work(tmp_path):
    line = assert_user_error(
        invoke(
            "render", PROMPT, *SMALL, "--height", 4096, "--width", 16, "--upscale-factor", 4, "-o", tmp_path / "a.gif"
        )
    )
    assert "at most 8192 pixels a side" in line
    assert list(tmp_path.iterdir()) == []
    from videodiff.post.upscale import check_size

    check_size(16, 512, 512, 8)  # 4096x4096, 768 MiB
    with pytest.raises(UserError, match="GiB of frames; at most 4 GiB"):
        check_size(300, 512, 512, 8)


def test_upscaling_comes_after_the_video_model_s_own_inbetweens(tmp_path, models):
    """decode -> interpolate -> upscale holds for --interpolate-method model too: the second pass renders at the
    model's size and its frames, all of them, are upscaled."""
    import imageio.v3 as iio

    small = ("--frames", 3, "--height", 16, "--width", 16, "--steps", 1, "--seed", 1, "-q", "--fps", 8)
    out = tmp_path / "filled"
    ok(invoke("render", "a red circle", *models, *small, "--interpolate", 2, "--interpolate-method", "model",
              "--upscale-factor", 2, "-o", out))  # fmt: skip
    assert [iio.imread(out / f"{i:04d}.png").shape for i in range(5)] == [(32, 32, 3)] * 5
    record = json.loads((tmp_path / "filled.json").read_text())
    assert [s["step"] for s in record["info"]["post"]] == ["interpolate", "paste", "upscale"]
    assert record["info"]["size_written"] == [32, 32] and record["upscale_factor"] == 2
