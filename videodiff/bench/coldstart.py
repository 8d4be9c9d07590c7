"""Cold start of ``videodiff render`` on the built-in model, split by phase (``videodiff bench coldstart``).

Runs fresh processes alternately with the CLI's deferred imports on (the default) and off
(``VIDEODIFF_EAGER_IMPORTS=1``, left out with ``eager=False``) and reports the median of each phase. Each process
runs the CLI's own entry point (``videodiff.cli.main``) on ``render "a red circle moving right" --seed 1``. Phases:
``interpreter`` (launch to the child's first line), the imports in the order ``torch``, ``transformers`` (the CLIP
classes), ``diffusers`` (U-Net, VAE, scheduler) and ``videodiff`` (a module two of them share counts under the
first), ``cli`` (option parsing and input checks up to the load), ``load`` (the pipeline), ``sampling`` (prompt,
noise, every step), ``decode`` (the VAE), ``write`` (post-processing, the file, the sidecar), ``exit``
(the end of the process: :func:`videodiff.coldstart.exit_now` as the program ends, the interpreter's teardown with
eager imports) and ``total`` (launch to exit, measured outside).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from videodiff.errors import UserError

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
phases = {"interpreter": time.time() - float(os.environ["VIDEODIFF_COLDSTART_LAUNCH"])}
from videodiff import coldstart
coldstart.install()  # as the CLI's main() does first (off under VIDEODIFF_EAGER_IMPORTS=1)
def timed(name, code):
    t = time.perf_counter()
    exec(code, {})
    phases[name] = time.perf_counter() - t
timed("torch", "import torch")
timed("transformers", "from transformers import CLIPTextModel, CLIPTokenizer")
timed("diffusers", "from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel")
t = time.perf_counter()
import videodiff.pipelines as pipelines
import videodiff.vae as vae
from videodiff.cli import main
phases["videodiff"] = time.perf_counter() - t
marks = {}
real_load = pipelines.VideoPipeline.load.__func__
def timed_load(cls, *a, **k):
    t = time.perf_counter()
    pipe = real_load(cls, *a, **k)
    marks["loaded"] = time.perf_counter()
    phases["load"] = marks["loaded"] - t
    return pipe
pipelines.VideoPipeline.load = classmethod(timed_load)
real_decode = vae.decode
def timed_decode(*a, **k):
    t = time.perf_counter()
    out = real_decode(*a, **k)
    marks["decode_end"] = time.perf_counter()
    phases["decode"] = phases.get("decode", 0.0) + marks["decode_end"] - t
    return out
vae.decode = timed_decode
phases["cli"] = time.perf_counter()  # the CLI's own work up to the load (option parsing, input checks)
sys.argv = ["videodiff", "render", "a red circle moving right", "--seed", "1", "-o", sys.argv[1], "--overwrite"]
try:
    main()
except SystemExit as exc:
    if exc.code not in (None, 0):
        raise
end = time.perf_counter()
phases["cli"] = marks["loaded"] - phases["load"] - phases["cli"]
phases["sampling"] = marks["decode_end"] - marks["loaded"] - phases["decode"]  # a motion prior decodes early too
phases["write"] = end - marks["decode_end"]
phases["inside"] = end - t0
print("PHASES", json.dumps(phases))
coldstart.exit_now(0)  # as the program ends (videodiff.cli.run): no teardown, unless imports are eager
"""

# the columns the command prints, in the order a render runs them
PHASES = ("interpreter", "torch", "transformers", "diffusers", "videodiff", "cli", "load", "sampling", "decode",
          "write", "exit", "total")


def one(eager: bool, out: str) -> dict[str, float]:
    """One fresh process: its phases in seconds."""
    env = {**os.environ, "VIDEODIFF_EAGER_IMPORTS": "1" if eager else "0"}
    env["VIDEODIFF_COLDSTART_LAUNCH"] = repr(time.time())
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, out], capture_output=True, text=True, env=env)
    total = time.perf_counter() - start
    line = [x for x in done.stdout.splitlines() if x.startswith("PHASES ")]
    if done.returncode != 0 or not line:
        raise UserError("a cold-start process failed: " + done.stderr[-2000:].strip().replace("\n", " | "))
    phases = json.loads(line[0][7:])
    phases["exit"] = total - phases["interpreter"] - phases.pop("inside")  # interpreter shutdown, process exit
    return {**phases, "total": total}


def run_coldstart(runs: int = 5, eager: bool = True) -> dict[str, dict[str, float]]:
    """One warm-up process, then ``runs`` processes per mode (deferred imports, and with ``eager`` eager ones),
    alternating; the median of each phase per mode."""
    with tempfile.TemporaryDirectory() as tmp:
        one(False, f"{tmp}/warm.gif")  # bytecode compiled, files in the page cache
        measured: dict[str, list[dict[str, float]]] = {"deferred": [], **({"eager": []} if eager else {})}
        for _ in range(runs):
            for name in measured:
                measured[name].append(one(name == "eager", f"{tmp}/{name}.gif"))
    return {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for name, rows in measured.items()}


def format_coldstart(medians: dict[str, dict[str, float]], runs: int) -> list[str]:
    """The table the command prints."""
    lines = [
        f"median of {runs} fresh processes each, alternating (seconds)",
        f"{'imports':9} " + " ".join(f"{p:>{max(len(p), 5)}}" for p in PHASES),
    ]
    for name, med in medians.items():
        lines.append(f"{name:9} " + " ".join(f"{med[p]:{max(len(p), 5)}.2f}" for p in PHASES))
    return lines
