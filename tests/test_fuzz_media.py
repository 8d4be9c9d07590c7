"""The media readers against generated files whose headers declare huge sizes and frame counts (issue 30, Proof).

Small PNG, GIF, WebP, JPEG and MP4 files are built here with their headers patched: sizes up to each format's
field limit, zero sizes, 1xN strips, thousands of frames, cut-off bodies. Each batch runs the readers that
img2vid, vid2vid, keyframes, training and the web app read through (:data:`hostile_media.READERS`) in one fresh
process whose address space is limited to :data:`LIMIT` (RLIMIT_AS) with an alarm per case. Every case must
return an array within the budgets of :mod:`videodiff.media.budget` or raise one line (UserError; training's
``probe``/``read_frames``: UnreadableVideo): never a traceback, never MemoryError, never a hang. torch is never
imported by the readers.

The default suite runs :data:`BATCHES` batches of :data:`CASES` cases, the same every run, with declared sizes
either small or far over a budget (the cases at a budget's edge are tests/test_media_budget.py's, one by one);
``-m slow`` explores every size, frame count and stride.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import pytest
from hostile_media import (
    READERS,
    bmp_bytes,
    gif_bytes,
    jpeg_bytes,
    mp4_bytes,
    patch_mp4,
    png_bytes,
    run_readers,
    tiff_bytes,
    webp_bytes,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from videodiff.media.budget import MAX_CLIP_BYTES, MAX_DECODE_PIXELS

LIMIT = 2 << 30  # address space of the reading process: MAX_CLIP_BYTES held, plus the interpreter and one decode
SECONDS = 60  # a case that takes longer is a hang
BATCHES = int(os.environ.get("VIDEODIFF_FUZZ_MEDIA_BATCHES", "5"))
CASES = 16  # cases a batch (one process)
SLOW_BATCHES = 40

FORMATS = ("png", "gif", "gif-real", "webp-canvas", "webp-lossless", "jpeg", "bmp", "tiff", "mp4")


@functools.cache
def real_mp4(which: int) -> bytes:
    return [mp4_bytes(4, 16, 16), mp4_bytes(12, 64, 48), mp4_bytes(3, 640, 360)][which]


@st.composite
def media(draw, slow: bool) -> tuple[str, bytes]:
    """(suffix, bytes) of one generated file."""
    fmt = draw(st.sampled_from(FORMATS))
    small = st.integers(0, 300)
    if slow:
        over = st.integers(0, 70_000)
    else:  # either cheap to decode or refused from the header
        over = st.sampled_from([8193, 15_000, 65_535, 16_777_216, 240_000_000])
    side = st.one_of(small, over, st.sampled_from([0, 1, 2]))
    width, height = draw(side), draw(side)
    if fmt == "png":
        width, height = min(width, 2**31 - 1), min(height, 2**31 - 1)
        whole = width * height <= (1 << 22 if slow else 1 << 16)
        rows = None if whole and draw(st.booleans()) else draw(st.integers(0, 3))
        data = png_bytes(width, height, channels=draw(st.sampled_from([1, 3, 4])), rows=rows)
    elif fmt in ("gif", "gif-real"):
        width, height = min(width, 65_535), min(height, 65_535)
        if fmt == "gif-real":
            width, height = max(1, min(width, 64)), max(1, min(height, 64))
        frames = draw(st.integers(1, 2000 if slow else 64))
        if not slow and width * height > 1 << 16:  # far over the budget, or few frames of a cheap size
            frames = min(frames, 4)
        data = gif_bytes(width, height, min(frames, 8) if fmt == "gif-real" else frames, real=fmt == "gif-real")
    elif fmt == "webp-canvas":
        data = webp_bytes(max(1, min(width, 1 << 24)), max(1, min(height, 1 << 24)))
    elif fmt == "webp-lossless":
        data = webp_bytes(max(1, min(width, 16384)), max(1, min(height, 16384)), kind="VP8L")
    elif fmt == "jpeg":
        data = jpeg_bytes(min(width, 65_535), min(height, 65_535))
    elif fmt == "bmp":
        data = bmp_bytes(min(width, 2**31 - 1), min(height, 2**31 - 1) * draw(st.sampled_from([1, -1])))
    elif fmt == "tiff":
        data = tiff_bytes(min(width, 2**32 - 1), min(height, 2**32 - 1))
    else:
        data = real_mp4(draw(st.integers(0, 2)))
        if draw(st.booleans()):
            patched = {
                "width": draw(st.one_of(st.none(), side)),
                "height": draw(st.one_of(st.none(), side)),
                "count": draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
            }
            data = patch_mp4(data, **patched)
    if draw(st.integers(0, 3)) == 0:  # cut off anywhere
        data = data[: draw(st.integers(0, len(data)))]
    suffix = {"gif-real": "gif", "webp-canvas": "webp", "webp-lossless": "webp", "tiff": "tif"}.get(fmt, fmt)
    return suffix, data


@st.composite
def case(draw, slow: bool) -> dict:
    suffix, data = draw(media(slow))
    return {
        "suffix": suffix,
        "data": data,
        "reader": draw(st.sampled_from(READERS)),
        "frames": draw(st.integers(1, 16)),
        "stride": draw(st.integers(1, 1000) if slow else st.integers(1, 4)),
        "height": draw(st.sampled_from([8, 16, 64, 512])),
        "width": draw(st.sampled_from([8, 16, 64, 512])),
        "fit": draw(st.sampled_from(["crop", "pad"])),
        "side": draw(st.sampled_from([None, 256, 1024])),
    }


def check_batch(cases: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for k, one in enumerate(cases):
            path = Path(tmp) / f"case{k}.{one['suffix']}"
            path.write_bytes(one["data"])
            jobs.append({key: value for key, value in one.items() if key != "data"} | {"path": str(path)})
        report = run_readers(jobs, limit=LIMIT, seconds=SECONDS)
    assert not report["torch"], "a media reader imported torch"
    for job, got in zip(jobs, report["results"]):
        shown = f"{job['reader']} on a {len(cases[jobs.index(job)]['data'])}-byte .{job['suffix']} {job}: {got}"
        assert "traceback" not in got and "hang" not in got, shown
        if "user_error" in got or "unreadable" in got:
            message = got.get("user_error") or got.get("unreadable")
            assert "\n" not in message and 0 < len(message) < 600, shown
            assert Path(job["path"]).name in message, shown
            assert "unreadable" not in got or job["reader"] == "read_frames", shown  # else always a UserError
            continue
        assert got["nbytes"] <= MAX_CLIP_BYTES, shown
        if got["shape"] is None:  # the checks return sizes, not pixels
            continue
        height, width = got["shape"][-3:-1]
        assert height * width <= MAX_DECODE_PIXELS, shown
        if job["reader"] in ("load_image", "read_video"):
            assert (height, width) == (job["height"], job["width"]), shown
        if job["reader"] in ("read_video", "read_frames"):
            assert got["shape"][0] <= job["frames"], shown


def fuzz(batches: int, slow: bool) -> None:
    @settings(
        max_examples=batches,
        deadline=None,
        derandomize=not slow,  # the default suite is the same every run; the slow one explores
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(st.lists(case(slow), min_size=CASES, max_size=CASES))
    def run(cases: list[dict]) -> None:
        check_batch(cases)

    run()


def test_fuzz_media_readers():
    fuzz(BATCHES, slow=False)


@pytest.mark.slow
def test_fuzz_media_readers_long():
    fuzz(SLOW_BATCHES, slow=True)
