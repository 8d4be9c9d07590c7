"""A motion prior: where sampling starts, chosen by the prompt, for clips of one moving object.

Why: with an SD-style schedule the noisiest training input still carries a faint copy of the
clip (the "signal leak", Everaert et al., WACV 2024), and a video model learns to take its
layout and motion from it. Sampling from pure noise gives it none, so the seed, not the
prompt, decides where the object goes (measured on the built-in shapes model: direction at
chance, 1 in 4, whatever the direction word). The prior supplies what the leak would:

1. :meth:`MotionPrior.fit` measures, in each training clip's latents, the moving object's
   straight track (velocity), its mean appearance along the track (a ``patch x patch``
   latent patch) and the background, and fits a linear map from the caption's text
   embedding (mean over tokens) to all three in closed form (ridge regression). It runs
   when ``videodiff train --motion-prior`` finishes and is saved beside the motion modules
   (``motion_prior.safetensors``).
2. At sampling time :meth:`MotionPrior.video` draws a clean-video guess from the prompt's
   prediction: the predicted patch over the predicted background, moving at the predicted
   velocity (or ``--motion``) from a start the seed picks, staying in view. Between latent
   cells the patch is resampled in latents, or (``--motion-prior-space pixels``) moved in
   pixels and encoded by the model's VAE (:meth:`MotionPrior.paint_in_pixels`).
3. The pipeline noises that guess to the timestep a fraction ``--motion-prior`` into the
   schedule and runs the remaining steps, as SDEdit / img2img do with an image. The guess
   sets the track; the model draws the object. A loop's guess swings out and back
   (:meth:`MotionPrior.track`); vid2vid's is the prompt's object on the clip's track
   (:meth:`MotionPrior.along`).

Units: the public unit is pixels per frame ``(dx, dy)``, x to the right and y down; inside,
latent cells per frame ``(dy, dx)`` (pixels / the VAE's scale factor).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from videodiff.errors import UserError
from videodiff.keyframes import object_centre, shift_frames
from videodiff.log import notice

PRIOR_FILE = "motion_prior.safetensors"
FORMAT = "videodiff-motion-prior"
PATCH = 5  # latent cells on a side of the appearance patch (20 px at 4x downsampling)
RIDGE = 1e-5  # ridge strength per sample on standardised features: direction words are faint in the embedding


def prompt_features(context: torch.Tensor) -> torch.Tensor:
    """What the prior reads from a text embedding ``[b n d]``: the mean over its tokens, ``[b d]``."""
    return context.detach().double().cpu().mean(1)


def clip_track(frames) -> torch.Tensor | None:
    """``[f 2]``: the centre (pixels, ``(y, x)``) of the one object in each of a clip's frames (uint8
    ``[f h w 3]``, :func:`videodiff.keyframes.object_centre`); ``None`` unless every frame shows one object on a
    plain background."""
    centres = [object_centre(frame) for frame in frames]
    if not centres or any(c is None for c in centres):
        return None
    return torch.tensor(centres, dtype=torch.float32)


def object_tracks(
    latents: torch.Tensor, radius: int = (PATCH - 1) // 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The moving object of each clip of ``latents`` (``[b c f h w]``).

    Returns ``(background [b c], track [b f 2], velocity [b 2])``: the background is each
    channel's median; in each frame the object is found where the deviation from it is
    largest, and placed at the centroid of that deviation (its energy above the frame's
    median) over the ``2 radius + 1`` cells around that peak, so to a fraction of a cell; a
    least-squares straight line through those centres gives the track (cells, ``(y, x)``)
    and its velocity (cells per frame, ``(dy, dx)``).

    Why the centroid: a peak cell jumps a whole cell at a time and sits on the object's
    brightest edge, not its middle, so the patches cut along a peak track were off-centre
    and smeared round; from sub-cell centres they are centred and sharper (measured on the
    built-in model, shape and direction right in all 192 evaluation videos: docs,
    guides/builtin-model.md).
    """
    x = latents.detach().float().cpu()
    b, c, f, h, w = x.shape
    background = x.flatten(2).median(-1).values
    energy = (x - background[:, :, None, None, None]).pow(2).sum(1)  # [b f h w]
    peak = energy.flatten(2).argmax(-1)
    py, px = (peak // w).float(), (peak % w).float()  # [b f]
    ys = torch.arange(h, dtype=torch.float32)[:, None]
    xs = torch.arange(w, dtype=torch.float32)[None, :]
    near = ((ys - py[..., None, None]).abs() <= radius) & ((xs - px[..., None, None]).abs() <= radius)
    floor = energy.flatten(2).median(-1).values[..., None, None]
    weight = (energy - floor).clamp_min(0) * near  # [b f h w]: the deviation's energy around the peak only
    total = weight.sum((-1, -2)).clamp_min(1e-12)
    peaks = torch.stack([(weight * ys).sum((-1, -2)) / total, (weight * xs).sum((-1, -2)) / total], -1)  # [b f 2]
    t = torch.arange(f, dtype=torch.float32)
    t = t - t.mean()
    centre = peaks.mean(1, keepdim=True)
    velocity = ((peaks - centre) * t[None, :, None]).sum(1) / t.pow(2).sum().clamp_min(1e-6)
    track = centre + velocity[:, None] * t[None, :, None]
    return background, track, velocity


def object_windows(latents: torch.Tensor, background: torch.Tensor, track: torch.Tensor, patch: int) -> torch.Tensor:
    """``[b f c patch patch]``: each frame's deviation from its clip's background, around the clip's track."""
    x = latents.detach().float().cpu()
    b, c, f, h, w = x.shape
    offsets = torch.arange(patch, dtype=torch.float32) - (patch - 1) / 2
    ys = track[..., 0, None, None] + offsets[:, None]  # [b f patch 1]
    xs = track[..., 1, None, None] + offsets[None, :]  # [b f 1 patch]
    ys, xs = torch.broadcast_tensors(ys, xs)
    grid = torch.stack([xs / max(w - 1, 1) * 2 - 1, ys / max(h - 1, 1) * 2 - 1], -1).reshape(b * f, patch, patch, 2)
    deviation = (x - background[:, :, None, None, None]).transpose(1, 2).reshape(b * f, c, h, w)
    sampled = F.grid_sample(deviation, grid, align_corners=True, padding_mode="zeros")
    return sampled.view(b, f, c, patch, patch)


@dataclass(frozen=True)
class ClipTargets:
    """What a fit needs of a batch of clips (small: the latents themselves can go)."""

    targets: torch.Tensor  # [b m]: velocity (2, cells per frame), patch (c * patch * patch), background (c)
    frame_norms: torch.Tensor  # [b]: mean norm of one frame's object window, on whole cells
    channels: int
    patch: int

    @staticmethod
    def cat(parts: list[ClipTargets]) -> ClipTargets:
        if not parts or any((p.channels, p.patch) != (parts[0].channels, parts[0].patch) for p in parts):
            raise ValueError("clip targets to join must exist and share channels and patch size")
        return ClipTargets(
            torch.cat([p.targets for p in parts]),
            torch.cat([p.frame_norms for p in parts]),
            parts[0].channels,
            parts[0].patch,
        )


def clip_targets(latents: torch.Tensor, patch: int = PATCH) -> ClipTargets:
    """The regression targets of each clip of ``latents`` (``[b c f h w]``): its object's velocity,
    mean patch along its track and background, and one frame's object contrast."""
    if patch < 1 or patch % 2 == 0:
        raise ValueError(f"patch must be an odd number of cells, got {patch}")
    background, track, velocity = object_tracks(latents, (patch - 1) // 2)
    patches = object_windows(latents, background, track, patch).mean(1)
    frames = object_windows(latents, background, track.round(), patch)  # whole cells: no resampling blur
    targets = torch.cat([velocity, patches.flatten(1), background], 1).double()
    return ClipTargets(targets, frames.flatten(2).norm(dim=2).mean(1).double(), latents.shape[1], patch)


@dataclass(frozen=True)
class PixelCodec:
    """The model's VAE as :meth:`MotionPrior.paint_in_pixels` uses it: latents ``[1 c f h w]`` to pixels
    ``[1 3 f H W]`` in ``[-1, 1]`` and back, ``scale`` pixels to a latent cell."""

    decode: Callable[[torch.Tensor], torch.Tensor]
    encode: Callable[[torch.Tensor], torch.Tensor]
    scale: int


@dataclass(frozen=True)
class Guess:
    """A prompt's guess: velocity (cells per frame, ``(dy, dx)``), appearance patch ``[c k k]``, background ``[c]``."""

    velocity: tuple[float, float]
    patch: torch.Tensor
    background: torch.Tensor


class MotionPrior:
    """``targets = standardise(features) @ weight + bias``; targets are velocity, patch and background.

    The predicted patch is multiplied by ``contrast``: fitted to a mean over object sizes and
    sub-cell positions, it is fainter than any one frame's object, and ``contrast`` (set by
    :meth:`fit`) restores the mean norm of one frame's window (on whole cells, at the track).
    """

    def __init__(
        self,
        mean: torch.Tensor,
        scale: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        channels: int,
        patch: int,
        contrast: float = 1.0,
    ) -> None:
        self.mean, self.scale, self.weight, self.bias = (t.double() for t in (mean, scale, weight, bias))
        self.channels, self.patch, self.contrast = int(channels), int(patch), float(contrast)
        self.check()

    def check(self) -> None:
        d, m = self.dim, 2 + self.channels * self.patch**2 + self.channels
        if (
            self.mean.shape != (d,)
            or self.scale.shape != (d,)
            or self.weight.shape != (d, m)
            or self.bias.shape != (m,)
            or not all(torch.isfinite(t).all() for t in (self.mean, self.scale, self.weight, self.bias))
            or not 0 < self.contrast < 100
        ):
            raise UserError("motion prior tensors have the wrong shapes or are not finite")

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0]) if self.mean.ndim == 1 else -1

    @classmethod
    def fit(
        cls, features: torch.Tensor, latents: torch.Tensor, *, patch: int = PATCH, ridge: float = RIDGE
    ) -> tuple[MotionPrior, dict[str, float]]:
        """Fit to ``features`` (``[n d]``: :func:`prompt_features` of the captions) and ``latents`` (``[n c f h w]``).

        See :meth:`fit_targets`; a large dataset can call :func:`clip_targets` clip by clip instead.
        """
        return cls.fit_targets(features, clip_targets(latents, patch), ridge=ridge)

    @classmethod
    def fit_targets(
        cls, features: torch.Tensor, clips: ClipTargets, *, ridge: float = RIDGE
    ) -> tuple[MotionPrior, dict[str, float]]:
        """Ridge regression of the clips' targets on ``features`` (``[n d]``), in closed form.

        Returns the prior and how well it fits: the rms error of the velocity (cells per frame),
        the fraction of clips whose larger velocity component it predicts with the right axis
        and sign, and the contrast it restores.
        """
        x, targets = features.double(), clips.targets
        n = x.shape[0]
        if n < 2 or targets.shape[0] != n:
            raise UserError(
                f"a motion prior needs at least two captioned clips, got {n} captions and {targets.shape[0]} clips"
            )
        mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
        z = (x - mean) / scale
        bias = targets.mean(0)
        gram = z.T @ z + ridge * n * torch.eye(z.shape[1], dtype=z.dtype)
        weight = torch.linalg.solve(gram, z.T @ (targets - bias))
        fitted = z @ weight + bias
        fitted_norm = fitted[:, 2 : 2 + clips.channels * clips.patch**2].norm(dim=1).mean().clamp_min(1e-8)
        contrast = float(clips.frame_norms.mean() / fitted_norm)
        prior = cls(mean, scale, weight, bias, clips.channels, clips.patch, contrast)
        predicted, velocity = fitted[:, :2], targets[:, :2]
        rms = float((predicted - velocity).pow(2).sum(1).mean().sqrt())
        axis = velocity.abs().argmax(1)
        rows = torch.arange(n)
        same = (predicted.abs().argmax(1) == axis) & (
            torch.sign(predicted[rows, axis]) == torch.sign(velocity[rows, axis])
        )
        return prior, {
            "clips": n,
            "velocity_rms_cells_per_frame": rms,
            "direction_agreement": float(same.double().mean()),
            "contrast": contrast,
        }

    def predict(self, features: torch.Tensor) -> Guess:
        """The guess for one prompt's features (``[1 d]`` or ``[d]``)."""
        f = features.double().reshape(-1)
        if f.shape[0] != self.dim:
            raise UserError(f"the motion prior reads {self.dim}-wide text embeddings, got {f.shape[0]}")
        y = ((f - self.mean) / self.scale) @ self.weight + self.bias
        k, c = self.patch, self.channels
        patch = y[2 : 2 + c * k * k].float().view(c, k, k) * self.contrast
        return Guess((float(y[0]), float(y[1])), patch, y[2 + c * k * k :].float())

    def start_video(
        self,
        context: torch.Tensor,
        shape: tuple[int, int, int, int, int],
        generator: torch.Generator | None,
        scale: int,
        motion: tuple[float, float] | None = None,
        pixels: PixelCodec | None = None,
        loop: bool = False,
    ) -> tuple[torch.Tensor, tuple[float, float]]:
        """The clean latent video ``shape`` a prompt's ``context`` (``[1 n d]``) starts from, and its velocity in
        pixels per frame ``(dx, dy)``: ``motion`` (pixels per frame; the VAE downsamples by ``scale``) or the
        prompt's predicted one. With ``pixels`` the video is drawn through the VAE (:meth:`paint_in_pixels`).
        ``loop`` (a video whose last frame runs on into its first): the object swings out along the velocity and
        back, once over the video (:meth:`track`), so the start closes on itself; a straight track would jump back
        at the seam."""
        guess = self.predict(prompt_features(context))
        cells = None if motion is None else (motion[1] / scale, motion[0] / scale)
        if cells is None and (fitted := self.in_view(guess.velocity, shape, loop)) != tuple(guess.velocity):
            cells = fitted  # a long video, or a prompt without a direction (whose predicted speed is no speed at all)
            before, after = (math.hypot(*v) * scale for v in (guess.velocity, fitted))
            notice(
                f"the motion prior's predicted motion ({before:.2f} px a frame) would carry the object out of view "
                f"over {shape[2]} frames{' and back' if loop else ''}; slowed to {after:.2f} px a frame "
                "(--motion DX,DY sets it)",
                about="the prompt",
            )
        clean = self.video(guess, shape, generator, cells, pixels, loop)
        vy, vx = cells if cells is not None else guess.velocity
        return clean, (round(vx * scale, 4), round(vy * scale, 4))

    def in_view(
        self, velocity: tuple[float, float], shape: tuple[int, int, int, int, int], loop: bool = False
    ) -> tuple[float, float]:
        """``velocity`` (cells per frame, ``(dy, dx)``) slowed, its direction kept, just enough that the patch's whole
        track over the ``shape`` video's frames (with ``loop`` out and back: half as far) fits in view; as it is when
        it fits (or no track could)."""
        _, _, f, h, w = shape
        margin = (self.patch - 1) / 2
        factor = 1.0
        for v, n in zip(velocity, (h, w)):
            span, room = abs(v) * (f / 2 if loop else f - 1), n - 1 - 2 * margin
            if span > room > 0:
                factor = min(factor, room / span)
        return (velocity[0] * factor, velocity[1] * factor) if factor < 1 else tuple(velocity)

    def video(
        self,
        guess: Guess,
        shape: tuple[int, int, int, int, int],
        generator: torch.Generator | None = None,
        velocity: tuple[float, float] | None = None,
        pixels: PixelCodec | None = None,
        loop: bool = False,
    ) -> torch.Tensor:
        """A clean latent video ``shape`` (``[1 c f h w]``): ``guess``'s patch over its background moving at
        ``velocity`` (cells per frame, ``(dy, dx)``; default the guess's) from a start drawn from ``generator``,
        the whole track in view where it fits (else centred); with ``loop`` out and back (:meth:`track`). Drawn in
        latents, or with ``pixels`` through the model's VAE (:meth:`paint_in_pixels`)."""
        _, c, f, h, w = shape
        if c != self.channels:
            raise UserError(f"the motion prior is for {self.channels}-channel latents, this model's have {c}")
        track = self.track(velocity if velocity is not None else guess.velocity, shape, generator, loop)
        return self.paint(guess, shape, track) if pixels is None else self.paint_in_pixels(guess, shape, track, pixels)

    def track(
        self,
        velocity: tuple[float, float],
        shape: tuple[int, int, int, int, int],
        generator: torch.Generator | None,
        loop: bool = False,
    ) -> torch.Tensor:
        """``[f 2]``: the patch centre in each frame (cells, ``(y, x)``), moving at ``velocity`` (cells per frame,
        ``(dy, dx)``) from a start drawn from ``generator``, in view where the track fits (else centred). With
        ``loop`` a swing that closes on itself: out along ``velocity`` and back over the ``f`` frames, at that mean
        speed, easing at the turns (a cosine, whose peak speed is pi/2 times the mean); frame ``f`` would be frame 0.
        """
        _, _, f, h, w = shape
        margin = (self.patch - 1) / 2
        t = torch.arange(f, dtype=torch.float32)
        axes = []
        for v, n in zip(velocity, (h, w)):
            span = abs(v) * (f / 2 if loop else f - 1)
            room = (n - 1 - 2 * margin) - span
            u = float(torch.rand((), generator=generator))
            first = margin + u * room if room > 0 else (n - 1) / 2 - span / 2
            if loop:  # half-way it is span along the velocity, and back at the start by frame f
                swing = (1 - torch.cos(2 * math.pi * t / f)) / 2
                axes.append(first + (span if v < 0 else 0.0) + math.copysign(span, v) * swing)
            else:
                axes.append(first + (span if v < 0 else 0.0) + v * t)
        return torch.stack(axes, -1)

    def paint(self, guess: Guess, shape: tuple[int, int, int, int, int], track: torch.Tensor) -> torch.Tensor:
        """``[1 c f h w]``: ``guess``'s patch centred on ``track`` (``[f 2]`` cells) over its background, resampled
        bilinearly in latent space (at whole cells an exact copy)."""
        _, c, f, h, w = shape
        margin = (self.patch - 1) / 2
        ys, xs = track[:, 0], track[:, 1]
        gy = torch.arange(h, dtype=torch.float32)[None, :, None] - ys[:, None, None] + margin  # patch coordinates
        gx = torch.arange(w, dtype=torch.float32)[None, None, :] - xs[:, None, None] + margin
        gy, gx = torch.broadcast_tensors(gy, gx)
        scale = max(self.patch - 1, 1)
        grid = torch.stack([gx / scale * 2 - 1, gy / scale * 2 - 1], -1)  # [f h w 2]
        placed = F.grid_sample(guess.patch[None].expand(f, -1, -1, -1), grid, align_corners=True, padding_mode="zeros")
        video = guess.background[None, :, None, None] + placed  # [f c h w]
        return video.transpose(0, 1)[None].contiguous()

    def paint_in_pixels(
        self, guess: Guess, shape: tuple[int, int, int, int, int], track: torch.Tensor, pixels: PixelCodec
    ) -> torch.Tensor:
        """``[1 c f h w]``: the patch painted at the nearest whole cell of ``track`` (an exact copy), decoded,
        moved the rest of the way (under half a cell) in pixels, and encoded again.

        Why: a latent patch resampled between cells is a blur of the patch, not the latent of the object
        standing between cells; the model redraws it a cell off in some frames (the "jerks" of the built-in
        model's evaluation). Moved in pixels and encoded, every frame is the VAE's own latent of the object where
        the track puts it. Costs one VAE decode and one encode of the video."""
        whole = track.round()
        frames = pixels.decode(self.paint(guess, shape, whole)).float()  # [1 3 f H W]
        rest = (track - whole) * pixels.scale  # [f 2] pixels, each under half a cell
        return pixels.encode(shift_frames(frames, rest).clamp(-1, 1)).float()

    def along(
        self, context: torch.Tensor, shape: tuple[int, int, int, int, int], centres: torch.Tensor, pixels: PixelCodec
    ) -> torch.Tensor:
        """``[1 c f h w]``: the prompt's (``context`` ``[1 n d]``) guessed object over its background, drawn in pixels
        with its centre at ``centres`` (``[f 2]``, pixels, ``(y, x)``) in each frame, and encoded by the VAE.

        vid2vid's start on a model with a prior: a clip's object in another colour or shape than the prompt's does
        not read as the prompt's object to a model that takes its layout from the noisy start, so it draws its own
        wherever the noise suggests and changes its mind between frames; the clip's track in the prompt's object
        is what it follows (:func:`clip_track`)."""
        guess = self.predict(prompt_features(context))
        _, c, f, h, w = shape
        middle = torch.tensor([[float((h - 1) // 2), float((w - 1) // 2)]])
        picture = pixels.decode(self.paint(guess, (1, c, 1, h, w), middle)).float()  # [1 3 1 H W]
        drawn = object_centre(((picture[0, :, 0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).numpy())
        at = torch.tensor(drawn) if drawn is not None else (middle[0] + 0.5) * pixels.scale - 0.5
        video = shift_frames(picture.expand(-1, -1, f, -1, -1), centres.float() - at)
        return pixels.encode(video.clamp(-1, 1)).float()

    def save(self, path: Path, info: dict | None = None) -> Path:
        from safetensors.torch import save_file

        from videodiff.media.atomic import atomic_file

        tensors = {"mean": self.mean, "scale": self.scale, "weight": self.weight, "bias": self.bias}
        meta = {
            "format": FORMAT,
            "channels": str(self.channels),
            "patch": str(self.patch),
            "contrast": repr(self.contrast),
            "info": json.dumps(info or {}),
        }
        with atomic_file(Path(path)) as tmp:
            save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> MotionPrior:
        """Read a prior written by :meth:`save`; anything else is a one-line error."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise UserError(f"{path}: not a videodiff motion prior")
                t = {k: fh.get_tensor(k) for k in ("mean", "scale", "weight", "bias")}
                channels, patch, contrast = int(meta["channels"]), int(meta["patch"]), float(meta["contrast"])
        except (OSError, SafetensorError, KeyError, ValueError) as exc:
            raise UserError(f"{path}: not a readable motion prior ({exc})") from None
        try:
            return cls(t["mean"], t["scale"], t["weight"], t["bias"], channels, patch, contrast)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
