"""The web app on an SDXL model (the tiny offline one): text-to-video through the `/render` API with a negative
prompt, img2vid from the page's form, the sidecar naming the SDXL pieces, and SD1.5-only add-ons refused by
`serve` in one line before the server starts."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import assert_user_error, invoke
from tests.test_serve_app import need_gradio
from tests.test_serve_browser import free_port
from tests.test_serve_control import video_frames

SIZE = {"width": 32, "height": 32, "guidance": 2.0}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_sdxl_pipe, tiny_sdxl_model, tiny_sdxl_motion):
    need_gradio()
    from gradio_client import Client

    from videodiff.config import RenderConfig
    from videodiff.ui import serve

    outputs = tmp_path_factory.mktemp("serve-sdxl") / "outputs"
    port = free_port()
    base = RenderConfig().replace(model=str(tiny_sdxl_model), motion=str(tiny_sdxl_motion))
    app = serve(tiny_sdxl_pipe, outputs, base=base, port=port, block=False)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False), outputs, app
    finally:
        app.close()


def test_text_to_video_on_sdxl_through_the_api(served, tiny_sdxl_pipe):
    client, outputs, _ = served
    settings = json.dumps({**SIZE, "negative": "blurry"})
    name = client.predict("a red circle moving right", 4, 2, 3, settings, "gif", api_name="/render")
    frames = video_frames(outputs / name)
    assert frames.shape[:3] == (4, 32, 32)
    recorded = json.loads((outputs / (name + ".json")).read_text())
    assert recorded["negative"] == "blurry" and recorded["seed"] == 3
    # the server ran the SDXL model with these settings: its GIF (palette-quantised) is far closer to the same render
    # in this process than to one with another seed
    def render(seed: int) -> np.ndarray:
        prompt = "a red circle moving right"
        return tiny_sdxl_pipe(prompt, frames=4, steps=2, seed=seed, negative="blurry", **SIZE).frames.astype(int)

    same, other = (float(np.abs(frames.astype(int) - render(seed)).mean()) for seed in (3, 4))
    assert same < other / 4, (same, other)


def test_img2vid_on_sdxl_from_the_pages_form(served, tiny_sdxl_model):
    _, outputs, app = served
    on = app.videodiff_handlers
    page = on.page
    picture = outputs / "still.png"  # where the page keeps an accepted upload
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(picture)
    data = {component: component.value for component in page.form_inputs}
    data.update({page.prompt_img: "a red circle", page.image_state: str(picture), page.fmt: "gif"})
    data.update({page.settings[k]: v for k, v in {"frames": 4, "steps": 2, "seed": 1, **SIZE}.items()})
    values, chosen = on.tab_values("img2vid", data)
    job = asyncio.run(on.queue("img2vid", values, chosen, None, on.control_requests(data)))
    outcome = job.future.result(timeout=300)
    recorded = json.loads(outcome.sidecar.read_text())
    assert recorded["image_at"] == [f"0:{picture}"] and recorded["model"] == str(tiny_sdxl_model)
    assert video_frames(outcome.output).shape[:3] == (4, 32, 32)


def test_serve_on_sdxl_refuses_sd15_add_ons_in_one_line(tmp_path, tiny_sdxl_model, tiny_sdxl_motion, tiny_model):
    from videodiff.tiny import build_tiny_controlnet

    net = build_tiny_controlnet(tmp_path / "cn", tiny_model)  # an SD1.5 ControlNet
    models = ("--model", tiny_sdxl_model, "--motion-module", tiny_sdxl_motion)
    args = ("serve", *models, "--port", str(free_port()), "--outputs", tmp_path / "o", "--controlnet", net)
    expected = f"ControlNet {net}: the ControlNet is for SD1.5 (cross-attention 32), the model is SDXL"
    assert assert_user_error(invoke(*args)) == expected  # before loading
    assert not (tmp_path / "o").exists()
