#!/usr/bin/env python
"""Time guided video U-Net calls alone, with videodiff's CPU levers on or off (the README's ablation table).

    python scripts/bench_unet.py --preset cpu-small                 # heap policy and padded heads on
    python scripts/bench_unet.py --preset cpu-small --no-heap --no-pad

One fresh process per setting; the first call is included in what it prints. The model is
the one ``scripts/bench.py`` builds (same cache folder).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    from bench import PRESETS, build  # scripts/bench.py, beside this file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--no-heap", action="store_true", help="leave glibc's allocator as it is")
    parser.add_argument("--no-pad", action="store_true", help="do not pad narrow attention heads")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "videodiff-bench")
    args = parser.parse_args()

    from videodiff import heap, load_pipeline
    from videodiff.unet import temporal

    if not args.no_heap:
        heap.keep_freed()
    if args.no_pad:
        temporal.PAD_MIN_KEYS = 2**62
    model, motion = build(args.preset, args.cache / args.preset)
    render = PRESETS[args.preset]["render"]
    pipe = load_pipeline(str(model), str(motion), device="cpu")
    latents = pipe.latent_shape(render["num_frames"], render["height"], render["width"])
    x = torch.randn(latents, generator=torch.Generator().manual_seed(0)).repeat(2, 1, 1, 1, 1)
    context = torch.cat([pipe.encode("a red circle moving right"), pipe.encode("")])
    seconds = []
    with torch.no_grad():
        for _ in range(args.calls):
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            pipe.unet(x, torch.tensor(500), context)
            seconds.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"heap {'off' if args.no_heap else 'on'}, padded heads {'off' if args.no_pad else 'on'}: "
        f"seconds per guided call {', '.join(f'{s:.2f}' for s in seconds)}; last call "
        f"{after.ru_minflt - before.ru_minflt} page faults, {after.ru_stime - before.ru_stime:.2f} s kernel time"
    )


if __name__ == "__main__":
    main()
