"""Every command, driven with generated options, paths and small files, valid and not (issue 17).

Each run must either succeed (exit 0) or exit 2 with one line naming the problem: never a traceback, never
a hang (an alarm bounds each run), never a half-written output or a temporary left behind, and never a file
outside the requested output touched (every input file is compared byte for byte).

To fuzz a new command (img2vid, vid2vid, serve's handlers...), add a row to :data:`COMMANDS`: a strategy that
draws its argument list from :class:`Sandbox` (the hostile corpus and names for outputs) and the outputs it
may create. The default suite runs a fixed small number of examples per command on the tiny models; the
``slow`` profile (``-m slow``) runs many more.
"""

from __future__ import annotations

import os
import pickle
import signal
import stat
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import invoke
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from videodiff.config import ATTENTION, DEVICES, NOISE_KINDS, SCHEDULERS
from videodiff.ui.form import FORM_FIELDS

EXAMPLES = int(os.environ.get("VIDEODIFF_FUZZ_EXAMPLES", "5"))  # per command, in the default suite
SLOW_EXAMPLES = 150
SECONDS_PER_RUN = 120  # a run that takes longer than this is a hang


class RunsCode:
    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


# ---------------------------------------------------------------- the sandbox and its hostile corpus


@dataclass
class Sandbox:
    root: Path
    model: str
    motion: str

    @property
    def sentinel(self) -> Path:
        return self.root / "CODE-RAN"


def build_corpus(root: Path, model: str, motion: str) -> Sandbox:
    """Inputs every command may be handed: good, broken and hostile, all small."""
    from hostile_media import gif_bytes
    from safetensors.numpy import save_file

    box = Sandbox(root, model, motion)
    corpus = root / "in"
    corpus.mkdir(parents=True)
    evil = pickle.dumps({"state_dict": RunsCode(str(box.sentinel))})
    for name in ("evil.ckpt", "evil.pt", "evil.bin", "evil.pth"):
        (corpus / name).write_bytes(evil)
    save_file({"w": np.ones((4, 4), np.float32)}, str(corpus / "good.safetensors"))
    good = (corpus / "good.safetensors").read_bytes()
    (corpus / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    flipped = bytearray(good)
    flipped[10] ^= 0xFF
    (corpus / "flipped.safetensors").write_bytes(bytes(flipped))
    (corpus / "absurd-header.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    (corpus / "text.safetensors").write_text("not tensors")
    (corpus / "empty.gif").write_bytes(b"")
    (corpus / "bomb.gif").write_bytes(gif_bytes(6000, 6000, 16))
    (corpus / "notimage.png").write_text("not an image")
    from PIL import Image

    Image.fromarray(np.full((20, 30, 4), 200, np.uint8), "RGBA").save(corpus / "pic.png")
    (corpus / "deep.yaml").write_text("[" * 50_000 + "]" * 50_000)
    (corpus / "keys.yaml").write_text("".join(f"k{i}: 1\n" for i in range(5000)))
    (corpus / "ok.yaml").write_text("frames: 2\nsteps: 1\nheight: 16\nwidth: 16\n")
    (corpus / "sneaky.yaml").write_text("output: ../photos\noverwrite: true\n")
    (corpus / "prompts.txt").write_text("a red circle moving right\n\n# comment\na blue square moving up\n")
    (corpus / "escape.yaml").write_text("- prompt: a red circle\n  output: ../../escaped.gif\n")
    (corpus / "nul.txt").write_bytes(b"a red \x00 circle\n")
    (corpus / "latin1.txt").write_bytes(b"a red \xff\xfe circle\n")
    data = corpus / "clips"
    data.mkdir()
    (data / "a.gif").write_bytes(gif_bytes(16, 16, 4, real=True))
    (data / "a.txt").write_text("a red circle moving right")
    (data / "bomb.gif").write_bytes(gif_bytes(6000, 6000, 16))
    (data / "bomb.txt").write_text("a bomb")
    os.mkfifo(corpus / "fifo.safetensors")
    photos = root / "photos"
    (photos / "holiday").mkdir(parents=True)
    (photos / "cat.jpg").write_bytes(b"\xff\xd8\xff cat")
    (photos / "holiday" / "beach.jpg").write_bytes(b"\xff\xd8\xff beach")
    (root / "notes.gif").write_text("my notes")
    (root / "link.gif").symlink_to(photos / "cat.jpg")
    os.mkfifo(root / "pipe.mp4")
    return box


def snapshot(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for path in root.rglob("*"):
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode):
            out[str(path.relative_to(root))] = path.read_bytes()
        elif stat.S_ISLNK(mode):
            out[str(path.relative_to(root))] = ("link", os.readlink(path))
        else:
            out[str(path.relative_to(root))] = stat.S_IFMT(mode)
    return out


# ---------------------------------------------------------------- the commands


def corpus_path(box: Sandbox) -> st.SearchStrategy[str]:
    names = sorted(p.name for p in (box.root / "in").iterdir())
    return st.one_of(
        st.sampled_from([f"in/{n}" for n in names]),
        st.sampled_from(["photos", "missing.safetensors", "/dev/zero", "", box.motion, box.model, "notes.gif"]),
    )


OUTPUTS = [
    "out.gif",
    "out.mp4",
    "out.webm",
    "frames",
    "sub/dir/out.gif",
    "out.avi",
    ".",
    "..",
    "photos",
    "notes.gif",
    "link.gif",
    "pipe.mp4",
    "x" * 300 + ".gif",
    "/dev/null",
    "in/good.safetensors",
]


def options(pairs: dict[str, st.SearchStrategy]) -> st.SearchStrategy[list[str]]:
    """A random subset of ``--flag value`` pairs (``None`` values: a flag without a value)."""
    keys = sorted(pairs)
    return st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)).flatmap(
        lambda chosen: st.tuples(*[pairs[k] for k in chosen]).map(
            lambda values: [a for k, v in zip(chosen, values) for a in ((k,) if v is None else (k, str(v)))]
        )
    )


def render_args(box: Sandbox) -> st.SearchStrategy[list[str]]:
    prompts = st.one_of(
        st.sampled_from(["a red circle moving right", "a blue square moving up", "  ", "a\u202eb", "x" * 20_000]),
        st.text(max_size=30),
    )
    flags = options(
        {
            "--frames": st.sampled_from([2, 3, 0, -1, 100_000]),
            "--steps": st.sampled_from([1, 2, 0, 1_000_000_000]),
            "--height": st.sampled_from([16, 17, 0, 100_000]),
            "--width": st.sampled_from([16, 24, -8]),
            "--guidance": st.sampled_from(["1", "nan", "-1", "inf", "abc"]),
            "--scheduler": st.sampled_from([*SCHEDULERS, "bogus"]),
            "--noise": st.sampled_from([*NOISE_KINDS, "pink"]),
            "--device": st.sampled_from(["cpu", "cuda", "tpu"] if "cuda" in DEVICES else ["cpu"]),
            "--attention": st.sampled_from([*ATTENTION[:1], "flash"]),
            "--fps": st.sampled_from(["8", "0", "-1", "nan", "1e9"]),
            "--crf": st.sampled_from([18, -1, 99]),
            "--seed": st.sampled_from([1, -1, 2**70]),
            "--motion": st.sampled_from(["1,0", "a,b", "inf,0", "1"]),
            "--lora": corpus_path(box),
            "--embedding": corpus_path(box),
            "--vae": corpus_path(box),
            "--config": corpus_path(box),
            "--motion-module": corpus_path(box),  # after the tiny one: this one wins
            "--motion-lora": corpus_path(box),
            "--motion-lora-trigger": corpus_path(box).map(lambda p: f"zoom={p}"),
            "--controlnet": corpus_path(box),  # hostile pickles, broken safetensors, folders, devices
            "--control": st.one_of(corpus_path(box), corpus_path(box).map(lambda p: f"canny:{p}")),
            "--control-scale": st.sampled_from(["1", "nan", "-1", "11"]),
            "--control-range": st.sampled_from(["0,1", "1,0", "x", "0,2"]),
            "--sparsectrl": corpus_path(box),
            "--sparse-at": st.sampled_from(["0:in/pic.png", "99:in/pic.png", "x:in/pic.png"]),
            "--upscale": corpus_path(box),  # hostile pickles, broken safetensors, a non-upscaler, devices
            "--upscale-factor": st.sampled_from(["2", "1.5", "0", "1", "9", "nan", "x"]),
            "--overwrite": st.none(),
            "--skip-existing": st.none(),
        }
    )
    output = st.sampled_from(OUTPUTS)
    batch = st.one_of(
        st.just([]),
        st.sampled_from(
            [
                ["--prompt-file", "in/prompts.txt"],
                ["--prompt-file", "in/escape.yaml"],
                ["--prompt-file", "/dev/zero"],
                ["--seeds", "1,2"],
                ["--seeds", "1,1"],
            ]
        ),
    )
    model = ["--model", box.model, "--motion-module", box.motion]
    return st.tuples(prompts, flags, output, batch).map(
        lambda t: [
            "render",
            *([t[0]] if not t[3] or t[3][0] != "--prompt-file" else []),
            *model,
            "-q",
            "--frames",
            "2",
            "--steps",
            "1",
            "--height",
            "16",
            "--width",
            "16",
            *t[1],
            "-o",
            t[2],
            *t[3],
        ]
    )


SMALL_RENDER = ["-q", "--frames", "2", "--steps", "1", "--height", "16", "--width", "16"]


def img2vid_args(box: Sandbox) -> st.SearchStrategy[list[str]]:
    pictures = st.one_of(
        st.sampled_from(["in/pic.png", "in/notimage.png", "in/bomb.gif", "in/empty.gif", "photos", "pipe.mp4"]),
        corpus_path(box),
    )
    flags = options(
        {
            "--strength": st.sampled_from(["0.5", "1", "0", "1.5", "nan"]),
            "--anchor": st.sampled_from(["0", "0.6", "2"]),
            "--fit": st.sampled_from(["crop", "pad", "stretch"]),
            "--background": st.sampled_from(["0,0,0", "#ff00ff", "red", "1,2"]),
            "--paste": st.none(),
            "--image-at": st.sampled_from(["1:in/pic.png", "-1:in/pic.png", "9:in/pic.png", "x:in/pic.png", "pic"]),
            "--seed": st.sampled_from([1, -1]),
            "--overwrite": st.none(),
        }
    )
    model = ["--model", box.model, "--motion-module", box.motion]
    return st.tuples(pictures, flags, st.sampled_from(OUTPUTS)).map(
        lambda t: ["img2vid", t[0], "a red circle moving right", *model, *SMALL_RENDER, *t[1], "-o", t[2]]
    )


def vid2vid_args(box: Sandbox) -> st.SearchStrategy[list[str]]:
    videos = st.one_of(
        st.sampled_from(["in/clips/a.gif", "in/clips/bomb.gif", "in/empty.gif", "in/pic.png", "pipe.mp4"]),
        corpus_path(box),
    )
    flags = options(
        {
            "--strength": st.sampled_from(["0.6", "1", "0", "-1"]),
            "--stride": st.sampled_from(["1", "2", "0"]),
            "--fit": st.sampled_from(["crop", "pad", "stretch"]),
            "--fps": st.sampled_from(["8", "0"]),
            "--seed": st.sampled_from([1, -1]),
            "--overwrite": st.none(),
        }
    )
    model = ["--model", box.model, "--motion-module", box.motion]
    return st.tuples(videos, flags, st.sampled_from(OUTPUTS)).map(
        lambda t: ["vid2vid", t[0], "a red circle moving right", *model, *SMALL_RENDER, *t[1], "-o", t[2]]
    )


def train_args(box: Sandbox) -> st.SearchStrategy[list[str]]:
    flags = options(
        {
            "--frames": st.sampled_from([2, 0, 100_000]),
            "--resolution": st.sampled_from([16, 7, 100_000]),
            "--lr": st.sampled_from(["1e-4", "0", "nan"]),
            "--trainable": st.sampled_from(["motion", "bogus"]),
            "--resume": st.sampled_from(["latest", "in", "in/evil.pt"]),
            "--data": st.sampled_from(["in/clips", "in/bomb.gif", "missing", "/dev/zero", "in/prompts.txt"]),
            "--config": corpus_path(box),
        }
    )
    base = [
        "train",
        "--model",
        box.model,
        "--motion-module",
        box.motion,
        "--data",
        "in/clips",
        "-q",
        "--steps",
        "1",
        "--frames",
        "2",
        "--stride",
        "1",
        "--resolution",
        "16",
        "--num-workers",
        "0",
        "--save-every",
        "1",
    ]
    return st.tuples(flags, st.sampled_from(["run", "photos", "notes.gif", "pipe.mp4"])).map(
        lambda t: [*base, *t[0], "--output", t[1]]
    )


def convert_args(box: Sandbox) -> st.SearchStrategy[list[str]]:
    return st.tuples(
        corpus_path(box),
        st.sampled_from(["mm", "mm.safetensors", "new1/new2/mm", "photos", "notes.gif", "pipe.mp4", "."]),
        st.sampled_from(["diffusers", "original", "onnx"]),
        st.booleans(),
    ).map(lambda t: ["convert", t[0], t[1], "--to", t[2], *(["--overwrite"] if t[3] else [])])


def inspect_args(box: Sandbox) -> st.SearchStrategy[list[str]]:
    return st.tuples(corpus_path(box), st.booleans()).map(lambda t: ["inspect", t[0], *(["--json"] if t[1] else [])])


def eval_args(box: Sandbox) -> st.SearchStrategy[list[str]]:
    flags = options(
        {
            "--seeds": st.sampled_from([1, 0, -1]),
            "--combos": st.sampled_from(["heldout", "bogus"]),
            "--roundtrip": st.sampled_from(["none", "gif", "avi"]),
            "--out": st.sampled_from(["report.json", "photos", "pipe.mp4", "."]),
            "--overwrite": st.none(),
            "--device": st.sampled_from(["cpu", "tpu"]),
        }
    )
    return flags.map(
        lambda f: [
            "eval",
            "shapes",
            "--ground-truth-only",
            "-q",
            "--seeds",
            "1",
            "--combos",
            "heldout",
            "--roundtrip",
            "none",
            *f,
        ]
    )


def upscale_args(box: Sandbox) -> st.SearchStrategy[list[str]]:
    flags = options(
        {
            "--upscale": corpus_path(box),
            "--upscale-factor": st.sampled_from(["2", "1.5", "0", "1", "9", "nan", "x"]),
            "--overwrite": st.none(),
        }
    )
    videos = st.one_of(corpus_path(box), st.just("in/clips/a.gif"))
    return st.tuples(videos, flags, st.sampled_from(OUTPUTS)).map(lambda t: ["upscale", t[0], "-q", *t[1], "-o", t[2]])


def data_args(box: Sandbox) -> st.SearchStrategy[list[str]]:
    flags = options(
        {
            "--count": st.sampled_from([1, 2, 0, -1]),
            "--seed": st.sampled_from([0, -1]),
            "--split": st.sampled_from(["heldout", "bogus"]),
            "--format": st.sampled_from(["gif", "png", "avi"]),
            "--overwrite": st.none(),
        }
    )
    out = st.sampled_from(["data", "photos", "notes.gif", "pipe.mp4", "."])
    return st.tuples(flags, out).map(lambda t: ["data", "shapes", "--count", "1", *t[0], "--out", t[1]])


# (command, strategy of argument lists, outputs it may create besides the requested one)
COMMANDS: dict[str, Callable[[Sandbox], st.SearchStrategy[list[str]]]] = {
    "render": render_args,
    "img2vid": img2vid_args,
    "vid2vid": vid2vid_args,
    "train": train_args,
    "convert": convert_args,
    "inspect": inspect_args,
    "eval": eval_args,
    "data": data_args,
    "upscale": upscale_args,
}
# What a successful run may create: the requested output, its sidecar, a batch folder, a run folder...
MAY_CREATE = ("out", "frames", "sub", "mm", "new1", "run", "data", "report.json", "outputs")


# ---------------------------------------------------------------- the property


class Hang(Exception):
    pass


def requested_output(args: list[str]) -> str | None:
    """The output the run was asked to write (a file, or a batch's or a run's folder), relative to the sandbox."""
    for flag in ("-o", "--output", "--out"):
        if flag in args[:-1]:
            return os.path.normpath(args[len(args) - 1 - args[::-1].index(flag) + 1])
    return os.path.normpath(args[2]) if args[0] == "convert" else None


def check_run(box: Sandbox, args: list[str]) -> None:
    before = snapshot(box.root)
    previous = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(Hang(" ".join(args)[:300])))
    signal.alarm(SECONDS_PER_RUN)
    cwd = os.getcwd()
    os.chdir(box.root)
    try:
        result = invoke(*args)
    finally:
        os.chdir(cwd)
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    shown = " ".join(a[:60] for a in args)
    assert "Traceback" not in result.output, shown
    assert result.exit_code in (0, 2), f"{shown}\nexit {result.exit_code}: {result.stderr}\n{result.exception!r}"
    if result.exit_code == 2:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("videodiff: error: "), f"{shown}\n{lines!r}"
    else:
        assert result.exception is None or isinstance(result.exception, SystemExit), f"{shown}\n{result.exception!r}"
    assert not box.sentinel.exists(), f"a pickle ran code: {shown}"
    after = snapshot(box.root)
    for name, value in before.items():  # every input, and every file of the user's, untouched
        if not name.startswith(MAY_CREATE):
            assert after.get(name) == value, f"{shown}\n{name} was changed or removed"
    requested = requested_output(args)
    for name in after:
        assert ".tmp" not in name, f"{shown}\na temporary is left: {name}"
        if name not in before:
            inside = requested is not None and (
                requested == "." or name == requested or name.startswith((requested + "/", requested + ".json"))
            )
            assert inside or name.startswith(MAY_CREATE), f"{shown}\n{name} was created outside the requested output"
    if result.exit_code == 2:  # nothing half-written: a failed run creates nothing
        assert set(after) - set(before) == set(), f"{shown}\na failed run left {set(after) - set(before)}"
    for name in set(after) - set(before):  # every new video comes with its sidecar
        if args[0] == "render" and name.endswith((".gif", ".mp4", ".webm")):
            assert f"{name}.json" in after, f"{shown}\n{name} has no sidecar"


def fuzz(command: str, models: tuple[str, ...], examples: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        template = build_corpus(Path(tmp) / "template", models[1], models[3])

        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=examples == EXAMPLES,  # the default suite is the same every run; the slow one explores
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(COMMANDS[command](template))
        def run(args: list[str]) -> None:
            with tempfile.TemporaryDirectory(dir=tmp) as fresh:  # a fresh sandbox per example
                box = build_corpus(Path(fresh) / "box", template.model, template.motion)
                check_run(box, args)

        run()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_fuzz_every_command(command, models):
    fuzz(command, models, EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_fuzz_every_command_long(command, models):
    fuzz(command, models, SLOW_EXAMPLES)


# ---------------------------------------------------------------- the web app's request handler


FORM_VALUE = st.one_of(
    st.none(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=40),
    st.sampled_from(["", " ", "0", "-1", "1e309", "nan", "16", "64", "dpm++", "../x", "1,2", "none"]),
)
UPLOAD_NAME = st.one_of(
    st.sampled_from(["../../etc/passwd", "/etc/passwd", "inputs/../../x.png", "missing.png", "", "inputs/ok.png"]),
    st.text(max_size=30),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from(["text", "img2vid", "vid2vid", "travel", "nonsense"]),
    values=st.one_of(st.just({}), st.dictionaries(st.sampled_from(FORM_FIELDS), FORM_VALUE, max_size=3),
                     st.dictionaries(st.sampled_from(FORM_FIELDS), FORM_VALUE, max_size=8)),
    prompt=st.one_of(st.none(), st.text(max_size=60), st.just("a red circle moving right")),
    keyframes=st.one_of(st.text(max_size=60), st.just("0: a red circle\n24: a blue circle")),
    image=UPLOAD_NAME,
    video=UPLOAD_NAME,
)
def test_fuzz_the_web_forms_handler(tmp_path, mode, values, prompt, keyframes, image, video):
    """``videodiff.ui.form.build_config``, which every render request from the page goes through: a validated
    config or one ``UserError`` line, never another exception, and no path from the page outside the outputs."""
    from videodiff.config import RenderConfig
    from videodiff.errors import UserError
    from videodiff.ui import form

    outputs = tmp_path / "outputs"
    (outputs / "inputs").mkdir(parents=True, exist_ok=True)
    (outputs / "inputs" / "ok.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    page = {**values, "prompt": prompt, "keyframes": keyframes, "image": image, "video": video}
    try:
        config = form.build_config(mode, page, RenderConfig(), outputs)
    except UserError as exc:
        assert str(exc) and "\n" not in str(exc).strip()
        return
    root = outputs.resolve()
    named = [config.output, config.video, *(p.split(":", 1)[1] for p in config.image_at)]
    for path in filter(None, named):
        assert Path(path).resolve().is_relative_to(root), path
