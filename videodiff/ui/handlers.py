"""What the page does: the handlers of its events (uploads, renders, stop, the API, past runs).

:class:`Handlers` holds what they share (the page's components, the warm pipeline's renderer, the outputs
folder, the settings the form starts from); :mod:`videodiff.ui.app` connects its methods to the events of
:class:`videodiff.ui.layout.Page`. Gradio is passed in (the ``ui`` extra is imported only when a page is built).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from videodiff.config import RenderConfig
from videodiff.errors import UserError
from videodiff.render import summary
from videodiff.settings.control import CANNY_THRESHOLDS
from videodiff.ui import form
from videodiff.ui.controls import NONE, ControlRequest, ServedControls
from videodiff.ui.gallery import Run, inside, read_runs, thumbnail
from videodiff.ui.jobs import Cancelled, Job, OverTime, Renderer, Stopping
from videodiff.ui.layout import Page
from videodiff.ui.prompts import IP_SCALE, ImagePromptRequest, ServedAdapters

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger("videodiff.ui")


def hints(gr: Any, *functions: Any) -> None:
    """Gradio finds ``request``/``evt`` by their annotations; with postponed annotations they are text."""
    for function in functions:
        for key, value in list(function.__annotations__.items()):
            if value in ("gr.Request", "gr.SelectData"):  # (a default of None: gr.api's own calls)
                function.__annotations__[key] = getattr(gr, value.removeprefix("gr."))


def session_of(request: Any) -> str:
    """The page or ``gradio_client.Client`` that asked (its Stop stops its renders): Gradio's session hash."""
    return str(getattr(request, "session_hash", None) or "anonymous")


def client_of(request: Any) -> str:
    """Who asked, for the queue cap: the address the request came from (Gradio's ``request.client.host``).

    Every page and ``Client`` on one machine counts as one client (a new session costs nothing, a new
    address does); behind a reverse proxy every user is the proxy's address.
    """
    host = getattr(getattr(request, "client", None), "host", None)
    return str(host) if host else session_of(request)


def strip(frames: np.ndarray) -> np.ndarray:
    """Frames ``[n h w 3]`` side by side, each at least 96 pixels high (a preview the eye can read)."""
    row = np.concatenate(list(frames), axis=1)
    scale = max(1, 96 // max(1, row.shape[0]))
    return row.repeat(scale, axis=0).repeat(scale, axis=1)


class Handlers:
    """The page's event handlers over one renderer and one outputs folder."""

    def __init__(
        self,
        gr: Any,
        page: Page,
        renderer: Renderer,
        outputs: Path,
        base: RenderConfig,
        start: dict[str, Any],
        served: ServedControls,
        adapters: ServedAdapters,
    ) -> None:
        self.gr, self.page, self.renderer, self.outputs = gr, page, renderer, outputs
        self.base, self.start, self.served, self.adapters = base, start, served, adapters
        # settings whose box is text because they have no value of their own: empty is the default
        text = (*form.TEXT_FIELDS, "interpolate", "upscale_factor")  # (dropdowns whose "off" is their default)
        self.optional = {name for name in page.settings if start[name] is None and name not in text}
        hints(gr, self.stop_render, self.render_api, self.pick)

    def refuse(self, message: str) -> Exception:
        """A message for the page or the API caller, not logged with a traceback (a bad request is not a bug)."""
        return self.gr.Error(message, print_exception=False)

    # ---------------------------------------------------------------- past runs, read from the outputs folder
    def refresh(self) -> tuple[Any, list[str], str]:
        outputs = self.outputs
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

    def find_run(self, name: str) -> Run:
        path = inside(self.outputs, (name or "").strip())
        runs, _ = read_runs(self.outputs)
        for run in runs:
            if run.output.resolve() == path:
                return run
        raise UserError(f"no run {name!r} with a sidecar in the outputs folder")

    # ---------------------------------------------------------------- uploads, through the CLI's readers
    def accept_image(self, path: str | None) -> tuple[Any, Any]:
        if not path:
            return None, None
        try:
            from videodiff.media.images import read_image

            kept = form.accept_upload(path, self.outputs, "image")
            return str(kept), read_image(kept, max_side=256)
        except UserError as exc:
            raise self.refuse(str(exc)) from None

    def accept_video(self, path: str | None) -> tuple[Any, str]:
        if not path:
            return None, ""
        try:
            from videodiff.media.clips import check_video

            kept = form.accept_upload(path, self.outputs, "video")
            info = check_video(kept)
        except UserError as exc:
            raise self.refuse(str(exc)) from None
        return str(kept), f"{info.num_frames} frames of {info.width}x{info.height} at {info.fps:g} fps"

    # ---------------------------------------------------------------- rendering
    def checked(
        self,
        mode: str,
        values: dict[str, Any],
        chosen: str,
        requests: tuple[ControlRequest, ...] = (),
        image_prompt: ImagePromptRequest | None = None,
    ) -> tuple[RenderConfig, Path | None]:
        """The form's settings, checked as the command line checks them before any work (run off the event loop:
        the checks read input files), and the folder its uploaded maps and picture were staged in (``None``: no
        control nor image prompt; removed here when a check fails)."""
        config = form.build_config(mode, values, self.base, self.outputs, chosen)
        prompted = image_prompt is not None and image_prompt.wanted
        if not any(r.wanted for r in requests) and not prompted:
            return self.renderer.check(config), None
        folder = self.served.request_folder()
        try:
            config = config.replace(controls=self.served.controls(requests, folder))
            if prompted:
                config = config.replace(ip_adapters=(self.adapters.prompt(image_prompt, folder / "image-prompt"),))
            return self.renderer.check(config), folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    async def queue(
        self,
        mode: str,
        values: dict[str, Any],
        chosen: str,
        request: Any,
        requests: tuple[ControlRequest, ...] = (),
        image_prompt: ImagePromptRequest | None = None,
        **feeds: Any,
    ) -> Job:
        """Check, then queue (a bad request or a full queue is a ``gr.Error`` at once, not after its turn). Uploaded
        maps and pictures are removed when the render ends, however it ends."""
        folder = None
        try:
            config, folder = await asyncio.to_thread(self.checked, mode, values, chosen, requests, image_prompt)
            job = self.renderer.submit(config, session_of(request), client=client_of(request), **feeds)
        except BaseException as exc:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            if isinstance(exc, UserError):
                raise self.refuse(str(exc)) from None
            raise
        if folder is not None:
            job.future.add_done_callback(lambda _: shutil.rmtree(folder, ignore_errors=True))
        return job

    async def run_render(
        self,
        mode: str,
        values: dict[str, Any],
        chosen: str,
        request: gr.Request,
        progress: Any,
        requests: tuple[ControlRequest, ...] = (),
        image_prompt: ImagePromptRequest | None = None,
    ):
        gr, page = self.gr, self.page
        preview, status = page.preview, page.status
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def put(*event: Any) -> None:  # from the render thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone: nobody is watching
                pass

        job = await self.queue(
            mode,
            values,
            chosen,
            request,
            requests,
            image_prompt,
            progress=lambda n, total, what: put("progress", n, total, what),
            preview=lambda frames: put("preview", frames),
        )
        job.future.add_done_callback(lambda _: put("end"))
        progress(0.0, desc=f"waiting: {job.ahead} render{'s' * (job.ahead != 1)} ahead" if job.ahead else "starting")
        try:
            while True:
                event = await events.get()
                if event[0] == "progress":
                    progress(event[1] / event[2], desc=event[3])
                elif event[0] == "preview":
                    yield {preview: strip(event[1]), status: "sampling…"}
                else:
                    break
        finally:  # the page went away or the event was cancelled: stop the render, nothing is written
            if not job.future.done():
                job.stop()
        error = job.future.exception()
        if error is not None:
            if isinstance(error, OverTime | Stopping):  # the server's doing: an error, as in the API
                raise self.refuse(f"{error}; nothing was written")
            if isinstance(error, Cancelled):  # the page's Stop
                gr.Warning("Stopped: nothing was written.")
                yield {status: "Stopped: nothing was written.", preview: None}
                return
            if isinstance(error, UserError):
                raise self.refuse(str(error))
            log.error("render failed", exc_info=error)  # a bug: its traceback once, in the server's log
            raise self.refuse(f"the render failed: {type(error).__name__}: {error}")
        outcome = job.future.result()
        items, names, note = self.refresh()
        shown = str(outcome.output)
        is_gif = outcome.output.suffix == ".gif"
        yield {
            page.video_out: gr.Video(value=None if is_gif else shown, visible=not is_gif),
            page.gif_out: gr.Image(value=shown if is_gif else None, visible=is_gif),
            preview: None,
            status: f"{summary(outcome, job.config.fps)} · seed {outcome.seed}",
            page.gallery: items,
            page.names_state: names,
            page.run_name: outcome.output.name,
            page.gallery_note: note,
        }

    def tab_values(self, mode: str, data: dict[Any, Any]) -> tuple[dict[str, Any], str]:
        page = self.page
        values = {name: data[component] for name, component in page.settings.items()}
        if mode == "text":
            values["prompt"] = data[page.prompt_text]
        elif mode == "img2vid":
            values.update(prompt=data[page.prompt_img], image=data[page.image_state], last_image=data[page.last_state])
        elif mode == "vid2vid":
            values.update(prompt=data[page.prompt_vid], video=data[page.video_state])
        else:
            values["keyframes"] = data[page.keyframes]
        return values, data[page.fmt]

    def control_requests(self, data: dict[Any, Any]) -> tuple[ControlRequest, ...]:
        """The Control section's controls as the page has them."""
        return tuple(ControlRequest(*(data[c] for c in control.inputs)) for control in self.page.controls)

    def renderer_for(self, mode: str):
        """The handler of a render button (or the prompt's Enter) of the tab ``mode``."""
        gr = self.gr

        async def handler(data: dict[Any, Any], request: gr.Request, progress=gr.Progress()):  # noqa: B008
            values, chosen = self.tab_values(mode, data)
            requests = self.control_requests(data)
            image_prompt = ImagePromptRequest(*(data[c] for c in self.page.ip_inputs))
            async for update in self.run_render(mode, values, chosen, request, progress, requests, image_prompt):
                yield update

        hints(gr, handler)
        return handler

    def stop_render(self, request: gr.Request) -> None:
        if self.renderer.cancel(session_of(request)):
            self.gr.Info("Stopping at the next step…")

    async def render_api(
        self,
        prompt: str,
        frames: int = 0,
        steps: int = 0,
        seed: int = -1,
        settings_json: str = "{}",
        format: str = "mp4",  # noqa: A002
        controlnet: str = NONE,
        maps: list[dict] | dict | None = None,
        detector: str = NONE,
        low: int = CANNY_THRESHOLDS[0],
        high: int = CANNY_THRESHOLDS[1],
        scale: float = 1.0,
        start: float = 0.0,
        end: float = 1.0,
        controlnet_2: str = NONE,
        maps_2: list[dict] | dict | None = None,
        detector_2: str = NONE,
        low_2: int = CANNY_THRESHOLDS[0],
        high_2: int = CANNY_THRESHOLDS[1],
        scale_2: float = 1.0,
        start_2: float = 0.0,
        end_2: float = 1.0,
        interpolate: int = 0,
        interpolate_method: str = "",
        ip_adapter: str = NONE,
        ip_image: dict | None = None,
        ip_scale: float = IP_SCALE,
        ip_image_end: dict | None = None,
        path: str = "",
        path_2: str = "",
        request: gr.Request = None,
    ) -> str:
        """Text-to-video for scripts (gradio_client): PROMPT with FRAMES, STEPS, SEED (0 or -1: the form's
        default, random) and any other form setting as JSON; returns the output's name in the outputs folder.
        Control (the page's Control section): CONTROLNET by the name the page shows, MAPS uploaded files
        (``gradio_client.handle_file``), DETECTOR ``none`` or ``canny`` with LOW, HIGH, SCALE, the step range
        START to END; ``..._2`` for a second control. INTERPOLATE (0: off, or 2 to 8) and INTERPOLATE_METHOD
        (empty: the form's) when given stand over settings_json's. Image prompt: IP_ADAPTER by the name the page
        shows, IP_IMAGE an uploaded picture, IP_SCALE, IP_IMAGE_END a picture for the last frame (optional).
        PATH (PATH_2): ``X0,Y0:X1,Y1[:...]`` in place of MAPS (MAPS_2), as ``--control-path`` draws it.
        A cancelled call (gradio_client's ``job.cancel()``) stops the render at its next step: nothing is written."""
        import json

        requests = (
            ControlRequest(controlnet, maps, detector, low, high, scale, start, end, path),
            ControlRequest(controlnet_2, maps_2, detector_2, low_2, high_2, scale_2, start_2, end_2, path_2),
        )

        settings = self.page.settings
        try:
            extra = json.loads(settings_json or "{}")
            if not isinstance(extra, dict):
                raise ValueError("not a mapping")
        except ValueError as exc:
            raise self.refuse(f"settings_json must be a JSON mapping of settings: {exc}") from None
        values = {name: self.start[name] for name in settings}
        unknown = sorted(set(extra) - set(settings))
        if unknown:
            raise self.refuse(f"unknown settings {', '.join(unknown)}; known: {', '.join(settings)}")
        values.update(extra, prompt=prompt, seed=seed)
        values.update({k: v for k, v in (("frames", frames), ("steps", steps)) if v})
        given = (("interpolate", interpolate), ("interpolate_method", interpolate_method))
        values.update({k: v for k, v in given if v not in (0, None, "")})
        image_prompt = ImagePromptRequest(ip_adapter, ip_image, ip_scale, ip_image_end)
        job = await self.queue("text", values, format, request, requests, image_prompt)
        try:
            outcome = await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:  # the client cancelled: stop at the next step
            job.stop()
            raise
        except Cancelled as exc:
            raise self.refuse(f"{str(exc) or 'stopped'}; nothing was written") from None
        except UserError as exc:
            raise self.refuse(str(exc)) from None
        return str(outcome.output.relative_to(self.outputs))

    def show_maps(self, *inputs: Any) -> list[Any]:
        """ "Show maps": the maps a render with the form's frames, size and fit would read (fitted, the detector
        applied), read as the render reads them (text-to-video; vid2vid's ``--stride`` is not applied here)."""
        *control, frames, height, width, fit = inputs
        try:
            request = ControlRequest(*control)
            given = {"frames": frames, "height": height, "width": width, "fit": fit}
            values = {k: form.value_of(k, v) for k, v in given.items()}
            size = {k: self.start[k] if v is None else v for k, v in values.items()}
            config = self.base.replace(**size).validate()
            maps = self.served.preview(request, config.frames, config.height, config.width, config.fit)
        except UserError as exc:
            raise self.refuse(str(exc)) from None
        return [(frame, f"frame {i}") for i, frame in enumerate(maps)]

    # ---------------------------------------------------------------- past runs
    def show_gallery(self):
        items, names, note = self.refresh()
        return items, names, note

    def pick(self, names: list[str], evt: gr.SelectData) -> str:
        return names[evt.index] if evt.index is not None and evt.index < len(names) else ""

    def show_run(self, name: str) -> tuple[Any, Any]:
        gr = self.gr
        if not (name or "").strip():
            return None, gr.DownloadButton(value=None)
        try:
            run = self.find_run(name)
        except UserError as exc:
            gr.Warning(str(exc))
            return None, gr.DownloadButton(value=None)
        return {**run.settings, "info": run.info}, gr.DownloadButton(value=str(run.output))

    def use_settings(self, name: str) -> dict[Any, Any]:
        gr, page = self.gr, self.page
        try:
            run = self.find_run(name)
        except UserError as exc:
            raise self.refuse(str(exc)) from None
        mode, values, notices = form.form_from_run(run, self.outputs)
        for notice in notices:
            gr.Warning(notice)
        changes: dict[Any, Any] = {page.tabs: gr.Tabs(selected=mode)}
        for key, component in page.settings.items():
            if key in values:
                value = values[key]
                if key in self.optional:  # a text box: empty is the default
                    value = "" if value is None else str(value)
                if key in ("interpolate", "upscale_factor"):  # a dropdown of text: off or the factor
                    value = form.OFF if value is None else f"{value:g}"
                changes[component] = -1 if key == "seed" and value is None else value
        changes[page.fmt] = values.get("format", "mp4")
        prompt_box = {"text": page.prompt_text, "img2vid": page.prompt_img, "vid2vid": page.prompt_vid}.get(mode)
        if prompt_box is not None:
            changes[prompt_box] = values.get("prompt", "")
        else:
            changes[page.keyframes] = values.get("keyframes", "")
        if mode == "img2vid":
            from videodiff.media.images import read_image

            for state, shown, key in (
                (page.image_state, page.first_shown, "image"),
                (page.last_state, page.last_shown, "last_image"),
            ):
                changes[state] = values.get(key)
                changes[shown] = read_image(values[key], max_side=256) if values.get(key) else None
        if mode == "vid2vid":
            changes[page.video_state] = values.get("video")
        return changes

    def render_again_handler(self):
        """The handler of "Render again": the run's own settings rendered once more."""
        gr = self.gr

        async def render_again(name: str, request: gr.Request, progress=gr.Progress()):  # noqa: B008
            try:
                run = self.find_run(name)
            except UserError as exc:
                raise self.refuse(str(exc)) from None
            mode, values, notices = form.form_from_run(run, self.outputs)
            if notices:
                raise self.refuse(notices[0])
            async for update in self.run_render(mode, values, values.get("format", "mp4"), request, progress):
                yield update

        hints(gr, render_again)
        return render_again
