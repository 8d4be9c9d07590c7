"""Paste (img2vid's ``--paste``): the exact pinned pictures in their frames, the other frames' colours matched."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from videodiff.post.stage import Clip


def paste(frames: np.ndarray, pictures: Mapping[int, np.ndarray]) -> np.ndarray:
    """``frames`` uint8 ``[f h w 3]`` with the exact ``pictures`` (``{frame: uint8 [h w 3]}``) in their frames and
    every other frame's colours matched: a per-channel gain and offset, fitted by least squares from the decoded
    pinned frames to their pictures, applied to all frames."""
    decoded = np.concatenate([frames[f].reshape(-1, 3) for f in pictures]).astype(np.float64)
    target = np.concatenate([p.reshape(-1, 3) for p in pictures.values()]).astype(np.float64)
    out = frames.astype(np.float64)
    for c in range(3):
        x, y = decoded[:, c], target[:, c]
        var = x.var()
        gain = ((x - x.mean()) * (y - y.mean())).mean() / var if var > 1e-6 else 1.0
        out[..., c] = (out[..., c] - x.mean()) * gain + y.mean()
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    for f, picture in pictures.items():
        out[f] = picture
    return out


class Paste:
    """The post step of :func:`paste`: frame count, size and fps unchanged."""

    name = "paste"

    def __call__(self, clip: Clip) -> Clip:
        return replace(clip, frames=paste(clip.frames, clip.pictures))

    def record(self) -> dict[str, Any]:
        return {}
