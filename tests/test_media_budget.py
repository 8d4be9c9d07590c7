"""Every media decoder budgeted from the file's header (issue 30, items 8 and 16; videodiff.media.budget).

The issue's files, each a few hundred bytes to a few kilobytes: a GIF declaring 1024 frames of 4096x4096, a WebP
declaring 15000x15000, a 240000000x1 PNG; and the cases at each budget's edge. Memory is checked where it is
spent, in a fresh process under an address-space limit (RLIMIT_AS) below what the unbudgeted readers took.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_user_error, invoke
from hostile_media import (
    bmp_bytes,
    gif_bytes,
    jpeg_bytes,
    mp4_bytes,
    png_bytes,
    run_readers,
    tiff_bytes,
    webp_bytes,
)
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from videodiff.errors import UserError
from videodiff.media import budget, clips
from videodiff.media.budget import MAX_CLIP_BYTES, MAX_DECODE_PIXELS, MAX_DECODE_WORK, PIXEL_LIMIT, decode_scale
from videodiff.media.clips import check_moving_video, fit_video, read_video
from videodiff.media.images import check_image, load_image, read_image

# The GIF bomb read at full size took 1.7 GB (16 frames of 4096x4096 held, then stacked: 2 x 805 MB) and the
# WebP 3.8 GB; budgeted, each read holds one decoded frame and the output.
LIMIT = 1 << 30
REQUEST = {"frames": 16, "stride": 1, "height": 64, "width": 64, "fit": "pad", "side": 256}


def one_line(message: str, *names: str) -> str:
    assert "\n" not in message and all(name in message for name in names), message
    return message


# ---------------------------------------------------------------- the issue's files, under a memory limit


def test_the_issues_files_are_read_within_the_budgets(tmp_path):
    files = {
        "bomb1024.gif": gif_bytes(4096, 4096, 1024),  # 23 KB
        "bomb16.gif": gif_bytes(4096, 4096, 16),  # 407 bytes
        "canvas.webp": webp_bytes(15000, 15000),
        "strip.png": png_bytes(240_000_000, 1, rows=0),
        "big.png": png_bytes(15000, 15000, rows=0),
        "huge.jpg": jpeg_bytes(20000, 12000),  # 240 MP, decoded at 1/8
        "edge.png": png_bytes(4096, 4096, channels=4),  # at the budget: decoded
        "edge.webp": webp_bytes(4096, 4096),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert (tmp_path / "bomb1024.gif").stat().st_size < 24_000 and (tmp_path / "bomb16.gif").stat().st_size < 500
    cases = {
        ("bomb1024.gif", "read_video", 1): "shape",
        ("bomb16.gif", "check_video", 1): "shape",
        ("bomb1024.gif", "check_video", 1): "shape",
        ("bomb1024.gif", "read_video", 64): "MAX_DECODE_WORK",  # 961 frames decoded to take 16
        ("bomb1024.gif", "read_frames", 64): "MAX_DECODE_WORK",
        **{
            (name, reader, 1): "MAX_DECODE_PIXELS"
            for name in ("canvas.webp", "strip.png", "big.png")
            for reader in ("check_image", "read_image", "load_image")
        },
        **{
            (name, reader, 1): "shape"
            for name in ("huge.jpg", "edge.png", "edge.webp")
            for reader in ("check_image", "read_image", "load_image")
        },
    }
    jobs = [dict(REQUEST, path=str(tmp_path / name), reader=reader, stride=stride) for name, reader, stride in cases]
    report = run_readers(jobs, limit=LIMIT, seconds=60)
    assert not report["torch"]
    for job, want, got in zip(jobs, cases.values(), report["results"]):
        shown = f"{job['reader']} {Path(job['path']).name} stride {job['stride']}: {got}"
        if want == "shape":
            assert "shape" in got, shown
            if job["reader"] in ("read_video", "load_image"):
                assert got["shape"][-3:-1] == [64, 64], shown
        else:
            one_line(got.get("user_error", ""), Path(job["path"]).name, want)
    assert report["peak_as"] <= LIMIT


@pytest.mark.parametrize("make", [bmp_bytes, tiff_bytes, lambda w, h: webp_bytes(w, h)], ids=["bmp", "tiff", "webp"])
def test_a_16777216_pixel_strip_decodes_in_seconds(tmp_path, make):
    # PIL's raw decoders gathered a row wider than 64 KiB block by block, in time growing with its square: the
    # WebP strip took minutes. Its data ends early (BMP, TIFF): a one-line error, also in seconds.
    path = tmp_path / "strip.img"
    path.write_bytes(make(MAX_DECODE_PIXELS, 1))
    job = dict(REQUEST, path=str(path), reader="load_image")
    got = run_readers([job], limit=LIMIT, seconds=30)["results"][0]
    assert "hang" not in got and "traceback" not in got, got
    assert got.get("shape") == [64, 64, 3] or "strip.img" in got.get("user_error", ""), got


# ---------------------------------------------------------------- pictures


def test_pictures_over_the_decode_budget_are_refused_from_the_header(tmp_path):
    # the files hold little more than a header: the message that names the budget comes from the header
    for name, data in {
        "wide.png": png_bytes(MAX_DECODE_PIXELS + 1, 1, rows=0),
        "big.webp": webp_bytes(4097, 4096),
        "lossless.webp": webp_bytes(4097, 4096, kind="VP8L"),
        "big.gif": gif_bytes(4097, 4096, 1),
        "big.bmp": bmp_bytes(4097, -4096),
        "big.tif": tiff_bytes(4096, 4097),
    }.items():
        (tmp_path / name).write_bytes(data)
        for read in (check_image, read_image, lambda p: load_image(p, 64, 64)):
            with pytest.raises(UserError) as caught:
                read(tmp_path / name)
            one_line(str(caught.value), name, "4096x4096", f"{MAX_DECODE_PIXELS:,}", "MAX_DECODE_PIXELS")


def test_a_jpeg_over_the_budget_decodes_reduced(tmp_path):
    Image.new("RGB", (8000, 6000), (10, 20, 30)).save(tmp_path / "big.jpg", quality=30)  # 48 MP
    assert read_image(tmp_path / "big.jpg").shape == (3000, 4000, 3)  # 1/2: within 4096x4096 pixels
    assert read_image(tmp_path / "big.jpg", max_side=700).shape == (750, 1000, 3)  # 1/8: the request is smaller
    assert load_image(tmp_path / "big.jpg", 64, 48).shape == (64, 48, 3)


@given(
    width=st.integers(1, 70_000),
    height=st.integers(1, 70_000),
    max_side=st.one_of(st.none(), st.integers(1, 8192)),
)
def test_decode_scale_is_the_least_that_fits_or_what_the_request_allows(width, height, max_side):
    scale = decode_scale((width, height), max_side)
    pixels = {s: math.ceil(width / s) * math.ceil(height / s) for s in (1, 2, 4, 8)}
    if pixels[8] > MAX_DECODE_PIXELS:
        assert scale is None
        return
    assert scale in (1, 2, 4, 8) and pixels[scale] <= MAX_DECODE_PIXELS
    need = min(s for s in (1, 2, 4, 8) if pixels[s] <= MAX_DECODE_PIXELS)
    if scale > need:  # reduced further only while the short side keeps what was asked for
        assert max_side and min(width, height) // scale >= max_side
    if max_side and scale < 8:
        assert scale == need or min(width, height) // (2 * scale) < max_side


def test_the_declared_pixel_limit_is_one_line(tmp_path):
    (tmp_path / "max.jpg").write_bytes(jpeg_bytes(65535, 65535))
    with pytest.raises(UserError) as caught:
        check_image(tmp_path / "max.jpg")
    one_line(str(caught.value), "max.jpg", f"{PIXEL_LIMIT:,}", "PIXEL_LIMIT")


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "BMP", "TIFF", "JPEG"])
def test_a_truncated_picture_fails_its_check(tmp_path, fmt):
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(out, fmt)
    data = out.getvalue()
    (tmp_path / "cut.img").write_bytes(data[: len(data) - len(data) // 3])
    with pytest.raises(UserError) as caught:
        check_image(tmp_path / "cut.img")
    one_line(str(caught.value), "cut.img")


def test_a_strip_pads_into_a_frame(tmp_path):
    (tmp_path / "strip.png").write_bytes(png_bytes(40_000, 1))
    out = load_image(tmp_path / "strip.png", 16, 16, fit="pad", background=(255, 0, 255))
    assert out.shape == (16, 16, 3) and (out[0] == (255, 0, 255)).all() and not (out[8] == (255, 0, 255)).all()


# ---------------------------------------------------------------- clips


def test_a_clip_is_fitted_as_it_is_decoded(tmp_path):
    y, x = np.mgrid[0:180, 0:320]  # reduced by 2 while converting for a 48x64 output, then fitted
    smooth = np.stack([x * 255 // 320, y * 255 // 180, (x + y) * 255 // 500], -1).astype(np.uint8)
    frames = np.stack([np.roll(smooth, 7 * k, axis=1) for k in range(5)])
    Image.fromarray(frames[0]).save(
        tmp_path / "c.gif", save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]], duration=125
    )
    import av

    with av.open(str(tmp_path / "c.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt, stream.options = 320, 180, "yuv444p", {"crf": "4"}
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())
    for name in ("c.gif", "c.mp4"):
        for fit in ("crop", "pad"):
            early, fps = read_video(tmp_path / name, frames=4, stride=1, size=(48, 64), fit=fit)
            full, same = read_video(tmp_path / name, frames=4, stride=1)
            late = fit_video(full, 48, 64, fit=fit)
            assert early.shape == (4, 48, 64, 3) and fps == same
            assert np.abs(early.astype(int) - late).mean() < 2, (name, fit)


def test_clip_budgets_are_checked_before_decoding(tmp_path, monkeypatch):
    (tmp_path / "v.mp4").write_bytes(mp4_bytes(12, 64, 48))
    monkeypatch.setattr(clips, "_collect", lambda *a, **k: pytest.fail("decoded"))
    monkeypatch.setattr(budget, "MAX_CLIP_BYTES", 64 * 48 * 3 * 4)  # four frames
    with pytest.raises(UserError) as caught:
        read_video(tmp_path / "v.mp4", frames=5)
    one_line(str(caught.value), "v.mp4", "5 frames of 64x48", "MAX_CLIP_BYTES")
    monkeypatch.setattr(budget, "MAX_DECODE_WORK", 64 * 48 * 9)  # nine frames decoded
    with pytest.raises(UserError) as caught:
        read_video(tmp_path / "v.mp4", frames=2, stride=9, size=(8, 8))  # frames 0 and 9: ten decoded
    one_line(str(caught.value), "v.mp4", "decodes 10 frames of 64x48", "MAX_DECODE_WORK")
    with pytest.raises(UserError, match="MAX_DECODE_WORK"):  # what the render layer checks before the model
        check_moving_video(tmp_path / "v.mp4", frames=2, stride=9)


def test_the_budgets_are_the_ones_stated():
    # the README's "Limits before work" row and docs/guides/img2vid-vid2vid.md state these numbers
    assert MAX_DECODE_PIXELS == 4096 * 4096 and PIXEL_LIMIT == 250_000_000
    assert MAX_CLIP_BYTES == 1 << 30 and MAX_DECODE_WORK == 1 << 32
    assert budget.MAX_VIDEO_FRAMES == 1_000_000 and budget.MAX_VIDEO_SIDE == 8192


# ---------------------------------------------------------------- before the model loads

PROMPT = "a red circle moving right"
SMALL = ("--height", "16", "--width", "16", "--steps", "1", "--seed", "1", "-q")


@pytest.fixture
def no_model(monkeypatch, tmp_path):
    from videodiff.pipelines import VideoPipeline

    monkeypatch.setattr(VideoPipeline, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("name", "data", "says"),
    [
        ("cut.webp", None, "cut.webp"),
        ("canvas.webp", webp_bytes(15000, 15000), "MAX_DECODE_PIXELS"),
        ("strip.png", png_bytes(240_000_000, 1, rows=0), "MAX_DECODE_PIXELS"),
    ],
)
def test_img2vid_refuses_a_picture_before_the_model(no_model, name, data, says):
    if data is None:  # a WebP whose header is whole and whose data is cut off
        out = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(out, "WEBP")
        data = out.getvalue()[: len(out.getvalue()) * 2 // 3]
    Path(name).write_bytes(data)
    message = assert_user_error(invoke("img2vid", name, PROMPT, *SMALL, "--frames", "2", "-o", "out.gif"))
    one_line(message, name, says)
    assert not Path("out.gif").exists()


def test_vid2vid_refuses_a_clip_over_the_decode_budget_before_the_model(no_model):
    Path("bomb.gif").write_bytes(gif_bytes(4096, 4096, 1024))
    args = ("bomb.gif", PROMPT, *SMALL, "--frames", "16", "--stride", "64", "--fps", "8", "-o", "out.gif")
    one_line(assert_user_error(invoke("vid2vid", *args)), "bomb.gif", "MAX_DECODE_WORK")


def test_vid2vid_at_a_stride_that_leaves_a_rate_no_file_stores_is_one_line_before_the_model(no_model):
    # an 8 fps clip at --stride 1000 plays at 0.008 fps: below the 0.1 fps a video file stores
    frames = [Image.fromarray(np.full((16, 16, 3), 40 * k, np.uint8)) for k in range(3)]
    frames[0].save("clip.gif", save_all=True, append_images=frames[1:], duration=125, loop=0)
    message = assert_user_error(invoke("vid2vid", "clip.gif", PROMPT, *SMALL, "--stride", "1000", "-o", "out.gif"))
    one_line(message, "0.1", "0.008")


# ---------------------------------------------------------------- the rates a video file stores


@pytest.mark.parametrize("suffix", [".gif", ".mp4", ".webm"])
@pytest.mark.parametrize("fps", [0.1, 0.1000001, 1 / 3, 29.97, 239.99, 240])
def test_every_rate_in_range_writes_and_reads_back(tmp_path, suffix, fps):
    from videodiff.media.video import save_video

    frames = np.stack([np.full((16, 16, 3), 40 * k, np.uint8) for k in range(3)])  # GIF merges repeated frames
    out = save_video(frames, tmp_path / f"clip{suffix}", fps)
    got = clips.probe(out).fps
    stored = min(fps, 50) if suffix == ".gif" else fps  # GIF's shortest delay is 2 cs
    assert abs(got - stored) / stored < 1e-3 or (suffix == ".gif" and abs(100 / got - round(100 / stored)) <= 1)


@pytest.mark.parametrize("fps", [0.0999, 0.008, 1e-4, 1e-12, 5e-324, 240.001, 1e9, 1e308])
@pytest.mark.parametrize("suffix", [".gif", ".mp4", ".webm"])
def test_a_rate_out_of_range_is_one_line_before_anything_is_written(tmp_path, fps, suffix):
    from videodiff.media.video import check_output, gif_delays_cs, save_video

    for call in (
        lambda: check_output(tmp_path / f"clip{suffix}", fps=fps),
        lambda: save_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / f"clip{suffix}", fps),
        lambda: gif_delays_cs(4, fps),
    ):
        with pytest.raises(UserError) as caught:
            call()
        one_line(str(caught.value), "0.1", "240", "MIN_FPS")
    assert list(tmp_path.iterdir()) == []
