"""Why a repeated render in one process is not faster: time, page faults and kernel time per render.

    python scripts/repeat_probe.py --renders 3                       # videodiff's heap policy (the default)
    VIDEODIFF_HEAP=system python scripts/repeat_probe.py --renders 3 # glibc's own

Loads bench.py's ``cpu-small`` preset once (random weights), renders ``--renders`` times with the same
settings, and prints for each render its seconds, minor page faults and user/system CPU seconds
(``resource.getrusage`` deltas).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=3)
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--cache", default="/tmp/videodiff-bench")
    args = parser.parse_args()
    from bench import PRESETS, build

    from videodiff import load_pipeline

    model, motion = build(args.preset, Path(args.cache) / args.preset)
    pipe = load_pipeline(str(model), str(motion), device="cpu")
    for i in range(args.renders):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        pipe("a red circle moving right", guidance_scale=7.5, seed=0, **PRESETS[args.preset]["render"])
        after, seconds = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
        print(json.dumps({
            "render": i + 1,
            "seconds": round(seconds, 2),
            "minor_faults": after.ru_minflt - before.ru_minflt,
            "user_s": round(after.ru_utime - before.ru_utime, 2),
            "sys_s": round(after.ru_stime - before.ru_stime, 2),
            "max_rss_mib": round(after.ru_maxrss / 1024),
        }), flush=True)


if __name__ == "__main__":
    main()
