"""``videodiff serve``: a local web app (Gradio, the ``ui`` extra) to render, animate and browse past runs.

``build_app(pipe, outputs=...)`` returns the Gradio Blocks; :func:`serve` launches it. Gradio is
imported only when an app is built, so the command line works without the extra.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videodiff.errors import UserError

if TYPE_CHECKING:
    import gradio as gr

    from videodiff.config import RenderConfig
    from videodiff.pipelines import VideoPipeline

LOCAL_HOST = "127.0.0.1"
# The queue's limits (serve --queue-per-client, --job-time-limit): stated once, with their ranges
QUEUE_PER_CLIENT = 4  # renders one client (an address) may have waiting, besides its running one
QUEUE_PER_CLIENT_RANGE = (1, 1000)
JOB_MINUTES = 10.0  # a running render's budget; it is stopped at its next sampling step after it
JOB_MINUTES_MAX = 24 * 60.0  # (more than 0)
INSTALL_HINT = "the web app needs Gradio: pip install 'videodiff[ui]'"


def require_gradio() -> None:
    """One line saying how to install the extra, instead of an ImportError, when Gradio is missing."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline by default: no usage reports
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None


def build_app(
    pipe: VideoPipeline,
    outputs: str | Path = "outputs",
    base: RenderConfig | None = None,
    *,
    queue_per_client: int = QUEUE_PER_CLIENT,
    time_limit_s: float = JOB_MINUTES * 60,
    controlnets: Sequence[str] = (),
    ip_adapters: Sequence[str] = (),
    image_encoder: str | None = None,
) -> gr.Blocks:
    """The Gradio Blocks of the web app for an already loaded ``pipe``, writing into ``outputs``; ``controlnets``:
    the ControlNets its Control section offers (``serve --controlnet``); ``ip_adapters``, ``image_encoder``: the
    IP-Adapters its Image prompt section offers (``serve --ip-adapter``, ``--image-encoder``)."""
    require_gradio()
    from videodiff.ui.app import build_app as build

    return build(
        pipe,
        outputs,
        base,
        queue_per_client=queue_per_client,
        time_limit_s=time_limit_s,
        controlnets=controlnets,
        ip_adapters=ip_adapters,
        image_encoder=image_encoder,
    )


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``user:pass`` -> ``(user, pass)``."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UserError("--auth must be USER:PASSWORD")
    return user, password


def check_outputs(outputs: str | Path) -> Path:
    """The outputs folder, absolute: an existing folder, or one that can be created (nothing is created here)."""
    try:
        path = Path(outputs).resolve()
        if path.exists() and not path.is_dir():
            raise UserError(f"--outputs {outputs} is not a folder; name a folder (it is created if missing)")
        existing = path
        while not existing.exists():
            existing = existing.parent
        writable = os.access(existing, os.W_OK | os.X_OK)
    except (OSError, ValueError) as exc:  # a name too long, a loop of links...
        raise UserError(f"--outputs {outputs}: cannot use it ({getattr(exc, 'strerror', None) or exc})") from None
    if not existing.is_dir():
        raise UserError(f"--outputs {outputs}: {existing} is not a folder")
    if not writable:
        raise UserError(f"--outputs {outputs}: cannot write in {existing} (permission denied)")
    return path


def check_listen(host: str, port: int) -> tuple[str, bool]:
    """Bind ``host``:``port`` once (then close it), so a port in use or an address that is not this machine's is
    one line before the model loads. Returns the host as Gradio takes it (an IPv6 address in brackets) and
    whether it is a loopback address (only this computer can reach it)."""
    import errno
    import ipaddress
    import socket

    from videodiff.media.atomic import os_reason

    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not bare.strip():
        raise UserError("--host must be an address or a name, e.g. 127.0.0.1 (this computer) or 0.0.0.0")
    try:
        found = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise UserError(f"--host {host}: not an address or a name this machine can resolve ({reason})") from None
    family, kind, proto, _, address = found[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own socket
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} on {host} is in use (another server?): pick another with --port"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UserError(
                    f"--host {host} is not an address of this machine: use 127.0.0.1 (this computer only), "
                    "0.0.0.0 (every network interface) or one of its own addresses"
                ) from None
            if exc.errno == errno.EACCES:
                raise UserError(f"port {port} needs administrator rights: pick one above 1023 with --port") from None
            raise UserError(f"cannot listen on {host} port {port}: {os_reason(exc)}") from None
    loopback = all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in found)
    return (f"[{bare}]" if ":" in bare else bare), loopback


def reach_notice(host: str, port: int, loopback: bool | None = None, auth: bool = False) -> str:
    """Who can open the page: one line, a warning when it is not only this computer."""
    if loopback is None:
        loopback = host in (LOCAL_HOST, "localhost", "::1", "[::1]")
    url_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if loopback:
        return f"open http://{url_host}:{port} (only this computer can reach it)"
    everywhere = " (every network interface)" if host.strip("[]") in ("0.0.0.0", "::") else ""
    if auth:
        return (
            f"listening on {url_host}:{port}{everywhere}: anyone on that network who has the --auth password can "
            "render and read the outputs folder"
        )
    return (
        f"warning: listening on {url_host}:{port}{everywhere} with no password: anyone on that network can render "
        "and read the outputs folder; add --auth USER:PASSWORD"
    )


def serve(
    pipe: VideoPipeline,
    outputs: str | Path = "outputs",
    *,
    base: RenderConfig | None = None,
    host: str = LOCAL_HOST,
    port: int = 7860,
    auth: tuple[str, str] | None = None,
    block: bool = True,
    queue_per_client: int = QUEUE_PER_CLIENT,
    time_limit_s: float = JOB_MINUTES * 60,
    controlnets: Sequence[str] = (),
    ip_adapters: Sequence[str] = (),
    image_encoder: str | None = None,
) -> Any:
    """Launch the app until interrupted (``block``) and return the Blocks, or return it at once to the caller.

    Blocking, Ctrl-C or SIGTERM (which the CLI turns into an interrupt) stops the running render at its next
    step (nothing of it is written), closes the server and re-raises, so the command exits 130 or 143.
    """
    from videodiff.log import notice
    from videodiff.ui.form import MAX_UPLOAD_BYTES

    outputs = check_outputs(outputs)  # resolved once, at the start (see build_app)
    listen, loopback = check_listen(host, port)
    try:
        outputs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a folder the access check allowed but the file system refuses (/proc, ...)
        raise UserError(f"cannot create the outputs folder {outputs}: {exc.strerror or exc}") from None
    app = build_app(
        pipe,
        outputs,
        base,
        queue_per_client=queue_per_client,
        time_limit_s=time_limit_s,
        controlnets=controlnets,
        ip_adapters=ip_adapters,
        image_encoder=image_encoder,
    )
    app.queue(default_concurrency_limit=1, max_size=64)
    try:
        app.launch(
            server_name=listen,
            server_port=port,
            auth=auth,
            allowed_paths=[str(outputs)],
            max_file_size=MAX_UPLOAD_BYTES,
            show_error=True,
            share=False,
            inbrowser=False,
            ssr_mode=False,
            quiet=True,
            prevent_thread_lock=True,
        )
    except OSError as exc:  # taken between the check and the start
        raise UserError(f"cannot listen on {host} port {port}: {exc.strerror or 'the port is in use'}") from None
    notice(reach_notice(host, port, loopback, auth is not None))
    if block:
        wait_until_interrupted(app)
    return app


def wait_until_interrupted(app: Any) -> None:
    """Serve until Ctrl-C or SIGTERM; then stop the renders at their next step, close the server, re-raise."""
    import time

    renderer = app.videodiff_renderer
    try:
        while True:
            time.sleep(0.2)
    except KeyboardInterrupt as exc:
        stopped = renderer.stop_all()  # the running render stops at its next step; nothing of it is written
        renderer.close()
        app.close()
        kept = "renders that had finished are kept" + ("; the running one was stopped and wrote nothing" * stopped)
        exc.kept = kept  # type: ignore[attr-defined]
        raise
