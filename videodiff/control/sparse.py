"""SparseCtrl's conditioning: pictures at chosen frames, placed in a video-long tensor with a mask of the frames
given, as diffusers' ``AnimateDiffSparseControlNetPipeline`` prepares them.

A control with ``sparse_at`` (:class:`videodiff.settings.control.Control`) names its pictures by frame. Each is read
and fitted to the video's size as img2vid fits its pictures (``crop`` or ``pad``). What the network reads depends on
its conditioning embedding: an RGB SparseCtrl (``use_simplified_condition_embedding``, 4 conditioning channels)
reads the pictures' VAE latents (the posterior's mean, scaled: what the U-Net itself denoises), a scribble one
(3 channels) the pixels in [0, 1]. Frames without a picture hold zeros, and the mask (one more channel) is 1 exactly
at the frames given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videodiff.errors import UserError
from videodiff.media.images import check_image, file_sha256, fit_image, read_image
from videodiff.settings.control import Control, check_sparse, parse_controls

__all__ = ["check_kind", "check_sparse_inputs", "picture_sources", "place", "read_pictures", "sparse_conditioning"]


def check_sparse_inputs(controls: Any, frames: int, kind_of: Callable[[str], str | None] | None = None) -> None:
    """Everything about SparseCtrl's inputs that can be told before a model loads: the frames inside the video
    and given once (:func:`videodiff.settings.control.check_sparse`), each picture readable (from its header and
    data, :func:`videodiff.media.images.check_image`), and, with ``kind_of`` (a source -> ``controlnet`` /
    ``sparsectrl`` / ``None``, e.g. :func:`videodiff.weights.controlnets.local_controlnet_kind`), each control's
    model of the kind its inputs need. One-line :class:`UserError` otherwise."""
    check_sparse(controls, frames)
    for control in parse_controls(controls):
        for path in control.pictures(frames).values():
            check_image(path)
        if kind_of is not None and control.controlnet is not None:
            check_kind(control, kind_of(str(control.controlnet)))


def check_kind(control: Control, kind: str | None) -> None:
    """A SparseCtrl model for ``sparse_at`` pictures, a ControlNet for maps (``kind`` ``None``: not known yet)."""
    if kind == "sparsectrl" and not control.sparse:
        raise UserError(
            f"{control.controlnet} is a SparseCtrl model: it reads pictures at frames (--sparsectrl MODEL "
            "--sparse-at FRAME:PATH), not --control maps"
        )
    if kind == "controlnet" and control.sparse:
        raise UserError(
            f"{control.controlnet} is a ControlNet, not a SparseCtrl model: give it maps (--controlnet MODEL "
            "--control MAPS), or give --sparse-at pictures to a SparseCtrl model"
        )


def picture_sources(control: Control, frames: int) -> list[dict[str, Any]]:
    """What a sidecar records of a SparseCtrl control's pictures: per picture its frame (counted from 0), absolute
    path and SHA-256, in the order of ``sparse_at``."""
    return [
        {"frame": frame, "path": str(Path(path).resolve()), "sha256": file_sha256(path)}
        for frame, path in control.pictures(frames).items()
    ]


def read_pictures(
    control: Control, frames: int, height: int, width: int, fit: str = "crop"
) -> tuple[list[int], np.ndarray]:
    """The frames a SparseCtrl control gives and its pictures, fitted: ``(frames, uint8 [n height width 3])``, in
    the order of ``sparse_at``."""
    given = control.pictures(frames)
    side = max(height, width)
    pictures = [fit_image(read_image(Path(p), max_side=side), height, width, fit=fit) for p in given.values()]
    return list(given), np.stack(pictures)


def place(values: torch.Tensor, at: Sequence[int], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` ``[b c n h w]`` (one per frame of ``at``) in a video of ``frames`` frames: ``(cond, mask)``,
    ``[b c frames h w]`` with zeros at the frames not given and ``[b 1 frames h w]``, 1 at those given (diffusers'
    ``prepare_sparse_control_conditioning``)."""
    if values.ndim != 5 or values.shape[2] != len(at):
        raise ValueError(f"values must be [b c {len(at)} h w], got shape {tuple(values.shape)}")
    b, c, _, h, w = values.shape
    cond = values.new_zeros(b, c, frames, h, w)
    mask = values.new_zeros(b, 1, frames, h, w)
    index = torch.tensor(list(at), device=values.device)
    cond[:, :, index] = values
    mask[:, :, index] = 1
    return cond, mask


def sparse_conditioning(
    net: Any,
    control: Control,
    frames: int,
    height: int,
    width: int,
    fit: str,
    encode: Callable[[np.ndarray], torch.Tensor],
    device: torch.device | str,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cond, mask)`` for a SparseCtrl ``net`` (``SparseControlNetModel``): RGB ones read ``encode(pictures)``
    (uint8 ``[n H W 3]`` -> scaled VAE latents ``[1 c n h w]``), scribble ones the pixels in [0, 1]."""
    at, pictures = read_pictures(control, frames, height, width, fit)
    config = net.config
    channels = config.get("conditioning_channels")
    if config.get("use_simplified_condition_embedding", True):
        values = encode(pictures).to(device, dtype)
    else:
        values = torch.from_numpy(np.ascontiguousarray(pictures)).permute(3, 0, 1, 2)[None].to(device, dtype) / 255
    if values.shape[1] != channels:
        what = "latent" if config.get("use_simplified_condition_embedding", True) else "picture"
        raise UserError(
            f"SparseCtrl {control.controlnet} reads {channels}-channel conditioning, this model's {what}s have "
            f"{values.shape[1]} channels: it was made for another model"
        )
    return place(values, at, frames)
