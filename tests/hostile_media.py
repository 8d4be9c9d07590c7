"""Small hostile media built at run time (no binaries in the repository)."""

from __future__ import annotations

import io
import struct

import numpy as np


def gif_bytes(width: int, height: int, frames: int, *, real: bool = False) -> bytes:
    """A GIF of ``frames`` frames of ``width x height``.

    ``real``: a proper animated GIF (Pillow). Otherwise a few hundred bytes whose frames only *declare*
    that size (a clear code and the end of the LZW data): a decompression bomb for large sizes.
    """
    if real:
        from PIL import Image

        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)) for _ in range(frames)]
        buffer = io.BytesIO()
        images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=125, loop=0)
        return buffer.getvalue()
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + bytes([0, 0, 0, 255, 255, 255])
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    frame = b"\x21\xf9\x04\x00\x0a\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
    frame += b"\x02\x02\x4c\x01\x00"
    return head + loop + frame * frames + b"\x3b"
