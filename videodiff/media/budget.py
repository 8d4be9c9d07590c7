"""What reading one picture or clip may cost, stated once and checked from the file's header before decoding.

A picture or video file declares its size (and a video its frame count) in a few header bytes; decoding
allocates what the header declares. Every reader in :mod:`videodiff.media` checks the declared sizes against
these budgets before it decodes, decodes reduced where the request is smaller and the format allows it (JPEG's
DCT scaling; video frames fitted to the output size one at a time), and refuses the rest in one line naming
the budget. Torch-free and Pillow-free: the numbers and their checks only.
"""

from __future__ import annotations

import math

from videodiff.errors import UserError

__all__ = [
    "MAX_CLIP_BYTES",
    "MAX_DECODE_PIXELS",
    "MAX_DECODE_WORK",
    "MAX_READ_WHOLE_BYTES",
    "MAX_VIDEO_FRAMES",
    "MAX_VIDEO_SIDE",
    "PIXEL_LIMIT",
    "check_clip",
    "decode_scale",
    "gib",
]

# The pixels a picture file may declare; beyond MAX_DECODE_PIXELS only a JPEG is read (reduced while decoding).
PIXEL_LIMIT = 250_000_000  # a 12000x12000 photo is 144 MP
# Pixels of one picture or video frame as its decoder holds it (a JPEG after DCT scaling by 1/2, 1/4 or 1/8):
# 4096x4096, 64 MiB at Pillow's 4 bytes a pixel. A larger PNG, WebP, GIF, BMP or TIFF is refused.
MAX_DECODE_PIXELS = 4096 * 4096
MAX_VIDEO_SIDE = 8192  # pixels a side of a video frame (a 8192x2048 strip is the MAX_DECODE_PIXELS)
# Frames x height x width x 3 bytes that one clip read holds: the frames it returns, at the size the caller fits
# them to (vid2vid: the output size) or as decoded. 16 frames of 4096x4096 are 805 MB; 1024 of 576x576 1019 MB.
MAX_CLIP_BYTES = 1 << 30
# Pixels decoded by one clip read, counting every frame from the first up to the last one taken (skipped frames
# are decoded too): what bounds its time. 256 frames of 4096x4096, 2071 of 1920x1080.
MAX_DECODE_WORK = 1 << 32
MAX_VIDEO_FRAMES = 1_000_000  # frames (packets) a video file may hold: counted by demuxing, 9 hours at 30 fps
MAX_READ_WHOLE_BYTES = 256 << 20  # a file its decoder reads whole into memory (WebP)


def gib(n: float) -> str:
    """Bytes as GiB (or MiB below one GiB), for error lines."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_clip(name: object, frames: int, kept: tuple[int, int] | None, *, decoded: int, size: tuple[int, int]) -> None:
    """Refuse (:class:`UserError`) a clip read that would hold more than :data:`MAX_CLIP_BYTES` or decode more than
    :data:`MAX_DECODE_WORK` pixels: ``frames`` kept at ``kept`` (height, width; None: not known yet), ``decoded``
    frames of ``size`` (width, height) decoded to get them."""
    held = frames * kept[0] * kept[1] * 3 if kept else 0
    if held > MAX_CLIP_BYTES:
        raise UserError(
            f"{name}: {frames} frames of {kept[1]}x{kept[0]} would hold {gib(held)}, over the budget of "
            f"{gib(MAX_CLIP_BYTES)} (videodiff.media.budget.MAX_CLIP_BYTES): take fewer frames or a smaller size"
        )
    work = decoded * size[0] * size[1]
    if work > MAX_DECODE_WORK:
        per_frame = size[0] * size[1]
        raise UserError(
            f"{name}: taking these frames decodes {decoded} frames of {size[0]}x{size[1]}, over the budget of "
            f"{MAX_DECODE_WORK:,} pixels decoded ({MAX_DECODE_WORK // per_frame} such frames; "
            "videodiff.media.budget.MAX_DECODE_WORK): use a smaller stride or fewer frames, or trim the clip"
        )


def decode_scale(size: tuple[int, int], max_side: int | None) -> int | None:
    """JPEG's DCT scale (1, 2, 4 or 8) for a picture of ``size``: the smallest that brings it within
    :data:`MAX_DECODE_PIXELS`, or larger while its short side stays at least ``max_side``; None when even
    1/8 is too large."""
    width, height = size
    need = next((s for s in (1, 2, 4, 8) if math.ceil(width / s) * math.ceil(height / s) <= MAX_DECODE_PIXELS), None)
    if need is None:
        return None
    allowed = min(width, height) // max_side if max_side else 1
    return max(need, max((s for s in (1, 2, 4, 8) if s <= allowed), default=1))
