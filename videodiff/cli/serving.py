"""``videodiff serve``: the local web app over one loaded model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from videodiff.cli.options import given, options_from
from videodiff.config import LoadSettings


@click.command()
@options_from(LoadSettings)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (others can reach it).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True, help="Port to listen on.")
@click.option("--outputs", default="outputs", show_default=True, help="Folder the videos are written to and read from.")
@click.option("--auth", help="USER:PASSWORD the page asks for (default: none).")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, outputs: str, auth: str | None, **_: Any) -> None:
    """A local web app: render, animate pictures, re-render clips, browse past runs (needs videodiff[ui]).

    \b
    Example:
      pip install 'videodiff[ui]'
      videodiff serve                                   # the built-in shapes model, http://127.0.0.1:7860
      videodiff serve --model ./sd15 --motion-module ./motion-v2 --outputs renders/ --port 7861
    The model is loaded once; renders are queued and run one at a time. Every video is written by the
    render layer with its sidecar, so `videodiff render --config OUTPUT.json` renders it again.
    """
    from videodiff.log import setup_cli_logging
    from videodiff.ui import parse_auth, require_gradio
    from videodiff.ui import serve as run_serve

    credentials = parse_auth(auth)
    outputs = str(Path(outputs).resolve())  # where the command was started, not wherever the process is later
    require_gradio()  # before minutes of loading: one line saying how to install it
    from videodiff.pipelines import VideoPipeline
    from videodiff.render import resolve_render_config

    command_line = {k: v for k, v in given(ctx, ParameterSource.COMMANDLINE).items() if k not in SERVE_OPTIONS}
    environment = {k: v for k, v in given(ctx, ParameterSource.ENVIRONMENT).items() if k not in SERVE_OPTIONS}
    base = resolve_render_config(command_line, None, environment)
    setup_cli_logging(False)
    pipe = VideoPipeline.load(base.load)
    run_serve(pipe, outputs, base=base, host=host, port=port, auth=credentials)


SERVE_OPTIONS = ("host", "port", "outputs", "auth")
