#!/usr/bin/env python
"""Feature caching (``--cache N``) on the built-in shapes model: render seconds per N, interleaved in one process.

One model load and one warm-up render, then ``--rounds`` rounds; each round renders every prompt once at
every N (the order of the Ns reversed every other round, so drift on a shared machine hits them all).
Prints the median render time per N (loading excluded: the model is loaded once), its speed-up over N=1,
and the mean absolute frame difference from N=1's videos (0-255). The cpu-small preset (random weights,
speed only) is ``python scripts/bench.py --preset cpu-small --feature-cache 2 3 5``.

    python scripts/bench_cache.py --rounds 3 1 2 3 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

PROMPTS = ("a red circle moving right", "a blue square moving up", "a green triangle moving left")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("every", type=int, nargs="+", help="the Ns to time (1: uncached)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    from videodiff.pipelines import load_pipeline

    pipe = load_pipeline(device="cpu")
    pipe(PROMPTS[0], seed=args.seed)  # warm-up: the first render pays for oneDNN's kernels and the heap
    seconds = {n: [] for n in args.every}
    frames = {}
    for r in range(args.rounds):
        for n in args.every if r % 2 == 0 else args.every[::-1]:
            for prompt in PROMPTS:
                start = time.perf_counter()
                out = pipe(prompt, seed=args.seed, cache=n).frames
                seconds[n].append(time.perf_counter() - start)
                frames[n, prompt] = out
    base = args.every[0]
    results = {"renders_per_n": args.rounds * len(PROMPTS), "prompts": PROMPTS, "seed": args.seed}
    for n in args.every:
        median = statistics.median(seconds[n])
        diff = np.mean([np.abs(frames[n, p].astype(int) - frames[base, p]).mean() for p in PROMPTS])
        results[f"cache_{n}"] = {
            "median_s": round(median, 3),
            "all_s": [round(s, 2) for s in seconds[n]],
            "speedup": round(statistics.median(seconds[base]) / median, 3),
            "frame_diff_from_first": round(float(diff), 2),
        }
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
