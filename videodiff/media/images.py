"""Read the pictures users have (any size, mode and orientation) into uint8 ``[h w 3]`` RGB arrays, and fit them.

Budgets from the file's header, before decoding (:mod:`videodiff.media.budget`): a picture may declare up
to :data:`PIXEL_LIMIT` pixels, applied through PIL's own ``Image.MAX_IMAGE_PIXELS`` so that PIL's
decompression-bomb check and this module refuse the same pictures; it is decoded at no more than
:data:`MAX_DECODE_PIXELS` (a JPEG reduced while decoding with ``draft``; other formats decode whole and are
refused beyond it). Inputs are reduced as early as the format allows (JPEG while decoding, others by whole
factors right after decoding), so memory follows the output size rather than the input's.
"""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from videodiff.config import FITS  # crop: cover the frame and cut the overflow; pad: fit inside, fill the background
from videodiff.errors import UserError
from videodiff.media.budget import MAX_DECODE_PIXELS, MAX_READ_WHOLE_BYTES, PIXEL_LIMIT, decode_scale, gib

__all__ = [
    "FITS",
    "IMAGE_FORMATS",
    "MAX_DECODE_PIXELS",
    "PIXEL_LIMIT",
    "check_file",
    "check_image",
    "file_sha256",
    "fit_image",
    "load_image",
    "read_image",
]

# The formats pictures are opened in, whatever their content or name: PIL otherwise picks a plugin by content, and
# an EPS named .png reaches Ghostscript (which runs PostScript). JPEG includes MPO (a camera's multi-picture JPEG).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
NOT_AN_IMAGE = "is not an image (JPEG, PNG, WebP, GIF, BMP or TIFF expected)"

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL's modes for 16-bit greyscale PNG/TIFF
_TRANSPARENT = ("RGBA", "LA", "PA", "RGBa", "La")

# EXIF orientation -> the transpose that undoes it (ImageOps.exif_transpose's table). Applied after
# reducing, when the reduced copy no longer carries the file's tags (TIFF keeps them outside ``info``).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def check_file(path: str | os.PathLike[str], kind: str = "image") -> Path:
    """The path, if it names a non-empty regular file; a one-line :class:`UserError` otherwise.

    Checked with ``stat`` before opening, so a FIFO or device is refused instead of blocking a read.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"{kind} not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read {kind} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{path} is a folder: give the {kind} file")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path} is not a regular file (a pipe, socket or device): give the {kind} file")
    if st.st_size == 0:
        raise UserError(f"{kind} file {path} is empty")
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks (for the sidecar's record of an input)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_image(
    source: str | os.PathLike[str] | Image.Image | np.ndarray,
    *,
    background: tuple[int, int, int] = (0, 0, 0),
    max_side: int | None = None,
) -> np.ndarray:
    """A path, PIL image or array -> uint8 ``[h w 3]`` RGB, upright, transparency composited on ``background``.

    Arrays may be ``[h w]``, ``[h w 1|3|4]``; uint8, uint16 (full 16-bit range) or float in [0, 1].
    ``max_side``: the largest side the caller will resize to; the picture is reduced early by whole
    factors while its short side stays at least ``max_side``, which is enough for either fit at any aspect.
    Animated GIF/WebP give their first frame. Errors are one-line :class:`UserError` naming the file.
    """
    if isinstance(source, np.ndarray):
        name = "image array"
        image = Image.fromarray(_array_to_8bit(source))
        _check_pixels(image.size, name)
        return _finish(image, name, background, max_side, orientation=1)
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", None) or "image"
        _check_pixels(source.size, name)
        return _finish(source, name, background, max_side, _orientation(source))
    path = check_file(source, "image")
    with _pil_limit(path), _opened(path) as image:
        orientation = _orientation(image)
        _decode_reduced(image, path, max_side)
        return _finish(image, path, background, max_side, orientation)


def check_image(path: str | os.PathLike[str]) -> tuple[int, int]:
    """A picture file's (width, height) from its header, checked against the budgets :func:`read_image` applies,
    its data verified where the format allows (PNG CRCs) and decoded, so that a truncated file fails here: the
    render layer checks its inputs this way before loading a model. Cheap at any size: a JPEG decodes at 1/8
    scale (DCT scaling), other formats are at most :data:`MAX_DECODE_PIXELS` (the first frame of an animation,
    as :func:`read_image` reads it). One-line :class:`UserError` as :func:`read_image` gives."""
    path = check_file(path, "image")
    with _pil_limit(path):
        with _opened(path) as image:
            size = image.size
            _decode_reduced(image, path, None, draft=False)  # the budget only
            try:
                image.verify()
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise UserError(f"cannot read image {path}: {_one_line(exc)}") from None
        with _opened(path) as image:  # verify() reads no JPEG, GIF, BMP or TIFF data: a cut-off file passed
            if image.format in ("JPEG", "MPO"):  # MPO: a camera's multi-picture JPEG
                image.draft(None, (1, 1))  # the smallest scale the decoder offers (1/8), every byte still read
            _whole_rows(image)
            try:
                image.load()
            except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
                raise UserError(f"cannot decode image {path}: {_one_line(exc)}") from None
    return size


def fit_image(
    image: np.ndarray, height: int, width: int, *, fit: str = "crop", background: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
    """uint8 ``[h w 3]`` -> ``[height width 3]``: Lanczos resize, then centre-crop (``crop``) or pad (``pad``)."""
    if fit not in FITS:
        raise UserError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 [h w 3], got {image.dtype} {image.shape}")
    if image.shape[:2] == (height, width):
        return image.copy()
    picture = Image.fromarray(image)
    if fit == "crop":
        out = ImageOps.fit(picture, (width, height), method=Image.Resampling.LANCZOS)
    else:
        out = _pad(picture, width, height, tuple(background))
    return np.array(out)


def _pad(picture: Image.Image, width: int, height: int, background: tuple[int, int, int]) -> Image.Image:
    """``ImageOps.pad`` (fit inside, centred on ``background``), with the picture kept at least one pixel
    thick: a 16777216x1 strip padded into 64x64 is a 64x1 line, where ``ImageOps.pad`` fails on a height of 0.
    Pixel for pixel ``ImageOps.pad`` for pictures under 6 times the size."""
    size = (width, height)  # ImageOps.contain's arithmetic, then its centring
    if picture.width * height > width * picture.height:  # wider than the frame
        size = (width, max(1, round(picture.height / picture.width * width)))
    elif picture.width * height < width * picture.height:
        size = (max(1, round(picture.width / picture.height * height)), height)
    # reduced by whole factors first beyond 3 times the size (PIL's reducing_gap): Lanczos weights for a
    # 16777216-pixel line squeezed into 64 would take 800 MB
    resized = picture.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if size == (width, height):
        return resized
    out = Image.new("RGB", (width, height), background)
    out.paste(
        resized, (round((width - size[0]) * 0.5), 0) if size[0] != width else (0, round((height - size[1]) * 0.5))
    )
    return out


def load_image(
    source: str | os.PathLike[str] | Image.Image | np.ndarray,
    height: int,
    width: int,
    *,
    fit: str = "crop",
    background: tuple[int, int, int] = (0, 0, 0),
) -> np.ndarray:
    """:func:`read_image` reduced early for this output, then :func:`fit_image`: uint8 ``[height width 3]``."""
    if fit not in FITS:
        raise UserError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    # keep twice the output's side before the Lanczos resize (PIL's reducing_gap=2: no visible loss)
    image = read_image(source, background=background, max_side=2 * max(height, width))
    return fit_image(image, height, width, fit=fit, background=background)


@contextmanager
def _pil_limit(path: Path) -> Iterator[None]:
    """PIL's own bomb check at :data:`PIXEL_LIMIT`, its warning band refused too: one rule, one line."""
    Image.MAX_IMAGE_PIXELS = PIXEL_LIMIT
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise UserError(_too_large(path)) from None


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """The picture opened in one of :data:`IMAGE_FORMATS`, its header read (nothing decoded) and its declared size
    within :data:`PIXEL_LIMIT`. A WebP is checked from its first bytes before PIL opens it: PIL's WebP plugin
    reads the whole file and its decoder allocates the declared canvas on opening."""
    with open(path, "rb") as f:
        head = f.read(32)
    webp = _webp_size(head, path)
    if webp is not None:
        if path.stat().st_size > MAX_READ_WHOLE_BYTES:
            raise UserError(
                f"{path} is a WebP of {gib(path.stat().st_size)}, over the {gib(MAX_READ_WHOLE_BYTES)} a WebP may "
                "have (it is read whole; videodiff.media.budget.MAX_READ_WHOLE_BYTES)"
            )
        _check_pixels(webp, path)
        _check_decodable(webp, path, "WEBP")
    try:
        image = Image.open(path, formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise UserError(f"{path} {NOT_AN_IMAGE}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read image {path}: {_one_line(exc)}") from None
    with image:
        _check_pixels(image.size, path)
        yield image


def _webp_size(head: bytes, path: Path) -> tuple[int, int] | None:
    """The canvas (width, height) a WebP's first chunk declares; None when ``head`` does not start a WebP.

    The first chunk is VP8X (the extended format: its canvas holds every frame), VP8L (lossless) or VP8 (lossy);
    libwebp reads no other, so any other is refused here."""
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    raise UserError(f"cannot read image {path}: not a WebP picture (no VP8, VP8L or VP8X header)")


def _decode_reduced(image: Image.Image, name, max_side: int | None, *, draft: bool = True) -> None:
    """Check the size ``image`` will be decoded at against :data:`MAX_DECODE_PIXELS`, and set a JPEG to decode
    reduced (DCT scaling by 1/2, 1/4 or 1/8) as far as the budget needs and ``max_side`` allows."""
    _check_decodable(image.size, name, image.format)
    _whole_rows(image)
    if draft and image.format in ("JPEG", "MPO"):  # MPO: a camera's multi-picture JPEG
        scale = decode_scale(image.size, max_side)
        if scale and scale > 1:  # PIL picks the largest scale that keeps the size asked for: exactly this one
            image.draft(None, (max(1, image.size[0] // scale), max(1, image.size[1] // scale)))


def _whole_rows(image: Image.Image) -> None:
    """Let PIL read at least a row at a time: its raw decoders (BMP, TIFF, WebP) otherwise gather a row wider than
    its 64 KiB block by joining blocks, in time that grows with the square of the row (minutes for 16777216x1)."""
    image.decodermaxblock = max(image.decodermaxblock, 8 * image.size[0] + 64)  # 8 bytes: 16-bit RGBA


def _check_decodable(size: tuple[int, int], name, fmt: str | None) -> None:
    if fmt in ("JPEG", "MPO"):
        if decode_scale(size, None) is None:
            raise UserError(
                f"{name} is {size[0]}x{size[1]} pixels: over {MAX_DECODE_PIXELS:,} pixels even at 1/8 scale "
                "(videodiff.media.budget.MAX_DECODE_PIXELS)"
            )
    elif size[0] * size[1] > MAX_DECODE_PIXELS:
        raise UserError(
            f"{name} is {size[0]}x{size[1]} pixels: a {fmt or 'picture'} is decoded whole, up to "
            f"{MAX_DECODE_PIXELS:,} pixels (4096x4096; videodiff.media.budget.MAX_DECODE_PIXELS): "
            "make it smaller first, or give it as a JPEG (read reduced while decoding)"
        )


def _too_large(name) -> str:
    return f"{name} is larger than the limit of {PIXEL_LIMIT:,} pixels (videodiff.media.budget.PIXEL_LIMIT)"


def _check_pixels(size: tuple[int, int], name) -> None:
    if size[0] < 1 or size[1] < 1:
        raise UserError(f"{name} has no pixels ({size[0]}x{size[1]})")
    if size[0] * size[1] > PIXEL_LIMIT:
        raise UserError(_too_large(name))


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to refuse the picture
        return 1


def _finish(image: Image.Image, name, background, max_side: int | None, orientation: int) -> np.ndarray:
    """Decode, reduce, convert to 8-bit, turn upright, composite: in the order that keeps memory low."""
    try:
        image.seek(0)  # animations: the first frame
        image = _reducible(image)  # decodes
        if max_side and (factor := min(image.size) // max_side) > 1:
            image = _reduce(image, factor)
        if image.mode in ("I", "F"):
            image = Image.fromarray(_array_to_8bit(np.asarray(image)))
        if orientation in _ORIENTATION:
            image = image.transpose(_ORIENTATION[orientation])
        if image.mode == "RGBA":
            canvas = Image.new("RGBA", image.size, (*background, 255))
            image = Image.alpha_composite(canvas, image)
        return np.array(image if image.mode == "RGB" else image.convert("RGB"))  # writable, like any array
    except UserError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated or corrupt data
        raise UserError(f"cannot decode image {name}: {_one_line(exc)}") from None


def _reduce(image: Image.Image, factor: int) -> Image.Image:
    """``Image.reduce`` (a box average: antialiased) band by band, so that the premultiplied copy it
    makes of RGBA pictures is one band of rows, not a second full-size picture."""
    if image.mode != "RGBA":
        return image.reduce(factor)
    width, height = image.size
    out = Image.new(image.mode, (-(-width // factor), -(-height // factor)))
    rows = factor * max(1, 1024 // factor)  # a multiple of the factor, so the bands tile the output
    for top in range(0, height, rows):
        out.paste(image.crop((0, top, width, min(top + rows, height))).reduce(factor), (0, top // factor))
    return out


def _reducible(image: Image.Image) -> Image.Image:
    """The decoded image in a mode ``Image.reduce`` takes: L, RGB, RGBA (exactly when transparent), I or F.

    Converts only when the mode differs (a same-mode ``convert`` would copy a large picture).
    """
    if image.mode in _SIXTEEN_BIT or image.mode == "F":
        wanted = "F" if image.mode == "F" else "I"
    elif image.mode in _TRANSPARENT or "transparency" in image.info:
        wanted = "RGBA"
    else:
        wanted = "L" if image.mode == "L" else "RGB"  # palette, CMYK, YCbCr, LAB and 1-bit become RGB
    if image.mode == wanted:
        image.load()
        return image
    return image.convert(wanted)


def _array_to_8bit(a: np.ndarray) -> np.ndarray:
    """``[h w]`` or ``[h w 1|3|4]`` uint8/uint16/bool/float-in-[0,1] -> uint8 with 1, 3 or 4 channels."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise UserError(f"an image array must be [h w], [h w 3] or [h w 4], got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16 or (a.dtype.kind in "iu" and a.dtype.itemsize > 1):
        # 16-bit: 0..65535 onto 0..255 by rounding (x * 255 / 65535), so order and full range survive
        return ((np.clip(a, 0, 65535).astype(np.uint32) + 128) // 257).astype(np.uint8)
    if a.dtype.kind == "f":
        return (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    raise UserError(f"an image array must be uint8, uint16 or float in [0, 1], got {a.dtype}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
