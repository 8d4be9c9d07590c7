"""``videodiff serve``: the local web app over one loaded model."""

from __future__ import annotations

import math
from typing import Any

import click
from click.core import ParameterSource

from videodiff.cli.options import given, options_from
from videodiff.config import LoadSettings
from videodiff.ui import JOB_MINUTES, JOB_MINUTES_MAX, QUEUE_PER_CLIENT, QUEUE_PER_CLIENT_RANGE


def finite(minutes: float) -> float:
    if not math.isfinite(minutes):  # nan passes every comparison of FloatRange
        raise click.BadParameter(f"{minutes} is not a number of minutes")
    return minutes


@click.command()
@options_from(LoadSettings)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on: 127.0.0.1 this computer only; 0.0.0.0 (IPv4) or :: (IPv6) every network.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True, help="Port to listen on.")
@click.option("--outputs", default="outputs", show_default=True, help="Folder the videos are written to and read from.")
@click.option("--auth", help="USER:PASSWORD the page asks for (default: none).")
@click.option(
    "--controlnet",
    "controlnets",
    multiple=True,
    metavar="PATH",
    help="A ControlNet the page offers, by its name (what render --controlnet takes); repeatable.",
)
@click.option(
    "--ip-adapter",
    "ip_adapters",
    multiple=True,
    metavar="PATH",
    help="An IP-Adapter (weights file, a folder holding one, or ORG/NAME/PATH/FILE on the hub) the page offers by its "
    "name; repeatable.",
)
@click.option(
    "--image-encoder",
    metavar="FOLDER",
    help="CLIP vision model folder (or hub id) for the served IP-Adapters that have no image_encoder/ beside them.",
)
@click.option(
    "--queue-per-client",
    type=click.IntRange(*QUEUE_PER_CLIENT_RANGE),
    default=QUEUE_PER_CLIENT,
    show_default=True,
    help="Renders one client (an address) may have waiting, besides its running one; one more is refused.",
)
@click.option(
    "--job-time-limit",
    type=click.FloatRange(0, JOB_MINUTES_MAX, min_open=True),
    default=JOB_MINUTES,
    show_default=True,
    metavar="MINUTES",
    callback=lambda ctx, param, value: finite(value),
    help="A render running longer is stopped at its next sampling step (nothing written).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    outputs: str,
    auth: str | None,
    controlnets: tuple[str, ...],
    ip_adapters: tuple[str, ...],
    image_encoder: str | None,
    queue_per_client: int,
    job_time_limit: float,
    **_: Any,
) -> None:
    """A local web app: render, animate pictures, re-render clips, browse past runs (needs videodiff[ui]).

    \b
    Example:
      pip install 'videodiff[ui]'
      videodiff serve                                   # the built-in shapes model, http://127.0.0.1:7860
      videodiff serve --model ./sd15 --motion-module ./motion-v2 --outputs renders/ --port 7861
      videodiff serve --host 0.0.0.0 --auth me:secret --queue-per-client 2 --job-time-limit 5
      videodiff serve --controlnet ./control_v11p_sd15_canny --controlnet ./control_v11f1p_sd15_depth
      videodiff serve --ip-adapter ./IP-Adapter/models/ip-adapter_sd15.safetensors
    The model is loaded once; renders are checked, queued and run one at a time. Each --controlnet is
    offered in the page's Control section by its folder's name; web users upload maps for it. Each
    --ip-adapter is offered in the Image prompt section by its file's name; web users upload a picture for it.
    Every video is written by the render layer with its sidecar, so `videodiff render --config OUTPUT.json`
    renders it again.
    Ctrl-C or SIGTERM stops a running render at its next step (nothing of it written) and exits.
    """
    from videodiff.log import setup_cli_logging
    from videodiff.ui import check_listen, check_outputs, parse_auth, require_gradio
    from videodiff.ui import serve as run_serve
    from videodiff.ui.controls import check_controlnets
    from videodiff.ui.prompts import check_ip_adapters

    credentials = parse_auth(auth)
    # before minutes of loading, each one line: the folder, the address and port, Gradio
    outputs_path = check_outputs(outputs)  # where the command was started, not wherever the process is later
    check_listen(host, port)  # bound once and closed: a port in use or an address not this machine's
    served = check_controlnets(controlnets)  # each exists (folder, file or hub id)
    adapters, encoder = check_ip_adapters(ip_adapters, image_encoder)  # each a weights file with its encoder
    require_gradio()
    from videodiff.pipelines import VideoPipeline
    from videodiff.render import resolve_render_config
    from videodiff.sources import check_adapter_width, check_family_offers

    command_line = {k: v for k, v in given(ctx, ParameterSource.COMMANDLINE).items() if k not in SERVE_OPTIONS}
    environment = {k: v for k, v in given(ctx, ParameterSource.ENVIRONMENT).items() if k not in SERVE_OPTIONS}
    base = resolve_render_config(command_line, None, environment)
    check_family_offers(  # a local model folder's family, and local ControlNets' (theirs must match)
        base.model, controlnets=bool(served), ip_adapters=bool(adapters), controlnet_sources=served
    )
    if adapters:  # each .safetensors adapter against a local model's family, from the headers
        from videodiff.weights.ip_adapter import locate_adapter

        for adapter in adapters:
            check_adapter_width(locate_adapter(adapter), base.model, adapter)
    setup_cli_logging(False)
    pipe = VideoPipeline.load(base.load)
    for feature, offered in (("ControlNet", served), ("IP-Adapter", adapters)):
        if offered:
            pipe.family.require(feature)  # a hub id's or a single file's family, known once loaded
    run_serve(
        pipe,
        outputs_path,
        base=base,
        host=host,
        port=port,
        auth=credentials,
        queue_per_client=queue_per_client,
        time_limit_s=job_time_limit * 60,
        controlnets=served,
        ip_adapters=adapters,
        image_encoder=encoder,
    )


SERVE_OPTIONS = (
    "host",
    "port",
    "outputs",
    "auth",
    "controlnets",
    "ip_adapters",
    "image_encoder",
    "queue_per_client",
    "job_time_limit",
)
