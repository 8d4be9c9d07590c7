"""videodiff.config without models: validation, settings files, layering (all fast, no torch)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from videodiff.config import FIELD_NAMES, INFO_KEY, RenderConfig, load_config_file, merge
from videodiff.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def one_line(message: str) -> str:
    assert message and "\n" not in message, f"not a single line: {message!r}"
    return message


# ---------------------------------------------------------------- RenderConfig.validate


def test_defaults_are_valid():
    config = RenderConfig()
    assert config.validate() is config


@pytest.mark.parametrize(
    "changes",
    [
        {"frames": 1, "steps": 1, "decode_chunk": 1},
        {"height": 8, "width": 8},
        {"height": 512, "width": 768},
        {"guidance": 0.0},
        {"guidance": 1},  # an int where a float is expected
        {"fps": 0.5},
        {"noise_alpha": 0.0},
        {"crf": 0},
        {"crf": 63},
        {"seed": 0},
        {"seed": 2**64 - 1},
        {"scheduler": "euler-a", "noise": "progressive", "device": "cpu", "dtype": "bf16", "attention": "math"},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_edge_values_are_valid(changes):
    RenderConfig(**changes).validate()


INVALID = [
    ("frames", 0),
    ("frames", -3),
    ("frames", 2.5),
    ("frames", True),
    ("frames", "16"),
    ("steps", 0),
    ("steps", None),
    ("decode_chunk", 0),
    ("height", 100),
    ("height", 0),
    ("height", -8),
    ("height", 32.0),
    ("width", 33),
    ("width", "32"),
    ("guidance", math.nan),
    ("guidance", -1.0),
    ("guidance", math.inf),
    ("guidance", "7.5"),
    ("fps", 0.0),
    ("fps", -8.0),
    ("fps", math.inf),
    ("fps", math.nan),
    ("noise_alpha", -1.0),
    ("noise_alpha", math.nan),
    ("noise_alpha", math.inf),
    ("noise_alpha", None),
    ("crf", -1),
    ("crf", 64),
    ("crf", 18.5),
    ("seed", -1),
    ("seed", 2**64),
    ("seed", 1.5),
    ("scheduler", "bogus"),
    ("noise", "gaussian"),
    ("device", "tpu"),
    ("dtype", "fp64"),
    ("attention", "flash"),
]


@pytest.mark.parametrize("name,value", INVALID, ids=[f"{n}={v!r}" for n, v in INVALID])
def test_invalid_setting_is_a_one_line_user_error(name, value):
    with pytest.raises(UserError) as info:
        RenderConfig(**{name: value}).validate()
    message = one_line(str(info.value))
    assert f"--{name.replace('_', '-')}" in message  # names the flag to fix


@pytest.mark.parametrize("value", [100, 33, 4, 1, 1001])
@pytest.mark.parametrize("name", ["height", "width"])
def test_size_not_a_multiple_of_8_names_the_nearest_valid_value(name, value):
    with pytest.raises(UserError) as info:
        RenderConfig(**{name: value}).validate()
    message = one_line(str(info.value))
    found = re.search(r"nearest valid value is (\d+)", message)
    assert found, message
    nearest = int(found.group(1))
    assert nearest > 0 and nearest % 8 == 0
    assert abs(nearest - value) <= 7


@pytest.mark.parametrize("name", ["seed", "crf", "fps", "guidance", "noise_alpha"])
def test_boolean_for_a_number_is_a_user_error(name):
    with pytest.raises(UserError):
        RenderConfig(**{name: True}).validate()


@pytest.mark.parametrize("name", ["prompt", "negative", "model", "motion_module", "output"])
def test_non_text_value_for_a_text_setting_is_a_user_error(name):
    with pytest.raises(UserError):
        RenderConfig(**{name: 123}).validate()


# ---------------------------------------------------------------- load_config_file


def test_yaml_file_loads(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("# a comment\nprompt: a cat\nframes: 8\nguidance: 6\nnoise_alpha: 0.5\nseed: null\n")
    assert load_config_file(path) == {"prompt": "a cat", "frames": 8, "guidance": 6, "noise_alpha": 0.5, "seed": None}


def test_json_file_loads(tmp_path):
    values = {"prompt": "a dog", "frames": 12, "scheduler": "euler", "negative": None}
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(values, indent=2))
    assert load_config_file(str(path)) == values


def test_empty_file_is_no_settings(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert load_config_file(path) == {}


def test_info_part_of_a_sidecar_is_ignored(tmp_path):
    path = tmp_path / "clip.mp4.json"
    path.write_text(json.dumps({"frames": 4, "seed": 9, INFO_KEY: {"versions": {"torch": "x"}, "bogus": 1}}))
    # a sidecar without motion_prior_space predates the choice: it drew in latent (test_config_compat)
    assert load_config_file(path) == {"frames": 4, "seed": 9, "motion_prior_space": "latent"}


def test_unknown_keys_are_named(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("frames: 4\ncolour: red\nframez: 3\n")
    with pytest.raises(UserError) as info:
        load_config_file(path)
    message = one_line(str(info.value))
    assert "colour" in message and "framez" in message


@pytest.mark.parametrize(
    "content",
    [
        "frames: [1, 2\n",  # unclosed flow sequence
        "frames: 4\n  steps: 2\n bad indent: [\n",
        "key: 'unterminated\n",
    ],
    ids=["unclosed", "indent", "quote"],
)
def test_invalid_yaml_is_a_user_error(tmp_path, content):
    path = tmp_path / "broken.yaml"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        load_config_file(path)
    assert str(path) in one_line(str(info.value))


@pytest.mark.parametrize("content", ["- frames\n- steps\n", "just a sentence\n", "42\n"], ids=["list", "str", "int"])
def test_settings_file_must_be_a_mapping(tmp_path, content):
    path = tmp_path / "odd.yaml"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        load_config_file(path)
    one_line(str(info.value))


def test_missing_file_is_a_user_error(tmp_path):
    path = tmp_path / "nowhere" / "settings.yaml"
    with pytest.raises(UserError) as info:
        load_config_file(path)
    assert str(path) in one_line(str(info.value))


def test_unreadable_file_is_a_user_error(tmp_path):
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(UserError) as info:
        load_config_file(tmp_path / "folder.yaml")
    one_line(str(info.value))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"frames: \xff\xfe\x00\x81\n")
    with pytest.raises(UserError) as info:
        load_config_file(binary)
    one_line(str(info.value))


# ---------------------------------------------------------------- merge


def test_merge_of_nothing_is_the_defaults():
    assert merge() == RenderConfig()
    assert merge({}, {}) == RenderConfig()


def test_later_layers_win():
    config = merge({"frames": 8, "steps": 10, "scheduler": "euler"}, {"frames": 12}, {"scheduler": "dpm++"})
    assert (config.frames, config.steps, config.scheduler) == (12, 10, "dpm++")


def test_none_does_not_override():
    config = merge({"frames": 8, "prompt": "a cat"}, {"frames": None, "prompt": None, "seed": None})
    assert (config.frames, config.prompt, config.seed) == (8, "a cat", None)


def test_ints_are_accepted_for_float_settings():
    config = merge({"guidance": 7, "fps": 12, "noise_alpha": 2}).validate()
    for name, expected in (("guidance", 7.0), ("fps", 12.0), ("noise_alpha", 2.0)):
        value = getattr(config, name)
        assert type(value) is float and value == expected


def test_merge_rejects_unknown_keys():
    with pytest.raises(UserError) as info:
        merge({"frames": 4}, {"colour": "red"})
    assert "colour" in one_line(str(info.value))


def test_loaded_file_merges_under_the_command_line(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("frames: 3\nsteps: 2\nfps: 12\n")
    config = merge({"fps": 24.0}, load_config_file(path), {"frames": 4}).validate()
    assert (config.frames, config.steps, config.fps) == (4, 2, 12.0)


# ---------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_files_load(path):
    values = load_config_file(path)
    assert set(values) <= set(FIELD_NAMES)
    merge(values).validate()


def test_render_default_yaml_lists_every_setting_at_its_default():
    """configs/render-default.yaml is documentation (the README points at it): it must not drift from RenderConfig."""
    import dataclasses

    import yaml

    from videodiff.config import MODEL_DEFAULT_KEYS

    path = Path(__file__).resolve().parents[1] / "configs" / "render-default.yaml"
    active = load_config_file(str(path))
    # the settings a model may record are listed commented out ("# steps: 25"), so that the file
    # never overrides a model's recorded defaults (test_render_default_yaml_keeps_the_models_defaults)
    commented = {}
    for line in path.read_text().splitlines():
        if re.match(r"# \w+: ", line):
            commented.update(yaml.safe_load(line[2:].split("  #")[0]))
    assert set(commented) == set(MODEL_DEFAULT_KEYS) and not set(commented) & set(active)
    values = {**active, **commented}
    assert set(values) == set(FIELD_NAMES)
    config = merge(values).validate()
    for f in dataclasses.fields(RenderConfig):
        if f.name != "prompt":  # the file carries an example prompt
            assert getattr(config, f.name) == f.default, f.name


def test_render_default_yaml_keeps_the_models_defaults():
    """As --config with the built-in model it renders with the model's recorded defaults (4 lcm steps,
    guidance 1, the motion prior from 0.375 drawn in pixels)."""
    from videodiff.render import resolve_render_config
    from videodiff.weights.hub import BUILTIN_MODEL, read_model_defaults

    if not (BUILTIN_MODEL / "videodiff.json").is_file():
        pytest.skip("the built-in model is not packaged")
    path = Path(__file__).resolve().parents[1] / "configs" / "render-default.yaml"
    recorded = read_model_defaults(None)
    config = resolve_render_config({}, str(path))
    keys = ("steps", "scheduler", "guidance", "motion_prior", "motion_prior_space", "frames", "height", "width", "fps")
    for key in keys:
        assert getattr(config, key) == recorded[key], key
    assert (config.steps, config.scheduler, config.guidance, config.motion_prior, config.motion_prior_space) == (
        4, "lcm", 1.0, 0.375, "pixels"
    )  # fmt: skip
    # a value set on the command line still wins
    assert resolve_render_config({"steps": 5}, str(path)).steps == 5
