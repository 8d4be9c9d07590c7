"""Image prompts (IP-Adapter): parity with diffusers' AnimateDiffPipeline + load_ip_adapter (plain, Plus, full-face),
the command line and sidecars, and bad input as one line before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke, ok, read_json
from PIL import Image

from videodiff.errors import UserError
from videodiff.media.images import file_sha256
from videodiff.media.video import sidecar_path
from videodiff.schedulers import make_scheduler
from videodiff.tiny import build_tiny_image_encoder, build_tiny_ip_adapter, diffusers_ip_adapter_reference

PROMPT = "a red circle moving right"
FRAMES, H, W = 8, 32, 40
SIZE = ("--frames", "8", "--height", "32", "--width", "40", "--steps", "2", "--seed", "1")


@pytest.fixture(scope="module")
def ip(tmp_path_factory, tiny_model):
    """``models/`` as h94/IP-Adapter lays it out (``image_encoder/`` beside the weights): a plain adapter
    (.safetensors), a Plus one (.bin, weights-only pickle), a full-face one; and two different pictures."""
    root = tmp_path_factory.mktemp("ip")
    models = root / "models"
    encoder = build_tiny_image_encoder(models / "image_encoder")
    adapters = {
        "plain": build_tiny_ip_adapter(models / "ip-adapter_sd15.safetensors", tiny_model, encoder),
        "plus": build_tiny_ip_adapter(models / "ip-adapter-plus_sd15.bin", tiny_model, encoder, layout="plus"),
        "full-face": build_tiny_ip_adapter(
            models / "ip-adapter-full-face_sd15.safetensors", tiny_model, encoder, layout="full-face"
        ),
    }
    rng = np.random.default_rng(0)
    pictures = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / name)
        pictures.append(root / name)
    return adapters, pictures, encoder


def _reference(tiny_pipe, tiny_model, tiny_motion, adapters, pictures, scales):
    scheduler = make_scheduler("ddim", tiny_pipe.parts.scheduler_config)
    pipe = diffusers_ip_adapter_reference(tiny_model, tiny_motion, scheduler, adapters)
    pipe.set_ip_adapter_scale(scales if len(scales) > 1 else scales[0])
    images = [Image.open(p) for p in pictures]
    out = pipe(
        PROMPT, negative_prompt="cat", num_frames=FRAMES, height=H, width=W, num_inference_steps=4, guidance_scale=7.5,
        ip_adapter_image=images if len(images) > 1 else images[0], generator=torch.Generator("cpu").manual_seed(3),
        output_type="np",
    ).frames[0]  # fmt: skip
    return (out * 255).round().astype(np.uint8)


def _ours(tiny_pipe, ip_adapters):
    kwargs = dict(negative_prompt="cat", num_frames=FRAMES, height=H, width=W, num_inference_steps=4, seed=3)
    return tiny_pipe(PROMPT, scheduler="ddim", ip_adapters=ip_adapters, **kwargs).frames


def _far(a, b) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("layout", ["plain", "plus", "full-face"])
def test_one_ip_adapter_matches_diffusers(one_thread, tiny_pipe, tiny_model, tiny_motion, ip, layout):
    """Each layout at scale 0.7: every pixel within 2/255 of diffusers' AnimateDiffPipeline with load_ip_adapter;
    the other picture, another scale or no adapter each give a video more than 2/255 away."""
    adapters, (picture, other), _ = ip
    adapter = str(adapters[layout])
    expected = _reference(tiny_pipe, tiny_model, tiny_motion, [adapters[layout]], [picture], [0.7])
    ours = _ours(tiny_pipe, [{"adapter": adapter, "image": str(picture), "scale": 0.7}])
    assert ours.shape == expected.shape == (FRAMES, H, W, 3)
    assert _far(ours, expected) <= 2
    assert _far(_ours(tiny_pipe, [{"adapter": adapter, "image": str(other), "scale": 0.7}]), expected) > 2
    if layout == "plain":  # the other checks once: they test the comparison, not the layout
        assert _far(_ours(tiny_pipe, []), expected) > 2
        assert _far(_ours(tiny_pipe, [{"adapter": adapter, "image": str(picture), "scale": 1.0}]), expected) > 2


def test_two_ip_adapters_match_diffusers(one_thread, tiny_pipe, tiny_model, tiny_motion, ip):
    """A plain and a Plus adapter at once, each with its own picture and scale: within 2/255 of diffusers."""
    adapters, (picture, other), _ = ip
    pair = [adapters["plain"], adapters["plus"]]
    expected = _reference(tiny_pipe, tiny_model, tiny_motion, pair, [picture, other], [0.6, 0.9])
    prompts = [
        {"adapter": str(pair[0]), "image": str(picture), "scale": 0.6},
        {"adapter": str(pair[1]), "image": str(other), "scale": 0.9},
    ]
    assert _far(_ours(tiny_pipe, prompts), expected) <= 2
    swapped = [{**prompts[0], "image": str(other)}, {**prompts[1], "image": str(picture)}]
    assert _far(_ours(tiny_pipe, swapped), expected) > 2


def test_faceid_is_refused_in_one_line(tmp_path, tiny_pipe, ip):
    from safetensors.torch import save_file

    from videodiff.weights.ip_adapter import load_ip_adapter

    faceid = tmp_path / "ip-adapter-faceid_sd15.safetensors"
    save_file({"image_proj.proj.0.weight": torch.zeros(4, 4), "image_proj.proj.2.weight": torch.zeros(4, 4),
               "image_proj.norm.weight": torch.zeros(4), "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 4)},
              str(faceid))  # fmt: skip
    with pytest.raises(UserError, match="FaceID"):
        load_ip_adapter(faceid, tiny_pipe.parts.unet)


def test_render_with_an_ip_adapter_records_it_and_renders_it_again(tmp_path, models, ip):
    """The sidecar holds each adapter and picture by absolute path, the picture's SHA-256, and renders the same."""
    adapters, (picture, _), _ = ip
    out = tmp_path / "a.gif"
    ok(invoke("render", "x", *models, *SIZE, "-q", "--ip-adapter", adapters["plus"], "--ip-image", picture,
              "--ip-scale", "0.8", "-o", out))  # fmt: skip
    sidecar = read_json(sidecar_path(out))
    (item,) = sidecar["ip_adapters"]
    assert item == {"adapter": str(adapters["plus"].resolve()), "image": str(picture.resolve()), "scale": 0.8}
    assert sidecar["info"]["inputs"][str(picture.resolve())] == file_sha256(picture)
    again = tmp_path / "again.gif"
    ok(invoke("render", "--config", sidecar_path(out), "-o", again, "-q"))
    from videodiff.media.clips import read_video

    assert np.array_equal(read_video(out, frames=None)[0], read_video(again, frames=None)[0])


def _wide_adapter(tmp_path, adapters):
    """The plain adapter with 48-wide key/value projections: one for another cross-attention width."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(adapters["plain"]))
    state = {k: torch.zeros(v.shape[0], 48) if "_ip" in k else v for k, v in state.items()}
    folder = tmp_path / "wide"
    folder.mkdir()
    save_file(state, str(folder / "ip-adapter_wide.safetensors"))
    return folder / "ip-adapter_wide.safetensors"


@pytest.mark.parametrize(
    "case", ["another width", "missing encoder", "not a picture", "scale not finite", "scale too big", "no picture",
             "missing adapter", "encoder not a folder"],
)  # fmt: skip
def test_bad_ip_adapter_input_is_one_line_and_writes_nothing(tmp_path, models, ip, case, monkeypatch):
    """Each is one line and exit 2 before the model loads, with nothing written."""
    adapters, (picture, _), encoder = ip
    lone = tmp_path / "lone"
    lone.mkdir()
    alone = lone / "ip-adapter_sd15.safetensors"
    alone.write_bytes(adapters["plain"].read_bytes())
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    plain = ("--ip-adapter", adapters["plain"])
    args, named = {
        "another width": (
            ("--ip-adapter", _wide_adapter(tmp_path, adapters), "--ip-image", picture, "--image-encoder", encoder),
            "another model family",
        ),
        "missing encoder": (("--ip-adapter", alone, "--ip-image", picture), "--image-encoder"),
        "not a picture": ((*plain, "--ip-image", text), "notes.png"),
        "scale not finite": ((*plain, "--ip-image", picture, "--ip-scale", "nan"), "finite"),
        "scale too big": ((*plain, "--ip-image", picture, "--ip-scale", "11"), "from 0 to 10"),
        "no picture": (plain, "0 --ip-image for 1"),
        "missing adapter": (("--ip-adapter", tmp_path / "nope.safetensors", "--ip-image", picture), "no such file"),
        "encoder not a folder": ((*plain, "--ip-image", picture, "--image-encoder", picture), "no such folder"),
    }[case]
    out = tmp_path / "out.gif"
    loads = []
    monkeypatch.setattr("videodiff.pipelines.VideoPipeline.load", lambda *a, **k: loads.append(a))
    message = assert_user_error(invoke("render", "x", *models, *SIZE, "-q", *args, "-o", out))
    assert named in message
    assert not loads  # before the model loads
    assert not out.exists() and not sidecar_path(out).exists()


def test_image_keyframes_blend_as_prompt_travel(one_thread, tiny_pipe, ip):
    """``image_at`` keyframes: each keyframe's own tokens at its frame, the linear blend between, the last held after
    it; the negative tokens one for every frame."""
    from videodiff.pipeline.image_prompts import image_tokens
    from videodiff.settings.ip_adapter import ImagePrompt

    adapters, (a, b), _ = ip
    adapter = str(adapters["plus"])
    alone_a = image_tokens(tiny_pipe, ImagePrompt(adapter, str(a)), 8).tokens[0]
    alone_b = image_tokens(tiny_pipe, ImagePrompt(adapter, str(b)), 8).tokens[0]
    moving = image_tokens(tiny_pipe, ImagePrompt(adapter, str(a), 0.5, image_at=(f"4:{b}",)), 8)
    assert moving.tokens.shape == (1, 8, *alone_a.shape) and moving.uncond.shape == (1, *alone_a.shape)
    got = moving.tokens[0]
    torch.testing.assert_close(got[0], alone_a)
    torch.testing.assert_close(got[2], 0.5 * alone_a + 0.5 * alone_b)
    torch.testing.assert_close(got[1], 0.75 * alone_a + 0.25 * alone_b)
    for f in (4, 5, 7):
        torch.testing.assert_close(got[f], alone_b)
    assert not torch.allclose(alone_a, alone_b)


@pytest.mark.parametrize(("layers", "overlap"), [("unet", 0), ("temporal", 16)])
def test_each_window_gets_its_own_frames_image_tokens(one_thread, tiny_pipe, ip, monkeypatch, layers, overlap):
    """A spy on the attention processors: in a 64-frame render in two windows (frames 0-31 and 32-63, FreeNoise's
    initial noise) with keyframes at 0 and 63, every cross-attention call gets exactly its frames' interpolated
    tokens (and the negative tokens in the unconditional half): a window's frames when the whole U-Net runs per
    window, every frame when only the motion modules do (``window_layers: temporal``, FreeNoise's way; its windows
    overlap by 16 frames)."""
    from videodiff.pipeline.image_prompts import image_tokens
    from videodiff.settings.ip_adapter import ImagePrompt
    from videodiff.unet import inflate

    adapters, (a, b), _ = ip
    frames, window = 64, 32
    prompt = ImagePrompt(str(adapters["plain"]), image_at=(f"0:{a}", f"-1:{b}"))
    expected = image_tokens(tiny_pipe, prompt, frames)
    seen: list[torch.Tensor] = []
    original = inflate.FrameAttention.__call__

    def spy(self, attn, hidden_states, encoder_hidden_states=None, *args, token_sets=None, **kwargs):
        if token_sets and encoder_hidden_states is not None:
            seen.append(token_sets[0][1].detach().clone())
        return original(self, attn, hidden_states, encoder_hidden_states, *args, token_sets=token_sets, **kwargs)

    monkeypatch.setattr(inflate.FrameAttention, "__call__", spy)
    tiny_pipe("a red circle moving right", negative_prompt="cat", num_frames=frames, height=32, width=40,
              num_inference_steps=1, seed=1, window=window, overlap=overlap, window_noise="freenoise",
              window_layers=layers, ip_adapters=[prompt])  # fmt: skip
    assert seen
    width = window if layers == "unet" else frames
    starts = set()
    for tokens in seen:
        halves = tokens.reshape(2, -1, *tokens.shape[1:])  # [uncond, cond] each [f m d]
        assert halves.shape[1] == width
        torch.testing.assert_close(halves[0], expected.uncond.expand(width, -1, -1))
        match = [s for s in range(frames - width + 1) if torch.allclose(halves[1], expected.tokens[0, s : s + width])]
        assert len(match) == 1
        starts.add(match[0])
    assert starts == ({0, 32} if layers == "unet" else {0})


def test_ip_image_at_outside_the_video_is_one_line(tmp_path, models, ip):
    adapters, (picture, _), _ = ip
    out = tmp_path / "out.gif"
    args = ("--ip-adapter", adapters["plain"], "--ip-image", picture, "--ip-image-at", f"8:{picture}")
    message = assert_user_error(invoke("render", "x", *models, *SIZE, "-q", *args, "-o", out))
    assert "outside the video" in message and not out.exists()


def test_settings_file_ip_adapters_with_keyframes_render_and_record(tmp_path, models, ip):
    """``ip_adapters:`` in a settings file, with ``image_at`` keyframes: rendered, recorded by absolute path."""
    adapters, (a, b), encoder = ip
    config = tmp_path / "c.yaml"
    config.write_text(
        f"ip_adapters:\n  - adapter: {adapters['plain']}\n    image_encoder: {encoder}\n    scale: 0.5\n"
        f"    image_at: ['0:{a}', '-1:{b}']\n"
    )
    out = tmp_path / "k.gif"
    ok(invoke("render", "x", *models, *SIZE, "-q", "--config", config, "-o", out))
    (item,) = read_json(sidecar_path(out))["ip_adapters"]
    assert item["image_at"] == [f"0:{a.resolve()}", f"-1:{b.resolve()}"] and item["scale"] == 0.5
    assert item["image_encoder"] == str(encoder.resolve())


def test_prompt_file_items_carry_their_own_ip_adapters(tmp_path, models, ip, monkeypatch):
    """A prompt-file item's ``ip_adapters`` apply to it alone; an item's missing picture stops the batch before the
    model loads, with nothing written."""
    adapters, (a, _), _ = ip
    monkeypatch.chdir(tmp_path)
    item = f"  ip_adapters: [{{adapter: '{adapters['plain']}', image: '{a}', scale: 0.6}}]\n"
    shots = f"- prompt: a red circle\n  output: ip.gif\n{item}- prompt: a cat\n  output: plain.gif\n"
    (tmp_path / "shots.yaml").write_text(shots)
    ok(invoke("render", "--prompt-file", "shots.yaml", *models, *SIZE, "-q"))
    folder = tmp_path / "outputs" / "batch-shots"
    assert read_json(folder / "ip.gif.json")["ip_adapters"][0]["image"] == str(a.resolve())
    assert read_json(folder / "plain.gif.json")["ip_adapters"] == []
    (tmp_path / "bad.yaml").write_text(f"- a cat\n- prompt: a dog\n{item.replace(str(a), str(tmp_path / 'no.png'))}")
    message = assert_user_error(invoke("render", "--prompt-file", "bad.yaml", *models, *SIZE, "-q"))
    assert "no.png" in message and not (tmp_path / "outputs" / "batch-bad").exists()


def test_ip_adapter_with_a_controlnet_matches_diffusers(one_thread, tmp_path, tiny_pipe, tiny_model, tiny_motion, ip):
    """An image prompt and a ControlNet together: within 2/255 of diffusers' AnimateDiffControlNetPipeline with
    load_ip_adapter; without the image prompt, more than 2/255 away."""
    from videodiff.tiny import build_tiny_controlnet, diffusers_controlnet_reference

    adapters, (picture, _), _ = ip
    cn = build_tiny_controlnet(tmp_path / "cn", tiny_model)
    maps, folder = np.zeros((FRAMES, H, W, 3), np.uint8), tmp_path / "maps"
    folder.mkdir()
    for i in range(FRAMES):  # a white bar moving right
        maps[i, 8:24, 2 + 4 * i : 8 + 4 * i] = 255
        Image.fromarray(maps[i]).save(folder / f"{i:04d}.png")
    scheduler = make_scheduler("ddim", tiny_pipe.parts.scheduler_config)
    base = diffusers_controlnet_reference(tiny_model, tiny_motion, scheduler, [str(cn)])
    pipe = diffusers_ip_adapter_reference(tiny_model, tiny_motion, scheduler, [adapters["plain"]], base=base)
    pipe.set_ip_adapter_scale(0.7)
    expected = pipe(
        PROMPT, negative_prompt="cat", num_frames=FRAMES, height=H, width=W, num_inference_steps=4, guidance_scale=7.5,
        conditioning_frames=[Image.fromarray(m) for m in maps], ip_adapter_image=Image.open(picture),
        generator=torch.Generator("cpu").manual_seed(3), output_type="np",
    ).frames[0]  # fmt: skip
    expected = (expected * 255).round().astype(np.uint8)
    kwargs = dict(negative_prompt="cat", num_frames=FRAMES, height=H, width=W, num_inference_steps=4, seed=3)
    controls = [{"maps": str(folder), "controlnet": str(cn)}]
    prompts = [{"adapter": str(adapters["plain"]), "image": str(picture), "scale": 0.7}]
    ours = tiny_pipe(PROMPT, scheduler="ddim", controls=controls, ip_adapters=prompts, **kwargs).frames
    assert _far(ours, expected) <= 2
    assert _far(tiny_pipe(PROMPT, scheduler="ddim", controls=controls, **kwargs).frames, expected) > 2
