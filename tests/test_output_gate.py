"""The output gate (issue 30, "Data loss"): every command's output options against what may already be there.

For each output (render -o, a PNG-frames folder, a sidecar, img2vid, vid2vid, a batch item, train --output,
train --latent-cache, data shapes --out, convert to a folder and to a file, eval --out) and each thing in its place
(a user's file, a user's folder, a FIFO, a symbolic link to elsewhere, a folder with a forged receipt), the command
is refused in one line and every path under the test folder keeps its type and bytes (hashed before and after, links
not followed). Videodiff's own earlier output is replaced with --overwrite (or continued with --resume).
Rules: videodiff/media/gate.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_helpers import assert_user_error, invoke, ok

PROMPT = "a red circle moving right"
SMALL = ("--height", "16", "--width", "16", "--frames", "2", "--steps", "1", "--seed", "1", "-q")
TRAIN = (
    "--steps", 1, "--frames", 4, "--stride", 2, "--resolution", 16, "--num-workers", 0, "--caption-dropout", 0,
    "--quiet",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _in_tmp_path(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    from clips import write_dataset

    return write_dataset(tmp_path_factory.mktemp("gate-clips"), count=2, frames=8, size=16)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: its type and, for a file, its SHA-256; for a link, where it points."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                kind: tuple = ("link", os.readlink(path))
            elif stat.S_ISREG(mode):
                kind = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            elif stat.S_ISDIR(mode):
                kind = ("dir",)
            else:
                kind = ("special", stat.S_IFMT(mode))
            out[str(path.relative_to(root))] = kind
    return out


def forged_receipt(folder: Path, marker: str, kind: str, names: list[str]) -> None:
    """A receipt that lists the user's files with the right sizes and made-up digests."""
    files = {n: {"size": (folder / n).stat().st_size, "sha256": "0" * 64} for n in names}
    (folder / marker).write_text(json.dumps({"format": "videodiff-receipt/1", "kind": kind, "files": files}))


@dataclass
class Target:
    """One output option: the path it writes (``at``), the command, and the user's files it must leave."""

    at: str
    argv: tuple  # the command, with whatever makes it replace: --overwrite where the command has it
    named: bool = False  # the user names this file: their own file there is replaced with --overwrite by design
    user_files: dict[str, bytes] = field(default_factory=lambda: {"notes.txt": b"the user's notes"})
    receipt: tuple[str, str] = (".videodiff-written.json", "training run")
    again: tuple | None = None  # how our own earlier output is written over (default: argv)


def targets(models: tuple[str, ...], tiny_motion: Path, clips: Path) -> dict[str, Target]:
    safetensors_like = (2).to_bytes(8, "little") + b"{}"  # a header with no latent cache's keys
    return {
        "render -o": Target("out.gif", ("render", PROMPT, *models, *SMALL, "-o", "out.gif"), named=True),
        "render frames": Target(
            "shots",
            ("render", PROMPT, *models, *SMALL, "-o", "shots", "--overwrite"),
            user_files={"0000.png": b"my text named 0000.png", "0001.png": b"\x89PNG my frame"},
            receipt=(".videodiff-frames", "png-frames"),
        ),
        "sidecar": Target("package.json", ("render", PROMPT, *models, *SMALL, "-o", "package", "--overwrite")),
        "img2vid": Target(
            "moving.gif", ("img2vid", "pic.png", PROMPT, *models, *SMALL, "-o", "moving.gif"), named=True
        ),
        "vid2vid": Target(
            "restyled.gif", ("vid2vid", "clip.gif", PROMPT, *models, *SMALL, "-o", "restyled.gif"), named=True
        ),
        "batch item": Target(
            "batch/one.gif",
            ("render", "--prompt-file", "p.yaml", *models, *SMALL, "-o", "batch"),
            named=True,
        ),
        "train --output": Target(
            "run",
            ("train", "--model", models[1], "--data", str(clips), "--output", "run", *TRAIN),
            user_files={"motion_lora.safetensors": b"my lora", "train_config.json": b'{"mine": 1}'},
            again=("train", "--model", models[1], "--data", str(clips), "--output", "run", *TRAIN, "--steps", 2,
                   "--resume", "latest"),
        ),
        "train --latent-cache": Target(
            "cache.safetensors",
            ("train", "--model", models[1], "--data", str(clips), "--output", "run2", *TRAIN,
             "--cache-latents", "--latent-cache", "cache.safetensors"),
            user_files={"x.safetensors": safetensors_like},
            again=("train", "--model", models[1], "--data", str(clips), "--output", "run3", *TRAIN,
                   "--cache-latents", "--latent-cache", "cache.safetensors"),
        ),
        "data shapes --out": Target(
            "data",
            ("data", "shapes", "--out", "data", "--count", 2, "--overwrite"),
            user_files={"manifest.jsonl": b'{"path": "00000.gif", "caption": "mine"}\n', "00000.gif": b"GIF89a mine"},
            receipt=(".videodiff-written.json", "shapes dataset"),
        ),
        "convert": Target("mm", ("convert", str(tiny_motion), "mm", "--to", "diffusers", "--overwrite"), named=True),
        "convert diffusers-looking": Target(
            "mm",
            ("convert", str(tiny_motion), "mm", "--to", "diffusers", "--overwrite"),
            named=True,
            user_files={"config.json": b'{"_class_name": "MotionAdapter"}', DIFFUSERS_WEIGHTS: safetensors_like},
            receipt=(".videodiff-written.json", "motion-module folder"),
        ),
        "convert --to original": Target(
            "mm.safetensors",
            ("convert", str(tiny_motion), "mm.safetensors", "--to", "original", "--overwrite"),
            named=True,
        ),
        "eval --out": Target(
            "report.json",
            ("eval", "shapes", "--ground-truth-only", "--seeds", 1, "--combos", "heldout", "--roundtrip", "none",
             "--out", "report.json", "--overwrite"),
        ),
    }  # fmt: skip


def prepare(tmp_path: Path) -> None:
    """What some commands read, in the test folder too: it must come through unchanged as well."""
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "pic.png")
    frames = [Image.new("RGB", (16, 16), (40 * i, 30, 30)) for i in range(4)]
    frames[0].save(tmp_path / "clip.gif", save_all=True, append_images=frames[1:], duration=125)
    (tmp_path / "p.yaml").write_text(f"- prompt: {PROMPT}\n  output: one.gif\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_bytes(b"not to be touched")


def place(tmp_path: Path, target: Target, state: str) -> None:
    """Put ``state`` where ``target`` writes."""
    path = tmp_path / target.at
    path.parent.mkdir(parents=True, exist_ok=True)
    if state == "user file":
        first = next(iter(target.user_files.values()))
        data = {".gif": b"GIF89a the user's own gif", ".json": b'{"name": "my package"}'}.get(path.suffix, first)
        path.write_bytes(data)
    elif state in ("user folder", "forged receipt"):
        path.mkdir()
        for name, data in target.user_files.items():
            (path / name).write_bytes(data)
        (path / "sub").mkdir()
        (path / "sub" / "photo.jpg").write_bytes(b"\xff\xd8\xff a photo")
        if state == "forged receipt":
            forged_receipt(path, *target.receipt, list(target.user_files))
            old_marker = "frames written by videodiff; --overwrite may replace this folder\n"  # before receipts
            if target.receipt[0] != ".videodiff-frames":
                (path / ".videodiff-frames").write_text(old_marker)
    elif state == "fifo":
        os.mkfifo(path)
    elif state == "link to a file":
        path.symlink_to(tmp_path / "elsewhere" / "precious.txt")
    elif state == "link to a folder":
        path.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    else:
        raise AssertionError(state)


STATES = ["user file", "user folder", "fifo", "link to a file", "link to a folder", "forged receipt"]
NAMES = [
    "render -o", "render frames", "sidecar", "img2vid", "vid2vid", "batch item", "train --output",
    "train --latent-cache", "data shapes --out", "convert", "convert diffusers-looking", "convert --to original",
    "eval --out",
]  # fmt: skip
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def kept(before: dict, after: dict) -> list[str]:
    """The paths of ``before`` that are gone or changed in ``after``."""
    return [p for p, kind in before.items() if after.get(p) != kind]


@pytest.mark.parametrize("name", NAMES)
def test_nothing_of_the_users_is_replaced(tmp_path, models, tiny_motion, clips, name):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    target = targets(models, tiny_motion, clips)[name]
    for state in STATES:
        root = tmp_path / state.replace(" ", "-")
        root.mkdir()
        os.chdir(root)
        prepare(root)
        place(root, target, state)
        before = snapshot(root)
        argv = target.argv
        if state == "user file" and target.named:  # a file the user names: refused without --overwrite
            argv = tuple(a for a in argv if a != "--overwrite")
        result = invoke(*argv)
        assert_user_error(result)
        assert not kept(before, snapshot(root)), (name, state, kept(before, snapshot(root)))


@pytest.mark.parametrize("name", NAMES)
def test_our_own_earlier_output_is_replaced(tmp_path, models, tiny_motion, clips, name):
    target = targets(models, tiny_motion, clips)[name]
    prepare(tmp_path)
    first = tuple(a for a in target.argv if a != "--overwrite")
    ok(invoke(*first))
    assert os.path.lexists(target.at)
    again = target.again or (*first, "--overwrite")
    ok(invoke(*again))
    assert os.path.lexists(target.at)
    assert (tmp_path / "elsewhere" / "precious.txt").read_bytes() == b"not to be touched"


def test_an_earlier_output_changed_by_the_user_is_theirs(tmp_path, models):
    """A frames folder videodiff wrote, with one frame edited: its receipt no longer matches, so it is refused."""
    ok(invoke("render", PROMPT, *models, *SMALL, "-o", "shots"))
    (tmp_path / "shots" / "0001.png").write_bytes(b"retouched by hand")
    before = snapshot(tmp_path)
    assert_user_error(invoke("render", PROMPT, *models, *SMALL, "-o", "shots", "--overwrite"))
    assert snapshot(tmp_path) == before


def test_data_overwrite_deletes_only_what_videodiff_wrote(tmp_path):
    """Issue 30, case 3: a manifest naming the user's folders never decides what is deleted."""
    ok(invoke("data", "shapes", "--out", "data", "--count", 2))
    (tmp_path / "data" / "mine.txt").write_text("the user's notes, put into the data folder later")
    ok(invoke("data", "shapes", "--out", "data", "--count", 1, "--overwrite"))
    assert (tmp_path / "data" / "mine.txt").read_text().startswith("the user's notes")
    assert not (tmp_path / "data" / "00001.gif").exists()  # ours, from the run before: gone
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff a cat")
    manifest = tmp_path / "data" / "manifest.jsonl"
    manifest.write_text('{"path": "../photos", "caption": "x"}\n{"path": "mine.txt", "caption": "y"}\n')
    before = snapshot(tmp_path)
    assert_user_error(invoke("data", "shapes", "--out", "data", "--count", 1, "--overwrite"))
    assert snapshot(tmp_path) == before


def test_settings_files_cannot_ask_to_overwrite(tmp_path, models):
    """Issue 30, case 5: ``overwrite: true`` in a settings file or a sidecar is ignored; only the flag counts."""
    (tmp_path / "mine.gif").write_bytes(b"GIF89a the user's own gif")
    (tmp_path / "shared.json").write_text(json.dumps({"prompt": PROMPT, "output": "mine.gif", "overwrite": True}))
    before = snapshot(tmp_path)
    assert "--overwrite" in assert_user_error(invoke("render", *models, *SMALL, "--config", "shared.json"))
    assert snapshot(tmp_path) == before


def test_a_users_json_is_not_a_sidecar(tmp_path, models):
    """Issue 30, case 6: ``-o package --overwrite`` does not take the user's package.json for its sidecar."""
    (tmp_path / "package.json").write_text('{"name": "my-app", "version": "1.0.0"}\n')
    before = snapshot(tmp_path)
    assert "sidecar" in assert_user_error(invoke("render", PROMPT, *models, *SMALL, "-o", "package", "--overwrite"))
    assert snapshot(tmp_path) == before
    ok(invoke("render", PROMPT, *models, *SMALL, "-o", "clip.gif"))
    ok(invoke("render", PROMPT, *models, *SMALL, "-o", "clip.gif", "--overwrite"))  # our own sidecar is replaced


@pytest.mark.parametrize(
    "items",
    [
        "- prompt: a red circle moving right\n  output: link/x.gif\n",  # through a link inside the batch folder
        "- prompt: a red circle moving right\n  output: .\n",  # the batch folder itself
        "- prompt: a red circle moving right\n  output: x\n- prompt: a blue square\n  output: x/y.gif\n",
        "- prompt: a red circle moving right\n  output: x/y.gif\n- prompt: a blue square\n  output: x\n",
    ],
)
def test_batch_outputs_stay_in_the_batch_folder(tmp_path, models, items):
    """Issue 30, case 14."""
    (tmp_path / "batch").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "batch" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "p.yaml").write_text(items)
    before = snapshot(tmp_path)
    assert_user_error(invoke("render", "--prompt-file", "p.yaml", *models, *SMALL, "-o", "batch"))
    assert snapshot(tmp_path) == before


def test_a_rerun_removes_the_temporaries_of_a_killed_writer_only(tmp_path, models):
    """Issue 30, case 13: what ``kill -9`` left beside an output (of videodiff's naming, its writer gone) is removed
    by the next write of that output; a running writer's temporaries (this process's, here) are kept."""
    import subprocess
    import sys

    from videodiff.media.atomic import _start_time

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = f"{gone.pid}-{_start_time(os.getpid()) + 1}"  # its pid, and a start time no running process has
    alive = f"{os.getpid()}-{_start_time(os.getpid())}"
    stale = [f".out.{dead}-abcdef.tmp.gif", f".out.gif.{dead}-abcdef.tmp.json", f".shots.{dead}-012345.tmp"]
    running = [f".out.{alive}-abcdef.tmp.gif", f".shots.{alive}-012345.tmp"]
    users = [".out.gif.tmp", ".out.12345678.tmp.gif", "out.tmp.gif"]  # not of this naming (or from before it)
    for name in stale + running + users:
        if name.startswith(".shots."):  # a frames folder's temporary is a folder
            (tmp_path / name).mkdir()
            (tmp_path / name / "0000.png").write_bytes(b"half a frame")
        else:
            (tmp_path / name).write_bytes(b"x")
    ok(invoke("render", PROMPT, *models, *SMALL, "-o", "out.gif"))
    ok(invoke("render", PROMPT, *models, *SMALL, "-o", "shots"))
    left = {p.name for p in tmp_path.iterdir()}
    assert not left & set(stale), left
    assert set(running) | set(users) <= left


def test_a_receipt_never_reaches_outside_its_folder(tmp_path):
    """A receipt naming ``../x``, an absolute path or a file through a link (right digests and all) removes nothing
    outside its folder: only files under the folder, reached without links, count as videodiff's."""
    from videodiff.media.gate import RECEIPT, file_digest, folder_is_ours, remove_owned

    outside = tmp_path / "outside.txt"
    outside.write_text("the user's")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "kept.txt").write_text("the user's too")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (folder / "ours.txt").write_text("ours")

    def entry(p: Path) -> dict:
        return {"size": p.stat().st_size, "sha256": file_digest(p)}

    files = {"../outside.txt": entry(outside), str(outside): entry(outside), "ours.txt": entry(folder / "ours.txt")}
    files["link/kept.txt"] = entry(tmp_path / "elsewhere" / "kept.txt")
    receipt = {"format": "videodiff-receipt/1", "kind": "shapes dataset", "files": files}
    (folder / RECEIPT).write_text(json.dumps(receipt))
    assert not folder_is_ours(folder, "shapes dataset")  # the link is not videodiff's
    remove_owned(folder, "shapes dataset")
    assert outside.read_text() == "the user's" and (tmp_path / "elsewhere" / "kept.txt").exists()
    assert not (folder / "ours.txt").exists() and (folder / "link").is_symlink()


def test_convert_never_replaces_a_users_diffusers_folder(tmp_path, tiny_motion):
    """A folder that merely looks like a diffusers model (a real MotionAdapter: ``config.json`` and
    ``diffusion_pytorch_model.safetensors``, nothing else) is the user's, whatever the flags; the folder convert
    wrote (its receipt lists each file) is replaced with --overwrite."""
    import shutil

    shutil.copytree(tiny_motion, tmp_path / "theirs")
    before = snapshot(tmp_path)
    for flags in ((), ("--overwrite",)):
        result = invoke("convert", str(tiny_motion), "theirs", "--to", "diffusers", *flags)
        assert "not a videodiff motion-module folder" in assert_user_error(result)
    assert snapshot(tmp_path) == before
    ok(invoke("convert", str(tiny_motion), "ours", "--to", "diffusers"))
    ok(invoke("convert", str(tiny_motion), "ours", "--to", "diffusers", "--overwrite"))


@pytest.mark.parametrize("command", ["long", "sweep"])
def test_eval_out_appends_only_to_its_own_json_lines(tmp_path, command):
    """eval long/sweep --out append JSON lines: a user's other file, a link or a FIFO is refused in one line before
    any work, and left as it was."""
    import os

    from cli_helpers import assert_user_error, invoke

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(notes)
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    for target in (notes, link, fifo):
        settings = ["default"] if command == "sweep" else []
        message = assert_user_error(invoke("eval", command, *settings, "--seeds", "1", "--out", target))
        assert str(target.name) in message
    assert notes.read_text() == "my notes\n" and link.is_symlink()
    from videodiff.media.atomic import check_appendable

    ours = tmp_path / "ours.jsonl"
    ours.write_text('{"seed": 1}\n{"seed": 2}\n')
    assert check_appendable(ours) == ours and check_appendable(tmp_path / "new.jsonl").name == "new.jsonl"
