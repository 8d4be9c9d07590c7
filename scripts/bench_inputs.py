#!/usr/bin/env python
"""Peak memory of reading a very large picture for a small output (videodiff.media.images.load_image).

Writes a 12000x12000 (144 MP) picture, then loads it in a fresh process for a small output and
prints that process's peak RSS (``ru_maxrss``; the same number ``/usr/bin/time -v`` reports as
"Maximum resident set size"). The picture is written by another process, so writing it is not counted.

    python scripts/bench_inputs.py                       # PNG (RGB), 64x64 crop
    python scripts/bench_inputs.py --format jpg --mode RGB --size 12000 --out 64x64
    python scripts/bench_inputs.py --format png --mode RGBA --fit pad
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose videodiff is measured

WRITE = """
import sys
import numpy as np
from PIL import Image
path, size, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
y, x = np.ogrid[0:size, 0:size]
channels = [(x * 255 // size + 0 * y), (y * 255 // size + 0 * x), ((x ^ y) & 255)]
if mode == "RGBA":
    channels.append((x * 255 // size + 0 * y))
picture = np.stack([c.astype(np.uint8) for c in channels], -1)
Image.fromarray(picture, mode).save(path, compress_level=1, quality=90)
"""

LOAD = """
import json, resource, sys, time
from videodiff.media.images import load_image
path, height, width, fit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
start = time.perf_counter()
out = load_image(path, height, width, fit=fit)
seconds = time.perf_counter() - start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
print(json.dumps({"shape": list(out.shape), "peak_rss_mb": round(peak_mb), "seconds": round(seconds, 2)}))
"""


def measure(path: Path, height: int, width: int, fit: str = "crop") -> dict:
    """Load ``path`` for a ``height x width`` output in a fresh process; its shape, peak RSS and time."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(path), str(height), str(width), fit],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )
    return json.loads(done.stdout)


def write_picture(path: Path, size: int, mode: str = "RGB") -> Path:
    subprocess.run([sys.executable, "-c", WRITE, str(path), str(size), mode], check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=12000, help="side of the square picture")
    parser.add_argument("--format", default="png", choices=["png", "jpg", "webp", "tiff"])
    parser.add_argument("--mode", default="RGB", choices=["RGB", "RGBA"])
    parser.add_argument("--out", default="64x64", help="output HEIGHTxWIDTH")
    parser.add_argument("--fit", default="crop", choices=["crop", "pad"])
    args = parser.parse_args()
    height, width = (int(v) for v in args.out.split("x"))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"big.{args.format}"
        start = time.perf_counter()
        write_picture(path, args.size, args.mode)
        print(
            f"wrote {args.size}x{args.size} {args.mode} {args.format}: {path.stat().st_size / 1e6:.0f} MB "
            f"in {time.perf_counter() - start:.0f} s"
        )
        result = measure(path, height, width, args.fit)
    print(json.dumps({"input": f"{args.size}x{args.size} {args.mode} {args.format}", "fit": args.fit, **result}))


if __name__ == "__main__":
    main()
