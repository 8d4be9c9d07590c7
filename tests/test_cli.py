"""The ``videodiff`` command line end to end on the tiny random models (offline, CPU, fp32).

Every full render loads the model again (about a second), so renders are shared where a
test only needs to look at one: ``drawn`` below is used by four tests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import diffusers
import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke, ok, read_json
from click.testing import Result
from PIL import Image

PROMPT = "a red circle moving right"
SMALL = ("--height", "32", "--width", "32", "--frames", "4", "--steps", "2")
SHA256 = re.compile(r"[0-9a-f]{64}")


def notices(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("videodiff:")]


def all_paths(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def png_frames(folder: Path) -> np.ndarray:
    names = sorted(folder.glob("*.png"))
    assert [p.name for p in names] == [f"{i:04d}.png" for i in range(len(names))]
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in names])


def decode(path: Path) -> tuple[Fraction, np.ndarray]:
    """(frame rate, uint8 [F, H, W, 3]) of an mp4/webm file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    return Fraction(rate), frames


@pytest.fixture(autouse=True)
def _in_tmp_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


@dataclass
class Drawn:
    result: Result
    output: Path
    sidecar: Path
    seed: int


@pytest.fixture(scope="module")
def drawn(tmp_path_factory, models) -> Drawn:
    """A PNG-folder render without ``--seed``: the seed is drawn."""
    output = tmp_path_factory.mktemp("drawn") / "frames"
    result = ok(invoke("render", PROMPT, *models, *SMALL, "-o", output))
    said = [m for line in notices(result) if (m := re.fullmatch(r"videodiff: .*\bseed (\d+)\b.*", line))]
    assert len(said) == 1, result.stderr
    return Drawn(result, output, output.with_name("frames.json"), int(said[0].group(1)))


# ---------------------------------------------------------------- a render and its sidecar


def test_render_writes_mp4_and_sidecar(tmp_path, models, tiny_model, tiny_motion):
    result = ok(invoke("render", PROMPT, *models, *SMALL, "--negative", "blurry", "--seed", 3, "-o", "clip.mp4"))
    output, sidecar = tmp_path / "clip.mp4", tmp_path / "clip.mp4.json"
    assert output.is_file() and sidecar.is_file()
    assert result.stdout.splitlines() == [result.stdout.strip()]
    assert Path(result.stdout.strip()).resolve() == output.resolve()

    record = read_json(sidecar)
    expected = {
        "prompt": PROMPT,
        "negative": "blurry",
        "seed": 3,
        "frames": 4,
        "steps": 2,
        "guidance": 7.5,
        "scheduler": "ddim",
        "noise": "independent",
        "height": 32,
        "width": 32,
        "fps": 8.0,
    }
    assert {k: record.get(k) for k in expected} == expected
    assert record["model"] == str(tiny_model) and record["motion_module"] == str(tiny_motion)
    info = record["info"]
    model_sha, motion_sha = info["sources"]["model"]["sha256"], info["sources"]["motion_module"]["sha256"]
    assert SHA256.fullmatch(model_sha) and SHA256.fullmatch(motion_sha) and model_sha != motion_sha
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["diffusers"] == diffusers.__version__
    assert info["frames_written"] == 4

    rate, frames = decode(output)
    assert rate == 8
    assert frames.shape == (4, 32, 32, 3)


def test_drawn_seed_is_announced_and_recorded(drawn):
    assert 0 <= drawn.seed < 2**64
    assert read_json(drawn.sidecar)["seed"] == drawn.seed
    assert png_frames(drawn.output).shape == (4, 32, 32, 3)


def test_sidecar_as_config_renders_the_same_frames(drawn, tmp_path):
    # No prompt, no model, no seed on the command line: all of it comes from the sidecar.
    again = tmp_path / "again"
    result = ok(invoke("render", "--config", drawn.sidecar, "-o", again))
    assert not [line for line in notices(result) if "seed" in line]  # the seed was given, not drawn
    np.testing.assert_array_equal(png_frames(again), png_frames(drawn.output))
    assert read_json(tmp_path / "again.json")["seed"] == drawn.seed


def test_announced_seed_renders_the_same_frames(drawn, models, tmp_path):
    ok(invoke("render", PROMPT, *models, *SMALL, "--seed", drawn.seed, "-o", "again"))
    np.testing.assert_array_equal(png_frames(tmp_path / "again"), png_frames(drawn.output))


@pytest.mark.parametrize(
    "options", [("--noise", "mixed", "--noise-alpha", "2"), ("--noise", "progressive")], ids=["mixed", "progressive"]
)
def test_correlated_noise_renders_other_frames(drawn, models, tmp_path, options):
    ok(invoke("render", PROMPT, *models, *SMALL, "--seed", drawn.seed, *options, "-o", "noisy"))
    frames = png_frames(tmp_path / "noisy")
    reference = png_frames(drawn.output)
    assert frames.shape == reference.shape
    assert not np.array_equal(frames, reference)
    record = read_json(tmp_path / "noisy.json")
    assert record["noise"] == options[1]
    if "--noise-alpha" in options:
        assert record["noise_alpha"] == 2.0


def test_default_output_name_and_model_from_environment(tmp_path, tiny_model, tiny_motion):
    result = ok(
        invoke(
            "render",
            "A Red Circle, moving!",
            "--motion-module",
            tiny_motion,
            *SMALL,
            "--seed",
            5,
            "-q",
            env={"VIDEODIFF_MODEL": str(tiny_model)},
        )
    )
    videos = sorted((tmp_path / "outputs").glob("*.mp4"))
    assert len(videos) == 1
    assert re.fullmatch(r"\d{8}[-_T]?\d{4,6}-a-red-circle-moving-5\.mp4", videos[0].name), videos[0].name
    assert Path(result.stdout.strip()).resolve() == videos[0].resolve()
    record = read_json(videos[0].with_name(videos[0].name + ".json"))
    assert record["model"] == str(tiny_model)
    assert not notices(result)  # -q: no notices


# ---------------------------------------------------------------- overwriting


def test_existing_output_is_kept_unless_overwrite(tmp_path, models):
    output = tmp_path / "clip.webm"
    output.write_bytes(b"\x1a\x45\xdf\xa3 an older video")  # a WebM (what --overwrite may replace)
    before = all_paths(tmp_path)
    message = assert_user_error(invoke("render", PROMPT, *models, *SMALL, "--seed", 1, "-o", output.name))
    assert "clip.webm" in message and "--overwrite" in message
    assert output.read_bytes().endswith(b"an older video")
    assert all_paths(tmp_path) == before

    result = ok(invoke("render", PROMPT, *models, *SMALL, "--seed", 1, "-o", output.name, "--overwrite", "-q"))
    assert not notices(result)
    assert not output.read_bytes().endswith(b"an older video")
    rate, frames = decode(output)
    assert rate == 8 and frames.shape == (4, 32, 32, 3)
    assert (tmp_path / "clip.webm.json").is_file()


# ---------------------------------------------------------------- user errors


def _unwritable(tmp_path: Path) -> list[str]:
    (tmp_path / "a-file").write_text("a regular file, not a folder")
    return ["-o", "a-file/clip.mp4"]


def _unknown_key(tmp_path: Path) -> list[str]:
    (tmp_path / "settings.yaml").write_text("steps: 2\ncolour: red\n")
    return ["--config", "settings.yaml"]


# id -> (options appended to a valid command line, or a function of tmp_path giving them; words the message names)
BAD_INPUTS = {
    "frames-0": (["--frames", "0"], ["--frames"]),
    "frames-negative": (["--frames", "-3"], ["--frames"]),
    "steps-0": (["--steps", "0"], ["--steps"]),
    "height-100": (["--height", "100"], ["--height"]),
    "width-33": (["--width", "33"], ["--width"]),
    "guidance-nan": (["--guidance", "nan"], ["--guidance"]),
    "guidance-negative": (["--guidance", "-1"], ["--guidance"]),
    "scheduler-bogus": (["--scheduler", "bogus"], ["bogus", "ddim"]),
    "noise-bogus": (["--noise", "bogus"], ["bogus", "independent"]),
    "model-missing": (["--model", "/does/not/exist"], ["/does/not/exist"]),
    "unwritable-output": (_unwritable, ["a-file"]),
    "frames-over-motion-limit": (["--frames", "40", "--window", "33"], ["32"]),
    "frames-over-ceiling": (["--frames", "1025"], ["1024"]),
    "crf-99": (["--crf", "99"], ["--crf"]),
    "config-unknown-key": (_unknown_key, ["colour"]),
    "unknown-extension": (["-o", "clip.avi", "-q"], [".avi"]),
    "frames-not-a-number": (["--frames", "many"], ["--frames"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, models):
    options, words = BAD_INPUTS[case]
    base = ["render", PROMPT, *SMALL, "--seed", "1", "-o", "clip.mp4"]
    args = [*base, *models, *(options(tmp_path) if callable(options) else options)]
    before = all_paths(tmp_path)
    message = assert_user_error(invoke(*args))
    for word in words:
        assert word in message, message
    if case in ("height-100", "width-33"):
        nearest = [int(n) for n in re.findall(r"\b\d+\b", message) if int(n) not in (100, 33)]
        assert nearest and all(n % 8 == 0 and n > 0 for n in nearest), message
    if case == "height-100":
        assert "96" in message or "104" in message
    assert all_paths(tmp_path) == before


@pytest.mark.parametrize("case", ["existing-output", "model-missing", "unwritable-output", "frames-over-motion-limit"])
def test_user_error_without_seed_is_still_one_line(case, tmp_path, models):
    args = ["render", PROMPT, *SMALL, "-o", "clip.mp4"]
    if case == "existing-output":
        (tmp_path / "clip.mp4").write_bytes(b"old")
        args += models
    elif case == "model-missing":
        args += ["--model", "/does/not/exist"]
    elif case == "unwritable-output":
        args += [*models, *_unwritable(tmp_path)]
    elif case == "frames-over-motion-limit":
        args += [*models, "--frames", "40", "--window", "33"]
    assert_user_error(invoke(*args))


def test_unknown_extension_fails_before_rendering(tmp_path, models):
    message = assert_user_error(invoke("render", PROMPT, *models, *SMALL, "--seed", 1, "-o", "clip.avi"))
    assert ".avi" in message
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("setting", ["prompt: 123", "seed: true"])
def test_wrongly_typed_config_value_is_a_user_error(setting, tmp_path, models):
    (tmp_path / "settings.yaml").write_text(setting + "\n")
    prompt = [] if setting.startswith("prompt") else [PROMPT]
    seed = [] if setting.startswith("seed") else ["--seed", "1"]
    assert_user_error(
        invoke("render", *prompt, *models, *SMALL, *seed, "--config", "settings.yaml", "-o", "clip.mp4", "-q")
    )


# ---------------------------------------------------------------- precedence


def test_config_file_and_model_defaults_under_the_command_line(tmp_path, tiny_model, tiny_motion):
    model = tmp_path / "sd-with-defaults"
    shutil.copytree(tiny_model, model)
    (model / "videodiff.json").write_text(json.dumps({"defaults": {"height": 24, "width": 40, "fps": 12}}))
    (tmp_path / "settings.yaml").write_text("frames: 3\nsteps: 2\n")
    common = ("render", PROMPT, "--model", model, "--motion-module", tiny_motion, "--seed", 4)

    # the file's steps, the command line's frames, the model's size and frame rate
    ok(invoke(*common, "--config", "settings.yaml", "--frames", 4, "-o", "clip.mp4"))
    record = read_json(tmp_path / "clip.mp4.json")
    assert (record["frames"], record["steps"]) == (4, 2)
    assert (record["height"], record["width"], record["fps"]) == (24, 40, 12.0)
    rate, frames = decode(tmp_path / "clip.mp4")
    assert rate == 12
    assert frames.shape == (4, 24, 40, 3)

    # the command line beats the model's recorded height
    ok(invoke(*common, "--frames", 2, "--steps", 2, "--height", 32, "-o", "tall"))
    assert png_frames(tmp_path / "tall").shape == (2, 32, 40, 3)
    record = read_json(tmp_path / "tall.json")
    assert (record["height"], record["width"], record["fps"]) == (32, 40, 12.0)


# ---------------------------------------------------------------- notices


def test_negative_prompt_without_guidance_gives_a_notice(tmp_path, models):
    result = ok(
        invoke("render", PROMPT, *models, *SMALL, "--seed", 2, "--guidance", 1, "--negative", "x", "-o", "a.gif")
    )
    assert any("negative prompt" in line for line in notices(result)), result.stderr
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 4
        assert gif.size == (32, 32)
    assert read_json(tmp_path / "a.gif.json")["negative"] == "x"


# ---------------------------------------------------------------- help


def test_module_help_has_an_example():
    done = subprocess.run(
        [sys.executable, "-m", "videodiff", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\s*videodiff render \S", done.stdout, re.MULTILINE), done.stdout
    assert "Traceback" not in done.stderr


def test_render_help_has_an_example():
    result = ok(invoke("render", "--help"))
    assert "Example" in result.stdout
    assert re.search(r"^\s*videodiff render \S", result.stdout, re.MULTILINE), result.stdout
    for flag in ("--frames", "--seed", "--config", "--overwrite", "--noise"):
        assert flag in result.stdout


def test_failed_render_leaves_no_new_folders(tmp_path):
    before = all_paths(tmp_path)
    assert_user_error(invoke("render", PROMPT, "--model", "/does/not/exist", "--seed", 1, "-o", "sub/dir/x.mp4"))
    assert_user_error(invoke("render", PROMPT, "--model", "/does/not/exist", "--seed", 1))  # default outputs/
    assert all_paths(tmp_path) == before
