"""Behaviour of videodiff.media.video / videodiff.media.atomic: decode what was written and compare."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from PIL import Image

from videodiff.errors import UserError
from videodiff.media import video
from videodiff.media.atomic import atomic_dir, atomic_file, prepare_output, write_text_atomic
from videodiff.media.video import VIDEO_SUFFIXES, save_video, sidecar_path


def make_clip(frames: int = 10, height: int = 48, width: int = 64) -> np.ndarray:
    """A smooth colour gradient with a soft square moving across it: every frame differs."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    clip = np.empty((frames, height, width, 3), np.float32)
    for i in range(frames):
        cx, cy = 8 + i * (width - 16) / max(frames - 1, 1), height / 2
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 6.0**2))
        clip[i, ..., 0] = 40 + 180 * xx / width
        clip[i, ..., 1] = 40 + 160 * yy / height
        clip[i, ..., 2] = 60 + 150 * blob
    return clip.round().astype(np.uint8)


def decode_av(path: Path) -> tuple[SimpleNamespace, list[av.VideoFrame], np.ndarray]:
    """The video stream's codec, size and rate (read while the file is open: PyAV 18.1.1 refuses a closed
    container's stream), its frames and their RGB pixels."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = SimpleNamespace(
            codec_context=SimpleNamespace(name=stream.codec_context.name),
            width=stream.width,
            height=stream.height,
            average_rate=stream.average_rate,
        )
        frames = list(container.decode(stream))
        rgb = np.stack([f.to_ndarray(format="rgb24") for f in frames])
    return info, frames, rgb


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def leftovers(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# --- mp4 / webm ------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [8, 7.5, 12])
def test_mp4_roundtrip(tmp_path: Path, fps: float) -> None:
    clip = make_clip()
    out = save_video(clip, tmp_path / "clip.mp4", fps)
    assert out == (tmp_path / "clip.mp4").resolve()
    stream, frames, rgb = decode_av(out)
    assert stream.codec_context.name == "h264"
    assert frames[0].format.name == "yuv420p"
    assert (stream.width, stream.height) == (64, 48)
    assert len(frames) == 10
    assert stream.average_rate == Fraction(fps)
    assert mae(rgb, clip) < 6
    assert leftovers(tmp_path) == ["clip.mp4"]


def test_mp4_odd_size_is_padded_with_notice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI may have turned propagation off; caplog listens on the root logger.
    monkeypatch.setattr(logging.getLogger("videodiff"), "propagate", True)
    clip = make_clip(height=47, width=65)
    with caplog.at_level(logging.INFO, logger="videodiff"):
        out = save_video(clip, tmp_path / "odd.MP4", 8)
    stream, frames, rgb = decode_av(out)
    assert (frames[0].width, frames[0].height) == (66, 48)
    assert len(frames) == 10
    assert mae(rgb[:, :47, :65], clip) < 6
    # the extra row/column repeats the edge instead of being black
    assert mae(rgb[:, 47, :65], clip[:, 46]) < 10
    assert mae(rgb[:, :47, 65], clip[:, :, 64]) < 10
    messages = [r.getMessage() for r in caplog.records if r.name == "videodiff"]
    assert any("65x47" in m and "66x48" in m for m in messages), messages


def test_even_size_gives_no_notice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("videodiff"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="videodiff"):
        save_video(make_clip(frames=2), tmp_path / "even.mp4", 8)
    assert not [r for r in caplog.records if r.name == "videodiff"]


def test_webm_roundtrip(tmp_path: Path) -> None:
    clip = make_clip(height=47, width=65)
    out = save_video(clip, tmp_path / "clip.webm", 12)
    stream, frames, rgb = decode_av(out)
    assert stream.codec_context.name == "vp9"
    assert frames[0].format.name == "yuv420p"
    assert (frames[0].width, frames[0].height) == (66, 48)
    assert len(frames) == 10
    assert mae(rgb[:, :47, :65], clip) < 6


def test_crf_changes_quality(tmp_path: Path) -> None:
    clip = make_clip()
    for suffix in (".mp4", ".webm"):
        good = save_video(clip, tmp_path / f"good{suffix}", 8, crf=4)
        poor = save_video(clip, tmp_path / f"poor{suffix}", 8, crf=45)
        assert good.stat().st_size > poor.stat().st_size
        assert mae(decode_av(good)[2], clip) < mae(decode_av(poor)[2], clip)


# --- gif -------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [8, 30])
def test_gif_roundtrip(tmp_path: Path, fps: float) -> None:
    clip = make_clip()
    out = save_video(clip, tmp_path / "clip.gif", fps)
    with Image.open(out) as im:
        assert im.n_frames == 10
        assert im.info["loop"] == 0
        assert "transparency" not in im.info
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
            assert abs(im.info["duration"] - 1000 / fps) < 10  # whole centiseconds, the nearest two
            # stored whole, not as a cropped difference to the previous frame
            assert tuple(im.tile[0][1]) == (0, 0, 64, 48)
            assert im.disposal_method != 1
            assert mae(np.asarray(im.convert("RGB")), clip[k]) < 6
        assert abs(sum(durations) - 10 * 1000 / fps) <= 5  # the clip lasts what was asked
    # an independent decoder agrees on the frame count and the content
    _, frames, rgb = decode_av(out)
    assert len(frames) == 10
    assert mae(rgb, clip) < 6


def test_gif_uses_one_global_palette(tmp_path: Path) -> None:
    clip = make_clip()
    out = save_video(clip, tmp_path / "clip.gif", 8)
    data = out.read_bytes()
    assert data[10] & 0x80  # global colour table flag in the logical screen descriptor
    with Image.open(out) as im:
        offsets = []
        for k in range(im.n_frames):
            im.seek(k)
            offsets.append(im.tile[0][2])
    for off in offsets:
        # Pillow's tile offset points just past "image descriptor (10 bytes) [local colour
        # table] LZW code size (1 byte)"; the descriptor sits right before it only when
        # there is no local table, and then its packed byte must say so too.
        assert data[off - 11] == 0x2C
        assert not data[off - 2] & 0x80


@pytest.mark.parametrize(("fps", "frames"), [(8, 16), (7.5, 9), (24, 24), (30, 7)])
def test_gif_frame_delays_sum_to_the_duration(tmp_path: Path, fps: float, frames: int) -> None:
    """GIF delays are centiseconds: 8 fps is 130/120 ms in turn (2.000 s for 16 frames), not 120 ms (1.92 s)."""
    out = save_video(make_clip(frames=frames), tmp_path / "clip.gif", fps)
    with Image.open(out) as im:
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
    assert len(durations) == frames
    elapsed = np.cumsum(durations)
    ideal = 1000 * np.arange(1, frames + 1) / fps
    assert np.abs(elapsed - ideal).max() <= 5  # every frame starts on time, to the nearest centisecond
    assert all(d % 10 == 0 for d in durations)


def test_gif_delay_has_a_floor(tmp_path: Path) -> None:
    out = save_video(make_clip(frames=3), tmp_path / "fast.gif", 120)
    with Image.open(out) as im:
        im.seek(1)
        assert im.info["duration"] == 20


# --- PNG folder ------------------------------------------------------------------------


def test_png_folder_is_lossless(tmp_path: Path) -> None:
    clip = make_clip(height=47, width=65)  # odd sizes are fine for PNG, no padding
    out = save_video(clip, tmp_path / "frames", 8)
    names = [n for n in leftovers(out) if n != video.FRAMES_MARKER]  # the marker: a folder videodiff wrote
    assert (out / video.FRAMES_MARKER).is_file()
    assert names == [f"{i:04d}.png" for i in range(10)]
    for i, name in enumerate(names):
        assert np.array_equal(np.asarray(Image.open(out / name).convert("RGB")), clip[i])
    assert leftovers(tmp_path) == ["frames"]


def test_png_folder_overwrite_replaces_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "frames"
    save_video(make_clip(frames=5), target, 8)
    with pytest.raises(UserError, match="already exists"):
        save_video(make_clip(frames=2), target, 8)
    assert len(leftovers(target)) == 6  # 5 frames and the marker
    save_video(make_clip(frames=2), target, 8, overwrite=True)
    assert leftovers(target) == [video.FRAMES_MARKER, "0000.png", "0001.png"]
    assert leftovers(tmp_path) == ["frames"]


def test_accepts_list_and_torch_tensor(tmp_path: Path) -> None:
    clip = make_clip(frames=3)
    out = save_video(list(clip), tmp_path / "from_list", 8)
    assert len(leftovers(out)) == 4  # and the marker
    torch = pytest.importorskip("torch")
    out = save_video(torch.from_numpy(clip), tmp_path / "from_tensor", 8)
    assert np.array_equal(np.asarray(Image.open(out / "0002.png")), clip[2])


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 8, 8), np.uint8),  # no frame axis
        np.zeros((2, 8, 8, 4), np.uint8),  # RGBA
        np.zeros((2, 8, 8, 3), np.float32),  # not uint8
        np.zeros((0, 8, 8, 3), np.uint8),  # no frames
        [],
    ],
)
def test_bad_frames_are_programming_errors(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError):
        save_video(bad, tmp_path / "x.mp4", 8)
    assert leftovers(tmp_path) == []


# --- user errors, overwrite, atomicity ---------------------------------------------------


@pytest.mark.parametrize("fps", [0, -3, float("nan"), float("inf")])
def test_bad_fps(tmp_path: Path, fps: float) -> None:
    with pytest.raises(UserError, match="fps"):
        save_video(make_clip(frames=2), tmp_path / "x.mp4", fps)
    assert leftovers(tmp_path) == []


def test_bad_crf(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="crf"):
        save_video(make_clip(frames=2), tmp_path / "x.mp4", 8, crf=60)


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"\0\0\0\x18ftypisom precious")  # an mp4 (what --overwrite may replace)
    with pytest.raises(UserError, match="--overwrite") as err:
        save_video(make_clip(frames=2), target, 8)
    assert "\n" not in str(err.value)
    assert target.read_bytes().endswith(b"precious")
    save_video(make_clip(frames=2), target, 8, overwrite=True)
    assert len(decode_av(target)[1]) == 2
    assert leftovers(tmp_path) == ["clip.mp4"]


def test_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        save_video(make_clip(frames=2), tmp_path / "clip.avi", 8)
    message = str(err.value)
    assert ".avi" in message and all(s in message for s in VIDEO_SUFFIXES)
    assert leftovers(tmp_path) == []


def test_unwritable_folder(tmp_path: Path) -> None:
    # A parent that is a file cannot become a folder, even for root.
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not_a_folder"):
        save_video(make_clip(frames=2), blocker / "sub" / "clip.mp4", 8)
    assert leftovers(tmp_path) == ["not_a_folder"]


def test_folder_in_the_way_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        save_video(make_clip(frames=2), tmp_path / "clip.mp4", 8, overwrite=True)
    assert leftovers(tmp_path) == ["clip.mp4"]


def test_numpy_scalar_and_ntsc_rates(tmp_path: Path) -> None:
    out = save_video(make_clip(frames=3), tmp_path / "a.mp4", np.float32(7.5), crf=np.int64(20))
    assert decode_av(out)[0].average_rate == Fraction(15, 2)
    out = save_video(make_clip(frames=3), tmp_path / "b.mp4", 30000 / 1001)
    assert decode_av(out)[0].average_rate == Fraction(30000, 1001)


def test_missing_parent_folders_are_created(tmp_path: Path) -> None:
    out = save_video(make_clip(frames=2), tmp_path / "a" / "b" / "clip.gif", 8)
    assert out.is_file()


@pytest.mark.parametrize("name", ["clip.mp4", "clip.webm", "clip.gif", "frames"])
def test_failed_encode_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    def failing(arr: np.ndarray):
        yield from arr[:3]
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(video, "_iter_frames", failing)
    with pytest.raises(RuntimeError, match="exploded"):
        save_video(make_clip(), tmp_path / name, 8)
    assert leftovers(tmp_path) == []


def test_failed_overwrite_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "clip.mp4"
    target.write_bytes(b"\0\0\0\x18ftypisom old")

    def failing(arr: np.ndarray):
        yield arr[0]
        raise RuntimeError("boom")

    monkeypatch.setattr(video, "_iter_frames", failing)
    with pytest.raises(RuntimeError):
        save_video(make_clip(), target, 8, overwrite=True)
    assert target.read_bytes().endswith(b"old")
    assert leftovers(tmp_path) == ["clip.mp4"]


# --- atomic helpers and sidecars ---------------------------------------------------------


def test_atomic_file_keeps_suffix_and_cleans_up(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        with atomic_file(tmp_path / "x.mp4") as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".mp4" and tmp.name.startswith(".")
            tmp.write_bytes(b"partial")
            raise KeyError
    assert leftovers(tmp_path) == []
    write_text_atomic(tmp_path / "note.txt", "hello")
    assert (tmp_path / "note.txt").read_text() == "hello"
    assert leftovers(tmp_path) == ["note.txt"]


def test_atomic_dir_replaces_and_cleans_up(tmp_path: Path) -> None:
    final = tmp_path / "d"
    final.mkdir()
    (final / "old").write_text("1")
    with pytest.raises(KeyError):
        with atomic_dir(final) as tmp:
            (tmp / "new").write_text("2")
            raise KeyError
    assert leftovers(tmp_path) == ["d"] and leftovers(final) == ["old"]
    with atomic_dir(final) as tmp:
        (tmp / "new").write_text("2")
    assert leftovers(tmp_path) == ["d"] and leftovers(final) == ["new"]


def test_prepare_output(tmp_path: Path) -> None:
    out = prepare_output(tmp_path / "new" / "x.gif", overwrite=False)
    assert out.parent.is_dir() and not out.exists()
    out.write_text("x")
    with pytest.raises(UserError, match="already exists"):
        prepare_output(out, overwrite=False)
    assert prepare_output(out, overwrite=True) == out


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("out.mp4", "out.mp4.json"),
        ("runs/a.gif", "runs/a.gif.json"),
        ("runs/frames", "runs/frames.json"),
        ("runs/frames/", "runs/frames.json"),
    ],
)
def test_sidecar_path(given: str, expected: str) -> None:
    assert sidecar_path(given) == Path(expected)
