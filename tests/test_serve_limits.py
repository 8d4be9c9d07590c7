"""`videodiff serve` under load and at its edges: the queue cap per client, the time budget, Stop from the API,
SIGTERM while rendering, and every start error as one line (exit 2) before the model loads.

The renders run on the tiny test models; budgets are given in seconds to the renderer (the command takes
minutes), so nothing here waits minutes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.cli_helpers import assert_user_error, invoke
from tests.test_serve_app import ROOT, need_gradio
from tests.test_serve_browser import free_port, wait_for_http
from videodiff.config import RenderConfig
from videodiff.errors import UserError
from videodiff.ui import check_listen, check_outputs, form, reach_notice

PROMPT = "a red circle moving right"
SMALL = '{"width": 16, "height": 16}'
LONG_STEPS = 1000  # the most a render may take: far more than any test lets run


def small_config(folder: Path, seed: int = 1, steps: int = 3, frames: int = 2) -> RenderConfig:
    values = {"prompt": PROMPT, "frames": frames, "steps": steps, "seed": seed, "width": 16, "height": 16}
    return form.build_config("text", {**values, "guidance": 1.0}, RenderConfig(), folder)


def eventually(condition, seconds: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.02)


def written(folder: Path) -> list[str]:
    """Every file under ``folder`` (temporaries included), relative."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ------------------------------------------------------------------------------------------- the renderer


def test_a_client_may_have_at_most_its_cap_of_renders_waiting(tiny_pipe, tmp_path, one_thread):
    """The running render does not count; a cancelled one frees its place; another client has its own cap."""
    from videodiff.ui.jobs import Renderer

    renderer = Renderer(tiny_pipe, queue_per_client=2)
    release = threading.Event()
    first = renderer.submit(small_config(tmp_path, 1), "s1", progress=lambda *_: release.wait(60), client="a")
    eventually(lambda: first.started is not None, what="the first render starts")
    waiting = [renderer.submit(small_config(tmp_path, seed), "s2", client="a") for seed in (2, 3)]
    with pytest.raises(UserError, match=r"you have 2 renders waiting.*--queue-per-client 2"):
        renderer.submit(small_config(tmp_path, 4), "s3", client="a")
    other = renderer.submit(small_config(tmp_path, 5), "s4", client="b")  # another client: its own cap
    waiting[0].stop()  # a stopped render no longer counts
    again = renderer.submit(small_config(tmp_path, 6), "s3", client="a")
    release.set()
    for job in (first, waiting[1], other, again):
        assert job.future.result(timeout=120).output.is_file()
    with pytest.raises(Exception, match="stopped"):
        waiting[0].future.result(timeout=120)
    assert len(list(tmp_path.glob("*.mp4"))) == 4  # the stopped one wrote nothing
    renderer.close()


def test_a_render_over_its_time_budget_is_stopped_at_the_next_step_and_writes_nothing(tiny_pipe, tmp_path, one_thread):
    from videodiff.ui.jobs import OverTime, Renderer

    renderer = Renderer(tiny_pipe, time_limit_s=30)
    steps: list[int] = []

    def slow_first_step(n, total, what):
        steps.append(n)
        if n == 1:
            renderer.running().started -= 60  # as if the first step had taken a minute: the next one stops it

    job = renderer.submit(small_config(tmp_path, steps=6), "me", progress=slow_first_step)
    with pytest.raises(OverTime, match=r"stopped after 0.5 minutes \(the server's --job-time-limit\)"):
        job.future.result(timeout=120)
    assert steps == [1] and job.steps == 1
    assert written(tmp_path) == []  # nothing, not even a temporary
    renderer.time_limit_s = 600
    assert renderer.render(small_config(tmp_path, 2)).output.is_file()  # the pipeline goes on
    renderer.close()


def test_a_request_is_checked_before_it_is_queued(tiny_pipe, tmp_path):
    """The render layer's checks (limits, the memory estimate, the output) run in Renderer.check, without the
    model's turn: what the handlers call before queueing."""
    from videodiff.ui.jobs import Renderer

    renderer = Renderer(tiny_pipe)
    huge = small_config(tmp_path).replace(frames=1024, width=4096, height=4096)
    with pytest.raises(UserError, match="GiB"):
        renderer.check(huge)
    assert renderer.jobs() == []
    renderer.close()


# ------------------------------------------------------------------------------------------- over HTTP


@pytest.fixture
def served(tiny_pipe, tmp_path):
    """``serve`` in this process on the tiny pipe: (start(**options) -> url, outputs); closed after the test."""
    need_gradio()
    from videodiff.ui import serve

    apps = []

    def start(**options):
        port = free_port()
        app = serve(tiny_pipe, tmp_path / "outputs", port=port, block=False, **options)
        apps.append(app)
        return f"http://127.0.0.1:{port}/", app.videodiff_renderer

    yield start
    for app in apps:
        app.videodiff_renderer.stop_all()
        app.videodiff_renderer.close()
        app.close()


def test_a_cancelled_api_call_stops_the_render_and_writes_nothing(served, tmp_path, one_thread):
    from gradio_client import Client

    url, renderer = served()
    job = Client(url, verbose=False).submit(PROMPT, 8, LONG_STEPS, 1, SMALL, api_name="/render")
    eventually(lambda: (running := renderer.running()) is not None and running.steps >= 2, what="sampling began")
    job.cancel()
    eventually(lambda: not renderer.jobs(), what="the render stopped")
    stopped = renderer.finished[-1]
    assert "stopped" in str(stopped.future.exception()) and stopped.steps < LONG_STEPS
    assert written(tmp_path / "outputs") == []


def test_the_fifth_waiting_render_of_a_client_is_refused_in_the_api(served, tmp_path, one_thread):
    """One running and 4 waiting (the default cap) from one address, each from its own Client (session):
    the fifth waiting is refused at once with the option to change, another address may still queue;
    cancelling them all writes nothing."""
    from gradio_client import Client

    url, renderer = served()
    clients = [Client(url, verbose=False) for _ in range(6)]
    running = clients[0].submit(PROMPT, 8, LONG_STEPS, 1, SMALL, api_name="/render")
    eventually(lambda: renderer.running() is not None, what="the first render runs")
    waiting = [c.submit(PROMPT, 2, 2, seed, SMALL, api_name="/render") for seed, c in enumerate(clients[1:5], 2)]
    eventually(lambda: len(renderer.jobs()) == 5, what="4 renders wait")
    with pytest.raises(Exception, match=r"you have 4 renders waiting.*--queue-per-client 4"):
        clients[5].predict(PROMPT, 2, 2, 9, SMALL, api_name="/render")
    # another address (as a reverse proxy on this machine says it, X-Forwarded-For) has a cap of its own
    elsewhere = Client(url, verbose=False, headers={"X-Forwarded-For": "192.0.2.7"})
    waiting.append(elsewhere.submit(PROMPT, 2, 2, 10, SMALL, api_name="/render"))
    eventually(lambda: any(job.client == "192.0.2.7" for job in renderer.jobs()), what="the other address queues")
    for job in (*waiting, running):
        job.cancel()
    eventually(lambda: not renderer.jobs(), what="every render stopped")
    assert written(tmp_path / "outputs") == []


def test_an_api_render_over_the_time_budget_says_so_and_writes_nothing(served, tmp_path, one_thread):
    from gradio_client import Client

    url, renderer = served(time_limit_s=0.3)
    with pytest.raises(Exception, match=r"stopped after 0.005 minutes \(the server's --job-time-limit\)"):
        Client(url, verbose=False).predict(PROMPT, 8, LONG_STEPS, 1, SMALL, api_name="/render")
    assert written(tmp_path / "outputs") == []
    assert renderer.finished[-1].steps < LONG_STEPS


def test_an_ipv6_host_is_served(tiny_pipe, tmp_path):
    """``--host ::`` (every IPv6 address) is bracketed for Gradio, which then answers on it."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    need_gradio()
    import urllib.request

    from videodiff.ui import serve

    port = free_port()
    assert check_listen("::1", port) == ("[::1]", True)
    assert check_listen("::", port) == ("[::]", False)
    app = serve(tiny_pipe, tmp_path / "outputs", host="::", port=port, block=False)
    try:
        with urllib.request.urlopen(f"http://[::1]:{port}/", timeout=30) as response:
            assert response.status == 200
    finally:
        app.videodiff_renderer.close()
        app.close()


# ------------------------------------------------------------------------------------------- starting


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if ``serve`` loads a model: the start errors come before it."""
    from videodiff import pipelines

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(pipelines.VideoPipeline, "load", staticmethod(load))


def test_a_port_in_use_is_one_line_before_the_model_loads(no_model_load):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = assert_user_error(invoke("serve", "--port", str(port)))
    assert f"port {port} on 127.0.0.1 is in use" in message and "--port" in message


@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("192.0.2.1", "is not an address of this machine"),  # TEST-NET-1: never a real machine's
        ("no-such-host.invalid", "not an address or a name this machine can resolve"),
        ("", "--host must be an address"),
    ],
)
def test_a_host_that_is_not_this_machines_is_one_line(no_model_load, host, says):
    assert says in assert_user_error(invoke("serve", "--host", host, "--port", str(free_port())))


def test_outputs_that_is_not_a_folder_is_one_line(no_model_load, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for outputs in (str(a_file), "/dev/null", str(a_file / "below")):
        message = assert_user_error(invoke("serve", "--outputs", outputs, "--port", str(free_port())))
        assert "not a folder" in message, message
    assert a_file.read_text() == "mine"
    assert check_outputs(tmp_path / "new" / "deeper") == (tmp_path / "new" / "deeper").resolve()
    assert not (tmp_path / "new").exists()  # checked, not created


@pytest.mark.parametrize(
    "flags",
    [
        ("--queue-per-client", "0"),
        ("--queue-per-client", "1001"),
        ("--job-time-limit", "0"),
        ("--job-time-limit", "1441"),
        ("--job-time-limit", "nan"),
    ],
)
def test_queue_limits_out_of_range_are_one_line(no_model_load, flags):
    assert flags[0] in assert_user_error(invoke("serve", *flags))


def test_a_host_other_than_this_computer_prints_one_warning():
    assert check_listen("0.0.0.0", free_port()) == ("0.0.0.0", False)
    assert check_listen("127.0.0.1", free_port()) == ("127.0.0.1", True)
    warning = reach_notice("0.0.0.0", 7860, loopback=False)
    assert warning.startswith("warning:") and "\n" not in warning
    assert "anyone on that network can render and read the outputs folder" in warning and "--auth" in warning
    assert "password" in reach_notice("192.168.1.5", 7860, loopback=False, auth=True)
    assert "only this computer" in reach_notice("127.0.0.1", 7860, loopback=True)
    assert "http://[::1]:7860" in reach_notice("::1", 7860, loopback=True)


# ------------------------------------------------------------------------------------------- SIGTERM


def test_sigterm_stops_the_running_render_and_exits_143_with_nothing_written(models, tmp_path):
    """A real ``videodiff serve`` on the tiny models: SIGTERM while a render samples stops it at its next
    step, closes the server and exits 143 with one line; the outputs folder holds nothing of it."""
    need_gradio()
    from gradio_client import Client

    port, outputs, log = free_port(), tmp_path / "outputs", tmp_path / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "videodiff", "serve", *models, "--port", str(port), "--outputs", str(outputs)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, process)
        Client(url, verbose=False).submit(PROMPT, 8, LONG_STEPS, 1, SMALL, api_name="/render")
        eventually(lambda: "rendering " in log.read_text(), what="the render started")
        time.sleep(2)  # into sampling, most likely (stopped before its first step, it writes nothing too)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert code == 128 + signal.SIGTERM, text
    assert "Traceback" not in text, text
    assert text.strip().splitlines()[-1] == (
        "videodiff: interrupted; renders that had finished are kept; the running one was stopped and wrote nothing"
    ), text
    assert "nothing was written" in text  # the render's own line: stopped at a step
    assert written(outputs) == [], text


def test_two_requests_for_one_name_queued_at_once_both_render(tiny_pipe, tmp_path, one_thread):
    """A double click: the same prompt and seed in the same second; the later one takes the next free name."""
    from videodiff.ui.jobs import Renderer

    renderer = Renderer(tiny_pipe)
    config = small_config(tmp_path, 1)
    jobs = [renderer.submit(config, "me") for _ in range(2)]
    outputs = [job.future.result(timeout=120).output for job in jobs]
    assert outputs[0] == Path(config.output) and outputs[1].name == Path(config.output).stem + "-2.mp4"
    assert all(path.is_file() for path in outputs)
    renderer.close()
