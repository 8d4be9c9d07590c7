"""Time and peak memory of one long render on the built-in shapes model (issue 16), in this process.

    /usr/bin/time -v python scripts/long_bench.py --frames 64        # "Maximum resident set size" is the peak
    python scripts/long_bench.py --frames 64 --window-layers temporal  # windows in the motion modules only
    python scripts/long_bench.py --preset cpu-small --frames 128 --steps 1   # bench.py's random-weight model, 256x256

Prints frames, windows, render seconds (sampling and decode, model load excluded) and the process's peak RSS
(``resource.getrusage``: the whole process, model load included) as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from videodiff import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prompt", default="a red circle moving right")
    parser.add_argument("--window", type=int, default=None)
    parser.add_argument("--window-layers", default="unet", help="unet (the default) or temporal")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's (12)")
    parser.add_argument("--preset", default=None, help="a bench.py preset (random weights)")
    parser.add_argument("--cache", default=".bench-models", help="where --preset models are built once")
    args = parser.parse_args()
    size = {}
    if args.preset:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).parent))
        from bench import PRESETS, build

        model, motion = build(args.preset, Path(args.cache) / args.preset)
        pipe = load_pipeline(str(model), str(motion), device="cpu")
        render = PRESETS[args.preset]["render"]
        size = {"height": render["height"], "width": render["width"]}
        args.steps = args.steps or render["num_inference_steps"]
    else:
        pipe = load_pipeline(device="cpu")
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    motion = {} if args.preset else {"motion": (0.6, 0)}  # the built-in model's prior; a random model has none
    layers = {"window": args.window, "window_layers": args.window_layers}
    pipe(args.prompt, num_frames=args.frames, seed=args.seed, steps=args.steps, **layers, **size, **motion)
    seconds = time.perf_counter() - start
    plan = pipe.windows_for(pipe.settings(args.prompt, num_frames=args.frames, **layers))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    windows = len(plan.indices()) if plan else 1
    record = {"model": args.preset or "built-in", **size, "frames": args.frames, "windows": windows,
              "window_layers": args.window_layers,
              "render_s": round(seconds, 1)}
    print(json.dumps({**record, "peak_rss_mib_after_load": round(loaded), "peak_rss_mib": round(peak)}))


if __name__ == "__main__":
    main()
