"""The page's layout: the Gradio components of the web app, in the order they appear, and no behaviour.

:func:`build_layout` places every component inside the current ``gr.Blocks`` and returns them as a :class:`Page`;
what they do is :mod:`videodiff.ui.handlers`, and :mod:`videodiff.ui.app` connects the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videodiff.config import RenderConfig
from videodiff.settings.control import CANNY_THRESHOLDS
from videodiff.settings.fields import choices_by_field, whole_number_fields
from videodiff.settings.post import MAX_INTERPOLATE
from videodiff.ui import controls, form, prompts

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
    "interpolate": "Interpolate (off, or N: N-1 frames between each pair)",
    "interpolate_method": "Interpolation method",
    "upscale_factor": "Upscale (off, or S times larger, Lanczos)",
}
# Dropdowns and whole-number boxes of the form, from the settings' own fields (videodiff.settings.fields)
CHOICES = {k: v for k, v in choices_by_field(RenderConfig).items() if k in form.FORM_FIELDS}
# rife needs a file on the server (--interpolate-model), which the page does not name
CHOICES["interpolate_method"] = tuple(m for m in CHOICES["interpolate_method"] if m != "rife")
INTEGERS = tuple(n for n in whole_number_fields(RenderConfig) if n in form.FORM_FIELDS)


def _component(gr: Any, name: str, value: Any) -> Any:
    label = HELP.get(name, name.replace("_", " "))
    elem = f"set-{name.replace('_', '-')}"
    if name == "interpolate":  # off, or the factor: a dropdown of text (its value_of reads it)
        choices = [form.OFF, *map(str, range(2, MAX_INTERPOLATE + 1))]
        return gr.Dropdown(choices, value=form.OFF if value is None else str(value), label=label, elem_id=elem)
    if name == "upscale_factor":  # off, or a factor (value_of reads the text)
        choices = [form.OFF, *form.UPSCALE_CHOICES]
        shown = form.OFF if value is None else f"{value:g}"
        return gr.Dropdown(choices, value=shown, label=label, elem_id=elem, allow_custom_value=shown not in choices)
    if name in CHOICES:
        return gr.Dropdown(list(CHOICES[name]), value=value, label=label, elem_id=elem)
    if isinstance(value, bool) or name in ("loop", "paste"):
        return gr.Checkbox(value=bool(value), label=label, elem_id=elem)
    if name in form.TEXT_FIELDS:
        return gr.Textbox(value=value or "", label=label, elem_id=elem)
    if value is None:  # an optional number: empty means the default (a Number would send 0)
        return gr.Textbox(value="", label=label, placeholder="default", elem_id=elem)
    return gr.Number(value=value, label=label, precision=0 if name in INTEGERS else None, elem_id=elem)


@dataclass
class ControlForm:
    """One control's components in the Control section (a :class:`videodiff.ui.controls.ControlRequest`'s fields,
    then the preview)."""

    controlnet: Any
    files: Any
    detector: Any
    low: Any
    high: Any
    scale: Any
    start: Any
    end: Any
    path: Any  # a path drawn as points, in place of maps
    show: Any  # the "Show maps" button
    shown: Any  # the maps it shows

    @property
    def inputs(self) -> list[Any]:
        """What a render and the preview read of this control, in ControlRequest's order."""
        return [
            self.controlnet,
            self.files,
            self.detector,
            self.low,
            self.high,
            self.scale,
            self.start,
            self.end,
            self.path,
        ]


def _control_form(gr: Any, number: int, choices: list[str]) -> ControlForm:
    tag = f"control-{number}"
    with gr.Group():
        with gr.Row():
            net = gr.Dropdown(choices, value=controls.NONE, label=f"ControlNet {number}", elem_id=f"{tag}-net")
            detector = gr.Radio(
                list(controls.DETECTOR_CHOICES), value=controls.NONE, label="Detector", elem_id=f"{tag}-detector"
            )
            low = gr.Slider(0, 255, value=CANNY_THRESHOLDS[0], step=1, label="canny low", elem_id=f"{tag}-low")
            high = gr.Slider(0, 255, value=CANNY_THRESHOLDS[1], step=1, label="canny high", elem_id=f"{tag}-high")
        with gr.Row():
            scale = gr.Slider(
                0, controls.MAX_CONTROL_SCALE, value=1.0, step=0.05, label="Scale", elem_id=f"{tag}-scale"
            )
            start = gr.Slider(0, 1, value=0.0, step=0.05, label="Steps from", elem_id=f"{tag}-start")
            end = gr.Slider(0, 1, value=1.0, step=0.05, label="Steps to", elem_id=f"{tag}-end")
        files = gr.File(
            label="Maps: a video, a picture (every frame) or several pictures (the frames, in this order)",
            file_count="multiple",
            file_types=list(controls.MAP_SUFFIXES),
            type="filepath",
            allow_reordering=True,
            elem_id=f"{tag}-maps",
        )
        path = gr.Textbox(
            value="",
            label="Or a path instead of maps: X0,Y0:X1,Y1:... in the video's pixels (a blob moves along it)",
            placeholder="6,52:20,12:34,52:48,12:58,40",
            elem_id=f"{tag}-path",
        )
        show = gr.Button("Show maps", elem_id=f"{tag}-show", size="sm")
        shown = gr.Gallery(
            label="The maps the render reads",
            columns=8,
            height=160,
            format="png",
            object_fit="contain",
            allow_preview=True,
            elem_id=f"{tag}-shown",
        )
    return ControlForm(net, files, detector, low, high, scale, start, end, path, show, shown)


@dataclass
class Page:
    """Every component of the page that a handler reads or changes (Gradio components, typed ``Any``: Gradio is
    imported only when a page is built)."""

    # the tabs: one per kind of render
    tabs: Any
    prompt_text: Any
    go_text: Any
    prompt_img: Any
    first_file: Any
    last_file: Any
    first_shown: Any
    last_shown: Any
    go_img: Any
    prompt_vid: Any
    video_file: Any
    video_note: Any
    go_vid: Any
    keyframes: Any
    go_travel: Any
    # the settings, by field name of RenderConfig, and the output format
    settings: dict[str, Any]
    dice: Any
    fmt: Any
    # the result column
    video_out: Any
    gif_out: Any
    preview: Any
    status: Any
    stop: Any
    # past runs
    gallery: Any
    gallery_note: Any
    names_state: Any
    run_name: Any
    refresh_btn: Any
    details: Any
    use_btn: Any
    again_btn: Any
    download: Any
    # uploads as kept in the outputs folder
    image_state: Any
    last_state: Any
    video_state: Any
    # the Control section: up to controls.FORM_CONTROLS ControlNets with their maps
    controls: list[ControlForm]
    # the Image prompt section: a served IP-Adapter, its picture, its scale, the last frame's picture (a
    # prompts.ImagePromptRequest's fields)
    ip_inputs: list[Any]

    @property
    def result_outputs(self) -> list[Any]:
        """What a render changes."""
        return [
            self.video_out,
            self.gif_out,
            self.preview,
            self.status,
            self.gallery,
            self.names_state,
            self.run_name,
            self.gallery_note,
        ]

    @property
    def form_inputs(self) -> set[Any]:
        """What a render reads (a set: the handler gets a mapping of component to value)."""
        return {
            *self.settings.values(),
            self.fmt,
            self.prompt_text,
            self.prompt_img,
            self.prompt_vid,
            self.keyframes,
            self.image_state,
            self.last_state,
            self.video_state,
            *(component for control in self.controls for component in control.inputs),
            *self.ip_inputs,
        }

    @property
    def use_outputs(self) -> list[Any]:
        """What "Use these settings" changes."""
        return [
            self.tabs,
            *self.settings.values(),
            self.fmt,
            self.prompt_text,
            self.prompt_img,
            self.prompt_vid,
            self.keyframes,
            self.image_state,
            self.first_shown,
            self.last_state,
            self.last_shown,
            self.video_state,
        ]


def build_layout(
    gr: Any, start: dict[str, Any], model: str, outputs: Path, control_choices: list[str], ip_choices: list[str]
) -> Page:
    """The page's components, placed in the current ``gr.Blocks``; ``start``: the form's first values;
    ``control_choices``, ``ip_choices``: the Control and Image prompt sections' dropdowns ("none" first; a section
    is hidden when it is all)."""
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
                        first_shown = gr.Image(label="Frame 0", interactive=False, height=128, elem_id="image-shown")
                        last_shown = gr.Image(label="Last frame", interactive=False, height=128)
                    go_img = gr.Button("Animate", variant="primary", elem_id="render-img2vid")
                with gr.Tab("Video to video", id="vid2vid"):
                    prompt_vid = gr.Textbox(label="Prompt", elem_id="prompt-vid2vid")
                    video_file = gr.File(
                        label="Video to re-render",
                        type="filepath",
                        file_types=list(form.UPLOAD_VIDEO_SUFFIXES),
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
            with gr.Accordion("Post-processing", open=False):
                with gr.Row():
                    for name in form.POST:
                        settings[name] = _component(gr, name, start[name])
            with gr.Accordion("Control (ControlNet)", open=False, visible=len(control_choices) > 1):
                control_forms = [_control_form(gr, n, control_choices) for n in range(1, controls.FORM_CONTROLS + 1)]
            with gr.Accordion("Image prompt (IP-Adapter)", open=False, visible=len(ip_choices) > 1):
                with gr.Row():
                    ip_adapter = gr.Dropdown(ip_choices, value=controls.NONE, label="IP-Adapter", elem_id="ip-adapter")
                    ip_scale = gr.Slider(
                        0, prompts.MAX_IP_SCALE, value=prompts.IP_SCALE, step=0.05, label="Scale", elem_id="ip-scale"
                    )
                ip_image = gr.File(
                    label="Picture (the image prompt)",
                    type="filepath",
                    file_types=list(form.IMAGE_SUFFIXES),
                    elem_id="ip-image",
                )
                ip_image_end = gr.File(
                    label="Picture at the last frame (optional: the image prompt moves to it over the video)",
                    type="filepath",
                    file_types=list(form.IMAGE_SUFFIXES),
                    elem_id="ip-image-end",
                )
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
    return Page(
        tabs=tabs,
        prompt_text=prompt_text,
        go_text=go_text,
        prompt_img=prompt_img,
        first_file=first_file,
        last_file=last_file,
        first_shown=first_shown,
        last_shown=last_shown,
        go_img=go_img,
        prompt_vid=prompt_vid,
        video_file=video_file,
        video_note=video_note,
        go_vid=go_vid,
        keyframes=keyframes,
        go_travel=go_travel,
        settings=settings,
        dice=dice,
        fmt=fmt,
        video_out=video_out,
        gif_out=gif_out,
        preview=preview,
        status=status,
        stop=stop,
        gallery=gallery,
        gallery_note=gallery_note,
        names_state=names_state,
        run_name=run_name,
        refresh_btn=refresh_btn,
        details=details,
        use_btn=use_btn,
        again_btn=again_btn,
        download=download,
        image_state=image_state,
        last_state=last_state,
        video_state=video_state,
        controls=control_forms,
        ip_inputs=[ip_adapter, ip_image, ip_scale, ip_image_end],
    )
