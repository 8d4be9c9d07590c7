"""The CLI's deferred imports (videodiff/coldstart.py): less is imported, nothing behaves differently.

Each check runs in a fresh interpreter: what a process has imported cannot be undone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout


LOAD = """
import sys
from videodiff import coldstart
print("installed", coldstart.install())
from videodiff.pipelines import load_pipeline
pipe = load_pipeline()
dynamo = sys.modules["torch._dynamo"]
print("dynamo-run", "eval_frame" in vars(dynamo))
print("families-run", [n for n in coldstart.DEFERRED_PACKAGES if "__getattr__" not in vars(sys.modules[n])])
print("modules", len(sys.modules))
{after}
"""


def lines(out: str) -> dict[str, str]:
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.strip().splitlines() if " " in line}


def test_loading_the_builtin_model_runs_neither_dynamo_nor_the_model_families():
    deferred = lines(run_python(LOAD.format(after="")))
    eager = lines(run_python(LOAD.format(after=""), VIDEODIFF_EAGER_IMPORTS="1"))
    assert deferred["installed"] == "True" and eager["installed"] == "False"
    assert deferred["dynamo-run"] == "False" and eager["dynamo-run"] == "True"
    assert deferred["families-run"] == "[]"
    assert int(deferred["modules"]) < int(eager["modules"]) - 200


def test_a_deferred_package_loads_in_full_on_first_use_and_replays_allow_in_graph():
    after = """
import torch, diffusers.models.transformers as family
from diffusers.models.attention import BasicTransformerBlock
print("family-attr", family.Transformer2DModel.__name__)
print("compile-config", torch._dynamo.config.cache_size_limit > 0)
from torch._dynamo import trace_rules
print("allowed", id(BasicTransformerBlock) in trace_rules._allowed_callable_ids)
print("dynamo-now", "eval_frame" in vars(sys.modules["torch._dynamo"]))
"""
    got = lines(run_python(LOAD.format(after=after)))
    assert got["dynamo-run"] == "False"
    assert got["family-attr"] == "Transformer2DModel"
    assert got["compile-config"] == "True" and got["dynamo-now"] == "True"
    assert got["allowed"] == "True"  # diffusers' @maybe_allow_in_graph, replayed on the real module


def test_an_unknown_attribute_of_a_deferred_package_is_still_an_attribute_error():
    after = """
import diffusers.models.unets as family
try:
    family.NoSuchModel
except AttributeError as exc:
    print("error", type(exc).__name__)
print("real", family.UNet2DConditionModel.__name__)
"""
    got = lines(run_python(LOAD.format(after=after)))
    assert got["error"] == "AttributeError" and got["real"] == "UNet2DConditionModel"


def test_the_cli_renders_the_same_bytes_with_and_without_deferral(tmp_path):
    outputs = []
    for eager in ("0", "1"):
        out = tmp_path / f"v{eager}.gif"
        done = subprocess.run([sys.executable, "-m", "videodiff", "render", "a red circle moving right", "--seed", "3",
                               "--frames", "8", "-o", str(out)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "VIDEODIFF_EAGER_IMPORTS": eager})
        assert done.returncode == 0, done.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


EXIT_SCRIPT = """
import atexit, os, sys
record = sys.argv[1]
real_exit = os._exit
def spy(code):
    with open(record, "a") as f:
        f.write(f"os._exit {code}\\n")
    real_exit(code)
os._exit = spy
def handler():
    with open(record, "a") as f:
        f.write("atexit\\n")
atexit.register(handler)
sys.argv = ["videodiff", *sys.argv[2:]]
from videodiff.cli import run
run()
"""


def run_cli(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    record = tmp_path / "record.txt"
    record.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, str(record), *args], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    return done, record.read_text().splitlines() if record.exists() else []


def test_the_program_ends_without_teardown_after_its_atexit_handlers_and_keeps_its_exit_status(tmp_path, models):
    args = ["render", "a cat", *models, "--height", "16", "--width", "16", "--frames", "3", "--steps", "2",
            "--seed", "1", "-o", "x.gif"]
    done, record = run_cli(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    assert record == ["atexit", "os._exit 0"]  # the handlers first, then the quick exit
    assert done.stdout.strip().endswith("x.gif")  # what was printed is flushed, not lost
    assert iio.imread(tmp_path / "x.gif", index=None).shape[0] == 3  # the video is whole
    assert json.loads((tmp_path / "x.gif.json").read_text())["seed"] == 1  # and its sidecar
    done, record = run_cli(tmp_path, *args)  # refused: x.gif exists
    assert done.returncode == 2 and record == ["atexit", "os._exit 2"]
    assert done.stderr.strip().splitlines()[-1].startswith("videodiff: error: ")


def test_with_eager_imports_the_program_exits_as_python_does(tmp_path):
    done, record = run_cli(tmp_path, "--version", VIDEODIFF_EAGER_IMPORTS="1")
    assert done.returncode == 0 and record == ["atexit"]  # the handlers, no quick exit
    done, record = run_cli(tmp_path, "--version")
    assert done.returncode == 0 and record == ["atexit", "os._exit 0"]
