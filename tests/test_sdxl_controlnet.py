"""SDXL ControlNets (diffusers' ``ControlNetModel`` with ``addition_embed_type="text_time"``): parity with an
independent reference (diffusers' ``UNetMotionModel`` and ``ControlNetModel`` in a hand-written DDIM loop with
classifier-free guidance), the comparison failing when the ControlNet's size ids or pooled text are wrong; the
control changing the frames; refusals of the other family's ControlNet, of SparseCtrl and of ControlNet training."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from einops import rearrange
from PIL import Image

from videodiff.errors import UserError
from videodiff.schedulers import make_scheduler
from videodiff.settings.control import Control
from videodiff.tiny import build_tiny_controlnet
from videodiff.tiny_sdxl import build_tiny_sdxl_controlnet

PROMPT = "a red circle moving right"
FRAMES, H, W, STEPS, SEED = 4, 32, 40, 3, 3


@pytest.fixture(scope="module")
def sdxl_controlnet(tmp_path_factory, tiny_sdxl_model):
    """``ControlNetModel.from_unet`` of the tiny SDXL U-Net, random non-zero weights in its zero convolutions."""
    return build_tiny_sdxl_controlnet(tmp_path_factory.mktemp("sdxl-cn") / "cn", tiny_sdxl_model)


@pytest.fixture(scope="module")
def sd15_controlnet(tmp_path_factory, tiny_model):
    return build_tiny_controlnet(tmp_path_factory.mktemp("sd15-cn") / "cn", tiny_model)


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    """A folder of maps (a white bar moving right) and the same maps as uint8 frames."""
    folder = tmp_path_factory.mktemp("maps")
    frames = np.zeros((FRAMES, H, W, 3), np.uint8)
    for i in range(FRAMES):
        frames[i, 6:26, 2 + 6 * i : 10 + 6 * i] = 255
        Image.fromarray(frames[i]).save(folder / f"{i:04d}.png")
    return folder, frames


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_pipe, one_thread):
    return tiny_sdxl_pipe


def ours(pipe, controls, **extra) -> np.ndarray:
    kwargs = dict(num_frames=FRAMES, height=H, width=W, num_inference_steps=STEPS, seed=SEED, negative_prompt="cat")
    return pipe(PROMPT, scheduler="ddim", controls=controls, **{**kwargs, **extra}).frames


def gap(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def reference(pipe, model, motion, controlnet, frames: np.ndarray, scale: float) -> np.ndarray:
    """diffusers' ``UNetMotionModel`` (with the image U-Net's ``add_embedding``, as tests/test_sdxl.py's reference)
    and ``ControlNetModel`` in a DDIM loop written here: at each step the ControlNet runs on the frames of both
    guidance halves with their pooled text and size ids, its residuals go to the U-Net."""
    from diffusers import ControlNetModel

    from videodiff.tiny_sdxl import diffusers_sdxl_reference

    scheduler = make_scheduler("ddim", pipe.parts.scheduler_config)
    base = diffusers_sdxl_reference(model, motion, scheduler)
    net = ControlNetModel.from_pretrained(controlnet)
    text, negative, pooled, negative_pooled = base.encode_prompt(
        PROMPT, device="cpu", num_videos_per_prompt=1, do_classifier_free_guidance=True, negative_prompt="cat"
    )
    context, pooled = torch.cat([negative, text]), torch.cat([negative_pooled, pooled])
    ids = torch.tensor([[H, W, 0, 0, H, W]] * 2, dtype=context.dtype)
    generator = torch.Generator("cpu").manual_seed(SEED)
    latents = torch.randn((1, 4, FRAMES, H // 2, W // 2), generator=generator) * scheduler.init_noise_sigma
    hint = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255).repeat(2, 1, 1, 1)  # [(2 f) 3 H W]
    scheduler.set_timesteps(STEPS)
    per_frame = lambda x: x.repeat_interleave(FRAMES, dim=0)  # noqa: E731 - [(2 f) ...], frames inside each half
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            down, mid = net(
                rearrange(x, "b c f h w -> (b f) c h w"), t, encoder_hidden_states=per_frame(context),
                controlnet_cond=hint, conditioning_scale=scale, return_dict=False,
                added_cond_kwargs={"text_embeds": per_frame(pooled), "time_ids": per_frame(ids)},
            )  # fmt: skip
            noise = base.unet(
                x, t, encoder_hidden_states=per_frame(context),
                added_cond_kwargs={"text_embeds": pooled, "time_ids": ids},
                down_block_additional_residuals=down, mid_block_additional_residual=mid,
            ).sample  # fmt: skip
            uncond, cond = noise.chunk(2)
            latents = scheduler.step(uncond + 7.5 * (cond - uncond), t, latents).prev_sample
        video = base.video_processor.postprocess_video(video=base.decode_latents(latents), output_type="np")[0]
    return (video * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def expected(pipe, tiny_sdxl_model, tiny_sdxl_motion, sdxl_controlnet, maps):
    return reference(pipe, tiny_sdxl_model, tiny_sdxl_motion, sdxl_controlnet, maps[1], 0.8)


def test_an_sdxl_controlnet_matches_the_reference(pipe, sdxl_controlnet, maps, expected):
    """Same weights, latents and scheduler: every pixel within 2/255 of the reference; without the control the video
    is more than 2/255 away (the control changes the frames)."""
    got = ours(pipe, [Control(maps=str(maps[0]), controlnet=str(sdxl_controlnet), scale=0.8)])
    assert got.shape == expected.shape == (FRAMES, H, W, 3)
    assert got.std() > 5
    assert gap(got, expected) <= 2
    assert gap(ours(pipe, []), expected) > 2


@pytest.mark.parametrize("wrong", ["time_ids", "text_embeds"])
def test_the_comparison_fails_when_the_controlnet_gets_wrong_added_conditioning(
    pipe, sdxl_controlnet, maps, expected, monkeypatch, wrong
):
    """The parity above is not blind to what the ControlNet's time embedding gets: crop ids of (8, 8) instead of
    (0, 0), or zeros for the pooled text, given to the ControlNet alone, open a gap."""
    from videodiff.control import controlnet as control_module

    real = control_module._added_conditioning

    def spoiled(net, cond, frames, dtype):
        added = real(net, cond, frames, dtype)
        if added is not None:
            value = added[wrong]
            added[wrong] = value + torch.tensor([0, 0, 8, 8, 0, 0]) if wrong == "time_ids" else torch.zeros_like(value)
        return added

    monkeypatch.setattr(control_module, "_added_conditioning", spoiled)
    assert gap(ours(pipe, [Control(maps=str(maps[0]), controlnet=str(sdxl_controlnet), scale=0.8)]), expected) > 2


def test_scale_zero_is_no_control_and_prompt_travel_reaches_the_controlnet(pipe, sdxl_controlnet, maps, monkeypatch):
    """Conditioning scale 0 renders the uncontrolled video exactly; with prompt travel the ControlNet gets each
    frame's own pooled text (the negative prompt's in the unconditional half), and two controls differ from one."""
    from videodiff.control import controlnet as control_module

    net = str(sdxl_controlnet)
    assert np.array_equal(ours(pipe, [Control(maps=str(maps[0]), controlnet=net, scale=0.0)]), ours(pipe, []))
    travel = dict(prompt_at={0: "a red circle", FRAMES - 1: "a cat"})
    seen, real = [], control_module._added_conditioning
    monkeypatch.setattr(control_module, "_added_conditioning", lambda *a: seen.append(real(*a)) or seen[-1])
    one = ours(pipe, [Control(maps=str(maps[0]), controlnet=net)], **travel)
    two = ours(pipe, [Control(maps=str(maps[0]), controlnet=net), Control(maps=str(maps[0]), controlnet=net)], **travel)
    assert one.shape == two.shape == (FRAMES, H, W, 3) and gap(one, two) > 2
    pooled = seen[0]["text_embeds"]  # [(2 f) p]: the unconditional half's frames, then the conditional half's
    assert pooled.shape[0] == 2 * FRAMES and seen[0]["time_ids"].shape == (2 * FRAMES, 6)
    assert torch.equal(pooled[0], pooled[FRAMES - 1])  # one negative prompt
    assert (pooled[FRAMES] - pooled[-1]).abs().max() > 1e-3  # "a red circle" at the first frame, "a cat" at the last


def test_the_other_familys_controlnet_is_refused_in_one_line(
    pipe,
    tiny_pipe,
    tiny_sdxl_model,
    tiny_sdxl_motion,
    tiny_model,
    tiny_motion,
    sdxl_controlnet,
    sd15_controlnet,
    maps,
    tmp_path,
    monkeypatch,
):
    """From a local folder's config before the model loads (the CLI), and once loaded (a hub id's or a file's
    case: :func:`check_fits`), the same line naming both families."""
    from cli_helpers import assert_user_error, invoke

    from videodiff.pipelines import VideoPipeline
    from videodiff.weights.controlnets import check_fits, load_controlnet

    for net, model, theirs, ours, width in ((sd15_controlnet, pipe, "SD1.5", "SDXL", 32),
                                            (sdxl_controlnet, tiny_pipe, "SDXL", "SD1.5", 64)):  # fmt: skip
        line = f"ControlNet x: the ControlNet is for {theirs} (cross-attention {width}), the model is {ours}"
        with pytest.raises(UserError, match=f"^{re.escape(line)}$"):
            check_fits(load_controlnet(net), model.parts.unet.config, "x")

    def load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(VideoPipeline, "load", load)
    common = ("--control", maps[0], "--frames", FRAMES, "--steps", 1, "-o", tmp_path / "x.gif", "-q")
    message = assert_user_error(invoke("render", PROMPT, "--model", tiny_sdxl_model, "--motion-module",
                                       tiny_sdxl_motion, "--controlnet", sd15_controlnet, *common))  # fmt: skip
    line = "the ControlNet is for SD1.5 (cross-attention 32), the model is SDXL"
    assert message == f"ControlNet {sd15_controlnet}: {line}"
    message = assert_user_error(invoke("render", PROMPT, "--model", tiny_model, "--motion-module", tiny_motion,
                                       "--controlnet", sdxl_controlnet, *common))  # fmt: skip
    line = "the ControlNet is for SDXL (cross-attention 64), the model is SD1.5"
    assert message == f"ControlNet {sdxl_controlnet}: {line}"
    assert not (tmp_path / "x.gif").exists()


def test_sparsectrl_on_sdxl_is_refused_by_name(pipe, tiny_sdxl_model, tiny_sdxl_motion, tmp_path):
    from cli_helpers import assert_user_error, invoke

    picture = tmp_path / "p.png"
    Image.new("RGB", (W, H)).save(picture)
    (tmp_path / "sparse").mkdir()
    given = [{"controlnet": str(tmp_path / "sparse"), "sparse_at": [f"0:{picture}"]}]
    with pytest.raises(UserError, match="^SparseCtrl is not supported for SDXL models yet$"):
        pipe(PROMPT, seed=1, controls=given, num_frames=FRAMES, height=H, width=W, num_inference_steps=1)
    message = assert_user_error(invoke("render", PROMPT, "--model", tiny_sdxl_model, "--motion-module",
                                       tiny_sdxl_motion, "--sparsectrl", tmp_path / "sparse", "--sparse-at",
                                       f"0:{picture}", "-o", tmp_path / "x.gif", "-q"))  # fmt: skip
    assert message == "SparseCtrl is not supported for SDXL models yet"


def test_training_a_controlnet_on_sdxl_is_refused_by_name(tiny_sdxl_model, tmp_path):
    from videodiff.config import TrainConfig
    from videodiff.training.controlnet import ControlNetTrainer

    (tmp_path / "data").mkdir()
    config = TrainConfig(model=str(tiny_sdxl_model), data=str(tmp_path / "data"), output=str(tmp_path / "run"),
                         quiet=True, controlnet="new")  # fmt: skip
    with pytest.raises(UserError, match="^ControlNet training is not supported for SDXL models yet$"):
        ControlNetTrainer(config).build_models()


def test_inspect_names_an_sdxl_controlnets_family(sdxl_controlnet):
    from videodiff.weights.controlnets import describe_controlnet

    described = describe_controlnet(sdxl_controlnet)
    assert (described["kind"], described["family"], described["text_width"]) == ("controlnet", "SDXL", 64)


def test_serve_offers_an_sdxl_controlnet_and_renders_with_uploaded_maps(
    tmp_path, pipe, tiny_sdxl_model, tiny_sdxl_motion, sdxl_controlnet, maps
):
    """``serve --controlnet`` with an SDXL ControlNet on the SDXL model: ``/render`` with uploaded maps renders
    under the control (other frames than without), and the sidecar records it."""
    import json

    from tests.test_serve_app import need_gradio
    from tests.test_serve_browser import free_port
    from tests.test_serve_control import uploads, video_frames

    need_gradio()
    from gradio_client import Client

    from videodiff.config import RenderConfig
    from videodiff.ui import serve

    outputs, port = tmp_path / "outputs", free_port()
    base = RenderConfig().replace(model=str(tiny_sdxl_model), motion=str(tiny_sdxl_motion))
    app = serve(pipe, outputs, base=base, port=port, block=False, controlnets=[str(sdxl_controlnet)])
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        common = (PROMPT, FRAMES, 2, 3, json.dumps({"width": W, "height": H, "guidance": 2.0}), "gif")
        files = uploads(sorted(maps[0].iterdir()))
        name = client.predict(*common, controlnet=sdxl_controlnet.name, maps=files, api_name="/render")
        plain = client.predict(*common, api_name="/render")
    finally:
        app.close()
    controlled = video_frames(outputs / name)
    assert controlled.shape[:3] == (FRAMES, H, W)
    assert not np.array_equal(controlled, video_frames(outputs / plain))
    (control,) = json.loads((outputs / (name + ".json")).read_text())["controls"]
    assert control["controlnet"] == str(sdxl_controlnet.resolve())


def test_an_sdxl_controlnet_file_in_diffusers_keys_renders_as_its_folder(pipe, sdxl_controlnet, maps, tmp_path):
    """The folder's weights alone (a ``.safetensors`` in diffusers' keys, as most SDXL ControlNet files are) load with
    the attention heads and size-id width of the U-Net they steer, and render the folder's frames exactly;
    ``inspect`` names the file's family."""
    from videodiff.weights.controlnets import describe_controlnet, load_controlnet

    alone = tmp_path / "canny_sdxl.safetensors"
    alone.write_bytes((sdxl_controlnet / "diffusion_pytorch_model.safetensors").read_bytes())
    net = load_controlnet(alone, unet_config=pipe.parts.unet.config)
    folder = load_controlnet(sdxl_controlnet)
    for key in ("addition_embed_type", "addition_time_embed_dim", "attention_head_dim", "transformer_layers_per_block"):
        assert net.config[key] == folder.config[key], key
    described = describe_controlnet(alone)
    assert (described["layout"], described["family"], described["text_width"]) == ("diffusers layout", "SDXL", 64)
    control = dict(maps=str(maps[0]), scale=0.8)
    by_file = ours(pipe, [Control(controlnet=str(alone), **control)])
    assert np.array_equal(by_file, ours(pipe, [Control(controlnet=str(sdxl_controlnet), **control)]))
