"""Stage 3: where sampling starts. Text-to-video: noise, or the motion prior's guess noised part-way; img2vid:
pictures pinned to frames; vid2vid: a clip's frames.

Functions of a loaded pipeline (:class:`videodiff.pipelines.VideoPipeline`, duck-typed: its VAE encoder, motion
prior and notices), called by its :meth:`~videodiff.pipelines.VideoPipeline.generate`.
"""

from __future__ import annotations

import numpy as np
import torch

from videodiff import keyframes, starts, vae
from videodiff.config import IMG2VID_STRENGTH, VID2VID_STRENGTH, SampleSettings
from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.motion_prior import PixelCodec, clip_track
from videodiff.motion_prior import prompt_features as motion_prior_features
from videodiff.pipeline.familiar import tell_unfamiliar
from videodiff.pipeline.inputs import Conditioning, ImageInput, VideoInput


def text_start(
    pipe,
    settings: SampleSettings,
    cond: Conditioning,
    noise: torch.Tensor,
    scheduler,
    generator: torch.Generator | None,
) -> starts.Start:
    """Stage 3: where text-to-video sampling starts: ``noise``, or with ``settings.motion_prior`` the motion
    prior's guess of the prompt's moving object noised part-way into the schedule (:mod:`videodiff.starts`)."""
    fraction = pipe.prior_fraction(settings)
    if fraction == 0:
        if settings.motion is not None:
            notice("--motion has no effect without --motion-prior")
        begin = starts.from_noise(noise.to(pipe.device, pipe.dtype), scheduler)
        begin.record["motion_prior"] = 0.0
        return begin
    shape, scale = tuple(noise.shape), pipe.vae_scale
    codec = pipe.pixel_codec(settings.decode_chunk) if settings.motion_prior_space == "pixels" else None
    loop = settings.loop and pipe.windows_for(settings) is not None  # the windows run on into frame 0
    track = control_track(cond.cond)
    if track is not None:  # a control map says where the object is: the prior draws it there
        if settings.motion is not None:
            notice("--motion has no effect with a control: the object starts along the control's maps")
        codec = codec or pipe.pixel_codec(settings.decode_chunk)
        clean = pipe.parts.motion_prior.along(cond.first, shape, track, codec)
        velocity = None
    else:
        clean, velocity = pipe.parts.motion_prior.start_video(
            cond.first, shape, generator, scale, settings.motion, pixels=codec, loop=loop
        )
    noise = noise.float().to(pipe.device)
    begin = starts.from_clean(clean.to(pipe.device), noise, scheduler, settings.steps, fraction)
    begin.latents = begin.latents.to(pipe.device, pipe.dtype)
    pipe.tell_start(settings.steps, begin.step, "from the motion prior")
    begin.record["motion"] = velocity if track is None else "along the control"
    return begin


def control_track(cond) -> torch.Tensor | None:
    """``[f 2]``: where the first control map of ``cond`` puts its blob in each frame (pixels, ``(y, x)``: the centroid
    of the map's bright pixels); between frames without one, the line between the frames around them, and after
    the last (before the first) seen, on at the pace of the last (first) two; ``None`` without a control map or
    with fewer than two frames showing a blob."""
    from videodiff.settings.control import CONTROLS

    if CONTROLS not in cond:
        return None
    item = next((c for c in cond.fields[CONTROLS].items if c.mask is None and c.maps.shape[1] == 3), None)
    if item is None:
        return None
    bright = item.maps[0].float().mean(0) > 0.5  # [f H W]
    h, w = bright.shape[1:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    count = bright.sum((1, 2)).float()
    seen = (count > 0).nonzero().flatten()
    if len(seen) < 2:
        return None
    centres = torch.stack([(bright * ys).sum((1, 2)), (bright * xs).sum((1, 2))], -1) / count.clamp(min=1)[:, None]
    frames = torch.arange(bright.shape[0], dtype=torch.float32)
    known = seen.float()
    out = [np.interp(frames.numpy(), known.numpy(), centres[seen, k].numpy()) for k in range(2)]
    track = torch.tensor(np.stack(out, -1), dtype=torch.float32)
    first, second, last, before = (int(seen[i]) for i in (0, 1, -1, -2))
    for end, near, span in ((first, second, range(first)), (last, before, range(last + 1, len(frames)))):
        pace = (centres[near] - centres[end]) / (near - end)  # on past the ends at their pace
        for i in span:
            track[i] = centres[end] + pace * (i - end)
    return track


def pixel_codec(pipe, chunk: int | None = None) -> PixelCodec:
    """This model's VAE as the motion prior draws through it (``motion_prior_space="pixels"``), in float32 on
    the CPU outside, ``chunk`` frames per VAE call."""
    chunk = chunk or vae.default_chunk(pipe.device)

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return vae.decode(pipe.vae, latents.to(pipe.device, pipe.dtype), chunk).float().cpu()

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return vae.encode(pipe.vae, pixels.to(pipe.device, pipe.dtype), chunk=chunk).float().cpu()

    return PixelCodec(decode, encode, pipe.vae_scale)


def prior_fraction(pipe, settings: SampleSettings) -> float:
    """How far into the schedule the motion prior's start is: ``settings.motion_prior``, or 0 where the motion
    modules have no prior and the value is only the model's recorded default (with a notice)."""
    fraction = settings.motion_prior
    if fraction > 0 and pipe.parts.motion_prior is None:
        if fraction != pipe.parts.defaults.get("motion_prior"):
            raise UserError(
                "--motion-prior needs motion modules with a motion prior (fitted by `videodiff train --motion-prior`)"
            )
        # the model recommends a start for its own motion modules; these have no prior to start from
        notice(f"the model's motion_prior {fraction:g} does not apply: these motion modules have no motion prior")
        fraction = 0.0
    return fraction


def image_start(
    pipe,
    settings: SampleSettings,
    cond: Conditioning,
    source: ImageInput,
    noise: torch.Tensor,
    scheduler,
) -> tuple[starts.Start, dict[int, torch.Tensor], dict[int, np.ndarray]]:
    """Stage 3 of img2vid: the pictures fitted and encoded, and the start built from them
    (:mod:`videodiff.keyframes`). Returns the start, the clean latents ``{frame: [1 c h w]}`` to hold and the
    fitted pictures ``{frame: uint8 [h w 3]}``."""
    from videodiff.media.images import load_image

    frames = settings.frames
    pictures: dict[int, np.ndarray] = {}
    for at, image in source.images.items():
        frame = at + frames if at < 0 else at
        if not 0 <= frame < frames:
            raise UserError(f"--image-at frame {at} is outside the video's {frames} frames (0 to {frames - 1})")
        if frame in pictures:
            raise UserError(f"two pictures are pinned to frame {frame}")
        pictures[frame] = load_image(
            image, settings.height, settings.width, fit=source.fit, background=source.background
        )
    latents = pipe.encode_pictures(np.stack(list(pictures.values())))
    names = ["the picture"] if len(pictures) == 1 else [f"the picture at frame {frame}" for frame in pictures]
    tell_unfamiliar(pipe, np.stack(list(pictures.values())), latents, names)
    keys = {frame: latents[:, :, k] for k, frame in enumerate(pictures)}
    # with a motion prior the pictures take the place of its guessed object and the prompt sets the motion
    fraction = pipe.prior_fraction(settings)
    velocity, record = None, {"motion_prior": 0.0}
    if fraction > 0:
        guess = pipe.parts.motion_prior.predict(motion_prior_features(cond.first))
        m = settings.motion
        velocity = guess.velocity if m is None else (m[1] / pipe.vae_scale, m[0] / pipe.vae_scale)
        record["motion"] = (round(velocity[1] * pipe.vae_scale, 4), round(velocity[0] * pipe.vae_scale, 4))
    strength = source.strength if source.strength is not None else 1 - fraction if fraction else IMG2VID_STRENGTH
    track = keyframes.pixel_track(pictures, frames) if len(pictures) > 1 else None
    if track is None:
        clean = keyframes.clean_start(keys, frames, velocity)
    else:  # the objects moved from picture to picture, in pixels, then encoded (sharper than moving latents)
        clean = vae.encode(pipe.vae, track.to(pipe.device, pipe.dtype), chunk=vae.default_chunk(pipe.device))
        for frame, key in keys.items():  # the pinned frames exactly as their pictures encode alone
            clean[:, :, frame] = key
        record["track"] = True
    noise = noise.float().to(pipe.device)
    begin = starts.from_clean(clean.float(), noise, scheduler, settings.steps, 1 - strength)
    begin.latents = begin.latents.to(pipe.device, pipe.dtype)
    begin.record.update(record, strength=strength)
    pipe.tell_start(settings.steps, begin.step, "from the pictures")
    return begin, keys, pictures


def video_start(pipe, settings: SampleSettings, source: VideoInput, noise: torch.Tensor, scheduler) -> starts.Start:
    """Stage 3 of vid2vid: the clip's frames (already fitted, ``settings.frames`` of them) encoded and noised
    ``strength`` of the way back into the schedule. On motion modules with a motion prior (``motion_prior`` above
    0) and a clip of one object on a plain background, the start is the prompt's object drawn along the clip's
    track instead (:meth:`videodiff.motion_prior.MotionPrior.along`): such a model follows the clip's object
    only where it already looks like the prompt's."""
    strength = source.strength if source.strength is not None else VID2VID_STRENGTH
    clean = pipe.encode_pictures(source.video).float()
    tell_unfamiliar(pipe, source.video, clean, [f"the clip's frame {k}" for k in range(len(source.video))])
    record = {"strength": strength, "motion_prior": 0.0}
    track = clip_track(source.video) if pipe.prior_fraction(settings) > 0 else None
    if track is not None:
        prompts = settings.keyframes()  # the first frame's prompt (prompt travel's too), as the text start reads it
        codec = pipe.pixel_codec(settings.decode_chunk)
        clean = pipe.parts.motion_prior.along(pipe.encode(prompts[min(prompts)]), tuple(clean.shape), track, codec)
        record.update(motion_prior=settings.motion_prior, track="clip")
    noise = noise.float().to(pipe.device)
    begin = starts.from_clean(clean.to(pipe.device), noise, scheduler, settings.steps, 1 - strength)
    begin.latents = begin.latents.to(pipe.device, pipe.dtype)
    begin.record.update(record)
    pipe.tell_start(settings.steps, begin.step, "from the clip")
    return begin
