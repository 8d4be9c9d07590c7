"""Score the built-in shapes model under several sampling settings, one model load, printing each row.

Each setting is ``key=value,key=value`` of :class:`videodiff.config.SampleSettings` fields
(``steps``, ``guidance``, ``scheduler``, ``motion_prior``, ``noise``, ``noise_alpha``...);
``default`` is the model's recorded defaults. Example (the issue's held-out set: 10 combinations x 8 seeds):

    python scripts/shapes_sweep.py --combos heldout --seeds 8 default motion_prior=0.42 steps=16
    python scripts/shapes_sweep.py --combos heldout --seeds 2 default guidance_interval=0,0.5

``--diff`` also reports each setting's mean absolute difference (0-255) from the first setting's videos, per
pixel, over the same prompts and seeds (e.g. feature caching against uncached):

    python scripts/shapes_sweep.py --combos all --seeds 1 --diff default cache=2 cache=3 cache=5

``--motion-module`` scores other motion modules (a fine-tuning run's); ``--against`` an earlier run's
``--out`` file lists, per video, what turned right (+) or wrong (-) on colour, shape, direction and steadiness:

    python scripts/shapes_sweep.py --seeds 8 --out base.jsonl default
    python scripts/shapes_sweep.py --seeds 8 --motion-module run/motion_module --against base.jsonl default
"""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np

from videodiff.pipelines import load_pipeline
from videodiff.shapes.evaluate import evaluate_model
from videodiff.shapes.world import combos_of


def number(value: str):
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def parse(text: str) -> dict:
    """``key=value,key=value``; a value with commas of its own (``guidance_interval=0,0.5``) is a pair."""
    if text == "default":
        return {}
    out = {}
    for part in re.split(r",(?=[a-z_]+=)", text):
        key, value = part.split("=")
        out[key] = tuple(float(v) for v in value.split(",")) if "," in value else number(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("settings", nargs="+")
    ap.add_argument("--combos", default="heldout")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first..first+seeds-1 (fresh seeds: a check "
                    "of a setting chosen on seeds 0..)")
    ap.add_argument("--out", help="JSON lines: one per setting, with every video's detection")
    ap.add_argument("--diff", action="store_true", help="mean absolute frame difference from the first setting")
    ap.add_argument("--model", help="the model (default: the built-in one)")
    ap.add_argument("--motion-module", help="other motion modules (e.g. a `videodiff train` run's)")
    ap.add_argument("--against", help="a JSON-lines file of an earlier run: list the videos whose colour, shape, "
                    "direction or steadiness changed from its first setting")
    args = ap.parse_args()
    pipe = load_pipeline(args.model, args.motion_module)
    before = {}
    if args.against:
        with open(args.against) as fh:
            before = {(v["prompt"], v["seed"]): v for v in json.loads(fh.readline())["videos"]}
    combos = combos_of(args.combos)
    first: dict = {}  # (prompt, seed) -> the first setting's frames, with --diff
    for n, text in enumerate(args.settings):
        kw = parse(text)
        start = time.perf_counter()
        diffs: list[float] = []

        def render(prompt: str, seed: int, kw=kw, n=n, diffs=diffs):
            frames = pipe(prompt, seed=seed, **kw).frames
            if args.diff and n == 0:
                first[prompt, seed] = frames
            elif args.diff:
                diffs.append(float(np.abs(frames.astype(np.int16) - first[prompt, seed]).mean()))
            return frames

        report = evaluate_model(render, range(args.first_seed, args.first_seed + args.seeds), combos, label=text)
        s = report.summary()
        counts = {k: round(s[k] * s["n"]) for k in ("color", "shape", "direction", "stable", "steady", "all")}
        seconds = time.perf_counter() - start
        diff = f" diff={np.mean(diffs):.2f}/255 (max of videos {np.max(diffs):.2f})" if diffs else ""
        print(f"{text}: n={s['n']} " + " ".join(f"{k}={v}" for k, v in counts.items())
              + f"{diff} ({seconds:.0f} s)", flush=True)
        if before:
            print_changes(before, report.to_dict()["videos"])
        if args.out:
            with open(args.out, "a") as fh:
                extra = {"seconds": round(seconds, 1), **({"frame_diff": diffs} if diffs else {})}
                fh.write(json.dumps({"setting": text, "summary": s, **extra, **report.to_dict()}) + "\n")


def print_changes(before: dict, videos: list[dict]) -> None:
    """Per video, what turned right (+) or wrong (-) against the earlier run, on the columns the issues guard."""

    def right(video: dict) -> dict:
        _, color, shape, _, direction = video["prompt"].split()  # "a {color} {shape} moving {direction}"
        asked = {"color": color, "shape": shape, "direction": direction}
        return {**{k: video[k] == asked[k] for k in asked}, "steady": bool(video["steady"])}

    for v in videos:
        old = before.get((v["prompt"], v["seed"]))
        if old is None:
            continue
        was, now = right(old), right(v)
        changed = [("+" if now[k] else "-") + k for k in now if now[k] != was[k]]
        if changed:
            print(f"  {v['prompt']!r} seed {v['seed']}: {' '.join(changed)}")


if __name__ == "__main__":
    main()
