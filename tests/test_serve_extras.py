"""The web app's Post-processing (interpolation) and Image prompt (IP-Adapter) sections through the `/render` API,
on tiny models: interpolated frame counts recorded in the sidecar, a served adapter with an uploaded picture,
refusals in one line, older API calls unchanged, and `serve --ip-adapter` checked before anything loads."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import assert_user_error, invoke
from tests.test_serve_app import ROOT, need_gradio
from tests.test_serve_browser import browser, free_port  # noqa: F401 (browser: the fixture)
from tests.test_serve_control import scratch_of, video_frames
from videodiff.tiny import build_tiny_image_encoder, build_tiny_ip_adapter

ADAPTER = "ip-adapter_sd15.safetensors"  # the served file's name, as docs/guides/web-app.md's example names it
SIZE = '{"width": 40, "height": 32, "guidance": 1.0}'
PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model) -> Path:
    models = tmp_path_factory.mktemp("ip") / "models"  # h94/IP-Adapter's layout: image_encoder/ beside the file
    encoder = build_tiny_image_encoder(models / "image_encoder")
    return build_tiny_ip_adapter(models / ADAPTER, tiny_model, encoder)


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pictures") / "style.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_pipe, tiny_model, tiny_motion, adapter):
    """``serve`` with the tiny IP-Adapter offered, in this process; the settings name the loaded model (as the
    command line's do), whose width the adapter is checked against."""
    need_gradio()
    from gradio_client import Client

    from videodiff.config import RenderConfig
    from videodiff.ui import serve

    outputs = tmp_path_factory.mktemp("serve-extras") / "outputs"
    port = free_port()
    base = RenderConfig().replace(model=str(tiny_model), motion=str(tiny_motion))
    app = serve(tiny_pipe, outputs, base=base, port=port, block=False, ip_adapters=[str(adapter)])
    try:
        url = f"http://127.0.0.1:{port}/"
        yield Client(url, verbose=False), outputs, app, url
    finally:
        app.close()


def sidecar(outputs: Path, name: str) -> dict:
    return json.loads((outputs / (name + ".json")).read_text())


def test_interpolate_through_the_api_makes_the_frames_and_the_sidecar_records_it(served):
    client, outputs, _, _ = served
    name = client.predict(PROMPT, 4, 2, 3, SIZE, "gif", interpolate=2, interpolate_method="flow", api_name="/render")
    assert len(video_frames(outputs / name)) == (4 - 1) * 2 + 1
    recorded = sidecar(outputs, name)
    assert (recorded["interpolate"], recorded["interpolate_method"]) == (2, "flow")
    # the settings JSON carries them too; parameters left at their defaults do not override it
    # ("blend": a GIF keeps its made frames, where "repeat"'s equal frames are merged by the GIF writer)
    settings = json.dumps({**json.loads(SIZE), "interpolate": 3, "interpolate_method": "blend"})
    name = client.predict(PROMPT, 4, 2, 3, settings, "gif", api_name="/render")
    assert len(video_frames(outputs / name)) == (4 - 1) * 3 + 1
    assert (sidecar(outputs, name)["interpolate"], sidecar(outputs, name)["interpolate_method"]) == (3, "blend")
    with pytest.raises(Exception, match="interpolate"):
        client.predict(PROMPT, 4, 2, 3, SIZE, "gif", interpolate=9, api_name="/render")


def test_an_image_prompt_with_a_served_adapter_and_an_uploaded_picture(served, adapter, picture):
    from gradio_client import handle_file

    client, outputs, app, _ = served
    common = (PROMPT, 4, 2, 3, SIZE, "gif")
    name = client.predict(*common, ip_adapter=ADAPTER, ip_image=handle_file(str(picture)), ip_scale=0.6,
                          api_name="/render")  # fmt: skip
    plain = client.predict(*common, api_name="/render")
    assert not np.array_equal(video_frames(outputs / name), video_frames(outputs / plain))
    (prompt,) = sidecar(outputs, name)["ip_adapters"]
    assert prompt["adapter"] == str(adapter.resolve()) and prompt["scale"] == 0.6
    assert Path(prompt["image"]).name == picture.name
    assert Path(prompt["image"]).parent.parent.parent == Path(app.videodiff_scratch.name)  # the request's folder
    assert sidecar(outputs, plain)["ip_adapters"] == []
    assert scratch_of(app) == []  # the request's picture is removed after its render


def test_an_unserved_adapter_or_a_server_path_is_refused_in_one_line(served, adapter, picture, tmp_path):
    from gradio_client import handle_file

    client, outputs, app, _ = served
    before = sorted(outputs.glob("*.gif"))
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    common = (PROMPT, 4, 2, 3, SIZE, "gif")
    for name, image, scale, message in (
        ("nope", handle_file(str(picture)), 0.6, "unknown IP-Adapter 'nope'"),
        (str(adapter), handle_file(str(picture)), 0.6, "unknown IP-Adapter"),  # a server path is not a name
        (ADAPTER, {"path": str(picture), "meta": {"_type": "x"}}, 0.6, "not a path on the server"),
        (ADAPTER, None, 0.6, "upload a picture"),
        ("none", handle_file(str(picture)), 0.6, "choose an IP-Adapter"),
        (ADAPTER, handle_file(str(picture)), 11, "from 0 to 10"),
        (ADAPTER, handle_file(str(text)), 0.6, "notes.png"),
    ):
        with pytest.raises(Exception, match=re.escape(message)) as raised:
            client.predict(*common, ip_adapter=name, ip_image=image, ip_scale=scale, api_name="/render")
        assert "\n" not in str(raised.value).strip()
    assert sorted(outputs.glob("*.gif")) == before and scratch_of(app) == []


def test_older_api_calls_and_the_guides_examples_run(served, picture, tmp_path, monkeypatch):
    """The README's call (positional, as written there) and the guide's interpolation and image prompt examples."""
    _, outputs, _, url = served
    blocks = []
    for page in ("README.md", "docs/guides/web-app.md"):
        text = (ROOT / page).read_text(encoding="utf-8")
        blocks += [b for b in re.findall(r"```py(?:thon)?\n(.*?)```", text, flags=re.S) if "/render" in b]
    chosen = [b for b in blocks if "controlnet=" not in b]
    assert any("interpolate=" in b for b in chosen) and any("ip_adapter=" in b for b in chosen)
    (tmp_path / "style.png").write_bytes(picture.read_bytes())
    monkeypatch.chdir(tmp_path)
    for code in chosen:
        scope: dict = {}
        code = textwrap.dedent(code).replace("http://127.0.0.1:7860/", url)
        exec(compile(code, "example", "exec"), scope)  # noqa: S102
        assert (outputs / scope["name"]).is_file()
        recorded = sidecar(outputs, scope["name"])
        assert bool(recorded["ip_adapters"]) == ("ip_adapter=" in code)
        assert (recorded["interpolate"] is not None) == ("interpolate=" in code)


def test_serve_refuses_a_missing_adapter_or_encoder_before_anything_loads(tmp_path, adapter):
    port = ("serve", "--port", str(free_port()), "--outputs", tmp_path / "o")
    message = assert_user_error(invoke(*port, "--ip-adapter", tmp_path / "nope.safetensors"))
    assert "--ip-adapter" in message and "no such file" in message
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / ADAPTER).write_bytes(adapter.read_bytes())  # no image_encoder/ beside it
    assert "--image-encoder" in assert_user_error(invoke(*port, "--ip-adapter", lone / ADAPTER))
    message = assert_user_error(invoke(*port, "--ip-adapter", lone / ADAPTER, "--image-encoder", tmp_path / "enc"))
    assert "no such folder" in message
    assert "needs --ip-adapter" in assert_user_error(invoke(*port, "--image-encoder", tmp_path))
    assert not (tmp_path / "o").exists()


@pytest.mark.browser
def test_post_processing_and_image_prompt_sections_in_a_browser(served, picture, browser):  # noqa: F811
    """In headless Chromium: interpolation chosen in Post-processing and an image prompt in its section (a served
    adapter picked by name, a picture uploaded) reach the render's sidecar (VIDEODIFF_SCREENSHOT_EXTRAS=PATH saves
    the page there)."""
    import os

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.test_serve_browser import WAIT

    _, outputs, _, url = served
    driver = browser
    wait = WebDriverWait(driver, WAIT)

    def css(selector: str):
        return wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, selector)))

    def type_into(selector: str, text: str) -> None:
        box = css(selector)
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text + Keys.TAB)

    def pick(selector: str, choice: str) -> None:
        css(f"{selector} input").click()
        wait.until(lambda d: d.find_elements(By.XPATH, f"//li[contains(., '{choice}')]"))[0].click()

    driver.get(url)
    css("#prompt-text textarea")
    for name, value in (("frames", "4"), ("width", "40"), ("height", "32"), ("steps", "2"), ("seed", "1")):
        type_into(f"#set-{name} input[type='number']", value)
    driver.find_element(By.XPATH, "//button[contains(., 'Post-processing')]").click()
    pick("#set-interpolate", "2")
    pick("#set-interpolate-method", "blend")
    driver.find_element(By.XPATH, "//button[contains(., 'Image prompt (IP-Adapter)')]").click()
    css("#ip-image input[type='file']").send_keys(str(picture))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#ip-image tbody tr, #ip-image a"))
    pick("#ip-adapter", ADAPTER)
    type_into("#prompt-text textarea", PROMPT)
    if os.environ.get("VIDEODIFF_SCREENSHOT_EXTRAS"):
        driver.save_screenshot(os.environ["VIDEODIFF_SCREENSHOT_EXTRAS"])
    before = set(outputs.glob("*.json"))
    css("#render-text").click()
    wait.until(lambda d: set(outputs.glob("*.json")) - before)
    (written,) = set(outputs.glob("*.json")) - before
    recorded = json.loads(written.read_text())
    assert (recorded["interpolate"], recorded["interpolate_method"]) == (2, "blend")
    assert [Path(p["adapter"]).name for p in recorded["ip_adapters"]] == [ADAPTER]
