"""The built-in shapes model: shipped inside the package, the default of `render` and `load_pipeline()`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import assert_user_error, invoke, ok, read_json
from safetensors import safe_open

from videodiff import load_pipeline
from videodiff.motion_prior import PRIOR_FILE
from videodiff.shapes import parse_prompt, render_clip
from videodiff.shapes.evaluate import detect, vae_roundtrip
from videodiff.weights import hub as models

pytestmark = pytest.mark.skipif(
    not (models.BUILTIN_MODEL / "model_index.json").is_file(), reason="the built-in model is not packaged"
)


@pytest.fixture(scope="module")
def builtin_pipe():
    return load_pipeline(device="cpu")


def test_builtin_model_is_small_fp16_safetensors():
    files = [p for p in models.BUILTIN_MODEL.rglob("*") if p.is_file()]
    # 20.5 MB of model, 5.7 MB of its ControlNet and 5.7 MB of the 16-step motion modules the default ones were
    # distilled from (docs/guides/builtin-model.md): small enough to ship in the wheel
    assert sum(p.stat().st_size for p in files) <= 36 * 1024**2
    weights = [p for p in files if p.suffix not in (".json", ".txt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    for path in weights:
        if path.name == PRIOR_FILE:  # the motion prior's 29 kB of regression weights stay fp32
            continue
        with safe_open(str(path), "pt") as f:
            assert all(f.get_slice(k).get_dtype() == "F16" for k in f.keys()), path


def test_load_pipeline_without_arguments_is_the_builtin_model(builtin_pipe):
    assert builtin_pipe.parts.sources["model"]["id"] == str(models.BUILTIN_MODEL)
    assert builtin_pipe.default_size() == (64, 64) and builtin_pipe.vae_scale == 4
    defaults = builtin_pipe.parts.defaults
    assert {"steps", "guidance", "scheduler", "fps"} <= set(defaults)
    # settings left out of a call are the model's recorded defaults
    result = builtin_pipe("a red circle moving right", seed=0, output_type="latent")
    assert result.settings["steps"] == defaults["steps"] and result.settings["scheduler"] == defaults["scheduler"]
    assert result.latents.shape == (1, 4, 16, 16, 16)


def test_builtin_vae_keeps_colour_and_shape(builtin_pipe):
    rng = np.random.default_rng(5)
    for color, shape, direction in [("orange", "triangle", "up"), ("cyan", "circle", "left")]:
        clip = render_clip(color, shape, direction, rng=rng)
        back = vae_roundtrip(builtin_pipe, clip)
        assert np.abs(back.astype(int) - clip).mean() < 8  # mostly the background's noise, which it smooths
        found = detect(back)
        assert (found.color, found.shape, found.direction) == (color, shape, direction)


PROMPTS = [
    "a green square moving left",
    "a purple triangle moving down",
    "a orange circle moving up",
    "a white triangle moving right",
]


def test_builtin_model_draws_what_the_prompt_asks(builtin_pipe):
    """Colour, direction and presence for one seed of each direction (the evaluation measures the rates)."""
    shapes_right = 0
    for prompt in PROMPTS:
        color, shape, direction = parse_prompt(prompt)
        result = builtin_pipe(prompt, seed=0)
        assert result.frames.shape == (16, 64, 64, 3)
        assert result.settings["motion_prior"] > 0  # the model's default: start from its motion prior
        found = detect(result.frames)
        assert found.present and (found.color, found.direction) == (color, direction), prompt
        shapes_right += found.shape == shape
    assert shapes_right >= 3  # its known error: squares drawn with round corners, read as circles


def test_builtin_model_follows_an_explicit_motion(builtin_pipe):
    for motion, direction in (((-2.5, 0.0), "left"), ((0.0, 2.5), "down")):
        result = builtin_pipe("a red circle moving right", seed=1, motion=motion)
        assert result.settings["motion"] == motion
        assert detect(result.frames).direction == direction


def test_render_without_model_uses_builtin(tmp_path):
    out = tmp_path / "circle.gif"
    ok(invoke("render", "a red circle moving right", "--seed", 3, "-o", out, "-q"))
    import imageio.v3 as iio

    frames = iio.imread(out)
    assert frames.shape[:3] == (16, 64, 64)
    side = read_json(out.with_name(out.name + ".json"))
    assert side["model"] is None and side["info"]["sources"]["model"]["id"] == str(models.BUILTIN_MODEL)
    assert side["steps"] == json.loads((models.BUILTIN_MODEL / "videodiff.json").read_text())["defaults"]["steps"]
    # the sidecar re-renders the same video with no model named anywhere
    again = tmp_path / "again.gif"
    ok(invoke("render", "--config", out.with_name(out.name + ".json"), "-o", again, "-q"))
    assert np.array_equal(iio.imread(again), frames)


def test_shapes_teacher_is_the_16_step_model_by_name(tmp_path):
    """The default motion modules are the 4-step student; ``--motion-module shapes-teacher`` renders with the 16-step
    ones it was distilled from, at their own recorded sampling; the sidecar names it and renders the same video."""
    import imageio.v3 as iio

    recorded = json.loads((models.BUILTIN_MODEL / "videodiff.json").read_text())["defaults"]
    assert (recorded["steps"], recorded["scheduler"], recorded["guidance"]) == (4, "lcm", 1.0)
    out = tmp_path / "teacher.gif"
    prompt = "a red circle moving right"
    ok(invoke("render", prompt, "--seed", 3, "--motion-module", "shapes-teacher", "-o", out, "-q"))
    side = read_json(out.with_name(out.name + ".json"))
    assert (side["steps"], side["scheduler"], side["guidance"], side["motion_module"]) == (16, "dpm++", 3.0,
                                                                                          "shapes-teacher")  # fmt: skip
    assert side["info"]["sources"]["motion_module"]["id"] == "shapes-teacher"
    again = tmp_path / "again.gif"
    ok(invoke("render", "--config", out.with_name(out.name + ".json"), "-o", again, "-q"))
    assert np.array_equal(iio.imread(again), iio.imread(out))
    student = tmp_path / "student.gif"
    ok(invoke("render", prompt, "--seed", 3, "-o", student, "-q"))
    assert not np.array_equal(iio.imread(student), iio.imread(out))


def test_missing_builtin_model_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "BUILTIN_MODEL", tmp_path / "gone")
    assert_user_error(invoke("render", "a red circle moving right", "-o", tmp_path / "x.gif"))


def test_vocabulary_is_recorded_and_listed_where_a_newcomer_looks():
    """The model's videodiff.json vocabulary is the world's; render --help and the README list every word."""
    from pathlib import Path

    from videodiff.shapes import ALL_COMBOS, COLORS, DIRECTIONS, HELDOUT, SHAPES, prompt_of

    vocabulary = models.model_vocabulary(None)
    assert vocabulary["grammar"] == "a {color} {shape} moving {direction}"
    assert (vocabulary["color"], vocabulary["shape"], vocabulary["direction"]) == (
        list(COLORS), list(SHAPES), list(DIRECTIONS),
    )  # fmt: skip
    assert set(vocabulary["heldout"]) == {prompt_of(*c) for c in ALL_COMBOS if c in HELDOUT}
    help_text = " ".join(ok(invoke("render", "--help")).stdout.split())
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    for text in (help_text, readme):
        assert vocabulary["grammar"] in text
        for word in [*COLORS, *SHAPES, *DIRECTIONS, *vocabulary["heldout"]]:
            assert word in text, word


def test_unknown_words_are_named_once(builtin_pipe, caplog):
    quick = {"steps": 2, "motion_prior": 0, "guidance": 1, "output_type": "latent", "seed": 0}
    with caplog.at_level("INFO", logger="videodiff"):
        builtin_pipe("a dog running on the beach", **quick)
        builtin_pipe("a dog running on the beach", seed=1, **{k: v for k, v in quick.items() if k != "seed"})
        builtin_pipe("a red circle moving right", **quick)
    told = [r.getMessage() for r in caplog.records if "never saw" in r.getMessage()]
    assert len(told) == 1, told
    assert "dog, running, on, the, beach" in told[0] and "a {color} {shape} moving {direction}" in told[0]
    assert "circle" in told[0] and "cyan" in told[0]


def test_model_shapes_means_the_builtin_model_everywhere():
    from videodiff.render import resolve_render_config
    from videodiff.weights.models import load_model_parts

    recorded = models.read_model_defaults(None)
    for given in ({"model": "shapes"}, {}):
        config = resolve_render_config({"prompt": "a red circle moving right", **given})
        assert (config.steps, config.scheduler, config.motion_prior) == (
            recorded["steps"], recorded["scheduler"], recorded["motion_prior"],
        )  # fmt: skip
    assert models.model_source("shapes") == models.model_source(None) == str(models.BUILTIN_MODEL)
    parts = load_model_parts("shapes")
    assert parts.sources["model"]["id"] == str(models.BUILTIN_MODEL) and parts.motion_prior is not None
    for command in (("train",), ("eval", "shapes")):
        assert "shapes (the default)" in " ".join(ok(invoke(*command, "--help")).stdout.split())


def test_data_shapes_help_example_trains_the_builtin_model(tmp_path, monkeypatch):
    """The commands `videodiff data shapes --help` shows run as printed (smaller: 4 clips, 1 step): motion modules,
    and a ControlNet on blob maps."""
    import shlex

    monkeypatch.chdir(tmp_path)
    text = ok(invoke("data", "shapes", "--help")).stdout.replace("\\\n", " ")  # a command continued on the next line
    lines = [line.strip() for line in text.splitlines()]
    commands = [shlex.split(line) for line in lines if line.startswith(("videodiff data shapes", "videodiff train"))]
    assert [c[1] for c in commands] == ["data", "train", "data", "train"] and "--model" not in commands[1]
    small = {"--count": "4", "--steps": "1"}
    for command in commands:
        args = [small.get(prev, arg) for prev, arg in zip(["", *command[1:]], command[1:])]
        result = ok(invoke(*args))
    assert "built-in shapes model" in result.stderr
    assert (tmp_path / "runs" / "shapes" / "motion_module" / "config.json").is_file()
    assert (tmp_path / "runs" / "blobs" / "controlnet" / "config.json").is_file()


def test_truncation_notice_names_whole_words(builtin_pipe, caplog):
    # the built-in text encoder reads 12 tokens; the old notice quoted the tokens past them: 'nny beach'
    with caplog.at_level("INFO", logger="videodiff"):
        builtin_pipe.encode("a red circle moving right on a sunny beach")
    cut = [r.getMessage() for r in caplog.records if "cut" in r.getMessage()]
    assert len(cut) == 1 and cut[0].endswith("these words were cut: 'sunny beach'"), cut


def test_notices_go_above_a_progress_bar(monkeypatch, capsys):
    """A notice during a tqdm bar goes through tqdm.write (above the bar), not into the bar's line."""
    import tqdm

    from videodiff.log import notice, setup_cli_logging

    written = []
    monkeypatch.setattr(tqdm.tqdm, "write", classmethod(lambda cls, s, file=None, **kw: written.append(s)))
    setup_cli_logging()
    try:
        notice("something to know")
    finally:
        import logging

        logger = logging.getLogger("videodiff")
        for handler in [h for h in logger.handlers if getattr(h, "_videodiff_cli", False)]:
            logger.removeHandler(handler)
        logger.propagate = True
    assert written == ["videodiff: something to know"]


def test_motion_prior_start_is_said_once(builtin_pipe, caplog):
    """The progress bar counts the steps that run (8 of 12): say once where sampling starts."""
    with caplog.at_level("INFO", logger="videodiff"):
        for seed in (0, 1):
            builtin_pipe("a red circle moving right", seed=seed, steps=6, motion_prior=0.5, output_type="latent")
    told = [r.getMessage() for r in caplog.records if "steps in" in r.getMessage()]
    assert told == ["starting 3 of 6 steps in, from the motion prior"]
