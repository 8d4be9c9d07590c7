"""Fail fast, say what happened (issue 20, items 5, 6 and 8): errors before torch is imported, closed sets as
click choices, Ctrl-C as one line and exit 130, one summary line after a render."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from cli_helpers import assert_user_error, invoke, ok

PROMPT = "a red circle moving right"
SMALL = ("--height", "16", "--width", "16", "--frames", "2", "--steps", "1", "--seed", "1")
ROOT = Path(__file__).resolve().parents[1]

NO_TORCH = textwrap.dedent(
    """
    import sys
    from videodiff.cli import cli
    try:
        cli.main(sys.argv[1:], prog_name="videodiff")
    except SystemExit as exit:
        code = exit.code
    print("torch imported:", "torch" in sys.modules, "diffusers imported:", "diffusers" in sys.modules)
    sys.exit(code)
    """
)


@pytest.mark.parametrize(
    "args",
    [
        ("render", PROMPT, "--frames", "0"),
        ("render", PROMPT, "-o", "exists.gif"),
        ("render", PROMPT, "--config", "missing.yaml"),
        ("render", PROMPT, "--scheduler", "ddpm"),
        ("render", PROMPT, "--steps", "1000000000"),
        ("render", PROMPT, "-o", "photos", "--overwrite"),
        ("render", "--prompt-file", "missing.txt"),
        ("render", PROMPT, "--device", "tpu"),
        ("render", PROMPT, "--frames", "80", "--window", "64"),  # the built-in modules' encoding holds 32
        ("render", PROMPT, "--frames", "2000"),
    ],
    ids=[
        "frames-0",
        "existing-output",
        "missing-config",
        "scheduler",
        "steps",
        "users-folder",
        "prompt-file",
        "device",
        "window-over-the-positional-encoding",
        "frames-over-the-ceiling",
    ],
)
def test_bad_input_exits_2_before_torch_is_imported(tmp_path, args):
    (tmp_path / "exists.gif").write_bytes(b"GIF89a")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"cat")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VIDEODIFF_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("videodiff: error: "), proc.stderr
    assert "torch imported: False diffusers imported: False" in proc.stdout


def test_closed_sets_are_click_choices():
    from videodiff.cli import render

    closed = {"scheduler", "device", "dtype", "noise", "attention", "spatial_norm", "offload"}
    choices = {p.name: p.type for p in render.params if isinstance(p.type, click.Choice)}
    assert closed <= set(choices)
    from videodiff.config import ATTENTION, DEVICES, DTYPES, NOISE_KINDS, OFFLOAD, SCHEDULERS, SPATIAL_NORMS

    assert tuple(choices["scheduler"].choices) == SCHEDULERS and tuple(choices["offload"].choices) == OFFLOAD
    assert tuple(choices["device"].choices) == DEVICES and tuple(choices["dtype"].choices) == DTYPES
    assert tuple(choices["noise"].choices) == NOISE_KINDS and tuple(choices["attention"].choices) == ATTENTION
    assert tuple(choices["spatial_norm"].choices) == SPATIAL_NORMS


def test_a_wrong_choice_is_one_line_naming_the_choices(tmp_path, models):
    message = assert_user_error(invoke("render", PROMPT, *models, "--scheduler", "ddpm", "-o", tmp_path / "x.gif"))
    assert "ddpm" in message and "dpm++" in message


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, models, monkeypatch):
    from videodiff import render

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(render, "render", interrupted)
    result = invoke("render", PROMPT, *models, *SMALL, "-o", tmp_path / "x.gif")
    assert result.exit_code == 130
    assert result.stderr.strip() == "videodiff: interrupted; nothing was written"
    assert "Aborted" not in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_sampling_leaves_nothing(tmp_path, models, monkeypatch):
    from videodiff import pipelines

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipelines.VideoPipeline, "decode", interrupted)
    result = invoke("render", PROMPT, *models, *SMALL, "-o", tmp_path / "x.gif")
    assert result.exit_code == 130 and "nothing was written" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_render_ends_with_one_summary_line(tmp_path, models):
    result = ok(invoke("render", PROMPT, *models, *SMALL, "--fps", "4", "-o", tmp_path / "x.gif"))
    assert result.stdout.strip() == str(tmp_path / "x.gif")  # stdout: the path alone, for scripts
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"videodiff: wrote {tmp_path / 'x.gif'}: 2 frames, 16x16, 4 fps, 0.50 s of video, in ")
    assert last.endswith(" s")
    quiet = ok(invoke("render", PROMPT, *models, *SMALL, "-q", "-o", tmp_path / "y.gif"))
    assert quiet.stderr == ""
