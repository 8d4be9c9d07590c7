"""SDXL IP-Adapters (h94/IP-Adapter ``sdxl_models/``' layouts, tiny): parity with diffusers' AnimateDiffSDXLPipeline
with ``load_ip_adapter`` (plain and Plus, one and two adapters), keyframe pictures, ``inspect`` naming the family and
encoder, the other family's adapter refused in one line both ways (before the model loads where a header tells it),
and ``serve --ip-adapter`` on an SDXL model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from PIL import Image

from videodiff.errors import UserError
from videodiff.schedulers import make_scheduler
from videodiff.tiny import build_tiny_image_encoder, build_tiny_ip_adapter, diffusers_ip_adapter_reference

PROMPT = "a red circle moving right"
FRAMES, H, W, STEPS, SEED = 4, 32, 40, 3, 3
SIZE = ("--frames", "4", "--height", "32", "--width", "40", "--steps", "2", "--seed", "1")


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_pipe, one_thread):
    return tiny_sdxl_pipe


@pytest.fixture(scope="module")
def ip(tmp_path_factory, tiny_sdxl_model, tiny_model):
    """``sdxl_models/`` as h94/IP-Adapter lays it out (``image_encoder/`` beside the weights): a plain SDXL adapter
    (.safetensors) and a Plus one (a Resampler, .bin); ``models/`` with an SD1.5 adapter; two pictures."""
    root = tmp_path_factory.mktemp("sdxl-ip")
    encoder = build_tiny_image_encoder(root / "sdxl_models" / "image_encoder")
    adapters = {
        "plain": build_tiny_ip_adapter(root / "sdxl_models" / "ip-adapter_sdxl.safetensors", tiny_sdxl_model, encoder),
        "plus": build_tiny_ip_adapter(
            root / "sdxl_models" / "ip-adapter-plus_sdxl_vit-h.bin", tiny_sdxl_model, encoder, layout="plus"
        ),
    }
    sd15_encoder = build_tiny_image_encoder(root / "models" / "image_encoder")
    adapters["sd15"] = build_tiny_ip_adapter(root / "models" / "ip-adapter_sd15.safetensors", tiny_model, sd15_encoder)
    adapters["sd15-bin"] = build_tiny_ip_adapter(root / "models" / "ip-adapter_sd15.bin", tiny_model, sd15_encoder)
    rng = np.random.default_rng(0)
    pictures = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / name)
        pictures.append(root / name)
    return adapters, pictures


def reference(pipe, model, motion, adapters, pictures, scales) -> np.ndarray:
    """diffusers' ``AnimateDiffSDXLPipeline`` (the image U-Net's ``add_embedding``, as tests/test_sdxl.py's
    reference) with ``load_ip_adapter`` of the same files and ``ip_adapter_image``."""
    from videodiff.tiny_sdxl import diffusers_sdxl_reference

    base = diffusers_sdxl_reference(model, motion, make_scheduler("ddim", pipe.parts.scheduler_config))
    ref = diffusers_ip_adapter_reference(model, motion, None, adapters, base=base)
    ref.set_ip_adapter_scale(scales if len(scales) > 1 else scales[0])
    images = [Image.open(p) for p in pictures]
    out = ref(
        PROMPT, negative_prompt="cat", num_frames=FRAMES, height=H, width=W, num_inference_steps=STEPS,
        guidance_scale=7.5, ip_adapter_image=images if len(images) > 1 else images[0],
        generator=torch.Generator("cpu").manual_seed(SEED), output_type="np",
    ).frames[0]  # fmt: skip
    return (out * 255).round().astype(np.uint8)


def ours(pipe, ip_adapters) -> np.ndarray:
    kwargs = dict(negative_prompt="cat", num_frames=FRAMES, height=H, width=W, num_inference_steps=STEPS, seed=SEED)
    return pipe(PROMPT, scheduler="ddim", ip_adapters=ip_adapters, **kwargs).frames


def gap(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("layout", ["plain", "plus"])
def test_an_sdxl_ip_adapter_matches_diffusers(pipe, tiny_sdxl_model, tiny_sdxl_motion, ip, layout):
    """Same weights, picture, latents and scheduler at scale 0.7: every pixel within 2/255 of diffusers; scale 0
    (the picture ignored) and the other picture each give a video more than 2/255 away."""
    adapters, (picture, other) = ip
    adapter = str(adapters[layout])
    expected = reference(pipe, tiny_sdxl_model, tiny_sdxl_motion, [adapters[layout]], [picture], [0.7])
    got = ours(pipe, [{"adapter": adapter, "image": str(picture), "scale": 0.7}])
    assert got.shape == expected.shape == (FRAMES, H, W, 3)
    assert got.std() > 5
    assert gap(got, expected) <= 2
    assert gap(ours(pipe, [{"adapter": adapter, "image": str(picture), "scale": 0.0}]), expected) > 2
    assert gap(ours(pipe, [{"adapter": adapter, "image": str(other), "scale": 0.7}]), expected) > 2


def test_two_sdxl_ip_adapters_match_diffusers(pipe, tiny_sdxl_model, tiny_sdxl_motion, ip):
    """A plain and a Plus adapter at once, each with its own picture and scale: within 2/255; pictures swapped:
    more than 2/255 away."""
    adapters, (picture, other) = ip
    pair = [adapters["plain"], adapters["plus"]]
    expected = reference(pipe, tiny_sdxl_model, tiny_sdxl_motion, pair, [picture, other], [0.6, 0.9])
    prompts = [
        {"adapter": str(pair[0]), "image": str(picture), "scale": 0.6},
        {"adapter": str(pair[1]), "image": str(other), "scale": 0.9},
    ]
    assert gap(ours(pipe, prompts), expected) <= 2
    swapped = [{**prompts[0], "image": str(other)}, {**prompts[1], "image": str(picture)}]
    assert gap(ours(pipe, swapped), expected) > 2


def test_keyframe_pictures_on_sdxl_blend_and_encode_each_picture_once(pipe, ip, monkeypatch):
    """``image_at`` keyframes: the same picture at both ends renders as that picture alone, encoded once; another
    picture at the last frame changes the video."""
    from videodiff.pipeline import image_prompts

    adapters, (picture, other) = ip
    adapter = str(adapters["plain"])
    alone = ours(pipe, [{"adapter": adapter, "image": str(picture)}])
    runs = []
    real = image_prompts._embeddings
    monkeypatch.setattr(image_prompts, "_embeddings", lambda *a: runs.append(1) or real(*a))
    same = ours(pipe, [{"adapter": adapter, "image_at": [f"0:{picture}", f"-1:{picture}"]}])
    assert len(runs) == 1
    assert gap(same, alone) <= 1
    moving = ours(pipe, [{"adapter": adapter, "image_at": [f"0:{picture}", f"-1:{other}"]}])
    assert gap(moving, alone) > 2


def test_the_sdxl_base_unet_takes_h94s_seventy_key_value_pairs():
    """SDXL base 1.0's U-Net (the shipped config, built without weights): 70 cross-attention layers in diffusers'
    processor order, 2048 wide, so an adapter's keys are ``ip_adapter.1`` to ``ip_adapter.139`` as in
    ``ip-adapter_sdxl.safetensors``, each ``to_k_ip`` ``[640 or 1280, 2048]``."""
    from pathlib import Path

    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    import videodiff
    from videodiff.unet.inflate import cross_attentions

    config = json.loads((Path(videodiff.__file__).parent / "assets" / "sdxl" / "unet" / "config.json").read_text())
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    layers = cross_attentions(unet)
    assert len(layers) == 70
    assert {(a.to_k.in_features, a.to_k.out_features) for a in layers.values()} == {(2048, 640), (2048, 1280)}
    blocks = [n.split(".")[0] for n in layers]  # diffusers' module order, which h94's indices follow: down, up, mid
    assert blocks == ["down_blocks"] * 24 + ["up_blocks"] * 36 + ["mid_block"] * 10


@pytest.mark.parametrize(
    ("proj", "width", "family", "encoder"),
    [
        ({"proj.weight": (8192, 1280), "norm.weight": (2048,)}, 2048, "SDXL", "CLIP ViT-bigG/14 (pooled"),
        ({"proj.weight": (8192, 1024), "norm.weight": (2048,)}, 2048, "SDXL", "CLIP ViT-H/14 (pooled"),
        ({"latents": (1, 16, 1280), "proj_in.weight": (1280, 1280)}, 2048, "SDXL", "CLIP ViT-H/14 (penultimate"),
        ({"proj.weight": (3072, 1024), "norm.weight": (768,)}, 768, "SD1.5", "CLIP ViT-H/14 (pooled"),
    ],
)
def test_inspect_names_an_adapters_family_and_encoder(tmp_path, proj, width, family, encoder):
    """The released adapters' shapes (ip-adapter_sdxl, ip-adapter_sdxl_vit-h, ip-adapter-plus_sdxl_vit-h,
    ip-adapter_sd15): the family from the cross-attention width, the encoder from the projection's input."""
    from videodiff.weights.ip_adapter import describe_ip_adapter

    layers = {f"ip_adapter.{n}.to_{kv}_ip.weight": (640, width) for n in (1, 3) for kv in "kv"}
    shapes = {**{f"image_proj.{k}": v for k, v in proj.items()}, **layers}
    info = describe_ip_adapter(tmp_path / "ip-adapter.safetensors", shapes)
    assert info is not None and info["family"] == family and info["image_encoder"].startswith(encoder)
    assert ("--model SDXL_MODEL" in info["use"]) == (family == "SDXL")


def test_an_sd15_adapter_on_an_sdxl_pipeline_is_one_line(pipe, ip):
    """Told from the loaded U-Net (the Python API runs no header check): both families named."""
    adapters, (picture, _) = ip
    with pytest.raises(UserError) as raised:
        ours(pipe, [{"adapter": str(adapters["sd15"]), "image": str(picture)}])
    message = str(raised.value)
    assert "\n" not in message
    assert "made for another model family, SD1.5 (32-wide cross-attention); the model is SDXL (64-wide)" in message


@pytest.mark.parametrize("direction", ["sd15 adapter on sdxl", "sdxl adapter on sd15"])
def test_the_other_familys_adapter_is_refused_before_the_model_loads(
    tmp_path, monkeypatch, ip, tiny_model, tiny_motion, tiny_sdxl_model, tiny_sdxl_motion, direction
):
    """``render``: one line naming both families, exit 2, from the headers (the model never loads), nothing written."""
    from videodiff.media.video import sidecar_path
    from videodiff.pipelines import VideoPipeline

    adapters, (picture, _) = ip
    loads = []
    monkeypatch.setattr(VideoPipeline, "load", lambda *a, **k: loads.append(a))
    if direction == "sd15 adapter on sdxl":
        adapter, models = adapters["sd15"], ("--model", tiny_sdxl_model, "--motion-module", tiny_sdxl_motion)
        expected = "SD1.5 (32-wide cross-attention); the model is SDXL (64-wide)"
    else:
        adapter, models = adapters["plain"], ("--model", tiny_model, "--motion-module", tiny_motion)
        expected = "SDXL (64-wide cross-attention); the model is SD1.5 (32-wide)"
    out = tmp_path / "x.gif"
    message = assert_user_error(
        invoke("render", PROMPT, *models, *SIZE, "-q", "--ip-adapter", adapter, "--ip-image", picture, "-o", out)
    )
    assert message == (
        f"--ip-adapter {adapter}: made for another model family, {expected}: use an IP-Adapter made for "
        f"{'SDXL' if direction.endswith('sdxl') else 'SD1.5'} models"
    )
    assert not loads and not out.exists() and not sidecar_path(out).exists()


def test_serve_renders_an_sdxl_image_prompt_and_refuses_an_sd15_adapter(
    tmp_path, tiny_sdxl_pipe, tiny_sdxl_model, tiny_sdxl_motion, ip
):
    """``serve --ip-adapter`` with the tiny SDXL adapter: ``/render`` with an uploaded picture records the adapter and
    renders other frames than without it; an SD1.5 adapter is one line before the server starts: a ``.safetensors``
    one from its header before the model loads, a ``.bin`` one as the app loads it."""
    from tests.test_serve_app import need_gradio
    from tests.test_serve_browser import free_port
    from tests.test_serve_control import video_frames

    need_gradio()
    from gradio_client import Client, handle_file

    from videodiff.config import RenderConfig
    from videodiff.ui import serve

    adapters, (picture, _) = ip
    models = ("--model", tiny_sdxl_model, "--motion-module", tiny_sdxl_motion)
    args = ("serve", *models, "--port", str(free_port()), "--outputs", tmp_path / "o", "--ip-adapter")
    message = assert_user_error(invoke(*args, adapters["sd15"]))
    assert "made for another model family, SD1.5" in message and "the model is SDXL" in message
    assert not (tmp_path / "o").exists()
    outputs, port = tmp_path / "outputs", free_port()
    base = RenderConfig().replace(model=str(tiny_sdxl_model), motion=str(tiny_sdxl_motion))
    with pytest.raises(UserError, match="made for another model family, SD1.5 .* the model is SDXL"):
        serve(tiny_sdxl_pipe, outputs, base=base, port=port, block=False, ip_adapters=[str(adapters["sd15-bin"])])
    app = serve(tiny_sdxl_pipe, outputs, base=base, port=port, block=False, ip_adapters=[str(adapters["plain"])])
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        common = (PROMPT, 4, 2, 3, json.dumps({"width": 32, "height": 32, "guidance": 2.0}), "gif")
        name = client.predict(*common, ip_adapter=adapters["plain"].name, ip_image=handle_file(str(picture)),
                              ip_scale=0.8, api_name="/render")  # fmt: skip
        plain = client.predict(*common, api_name="/render")
    finally:
        app.close()
    assert video_frames(outputs / name).shape[:3] == (4, 32, 32)
    assert not np.array_equal(video_frames(outputs / name), video_frames(outputs / plain))
    (prompt,) = json.loads((outputs / (name + ".json")).read_text())["ip_adapters"]
    assert prompt["adapter"] == str(adapters["plain"].resolve()) and prompt["scale"] == 0.8
