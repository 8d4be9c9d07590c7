"""Latents of the training clips, encoded once (``--cache-latents``): for runs where the VAE would dominate.

One clip per video (the clip of epoch 0) is encoded with a generator seeded per video and kept
in memory as a dataset (:class:`CachedLatents`). :class:`LatentCache` keeps them in a safetensors
file (default ``<run>/latents.safetensors``, ``--latent-cache``) under a key that fingerprints
what they depend on: the VAE's weights, every clip file (path, size, mtime, caption) and the clip
settings. A later run, or a resume, whose key matches reads them instead of encoding again. With control maps
(``--controlnet``) the file keeps each clip's maps too (uint8 ``[3 f H W]``, fitted as its frames are), and the key
covers the maps' files.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from videodiff import vae
from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.training.data import ClipDataset, collate, step_generator


class CachedLatents(torch.utils.data.Dataset):
    """Latents encoded once per video (the clip of epoch 0), for runs where the VAE would dominate."""

    def __init__(
        self, latents: list[torch.Tensor], captions: list[str], maps: list[torch.Tensor] | None = None
    ) -> None:
        self.latents, self.captions, self.maps = latents, captions, maps

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, key) -> dict:
        index = key[0] if isinstance(key, tuple) else key
        item = {"latents": self.latents[index], "caption": self.captions[index], "index": index}
        if self.maps is not None:
            item["maps"] = self.maps[index]
        return item


def collate_any(items: list[dict]) -> dict:
    """Batches of cached latents (``latents [b c f h w]``), or of clips as :func:`collate` makes them."""
    if items and "latents" in items[0]:
        batch = {
            "latents": torch.stack([i["latents"] for i in items]),
            "captions": [i["caption"] for i in items],
            "skipped": [],
        }
        if "maps" in items[0]:
            batch["maps"] = torch.stack([i["maps"] for i in items])
        return batch
    return collate(items)


@dataclass
class ClipEncoder:
    """Encodes one clip per video with the VAE, drawing from a generator seeded by (``seed``, video)."""

    vae: torch.nn.Module
    device: torch.device
    seed: int
    progress: bool = True  # show a progress bar

    @torch.no_grad()
    def items(self, dataset: ClipDataset, desc: str, skipped: dict[str, str]) -> Iterator[tuple[torch.Tensor, dict]]:
        """``(latents [c f h w], item)`` of one clip per video (the dataset's item: caption, maps), one at a time;
        unreadable ones go to ``skipped``."""
        for index in tqdm(range(len(dataset)), desc=desc, disable=not self.progress):
            item = dataset[(index, 0)]
            if "skipped" in item:
                skipped[item["skipped"]] = item["reason"]
                continue
            pixels = item["pixels"][None].to(self.device, self.vae.dtype)
            gen = step_generator(self.seed, -1 - index, 0)
            yield vae.encode(self.vae, pixels, sample=True, generator=gen)[0].cpu(), item

    def clips(self, dataset: ClipDataset, desc: str, skipped: dict[str, str]) -> Iterator[tuple[torch.Tensor, str]]:
        """``(latents [c f h w], caption)`` of one clip per video, one at a time; unreadable ones go to ``skipped``."""
        for latents, item in self.items(dataset, desc, skipped):
            yield latents, item["caption"]

    def encode(self, dataset: ClipDataset, skipped: dict[str, str], data: str) -> CachedLatents:
        """The latents (and maps) of one clip per video of ``dataset`` (``data`` names it in the error when none is
        readable)."""
        latents, captions, maps = [], [], []
        for clip, item in self.items(dataset, "caching latents", skipped):
            latents.append(clip)
            captions.append(item["caption"])
            if "maps" in item:
                maps.append(item["maps"])
        if not latents:
            raise UserError(f"no readable clips in {data} ({len(skipped)} unreadable or too short)")
        return CachedLatents(latents, captions, maps if getattr(dataset, "maps", False) else None)


def clip_latents(
    dataset: ClipDataset | CachedLatents, encoder: ClipEncoder, desc: str, skipped: dict[str, str]
) -> Iterable[tuple[torch.Tensor, str]]:
    """``(latents [c f h w], caption)`` of one clip per video: the cached ones, else encoded one at a time."""
    if isinstance(dataset, CachedLatents):
        return zip(dataset.latents, dataset.captions)
    return encoder.clips(dataset, desc, skipped)


_CACHE_KEYS = {"key", "captions", "skipped"}  # a latent cache's header metadata: how one is recognised


def is_latent_cache(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file (not a link) whose safetensors header carries a latent cache's own keys:
    the only kind of file ``--latent-cache`` replaces. Reads the header only."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                return False
            size = int.from_bytes(head, "little")
            if size > 1 << 24:
                return False
            header = json.loads(fh.read(size))
    except (OSError, ValueError, RecursionError):
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and _CACHE_KEYS <= meta.keys()


def check_cache_path(path: str | os.PathLike[str]) -> None:
    """Refuse (:class:`UserError`) a latent cache path that holds anything but an earlier latent cache: a user's
    file, a folder, a link, a device or a FIFO is never replaced (nothing needs ``--overwrite``: a cache is ours)."""
    from videodiff.media.atomic import check_replaceable

    check_replaceable(path, file_ok=is_latent_cache, kind="latent cache (--latent-cache)")


class LatentCache:
    """A latent cache file and the key that its latents must carry to be reused."""

    def __init__(self, path: Path, key: str, *, main: bool = True) -> None:
        self.path, self.key, self.main = path, key, main  # main: the process that tells the user and writes the file

    @classmethod
    def open(cls, path: Path, vae_model: torch.nn.Module, dataset: ClipDataset, *, main: bool = True) -> LatentCache:
        """The cache at ``path`` for ``dataset``'s clips encoded by ``vae_model``: nothing is read yet."""
        return cls(Path(path), fingerprint(vae_model, dataset), main=main)

    def read(self, skipped: dict[str, str]) -> CachedLatents | None:
        """The cached latents when the file holds this key's (its skipped files join ``skipped``), else None."""
        from safetensors import SafetensorError, safe_open

        path = self.path
        if not is_latent_cache(path):  # nothing, or (refused before the work) something that is not a cache
            return None
        try:
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
                if meta.get("key") != self.key:
                    self.tell(f"{path} holds latents of other clips, settings or VAE: encoding the clips again")
                    return None
                latents = fh.get_tensor("latents")
                maps = fh.get_tensor("maps") if "maps" in fh.keys() else None
                captions, skipped_there = json.loads(meta["captions"]), json.loads(meta["skipped"])
        except (OSError, SafetensorError, KeyError, ValueError) as exc:
            self.tell(f"{path} is not a readable latent cache ({exc}): encoding the clips again")
            return None
        skipped.update(skipped_there)
        self.tell(f"reusing the latents cached in {path}")
        return CachedLatents(list(latents.unbind()), captions, None if maps is None else list(maps.unbind()))

    def write(self, cached: CachedLatents, skipped: dict[str, str]) -> None:
        from safetensors.torch import save_file

        from videodiff.media.atomic import atomic_file

        check_cache_path(self.path)  # checked before the work too; again, as something may have appeared since
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"key": self.key, "captions": json.dumps(cached.captions), "skipped": json.dumps(skipped)}
        with atomic_file(self.path) as tmp:
            tensors = {"latents": torch.stack(cached.latents).contiguous()}
            if cached.maps is not None:
                tensors["maps"] = torch.stack(cached.maps).contiguous()
            save_file(tensors, str(tmp), metadata=meta)

    @torch.no_grad()
    def encode_or_load(
        self, dataset: ClipDataset, encoder: ClipEncoder, skipped: dict[str, str], data: str
    ) -> CachedLatents:
        """Latents of one clip per video, read from the file when it matches, else encoded (and saved).

        Unreadable videos go to ``skipped``; ``data`` names the dataset in the error when none is readable.
        """
        cached = self.read(skipped)
        if cached is None:
            cached = encoder.encode(dataset, skipped, data)
            if self.main:
                self.write(cached, skipped)
        return cached

    def tell(self, message: str) -> None:
        if self.main:
            notice(message)


def fingerprint(vae_model: torch.nn.Module, dataset: ClipDataset) -> str:
    """What cached latents depend on: the VAE's weights, every clip file and the clip settings."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    clips = []
    for source in dataset.sources:
        stat = source.path.stat()
        clips.append([str(source.path.resolve()), stat.st_size, stat.st_mtime_ns, source.caption])
        if dataset.maps:  # the maps' files (a folder's pictures by name) are part of what is cached
            clips[-1].append(_files_stat(source.maps))
    settings = {
        "frames": dataset.frames,
        "stride": dataset.stride,
        "size": [dataset.height, dataset.width],
        "flip": dataset.flip,
        "seed": dataset.seed,
    }
    if dataset.maps:
        settings["maps"] = True
    digest.update(json.dumps({"clips": clips, "settings": settings}).encode())
    return digest.hexdigest()


def _files_stat(path: Path | None) -> list:
    """(name, size, mtime) of a file, or of each file in a folder; nothing for no path."""
    if path is None:
        return []
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
