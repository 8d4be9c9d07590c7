"""Reading pictures and clips as users have them (videodiff.media.images, clips.read_video): inputs built here."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from videodiff.config import parse_rgb as parse_color
from videodiff.errors import UserError
from videodiff.media import images
from videodiff.media.clips import ARRAY_FPS, fit_video, read_video
from videodiff.media.images import file_sha256, fit_image, load_image, read_image
from videodiff.media.video import save_video

ROOT = Path(__file__).resolve().parents[1]


def halves(width: int = 40, height: int = 20) -> np.ndarray:
    """Left half red, right half blue."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = (255, 0, 0)
    a[:, width // 2 :] = (0, 0, 255)
    return a


def write_mp4(path, frames: np.ndarray, pix_fmt: str = "yuv420p", fps: int = 8):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.options = {"crf": "10"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    return path


def levels(n: int, size: int = 32) -> np.ndarray:
    """uint8 ``[n size size 3]``: frame k is a flat grey of 20 + 20 k, so a decoded frame names its index."""
    return np.stack([np.full((size, size, 3), 20 + 20 * k, np.uint8) for k in range(n)])


def frame_index(frame: np.ndarray) -> int:
    return round((float(frame.mean()) - 20) / 20)


# --- colours and checksums -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rgb"), [("0,0,0", (0, 0, 0)), (" 255, 8 ,1", (255, 8, 1)), ("#FF8000", (255, 128, 0))]
)
def test_parse_color(text, rgb):
    assert parse_color(text) == rgb


@pytest.mark.parametrize("text", ["", "1,2", "1,2,3,4", "256,0,0", "-1,0,0", "#12345", "#GGGGGG", "red"])
def test_parse_color_refuses(text):
    with pytest.raises(UserError):
        parse_color(text)


def test_file_sha256(tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "f.bin").write_bytes(data)
    assert file_sha256(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()


# --- pictures: orientation, modes, transparency --------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("max_side", [None, 10])
def test_exif_orientation_is_honoured(tmp_path, fmt, max_side):
    # orientation 6: the stored picture must turn 90 degrees clockwise to be upright
    picture = Image.fromarray(np.repeat(np.repeat(halves(), 8, 0), 8, 1))  # 320x160
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"rotated.{fmt.lower()}"
    picture.save(path, fmt, exif=exif, quality=95)
    got = read_image(path, max_side=max_side).astype(int)
    assert got.shape[0] > got.shape[1]  # portrait now
    top, bottom = got[: got.shape[0] // 4].mean((0, 1)), got[-got.shape[0] // 4 :].mean((0, 1))
    assert top[0] > 200 and top[2] < 50  # the red left half is on top
    assert bottom[2] > 200 and bottom[0] < 50
    if max_side:
        assert min(got.shape[:2]) >= max_side and min(got.shape[:2]) < 160  # reduced, but not below max_side


def test_rgba_composited_on_background(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[0, 0] = (255, 0, 0, 0)  # fully transparent red
    a[0, 1] = (0, 255, 0, 255)  # opaque green
    a[0, 2] = (255, 255, 255, 128)  # half-transparent white
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png", background=(10, 20, 30)).astype(int)
    assert tuple(got[0, 0]) == (10, 20, 30)
    assert tuple(got[0, 1]) == (0, 255, 0)
    assert np.abs(got[0, 2] - (np.array([10, 20, 30]) + 255) / 2).max() <= 2
    assert tuple(read_image(a, background=(1, 2, 3))[0, 0]) == (1, 2, 3)  # arrays too
    assert got.flags.writeable and load_image(a, 8, 8).flags.writeable


def test_grey_alpha_and_palette_transparency(tmp_path):
    la = Image.fromarray(np.array([[[200, 0], [100, 255]]], np.uint8), "LA")
    la.save(tmp_path / "la.png")
    got = read_image(tmp_path / "la.png", background=(0, 0, 255))
    assert tuple(got[0, 0]) == (0, 0, 255) and tuple(got[0, 1]) == (100, 100, 100)

    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "p.png", transparency=0)
    p.save(tmp_path / "p.gif", transparency=0)
    for name in ("p.png", "p.gif"):
        got = read_image(tmp_path / name, background=(7, 7, 7))
        assert tuple(got[0, 0]) == (7, 7, 7) and tuple(got[0, 1]) == (0, 255, 0), name


def test_grey_palette_cmyk_convert(tmp_path):
    Image.fromarray(np.array([[0, 128, 255]], np.uint8), "L").save(tmp_path / "l.png")
    assert read_image(tmp_path / "l.png").tolist() == [[[0] * 3, [128] * 3, [255] * 3]]

    Image.fromarray(halves()).quantize(4).save(tmp_path / "p.bmp")
    assert np.array_equal(read_image(tmp_path / "p.bmp"), halves())

    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))  # white
    cmyk.putpixel((1, 0), (0, 255, 255, 0))  # red
    cmyk.save(tmp_path / "c.tiff")
    assert read_image(tmp_path / "c.tiff").tolist() == [[[255, 255, 255], [255, 0, 0]]]


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_sixteen_bit_is_scaled_not_clipped(tmp_path, fmt):
    ramp = np.tile(np.linspace(0, 65535, 300).astype(np.uint16), (4, 1))
    Image.fromarray(ramp).save(tmp_path / f"g.{fmt}")
    assert Image.open(tmp_path / f"g.{fmt}").mode.startswith("I")
    for got in (read_image(tmp_path / f"g.{fmt}"), read_image(ramp), read_image(ramp.astype(np.int32))):
        row = got[0, :, 0].astype(int)
        assert row[0] == 0 and row[-1] == 255  # the full range
        assert (np.diff(row) >= 0).all() and len(np.unique(row)) > 200  # order kept, not clipped to a few levels


def test_arrays_float_and_channels():
    ramp = np.linspace(0, 1, 11, dtype=np.float32)[None, :].repeat(3, 0)
    got = read_image(ramp)
    assert got.shape == (3, 11, 3) and got[0, 0, 0] == 0 and got[0, -1, 0] == 255 and got[0, 5, 0] in (127, 128)
    assert read_image(np.zeros((5, 6, 1), np.uint8)).shape == (5, 6, 3)
    for bad in (np.zeros((5, 6, 2), np.uint8), np.zeros((5,), np.uint8), np.zeros((5, 6), np.complex64)):
        with pytest.raises(UserError):
            read_image(bad)


def test_first_frame_of_an_animation(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (16, 12), c) for c in colours]
    for name in ("anim.gif", "anim.webp"):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
        got = read_image(tmp_path / name)
        assert got.shape == (12, 16, 3) and np.abs(got.astype(int) - colours[0]).max() <= 2, name


# --- fitting to the output size --------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(64, 64), (48, 96), (96, 40), (304, 456)])
def test_fit_crop_and_pad(height, width):
    picture = np.full((300, 451, 3), (200, 100, 50), np.uint8)  # an odd size
    crop = fit_image(picture, height, width, fit="crop")
    assert crop.shape == (height, width, 3) and np.abs(crop.astype(int) - (200, 100, 50)).max() <= 1  # no border

    bg = (0, 255, 0)
    pad = fit_image(picture, height, width, fit="pad", background=bg)
    assert pad.shape == (height, width, 3)
    inside = np.abs(pad.astype(int) - (200, 100, 50)).max(-1) <= 1
    assert (pad[~inside] == bg).all()  # everything else is the background colour
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    top, bottom = rows[0], height - 1 - rows[-1]
    left, right = cols[0], width - 1 - cols[-1]
    assert abs(top - bottom) <= 1 and abs(left - right) <= 1  # centred
    assert min(top, left) == 0  # touches two sides: as large as fits
    assert abs(len(cols) / len(rows) - 451 / 300) < 0.05  # aspect kept


def test_fit_keeps_the_centre():
    picture = np.zeros((300, 451, 3), np.uint8)
    picture[140:160, 215:235] = 255  # a white dot in the middle
    for fit in ("crop", "pad"):
        out = fit_image(picture, 64, 64, fit=fit)
        ys, xs = np.nonzero(out[..., 0] > 128)
        assert abs(ys.mean() - 31.5) < 2 and abs(xs.mean() - 31.5) < 2, fit


def test_fit_refuses_unknown_fit():
    with pytest.raises(UserError, match="crop, pad"):
        fit_image(np.zeros((8, 8, 3), np.uint8), 8, 8, fit="stretch")


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_early_reduction_matches_full_resolution(tmp_path, fmt):
    # a smooth picture, large enough that load_image reduces it (JPEG with draft, PNG with reduce)
    y, x = np.mgrid[0:1200, 0:1600]
    picture = np.stack([x * 255 // 1600, y * 255 // 1200, (x + y) * 255 // 2800], -1).astype(np.uint8)
    picture[500:700, 700:900] = (255, 255, 0)
    Image.fromarray(picture).save(tmp_path / f"big.{fmt}", quality=95)
    for fit in ("crop", "pad"):
        early = load_image(tmp_path / f"big.{fmt}", 48, 64, fit=fit).astype(int)
        full = fit_image(read_image(tmp_path / f"big.{fmt}"), 48, 64, fit=fit).astype(int)
        assert early.shape == (48, 64, 3) and np.abs(early - full).mean() < 2


def test_rgba_reduced_in_bands_equals_pil_reduce():
    rgba = np.random.default_rng(0).integers(0, 256, (2100, 40, 4), dtype=np.uint8)
    picture = Image.fromarray(rgba, "RGBA")
    for factor in (3, 7):
        assert np.array_equal(np.asarray(images._reduce(picture, factor)), np.asarray(picture.reduce(factor)))


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "mode", "side"), [("png", "RGB", 4096), ("png", "RGBA", 4096), ("jpg", "RGB", 12000)])
def test_a_large_picture_loads_in_bounded_memory(tmp_path, fmt, mode, side):
    # a PNG at the decode budget (4096x4096; larger ones are refused: tests/test_media_budget.py), a 144 MP JPEG
    spec = importlib.util.spec_from_file_location("bench_inputs", ROOT / "scripts" / "bench_inputs.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = bench.write_picture(tmp_path / f"big.{fmt}", side, mode)  # written by another process
    result = bench.measure(path, 64, 64, "crop")
    assert result["shape"] == [64, 64, 3]
    assert result["peak_rss_mb"] < 1000, result  # the bound is 2 GB for a whole render


# --- bad pictures: one line, naming the file ---------------------------------------------------------------


def assert_one_line_naming(exc_info, path):
    message = str(exc_info.value)
    assert "\n" not in message and str(path) in message, message


def bad_files(tmp_path, suffix: str) -> list:
    """Files named like pictures or videos that are not: missing, empty, text, a folder, a FIFO."""
    (tmp_path / f"empty{suffix}").write_bytes(b"")
    (tmp_path / f"text{suffix}").write_text("not a picture or a video\n" * 20)
    (tmp_path / f"folder{suffix}").mkdir()
    names = ["missing", "empty", "text", "folder"]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / f"fifo{suffix}")
        names.append("fifo")
    return [tmp_path / f"{name}{suffix}" for name in names]


def test_bad_pictures_are_one_line_user_errors(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    for path in [*bad_files(tmp_path, ".png"), tmp_path / "truncated.png"]:
        with pytest.raises(UserError) as exc_info:
            read_image(path)
        assert_one_line_naming(exc_info, path)


def test_pixel_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    monkeypatch.setattr(images, "PIXEL_LIMIT", 100)
    for size in ((10, 10), (11, 10), (30, 30)):  # at the limit; PIL's warning band; PIL's error band
        Image.new("RGB", size).save(tmp_path / f"{size[0]}.png")
    assert read_image(tmp_path / "10.png").shape == (10, 10, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # the limit goes through PIL's own check
    for path in (tmp_path / "11.png", tmp_path / "30.png"):
        with pytest.raises(UserError, match="limit of 100 pixels") as exc_info:
            read_image(path)
        assert_one_line_naming(exc_info, path)
    with pytest.raises(UserError, match="limit"):
        read_image(np.zeros((11, 10, 3), np.uint8))
    with pytest.raises(UserError, match="limit"):
        read_image(Image.new("RGB", (11, 10)))


# --- clips -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p"])
def test_read_video_mp4(tmp_path, pix_fmt):
    path = write_mp4(tmp_path / f"{pix_fmt}.mp4", levels(10), pix_fmt)
    with av.open(str(path)) as check:
        assert check.streams.video[0].codec_context.pix_fmt == pix_fmt

    clip, fps = read_video(path, frames=3, stride=2, start=1)
    assert clip.shape == (3, 32, 32, 3) and clip.dtype == np.uint8 and fps == 4.0
    assert [frame_index(f) for f in clip] == [1, 3, 5]

    clip, fps = read_video(path)  # 16 asked, 10 there
    assert [frame_index(f) for f in clip] == list(range(10)) and fps == 8.0
    assert len(read_video(path, frames=None, stride=3)[0]) == 4


def test_read_video_gif(tmp_path):
    frames = [Image.fromarray(f) for f in levels(6, 24)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    clip, fps = read_video(tmp_path / "a.gif", frames=8, stride=2)
    assert clip.shape == (3, 24, 24, 3) and [frame_index(f) for f in clip] == [0, 2, 4]
    assert fps > 0


@pytest.mark.parametrize("rate, count", [(8, 1), (8, 2), *((r, n) for r in (8, 10, 12, 24, 7.5) for n in (16, 25))])
def test_our_gif_reads_back_at_its_rate(tmp_path, rate, count):
    # GIF delays are whole centiseconds: 8 fps is 12.5 cs, written as 13, 12, 13, ...
    # (a few frames cannot tell 24 fps from 25: one frame of 4 cs is both)
    save_video(np.random.default_rng(0).integers(0, 256, (count, 16, 16, 3), np.uint8), tmp_path / "a.gif", fps=rate)
    assert abs(read_video(tmp_path / "a.gif", frames=None)[1] - rate) < 1e-6


def test_a_gif_of_even_delays_keeps_its_own_rate(tmp_path):
    # 12 cs every frame plays at 8.33 fps; it was not written from 8 fps, so it is not read as 8
    frames = [Image.fromarray(f) for f in levels(12, 16)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=120, loop=0)
    assert abs(read_video(tmp_path / "a.gif")[1] - 100 / 12) < 1e-6  # 12 frames: 8 fps would end at 150 cs, not 144


def test_read_video_from_arrays_and_images():
    clip, fps = read_video(levels(5), frames=2, stride=2, start=1)
    assert [frame_index(f) for f in clip] == [1, 3] and fps == ARRAY_FPS / 2
    clip, _ = read_video([Image.fromarray(f) for f in levels(3)], frames=None)
    assert [frame_index(f) for f in clip] == [0, 1, 2]
    with pytest.raises(UserError):
        read_video([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)])
    with pytest.raises(UserError):
        read_video(levels(3), start=3)


def test_fit_video():
    out = fit_video(levels(3, 40)[:, :, :30], 16, 24, fit="pad", background=(0, 0, 0))
    assert out.shape == (3, 16, 24, 3) and (out[:, :, 0] == 0).all()  # pillarboxed


def test_bad_videos_are_one_line_user_errors(tmp_path):
    good = write_mp4(tmp_path / "good.mp4", levels(10))
    (tmp_path / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    zero = []
    for suffix in (".mp4", ".mkv"):  # containers with a video stream and no frames
        out = av.open(str(tmp_path / f"zero{suffix}"), "w")
        stream = out.add_stream("libx264", rate=Fraction(8))
        stream.width = stream.height = 32
        out.start_encoding()
        out.close()
        zero.append(tmp_path / f"zero{suffix}")
        assert zero[-1].stat().st_size > 0
    for path in [*bad_files(tmp_path, ".mp4"), tmp_path / "truncated.mp4", *zero]:
        with pytest.raises(UserError) as exc_info:
            read_video(path)
        assert_one_line_naming(exc_info, path)
    with pytest.raises(UserError, match="none from frame 10"):
        read_video(good, start=10)


def test_video_pixel_limit_checked_before_decoding(tmp_path, monkeypatch):
    from videodiff.media import clips

    path = write_mp4(tmp_path / "v.mp4", levels(2))
    monkeypatch.setattr(clips, "read_frames", lambda *a, **k: pytest.fail("decoded"))
    monkeypatch.setattr(clips, "MAX_DECODE_PIXELS", 32 * 32 - 1)
    with pytest.raises(UserError, match="32x32.*MAX_DECODE_PIXELS"):
        read_video(path)


# --- real media (../shared/data) -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chelsea.png", "coffee.png"])
def test_real_pictures(shared_data, name):
    path = shared_data / name
    for height, width in ((64, 64), (48, 80), (128, 72)):
        for fit in ("crop", "pad"):
            out = load_image(path, height, width, fit=fit, background=(255, 0, 255))
            assert out.shape == (height, width, 3) and out.dtype == np.uint8
            assert out.std() > 10  # a photograph, not a blank
            border = np.concatenate([out[0], out[-1], out[:, 0], out[:, -1]])
            magenta = (border == (255, 0, 255)).all(-1).mean()
            assert magenta > 0.3 if fit == "pad" and height / width != 1.5 else magenta < 0.1


def test_real_clips(shared_data):
    first = {}
    for name in ("cockatoo.mp4", "cockatoo_yuv420.mp4", "newtonscradle.gif"):
        clip, fps = read_video(shared_data / name, frames=4, stride=3)
        assert clip.shape[0] == 4 and clip.dtype == np.uint8 and fps > 0
        assert np.abs(np.diff(clip.astype(int), axis=0)).mean() > 0.5  # frames differ: it moves
        for fit in ("crop", "pad"):
            assert fit_video(clip, 64, 96, fit=fit).shape == (4, 64, 96, 3)
        first[name] = clip[0].astype(int)
    assert first["cockatoo.mp4"].shape == (720, 1280, 3)
    assert np.abs(first["cockatoo.mp4"] - first["cockatoo_yuv420.mp4"]).mean() < 8  # 4:4:4 and 4:2:0 agree
