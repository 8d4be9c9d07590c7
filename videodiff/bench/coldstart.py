"""Cold start of ``videodiff render`` on the built-in model: import, load, render, end to end.

Runs fresh processes alternately with the CLI's deferred imports on (the default) and off
(``VIDEODIFF_EAGER_IMPORTS=1``) and reports the median of each phase. Each process runs the CLI's own
entry point (``videodiff.cli.main``) on ``render "a red circle moving right" --seed 1``; the phases are
measured inside it: ``import`` (the CLI module up to torch, diffusers and transformers being imported by
the load), ``load`` (the pipeline), ``render`` (sampling, decode, write) and ``total`` (process start to
exit, measured outside).
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
import json, sys, time
t0 = time.perf_counter()
from videodiff import coldstart
coldstart.install()  # as the CLI's main() does first (off under VIDEODIFF_EAGER_IMPORTS=1)
import videodiff.pipelines as pipelines
phases = {}
real_load = pipelines.VideoPipeline.load.__func__
def timed_load(cls, *a, **k):
    phases["import"] = time.perf_counter() - t0
    t = time.perf_counter()
    pipe = real_load(cls, *a, **k)
    phases["load"] = time.perf_counter() - t
    phases["_after_load"] = time.perf_counter()
    return pipe
pipelines.VideoPipeline.load = classmethod(timed_load)
from videodiff.cli import main
sys.argv = ["videodiff", "render", "a red circle moving right", "--seed", "1", "-o", sys.argv[1], "--overwrite"]
try:
    main()
except SystemExit:
    pass
phases["render"] = time.perf_counter() - phases.pop("_after_load")
print("PHASES", json.dumps(phases))
"""


def one(eager: bool, out: str) -> dict[str, float]:
    """One fresh process: its phases in seconds."""
    env = {**os.environ, "VIDEODIFF_EAGER_IMPORTS": "1" if eager else "0"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, out], capture_output=True, text=True, env=env)
    total = time.perf_counter() - start
    line = [x for x in done.stdout.splitlines() if x.startswith("PHASES ")]
    if done.returncode != 0 or not line:
        raise UserError("a cold-start process failed: " + done.stderr[-2000:].strip().replace("\n", " | "))
    return {**json.loads(line[0][7:]), "total": total}


def run_coldstart(runs: int = 5) -> dict[str, dict[str, float]]:
    """One warm-up process, then ``runs`` processes per mode, alternating; the median phases per mode."""
    with tempfile.TemporaryDirectory() as tmp:
        one(False, f"{tmp}/warm.gif")  # bytecode compiled, files in the page cache
        measured: dict[str, list[dict[str, float]]] = {"deferred": [], "eager": []}
        for _ in range(runs):
            for name in measured:
                measured[name].append(one(name == "eager", f"{tmp}/{name}.gif"))
    return {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for name, rows in measured.items()}


def format_coldstart(medians: dict[str, dict[str, float]], runs: int) -> list[str]:
    """The table the command prints."""
    lines = [
        f"median of {runs} fresh processes each, alternating (seconds)",
        f"{'imports':10} {'import':>7} {'load':>6} {'render':>7} {'total':>6}",
    ]
    for name, med in medians.items():
        lines.append(f"{name:10} {med['import']:7.2f} {med['load']:6.2f} {med['render']:7.2f} {med['total']:6.2f}")
    return lines
