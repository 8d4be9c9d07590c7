"""The files a render reads besides its model: checked from their headers before any model loads, and recorded in
the sidecar. img2vid's pictures, vid2vid's clip, the controls' maps (or SparseCtrl's pictures), image prompts and
the upscaler.
Torch-free (but for the shapes of a pickled upscaler, read by torch's weights-only loader)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from videodiff.config import RenderConfig, parse_image_at
from videodiff.errors import UserError
from videodiff.settings.control import check_sparse, parse_controls
from videodiff.settings.ip_adapter import parse_image_prompts


def check_inputs(config: RenderConfig) -> None:
    """img2vid's pictures, vid2vid's clip, the controls' maps and image prompts checked from their headers, and
    pinned frames inside the video, before minutes of loading."""
    from videodiff.media.clips import check_moving_video
    from videodiff.media.images import check_image, read_image

    check_family_features(config)
    for frame, path in map(parse_image_at, config.image_at):
        if not -config.frames <= frame < config.frames:
            last = config.frames - 1
            raise UserError(f"--image-at frame {frame} is outside the video's {config.frames} frames (0 to {last})")
        check_image(path)
    frames = config.frames
    if config.video:  # the frames vid2vid will read, budgeted from the file's header (videodiff.media.budget)
        size = (config.height, config.width) if config.height and config.width else None
        available = check_moving_video(config.video, frames=config.frames, stride=config.stride, size=size).num_frames
        frames = min(frames, len(range(0, available, config.stride)))  # a shorter clip makes a shorter video
    check_sparse(config.controls, frames)  # SparseCtrl's pictures: frames inside the video, files that exist
    for control in parse_controls(config.controls):
        if control.maps is not None:
            from videodiff.control.maps import check_maps  # imported only when a control is given

            check_maps(control.parsed_maps, frames, config.stride if config.video else 1)
        if control.controlnet is None and own_controlnet(config.model) is None:
            raise UserError("--control without --controlnet needs a model that records its own ControlNet; name one")
    image_prompts = parse_image_prompts(config.ip_adapters)
    if image_prompts:  # imported only when some are given (tests/test_imports.py)
        from videodiff.weights.ip_adapter import check_encoder_fits, locate_adapter, locate_image_encoder
    for prompt in image_prompts:  # IP-Adapters: weights, an encoder, pictures in the video
        folder = locate_image_encoder(prompt.adapter, prompt.image_encoder)  # local, or on the hub (downloaded alone)
        check_encoder_fits(prompt.adapter, folder)
        check_adapter_width(locate_adapter(prompt.adapter), config.model, prompt.adapter)
        for picture in prompt.pictures(frames).values():
            check_image(picture) if isinstance(picture, str) else read_image(picture)  # Python: in memory
    if config.upscale is not None or config.upscale_factor is not None:  # the upscaler's names and shapes, the size
        from videodiff.post.upscale import check_size, check_upscaler

        scale = check_upscaler(config.upscale).scale if config.upscale is not None else None
        if config.height and config.width:  # else the model's default size, a few hundred pixels
            check_size(frames * (config.interpolate or 1), config.height, config.width, config.upscale_factor or scale)


def check_family_features(config: RenderConfig) -> None:
    """What a local model folder's family cannot do yet (:meth:`videodiff.families.Family.require`), from its
    ``unet/config.json`` (an SDXL single ``.safetensors`` file: from its header) before anything loads; a hub id,
    another single file or an unreadable config is checked as it loads."""
    controls = parse_controls(config.controls)
    check_family_offers(
        config.model,
        controlnets=bool(config.controls),
        ip_adapters=bool(config.ip_adapters),
        sparsectrl=any(c.sparse for c in controls),
        controlnet_sources=[str(c.controlnet) for c in controls if c.controlnet is not None and not c.sparse],
    )


def check_family_offers(
    model: str | None,
    *,
    controlnets: bool,
    ip_adapters: bool,
    sparsectrl: bool = False,
    controlnet_sources: Sequence[str] = (),
) -> None:
    """:func:`check_family_features` for add-ons named apart from one render (``serve --controlnet/--ip-adapter``);
    ``controlnet_sources``: ControlNets whose family a local folder's config or ``.safetensors`` header tells, each
    refused in one line when it is the other family's (:func:`videodiff.families.require_same_controlnet_family`)."""
    from videodiff import families

    told = local_model_family(model)
    if told is None:
        return
    family = told[0]
    if controlnets:
        family.require("ControlNet")
    if sparsectrl:
        family.require("SparseCtrl")
    for source in controlnet_sources:
        told = _controlnet_family(source)
        if told is not None:
            families.require_same_controlnet_family(source, *told, family)
    if ip_adapters:
        family.require("IP-Adapter")


def local_model_family(model: str | None) -> tuple[Any, int | None] | None:
    """``(family, cross-attention width)`` of a local model, read without a tensor: a folder's
    ``unet/config.json``, or an SDXL single ``.safetensors`` file's header; ``None`` where neither tells it (a hub
    id, another single file, an unreadable config: its load reports it)."""
    from videodiff import families
    from videodiff.weights.hub import BUILTIN_MODEL, BUILTIN_NAME
    from videodiff.weights.ldm_layout import sdxl_file_architecture
    from videodiff.weights.safetensors_header import read_header

    root = BUILTIN_MODEL if model in (None, BUILTIN_NAME) else Path(model).expanduser()
    try:
        if root.is_file():
            if sdxl_file_architecture(root) is None:
                return None
            return families.SDXL, _text_width(read_header(root).shapes)
        config = json.loads((root / "unet" / "config.json").read_text(encoding="utf-8"))
        return families.of_unet(config), config.get("cross_attention_dim")
    except (OSError, ValueError, AttributeError, UserError):
        return None


def _text_width(shapes: dict[str, Any]) -> int | None:
    """The width the first cross-attention key projection (``attn2.to_k``) reads, from a header's shapes."""
    return next((int(s[1]) for k, s in sorted(shapes.items()) if k.endswith("attn2.to_k.weight") and len(s) == 2), None)


def _controlnet_family(source: str) -> tuple[Any, int | None] | None:
    """``(family, text width)`` of a local ControlNet folder (``config.json``) or ``.safetensors`` file (its keys:
    added time embeddings are SDXL's), read without a tensor; ``None`` where neither tells it (a hub id, a pickle,
    something not a ControlNet: its load says what it is)."""
    from videodiff import families
    from videodiff.weights.safetensors_header import read_header

    path = Path(source).expanduser()
    if path.is_dir():
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            if config.get("_class_name") != "ControlNetModel":
                return None
            return families.of_unet(config), config.get("cross_attention_dim")
        except (OSError, ValueError, AttributeError, UserError):
            return None
    if not (path.is_file() and path.suffix.lower() == ".safetensors"):
        return None
    try:
        shapes = read_header(path).shapes
    except UserError:
        return None
    own = [k.removeprefix("control_model.") for k in shapes]
    if not any(k.startswith(("controlnet_cond_embedding.", "input_hint_block.")) for k in own):
        return None
    width = _text_width(shapes)
    added = any(k.startswith(("add_embedding.", "label_emb.")) for k in own)
    return (families.SDXL if added else families.SD15), width


def check_adapter_width(adapter: Path, model: str | None, source: str | None = None) -> None:
    """A ``.safetensors`` IP-Adapter (``source`` as given, found at ``adapter``) made for another cross-attention
    width than a local model's, told from the headers before anything loads (a folder's ``unet/config.json``, an
    SDXL single ``.safetensors`` file's U-Net keys) and refused naming both families
    (:func:`videodiff.weights.ip_adapter.require_adapter_family`); other cases are checked as it loads."""
    from videodiff.weights.ip_adapter import require_adapter_family
    from videodiff.weights.safetensors_header import read_header

    if adapter.suffix.lower() != ".safetensors":
        return
    told = local_model_family(model)
    if told is None:
        return  # the model's own load reports it
    family, width = told
    shape = next((s for k, s in sorted(read_header(adapter).shapes.items()) if k.endswith("to_k_ip.weight")), None)
    if isinstance(width, int) and shape is not None and len(shape) == 2:
        require_adapter_family(source or adapter, int(shape[1]), width, family)


def control_source(control, frames: int) -> dict[str, Any]:
    """What a sidecar records of where a control's maps (or SparseCtrl's pictures) came from, with digests."""
    if control.maps is not None:
        from videodiff.control.maps import map_source

        return map_source(control.parsed_maps)
    from videodiff.control.sparse import picture_sources

    return {"pictures": picture_sources(control, frames)}


def own_controlnet(model: str | None) -> str | None:
    """The ControlNet a local model folder records as its own (``videodiff.json``), from its files alone."""
    from videodiff.weights.hub import BUILTIN_MODEL, BUILTIN_NAME, recorded_controlnet

    root = BUILTIN_MODEL if model in (None, BUILTIN_NAME) else Path(model)
    return recorded_controlnet(root) if root.is_dir() else None


def input_paths(config: RenderConfig) -> list[str]:
    """The picture and video files a render reads (img2vid's ``image_at``, vid2vid's ``video``, image prompts)."""
    pictures = [path for _, path in map(parse_image_at, config.image_at)]
    prompts = [path for p in parse_image_prompts(config.ip_adapters) for path in p.paths()]
    return pictures + ([config.video] if config.video else []) + prompts
