"""``videodiff serve``: a local web app (Gradio, the ``ui`` extra) to render, animate and browse past runs.

``build_app(pipe, outputs=...)`` returns the Gradio Blocks; :func:`serve` launches it. Gradio is
imported only when an app is built, so the command line works without the extra.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videodiff.errors import UserError

if TYPE_CHECKING:
    import gradio as gr

    from videodiff.config import RenderConfig
    from videodiff.pipelines import VideoPipeline

LOCAL_HOST = "127.0.0.1"
INSTALL_HINT = "the web app needs Gradio: pip install 'videodiff[ui]'"


def require_gradio() -> None:
    """One line saying how to install the extra, instead of an ImportError, when Gradio is missing."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline by default: no usage reports
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None


def build_app(pipe: VideoPipeline, outputs: str | Path = "outputs", base: RenderConfig | None = None) -> gr.Blocks:
    """The Gradio Blocks of the web app for an already loaded ``pipe``, writing into ``outputs``."""
    require_gradio()
    from videodiff.ui.app import build_app as build

    return build(pipe, outputs, base)


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``user:pass`` -> ``(user, pass)``."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise UserError("--auth must be USER:PASSWORD")
    return user, password


def reach_notice(host: str, port: int) -> str:
    """Who can open the page, said plainly when it is not only this computer."""
    if host in (LOCAL_HOST, "localhost", "::1"):
        return f"open http://{host}:{port} (only this computer can reach it)"
    return (
        f"listening on {host}:{port}: anyone who can reach this machine on that address can use the page and "
        "its outputs folder" + ("" if host not in ("0.0.0.0", "::") else " (every network interface)")
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
) -> Any:
    """Launch the app (Gradio's queue: one render at a time) until interrupted; returns the Blocks."""
    from videodiff.log import notice
    from videodiff.ui.form import MAX_UPLOAD_BYTES

    outputs = Path(outputs).resolve()  # once, at the start (see build_app)
    outputs.mkdir(parents=True, exist_ok=True)
    app = build_app(pipe, outputs, base)
    app.queue(default_concurrency_limit=1, max_size=64)
    notice(reach_notice(host, port))
    if auth is None and host not in (LOCAL_HOST, "localhost", "::1"):
        notice("no --auth given: the page asks for no password")
    app.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        allowed_paths=[str(outputs)],
        max_file_size=MAX_UPLOAD_BYTES,
        show_error=True,
        share=False,
        inbrowser=False,
        ssr_mode=False,
        quiet=True,
        prevent_thread_lock=not block,
    )
    return app
