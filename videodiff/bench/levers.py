"""Each speed lever alone against the plain path, in fresh processes (``videodiff bench levers``).

One process per variant and round, the variants' order alternating between rounds, so drift on a shared machine
hits every variant. Each process loads a preset's random-weight model (:mod:`videodiff.bench.parity`), then calls
the video U-Net ``calls`` times on the preset's latents with guidance's batch of two (the work of one denoising
step), timing each call: wall seconds and the process's CPU seconds (user and system; on a loaded machine the
CPU time moves less than the wall time). The first call includes whatever the lever pays once (``compile``'s
compilation, or its load from the on-disk cache); the others are the steady state. Reported: the median over
rounds of the first call and of the later calls' median, the speed-up over the plain path, and the largest
difference of the U-Net's output from the plain path's (the frames are checked by tests/test_levers.py).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from videodiff.bench import BENCH_CACHE
from videodiff.errors import UserError

PLAIN = "plain"


def child(lever: str, preset: str, calls: int, out: str, cache: str) -> None:
    """One variant in this process: time ``calls`` guided U-Net calls and save the times and the last output."""
    import numpy as np
    import torch

    from videodiff import heap
    from videodiff.bench.parity import PRESETS, build, quiet_libraries
    from videodiff.pipelines import load_pipeline
    from videodiff.unet.levers import applied

    quiet_libraries()
    model, motion = build(preset, Path(cache) / preset)
    pipe = load_pipeline(str(model), str(motion), device="cpu", dtype="fp32")
    render = PRESETS[PRESETS[preset].get("models", preset)]["render"]
    generator = torch.Generator().manual_seed(0)
    shape = pipe.latent_shape(render["num_frames"], render["height"], render["width"])
    latents = torch.cat([torch.randn(shape, generator=generator)] * 2)  # guidance's batch of two
    context = torch.cat([pipe.encode(""), pipe.encode("a red circle moving right")])
    wall, cpu = [], []
    heap.keep_freed()  # as a render on the CPU does (videodiff.heap)
    with torch.no_grad(), applied(pipe.unet, None if lever == PLAIN else lever) as unet:
        for _ in range(calls):
            start, start_cpu = time.perf_counter(), time.process_time()
            eps = unet(latents, torch.tensor(500), context)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    np.savez(out, wall=np.array(wall), cpu=np.array(cpu), eps=eps.float().numpy())


def one(lever: str, preset: str, calls: int, cache: Path, tmp: str) -> dict[str, Any]:
    import numpy as np

    out = f"{tmp}/{lever}.npz"
    done = subprocess.run([sys.executable, "-m", "videodiff.bench.levers", lever, preset, str(calls), out, str(cache)],
                          capture_output=True, text=True, env=os.environ)
    if done.returncode != 0:
        raise UserError(f"the {lever} process failed: " + done.stderr[-1500:].strip().replace("\n", " | "))
    data = np.load(out)
    return {"wall": data["wall"].tolist(), "cpu": data["cpu"].tolist(), "eps": data["eps"]}


def run_levers(levers: list[str], preset: str = "cpu-small", repeat: int = 3, calls: int = 3,
               cache: Path = BENCH_CACHE) -> dict[str, Any]:
    """``repeat`` rounds of one fresh process per variant (the plain path and each lever), order alternating."""
    import numpy as np

    from videodiff.bench.parity import build

    build(preset, Path(cache) / preset)  # the random weights, once, outside the timed processes
    variants = [PLAIN, *levers]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeat):
            for variant in variants if i % 2 == 0 else variants[::-1]:
                runs[variant].append(one(variant, preset, calls, cache, tmp))
    results: dict[str, Any] = {"preset": preset, "repeat": repeat, "calls": calls,
                               "threads": os.environ.get("OMP_NUM_THREADS", "unset")}
    plain = runs[PLAIN]
    for variant, rs in runs.items():
        row: dict[str, Any] = {}
        for clock in ("wall", "cpu"):
            row[f"first_{clock}_s"] = statistics.median(r[clock][0] for r in rs)
            if calls > 1:
                row[f"later_{clock}_s"] = statistics.median(statistics.median(r[clock][1:]) for r in rs)
        for key in [k for k in row if k.endswith("_s")]:
            base = results.get(PLAIN, row)[key] if variant != PLAIN else row[key]
            row[key.replace("_s", "_speedup")] = round(base / row[key], 3)
            row[key] = round(row[key], 3)
        row["max_eps_diff"] = float(np.abs(rs[0]["eps"] - plain[0]["eps"]).max())
        row["runs_wall_s"] = [[round(x, 2) for x in r["wall"]] for r in rs]
        results[variant] = row
    return results


def format_levers(results: dict[str, Any]) -> list[str]:
    """The table the command prints: one row per variant."""
    later = results["calls"] > 1
    head = f"{'variant':14} {'first wall':>15} {'first cpu':>15}" + (f" {'later wall':>15} {'later cpu':>15}" * later)
    lines = [f"{results['preset']}: one guided U-Net call, median of {results['repeat']} fresh processes per variant"
             f" (OMP_NUM_THREADS={results['threads']}); seconds (speed-up over plain); max |eps - plain eps|",
             head + f" {'max diff':>9}"]
    for variant in [k for k, v in results.items() if isinstance(v, dict)]:
        row = results[variant]
        cells = [f"{row[f'{p}_{c}_s']:6.2f} ({row[f'{p}_{c}_speedup']:.2f}x)"
                 for p in ("first", "later")[: 1 + later] for c in ("wall", "cpu")]
        lines.append(f"{variant:14} " + " ".join(f"{c:>15}" for c in cells) + f" {row['max_eps_diff']:9.2e}")
    return lines


if __name__ == "__main__":
    lever, preset, calls, out, cache = sys.argv[1:]
    child(lever, preset, int(calls), out, cache)
