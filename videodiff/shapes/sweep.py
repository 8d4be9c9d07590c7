"""Score a model on the shapes world under several sampling settings, one model load (``videodiff eval sweep``).

Each setting is ``key=value,key=value`` of render settings (``steps``, ``guidance``, ``scheduler``,
``motion_prior``, ``noise``, ``cache``...); ``default`` is the model's recorded defaults. One line per setting
with the counts of videos right on each column; ``diff`` adds each setting's mean absolute difference (0-255)
from the first setting's videos; ``against`` (an earlier run's ``out`` file) lists, per video, what turned
right (+) or wrong (-) on colour, shape, direction and steadiness.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from videodiff.shapes.evaluate import evaluate_model
from videodiff.shapes.world import combos_of


def number(value: str) -> int | float | str:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def parse_setting(text: str) -> dict[str, Any]:
    """``key=value,key=value``; a value with commas of its own (``guidance_interval=0,0.5``) is a tuple."""
    if text == "default":
        return {}
    out: dict[str, Any] = {}
    for part in re.split(r",(?=[a-z_]+=)", text):
        key, value = part.split("=")
        out[key] = tuple(float(v) for v in value.split(",")) if "," in value else number(value)
    return out


def run_sweep(
    settings: Iterable[str],
    combos: str = "heldout",
    seeds: int = 8,
    first_seed: int = 0,
    out: str | None = None,
    diff: bool = False,
    model: str | None = None,
    motion_module: str | None = None,
    against: str | None = None,
    dtype: str = "auto",
    echo: Callable[[str], Any] = print,
) -> list[dict]:
    """Render and score ``combos`` x seeds ``first_seed..first_seed+seeds-1`` per setting; the summaries."""
    from videodiff.pipelines import load_pipeline

    pipe = load_pipeline(model, motion_module, dtype=dtype)
    before = {}
    if against:
        with open(against) as fh:
            before = {(v["prompt"], v["seed"]): v for v in json.loads(fh.readline())["videos"]}
    chosen = combos_of(combos)
    first: dict = {}  # (prompt, seed) -> the first setting's frames, with diff
    summaries = []
    for n, text in enumerate(settings):
        kw = parse_setting(text)
        start = time.perf_counter()
        diffs: list[float] = []

        def render(prompt: str, seed: int, kw=kw, n=n, diffs=diffs):
            frames = pipe(prompt, seed=seed, **kw).frames
            if diff and n == 0:
                first[prompt, seed] = frames
            elif diff:
                diffs.append(float(np.abs(frames.astype(np.int16) - first[prompt, seed]).mean()))
            return frames

        report = evaluate_model(render, range(first_seed, first_seed + seeds), chosen, label=text)
        s = report.summary()
        counts = {k: round(s[k] * s["n"]) for k in ("color", "shape", "direction", "stable", "steady", "all")}
        seconds = time.perf_counter() - start
        shown = f" diff={np.mean(diffs):.2f}/255 (max of videos {np.max(diffs):.2f})" if diffs else ""
        echo(f"{text}: n={s['n']} " + " ".join(f"{k}={v}" for k, v in counts.items()) + f"{shown} ({seconds:.0f} s)")
        if before:
            for line in changes_against(before, report.to_dict()["videos"]):
                echo(line)
        if out:
            with open(out, "a") as fh:
                extra = {"seconds": round(seconds, 1), **({"frame_diff": diffs} if diffs else {})}
                fh.write(json.dumps({"setting": text, "summary": s, **extra, **report.to_dict()}) + "\n")
        summaries.append({"setting": text, "counts": counts, "n": s["n"], **({"frame_diff": diffs} if diffs else {})})
    return summaries


def changes_against(before: dict, videos: list[dict]) -> list[str]:
    """Per video, what turned right (+) or wrong (-) against the earlier run, on the columns the issues guard."""

    def right(video: dict) -> dict:
        _, color, shape, _, direction = video["prompt"].split()  # "a {color} {shape} moving {direction}"
        asked = {"color": color, "shape": shape, "direction": direction}
        return {**{k: video[k] == asked[k] for k in asked}, "steady": bool(video["steady"])}

    lines = []
    for v in videos:
        old = before.get((v["prompt"], v["seed"]))
        if old is None:
            continue
        was, now = right(old), right(v)
        changed = [("+" if now[k] else "-") + k for k in now if now[k] != was[k]]
        if changed:
            lines.append(f"  {v['prompt']!r} seed {v['seed']}: {' '.join(changed)}")
    return lines
