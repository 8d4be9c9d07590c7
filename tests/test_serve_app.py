"""`videodiff serve` over HTTP (no browser): the README's API example against a server started with default
settings, paths from outside stay in the outputs folder, bad input is a message (no traceback in the server's log)
and the server goes on, and (slow) a load test of 8 queued renders from 4 clients."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.test_serve_browser import REQUIRED, free_port, wait_for_http

ROOT = Path(__file__).resolve().parents[1]


def need_gradio() -> None:
    if importlib.util.find_spec("gradio") is None or importlib.util.find_spec("gradio_client") is None:
        if REQUIRED:
            pytest.fail("VIDEODIFF_REQUIRE_BROWSER=1 but gradio/gradio_client are not installed")
        pytest.skip("gradio is not installed (pip install 'videodiff[ui]')")


def start_server(outputs: Path, log: Path, default_outputs: bool = False) -> tuple[str, subprocess.Popen]:
    """``videodiff serve`` on the built-in model, started in ``outputs.parent`` (``default_outputs``: without
    ``--outputs``, so the relative default ``outputs`` must land there)."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("VIDEODIFF_MODEL", None)
    env.pop("VIDEODIFF_MOTION_MODULE", None)
    where = [] if default_outputs else ["--outputs", str(outputs)]
    process = subprocess.Popen(
        [sys.executable, "-m", "videodiff", "serve", "--port", str(port), *where],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=outputs.parent,
    )
    url = f"http://127.0.0.1:{port}/"
    wait_for_http(url, process)
    return url, process


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``videodiff serve`` with default settings (the built-in model, ``--outputs outputs``) started in a folder
    of its own, not the repository."""
    need_gradio()
    folder = tmp_path_factory.mktemp("serve-http")
    assert ROOT not in folder.parents
    outputs = folder / "outputs"
    (folder / "secret.txt").write_text("not for the page")
    url, process = start_server(outputs, folder / "server.log", default_outputs=True)
    try:
        yield url, outputs, process
    finally:
        stop_server(process)


def api_examples() -> list[tuple[str, str]]:
    """The ``api_name="/render"`` examples of the README and the web app's guide, as written there (but those with
    a ControlNet, which need a server that offers one: tests/test_serve_control.py runs them)."""
    found = []
    for page in (ROOT / "README.md", ROOT / "docs" / "guides" / "web-app.md"):
        for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            if 'api_name="/render"' in block and "controlnet=" not in block:
                found.append((page.name, textwrap.dedent(block)))
    return found


def test_the_readme_api_example_runs_against_a_server_with_default_settings(server):
    """The README's example runs verbatim, only its URL's port replaced by the test server's (the README names
    the default 7860); the video is in ``<where serve started>/outputs/`` and the server logs no traceback."""
    url, outputs, process = server
    examples = api_examples()
    assert [page for page, _ in examples][:1] == ["README.md"], "the README's API example is gone"
    for page, code in examples:
        assert code.count("http://127.0.0.1:7860/") == 1, page
        scope: dict = {}
        exec(compile(code.replace("http://127.0.0.1:7860/", url), page, "exec"), scope)  # noqa: S102
        name = scope["name"]
        assert (outputs / name).is_file() and (outputs / (name + ".json")).is_file(), (page, name)
        assert json.loads((outputs / (name + ".json")).read_text())["width"] == 64
    assert process.poll() is None
    assert "Traceback" not in (outputs.parent / "server.log").read_text()


def test_no_path_from_outside_reads_beyond_the_outputs_folder(server):
    from gradio_client import Client

    url, outputs, process = server
    secret = outputs.parent / "secret.txt"
    for path in ("/etc/passwd", str(secret), f"{outputs}/../secret.txt", f"{outputs}/%2e%2e/secret.txt"):
        assert status_of(f"{url}gradio_api/file={path}") != 200, path
    assert status_of(f"{url}gradio_api/file={urllib.parse.quote(str(outputs / '..' / 'secret.txt'))}") != 200
    client = Client(url, verbose=False)
    for name in ("../secret.txt", str(secret), "../../etc/passwd"):
        with pytest.raises(Exception, match="outside the outputs folder"):
            client.predict(name, api_name="/use_settings")
        with pytest.raises(Exception, match="outside the outputs folder"):
            client.predict(name, api_name="/render_again")
    assert process.poll() is None


def test_bad_input_is_a_message_and_the_server_goes_on(server):
    from gradio_client import Client

    url, outputs, process = server
    client = Client(url, verbose=False)
    for settings, message in (
        ('{"width": 100}', "not a multiple of 8"),
        ('{"steps": 5000}', "too many"),
        ('{"colour": 1}', "unknown settings"),
        ("[1]", "JSON mapping"),
    ):
        with pytest.raises(Exception, match=message):
            client.predict("a red circle moving right", 0, 0, 1, settings, api_name="/render")
    with pytest.raises(Exception, match="type a prompt"):
        client.predict("   ", 8, 4, 1, api_name="/render")
    name = client.predict("a red circle moving right", 8, 3, 2, '{"width": 64, "height": 64}', api_name="/render")
    assert (outputs / name).is_file() and json.loads((outputs / (name + ".json")).read_text())["seed"] == 2
    assert process.poll() is None
    assert "Traceback" not in (outputs.parent / "server.log").read_text()  # a message to the caller, not a bug


def test_use_these_settings_and_render_again(server):
    from gradio_client import Client

    url, outputs, process = server
    client = Client(url, verbose=False)
    name = client.predict("a blue square moving up", 8, 3, 7, api_name="/render")
    filled = client.predict(name, api_name="/use_settings")
    assert "a blue square moving up" in json.dumps(filled) and 7 in filled  # the prompt box and the seed
    again = client.predict(name, api_name="/render_again")
    assert process.poll() is None
    newest = max(outputs.glob("*.mp4.json"), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name != name + ".json"
    first, second = (json.loads((outputs / n).read_text()) for n in (name + ".json", newest.name))
    drop = ("info",)
    assert {k: v for k, v in first.items() if k not in drop} == {k: v for k, v in second.items() if k not in drop}
    assert again is not None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_load_eight_queued_renders_from_four_clients(tmp_path):
    """8 requests at once from 4 clients all complete, each output written once, memory steady (RSS within 10%)."""
    need_gradio()
    from gradio_client import Client

    outputs = tmp_path / "outputs"
    url, process = start_server(outputs, tmp_path / "server.log")
    try:
        first = Client(url, verbose=False).predict("a red circle moving right", 8, 4, 100, api_name="/render")
        after_first = rss_kib(process.pid)
        clients = [Client(url, verbose=False) for _ in range(4)]
        prompts = [
            "a red circle moving right",
            "a blue square moving up",
            "a green triangle moving left",
            "a yellow circle moving down",
        ]
        jobs = [
            clients[k % 4].submit(prompts[k % 4], 8, 4, k + 1, api_name="/render") for k in range(8)
        ]  # all queued before the first finishes: the queue runs them one at a time
        started = time.monotonic()
        names = [job.result(timeout=600) for job in jobs]
        seconds = time.monotonic() - started
        after_all = rss_kib(process.pid)
    finally:
        stop_server(process)
    assert len(set(names)) == 8 and first not in names
    videos = sorted(p.name for p in outputs.glob("*.mp4"))
    assert videos == sorted([first, *names])  # each written once, nothing else
    seeds = sorted(json.loads((outputs / (n + ".json")).read_text())["seed"] for n in names)
    assert seeds == list(range(1, 9))
    growth = after_all / after_first
    print(
        f"8 renders in {seconds:.1f} s; RSS after the first {after_first / 1024:.0f} MiB, "
        f"after all {after_all / 1024:.0f} MiB ({(growth - 1) * 100:+.1f}%)"
    )
    assert growth <= 1.10, (after_first, after_all)


def test_render_events_wait_in_the_renderer_not_in_gradios_queue(tiny_pipe, tmp_path):
    """Every event that renders is left unlimited by Gradio: its handler checks and queues the request with the
    renderer (one thread: tests/test_ui.py::test_renders_take_turns), which applies the queue cap at once."""
    need_gradio()
    from videodiff.ui import build_app

    app = build_app(tiny_pipe, tmp_path, queue_per_client=3, time_limit_s=5)
    renders = [fn for fn in app.fns.values() if str(fn.api_name).startswith("render")]
    assert sorted(fn.api_name for fn in renders) == [
        "render",
        "render_again",
        "render_img2vid",
        "render_text",
        "render_travel",
        "render_vid2vid",
    ]
    assert all(fn.concurrency_limit is None for fn in renders)
    renderer = app.videodiff_renderer
    assert (renderer.queue_per_client, renderer.time_limit_s) == (3, 5)
    renderer.close()


def test_auth_keeps_the_page_and_its_api_behind_a_login(tiny_pipe, tmp_path):
    need_gradio()
    from videodiff.ui import serve

    port = free_port()
    app = serve(tiny_pipe, tmp_path / "outputs", port=port, auth=("me", "secret"), block=False)
    try:
        url = f"http://127.0.0.1:{port}/"
        assert status_of(url + "config") == 401
        assert status_of(url + "gradio_api/info") == 401
        data = urllib.parse.urlencode({"username": "me", "password": "wrong"}).encode()
        request = urllib.request.Request(url + "login", data=data)
        try:
            urllib.request.urlopen(request, timeout=30)
            logged_in = True
        except urllib.error.HTTPError:
            logged_in = False
        assert not logged_in
    finally:
        app.close()


def test_the_render_api_works_with_a_relative_outputs_folder(tiny_pipe, tmp_path, monkeypatch):
    """The README's API example against ``serve`` with the default, relative ``outputs``; the working directory
    changes after the start, and the folder stays the one resolved then."""
    need_gradio()
    from gradio_client import Client

    from videodiff.ui import serve

    started_in, later = tmp_path / "here", tmp_path / "elsewhere"
    started_in.mkdir(), later.mkdir()
    monkeypatch.chdir(started_in)
    port = free_port()
    app = serve(tiny_pipe, "outputs", port=port, block=False)
    try:
        monkeypatch.chdir(later)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        name = client.predict("a red circle moving right", 4, 2, 1, '{"width": 16, "height": 16}', api_name="/render")
        assert (started_in / "outputs" / name).is_file()
        assert not (later / "outputs").exists()
    finally:
        app.close()
