"""Model families: what differs between SD1.5, SDXL, ..., stated once, and decided once from a model's own config.

A :class:`Family` names what a family of image models has: its text encoders (and tokenizers), what its U-Net's
time embedding takes besides the timestep (fields of the conditioning object, :mod:`videodiff.sampling.cond`),
its default frame size and the layout of the motion modules made for it. :func:`of_unet` and
:func:`of_motion_channels` decide the family from the U-Net's config or the motion modules' channels;
:func:`require_supported` is the one place an unsupported family is refused, with a message naming it. One
module per family (:mod:`.sd15`, :mod:`.sdxl`), as ComfyUI-AnimateDiff-Evolved keeps one per motion-module family.

Torch-free: configs in, names out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from videodiff.errors import UserError
from videodiff.families.family import Family
from videodiff.families.sd15 import SD15
from videodiff.families.sdxl import SDXL

FAMILIES: dict[str, Family] = {f.name: f for f in (SD15, SDXL)}
"""Every family videodiff recognises, by name; ``supported`` says which it can render."""

__all__ = [
    "FAMILIES",
    "SD15",
    "SDXL",
    "Family",
    "of_motion_channels",
    "of_text_width",
    "of_unet",
    "require_same_controlnet_family",
    "require_supported",
]


def of_unet(config: Mapping[str, Any]) -> Family:
    """The family of an image U-Net from its diffusers config (``UNet2DConditionModel.config``)."""
    added = config.get("addition_embed_type")
    for family in FAMILIES.values():
        if added == family.addition_embed_type and not config.get("class_embed_type"):
            if not config.get("encoder_hid_dim_type"):
                return family
    kinds = {k: config.get(k) for k in ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type")}
    described = ", ".join(f"{k}={v!r}" for k, v in kinds.items() if v)
    raise UserError(f"an image U-Net of no known model family ({described}); videodiff inflates {_supported()} models")


def of_motion_channels(channels: Sequence[int], mid_block: bool | None = None) -> Family:
    """The family motion modules were made for, from their blocks' channels and middle block (the traces their
    weights keep): SDXL's motion modules (AnimateDiff-SDXL, Hotshot-XL) have three blocks (320, 640, 1280) and no
    middle block, SD1.5's four (320, 640, 1280, 1280). Three blocks with a middle block are an SD1.5-family model's
    smaller U-Net (the built-in shapes model's: 64, 128, 128); ``mid_block=None`` (not known): by the count."""
    return SDXL if len(channels) == len(SDXL.motion_channels) and not mid_block else SD15


def of_text_width(width: int, model: Family | None = None, model_width: int | None = None) -> Family | None:
    """The family whose full-size models take ``width``-wide text tokens (768: SD1.5, 2048: SDXL: an add-on's trace
    of the U-Net it was made for). A width of no family, beside a ``model`` whose own ``model_width`` is of no family
    either (tiny test models) and differs: the one other supported family. Otherwise ``None``."""
    for family in FAMILIES.values():
        if family.text_width == width:
            return family
    if model is None or model_width in (width, *(f.text_width for f in FAMILIES.values())):
        return None
    others = [f for f in FAMILIES.values() if f.supported and f is not model]
    return others[0] if len(others) == 1 else None


def require_supported(family: Family, what: str) -> Family:
    """``family`` when videodiff can render it; otherwise the one refusal, naming the family: ``what`` says whose
    family it is (``"the image model is"``, ``"x.ckpt: a motion module for"``)."""
    if not family.supported:
        raise UserError(f"{what} {family.title}, which videodiff cannot render yet (it renders {_supported()} models)")
    return family


def require_same_controlnet_family(source: str, its: Family, width: object, model: Family) -> None:
    """The one refusal of a ControlNet made for the other family than the model's (``width``: its text width,
    ``cross_attention_dim``), before sampling; the same line whether told from its files or once loaded."""
    if its is not model:
        raise UserError(
            f"ControlNet {source}: the ControlNet is for {its.title} (cross-attention {width}), "
            f"the model is {model.title}"
        )


def _supported() -> str:
    return ", ".join(f.title for f in FAMILIES.values() if f.supported)
