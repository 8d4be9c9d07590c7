"""Training clips: find videos and captions, decode random clips, resize and crop.

Layouts: a folder of videos with same-stem ``.txt`` captions; a CSV or JSONL manifest
with ``path,caption`` and optionally ``maps`` (paths relative to the manifest); a WebVid-style CSV
(``videoid,name,page_dir``: caption from ``name``, file ``<page_dir>/<videoid>.mp4``
under ``--data-root``). Control maps beside clips (``--controlnet``): :mod:`videodiff.training.maps`.
Every random choice of an item is seeded by (seed, epoch, index), so data order and clips are the
same after a resume, in any worker; a training step's noise by (seed, micro-step, process)
(:func:`step_generator`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from videodiff.errors import UserError
from videodiff.media.clips import VIDEO_EXTENSIONS, UnreadableVideo, fit_stride, probe, read_frames
from videodiff.training.maps import UnreadableMaps, is_maps_video, maps_beside, read_clip_maps


@dataclass(frozen=True)
class ClipSource:
    path: Path
    caption: str
    maps: Path | None = None  # the clip's control maps (a video or a folder of pictures), if any


def _read_manifest_rows(path: Path) -> list[dict[str, str]]:
    try:
        if path.suffix.lower() == ".jsonl":
            rows = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise UserError(f"{path}:{n}: each line must be a JSON object")
                    rows.append({str(k): "" if v is None else str(v) for k, v in row.items()})
            return rows
        with path.open(newline="", encoding="utf-8") as fh:
            return [dict(row) for row in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read the manifest ({exc})") from None


def find_clips(data: str | Path, data_root: str | Path | None = None) -> list[ClipSource]:
    """Every (video, caption) pair of a dataset folder or manifest; nothing is decoded yet."""
    data = Path(data)
    if data.is_dir():
        videos = sorted(p for p in data.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        every = set(videos)
        found = []
        for video in videos:
            if is_maps_video(video, every):  # NAME.maps.EXT: the maps of NAME.EXT
                continue
            caption_file = video.with_suffix(".txt")
            caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
            found.append(ClipSource(video, caption, maps_beside(video)))
        if not found:
            raise UserError(f"{data}: no videos ({' '.join(VIDEO_EXTENSIONS)}) found")
        if not any(c.caption for c in found):
            raise UserError(f"{data}: no captions found (put each video's caption in a same-stem .txt file)")
        return found
    if not data.is_file():
        raise UserError(f"--data {data}: no such file or folder")
    if data.suffix.lower() not in (".csv", ".jsonl"):
        raise UserError(f"--data {data}: expected a folder, a .csv or a .jsonl manifest")
    rows = _read_manifest_rows(data)
    if not rows:
        raise UserError(f"{data}: the manifest is empty")
    columns = set(rows[0])

    def field(row: dict, n: int, key: str) -> str:
        value = row.get(key)
        if value is None or (key != "caption" and key != "name" and not str(value).strip()):
            raise UserError(f"{data}: row {n} has no {key!r}")
        return str(value).strip()

    if {"videoid", "name", "page_dir"} <= columns:
        root = Path(data_root) if data_root else data.parent
        return [
            ClipSource(root / field(r, n, "page_dir") / f"{field(r, n, 'videoid')}.mp4", field(r, n, "name"))
            for n, r in enumerate(rows, 1)
        ]
    if {"path", "caption"} <= columns:
        return [
            ClipSource(
                data.parent / field(r, n, "path"),
                field(r, n, "caption"),
                data.parent / str(r["maps"]).strip() if str(r.get("maps") or "").strip() else None,
            )
            for n, r in enumerate(rows, 1)
        ]
    raise UserError(f"{data}: expected columns path,caption (or WebVid's videoid,name,page_dir), got {sorted(columns)}")


def resize_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 ``[f H W 3]`` -> float ``[3 f height width]`` in ``[-1, 1]``: scale the short side, centre crop."""
    x = rearrange(torch.from_numpy(frames), "f h w c -> f c h w").float() / 127.5 - 1
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    x = x[:, :, top : top + height, left : left + width].clamp(-1, 1)
    return rearrange(x, "f c h w -> c f h w")


class ClipDataset(torch.utils.data.Dataset):
    """Random clips of ``frames`` frames every ``stride`` frames; unreadable or too-short videos give ``None``."""

    def __init__(
        self,
        sources: list[ClipSource],
        *,
        frames: int,
        stride: int,
        height: int,
        width: int,
        flip: bool = False,
        seed: int = 0,
        maps: bool = False,
    ) -> None:
        self.sources, self.frames, self.stride = sources, frames, stride
        self.height, self.width, self.flip, self.seed = height, width, flip, seed
        self.maps = maps  # read each clip's control maps too, at the same frames, resized and cropped alike

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """``key`` is an index, or ``(index, epoch)`` from :class:`ResumableBatches` (workers cannot see epochs).

        ``pixels`` float ``[3 f h w]`` in [-1, 1]; with ``maps``, ``maps`` uint8 ``[3 f h w]`` of the same frames."""
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        source = self.sources[index]
        rng = random.Random(f"{self.seed}/{epoch}/{index}")
        try:
            info = probe(source.path)
            stride = fit_stride(info.num_frames, self.frames, self.stride)
            if stride is None:
                return {"skipped": str(source.path), "reason": f"too short ({info.num_frames} frames)"}
            span = (self.frames - 1) * stride + 1
            start = rng.randrange(0, info.num_frames - span + 1)
            indices = [start + i * stride for i in range(self.frames)]
            frames = read_frames(source.path, indices, info)
            if self.maps:
                if source.maps is None:
                    raise UnreadableMaps("no control maps")
                maps = read_clip_maps(source.maps, indices, info.num_frames, (info.width, info.height))
        except (UnreadableVideo, UnreadableMaps, OSError) as exc:
            reason = str(exc).splitlines()[0].removeprefix(f"{source.path}: ")
            return {"skipped": str(source.path), "reason": reason}
        pixels = resize_crop(frames, self.height, self.width)
        flip = self.flip and rng.random() < 0.5
        item = {"pixels": pixels.flip(-1) if flip else pixels, "caption": source.caption, "index": index}
        if self.maps:  # the same resize and crop (and flip) as the frames: a map's blob stays on its object
            fitted = ((resize_crop(maps, self.height, self.width) + 1) * 127.5).round().to(torch.uint8)
            item["maps"] = fitted.flip(-1) if flip else fitted
        return item


def collate(items: list[dict]) -> dict:
    """Stack readable clips; report the skipped ones (a batch may be empty)."""
    good = [i for i in items if "pixels" in i]
    batch = {"skipped": [(i["skipped"], i["reason"]) for i in items if "skipped" in i]}
    if good:
        batch["pixels"] = torch.stack([i["pixels"] for i in good])
        batch["captions"] = [i["caption"] for i in good]
        batch["indices"] = [i["index"] for i in good]
        if "maps" in good[0]:
            batch["maps"] = torch.stack([i["maps"] for i in good])
    return batch


def step_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    """A CPU generator for one micro-step of one process: no RNG state to save, resume is exact."""
    digest = hashlib.sha256(f"{seed}/{micro_step}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class ResumableBatches(torch.utils.data.Sampler):
    """Batches of ``(index, epoch)`` for one process, from a global position, epoch after epoch, forever.

    Epoch ``e`` is a permutation seeded by (seed, e); batches are dealt round-robin to
    ``world`` processes. ``position`` counts this process's batches since the start, so
    a resumed run continues with exactly the batch it would have drawn next.
    """

    def __init__(
        self, size: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1, position: int = 0
    ) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world, self.position = rank, world, position
        # per-process batches in one epoch (the tail that cannot be dealt evenly is dropped)
        self.per_epoch = max(1, size // (batch_size * world))

    def epoch_of(self, position: int) -> int:
        return position // self.per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        position = self.position
        while True:
            epoch, offset = divmod(position, self.per_epoch)
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
            order = order.tolist()
            while len(order) < self.batch_size * self.world:  # datasets smaller than one global batch repeat
                order += order
            for b in range(offset, self.per_epoch):
                first = (b * self.world + self.rank) * self.batch_size
                yield [(i, epoch) for i in order[first : first + self.batch_size]]
                position += 1

    def __len__(self) -> int:  # endless; DataLoader only needs this for len()
        return 2**62
