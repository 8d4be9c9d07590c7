"""`videodiff serve` in a real browser: Debian's chromium, driven by Selenium through chromedriver.

Starts the server on the built-in model on a free local port, then: renders from a typed prompt, finds the
video, its file, its sidecar and its gallery entry; animates an uploaded picture; sees a bad input's message
while the server keeps running; stops a render and finds nothing written. Skips when Chromium, chromedriver,
Selenium or Gradio are missing, unless VIDEODIFF_REQUIRE_BROWSER=1 (CI), where that fails instead.
VIDEODIFF_SCREENSHOT=PATH also saves a screenshot of the page there (docs/serve.png is made so).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("VIDEODIFF_REQUIRE_BROWSER") == "1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT = 180  # seconds for one render on a busy 2-core CPU


def need(ok: bool, why: str) -> None:
    if not ok:
        if REQUIRED:
            pytest.fail(f"VIDEODIFF_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"videodiff serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need(importlib.util.find_spec("gradio") is not None, "gradio is not installed (pip install 'videodiff[ui]')")
    outputs = tmp_path_factory.mktemp("serve") / "outputs"
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("VIDEODIFF_MODEL", None)
    env.pop("VIDEODIFF_MOTION_MODULE", None)
    log = (outputs.parent / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "videodiff", "serve", "--port", str(port), "--outputs", str(outputs)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=outputs.parent,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, process)
        yield url, outputs, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    need(CHROMIUM is not None and CHROMEDRIVER is not None, "chromium and chromium-driver are not installed")
    need(importlib.util.find_spec("selenium") is not None, "selenium is not installed (pip install 'videodiff[ui]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1400,1500",
        "--disable-gpu",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def runs(outputs: Path) -> list[str]:
    return sorted(p.name for p in outputs.iterdir() if p.suffix in (".mp4", ".gif", ".webm"))


def test_render_upload_error_and_stop_in_a_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, outputs, process = server
    wait = WebDriverWait(browser, WAIT)

    def css(selector: str):
        return wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, selector)))

    def type_into(selector: str, text: str) -> None:
        box = css(selector)
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text)
        box.send_keys(Keys.TAB)  # Gradio takes the value on input and on blur

    def see_text(text: str) -> None:
        wait.until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)

    def tab(label: str) -> None:
        css("button[role='tab']")
        browser.find_element(By.XPATH, f"//button[@role='tab' and contains(., '{label}')]").click()

    browser.get(url)
    css("#prompt-text textarea")
    type_into("#set-frames input[type='number']", "8")
    type_into("#set-steps input[type='number']", "4")
    type_into("#set-seed input[type='number']", "1")

    # 1. a prompt, rendered: the video, its file and sidecar, the gallery entry
    type_into("#prompt-text textarea", "a red circle moving right")
    css("#render-text").click()
    css("#video-out video")
    wait.until(lambda d: runs(outputs))
    [first] = runs(outputs)
    sidecar = json.loads((outputs / (first + ".json")).read_text())
    assert sidecar["prompt"] == "a red circle moving right" and sidecar["seed"] == 1 and sidecar["frames"] == 8
    see_text(first)  # the run's name, picked in the gallery's box
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery img"))

    # 2. a bad input: a clear message in the page, and the server goes on
    type_into("#set-width input[type='number']", "100")
    css("#render-text").click()
    see_text("not a multiple of 8")
    assert process.poll() is None
    type_into("#set-width input[type='number']", "64")

    # 3. img2vid from an uploaded picture
    picture = tmp_path / "red-circle.png"
    pixels = np.zeros((64, 64, 3), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    pixels[(yy - 32) ** 2 + (xx - 16) ** 2 < 64] = (255, 0, 0)
    Image.fromarray(pixels).save(picture)
    tab("Image to video")
    css("#image-upload input[type='file']").send_keys(str(picture))
    css("#image-shown img")
    assert len(list((outputs / "inputs").iterdir())) == 1  # kept in the outputs folder, by its hash
    type_into("#prompt-img2vid textarea", "a red circle moving right")
    css("#render-img2vid").click()
    wait.until(lambda d: len(runs(outputs)) == 2)
    second = next(name for name in runs(outputs) if name != first)
    assert json.loads((outputs / (second + ".json")).read_text())["image_at"][0].startswith("0:")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) >= 2)
    if os.environ.get("VIDEODIFF_SCREENSHOT"):
        time.sleep(2)  # the video's first frame
        browser.save_screenshot(os.environ["VIDEODIFF_SCREENSHOT"])

    # 4. a long render, stopped: nothing written, not even a temporary file (the built-in model's 4-step default
    # allows at most 50 lcm steps, its distillation's grid: many frames make the render long)
    tab("Text to video")
    type_into("#set-steps input[type='number']", "50")
    type_into("#set-frames input[type='number']", "160")
    before = sorted(p.name for p in outputs.iterdir())
    css("#render-text").click()
    see_text("step ")  # the progress bar, fed from the sampler's hook
    css("#stop").click()
    see_text("Stopped: nothing was written")
    assert sorted(p.name for p in outputs.iterdir()) == before
    assert process.poll() is None
