"""Frame interpolation (``--interpolate N``): ``N - 1`` new frames between each pair, the frame rate times ``N``.

Methods (:data:`METHODS`, weight-free): ``flow`` warps both neighbours along OpenCV's dense optical flow
(Farneback, both directions; no flow estimation written here) to the in-between time and blends them; ``blend``
cross-fades the two neighbours; ``repeat`` repeats the earlier one (the floor every method is measured against,
see ``videodiff eval interp``); ``rife`` runs a RIFE v4.x file (:mod:`videodiff.post.rife`, ``--interpolate-model``).
``model`` (the video model renders the in-betweens) needs the pipeline and is run by the render layer
(:mod:`videodiff.render`), not here. With ``loop``, frames are also made between the last frame and the first.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from videodiff.settings.post import INTERPOLATE_METHODS as METHODS

if TYPE_CHECKING:
    from videodiff.post.stage import Clip

__all__ = ["METHODS", "Interpolate", "between", "frames_after", "interpolate", "pair_flows"]


def frames_after(count: int, factor: int, *, loop: bool = False) -> int:
    """How many frames ``count`` frames become: ``(count - 1) * factor + 1``, or ``count * factor`` with ``loop``."""
    if count < 1:
        return 0
    return count * factor if loop else (count - 1) * factor + 1


def pair_flows(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense optical flow ``a -> b`` and ``b -> a`` (float32 ``[h w 2]``, pixels (dx, dy)) of two uint8 RGB
    frames ``[h w 3]``, by OpenCV's Farneback method on their grey levels."""
    import cv2

    grey_a, grey_b = (cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY) for x in (a, b))
    # pyramid levels for motions a few times the window; 15 px windows: smooth fields over small objects
    levels = max(1, min(5, int(np.log2(max(1, min(a.shape[:2]) // 16))) + 1))
    args = (None, 0.5, levels, 15, 3, 5, 1.2, 0)
    return (
        cv2.calcOpticalFlowFarneback(grey_a, grey_b, *args),
        cv2.calcOpticalFlowFarneback(grey_b, grey_a, *args),
    )


def _warp(frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``frame`` sampled at ``x + flow(x)`` (backward warping, bilinear, edges repeated): float32 ``[h w 3]``."""
    import cv2

    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(
        frame.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip


def between(
    a: np.ndarray, b: np.ndarray, times: list[float], method: str = "flow", net: Any = None
) -> list[np.ndarray]:
    """The frames at each of ``times`` (0 < t < 1) between uint8 frames ``a`` (t = 0) and ``b`` (t = 1);
    ``rife`` runs ``net`` (a loaded :class:`~videodiff.post.rife.IFNet`)."""
    if method == "rife":
        from videodiff.post.rife import interpolate_pair

        if net is None:
            raise ValueError("method rife needs a loaded network (videodiff.post.rife.load_rife)")
        return interpolate_pair(net, a, b, times)
    if method == "repeat":
        return [a.copy() for _ in times]
    fa, fb = a.astype(np.float32), b.astype(np.float32)
    if method == "blend":
        return [_to_uint8((1 - t) * fa + t * fb) for t in times]
    if method != "flow":
        raise ValueError(f"interpolation method {method!r} is not flow, blend, repeat or rife (model: a render's)")
    f01, f10 = pair_flows(a, b)
    out = []
    for t in times:
        # the flows from time t to each end, from the two measured ones (Jiang et al. 2018, Super SloMo, eq. 4)
        ft0 = -(1 - t) * t * f01 + t * t * f10
        ft1 = (1 - t) * (1 - t) * f01 - t * (1 - t) * f10
        out.append(_to_uint8((1 - t) * _warp(fa, ft0) + t * _warp(fb, ft1)))
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def interpolate(
    frames: np.ndarray, factor: int, method: str = "flow", *, loop: bool = False, net: Any = None
) -> np.ndarray:
    """uint8 ``[f h w 3]`` -> uint8 ``[frames_after(f, factor, loop=loop) h w 3]``: every frame kept, at index
    ``i * factor``, with ``factor - 1`` made frames after it (after the last too, towards the first, with ``loop``);
    ``net``: the loaded RIFE network for ``method="rife"``."""
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [f h w 3], got {frames.dtype} {tuple(frames.shape)}")
    count = frames.shape[0]
    times = [k / factor for k in range(1, factor)]
    pairs = [(i, i + 1) for i in range(count - 1)] + ([(count - 1, 0)] if loop and count > 1 else [])
    out: list[np.ndarray] = []
    for i, j in pairs:
        out.append(frames[i])
        out.extend(between(frames[i], frames[j], times, method, net))
    if not loop or count == 1:
        out.append(frames[-1])
    if loop and count == 1:  # one frame looping: it is every frame
        out.extend(frames[0] for _ in range(factor - 1))
    return np.stack(out)


class Interpolate:
    """The post step of :func:`interpolate`: more frames, the fps times ``factor`` (``None`` stays ``None``);
    pinned pictures move to their frames' new indices; a looping clip (``clip.loop``) is also interpolated across
    its seam. ``model``: the RIFE file for ``method="rife"``, loaded (and so checked) when the step is made."""

    name = "interpolate"

    def __init__(self, factor: int, method: str = "flow", model: str | None = None) -> None:
        self.factor, self.method, self.model, self.loop = factor, method, model, False
        self.net, self.sha256 = None, None
        if method == "rife":
            from videodiff.media.images import file_sha256
            from videodiff.post.rife import load_rife

            self.net = load_rife(str(model))
            self.sha256 = file_sha256(str(model))

    def __call__(self, clip: Clip) -> Clip:
        self.loop = clip.loop  # what record() reports
        frames = interpolate(clip.frames, self.factor, self.method, loop=clip.loop, net=self.net)
        fps = None if clip.fps is None else clip.fps * self.factor
        count = clip.frames.shape[0]
        pictures = {(f % count) * self.factor: p for f, p in clip.pictures.items()}
        return replace(clip, frames=frames, fps=fps, pictures=pictures)

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"factor": self.factor, "method": self.method, "loop": self.loop}
        if self.net is not None:
            record.update(model=str(self.model), sha256=self.sha256, layout=self.net.layout.label)
        return record
