"""Keyframes: pictures pinned to frames of a video (img2vid), where sampling starts and how the frames are held.

1. **Start** (:func:`clean_start`): a clean latent video built from the pictures' latents, noised to
   ``1 - strength`` into the schedule (:func:`videodiff.starts.from_clean`). One picture: every frame
   starts from it, shifted along a velocity when one is known (a model's motion prior: the picture
   takes the place of the prior's guessed object, the prompt still sets the motion); several: the
   object of each picture moves in a straight line at an even pace to where the next picture has it
   (:func:`pixel_track`, drawn in pixels and encoded), or, where a picture has no one object on a plain
   background, the frames between two pictures start from a blend of the two.
2. **Anchor** (:class:`Anchor`, an ``on_step`` hook): after each of the first ``anchor`` fraction of
   the steps, every pinned frame is put back to its picture's latent noised to the timestep the
   latents are now at, with the very noise that frame started from (RePaint, Lugmayr et al. 2022,
   eq. 8: the frame's true noise is known, so the known region follows its own trajectory). Then
   the frames are let go, so that they blend with their neighbours.
3. **Paste** (optional) is a post-processing step after decoding: :mod:`videodiff.post.paste`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from videodiff.sampling import OnStep, Schedule


def shift_frames(frames: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``frames`` (``[b c f h w]``: pictures or latents) each moved by its ``offsets`` row (``[f 2]``, ``(dy, dx)``
    in the frames' own pixels or cells, down and right), bilinearly; the edge extends into what is uncovered."""
    b, _, f, h, w = frames.shape
    offsets = offsets.float().to(frames.device)
    ys = torch.arange(h, dtype=torch.float32, device=frames.device)[None, :, None] - offsets[:, 0, None, None]
    xs = torch.arange(w, dtype=torch.float32, device=frames.device)[None, None, :] - offsets[:, 1, None, None]
    ys, xs = torch.broadcast_tensors(ys, xs)  # [f h w]: where each output pixel reads from
    grid = torch.stack([xs / max(w - 1, 1) * 2 - 1, ys / max(h - 1, 1) * 2 - 1], -1)  # [f h w 2]
    source = rearrange(frames.float(), "b c f h w -> (b f) c h w")
    moved = F.grid_sample(source, repeat(grid, "f h w two -> (b f) h w two", b=b), align_corners=True,
                          padding_mode="border")  # fmt: skip
    return rearrange(moved, "(b f) c h w -> b c f h w", b=b).to(frames.dtype)


def shifted(latent: torch.Tensor, frames: int, velocity: tuple[float, float], at: int = 0) -> torch.Tensor:
    """``latent`` ``[1 c h w]`` translated by ``velocity`` (cells per frame, ``(dy, dx)``) per frame from frame ``at``:
    a video ``[1 c f h w]`` (edges repeated where the picture moves away from them)."""
    k = torch.arange(frames, dtype=torch.float32) - at  # [f]
    offsets = torch.stack([velocity[0] * k, velocity[1] * k], -1)
    return shift_frames(repeat(latent, "1 c h w -> 1 c f h w", f=frames), offsets)


def blended(keys: Mapping[int, torch.Tensor], frames: int) -> torch.Tensor:
    """Pictures' latents ``{frame: [1 c h w]}`` spread over ``frames``: linear blends between neighbouring pinned
    frames, the nearest picture outside them. Returns ``[1 c f h w]``."""
    order = sorted(keys)
    out = []
    for f in range(frames):
        before = max((k for k in order if k <= f), default=order[0])
        after = min((k for k in order if k >= f), default=order[-1])
        w = 0.0 if after == before else (f - before) / (after - before)
        out.append((1 - w) * keys[before] + w * keys[after])
    return torch.stack(out, dim=2)


# An object is told from its picture's background where it differs from the border's median colour by more than
# this (0-255, Euclidean over RGB) and this fraction of the largest difference; a picture whose "object" covers more
# than MAX_OBJECT_AREA of it (a photograph, a scene) has no one object to track.
OBJECT_DIFFERENCE = 24.0
OBJECT_FRACTION = 0.35
MAX_OBJECT_AREA = 0.25
MIN_OBJECT_PIXELS = 4


def object_centre(picture: np.ndarray) -> tuple[float, float] | None:
    """Where the one object of a picture (uint8 ``[h w 3]``) is, ``(y, x)`` in pixels: the centroid of its difference
    from the background (the median of a 2-pixel border), weighted by that difference; ``None`` when the picture
    has no one compact object on a plain background (nothing stands out, or what does covers too much of it)."""
    x = np.asarray(picture, np.float32)
    h, w, _ = x.shape
    edge = max(1, min(2, h // 8, w // 8))
    border = np.concatenate([x[:edge].reshape(-1, 3), x[-edge:].reshape(-1, 3),
                             x[:, :edge].reshape(-1, 3), x[:, -edge:].reshape(-1, 3)])  # fmt: skip
    diff = np.linalg.norm(x - np.median(border, axis=0), axis=-1)
    peak = float(diff.max())
    mask = diff > max(OBJECT_DIFFERENCE, OBJECT_FRACTION * peak)
    if not MIN_OBJECT_PIXELS <= mask.sum() <= MAX_OBJECT_AREA * h * w:
        return None
    weight = np.where(mask, diff, 0.0)
    ys, xs = np.mgrid[0:h, 0:w]
    return float((weight * ys).sum() / weight.sum()), float((weight * xs).sum() / weight.sum())


def pixel_track(pictures: Mapping[int, np.ndarray], frames: int) -> torch.Tensor | None:
    """Pixels ``[1 3 f h w]`` (-1..1) of a video in which the object of each pinned picture moves in a straight line, at
    an even pace, to where the next picture has it: between pinned frames ``a`` and ``b``, frame ``f`` (``w`` of the
    way) blends picture ``a`` moved ``w`` of the way with picture ``b`` moved back the rest, so the two objects lie
    on each other (no cross-fade of two places). Before the first and after the last pinned frame, that picture.
    ``None`` unless at least two neighbouring pictures each show one object (:func:`object_centre`)."""
    order = sorted(pictures)
    centres = {f: object_centre(pictures[f]) for f in order}
    if not any(centres[a] is not None and centres[b] is not None for a, b in zip(order, order[1:])):
        return None
    video = torch.from_numpy(np.stack([pictures[f] for f in order])).float().permute(3, 0, 1, 2)[None] / 127.5 - 1
    index = {f: k for k, f in enumerate(order)}
    out = []
    for f in range(frames):
        before = max((k for k in order if k <= f), default=order[0])
        after = min((k for k in order if k >= f), default=order[-1])
        a, b = video[:, :, index[before]], video[:, :, index[after]]
        if after == before:
            out.append(a)
            continue
        w = (f - before) / (after - before)
        ca, cb = centres[before], centres[after]
        if ca is None or cb is None:  # no object to follow: a blend, as between latents
            out.append((1 - w) * a + w * b)
            continue
        d = torch.tensor([cb[0] - ca[0], cb[1] - ca[1]])
        moved_a = shift_frames(a[:, :, None], (w * d)[None])[:, :, 0]
        moved_b = shift_frames(b[:, :, None], (-(1 - w) * d)[None])[:, :, 0]
        out.append((1 - w) * moved_a + w * moved_b)
    return torch.stack(out, dim=2)


def clean_start(
    keys: Mapping[int, torch.Tensor], frames: int, velocity: tuple[float, float] | None = None
) -> torch.Tensor:
    """The clean latent video ``[1 c f h w]`` img2vid starts from (see the module's docstring)."""
    if velocity is not None and len(keys) == 1:
        (at, latent), = keys.items()
        return shifted(latent, frames, velocity, at)
    return blended(keys, frames)


class Anchor:
    """``on_step`` hook holding pinned frames to their pictures for the first ``until`` fraction of the steps.

    ``keys``: ``{frame: clean latent [1 c h w]}``; ``noise``: the unit noise ``[1 c f h w]`` sampling
    started from (frame ``k`` is re-noised with ``noise[:, :, k]``); ``schedule``: the sampler's
    :class:`~videodiff.sampling.Schedule` (its ``add_noise`` noises to a timestep in the scheduler's
    own scaling). ``then``: a further hook, called after this one with the latents it left.
    """

    def __init__(
        self,
        keys: Mapping[int, torch.Tensor],
        noise: torch.Tensor,
        schedule: Schedule,
        until: float,
        then: OnStep | None = None,
    ) -> None:
        self.keys, self.noise, self.schedule, self.until, self.then = dict(keys), noise, schedule, until, then

    def __call__(self, i, total, t, t_next, latents, pass_index):
        replaced = None
        if i < round(self.until * total):
            replaced = latents.clone()
            for f, clean in self.keys.items():
                z = clean.to(latents)
                if t_next is not None:
                    z = self.schedule.add_noise(z, self.noise[:, :, f].to(latents), t_next.reshape(1))
                replaced[:, :, f] = z
        if self.then is not None:
            more = self.then(i, total, t, t_next, latents if replaced is None else replaced, pass_index)
            replaced = more if more is not None else replaced
        return replaced
