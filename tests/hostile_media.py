"""Small hostile media built at run time (no binaries in the repository)."""

from __future__ import annotations

import io
import struct
import zlib

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


# PNG colour types by channel count (grey, -, RGB, RGBA)
_PNG_COLOUR = {1: 0, 3: 2, 4: 6}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, *, channels: int = 3, rows: int | None = None) -> bytes:
    """A PNG declaring ``width x height`` (8 bits, ``channels`` 1, 3 or 4) whose pixels are all zero.

    ``rows``: how many rows its compressed data holds; None: all (a whole picture, compressed about 1000:1),
    fewer: a file whose header is whole and whose data ends early (0: a decompression bomb of a few bytes).
    """
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR[channels], 0, 0, 0)
    )
    packer = zlib.compressobj(9)
    row = bytes(1 + width * channels)  # filter byte 0, then the row's samples
    body = b"".join(packer.compress(row) for _ in range(height if rows is None else min(rows, height)))
    body += packer.flush() if rows is None else packer.flush(zlib.Z_SYNC_FLUSH)
    return head + _png_chunk(b"IDAT", body) + (_png_chunk(b"IEND", b"") if rows is None else b"")


def _pillow_bytes(fmt: str, size: tuple[int, int] = (16, 16), **options) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg_bytes(width: int, height: int) -> bytes:
    """A 16x16 JPEG whose frame header (SOF0) declares ``width x height`` (up to 65535 a side): its data ends
    long before such a picture would."""
    data = bytearray(_pillow_bytes("JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_bytes(width: int, height: int) -> bytes:
    """A 16x16 BMP whose header declares ``width x height`` (signed 32 bits: a negative height is a top-down
    picture): its pixel rows end long before such a picture's would."""
    data = bytearray(_pillow_bytes("BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def tiff_bytes(width: int, height: int) -> bytes:
    """A 16x16 uncompressed TIFF whose first directory declares ``width x height`` (32 bits each)."""
    data = bytearray(_pillow_bytes("TIFF"))
    (ifd,) = struct.unpack("<I", data[4:8])  # Pillow writes little-endian ("II")
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for k in range(count):
        at = ifd + 2 + 12 * k
        tag, kind = struct.unpack("<HH", data[at : at + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: written as LONG (4) or SHORT (3)
            value = width if tag == 256 else height
            data[at + 2 : at + 12] = struct.pack("<HII", 4, 1, value & 0xFFFFFFFF)
    return bytes(data)


def _riff(chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def _webp_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")


def _vp8l_pixel() -> bytes:
    """The VP8L chunk (header and data) of a 1x1 lossless WebP."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", (1, 1), (200, 10, 10, 255)).save(buffer, "WEBP", lossless=True)
    data = buffer.getvalue()
    at = data.index(b"VP8L")
    return data[at : at + 8 + struct.unpack("<I", data[at + 4 : at + 8])[0]]


def webp_bytes(width: int, height: int, *, kind: str = "VP8X") -> bytes:
    """A small WebP declaring a ``width x height`` picture.

    ``VP8X``: an animation whose canvas is that size (up to 2**24 a side) and whose one frame is 1x1: valid,
    and libwebp allocates the whole canvas to show it. ``VP8L``: a 1x1 lossless picture whose header is patched
    to that size (up to 16384 a side): its data ends long before.
    """
    pixel = _vp8l_pixel()
    if kind == "VP8L":
        bits = struct.unpack("<I", pixel[9:13])[0] & ~((1 << 28) - 1)
        bits |= (width - 1) & 0x3FFF | ((height - 1) & 0x3FFF) << 14
        return _riff(pixel[:9] + struct.pack("<I", bits) + pixel[13:])
    canvas = struct.pack("<I", width - 1)[:3] + struct.pack("<I", height - 1)[:3]
    vp8x = _webp_chunk(b"VP8X", bytes([0x02, 0, 0, 0]) + canvas)  # the animation flag
    anim = _webp_chunk(b"ANIM", struct.pack("<IH", 0xFFFFFFFF, 0))
    frame = bytes(6) + bytes(6) + struct.pack("<I", 100)[:3] + b"\x00"  # at 0,0; 1x1; 100 ms
    return _riff(vp8x + anim + _webp_chunk(b"ANMF", frame + pixel))


def mp4_bytes(frames: int = 4, width: int = 16, height: int = 16, *, fps: int = 8) -> bytes:
    """A real H.264 MP4 of ``frames`` flat frames (PyAV), a few kilobytes even at 4096x4096."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for k in range(frames):
            image = np.full((height, width, 3), 20 * k % 256, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return buffer.getvalue()


def patch_mp4(data: bytes, *, width: int | None = None, height: int | None = None, count: int | None = None) -> bytes:
    """``data`` (an MP4) with its sample entry's and track header's size, or its sample table's count, changed:
    a header that declares what the coded frames do not hold."""
    out = bytearray(data)
    if width is not None or height is not None:
        entry = out.index(b"avc1") + 4 + 24  # the visual sample entry: 6 reserved, index, 16 predefined, then size
        w, h = struct.unpack(">HH", out[entry : entry + 4])
        out[entry : entry + 4] = struct.pack(">HH", (width or w) & 0xFFFF, (height or h) & 0xFFFF)
        tkhd = out.index(b"tkhd") + 4 + 76  # version 0: width and height, 16.16 fixed point, at the end
        out[tkhd : tkhd + 8] = struct.pack(">II", ((width or w) & 0xFFFF) << 16, ((height or h) & 0xFFFF) << 16)
    if count is not None:
        stsz = out.index(b"stsz") + 4 + 8  # version and flags, the common size, then the count
        out[stsz : stsz + 4] = struct.pack(">I", count & 0xFFFFFFFF)
    return bytes(out)


# ---------------------------------------------------------------- the readers, run under a memory limit


# The entry points that img2vid, vid2vid, keyframes, training and the web app read files through, by name:
# each takes the path and the case's request.
def _readers() -> dict:
    from videodiff.media import clips, images

    def frames(path, case):  # training: probe, then read_frames (UnreadableVideo is its error)
        info = clips.probe(path)
        return clips.read_frames(path, list(range(0, info.num_frames, case["stride"]))[: case["frames"]], info)

    return {
        "check_image": lambda path, case: images.check_image(path),
        "read_image": lambda path, case: images.read_image(path, max_side=case["side"]),  # the web app's preview
        "load_image": lambda path, case: images.load_image(path, case["height"], case["width"], fit=case["fit"]),
        "check_video": lambda path, case: clips.check_moving_video(path),
        "read_video": lambda path, case: clips.read_video(
            path, frames=case["frames"], stride=case["stride"], size=(case["height"], case["width"]), fit=case["fit"]
        )[0],
        "read_frames": frames,
    }


READERS = ("check_image", "read_image", "load_image", "check_video", "read_video", "read_frames")

RUNNER = """
import json, resource, signal, sys, time, traceback
sys.path.insert(0, sys.argv[1])
job = json.loads(sys.stdin.read())
resource.setrlimit(resource.RLIMIT_AS, (job["limit"], job["limit"]))

class Hang(BaseException):
    pass

def alarm(*_):
    raise Hang()

signal.signal(signal.SIGALRM, alarm)
import numpy as np
from hostile_media import _readers
from videodiff.errors import UserError
from videodiff.media.clips import UnreadableVideo
readers = _readers()
results = []
for case in job["cases"]:
    signal.alarm(job["seconds"])
    start = time.perf_counter()
    try:
        out = readers[case["reader"]](case["path"], case)
        got = {"shape": list(np.shape(out)) if isinstance(out, np.ndarray) else None,
               "nbytes": out.nbytes if isinstance(out, np.ndarray) else 0}
    except UserError as exc:
        got = {"user_error": str(exc)}
    except UnreadableVideo as exc:
        got = {"unreadable": str(exc)}
    except Hang:
        got = {"hang": job["seconds"]}
    except BaseException:
        got = {"traceback": traceback.format_exc()}
    signal.alarm(0)
    got["seconds"] = round(time.perf_counter() - start, 2)
    results.append(got)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
peak = {key: int(status[key].split()[0]) * 1024 for key in ("VmPeak", "VmHWM")}  # address space, resident
torch = "torch" in sys.modules
print(json.dumps({"results": results, "peak_rss": peak["VmHWM"], "peak_as": peak["VmPeak"], "torch": torch}))
"""


def run_readers(cases: list[dict], *, limit: int, seconds: int) -> dict:
    """Run the readers on ``cases`` (each: ``path``, ``reader`` and its request) in one fresh Python process whose
    address space is limited to ``limit`` bytes (RLIMIT_AS) and where each case has ``seconds`` (SIGALRM).

    Returns ``{"results": [...], "peak_rss": bytes, "torch": imported}``; each result has ``shape`` and
    ``nbytes`` (what it returned), ``user_error``, ``unreadable`` (probe/read_frames' own error), ``hang`` or
    ``traceback``, and ``seconds``. glibc's per-thread malloc arenas are kept to 2 (``MALLOC_ARENA_MAX``): each
    reserves 64 MiB of address space (not memory), which on a many-core machine's decoder threads would count
    against the limit without being used.
    """
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(here.parent), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(here)],
        input=json.dumps({"cases": cases, "limit": limit, "seconds": seconds}),
        capture_output=True,
        text=True,
        env=env,
        timeout=seconds * len(cases) + 60,
    )
    if done.returncode != 0:
        raise AssertionError(f"the reader process failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)
