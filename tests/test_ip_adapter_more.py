"""Image prompts (IP-Adapter), the rest: adapters and encoders by hub id (a fake, offline hub cache), ``inspect`` on
adapters, pictures given in memory (Python), one encoder run per distinct picture, the encoder released before
sampling with ``--offload``, and the bad inputs the first file does not cover."""

from __future__ import annotations

import gc
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke, ok, read_json
from PIL import Image

from videodiff.errors import UserError
from videodiff.media.video import sidecar_path
from videodiff.tiny import build_tiny_image_encoder, build_tiny_ip_adapter

SIZE = ("--frames", "8", "--height", "32", "--width", "40", "--steps", "2", "--seed", "1")
REPO, COMMIT = "h94/IP-Adapter", "0123456789abcdef0123456789abcdef01234567"
HUB_ID = f"{REPO}/models/ip-adapter_sd15.safetensors"


@pytest.fixture(scope="module")
def ip(tmp_path_factory, tiny_model):
    """``models/`` as h94/IP-Adapter lays it out: a plain adapter, a Plus one (a nested ``.bin``), a full-face one,
    ``image_encoder/`` beside them; two different pictures and a copy of the first under another name."""
    root = tmp_path_factory.mktemp("ip-more")
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
    shutil.copyfile(pictures[0], root / "a-again.png")
    return adapters, pictures, encoder, root


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, ip):
    """A Hugging Face cache holding h94/IP-Adapter's ``models/`` (the plain adapter and ``image_encoder/``), offline."""
    import huggingface_hub

    adapters, _, encoder, _ = ip
    cache = tmp_path / "hub"
    repo = cache / "models--h94--IP-Adapter"
    snapshot = repo / "snapshots" / COMMIT / "models"
    snapshot.mkdir(parents=True)
    shutil.copyfile(adapters["plain"], snapshot / "ip-adapter_sd15.safetensors")
    shutil.copytree(encoder, snapshot / "image_encoder")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("VIDEODIFF_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return snapshot


# ---------------------------------------------------------------------------------------------------------------------
# hub ids


def test_hub_adapter_and_the_encoder_beside_it_come_from_the_hub_cache(hub_cache):
    from videodiff.weights.ip_adapter import locate_adapter, locate_image_encoder

    assert locate_adapter(HUB_ID).resolve() == (hub_cache / "ip-adapter_sd15.safetensors").resolve()
    assert locate_image_encoder(HUB_ID, None) == str(hub_cache / "image_encoder")
    named = locate_image_encoder(HUB_ID, f"{REPO}/models/image_encoder")  # --image-encoder as a hub folder
    assert named == str(hub_cache / "image_encoder")


def test_render_with_a_hub_adapter_matches_the_local_file_and_records_its_id(tmp_path, models, ip, hub_cache):
    adapters, (picture, _), _, _ = ip
    hub, local = tmp_path / "hub.gif", tmp_path / "local.gif"
    ok(invoke("render", "x", *models, *SIZE, "-q", "--ip-adapter", HUB_ID, "--ip-image", picture, "-o", hub))
    ok(invoke("render", "x", *models, *SIZE, "-q", "--ip-adapter", adapters["plain"], "--ip-image", picture,
              "-o", local))  # fmt: skip
    (item,) = read_json(sidecar_path(hub))["ip_adapters"]
    assert item["adapter"] == HUB_ID
    from videodiff.media.clips import read_video

    assert np.array_equal(read_video(hub, frames=None)[0], read_video(local, frames=None)[0])


@pytest.mark.parametrize("case", ["adapter not cached", "no encoder in the repository", "encoder id not cached"])
def test_hub_ids_that_cannot_be_found_are_one_line_before_the_model_loads(
    tmp_path, models, ip, hub_cache, case, monkeypatch
):
    _, (picture, _), _, _ = ip
    if case == "no encoder in the repository":
        shutil.rmtree(hub_cache / "image_encoder")
    adapter = f"{REPO}/models/ip-adapter-plus_sd15.bin" if case == "adapter not cached" else HUB_ID
    extra = ("--image-encoder", "someone/clip-vision") if case == "encoder id not cached" else ()
    loads = []
    monkeypatch.setattr("videodiff.pipelines.VideoPipeline.load", lambda *a, **k: loads.append(a))
    out = tmp_path / "out.gif"
    message = assert_user_error(
        invoke("render", "x", *models, *SIZE, "-q", "--ip-adapter", adapter, "--ip-image", picture, *extra, "-o", out)
    )
    expected = {"adapter not cached": "offline", "no encoder in the repository": "no image encoder beside it",
                "encoder id not cached": "someone/clip-vision"}[case]  # fmt: skip
    assert expected in message and not loads and not out.exists()
    assert message.startswith("--image-encoder" if case == "encoder id not cached" else "--ip-adapter")


# ---------------------------------------------------------------------------------------------------------------------
# inspect


def test_inspect_names_each_layout_and_the_encoder_it_needs(tmp_path, ip, monkeypatch):
    """Layouts and encoder widths (the tiny encoder: 24-wide pooled embeddings, 32-wide hidden states); a
    ``.safetensors`` adapter is described from its header alone (reading its tensors fails the test)."""
    from safetensors.torch import load_file, save_file

    from videodiff.weights import ip_adapter
    from videodiff.weights.inspect import describe

    adapters, _, encoder, _ = ip
    plus = describe(str(adapters["plus"]))  # a nested .bin: read weights-only
    assert plus["layout"] == "Plus" and plus["image_encoder"].endswith("hidden states 32 wide)")
    assert plus["image_encoder_found"] == str(encoder) and plus["image_tokens"] > 0
    face = tmp_path / "ip-adapter-plus-face_sd15.safetensors"  # the Plus layout under a face adapter's name
    save_file({k: v.contiguous() for k, v in ip_adapter.read_adapter(adapters["plus"]).items()}, str(face))
    monkeypatch.setattr(ip_adapter, "read_adapter", lambda *a: pytest.fail("read the tensors"))
    plain = describe(str(adapters["plain"]))
    assert plain["kind"].startswith("IP-Adapter") and plain["layout"] == "plain"
    assert plain["image_encoder"].endswith("pooled image embedding 24 wide)") and plain["image_tokens"] == 4
    assert plain["cross_attention_width"] == 32
    full = describe(str(adapters["full-face"]))
    assert full["layout"] == "full-face" and full["image_encoder"].endswith("hidden states 32 wide)")
    described = describe(str(face))
    assert described["layout"].startswith("Plus face") and "none beside it" in described["image_encoder_found"]
    faceid = tmp_path / "ip-adapter-faceid_sd15.safetensors"
    state = load_file(str(adapters["plain"]))
    state = {k.replace("proj.weight", "proj.0.weight"): v for k, v in state.items()}
    state["image_proj.proj.2.weight"] = torch.zeros(2, 2)
    state["ip_adapter.1.to_k_lora.down.weight"] = torch.zeros(2, 2)
    save_file(state, str(faceid))
    found = describe(str(faceid))
    assert found["layout"] == "FaceID" and "not supported" in found["use"]
    result = ok(invoke("inspect", adapters["plain"]))
    assert "plain" in result.output and "24 wide" in result.output


@pytest.mark.parametrize(
    ("shapes", "encoder"),
    [
        ({"image_proj.proj.weight": (3072, 1024), "image_proj.norm.weight": (768,)}, "CLIP ViT-H/14 (pooled"),
        ({"image_proj.proj.weight": (3072, 1280), "image_proj.norm.weight": (768,)}, "CLIP ViT-bigG/14 (pooled"),
        ({"image_proj.latents": (1, 16, 768), "image_proj.proj_in.weight": (768, 1280)}, "CLIP ViT-H/14 (penult"),
        ({"image_proj.proj.0.weight": (1280, 1280), "image_proj.proj.3.weight": (768,)}, "CLIP ViT-H/14 (penult"),
    ],
)
def test_inspect_names_the_peers_encoders_by_width(tmp_path, shapes, encoder):
    """The released SD1.5 adapters' shapes (ip-adapter_sd15, the ViT-bigG sdxl one's projection, -plus, -full-face)."""
    from videodiff.weights.ip_adapter import describe_ip_adapter

    layers = {f"ip_adapter.{n}.to_{kv}_ip.weight": (320, 768) for n in (1, 3) for kv in "kv"}
    info = describe_ip_adapter(tmp_path / "ip-adapter.safetensors", {**shapes, **layers})
    assert info is not None and info["image_encoder"].startswith(encoder)
    assert info["cross_attention_width"] == 768 and info["cross_attention_layers"] == 2


# ---------------------------------------------------------------------------------------------------------------------
# pictures in memory (Python), and one encoder run per distinct picture


def test_pictures_in_memory_give_the_files_tokens_and_are_recorded_by_their_pixels(
    tmp_path, tiny_pipe, ip, tiny_model, tiny_motion
):
    """A PIL image and a numpy array give the same image tokens as the file they were read from; a render from
    Python records such a picture as ``memory:sha256=`` the SHA-256 of its pixels, and that sidecar, given back,
    is one line asking for a file."""
    from videodiff.pipeline.image_prompts import image_tokens
    from videodiff.render import render
    from videodiff.settings.ip_adapter import MEMORY, ImagePrompt, pixels_sha256
    from videodiff.settings.render import RenderConfig

    adapters, (a, b), _, _ = ip
    adapter = str(adapters["plus"])
    from_file = image_tokens(tiny_pipe, ImagePrompt(adapter, str(a)), 8).tokens
    picture = Image.open(a)
    for given in (picture, np.asarray(picture)):
        torch.testing.assert_close(image_tokens(tiny_pipe, ImagePrompt(adapter, given), 8).tokens, from_file)
    keyed = image_tokens(tiny_pipe, ImagePrompt(adapter, picture, image_at=((-1, str(b)),)), 8).tokens
    torch.testing.assert_close(keyed[:, 0], from_file)
    out = tmp_path / "memory.gif"
    config = RenderConfig(
        prompt="x", model=str(tiny_model), motion_module=str(tiny_motion), frames=8, height=32, width=40, steps=2,
        seed=1, quiet=True, output=str(out), ip_adapters=(ImagePrompt(adapter, np.asarray(picture), 0.5),),
    )  # fmt: skip
    render(config, pipe=tiny_pipe)
    (item,) = read_json(sidecar_path(out))["ip_adapters"]
    assert item["image"] == MEMORY + pixels_sha256(np.asarray(picture)) and item["scale"] == 0.5
    assert pixels_sha256(np.asarray(picture)) != pixels_sha256(np.asarray(Image.open(b)))
    message = assert_user_error(invoke("render", "--config", sidecar_path(out), "-o", tmp_path / "again.gif"))
    assert "in memory" in message and not (tmp_path / "again.gif").exists()


def test_the_encoder_runs_once_per_distinct_picture(one_thread, tiny_pipe, ip, monkeypatch):
    """A plain and a Plus adapter sharing one encoder, each with keyframes of equal pictures (a file, its copy, the
    same picture in memory) and one other picture: two encoder runs for the two pictures and one for the Plus
    adapter's zero picture, however many adapters and keyframes use them."""
    from transformers import CLIPVisionModelWithProjection

    from videodiff.pipeline.image_prompts import with_image_prompts
    from videodiff.sampling.cond import TOKEN_SETS, Cond

    adapters, (a, b), _, root = ip
    calls = []
    forward = CLIPVisionModelWithProjection.forward

    def counted(self, pixel_values, *args, **kwargs):
        calls.append(pixel_values.abs().sum().item())
        return forward(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(CLIPVisionModelWithProjection, "forward", counted)
    same = (str(a), f"3:{root / 'a-again.png'}", (5, Image.open(a)), (7, np.asarray(Image.open(a))))
    prompts = [
        {"adapter": str(adapters["plain"]), "image": same[0], "image_at": [*same[1:], f"-2:{b}"]},
        {"adapter": str(adapters["plus"]), "image": same[0], "image_at": [*same[1:3], f"-1:{b}"]},
    ]
    cond = with_image_prompts(tiny_pipe, Cond.text(torch.zeros(1, 4, 32)), prompts, 8)
    assert len(cond[TOKEN_SETS].sets) == 2
    assert len(calls) == 3 and sum(c == 0 for c in calls) == 1  # a, b, and the zero picture once


def test_offload_releases_the_image_encoder_before_sampling(one_thread, tiny_pipe, ip, monkeypatch):
    """With ``--offload`` the encoder is gone (collected) when the first denoising step runs; without, it is kept."""
    from videodiff.pipeline import image_prompts
    from videodiff.unet import inflate

    adapters, (a, _), _, _ = ip
    refs, alive = [], []
    load = image_prompts.image_encoder

    def tracked(pipe, folder):
        encoder, processor = load(pipe, folder)
        refs.append(weakref.ref(encoder))
        return encoder, processor

    original = inflate.FrameAttention.__call__

    def spy(self, *args, **kwargs):
        if not alive:  # the first attention call of the first step
            gc.collect()
            alive.append(any(r() is not None for r in refs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(image_prompts, "image_encoder", tracked)
    monkeypatch.setattr(inflate.FrameAttention, "__call__", spy)
    prompts = [{"adapter": str(adapters["plain"]), "image": str(a)}]
    kwargs = dict(num_frames=8, height=32, width=40, num_inference_steps=1, seed=1, ip_adapters=prompts)
    monkeypatch.setattr(tiny_pipe, "offload", "model")
    tiny_pipe.__dict__.pop("_image_encoders", None)
    tiny_pipe("x", **kwargs)
    assert refs and alive and not any(alive)
    assert "_image_encoders" not in tiny_pipe.__dict__
    monkeypatch.setattr(tiny_pipe, "offload", None)
    refs.clear(), alive.clear()
    tiny_pipe("x", **kwargs)
    assert refs and all(alive)  # the control: without offload the spy sees it alive


# ---------------------------------------------------------------------------------------------------------------------
# bad input


def test_an_encoder_of_another_width_is_one_line_before_the_model_loads(tmp_path, models, ip, monkeypatch):
    adapters, (picture, _), _, _ = ip
    other = build_tiny_image_encoder(tmp_path / "other-encoder", projection=16, hidden=24)
    loads = []
    monkeypatch.setattr("videodiff.pipelines.VideoPipeline.load", lambda *a, **k: loads.append(a))
    for layout, wide in (("plain", "24-wide pooled image embeddings"), ("full-face", "32-wide hidden states")):
        out = tmp_path / f"{layout}.gif"
        args = ("--ip-adapter", adapters[layout], "--ip-image", picture, "--image-encoder", other, "-o", out)
        message = assert_user_error(invoke("render", "x", *models, *SIZE, "-q", *args))
        assert "does not fit" in message and wide in message and not out.exists()
    assert not loads


def test_an_encoder_of_another_width_for_a_bin_adapter_is_one_line_as_it_runs(tmp_path, tiny_pipe, ip):
    """A ``.bin`` adapter's width is known once it loads: the encoder's output does not fit its projection."""
    from videodiff.pipeline.image_prompts import image_tokens
    from videodiff.settings.ip_adapter import ImagePrompt

    adapters, (picture, _), _, _ = ip
    other = build_tiny_image_encoder(tmp_path / "other-encoder", projection=16, hidden=24)
    with pytest.raises(UserError, match="does not fit") as info:
        image_tokens(tiny_pipe, ImagePrompt(str(adapters["plus"]), str(picture), image_encoder=str(other)), 8)
    assert "\n" not in str(info.value)


def test_an_adapter_for_a_model_with_other_cross_attention_layers_is_one_line(tmp_path, models, ip):
    """The adapter's key/value pairs do not match the model's cross-attention layers (another family's U-Net):
    exit 2 as it loads, nothing written."""
    from safetensors.torch import load_file, save_file

    adapters, (picture, _), encoder, _ = ip
    state = load_file(str(adapters["plain"]))
    state = {k: v for k, v in state.items() if not k.startswith("ip_adapter.1.")}
    fewer = tmp_path / "ip-adapter_other.safetensors"
    save_file(state, str(fewer))
    out = tmp_path / "out.gif"
    args = ("--ip-adapter", fewer, "--ip-image", picture, "--image-encoder", encoder, "-o", out)
    message = assert_user_error(invoke("render", "x", *models, *SIZE, "-q", *args))
    assert "another model family" in message and not out.exists() and not sidecar_path(out).exists()


@pytest.mark.parametrize(
    ("given", "named"),
    [(np.zeros((4, 4, 2), np.uint8), "shape"), ([[0, 1]], "a path"), ("memory:sha256=00ff", "in memory")],
)
def test_bad_pictures_in_python_are_one_line(tiny_pipe, ip, given, named):
    adapters, _, _, _ = ip
    with pytest.raises(UserError, match=named) as info:
        tiny_pipe("x", num_frames=8, height=32, width=40, num_inference_steps=1, seed=1,
                  ip_adapters=[{"adapter": str(adapters["plain"]), "image": given}])  # fmt: skip
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# the web app: a picture for the last frame


def test_the_web_image_prompt_takes_a_picture_for_the_last_frame(tmp_path, ip):
    """The Image prompt section's optional last-frame picture: both uploads copied into the request's folder, the
    second as the keyframe at the last frame (``--ip-image-at -1:PATH``); a path on the server is refused."""
    from videodiff.settings.ip_adapter import parse_ip_image_at
    from videodiff.ui.controls import ServedControls
    from videodiff.ui.prompts import ImagePromptRequest, ServedAdapters

    adapters, (a, b), _, _ = ip
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    first, last = uploads / "first.png", uploads / "last.png"
    shutil.copyfile(a, first), shutil.copyfile(b, last)
    served = ServedAdapters([str(adapters["plain"])], None, ServedControls((), None, tmp_path / "scratch", uploads))
    folder = tmp_path / "request"
    prompt = served.prompt(ImagePromptRequest(adapters["plain"].name, str(first), 0.5, {"path": str(last)}), folder)
    ((frame, end),) = map(parse_ip_image_at, prompt.image_at)
    assert frame == -1 and prompt.pictures(8) == {0: prompt.image, 7: end}
    assert {Path(prompt.image).read_bytes(), Path(end).read_bytes()} == {a.read_bytes(), b.read_bytes()}
    assert folder in Path(prompt.image).parents and folder in Path(end).parents
    alone = served.prompt(ImagePromptRequest(adapters["plain"].name, str(first), 0.5), tmp_path / "alone")
    assert alone.image_at == ()
    with pytest.raises(UserError, match="not a path on the server"):
        served.prompt(ImagePromptRequest(adapters["plain"].name, str(first), 0.5, str(b)), tmp_path / "other")
