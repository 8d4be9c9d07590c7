"""ControlNet control in the web app: `serve --controlnet`, maps uploaded through the API, the maps preview, and
refusals (a ControlNet the server does not offer, a path on the server, bad maps), on tiny models."""

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
from tests.test_serve_browser import WAIT, browser, free_port  # noqa: F401 (browser: the fixture)
from videodiff.tiny import build_tiny_controlnet

NET = "control_v11p_sd15_canny"  # the served folder's name, as docs/guides/web-app.md's example names it
SIZE = '{"width": 40, "height": 32, "guidance": 1.0}'


@pytest.fixture(scope="module")
def controlnet(tmp_path_factory, tiny_model):
    return build_tiny_controlnet(tmp_path_factory.mktemp("cn") / NET, tiny_model)


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[Path]:
    """Ten pictures (48x60: fitted to each render's size) of a white bar moving right."""
    folder = tmp_path_factory.mktemp("maps")
    paths = []
    for i in range(10):
        frame = np.zeros((48, 60, 3), np.uint8)
        frame[10:38, 4 + 4 * i : 12 + 4 * i] = (255, 255, 255)
        frame[20:30, 40:56] = (200, 40, 90)
        paths.append(folder / f"{i:04d}.png")
        Image.fromarray(frame).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_pipe, controlnet):
    """``serve`` with the tiny ControlNet offered, in this process (its log goes to the captured output)."""
    need_gradio()
    from gradio_client import Client

    from videodiff.ui import serve

    outputs = tmp_path_factory.mktemp("serve-control") / "outputs"
    port = free_port()
    app = serve(tiny_pipe, outputs, port=port, block=False, controlnets=[str(controlnet)])
    try:
        url = f"http://127.0.0.1:{port}/"
        yield Client(url, verbose=False), outputs, app, url
    finally:
        app.close()


def uploads(paths):
    from gradio_client import handle_file

    return [handle_file(str(p)) for p in paths]


def scratch_of(app) -> list[Path]:
    """What the server keeps of uploaded maps between renders (nothing)."""
    return list(Path(app.videodiff_scratch.name).iterdir())


def video_frames(path: Path) -> np.ndarray:
    from videodiff.media.clips import read_video

    return read_video(path, frames=None)[0]


def test_a_render_with_a_served_controlnet_and_uploaded_maps(served, controlnet, frames):
    client, outputs, app, _ = served
    common = ("a red circle moving right", 8, 2, 3, SIZE)
    name = client.predict(
        *common, "gif", controlnet=NET, maps=uploads(frames[:8]), scale=0.7, end=0.5, api_name="/render"
    )
    plain = client.predict(*common, "gif", api_name="/render")
    assert not np.array_equal(video_frames(outputs / name), video_frames(outputs / plain))
    sidecar = json.loads((outputs / (name + ".json")).read_text())
    (control,) = sidecar["controls"]
    assert control["controlnet"] == str(controlnet.resolve())
    assert control["scale"] == 0.7 and control["range"] == [0.0, 0.5]
    assert Path(control["maps"]).parent.parent == Path(app.videodiff_scratch.name)  # where it was read from
    (source,) = sidecar["info"]["controls"]
    assert sorted(source["sha256"]) == [f"{i:04d}.png" for i in range(8)]  # the frames, in upload order
    assert json.loads((outputs / (plain + ".json")).read_text())["controls"] == []
    assert scratch_of(app) == []  # the request's maps are removed after its render


def test_the_pages_render_reads_the_control_section(served, frames, tmp_path, monkeypatch):
    """The page's render buttons read both controls from the form (its inputs hold their components); the maps are
    staged for the render, and removed with a request that fails its checks."""
    import asyncio

    _, _, app, _ = served
    on = app.videodiff_handlers
    page = on.page
    monkeypatch.setattr(on.served, "uploads", frames[0].parent.resolve())  # as if Gradio had put them there
    data = {component: component.value for component in page.form_inputs}
    data.update({page.prompt_text: "a red circle", page.settings["frames"]: 4, page.settings["width"]: 40})
    data.update({page.settings["height"]: 32, page.settings["steps"]: 2, page.settings["seed"]: 1})
    first = page.controls[0]
    data.update({first.controlnet: NET, first.files: [str(p) for p in frames[:4]], first.scale: 0.5})
    values, chosen = on.tab_values("text", data)
    requests = on.control_requests(data)
    assert [r.wanted for r in requests] == [True, False]
    job = asyncio.run(on.queue("text", values, chosen, None, requests))
    outcome = job.future.result(timeout=300)
    assert json.loads(outcome.sidecar.read_text())["controls"][0]["scale"] == 0.5
    data[first.files] = [str(p) for p in frames[:2]]  # too few for 4 frames: refused, nothing left behind
    with pytest.raises(Exception, match="2 images"):
        asyncio.run(on.queue("text", values, chosen, None, on.control_requests(data)))
    assert scratch_of(app) == []


def test_show_maps_returns_the_canny_maps_of_the_fitted_frames(served, frames):
    from videodiff.control.maps import canny
    from videodiff.media.images import fit_image, read_image

    client, _, app, _ = served
    shown = client.predict(NET, uploads(frames[:6]), "canny", 50, 150, 1.0, 0.0, 1.0, "", 6, 32, 40, "crop",
                           api_name="/show_maps")  # fmt: skip
    got = [np.asarray(Image.open(item["image"]).convert("RGB")) for item in shown]
    expected = [canny(fit_image(read_image(p), 32, 40), 50, 150) for p in frames[:6]]
    assert len(got) == 6 and all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    assert any(e.any() for e in expected)  # edges, not blank maps
    one = client.predict(NET, uploads(frames[:1]), "none", 100, 200, 1.0, 0.0, 1.0, "", 3, 32, 40, "pad",
                         api_name="/show_maps")  # fmt: skip
    picture = fit_image(read_image(frames[0]), 32, 40, fit="pad")
    assert [np.array_equal(np.asarray(Image.open(i["image"]).convert("RGB")), picture) for i in one] == [True] * 3
    assert scratch_of(app) == []


def test_a_drawn_path_in_place_of_maps(served, frames):
    """The Control section's path: the blob maps --control-path draws, previewed and rendered; maps and a path at
    once, or a path that is not points, are one line."""
    from videodiff.control.maps import path_maps

    client, outputs, app, _ = served
    shown = client.predict(NET, None, "none", 100, 200, 1.0, 0.0, 1.0, "4,16:36,16", 5, 32, 40, "crop",
                           api_name="/show_maps")  # fmt: skip
    got = np.stack([np.asarray(Image.open(item["image"]).convert("RGB")) for item in shown])
    assert np.array_equal(got, path_maps(((4, 16), (36, 16)), 5, 32, 40))
    common = ("a red circle moving right", 8, 2, 3, SIZE, "gif")
    name = client.predict(*common, controlnet=NET, path="4,16:36,16", api_name="/render")
    (control,) = json.loads((outputs / (name + ".json")).read_text())["controls"]
    assert control["maps"] == "path:4,16:36,16"
    bad = ((uploads(frames[:8]), "4,16:36,16", "not both"), (None, "4,16", "needs 2 to 1000 points"))
    for maps, path, message in bad:
        with pytest.raises(Exception, match=re.escape(message)):
            client.predict(*common, controlnet=NET, maps=maps, path=path, api_name="/render")
    assert scratch_of(app) == []


def test_a_controlnet_the_server_does_not_offer_or_a_server_path_is_refused(served, controlnet, frames):
    client, outputs, app, _ = served
    before = sorted(outputs.glob("*.gif"))
    common = ("a red circle moving right", 8, 2, 3, SIZE, "gif")
    for net, maps, message in (
        ("nope", uploads(frames[:8]), "unknown ControlNet 'nope'"),
        (str(controlnet), uploads(frames[:8]), "unknown ControlNet"),  # a server path is not a name
        (NET, str(frames[0].parent), "must be uploaded files"),
        (NET, [{"path": str(frames[0]), "meta": {"_type": "x"}}], "not a path on the server"),
        (NET, None, "upload maps"),
        ("none", uploads(frames[:8]), "choose a ControlNet"),
    ):
        with pytest.raises(Exception, match=re.escape(message)):
            client.predict(*common, controlnet=net, maps=maps, api_name="/render")
    assert sorted(outputs.glob("*.gif")) == before and scratch_of(app) == []


def test_bad_maps_are_one_line_and_no_traceback(served, frames, tmp_path, capfd):
    client, outputs, app, _ = served
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    common = ("a red circle moving right", 8, 2, 3, SIZE, "gif")
    for maps, message in (([text], "notes.png"), (frames[:3], "3 images"), ([text, *frames[:8]], "0000.png")):
        with pytest.raises(Exception, match=message) as raised:
            client.predict(*common, controlnet=NET, maps=uploads(maps), api_name="/render")
        assert "\n" not in str(raised.value).strip()
        with pytest.raises(Exception, match=message):
            client.predict(NET, uploads(maps), "canny", 100, 200, 1.0, 0.0, 1.0, "", 8, 32, 40, "crop",
                           api_name="/show_maps")  # fmt: skip
    with pytest.raises(Exception, match="LOW <= HIGH"):
        client.predict(*common, controlnet=NET, maps=uploads(frames[:8]), detector="canny", low=200, high=10,
                       api_name="/render")  # fmt: skip
    assert "Traceback" not in "".join(capfd.readouterr())
    assert scratch_of(app) == []


def test_the_guides_control_api_example_runs(served, frames, tmp_path, monkeypatch):
    """docs/guides/web-app.md's control example, as written there (its URL's port replaced), with its maps."""
    _, outputs, _, url = served
    page = (ROOT / "docs" / "guides" / "web-app.md").read_text(encoding="utf-8")
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "controlnet=" in b]
    (tmp_path / "maps").mkdir()
    for path in frames[:8]:
        (tmp_path / "maps" / path.name).write_bytes(path.read_bytes())
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    code = textwrap.dedent(code).replace("http://127.0.0.1:7860/", url)
    exec(compile(code, "web-app.md", "exec"), scope)  # noqa: S102
    assert json.loads((outputs / (scope["name"] + ".json")).read_text())["controls"][0]["maps"].startswith("canny:")


def test_serve_refuses_a_missing_controlnet_before_anything_loads(tmp_path):
    message = assert_user_error(
        invoke("serve", "--port", str(free_port()), "--outputs", tmp_path / "o", "--controlnet", tmp_path / "nope")
    )
    assert "--controlnet" in message and "not found" in message
    assert not (tmp_path / "o").exists()


@pytest.mark.browser
def test_control_section_in_a_browser(served, frames, browser):  # noqa: F811
    """In headless Chromium: the Control section takes several pictures, Show maps shows one map per frame, and
    a render with the chosen ControlNet records it (VIDEODIFF_SCREENSHOT_CONTROL=PATH saves the page there)."""
    import os

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

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

    driver.get(url)
    css("#prompt-text textarea")
    for name, value in (("frames", "4"), ("width", "40"), ("height", "32"), ("steps", "2"), ("seed", "1")):
        type_into(f"#set-{name} input[type='number']", value)
    driver.find_element(By.XPATH, "//button[contains(., 'Control (ControlNet)')]").click()
    css("#control-1-maps input[type='file']").send_keys("\n".join(str(p) for p in frames[:4]))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#control-1-maps tbody tr")) == 4)
    css("#control-1-detector").find_element(By.XPATH, ".//label[contains(., 'canny')]").click()
    css("#control-1-show").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#control-1-shown img")) == 4)
    css("#control-1-net input").click()
    wait.until(lambda d: d.find_elements(By.XPATH, f"//li[contains(., '{NET}')]"))[0].click()
    type_into("#prompt-text textarea", "a red circle moving right")
    if os.environ.get("VIDEODIFF_SCREENSHOT_CONTROL"):
        driver.save_screenshot(os.environ["VIDEODIFF_SCREENSHOT_CONTROL"])
    before = set(outputs.glob("*.json"))
    css("#render-text").click()
    wait.until(lambda d: set(outputs.glob("*.json")) - before)
    (sidecar,) = set(outputs.glob("*.json")) - before
    (control,) = json.loads(sidecar.read_text())["controls"]
    assert control["maps"].startswith("canny:") and Path(control["controlnet"]).name == NET
