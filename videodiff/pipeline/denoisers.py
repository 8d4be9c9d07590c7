"""The denoiser a sampling run calls, assembled from the U-Net and its wrappers, and the controls it reads.

Wrappers from the outside in: sliding windows (:class:`videodiff.windows.Windowed`), control
(:class:`videodiff.control.Controlled`), feature caching (:class:`videodiff.cache.FeatureCache`), the video U-Net.
Windows slice every conditioning field, the control maps included, so each window's ControlNets see its own
frames; the ControlNets run on the batch guidance made (both halves controlled).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from videodiff import cache as feature_cache
from videodiff import windows as sliding
from videodiff.errors import UserError
from videodiff.sampling import Cond, OnStep
from videodiff.settings.control import Control

# Control's modules (videodiff.control.*, videodiff.weights.controlnets) are imported where a control is given:
# a render without one imports none of them (tests/test_imports.py).


def assemble(pipe, plan: sliding.WindowPlan | None, cache: int, on_step: OnStep | None, nets: tuple, timesteps):
    """``(denoiser, on_step, context manager)`` for one sampling run of ``pipe``'s U-Net: with ``plan``'s windows,
    ``cache``-step feature caching (its hook wraps ``on_step``) and the ControlNets ``nets`` (stepped over
    ``timesteps``, the run's); the context manager holds the motion modules' temporal windows when the plan runs
    only them window by window."""
    denoiser: Any = pipe.unet
    if cache > 1:
        denoiser = features = feature_cache.FeatureCache(pipe.unet, cache)
        on_step = features.hook(on_step)
    if nets:
        from videodiff.control.controlnet import Controlled

        denoiser = Controlled(denoiser, nets, timesteps)
    temporal = plan is not None and plan.layers == "temporal"
    if plan is not None and not temporal:
        denoiser = sliding.Windowed(denoiser, plan)
    within = (
        pipe.unet.motion.temporal_windows(plan.frames, list(zip(plan.indices(), plan.weights())))
        if temporal
        else contextlib.nullcontext()
    )
    return denoiser, on_step, within


def controlnet(pipe, source: str) -> Any:
    """The ControlNet ``source`` names, loaded once per pipeline, checked against its U-Net, on its device."""
    from videodiff.weights.controlnets import check_fits, load_controlnet

    loaded = pipe.__dict__.setdefault("_controlnets", {})
    if source not in loaded:
        net = load_controlnet(source, unet_config=pipe.parts.unet.config)
        check_fits(net, pipe.parts.unet.config, source)
        loaded[source] = net.to(pipe.device, pipe.dtype)
    return loaded[source]


def with_controls(
    pipe, cond: Cond, controls: tuple[Control, ...], frames: int, height: int, width: int, stride: int, fit: str
) -> tuple[Cond, tuple]:
    """``cond`` with the controls' field (:data:`videodiff.control.CONTROLS`), and the ControlNets it indexes. Each
    control's maps are read for ``frames`` frames of ``height`` x ``width`` (:func:`videodiff.control.read_maps`);
    a control without a ControlNet uses the model's own (``videodiff.json``'s ``controlnet``). A SparseCtrl control
    (``sparse_at``) reads its pictures at their frames, with the mask of the frames given
    (:func:`videodiff.control.sparse.sparse_conditioning`: RGB ones through the VAE)."""
    if not controls:
        return cond, ()
    from videodiff.control.controlnet import CONTROLS, ControlInput, ControlInputs
    from videodiff.control.maps import read_maps
    from videodiff.control.sparse import check_kind, sparse_conditioning
    from videodiff.weights.controlnets import CONTROLNET_CLASSES

    nets: list[Any] = []
    items = []
    pipe.family.require("ControlNet")
    if any(c.sparse for c in controls):
        pipe.family.require("SparseCtrl")
    for c in controls:
        source = c.controlnet or pipe.parts.controlnet
        if source is None:
            raise UserError("--control without --controlnet needs a model that records its own ControlNet; name one")
        net = controlnet(pipe, str(source))
        check_kind(c, CONTROLNET_CLASSES.get(type(net).__name__))
        if net not in nets:
            nets.append(net)
        mask = None
        if c.sparse:
            tensor, mask = sparse_conditioning(
                net, c, frames, height, width, fit, pipe.encode_pictures, pipe.device, pipe.dtype
            )
        else:
            maps = read_maps(c.maps, frames, height, width, stride=stride, fit=fit)
            tensor = torch.from_numpy(np.ascontiguousarray(maps)).permute(3, 0, 1, 2)[None]  # [1 3 f H W]
            tensor = tensor.to(pipe.device, pipe.dtype) / 255
        items.append(ControlInput(nets.index(net), tensor, float(c.scale), *map(float, c.range), mask=mask))
    if not items:
        return cond, ()
    return cond.with_fields(**{CONTROLS: ControlInputs(tuple(items))}), tuple(nets)
