"""videodiff.settings: every option says its help, choices and bounds in its field's metadata, and validate()
enforces exactly those (fast, no torch)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest

from videodiff import config
from videodiff.errors import UserError
from videodiff.settings import checks, fields, files, parse, render, sample, train
from videodiff.settings.fields import Option, options
from videodiff.settings.render import RenderConfig
from videodiff.settings.train import TrainConfig

VALID = {RenderConfig: {}, TrainConfig: {"data": "clips/", "output": "run/"}}  # the smallest valid settings
BOUNDED = [(cls, o) for cls in VALID for o in options(cls) if o.min is not None or o.max is not None]
CHOSEN = [(cls, o) for cls in VALID for o in options(cls) if o.choices]


def _ids(case: tuple[type, Option]) -> str:
    return f"{case[0].__name__}.{case[1].name}"


def _build(cls: type, name: str, value: object) -> object:
    return cls(**{**VALID[cls], name: value})


def _number(option: Option, value: float) -> float:
    return float(value) if option.type.startswith("float") else int(value)


def _inside_and_outside(option: Option, bound: float, side: int) -> tuple[float, float]:
    """The value at ``bound`` that passes (the next one inside where the bound is open) and the nearest that
    fails; ``side`` is -1 for a lower bound, +1 for an upper one."""
    open_ = option.min_open if side < 0 else option.max_open
    if option.type.startswith("int"):
        inside = bound - side if open_ else bound
        if option.step:  # the nearest multiple of the step inside
            inside = math.ceil(inside / option.step) * option.step if side < 0 else inside // option.step * option.step
        return inside, bound + side if not open_ else bound
    inward = math.nextafter(bound, -side * math.inf)
    return (inward if open_ else bound), (bound if open_ else math.nextafter(bound, side * math.inf))


def test_the_smallest_settings_are_valid():
    for cls, values in VALID.items():
        cls(**values).validate()


@pytest.mark.parametrize("cls", list(VALID))
def test_every_option_has_help_text_and_its_dataclass_default(cls):
    listed = list(options(cls))
    assert [o.name for o in listed] == [f.name for f in dataclasses.fields(cls)]
    for option, f in zip(listed, dataclasses.fields(cls)):
        assert option.help.strip(), f"{cls.__name__}.{option.name} has no help text in its metadata"
        assert option.default == f.default and option.type == str(f.type)


@pytest.mark.parametrize("case", BOUNDED, ids=_ids)
def test_bounds_in_metadata_are_what_validate_enforces(case):
    cls, option = case
    for bound, side in ((option.min, -1), (option.max, +1)):
        if bound is None:
            continue
        inside, outside = _inside_and_outside(option, bound, side)
        _build(cls, option.name, _number(option, inside)).validate()  # the bound itself (or just inside) passes
        with pytest.raises(UserError, match="--" + option.name.replace("_", "-")):
            _build(cls, option.name, _number(option, outside)).validate()


@pytest.mark.parametrize("case", BOUNDED, ids=_ids)
def test_a_bounded_float_rejects_nan(case):
    cls, option = case
    if option.type.startswith("float"):
        with pytest.raises(UserError, match="--" + option.name.replace("_", "-")):
            _build(cls, option.name, math.nan).validate()


@pytest.mark.parametrize("case", CHOSEN, ids=_ids)
def test_choices_in_metadata_are_what_validate_accepts(case):
    cls, option = case
    for name in option.choices:
        _build(cls, option.name, name).validate()
    with pytest.raises(UserError, match=f"unknown --{option.name.replace('_', '-')} 'bogus'; choose one of: "):
        _build(cls, option.name, "bogus").validate()


def test_options_carry_the_lists_of_names_defined_once():
    by_name = {o.name: o for o in options(RenderConfig)}
    assert by_name["scheduler"].choices is sample.SCHEDULERS
    assert by_name["fit"].choices is render.FITS  # validate() checks it, not the command line
    assert "choices" not in {f.name: f for f in dataclasses.fields(RenderConfig)}["fit"].metadata
    assert by_name["frames"].max == checks.MAX_FRAMES and by_name["cache"].max == checks.MAX_CACHE
    assert by_name["height"].step == 8 and by_name["model"].env == "VIDEODIFF_MODEL"
    assert by_name["output"].short == "-o" and ".mp4/.gif/.webm" in by_name["output"].help
    assert render.VIDEO_SUFFIXES == tuple(s for s in render.OUTPUT_FORMATS.values() if s)
    assert {o.name: o.choices for o in options(TrainConfig)}["noise"] is sample.NOISE_KINDS


def test_option_tables_for_forms_and_help():
    assert fields.choices_by_field(RenderConfig)["fit"] == ("crop", "pad")
    assert fields.choices_by_field(RenderConfig)["travel"] == ("linear", "slerp")
    assert {"frames", "seed", "crf", "decode_chunk"} <= set(fields.whole_number_fields(RenderConfig))
    assert not {"guidance", "fps", "loop"} & set(fields.whole_number_fields(RenderConfig))
    assert fields.help_by_field(TrainConfig)["lr_schedule"] == "constant|cosine"


def test_config_re_exports_the_same_objects():
    modules = (checks, fields, files, parse, render, sample, train)
    for name in config.__all__:
        homes = [m for m in modules if name in vars(m) or name.lstrip("_") in vars(m)]
        assert homes, name
        assert getattr(config, name) is getattr(homes[0], name if name in vars(homes[0]) else name.lstrip("_"))


def test_settings_import_no_torch():
    code = (
        "import sys, videodiff.settings, videodiff.settings.files, videodiff.settings.train, videodiff.config\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
        "print(len(list(videodiff.settings.fields.options(videodiff.config.RenderConfig))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(config.FIELD_NAMES)
