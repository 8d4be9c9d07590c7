"""Hostile and broken inputs (issue 17, "Found, to fix" 3-7): one line and exit 2, never a traceback, a hang,
runaway memory or a leftover. Hostile files are built here at run time (no binaries committed)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_user_error, invoke, ok
from hostile_media import gif_bytes

PROMPT = "a red circle moving right"
SMALL = ("--height", "16", "--width", "16", "--frames", "2", "--steps", "1", "--seed", "1", "-q")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_tmp_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


class RunsCode:
    """Unpickling this would run a command (what a hostile .bin/.pt/.ckpt does)."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def hostile_pickle(path: Path, sentinel: Path) -> Path:
    path.write_bytes(pickle.dumps({"weight": RunsCode(sentinel)}))
    return path


def files_in(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---------------------------------------------------------------- 3. one line, not a traceback


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--steps", "1000000000"), "at most 1000"),
        (("--height", "100000"), "at most 4096"),
        (("--width", "99992"), "at most 4096"),
        (("--frames", "100000"), "at most 1024"),
    ],
)
def test_absurd_sizes_are_refused_up_front_with_the_limit(tmp_path, models, flags, named):
    message = assert_user_error(invoke("render", PROMPT, *models, "-o", "x.gif", *flags))
    assert named in message
    assert files_in(tmp_path) == set()


def test_memory_a_video_would_need_is_estimated_against_the_machine():
    from videodiff.config import RenderConfig
    from videodiff.errors import UserError
    from videodiff.render import check_memory

    config = RenderConfig(frames=64, height=4096, width=4096, device="cpu")
    with pytest.raises(UserError, match=r"need about [\d.]+ GiB \(model .*\); 8\.0 GiB of memory is available"):
        check_memory(config, available=8 * 2**30)
    check_memory(config.replace(frames=16, height=64, width=64), available=8 * 2**30)  # tests/test_memory_estimate.py


@pytest.mark.parametrize(
    "prompt",
    ["a red \udcff\udcfe circle", "a red\x00circle", "x" * 100_001, "   \t  "],
    ids=["invalid-utf8", "nul", "100k-chars", "whitespace"],
)
def test_bad_prompts_are_one_line_before_loading(tmp_path, models, prompt):
    assert_user_error(invoke("render", prompt, *models, *SMALL, "-o", "x.gif"))
    assert files_in(tmp_path) == set()


def test_odd_prompts_that_are_text_render(tmp_path, models):
    # control characters and a right-to-left override are text: the tokenizer takes them
    ok(invoke("render", "a red \u202ecircle\x07 moving right", *models, *SMALL, "-o", "x.gif"))


@pytest.mark.parametrize("opener", ["[", "{a: "], ids=["lists", "mappings"])
@pytest.mark.parametrize("option", ["--config", "--prompt-file"])
def test_configs_nested_100000_deep_are_one_line(tmp_path, models, opener, option):
    closer = "]" if opener == "[" else "}"
    path = tmp_path / "deep.yaml"
    path.write_text(opener * 100_000 + "1" + closer * 100_000)
    prompt = () if option == "--prompt-file" else (PROMPT,)
    assert "deep" in assert_user_error(invoke("render", *prompt, *models, *SMALL, option, path))


def test_config_with_200000_unknown_keys_names_a_few(tmp_path, models):
    path = tmp_path / "many.yaml"
    path.write_text("".join(f"k{i}: 1\n" for i in range(60_000)))  # under the 1 MiB limit
    message = assert_user_error(invoke("render", PROMPT, *models, *SMALL, "--config", path))
    assert "and 59995 more" in message and len(message) < 2000


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, models, monkeypatch):
    from videodiff.media import video

    def full(arr, tmp, fps):
        tmp.write_bytes(b"GIF89a partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(video, "_write_gif", full)
    assert "No space left on device" in assert_user_error(invoke("render", PROMPT, *models, *SMALL, "-o", "x.gif"))
    assert files_in(tmp_path) == set()


@pytest.mark.parametrize(
    ("part", "weights", "pickle_name"),
    [
        ("text_encoder", "model.safetensors", "pytorch_model.bin"),
        ("unet", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
        ("vae", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    ],
)
def test_a_hostile_pickle_in_a_model_folder_is_one_line(tmp_path, tiny_model, tiny_motion, part, weights, pickle_name):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / part / weights).unlink()
    sentinel = tmp_path / "code-ran"
    hostile_pickle(model / part / pickle_name, sentinel)
    result = invoke("render", PROMPT, "--model", model, "--motion-module", tiny_motion, *SMALL, "-o", "x.gif")
    assert "model" in assert_user_error(result)
    assert not sentinel.exists()
    assert not (tmp_path / "x.gif").exists()


def test_a_hostile_optimizer_state_on_resume_is_one_line(tmp_path):
    from safetensors.torch import save_file

    from videodiff.errors import UserError
    from videodiff.training.checkpoints import load_checkpoint

    checkpoint = tmp_path / "run" / "checkpoints" / "step-2"
    checkpoint.mkdir(parents=True)
    save_file({}, str(checkpoint / "trainable.safetensors"))
    sentinel = tmp_path / "code-ran"
    hostile_pickle(checkpoint / "optimizer.pt", sentinel)
    (checkpoint / "state.json").write_text("{}")
    with pytest.raises(UserError, match="cannot read the checkpoint") as err:
        load_checkpoint(checkpoint)
    assert "\n" not in str(err.value)
    assert not sentinel.exists()


# ---------------------------------------------------------------- 4. never a hang, never runaway memory


def run_cli(*args: object, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real process (a hang here fails by timeout instead of blocking the suite)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VIDEODIFF_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "videodiff", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("videodiff: error: "), lines
    return lines[0]


@pytest.mark.parametrize("option", ["--prompt-file", "--config"])
def test_dev_zero_and_fifos_as_settings_files_do_not_hang(tmp_path, option):
    fifo = tmp_path / "prompts.txt"
    os.mkfifo(fifo)
    assert "not a regular file" in one_line_error(run_cli("render", option, "/dev/zero", cwd=tmp_path))
    assert "not a regular file" in one_line_error(run_cli("render", option, fifo, cwd=tmp_path))


def test_a_huge_prompt_in_a_config_is_refused_by_size(tmp_path, models):
    (tmp_path / "big.yaml").write_text("prompt: " + "a" * (2 << 20) + "\n")
    assert "larger than" in assert_user_error(invoke("render", *models, "--config", "big.yaml"))


@pytest.mark.parametrize("name", ["weights.safetensors", "dir.ckpt"])
def test_inspect_a_fifo_or_a_device_does_not_hang(tmp_path, name):
    os.mkfifo(tmp_path / name)
    assert "not a regular file" in one_line_error(run_cli("inspect", name, cwd=tmp_path, timeout=60))
    assert "not a regular file" in assert_user_error(invoke("inspect", "/dev/zero"))


def test_a_gif_declaring_huge_frames_is_refused_before_decoding(tmp_path):
    from videodiff.media.clips import UnreadableVideo, probe, read_frames

    bomb = tmp_path / "bomb.gif"
    bomb.write_bytes(gif_bytes(6000, 6000, 16))
    assert bomb.stat().st_size < 1000
    with pytest.raises(UnreadableVideo, match="6000x6000"):
        probe(bomb)
    with pytest.raises(UnreadableVideo, match="6000x6000"):
        read_frames(bomb, [0])
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableVideo, match="not a regular file"):
        probe(fifo)


# ---------------------------------------------------------------- 5. leftovers


SIGNAL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from videodiff.media import atomic, video
    where = sys.argv[1]
    if where == "while-writing":
        real = video._iter_frames
        def frames(arr):
            for i, frame in enumerate(real(arr)):
                if i == 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield frame
        video._iter_frames = frames
    else:  # between moving the sidecar and the video into place
        real = atomic._move_into_place
        def move(tmp, final):
            real(tmp, final)
            os.kill(os.getpid(), signal.SIGTERM)
        atomic._move_into_place = move
    from videodiff.cli import main
    sys.argv = ["videodiff", *sys.argv[2:]]
    main()
    """
)


@pytest.mark.parametrize(
    ("where", "name"), [("while-writing", "x.mp4"), ("while-writing", "frames"), ("between-moves", "x.gif")]
)
def test_sigterm_leaves_no_temporary_and_no_video_without_sidecar(tmp_path, models, where, name):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VIDEODIFF_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    args = ["render", PROMPT, *models, "--height", "16", "--width", "16", "--frames", "3", "--steps", "1"]
    proc = subprocess.run(
        [sys.executable, "-c", SIGNAL_SCRIPT, where, *args, "--seed", "1", "-q", "-o", name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("videodiff: interrupted")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left in ([], [name, f"{name}.json"]), left  # nothing, or the whole pair: never a half or a temporary


def test_resume_removes_stray_checkpoint_temporaries(tmp_path):
    from videodiff.training.checkpoints import resolve_resume

    root = tmp_path / "run" / "checkpoints"
    (root / "step-2").mkdir(parents=True)
    (root / "step-2" / "state.json").write_text("{}")
    stray = root / ".step-4.0123abcd.tmp"
    stray.mkdir()
    (stray / "optimizer.pt").write_bytes(b"half written")
    assert resolve_resume(tmp_path / "run", "latest") == root / "step-2"
    assert not stray.exists()


def test_convert_of_a_broken_input_creates_no_folders(tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    assert_user_error(invoke("convert", "broken.safetensors", "new1/new2/mm", "--to", "diffusers"))
    assert files_in(tmp_path) == {"broken.safetensors"}


def test_convert_refuses_to_replace_a_users_folder(tmp_path, models):
    from videodiff.weights.motion_formats import _written_here

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"cat")
    assert not _written_here(tmp_path / "photos")
    motion = Path(models[3])
    message = assert_user_error(invoke("convert", motion, "photos", "--to", "diffusers", "--overwrite"))
    assert "photos" in message
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"cat"
    ok(invoke("convert", motion, "mm", "--to", "diffusers"))
    ok(invoke("convert", motion, "mm", "--to", "diffusers", "--overwrite"))  # its own folder: replaced


def test_a_save_failing_midway_leaves_nothing(tmp_path, monkeypatch):
    from videodiff.media import video

    def failing(arr):
        yield arr[0]
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "_iter_frames", failing)
    for name in ("a.gif", "b", "c.mp4"):
        with pytest.raises(KeyboardInterrupt):
            video.save_video(np.zeros((3, 8, 8, 3), np.uint8), tmp_path / name, 8, sidecar="{}\n")
    assert files_in(tmp_path) == set()


def zero_frame_mp4(path: Path) -> Path:
    """An MP4 with a video stream and no frames (a container opened and closed)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        container.start_encoding()  # the header is written; no frame ever is
    assert path.stat().st_size > 0
    return path


@pytest.mark.parametrize("kind", ["broken-gif", "zero-frame-mp4"])
def test_training_on_unreadable_data_ends_with_its_error(tmp_path, tiny_model, tiny_motion, kind):
    data = tmp_path / "clips"
    data.mkdir()
    for name in ("a", "b"):
        if kind == "broken-gif":
            (data / f"{name}.gif").write_bytes(b"GIF89a but broken")
        else:
            zero_frame_mp4(data / f"{name}.mp4")
        (data / f"{name}.txt").write_text("a red circle moving right")
    args = ("train", "--model", tiny_model, "--motion-module", tiny_motion, "--data", data, "--output", "run")
    result = invoke(*args, "--steps", 2, "--frames", 2, "--resolution", 16, "--num-workers", 0)
    assert result.exit_code == 2 and "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("videodiff: error: no readable clips"), result.stderr


def test_inspect_a_folder_with_a_broken_config_is_one_line(tmp_path):
    folder = tmp_path / "mm"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    assert "not valid JSON" in assert_user_error(invoke("inspect", folder))
    (folder / "config.json").write_text("[1, 2]")  # valid JSON, not an object
    assert "neither" in assert_user_error(invoke("inspect", folder))


def test_eval_overwrite_replaces_only_an_earlier_report(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    args = ("eval", "shapes", "--ground-truth-only", "--seeds", "1", "--combos", "heldout", "--roundtrip", "none")
    assert "not a evaluation report" in assert_user_error(invoke(*args, "--out", notes, "--overwrite"))
    assert notes.read_text() == "my notes\n"
    report = tmp_path / "report.json"
    ok(invoke(*args, "--out", report))
    first = json.loads(report.read_text())
    ok(invoke(*args, "--out", report, "--overwrite"))  # a report may be replaced by a report
    assert json.loads(report.read_text())["settings"] == first["settings"]
