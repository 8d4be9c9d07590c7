"""Issue 30's tracebacks and smaller findings: settings files parsed within limits (depth, aliases, expanded
size), values that YAML cannot build (huge integers, impossible dates), numbers with bounds checked before any
work, one stderr line with no warnings, duplicate keyframes, and images opened only in the formats videodiff
reads. Each case: exit 2, one stderr line, no traceback, and (where it could) before any model loads."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_helpers import assert_user_error, invoke
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving right"
NO_MODEL = ("--model", "/nonexistent/model", "--motion-module", "/nonexistent/motion")  # an error names it if read


@pytest.fixture(autouse=True)
def _in_tmp_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


def alias_bomb(key: str, item: bool = False) -> str:
    """A ~360-byte YAML "billion laughs": nine levels of nine aliases, 9^9 strings once expanded."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append(f"{key}: *i")
    text = "\n".join(lines) + "\n"
    if item:  # a prompt-file item: the anchors live in the first item, the bomb in the second
        return "- " + text.replace("\n", "\n  ").rstrip() + "\n"
    return text


# ---------------------------------------------------------------- 7. alias bombs and values never shown in full


@pytest.mark.parametrize("key", ["prompt", "lora", "seed"])
def test_an_alias_bomb_in_a_config_is_one_line_before_loading(tmp_path, key):
    (tmp_path / "bomb.yaml").write_text(alias_bomb(key))
    message = assert_user_error(invoke("render", PROMPT, *NO_MODEL, "--config", "bomb.yaml"))
    assert "too complex" in message and len(message) < 300


def test_an_alias_bomb_in_a_prompt_file_item_is_one_line(tmp_path):
    (tmp_path / "bomb.yaml").write_text(alias_bomb("prompt", item=True))
    message = assert_user_error(invoke("render", *NO_MODEL, "--prompt-file", "bomb.yaml", "-o", "batch"))
    assert "too complex" in message


def test_an_alias_bomb_in_a_train_config_is_one_line(tmp_path):
    (tmp_path / "bomb.yaml").write_text(alias_bomb("data"))
    message = assert_user_error(invoke("train", "--config", "bomb.yaml", "--output", "run"))
    assert "too complex" in message
    assert not (tmp_path / "run").exists()


def test_loading_an_alias_bomb_stays_small(tmp_path):
    """In a process limited to 1 GiB of address space (the bomb expands to several GB), loading fails in one line."""
    (tmp_path / "bomb.yaml").write_text(alias_bomb("prompt"))
    script = textwrap.dedent(
        """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from videodiff.config import load_config_file
        from videodiff.errors import UserError
        try:
            load_config_file(sys.argv[1])
        except UserError as exc:
            print(exc)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "bomb.yaml")],
        env={"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "too complex" in proc.stdout  # refused before anything large is built (the subprocess's timeout: a hang)


def test_a_shared_value_in_a_type_error_is_shown_short():
    """A value that shares itself many times over (what aliases build) is quoted in a few characters."""
    from videodiff.config import RenderConfig
    from videodiff.errors import UserError

    value = ["lol"] * 9
    for _ in range(8):
        value = [value] * 9
    with pytest.raises(UserError) as caught:
        RenderConfig(prompt=value).validate()  # type: ignore[arg-type]
    assert len(str(caught.value)) < 200
    with pytest.raises(UserError) as caught:
        RenderConfig(seed="9" * 1_000_000).validate()  # type: ignore[arg-type]
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("a: &a [1]\n" + "".join(f"k{i}: *a\n" for i in range(101)), "more than 100 aliases"),
        ("prompt: " + "[" * 200 + "1" + "]" * 200, "nested more than 100"),
    ],
    ids=["aliases", "depth"],
)
def test_settings_documents_have_limits(tmp_path, text, named):
    (tmp_path / "x.yaml").write_text(text)
    assert named in assert_user_error(invoke("render", PROMPT, *NO_MODEL, "--config", "x.yaml"))


def test_a_few_aliases_still_work(tmp_path):
    from videodiff.config import load_config_file

    (tmp_path / "x.yaml").write_text("prompt: &p a red circle\nnegative: *p\nlora: &l [a.safetensors]\n")
    assert load_config_file(tmp_path / "x.yaml") == {
        "prompt": "a red circle",
        "negative": "a red circle",
        "lora": ["a.safetensors"],
    }


# ---------------------------------------------------------------- 11. values YAML cannot build


UNREADABLE = {"huge-int": "9" * 5000, "bad-date": "2001-02-30"}


@pytest.mark.parametrize("value", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_unreadable_values_in_a_config_are_one_line(tmp_path, value):
    (tmp_path / "c.yaml").write_text(f"seed: {value}\n")
    message = assert_user_error(invoke("render", PROMPT, *NO_MODEL, "--config", "c.yaml"))
    assert "cannot be read" in message and len(message) < 300


@pytest.mark.parametrize("value", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_unreadable_values_in_a_sidecar_are_one_line(tmp_path, value):
    (tmp_path / "x.json").write_text(f'{{"seed": {value}, "info": {{}}}}\n')
    assert "cannot be read" in assert_user_error(invoke("render", PROMPT, *NO_MODEL, "--config", "x.json"))


@pytest.mark.parametrize("value", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_unreadable_values_in_a_prompt_file_are_one_line(tmp_path, value):
    (tmp_path / "p.yaml").write_text(f"- prompt: a red circle\n  seed: {value}\n")
    message = assert_user_error(invoke("render", *NO_MODEL, "--prompt-file", "p.yaml", "-o", "batch"))
    assert "cannot be read" in message


@pytest.mark.parametrize("value", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_unreadable_values_in_a_train_config_are_one_line(tmp_path, value):
    (tmp_path / "t.yaml").write_text(f"seed: {value}\n")
    assert "cannot be read" in assert_user_error(invoke("train", "--config", "t.yaml", "--output", "run"))


@pytest.mark.parametrize("value", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_unreadable_values_in_convert_defaults_are_one_line(tmp_path, value):
    (tmp_path / "m.safetensors").write_bytes(b"")
    message = assert_user_error(
        invoke("convert", "m.safetensors", "out", "--to", "diffusers", "--default", f"frames={value}")
    )
    assert "--frames must be" in message and len(message) < 300
    assert not (tmp_path / "out").exists()


def test_set_values_are_read_within_the_limits():
    from videodiff.config import SampleSettings, parse_settings
    from videodiff.errors import UserError

    with pytest.raises(UserError, match="--seed must be"):
        parse_settings([f"seed={'9' * 5000}"], SampleSettings)
    with pytest.raises(UserError, match="--seed must be"):
        parse_settings(["seed=2001-02-30"], SampleSettings)


# ---------------------------------------------------------------- a fuzz of the settings files' parser

SCALARS = [
    "1",
    "-3",
    "0.5",
    "1e-4",
    "true",
    "null",
    "a red circle",
    "2001-02-30",
    "2001-02-03",
    "9" * 4400,
    "'quoted'",
    "~",
    ".inf",
    "0x1F",
    "0o17",
    "1_000",
    "2001-02-03T04:05:06Z",
    "9999-99-99",
]


@st.composite
def yaml_documents(draw) -> str:
    """Random YAML: nested flow collections, anchors and aliases, odd scalars, and broken syntax."""
    anchors: list[str] = []

    def node(depth: int) -> str:
        kind = draw(st.sampled_from(["scalar", "list", "map", "alias", "anchor"] if depth < 6 else ["scalar"]))
        if kind == "alias" and anchors:
            return "*" + draw(st.sampled_from(anchors))
        if kind == "anchor":
            name = f"x{len(anchors)}"
            anchors.append(name)
            return f"&{name} " + node(depth + 1)
        if kind == "list":
            return "[" + ", ".join(node(depth + 1) for _ in range(draw(st.integers(0, 9)))) + "]"
        if kind == "map":
            keys = draw(st.lists(st.sampled_from(["prompt", "seed", "lora", "fps", "k", "1"]), max_size=4, unique=True))
            return "{" + ", ".join(f"{k}: {node(depth + 1)}" for k in keys) + "}"
        return draw(st.sampled_from(SCALARS))

    deep = draw(st.integers(0, 3)) * 60
    body = "[" * deep + node(0) + "]" * deep
    return draw(
        st.sampled_from([body, f"prompt: {body}\n", f"- {body}\n", body + draw(st.sampled_from(["", "]", "{"]))])
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(yaml_documents())
def test_fuzz_settings_files_raise_only_user_errors(text):
    """Parsing, then loading as a config and validating: a one-line UserError or a result, nothing else."""
    from videodiff.config import load_config_file, merge, parse_yaml
    from videodiff.errors import UserError

    path = Path("fuzz.yaml")
    path.write_text(text)
    for read in (lambda: parse_yaml(text, path, "config file"), lambda: merge(load_config_file(path)).validate()):
        try:
            read()
        except UserError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 2000


# ---------------------------------------------------------------- 11. numbers, paths and files past their limits


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("render", PROMPT, "--fps", "0.0001", "-o", "x.gif"), "--fps must be a number from 0.1 to 240"),
        (("render", PROMPT, "--fps", "100000", "-o", "x.gif"), "--fps must be a number from 0.1 to 240"),
        (("vid2vid", "clip.gif", PROMPT, "--stride", "1000000000000"), "--stride must be a whole number from 1 to"),
        (("train", "--data", "d", "--output", "run", "--stride", "1000000000000"), "--stride must be at most 1000"),
    ],
    ids=["fps-tiny", "fps-huge", "vid2vid-stride", "train-stride"],
)
def test_numbers_past_their_limits_are_refused_before_any_work(tmp_path, args, named):
    (tmp_path / "clip.gif").write_bytes(b"GIF89a")
    models = NO_MODEL if args[0] != "train" else ()
    message = assert_user_error(invoke(*args, *models))
    assert named in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif"]


def test_limits_are_in_the_fields_metadata():
    from videodiff.config import MAX_FPS, MAX_STRIDE, MIN_FPS, RenderConfig, TrainConfig, options

    by_name = {o.name: o for o in options(RenderConfig)}
    assert (by_name["fps"].min, by_name["fps"].max) == (MIN_FPS, MAX_FPS)
    assert by_name["stride"].max == MAX_STRIDE
    assert {o.name: o for o in options(TrainConfig)}["stride"].max == MAX_STRIDE


@pytest.mark.parametrize("key", ["output", "lora", "negative"])
def test_a_nul_in_a_settings_file_path_or_text_is_one_line(tmp_path, key):
    value = '"a\\0b.gif"' if key != "lora" else '["a\\0b.safetensors"]'
    (tmp_path / "c.yaml").write_text(f"{key}: {value}\n")
    message = assert_user_error(invoke("render", PROMPT, *NO_MODEL, "--config", "c.yaml"))
    assert message == f"--{key} contains a NUL character"


def test_a_nul_in_a_train_output_is_one_line(tmp_path):
    (tmp_path / "t.yaml").write_text('output: "a\\0b"\ndata: d\n')
    assert "NUL" in assert_user_error(invoke("train", "--config", "t.yaml"))


def deep_safetensors(path: Path, depth: int = 100_000) -> Path:
    header = b'{"x": {"dtype": "F32", "shape": ' + b"[" * depth + b"]" * depth + b', "data_offsets": [0, 0]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def test_a_deeply_nested_safetensors_header_is_one_line(tmp_path):
    from videodiff.errors import UserError
    from videodiff.weights.safetensors_header import read_header

    deep = deep_safetensors(tmp_path / "deep.safetensors")
    with pytest.raises(UserError, match="nested too deeply"):
        read_header(deep)
    assert "nested too deeply" in assert_user_error(invoke("inspect", deep))


def test_a_deeply_nested_motion_module_header_is_one_line(tmp_path, tiny_model):
    deep = deep_safetensors(tmp_path / "deep.safetensors")
    args = ("render", PROMPT, "--model", tiny_model, "--motion-module", deep, "-o", "x.gif", "--steps", "1")
    assert "not a readable safetensors file" in assert_user_error(invoke(*args))
    assert not (tmp_path / "x.gif").exists()


@pytest.mark.parametrize(
    "state",
    ["[]", "{}", '{"step": 2, "positions": 3, "nan_total": 0}', '{"step": "2", "positions": [0], "nan_total": 0}'],
    ids=["list", "empty", "positions-not-a-list", "step-text"],
)
def test_a_resume_state_that_is_not_ours_is_one_line(tmp_path, state):
    import torch
    from safetensors.torch import save_file

    from videodiff.errors import UserError
    from videodiff.training.checkpoints import load_checkpoint

    checkpoint = tmp_path / "step-2"
    checkpoint.mkdir()
    save_file({}, str(checkpoint / "trainable.safetensors"))
    torch.save({}, checkpoint / "optimizer.pt")
    torch.save({}, checkpoint / "lr_scheduler.pt")
    (checkpoint / "state.json").write_text(state)
    with pytest.raises(UserError, match="state.json is not what videodiff writes") as err:
        load_checkpoint(checkpoint)
    assert "\n" not in str(err.value)


def test_our_own_resume_state_is_read(tmp_path):
    import torch
    from safetensors.torch import save_file

    from videodiff.training.checkpoints import load_checkpoint

    checkpoint = tmp_path / "step-2"
    checkpoint.mkdir()
    save_file({}, str(checkpoint / "trainable.safetensors"))
    torch.save({}, checkpoint / "optimizer.pt")
    torch.save({}, checkpoint / "lr_scheduler.pt")
    state = {"step": 2, "positions": [4], "nan_total": 0, "world": 1, "trainable": "motion"}
    (checkpoint / "state.json").write_text(json.dumps(state))
    assert load_checkpoint(checkpoint)["state"] == state


@pytest.mark.parametrize("output", ["file.txt", "/dev/null"])
def test_train_output_that_is_a_file_or_device_is_one_line(tmp_path, output):
    (tmp_path / "file.txt").write_text("mine")
    message = assert_user_error(invoke("train", "--data", "d", "--output", output))
    assert "is not a folder" in message
    assert (tmp_path / "file.txt").read_text() == "mine"


# ---------------------------------------------------------------- 17. one stderr line, no warnings beside it


def run_cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """The real process: warnings reach stderr there (pytest captures them in-process)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VIDEODIFF_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONWARNINGS", None)
    command = [sys.executable, "-m", "videodiff", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch code-ran",))


@pytest.mark.parametrize("where", ["motion-module", "model-folder"])
def test_a_refused_pickle_prints_only_the_error(tmp_path, tiny_model, tiny_motion, where):
    hostile = pickle.dumps({"weight": RunsCode()}, protocol=4)
    model, motion = tiny_model, tiny_motion
    if where == "motion-module":
        motion = tmp_path / "motion.bin"
        motion.write_bytes(hostile)
    else:
        model = tmp_path / "model"
        shutil.copytree(tiny_model, model)
        (model / "unet" / "diffusion_pytorch_model.safetensors").unlink()
        (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(hostile)
    small = ("--height", "16", "--width", "16", "--frames", "2", "--steps", "1", "-q", "-o", "x.gif")
    proc = run_cli("render", PROMPT, "--model", model, "--motion-module", motion, *small, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("videodiff: error: "), lines
    assert not (tmp_path / "code-ran").exists() and not (tmp_path / "x.gif").exists()


# ---------------------------------------------------------------- 18. --prompt-at's length, duplicate keyframes


def test_a_prompt_at_text_has_the_prompts_limit(tmp_path):
    message = assert_user_error(invoke("render", PROMPT, *NO_MODEL, "--prompt-at", "1:" + "x" * 10_001))
    assert message.startswith("--prompt-at 1 is 10001 characters long; at most 10000")


def test_a_prompt_at_text_in_a_config_has_the_prompts_limit(tmp_path):
    (tmp_path / "c.yaml").write_text("prompt_at:\n  1: " + "x" * 20_000 + "\n")
    assert "at most 10000" in assert_user_error(invoke("render", PROMPT, *NO_MODEL, "--config", "c.yaml"))


def test_a_prompt_at_frame_given_twice_is_refused(tmp_path):
    message = assert_user_error(invoke("render", PROMPT, *NO_MODEL, "--prompt-at", "1:a", "--prompt-at", "1:b"))
    assert "frame 1 is given twice" in message


@pytest.mark.parametrize(
    ("pins", "named"),
    [
        (("0:b.png",), "frame 0 is given twice"),  # IMAGE is 0:IMAGE
        (("7:b.png", "-1:c.png"), "frames 7 and -1 are the same frame of 8"),
        (("-8:b.png",), "frames 0 and -8 are the same frame of 8"),
    ],
    ids=["same", "from-both-ends", "first-from-the-end"],
)
def test_two_pictures_pinned_to_one_frame_are_refused_before_loading(tmp_path, pins, named):
    pinned = [a for pin in pins for a in ("--image-at", pin)]
    message = assert_user_error(invoke("img2vid", "a.png", PROMPT, *NO_MODEL, "--frames", "8", *pinned))
    assert named in message


def test_distinct_pins_and_keyframes_pass_validation():
    from videodiff.config import merge

    config = merge({"frames": 8, "image_at": ["0:a.png", "-1:b.png", "3:c.png"], "prompt_at": ["2:a", "5:b"]})
    assert config.validate().prompt_at == {2: "a", 5: "b"}


def test_a_nested_value_in_a_prompt_at_list_is_shown_short():
    from videodiff.config import RenderConfig, merge
    from videodiff.errors import UserError

    value = ["x"] * 9
    for _ in range(8):
        value = [value] * 9
    with pytest.raises(UserError) as caught:
        merge({"prompt_at": [value]}, cls=RenderConfig)
    assert len(str(caught.value)) < 200


# ---------------------------------------------------------------- 19. pictures opened only in the formats we read

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\nnewpath 0 0 moveto 8 8 lineto stroke\n%%EOF\n"


@pytest.fixture
def eps_plugin_spy(monkeypatch):
    """Records whether PIL's EPS plugin (the one that runs Ghostscript) was ever asked to open a file."""
    from PIL import EpsImagePlugin

    calls = []
    original = EpsImagePlugin.EpsImageFile._open

    def spy(self):
        calls.append(self.fp)
        return original(self)

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy)
    return calls


def test_an_eps_named_png_is_not_an_image(tmp_path, eps_plugin_spy):
    from videodiff.errors import UserError
    from videodiff.media.images import check_image, read_image

    (tmp_path / "x.png").write_bytes(EPS)
    for read in (check_image, read_image):
        with pytest.raises(UserError, match="is not an image"):
            read(tmp_path / "x.png")
    assert eps_plugin_spy == []


def test_an_eps_named_png_is_one_line_in_img2vid(tmp_path, eps_plugin_spy):
    (tmp_path / "x.png").write_bytes(EPS)
    assert "is not an image" in assert_user_error(invoke("img2vid", "x.png", PROMPT, *NO_MODEL))
    assert eps_plugin_spy == []


def test_the_formats_we_read_still_open(tmp_path):
    import numpy as np
    from PIL import Image

    from videodiff.media.images import check_image, read_image

    picture = Image.fromarray(np.full((8, 8, 3), 200, np.uint8))
    for suffix in (".png", ".jpg", ".webp", ".gif", ".bmp", ".tiff"):
        picture.save(tmp_path / f"p{suffix}")
        assert check_image(tmp_path / f"p{suffix}") == (8, 8)
        assert read_image(tmp_path / f"p{suffix}").shape == (8, 8, 3)


# ---------------------------------------------------------------- 16. train checks its flags before torch


@pytest.mark.parametrize("flags", [("--steps", "0"), ("--stride", "5000"), ("--resolution", "12")])
def test_train_refuses_bad_flags_before_importing_torch(tmp_path, flags):
    script = textwrap.dedent(
        """
        import sys
        from videodiff.cli import cli
        try:
            cli(["train", "--data", "d", "--output", "run", *sys.argv[1:]])
        except SystemExit as exc:
            print(exc.code, "torch" in sys.modules)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", script, *flags], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("videodiff: error: ")
