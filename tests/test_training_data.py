"""Training data without training: finding clips, decoding the right frames, cropping, and the resumable sampler.

Clips are tiny synthetic videos (``tests/clips.py``) whose content says which frame is
which; the real media in ../shared/data checks frame-exact reading where seeking is hard.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from clips import column_clip, moving_square, write_clip, write_corrupt

from videodiff.errors import UserError
from videodiff.media.clips import probe, read_frames
from videodiff.training.data import ClipDataset, ClipSource, ResumableBatches, collate, find_clips, resize_crop

# ---------------------------------------------------------------------------------------------------------------------
# find_clips


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_find_clips_folder_with_captions(tmp_path):
    touch(tmp_path / "b.mp4")
    touch(tmp_path / "b.txt", "  a cat jumping \n")
    touch(tmp_path / "a.gif")
    touch(tmp_path / "a.txt", "waves")
    touch(tmp_path / "sub" / "c.webm")  # nested, without a caption: kept with an empty one
    touch(tmp_path / "notes.txt", "not a caption of anything")
    touch(tmp_path / "image.png")
    found = find_clips(tmp_path)
    assert [(c.path, c.caption) for c in found] == [
        (tmp_path / "a.gif", "waves"),
        (tmp_path / "b.mp4", "a cat jumping"),
        (tmp_path / "sub" / "c.webm", ""),
    ]


def test_find_clips_csv_manifest_paths_relative_to_it(tmp_path):
    manifest = touch(
        tmp_path / "meta" / "train.csv",
        'path,caption\nclips/a.mp4,"a dog, running"\n../other/b.mov,waves\n',
    )
    found = find_clips(manifest)
    assert [(c.path, c.caption) for c in found] == [
        (tmp_path / "meta" / "clips" / "a.mp4", "a dog, running"),
        (tmp_path / "meta" / ".." / "other" / "b.mov", "waves"),
    ]


def test_find_clips_jsonl_manifest(tmp_path):
    rows = [{"path": "x/one.mp4", "caption": "first"}, {"path": "two.gif", "caption": "second", "extra": 3}]
    manifest = touch(tmp_path / "data.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    found = find_clips(manifest)
    assert [(c.path, c.caption) for c in found] == [
        (tmp_path / "x" / "one.mp4", "first"),
        (tmp_path / "two.gif", "second"),
    ]


def test_find_clips_webvid_csv(tmp_path):
    text = (
        "videoid,contentUrl,duration,page_dir,name\n1066,http://x,PT10S,005,Clouds moving\n77,http://y,PT5S,012,Waves\n"
    )
    manifest = touch(tmp_path / "results_2M_val.csv", text)
    root = tmp_path / "videos"
    found = find_clips(manifest, root)
    assert [(c.path, c.caption) for c in found] == [
        (root / "005" / "1066.mp4", "Clouds moving"),
        (root / "012" / "77.mp4", "Waves"),
    ]
    # without --data-root the manifest's folder holds the page_dir folders
    assert find_clips(manifest)[0].path == tmp_path / "005" / "1066.mp4"


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: d / "missing", "no such file or folder"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no videos"),
        (lambda d: touch(d / "v" / "a.mp4").parent, "no captions"),
        (lambda d: touch(d / "m.csv", "file,text\na.mp4,x\n"), "expected columns"),
        (lambda d: touch(d / "m.jsonl", '{"video": "a.mp4", "text": "x"}\n'), "expected columns"),
        (lambda d: touch(d / "m.jsonl", '["a.mp4", "x"]\n'), "JSON object"),
        (lambda d: touch(d / "m.jsonl", '{"path": "a.mp4", \n'), "cannot read the manifest"),
        (lambda d: touch(d / "m.csv", "path,caption\n"), "empty"),
        (lambda d: touch(d / "m.txt", "a.mp4 x\n"), "expected a folder"),
    ],
    ids=[
        "missing",
        "no-videos",
        "no-captions",
        "csv-columns",
        "jsonl-columns",
        "jsonl-not-object",
        "bad-json",
        "empty-manifest",
        "wrong-suffix",
    ],
)
def test_find_clips_errors_are_user_errors(tmp_path, setup, message):
    data = setup(tmp_path)
    with pytest.raises(UserError, match=message) as info:
        find_clips(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name, text",
    [
        ("m.jsonl", '{"path": "a.mp4", "caption": "x"}\n{"caption": "y"}\n'),
        ("webvid.csv", "videoid,name,page_dir\n1,cat,005\n2,dog\n"),
    ],
    ids=["jsonl-row-without-path", "webvid-short-row"],
)
def test_find_clips_incomplete_row_is_a_user_error(tmp_path, name, text):
    with pytest.raises(UserError):
        find_clips(touch(tmp_path / name, text))


def test_find_clips_jsonl_null_caption_is_empty(tmp_path):
    rows = '{"path": "a.mp4", "caption": "a cat"}\n{"path": "b.mp4", "caption": null}\n'
    assert [c.caption for c in find_clips(touch(tmp_path / "m.jsonl", rows))] == ["a cat", ""]


# ---------------------------------------------------------------------------------------------------------------------
# ClipDataset


def column_x(pixels: torch.Tensor) -> list[int]:
    """Horizontal position of the bright column in each frame of ``[3, f, H, W]``."""
    return pixels.mean(dim=(0, 2)).argmax(dim=-1).tolist()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """Encoded once: a long column clip (mp4 and gif), a 7-frame and a 3-frame clip, a square, two fakes."""
    d = tmp_path_factory.mktemp("media")
    return {
        "columns_mp4": write_clip(d / "columns.mp4", column_clip(16), "columns"),
        "columns_gif": write_clip(d / "columns.gif", column_clip(16), "columns"),
        "seven": write_clip(d / "seven.mp4", column_clip(7), "seven frames"),
        "three": write_clip(d / "three.mp4", column_clip(3), "three frames"),
        "square": write_clip(d / "square.mp4", moving_square(12, 32), "a red square moving right"),
        "random": write_corrupt(d / "random.mp4", "random"),
        "text": write_corrupt(d / "text.mp4", "text"),
    }


def dataset(media, *names, **kw) -> ClipDataset:
    sources = find_clips(next(iter(media.values())).parent)
    by_path = {s.path: s for s in sources}
    settings = {"frames": 4, "stride": 2, "height": 32, "width": 32, "seed": 0, **kw}
    return ClipDataset([by_path[media[n]] for n in names], **settings)


def test_clip_shape_and_range(media):
    ds = dataset(media, "square", height=16, width=24)
    item = ds[0]
    assert set(item) == {"pixels", "caption", "index"}
    assert item["pixels"].shape == (3, 4, 16, 24)
    assert item["pixels"].dtype == torch.float32
    assert item["pixels"].min() >= -1 and item["pixels"].max() <= 1
    assert item["pixels"].min() < -0.5 and item["pixels"].max() > 0.5  # a real picture, not a flat fill
    assert item["caption"] == "a red square moving right" and item["index"] == 0
    # the red square: red channel high, green low, inside the centre rows
    red, green = item["pixels"][0, 0, 8], item["pixels"][1, 0, 8]
    assert ((red > 0.5) & (green < -0.5)).any()


@pytest.mark.parametrize("name", ["columns_mp4", "columns_gif"])
def test_frames_come_from_the_right_indices(media, name):
    """Frame k of the file has its column at x = 2k: positions prove which frames were decoded, stride included."""
    for stride in (1, 2, 3):
        ds = dataset(media, name, stride=stride)
        span = 3 * stride + 1
        starts = set()
        for epoch in range(6):
            xs = column_x(ds[(0, epoch)]["pixels"])
            start = xs[0] // 2
            assert xs[0] % 2 == 0 and 0 <= start <= 16 - span, xs
            assert xs == [2 * (start + i * stride) for i in range(4)], (stride, epoch, xs)
            starts.add(start)
        assert len(starts) > 1, "different epochs should give different starts"


def test_same_index_and_epoch_gives_the_same_clip(media):
    ds = dataset(media, "columns_mp4", "square")
    for key in [(0, 0), (0, 3), (1, 5)]:
        assert torch.equal(ds[key]["pixels"], ds[key]["pixels"])
    assert torch.equal(ds[0]["pixels"], ds[(0, 0)]["pixels"])  # a plain index is epoch 0
    # a fresh dataset (another worker process) draws the same clip
    assert torch.equal(dataset(media, "columns_mp4", "square")[(0, 3)]["pixels"], ds[(0, 3)]["pixels"])


def test_stride_is_lowered_for_a_short_video(media):
    # 7 frames cannot hold 4 frames every 4th (13 needed): stride 2 (frames 0, 2, 4, 6) is the largest that fits
    ds = dataset(media, "seven", stride=4)
    for epoch in range(3):
        assert column_x(ds[(0, epoch)]["pixels"]) == [0, 4, 8, 12]


def test_too_short_video_is_skipped(media):
    item = dataset(media, "three")[0]
    assert item == {"skipped": str(media["three"]), "reason": "too short (3 frames)"}


@pytest.mark.parametrize("name", ["random", "text"])
def test_unreadable_file_is_skipped_with_a_reason(media, name):
    sources = [s for s in find_clips(media[name].parent) if s.path == media[name]]
    assert sources and sources[0].caption == ""
    item = ClipDataset(sources, frames=4, stride=2, height=16, width=16)[0]
    assert set(item) == {"skipped", "reason"}
    assert item["skipped"] == str(media[name])
    assert item["reason"] and "\n" not in item["reason"]


@pytest.mark.parametrize("fraction", [0.6, 0.3, 0.1])
def test_truncated_file_is_read_or_skipped_never_raised(media, tmp_path, fraction):
    data = media["square"].read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * fraction)])
    ds = ClipDataset([ClipSource(path, "cut")], frames=4, stride=2, height=16, width=16)
    for epoch in range(3):
        item = ds[(0, epoch)]
        assert ("pixels" in item) != ("skipped" in item)
        if "skipped" in item:
            assert item["skipped"] == str(path) and item["reason"]


def test_collate_reports_skipped_and_stacks_the_rest(media):
    ds = dataset(media, "square", "three", "columns_mp4", height=16, width=16)
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["pixels"].shape == (2, 3, 4, 16, 16)
    assert batch["captions"] == ["a red square moving right", "columns"]
    assert batch["indices"] == [0, 2]
    assert batch["skipped"] == [(str(media["three"]), "too short (3 frames)")]
    assert collate([ds[1]]) == {"skipped": [(str(media["three"]), "too short (3 frames)")]}


# ---------------------------------------------------------------------------------------------------------------------
# resize_crop


def test_resize_crop_exact_centre_crop():
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 16, 3), dtype=np.uint8)
    out = resize_crop(frames, 8, 8)  # the short side already fits: a pure centre crop of columns 4..11
    assert out.shape == (3, 2, 8, 8)
    expected = torch.from_numpy(frames[:, :, 4:12]).permute(3, 0, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_resize_crop_non_square_input():
    # 20 x 40: red, green, blue bands; 10 x 10 scales by 1/2 to 10 x 20 and keeps the middle columns 10..29
    # of the source (inside the green band, with a margin for the antialiasing filter)
    frame = np.zeros((1, 20, 40, 3), np.uint8)
    frame[:, :, :7, 0] = 255
    frame[:, :, 7:33, 1] = 255
    frame[:, :, 33:, 2] = 255
    out = resize_crop(frame, 10, 10)
    assert out.shape == (3, 1, 10, 10)
    assert out.min() >= -1 and out.max() <= 1
    torch.testing.assert_close(out[1], torch.ones(1, 10, 10), atol=0.05, rtol=0)  # green everywhere
    assert out[0].max() < -0.9 and out[2].max() < -0.9
    # a tall frame keeps its middle rows
    tall = np.zeros((1, 40, 20, 3), np.uint8)
    tall[:, 7:33] = 255
    out = resize_crop(tall, 10, 10)
    assert out.shape == (3, 1, 10, 10) and out.min() > 0.9
    # a wider target than the source: upscales to cover, then crops
    out = resize_crop(frame, 16, 48)
    assert out.shape == (3, 1, 16, 48)


# ---------------------------------------------------------------------------------------------------------------------
# ResumableBatches


def take(sampler, n: int) -> list[list[tuple[int, int]]]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_is_deterministic_and_covers_each_epoch():
    a = take(ResumableBatches(10, 3, seed=5), 12)
    assert a == take(ResumableBatches(10, 3, seed=5), 12)
    assert a != take(ResumableBatches(10, 3, seed=6), 12)
    assert all(len(batch) == 3 for batch in a)
    per_epoch = 10 // 3
    for epoch in range(4):
        batches = a[epoch * per_epoch : (epoch + 1) * per_epoch]
        items = [item for batch in batches for item in batch]
        assert {e for _, e in items} == {epoch}
        indices = [i for i, _ in items]
        assert len(set(indices)) == len(indices) == 9  # no repeats within an epoch; the tail of 1 is dropped
    orders = [[i for batch in a[e * 3 : e * 3 + 3] for i, _ in batch] for e in range(4)]
    assert len({tuple(o) for o in orders}) > 1  # reshuffled every epoch


@pytest.mark.parametrize("position", [1, 3, 7])
def test_sampler_resumed_at_a_position_yields_the_tail(position):
    full = take(ResumableBatches(7, 2, seed=1), 15)
    assert take(ResumableBatches(7, 2, seed=1, position=position), 15 - position) == full[position:]
    world = [take(ResumableBatches(7, 1, seed=1, rank=r, world=2), 12) for r in range(2)]
    for r in range(2):
        assert (
            take(ResumableBatches(7, 1, seed=1, rank=r, world=2, position=position), 12 - position)
            == world[r][position:]
        )


def test_sampler_ranks_see_disjoint_indices_within_an_epoch():
    size, batch, world = 11, 2, 2
    ranks = [ResumableBatches(size, batch, seed=3, rank=r, world=world) for r in range(world)]
    per_epoch = ranks[0].per_epoch
    assert per_epoch == 11 // 4
    seen = [take(s, per_epoch * 3) for s in ranks]
    for epoch in range(3):
        sets = []
        for r in range(world):
            items = [item for b in seen[r][epoch * per_epoch : (epoch + 1) * per_epoch] for item in b]
            assert {e for _, e in items} == {epoch}
            sets.append({i for i, _ in items})
            assert len(sets[-1]) == per_epoch * batch
        assert not sets[0] & sets[1]
        # together the ranks deal the epoch's permutation in order, like one process with the global batch
        single = take(ResumableBatches(size, batch * world, seed=3), per_epoch * 3)[
            epoch * per_epoch : (epoch + 1) * per_epoch
        ]
        assert sets[0] | sets[1] == {i for b in single for i, _ in b}


def test_sampler_smaller_than_one_global_batch_repeats():
    batches = take(ResumableBatches(2, 3, seed=0), 3)
    assert all(len(b) == 3 and {i for i, _ in b} <= {0, 1} for b in batches)
    assert [b[0][1] for b in batches] == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------------------------
# read_frames on real footage: against a plain sequential decode

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # as in conftest.py
WANTED = {
    "cockatoo.mp4": [[0, 1], [77, 78], [140, 143], [143, 140, 140], [279]],
    "cockatoo_yuv420.mp4": [[0], [77, 78], [140, 143], [279]],
    "newtonscradle.gif": [[0], [5, 10], [33, 35]],
}
COUNTS = {"cockatoo.mp4": 280, "cockatoo_yuv420.mp4": 280, "newtonscradle.gif": 36}


@pytest.fixture(scope="module", params=sorted(WANTED))
def decoded(request) -> tuple[Path, int, dict[int, np.ndarray]]:
    """(file, frame count, {index: frame}) from decoding the whole file once, from the start, in order."""
    path = SHARED_DATA / request.param
    if not path.is_file():
        pytest.skip("../shared/data is not present")
    keep = {i for group in WANTED[request.param] for i in group}
    frames, count = {}, 0
    with av.open(str(path)) as container:
        for n, frame in enumerate(container.decode(video=0)):
            if n in keep:
                frames[n] = frame.to_ndarray(format="rgb24")
            count = n + 1
    return path, count, frames


def test_read_frames_matches_sequential_decode(decoded):
    path, count, frames = decoded
    assert count == COUNTS[path.name]
    info = probe(path)
    assert info.num_frames == count
    for group in WANTED[path.name]:
        got = read_frames(path, group, info)
        assert got.shape == (len(group), *frames[group[0]].shape) and got.dtype == np.uint8
        for j, i in enumerate(group):
            assert np.array_equal(got[j], frames[i]), f"{path.name}: frame {i} differs from the sequential decode"


def test_read_frames_rejects_out_of_range(decoded):
    path, count, _ = decoded
    with pytest.raises(ValueError):
        read_frames(path, [count])
