"""Every list of option names is defined once, in the settings' fields: the command line, the web form, batches
and the loaders read them from there (these tests fail when a copy is kept by hand and drifts)."""

from __future__ import annotations

import dataclasses
import typing

import click

from videodiff import batch
from videodiff.cli import cli
from videodiff.config import ATTENTION, DTYPES, OUTPUT_FORMATS, VIDEO_SUFFIXES, RenderConfig, TrainConfig
from videodiff.settings.fields import choices_by_field, options, whole_number_fields


def _params(command: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in cli.commands[command].params}


def test_command_options_carry_the_fields_help_choices_and_environment():
    for command, cls in (("render", RenderConfig), ("train", TrainConfig)):
        params = _params(command)
        for option in options(cls):
            param = params.get(option.name)
            if not isinstance(param, click.Option):  # skipped here, or an argument (the prompt)
                continue
            assert option.help and param.help.startswith(option.help), (command, option.name)
            if isinstance(param.type, click.Choice) and option.choices:
                assert tuple(param.type.choices) == tuple(option.choices), (command, option.name)
    assert _params("train")["model"].envvar == "VIDEODIFF_MODEL"


def test_output_formats_are_named_once():
    assert tuple(_params("render")["fmt"].type.choices) == tuple(OUTPUT_FORMATS)
    assert batch.FORMATS is OUTPUT_FORMATS
    from videodiff.media import video
    from videodiff.ui import form, gallery

    assert video.VIDEO_SUFFIXES is gallery.VIDEO_SUFFIXES is VIDEO_SUFFIXES
    assert form.FORMATS == tuple(name for name, suffix in OUTPUT_FORMATS.items() if suffix)


def test_the_web_forms_dropdowns_and_whole_numbers_come_from_the_fields():
    from videodiff.ui import form, layout

    fields_choices = {k: v for k, v in choices_by_field(RenderConfig).items() if k in form.FORM_FIELDS}
    # the one exception: rife needs a file on the server (--interpolate-model), which the page never names
    fields_choices["interpolate_method"] = tuple(m for m in fields_choices["interpolate_method"] if m != "rife")
    assert layout.CHOICES == fields_choices
    assert set(layout.INTEGERS) == set(whole_number_fields(RenderConfig)) & set(form.FORM_FIELDS)
    names = {f.name for f in dataclasses.fields(RenderConfig)}
    assert set(form.FORM_FIELDS) <= names


def test_torch_side_names_match_the_settings():
    from videodiff.pipelines import DTYPES as TORCH_DTYPES
    from videodiff.unet.temporal import AttentionBackend

    assert set(typing.get_args(AttentionBackend)) == set(ATTENTION)
    assert set(TORCH_DTYPES) == set(DTYPES) - {"auto"}


def test_eval_leaves_untyped_settings_to_the_model(monkeypatch):
    """eval's generated options show the fields' defaults, but only what is typed reaches the evaluation: the rest
    stays the model's recorded defaults (None), as render leaves them."""
    from cli_helpers import invoke, ok

    from videodiff.shapes import evaluate

    seen = {}
    monkeypatch.setattr(evaluate, "run_shapes_eval", lambda **kw: seen.update(kw) or {})
    ok(invoke("eval", "shapes", "--seeds", 1, "-q"))
    assert [seen[k] for k in ("steps", "guidance", "motion_prior", "cache", "img2vid")] == [None] * 5
    ok(invoke("eval", "shapes", "--keyframes", "--steps", 4, "--anchor", 0.5, "-q"))
    assert seen["steps"] == 4 and seen["guidance"] is None and seen["img2vid"] == {"anchor": 0.5, "keyframes": True}


def _commands(group: click.Command, path: str = ""):
    yield path, group
    for name, command in getattr(group, "commands", {}).items():
        yield from _commands(command, f"{path} {name}".strip())


def test_no_option_names_its_default_twice():
    # the field's help may name the default itself; the CLI then adds no "[default: ...]" of its own
    twice = []
    for path, command in _commands(cli):
        ctx = click.Context(command, info_name=path or "videodiff")
        for param in command.params:
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record and record[1].lower().count("default") > 1:
                twice.append(f"{path} {record[0]}: {record[1]}")
    assert not twice, "\n".join(twice)
    render = cli.commands["render"]
    text = render.get_help(click.Context(render, info_name="render"))
    assert text.count("[default: the model's, else latent]") == 1
