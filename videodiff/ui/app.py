"""The Gradio page: tabs per kind of render, the settings, progress and previews, a stop button, past runs.

Gradio is imported here only (the ``ui`` extra): :func:`build_app` places the components
(:mod:`videodiff.ui.layout`) and connects their events to the handlers (:mod:`videodiff.ui.handlers`).
Everything the page does goes through :mod:`videodiff.ui.form` (page values <-> settings, uploads),
:mod:`videodiff.ui.jobs` (the warm pipeline, one render at a time, the queue and its limits) and
:mod:`videodiff.ui.gallery` (past runs), which need no Gradio.

Render events are not limited by Gradio's queue: each handler checks its request, queues it with the
:class:`~videodiff.ui.jobs.Renderer` (which refuses a client's render over its queue cap at once) and waits
for it without holding a thread; the renderer's one thread renders in turn.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from videodiff.config import RenderConfig, to_dict
from videodiff.ui import JOB_MINUTES, QUEUE_PER_CLIENT, form
from videodiff.ui.controls import ServedControls
from videodiff.ui.handlers import Handlers, strip
from videodiff.ui.jobs import Renderer
from videodiff.ui.layout import CHOICES, HELP, INTEGERS, build_layout
from videodiff.ui.prompts import ServedAdapters, check_ip_adapters

if TYPE_CHECKING:
    import gradio as gr

    from videodiff.pipelines import VideoPipeline

__all__ = ["CHOICES", "HELP", "INTEGERS", "RENDERS", "build_app", "strip"]

RENDERS = "render"  # the concurrency group of every event that renders (unlimited: the Renderer takes turns)


def build_app(
    pipe: VideoPipeline,
    outputs: str | Path = "outputs",
    base: RenderConfig | None = None,
    title: str = "videodiff",
    *,
    queue_per_client: int = QUEUE_PER_CLIENT,
    time_limit_s: float = JOB_MINUTES * 60,
    controlnets: Sequence[str] = (),
    ip_adapters: Sequence[str] = (),
    image_encoder: str | None = None,
) -> gr.Blocks:
    """The web app for ``pipe`` (kept loaded), writing into ``outputs``; ``base``: the settings the form starts
    from (the model's recorded defaults; what is loaded is the server's); ``queue_per_client``: renders one
    client may have waiting; ``time_limit_s``: a render's budget; ``controlnets``: the ControlNets the page
    offers (folders, files or hub ids; each is loaded here once and checked against the model); ``ip_adapters``
    (with ``image_encoder`` for those with no ``image_encoder/`` beside them): the IP-Adapters its Image prompt
    section offers (each loaded here once and checked against the model). Launch it with
    ``.queue().launch()``, or run ``videodiff serve``."""
    import gradio as gr
    from gradio.utils import get_upload_folder

    from videodiff.pipeline.denoisers import controlnet as load_controlnet
    from videodiff.sources import own_controlnet

    # resolved once: Gradio refuses a result under a relative folder, and a later chdir must not move the folder
    outputs = Path(outputs).resolve()
    renderer = Renderer(pipe, queue_per_client=queue_per_client, time_limit_s=time_limit_s)
    base = (base or RenderConfig()).replace(quiet=True)
    height, width = pipe.default_size()
    start = to_dict(base)
    start["height"], start["width"] = base.height or height, base.width or width
    start["seed"] = -1 if base.seed is None else base.seed
    model = base.model or "the built-in shapes model"
    sources = [str(Path(c).resolve()) if Path(c).exists() else str(c) for c in dict.fromkeys(controlnets)]
    for source in sources:  # loaded now (kept by the pipeline): a ControlNet for another model is one line at start
        load_controlnet(pipe, source)
    # the server's temporary area: each request's uploaded maps get a folder here, removed when its render ends
    scratch = tempfile.TemporaryDirectory(prefix="videodiff-serve-")
    served = ServedControls(sources, own_controlnet(base.model), scratch.name, get_upload_folder())
    adapters = ServedAdapters(*check_ip_adapters(ip_adapters, image_encoder), served)
    if adapters.names:  # loaded now (kept by the pipeline): an adapter for another model family is one line at start
        from videodiff.pipeline.image_prompts import adapter as load_adapter

        for source in adapters.names.values():
            load_adapter(pipe, source)

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        page = build_layout(gr, start, model, outputs, served.choices, adapters.choices)
        on = Handlers(gr, page, renderer, outputs, base, start, served, adapters)

        # uploads
        page.first_file.upload(
            on.accept_image, page.first_file, [page.image_state, page.first_shown], api_name="upload_image"
        )
        page.last_file.upload(on.accept_image, page.last_file, [page.last_state, page.last_shown], api_name=False)
        page.video_file.upload(on.accept_video, page.video_file, [page.video_state, page.video_note], api_name=False)
        page.first_file.clear(lambda: (None, None), None, [page.image_state, page.first_shown], api_name=False)
        page.last_file.clear(lambda: (None, None), None, [page.last_state, page.last_shown], api_name=False)

        # rendering
        result_outputs, form_inputs = page.result_outputs, page.form_inputs
        buttons = (
            ("text", page.go_text),
            ("img2vid", page.go_img),
            ("vid2vid", page.go_vid),
            ("travel", page.go_travel),
        )
        for mode, button in buttons:
            button.click(
                on.renderer_for(mode),
                form_inputs,
                result_outputs,
                concurrency_id=RENDERS,
                concurrency_limit=None,
                api_name=f"render_{mode}",
            )
        page.prompt_text.submit(
            on.renderer_for("text"),
            form_inputs,
            result_outputs,
            concurrency_id=RENDERS,
            concurrency_limit=None,
            api_name=False,
        )
        page.stop.click(on.stop_render, None, None, queue=False, api_name="stop")
        page.dice.click(lambda: form.draw_seed(), None, page.settings["seed"], queue=False, api_name=False)
        gr.api(on.render_api, api_name="render", concurrency_id=RENDERS, concurrency_limit=None)

        # control: the maps a render would read, shown before rendering (no model runs)
        sizes = [page.settings[name] for name in ("frames", "height", "width", "fit")]
        for n, control in enumerate(page.controls):
            control.show.click(
                on.show_maps,
                [*control.inputs, *sizes],
                control.shown,
                concurrency_limit=2,
                api_name="show_maps" if n == 0 else False,
            )

        # past runs
        gallery_outputs = [page.gallery, page.names_state, page.gallery_note]
        app.load(on.show_gallery, None, gallery_outputs, api_name=False)
        page.refresh_btn.click(on.show_gallery, None, gallery_outputs, api_name="refresh")
        page.gallery.select(on.pick, page.names_state, page.run_name, api_name=False)
        page.run_name.change(on.show_run, page.run_name, [page.details, page.download], api_name="show_run")
        page.use_btn.click(on.use_settings, page.run_name, page.use_outputs, api_name="use_settings")
        page.again_btn.click(
            on.render_again_handler(),
            page.run_name,
            result_outputs,
            concurrency_id=RENDERS,
            concurrency_limit=None,
            api_name="render_again",
        )
    app.videodiff_renderer = renderer  # for tests and embedding: the warm pipeline's renderer
    app.videodiff_scratch = scratch  # removed with the app (or at exit)
    app.videodiff_handlers = on  # for tests: what the page's events call
    return app
