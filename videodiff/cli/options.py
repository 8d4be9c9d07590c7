"""Options shared by the commands: click options made from a settings dataclass, and what the user gave."""

from __future__ import annotations

import re
from typing import Any

import click
from click.core import ParameterSource

from videodiff.config import TrainConfig
from videodiff.errors import UserError


def given(ctx: click.Context, source: ParameterSource) -> dict[str, Any]:
    """Parameters set from ``source`` (so defaults never override a config file)."""
    return {k: v for k, v in ctx.params.items() if ctx.get_parameter_source(k) == source}


def parse_motion(text: str) -> tuple[float, float]:
    """``--motion DX,DY``: two numbers, pixels per frame."""
    try:
        dx, dy = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--motion must be DX,DY in pixels per frame, e.g. 2,0; got {text!r}") from None
    return dx, dy


def choice_help(names: tuple[str, ...]) -> str:
    return "|".join(names)


def names_default(help_text: str) -> bool:
    """Whether a help text says its default itself (``[default: ...]``, ``(default: ...)``, ``shapes (the
    default)``...): then nothing adds another."""
    return re.search(r"\bdefault\b", help_text, re.IGNORECASE) is not None


def help_with_default(help_text: str, default: Any, recorded: bool) -> tuple[str, bool]:
    """The help text and whether click should append ``[default: X]``: a default is said once, by the help text
    where it names one, else ``[default: the model's, else X]`` for a setting a model may record (``recorded``),
    else by click."""
    if default is None or names_default(help_text):
        return help_text, False
    if recorded:
        shown = default if isinstance(default, str) else f"{default:g}"
        return f"{help_text} [default: the model's, else {shown}]", False
    return help_text, True


def options_from(cls: type, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None):
    """Click options for every field of a settings dataclass (flag = field name with dashes) but ``skip`` (or only
    the fields ``only`` names).

    Help, choices, a short flag and an environment variable come from the field's metadata
    (:func:`videodiff.settings.fields.setting`), so no list of options is kept by hand. No option has a default
    of its own: commands read only what was given (:func:`given`), so a config file and the
    model's recorded defaults are never overridden; the help names the default instead.
    """
    import dataclasses

    from videodiff.config import MODEL_DEFAULT_KEYS

    def decorate(func):
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip or (only is not None and f.name not in only):
                continue
            names = [*([f.metadata["short"]] if "short" in f.metadata else []), "--" + f.name.replace("_", "-")]
            kind = str(f.type)
            help_text = f.metadata.get("help", "")
            envvar = f.metadata.get("env")
            recorded = f.name in MODEL_DEFAULT_KEYS and cls is not TrainConfig  # a model may record its own
            help_text, show = help_with_default(help_text, f.default, recorded)
            extra: dict[str, Any] = {"help": help_text, "envvar": envvar}
            if f.name == "controls":  # one composite field, given on the command line as grouped flags
                func = control_options(func)
            elif f.name == "ip_adapters":  # likewise: --ip-adapter/--ip-image/--ip-scale/--image-encoder
                func = ip_adapter_options(func)
            elif kind.startswith("bool"):
                func = click.option(*names, is_flag=True, default=f.default, **extra)(func)
            elif "optional_value" in f.metadata:  # --flag alone, or --flag VALUE
                value = f.metadata["optional_value"]
                meta = f.metadata.get("metavar")
                func = click.option(*names, is_flag=False, flag_value=value, default=None, metavar=meta, **extra)(func)
            elif kind.startswith("dict[int, str]"):  # KEY:TEXT, repeatable
                func = click.option(*names, multiple=True, callback=_keyed_texts, **extra)(func)
            elif kind.startswith("tuple[str"):
                func = click.option(*names, multiple=True, **extra)(func)
            elif kind.startswith("tuple[float"):  # DX,DY; LOW,HIGH
                func = click.option(*names, callback=_numbers_pair, **extra)(func)
            elif "choices" in f.metadata:  # a closed set: checked by click (with completion)
                choice = click.Choice(f.metadata["choices"])
                func = click.option(*names, type=choice, default=f.default, show_default=show, **extra)(func)
            else:
                typ = int if kind.startswith("int") else float if kind.startswith("float") else str
                func = click.option(*names, type=typ, default=f.default, show_default=show, **extra)(func)
        return func

    return decorate


def _keyed_texts(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[int, str] | None:
    from videodiff.config import parse_mapping

    return parse_mapping(list(value)) if value else None


def _numbers_pair(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float] | None:
    if value is None or param.name == "motion":
        return None if value is None else parse_motion(value)
    from videodiff.config import parse_pair

    return parse_pair(value, "--" + str(param.name).replace("_", "-"))


def control_options(func):
    """``--controlnet``, ``--control``, ``--control-scale``, ``--control-range``: repeatable, the n-th of each for the
    n-th control (:func:`videodiff.settings.control.controls_from_flags` makes them ``controls``)."""
    options = (
        (
            "--controlnet",
            str,
            "ControlNet: diffusers folder, hub id or original single file (.pth, .safetensors); repeatable, one "
            "per --control.",
        ),
        (
            "--control",
            str,
            "Maps for the n-th --controlnet: a video, a folder of images, an image, or canny:PATH "
            "(canny:LOW,HIGH:PATH) for edges computed here; alone: the model's own ControlNet.",
        ),
        (
            "--control-path",
            str,
            "X0,Y0:X1,Y1[:...]: maps drawn from a path, a blob moving along it at constant speed (pixels, x right, "
            "y down), for blob-trained ControlNets; one more --control, after those given.",
        ),
        ("--control-scale", float, "How strongly the n-th control steers (diffusers' conditioning scale) [default: 1]"),
        ("--control-range", str, "START,END: the part of the steps the n-th control acts on [default: 0,1]."),
    )
    sparse = (
        ("--sparsectrl", str, False, "SparseCtrl model (RGB or scribble): diffusers folder, hub id or original file."),
        ("--sparse-at", str, True, "FRAME:PATH: a picture SparseCtrl pins to a frame (-1 the last); repeatable."),
        ("--sparse-scale", float, False, "How strongly SparseCtrl steers [default: 1]"),
        ("--sparse-range", str, False, "START,END: the part of the steps SparseCtrl acts on [default: 0,1]."),
    )
    for name, typ, multiple, help_text in reversed(sparse):
        func = click.option(name, type=typ, multiple=multiple, default=() if multiple else None, help=help_text)(func)
    for name, typ, help_text in reversed(options):
        func = click.option(name, type=typ, multiple=True, help=help_text)(func)
    return func


def ip_adapter_options(func):
    """``--ip-adapter``, ``--ip-image``, ``--ip-scale`` (repeatable, the n-th of each for the n-th adapter) and
    ``--image-encoder`` (:func:`videodiff.settings.ip_adapter.image_prompts_from_flags` makes them ``ip_adapters``)."""
    options = (
        ("--ip-adapter", str, True, "IP-Adapter weights (.safetensors or .bin), or ORG/NAME/PATH/FILE on the hub."),
        ("--ip-image", str, True, "The picture for the n-th --ip-adapter (an image prompt); one per --ip-adapter."),
        ("--ip-image-at", str, True, "FRAME:PATH: a keyframe picture (-1 the last), blended between keyframes."),
        ("--ip-scale", float, True, "How strongly the n-th image prompt steers [default: 1]"),
        ("--image-encoder", str, False, "CLIP vision folder or hub id, if none is beside the adapter."),
    )
    for name, typ, multiple, help_text in reversed(options):
        func = click.option(name, type=typ, multiple=multiple, default=() if multiple else None, help=help_text)(func)
    return func


CONFIG_OPTION = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="YAML (or a sidecar .json) with any of these settings; the command line wins.",
)
