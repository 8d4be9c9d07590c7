"""Score the built-in shapes model under several sampling settings, one model load, printing each row.

Each setting is ``key=value,key=value`` of :class:`videodiff.config.SampleSettings` fields
(``steps``, ``guidance``, ``scheduler``, ``motion_prior``, ``noise``, ``noise_alpha``...);
``default`` is the model's recorded defaults. Example (the issue's held-out set: 10 combinations x 8 seeds):

    python scripts/shapes_sweep.py --combos heldout --seeds 8 default motion_prior=0.42 steps=16
    python scripts/shapes_sweep.py --combos heldout --seeds 2 default guidance_interval=0,0.5
"""

from __future__ import annotations

import argparse
import json
import re
import time

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
    ap.add_argument("--out", help="JSON lines: one per setting, with every video's detection")
    args = ap.parse_args()
    pipe = load_pipeline()
    combos = combos_of(args.combos)
    for text in args.settings:
        kw = parse(text)
        start = time.perf_counter()

        def render(prompt: str, seed: int, kw=kw):
            return pipe(prompt, seed=seed, **kw).frames

        report = evaluate_model(render, range(args.seeds), combos, label=text)
        s = report.summary()
        counts = {k: round(s[k] * s["n"]) for k in ("color", "shape", "direction", "stable", "steady", "all")}
        print(f"{text}: n={s['n']} " + " ".join(f"{k}={v}" for k, v in counts.items())
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps({"setting": text, "summary": s, **report.to_dict()}) + "\n")


if __name__ == "__main__":
    main()
