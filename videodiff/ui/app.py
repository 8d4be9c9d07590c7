"""The Gradio page: tabs per kind of render, the settings, progress and previews, a stop button, past runs.

Gradio is imported here only (the ``ui`` extra); everything the page does goes through
:mod:`videodiff.ui.form` (page values <-> settings, uploads), :mod:`videodiff.ui.jobs` (the warm pipeline,
one render at a time) and :mod:`videodiff.ui.gallery` (past runs), which need no Gradio.
"""

from __future__ import annotations

import logging
import queue
from concurrent.futures import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from videodiff.config import (
    FREE_INIT_FILTERS,
    FUSE_KINDS,
    MOTION_PRIOR_SPACES,
    NOISE_KINDS,
    SCHEDULERS,
    TRAVEL,
    WINDOW_LAYERS,
    WINDOW_NOISE,
    RenderConfig,
    to_dict,
)
from videodiff.errors import UserError
from videodiff.render import summary
from videodiff.ui import form
from videodiff.ui.gallery import Run, inside, read_runs, thumbnail
from videodiff.ui.jobs import Renderer

if TYPE_CHECKING:
    import gradio as gr

    from videodiff.pipelines import VideoPipeline

log = logging.getLogger("videodiff.ui")

RENDERS = "render"  # the concurrency group of every event that renders: one at a time, in queue order
HELP = {
    "frames": "Frames of the video",
    "width": "Width (multiple of 8)",
    "height": "Height (multiple of 8)",
    "steps": "Denoising steps",
    "guidance": "Guidance scale",
    "seed": "Seed (-1: random)",
    "scheduler": "Scheduler",
    "noise": "Initial noise",
    "strength": "Strength (img2vid/vid2vid; empty: default)",
    "window": "Window (frames; empty: the motion modules')",
    "overlap": "Window overlap (empty: a quarter)",
    "loop": "Loop (windows wrap around)",
}
CHOICES = {
    "scheduler": SCHEDULERS,
    "noise": NOISE_KINDS,
    "fuse": FUSE_KINDS,
    "window_noise": WINDOW_NOISE,
    "window_layers": WINDOW_LAYERS,
    "motion_prior_space": MOTION_PRIOR_SPACES,
    "free_init_filter": FREE_INIT_FILTERS,
    "travel": TRAVEL,
    "fit": ("crop", "pad"),
}
INTEGERS = (
    "frames",
    "width",
    "height",
    "steps",
    "seed",
    "window",
    "overlap",
    "free_init",
    "stride",
    "decode_chunk",
    "crf",
)


def _component(gr: Any, name: str, value: Any) -> Any:
    label = HELP.get(name, name.replace("_", " "))
    elem = f"set-{name.replace('_', '-')}"
    if name in CHOICES:
        return gr.Dropdown(list(CHOICES[name]), value=value, label=label, elem_id=elem)
    if isinstance(value, bool) or name in ("loop", "paste"):
        return gr.Checkbox(value=bool(value), label=label, elem_id=elem)
    if name in form.TEXT_FIELDS:
        return gr.Textbox(value=value or "", label=label, elem_id=elem)
    if value is None:  # an optional number: empty means the default (a Number would send 0)
        return gr.Textbox(value="", label=label, placeholder="default", elem_id=elem)
    return gr.Number(value=value, label=label, precision=0 if name in INTEGERS else None, elem_id=elem)


def _hints(gr: Any, *functions: Any) -> None:
    """Gradio finds ``request``/``evt`` by their annotations; with postponed annotations they are text."""
    for function in functions:
        for key, value in list(function.__annotations__.items()):
            if value in ("gr.Request", "gr.SelectData"):  # (a default of None: gr.api's own calls)
                function.__annotations__[key] = getattr(gr, value.removeprefix("gr."))


def strip(frames: np.ndarray) -> np.ndarray:
    """Frames ``[n h w 3]`` side by side, each at least 96 pixels high (a preview the eye can read)."""
    row = np.concatenate(list(frames), axis=1)
    scale = max(1, 96 // max(1, row.shape[0]))
    return row.repeat(scale, axis=0).repeat(scale, axis=1)


def build_app(
    pipe: VideoPipeline,
    outputs: str | Path = "outputs",
    base: RenderConfig | None = None,
    title: str = "videodiff",
) -> gr.Blocks:
    """The web app for ``pipe`` (kept loaded), writing into ``outputs``; ``base``: the settings the form starts
    from (the model's recorded defaults; what is loaded is the server's). Launch it with ``.queue().launch()``,
    or run ``videodiff serve``."""
    import gradio as gr

    outputs = Path(outputs)
    renderer = Renderer(pipe)
    base = (base or RenderConfig()).replace(quiet=True)
    height, width = pipe.default_size()
    start = to_dict(base)
    start["height"], start["width"] = base.height or height, base.width or width
    start["seed"] = -1 if base.seed is None else base.seed
    model = base.model or "the built-in shapes model"

    def refresh() -> tuple[Any, list[str], str]:
        runs, notices = read_runs(outputs)
        items = [(str(thumbnail(run, outputs)), run.caption()) for run in runs]
        note = (
            ""
            if not notices
            else "**Skipped:** "
            + "; ".join(notices[:5])
            + (f" and {len(notices) - 5} more" if len(notices) > 5 else "")
        )
        return items, [str(run.output.relative_to(outputs)) for run in runs], note

    def find_run(name: str) -> Run:
        path = inside(outputs, (name or "").strip())
        runs, _ = read_runs(outputs)
        for run in runs:
            if run.output.resolve() == path:
                return run
        raise UserError(f"no run {name!r} with a sidecar in the outputs folder")

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# videodiff\nModel: **{model}** · outputs: `{outputs}` · one render at a time, in turn.")
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Tabs(selected="text") as tabs:
                    with gr.Tab("Text to video", id="text"):
                        prompt_text = gr.Textbox(
                            label="Prompt", elem_id="prompt-text", placeholder="a red circle moving right"
                        )
                        go_text = gr.Button("Render", variant="primary", elem_id="render-text")
                    with gr.Tab("Image to video", id="img2vid"):
                        prompt_img = gr.Textbox(label="Prompt", elem_id="prompt-img2vid")
                        with gr.Row():
                            first_file = gr.File(
                                label="Picture for frame 0",
                                type="filepath",
                                file_types=list(form.IMAGE_SUFFIXES),
                                elem_id="image-upload",
                            )
                            last_file = gr.File(
                                label="Picture for the last frame (optional keyframe)",
                                type="filepath",
                                file_types=list(form.IMAGE_SUFFIXES),
                                elem_id="last-image-upload",
                            )
                        with gr.Row():
                            first_shown = gr.Image(
                                label="Frame 0", interactive=False, height=128, elem_id="image-shown"
                            )
                            last_shown = gr.Image(label="Last frame", interactive=False, height=128)
                        go_img = gr.Button("Animate", variant="primary", elem_id="render-img2vid")
                    with gr.Tab("Video to video", id="vid2vid"):
                        prompt_vid = gr.Textbox(label="Prompt", elem_id="prompt-vid2vid")
                        video_file = gr.File(
                            label="Video to re-render",
                            type="filepath",
                            file_types=list(form.VIDEO_SUFFIXES),
                            elem_id="video-upload",
                        )
                        video_note = gr.Markdown()
                        go_vid = gr.Button("Re-render", variant="primary", elem_id="render-vid2vid")
                    with gr.Tab("Prompt travel", id="travel"):
                        keyframes = gr.Textbox(
                            label="Keyframes: one FRAME: PROMPT a line",
                            lines=4,
                            elem_id="keyframes",
                            value="0: a red circle moving right\n8: a blue circle moving right",
                        )
                        go_travel = gr.Button("Render", variant="primary", elem_id="render-travel")
                settings: dict[str, Any] = {}
                with gr.Row():
                    for name in ("frames", "width", "height", "steps"):
                        settings[name] = _component(gr, name, start[name])
                with gr.Row():
                    for name in ("guidance", "seed"):
                        settings[name] = _component(gr, name, start[name])
                    dice = gr.Button("Dice", elem_id="dice", scale=0, min_width=60)
                    settings["scheduler"] = _component(gr, "scheduler", start["scheduler"])
                with gr.Row():
                    for name in ("noise", "strength", "window", "overlap", "loop"):
                        settings[name] = _component(gr, name, start[name])
                with gr.Accordion("Advanced", open=False):
                    fmt = gr.Radio(list(form.FORMATS), value="mp4", label="format", elem_id="set-format")
                    names = list(form.ADVANCED)
                    for row in range(0, len(names), 4):
                        with gr.Row():
                            for name in names[row : row + 4]:
                                settings[name] = _component(gr, name, start[name])
            with gr.Column(scale=2):
                video_out = gr.Video(label="Video", elem_id="video-out", autoplay=True, loop=True)
                gif_out = gr.Image(label="GIF", visible=False, elem_id="gif-out")
                preview = gr.Image(
                    label="Preview (latest frames while sampling)", interactive=False, elem_id="preview", height=128
                )
                status = gr.Markdown(elem_id="status")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
        gr.Markdown("## Past runs")
        gallery = gr.Gallery(
            label="Outputs",
            columns=8,
            rows=1,
            height=200,
            object_fit="contain",
            allow_preview=False,
            fit_columns=False,
            elem_id="gallery",
        )
        gallery_note = gr.Markdown(elem_id="gallery-note")
        names_state = gr.State([])
        with gr.Row():
            run_name = gr.Textbox(label="Run (a file in the outputs folder)", elem_id="run-name", scale=3)
            refresh_btn = gr.Button("Refresh", elem_id="refresh", scale=0)
        details = gr.JSON(label="Settings (the sidecar)", elem_id="run-settings")
        with gr.Row():
            use_btn = gr.Button("Use these settings", elem_id="use-settings")
            again_btn = gr.Button("Render again", elem_id="render-again")
            download = gr.DownloadButton("Download", value=None, elem_id="download")
        image_state, last_state, video_state = gr.State(None), gr.State(None), gr.State(None)

        optional = {name for name in settings if start[name] is None and name not in form.TEXT_FIELDS}

        # ---------------------------------------------------------------- uploads, through the CLI's readers
        def accept_image(path: str | None) -> tuple[Any, Any]:
            if not path:
                return None, None
            try:
                from videodiff.media.images import read_image

                kept = form.accept_upload(path, outputs, "image")
                return str(kept), read_image(kept, max_side=256)
            except UserError as exc:
                raise gr.Error(str(exc)) from None

        def accept_video(path: str | None) -> tuple[Any, str]:
            if not path:
                return None, ""
            try:
                from videodiff.media.clips import check_video

                kept = form.accept_upload(path, outputs, "video")
                info = check_video(kept)
            except UserError as exc:
                raise gr.Error(str(exc)) from None
            return str(kept), f"{info.num_frames} frames of {info.width}x{info.height} at {info.fps:g} fps"

        first_file.upload(accept_image, first_file, [image_state, first_shown], api_name="upload_image")
        last_file.upload(accept_image, last_file, [last_state, last_shown], api_name=False)
        video_file.upload(accept_video, video_file, [video_state, video_note], api_name=False)
        first_file.clear(lambda: (None, None), None, [image_state, first_shown], api_name=False)
        last_file.clear(lambda: (None, None), None, [last_state, last_shown], api_name=False)

        # ---------------------------------------------------------------- rendering
        result_outputs = [video_out, gif_out, preview, status, gallery, names_state, run_name, gallery_note]

        def run_render(mode: str, values: dict[str, Any], chosen: str, request: gr.Request, progress: Any):
            try:
                config = form.build_config(mode, values, base, outputs, chosen)
            except UserError as exc:
                raise gr.Error(str(exc)) from None
            session = getattr(request, "session_hash", None) or "anonymous"
            events: queue.Queue = queue.Queue()
            progress(0.0, desc="waiting for the model")
            future = renderer.submit(
                config,
                session,
                progress=lambda n, total, what: events.put(("progress", n, total, what)),
                preview=lambda frames: events.put(("preview", frames)),
            )
            future.add_done_callback(lambda _: events.put(("end",)))
            try:
                while True:
                    event = events.get()
                    if event[0] == "progress":
                        progress(event[1] / event[2], desc=event[3])
                    elif event[0] == "preview":
                        yield {preview: strip(event[1]), status: "sampling…"}
                    else:
                        break
            finally:  # the page went away: stop the render, nothing is written
                if not future.done():
                    renderer.cancel(session)
                    wait([future])
            error = future.exception()
            done = {"error": error} if error is not None else {"outcome": future.result()}
            error = done.get("error")
            if error is not None:
                from videodiff.sampling import Cancelled

                if isinstance(error, Cancelled):
                    gr.Warning("Stopped: nothing was written.")
                    yield {status: "Stopped: nothing was written.", preview: None}
                    return
                if isinstance(error, UserError):
                    raise gr.Error(str(error))
                log.error("render failed", exc_info=error)
                raise gr.Error(f"the render failed: {type(error).__name__}: {error}")
            outcome = done["outcome"]
            items, names, note = refresh()
            shown = str(outcome.output)
            is_gif = outcome.output.suffix == ".gif"
            yield {
                video_out: gr.Video(value=None if is_gif else shown, visible=not is_gif),
                gif_out: gr.Image(value=shown if is_gif else None, visible=is_gif),
                preview: None,
                status: f"{summary(outcome, config.fps)} · seed {outcome.seed}",
                gallery: items,
                names_state: names,
                run_name: outcome.output.name,
                gallery_note: note,
            }

        def tab_values(mode: str, data: dict[Any, Any]) -> tuple[dict[str, Any], str]:
            values = {name: data[component] for name, component in settings.items()}
            if mode == "text":
                values["prompt"] = data[prompt_text]
            elif mode == "img2vid":
                values.update(prompt=data[prompt_img], image=data[image_state], last_image=data[last_state])
            elif mode == "vid2vid":
                values.update(prompt=data[prompt_vid], video=data[video_state])
            else:
                values["keyframes"] = data[keyframes]
            return values, data[fmt]

        form_inputs = {
            *settings.values(),
            fmt,
            prompt_text,
            prompt_img,
            prompt_vid,
            keyframes,
            image_state,
            last_state,
            video_state,
        }

        def renderer_for(mode: str):
            def handler(data: dict[Any, Any], request: gr.Request, progress=gr.Progress()):  # noqa: B008
                values, chosen = tab_values(mode, data)
                yield from run_render(mode, values, chosen, request, progress)

            _hints(gr, handler)
            return handler

        for mode, button in (("text", go_text), ("img2vid", go_img), ("vid2vid", go_vid), ("travel", go_travel)):
            button.click(
                renderer_for(mode),
                form_inputs,
                result_outputs,
                concurrency_id=RENDERS,
                concurrency_limit=1,
                api_name=f"render_{mode}",
            )
        prompt_text.submit(
            renderer_for("text"),
            form_inputs,
            result_outputs,
            concurrency_id=RENDERS,
            concurrency_limit=1,
            api_name=False,
        )

        def stop_render(request: gr.Request) -> None:
            if renderer.cancel(getattr(request, "session_hash", None) or "anonymous"):
                gr.Info("Stopping at the next step…")

        _hints(gr, stop_render)
        stop.click(stop_render, None, None, queue=False, api_name="stop")
        dice.click(lambda: form.draw_seed(), None, settings["seed"], queue=False, api_name=False)

        def render_api(
            prompt: str,
            frames: int = 0,
            steps: int = 0,
            seed: int = -1,
            settings_json: str = "{}",
            format: str = "mp4",
            request: gr.Request = None,
        ) -> str:  # noqa: A002
            """Text-to-video for scripts (gradio_client): PROMPT with FRAMES, STEPS, SEED (0 or -1: the form's
            default, random) and any other form setting as JSON; returns the output's name in the outputs folder."""
            import json

            try:
                extra = json.loads(settings_json or "{}")
                if not isinstance(extra, dict):
                    raise ValueError("not a mapping")
            except ValueError as exc:
                raise gr.Error(f"settings_json must be a JSON mapping of settings: {exc}") from None
            values = {name: start[name] for name in settings}
            unknown = sorted(set(extra) - set(settings))
            if unknown:
                raise gr.Error(f"unknown settings {', '.join(unknown)}; known: {', '.join(settings)}")
            values.update(extra, prompt=prompt, seed=seed)
            values.update({k: v for k, v in (("frames", frames), ("steps", steps)) if v})
            try:
                config = form.build_config("text", values, base, outputs, format)
                session = getattr(request, "session_hash", None) or "api"
                outcome = renderer.render(config, session)
            except UserError as exc:
                raise gr.Error(str(exc)) from None
            return str(outcome.output.relative_to(outputs))

        _hints(gr, render_api)
        gr.api(render_api, api_name="render", concurrency_id=RENDERS, concurrency_limit=1)

        # ---------------------------------------------------------------- past runs
        def show_gallery():
            items, names, note = refresh()
            return items, names, note

        app.load(show_gallery, None, [gallery, names_state, gallery_note], api_name=False)
        refresh_btn.click(show_gallery, None, [gallery, names_state, gallery_note], api_name="refresh")

        def pick(names: list[str], evt: gr.SelectData) -> str:
            return names[evt.index] if evt.index is not None and evt.index < len(names) else ""

        _hints(gr, pick)
        gallery.select(pick, names_state, run_name, api_name=False)

        def show_run(name: str) -> tuple[Any, Any]:
            if not (name or "").strip():
                return None, gr.DownloadButton(value=None)
            try:
                run = find_run(name)
            except UserError as exc:
                gr.Warning(str(exc))
                return None, gr.DownloadButton(value=None)
            return {**run.settings, "info": run.info}, gr.DownloadButton(value=str(run.output))

        run_name.change(show_run, run_name, [details, download], api_name="show_run")

        def use_settings(name: str) -> dict[Any, Any]:
            try:
                run = find_run(name)
            except UserError as exc:
                raise gr.Error(str(exc)) from None
            mode, values, notices = form.form_from_run(run, outputs)
            for notice in notices:
                gr.Warning(notice)
            changes: dict[Any, Any] = {tabs: gr.Tabs(selected=mode)}
            for key, component in settings.items():
                if key in values:
                    value = values[key]
                    if key in optional:  # a text box: empty is the default
                        value = "" if value is None else str(value)
                    changes[component] = -1 if key == "seed" and value is None else value
            changes[fmt] = values.get("format", "mp4")
            prompt_box = {"text": prompt_text, "img2vid": prompt_img, "vid2vid": prompt_vid}.get(mode)
            if prompt_box is not None:
                changes[prompt_box] = values.get("prompt", "")
            else:
                changes[keyframes] = values.get("keyframes", "")
            if mode == "img2vid":
                from videodiff.media.images import read_image

                for state, shown, key in ((image_state, first_shown, "image"), (last_state, last_shown, "last_image")):
                    changes[state] = values.get(key)
                    changes[shown] = read_image(values[key], max_side=256) if values.get(key) else None
            if mode == "vid2vid":
                changes[video_state] = values.get("video")
            return changes

        use_outputs = [
            tabs,
            *settings.values(),
            fmt,
            prompt_text,
            prompt_img,
            prompt_vid,
            keyframes,
            image_state,
            first_shown,
            last_state,
            last_shown,
            video_state,
        ]
        use_btn.click(use_settings, run_name, use_outputs, api_name="use_settings")

        def render_again(name: str, request: gr.Request, progress=gr.Progress()):  # noqa: B008
            try:
                run = find_run(name)
            except UserError as exc:
                raise gr.Error(str(exc)) from None
            mode, values, notices = form.form_from_run(run, outputs)
            if notices:
                raise gr.Error(notices[0])
            yield from run_render(mode, values, values.get("format", "mp4"), request, progress)

        _hints(gr, render_again)
        again_btn.click(
            render_again, run_name, result_outputs, concurrency_id=RENDERS, concurrency_limit=1, api_name="render_again"
        )
    app.videodiff_renderer = renderer  # for tests and embedding: the warm pipeline's renderer
    return app
