"""Motion-module files in both layouts, version detection, MotionLoRA merging and conversion.

Two layouts of the same weights exist:

* **diffusers** (``MotionAdapter``, and our :class:`MotionStack`):
  ``down_blocks.0.motion_modules.1.transformer_blocks.0.attn1.to_q.weight``, one
  ``transformer_blocks.N.pos_embed.pe`` per transformer block;
* **original** AnimateDiff (``mm_sd_v15_v2.ckpt`` and friends):
  ``down_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight``,
  with ``norms.0/1`` for ``norm1/2``, ``ff_norm`` for ``norm3`` and a ``pos_encoder.pe`` in each of
  the two attention blocks (the same table twice).

Everything is decided from the weights (key names and shapes), never from file names.
All reads go through :func:`videodiff.weights.checkpoints.read_state_dict` (or, for a
description, a safetensors header), so no checkpoint ever runs code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import torch

from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.media.atomic import atomic_dir, atomic_file, check_replaceable, prepare_output
from videodiff.media.gate import file_digest, folder_is_ours, owned_files, write_receipt
from videodiff.motion_prior import FORMAT as PRIOR_FORMAT
from videodiff.motion_prior import PRIOR_FILE
from videodiff.unet.temporal import MotionStack
from videodiff.weights.checkpoints import load_strict, read_state_dict
from videodiff.weights.hub import DEFAULTS_FILE, locate
from videodiff.weights.lora_pairs import UNET, LoraEntry, component_of, lora_factor, parse_lora_keys, peft_configs
from videodiff.weights.motion_headers import (  # detection, torch-free; the public names re-exported
    POS_EMBED,
    TEMPORAL_PREFIX,
    VERSION_NAMES,
    WRAPPER_PREFIXES,
    MotionInfo,
    describe_motion_module,
    detect_layout,
    detect_motion_state_dict,
    dtype_name,
    entries_to_ours,
    frame_limit,
    motion_info,
    original_key_to_ours,
    shape_of,
    single_weights_file,
    to_original_state_dict,
    weights_and_config,
)
from videodiff.weights.safetensors_header import read_header

__all__ = [
    "detect_motion_state_dict",
    "frame_limit",
    "MotionInfo",
    "apply_motion_lora",
    "convert_motion_module",
    "describe_motion_module",
    "load_any_motion_module",
    "save_motion_folder",
]


# ---------------------------------------------------------------------------------------------------------------------
# loading


def _build(config: dict[str, Any], source: str) -> MotionStack:
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    if kwargs.get("conv_in_channels") is None:
        kwargs.pop("conv_in_channels", None)
    try:
        return MotionStack(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{source}: unsupported motion-module config ({exc})") from None


def _load_into(stack: MotionStack, ours: dict[str, torch.Tensor], source: str) -> None:
    """Strict load; a file with no positional tables at all gets the stack's own (they are fixed sinusoids)."""
    if not any(k.endswith(POS_EMBED) for k in ours):
        ours = {**ours, **{k: v for k, v in stack.state_dict().items() if k.endswith(POS_EMBED)}}
    load_strict(stack, ours, source)


def _describe_detected(info: MotionInfo, assumed: bool) -> None:
    mid = "with" if info.has_mid_block else "without"
    text = (
        f"{info.source}: {info.format}-format {VERSION_NAMES.get(info.version, f'AnimateDiff {info.version}')} "
        "motion module "
        f"({info.max_frames} frames, {mid} mid block, {info.params / 1e6:.1f}M parameters, {info.dtype})"
    )
    if info.norm_over_frames:
        text += "; spatial norms run over all frames, as original v1 did"
    notice(text)
    if assumed:
        notice(
            f"{info.source}: no positional-encoding weights, so v1 and v3 cannot be told apart: assuming v3 "
            "(32 frames); pass --motion-config v1 if it is a v1 module"
        )


def load_any_motion_module(source: str, motion_config: str | None = None) -> tuple[MotionStack, MotionInfo]:
    """A motion module from a diffusers ``MotionAdapter`` folder, an original AnimateDiff file or a hub id.

    ``motion_config``: ``v1``/``v2``/``v3`` forces that release's settings, a path names a
    MotionAdapter ``config.json`` (e.g. for a head count other than 8).
    """
    path = locate(source, "motion module")
    weights, base = weights_and_config(path)
    state_dict = read_state_dict(weights)
    name = str(weights)
    fmt, ours = entries_to_ours(state_dict, name)
    if base is not None:
        fmt = "diffusers"
    shapes = {k: shape_of(v) for k, v in ours.items()}
    det = detect_layout(fmt, shapes, name, motion_config, base)
    stack = _build(det.config, name)
    _load_into(stack, ours, name)
    info = motion_info(det, shapes, [dtype_name(v.dtype) for v in ours.values()], str(source))
    _describe_detected(info, det.assumed)
    return stack, info


# ---------------------------------------------------------------------------------------------------------------------
# writing


def _stack_tensors(stack: MotionStack, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in stack.state_dict().items():
        t = tensor.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[key] = t.contiguous().clone()
    return out


def _write_folder(tensors: dict[str, torch.Tensor], config: dict[str, Any], folder: Path) -> None:
    import diffusers
    from safetensors.torch import save_file

    record = {"_class_name": "MotionAdapter", "_diffusers_version": diffusers.__version__, **config}
    record.setdefault("conv_in_channels", None)
    (folder / "config.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})


MOTION_KIND = "motion-module folder"  # the receipt (videodiff.media.gate) in every MotionAdapter folder written here
RUN_KIND = "training run"  # a training run's receipt (videodiff.training.export) lists its motion_module folder


def _written_here(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but files videodiff wrote, unchanged: its own receipt says so, or (a training
    run's ``motion_module``) the run folder's receipt lists every file in it. A folder that merely looks like a
    diffusers model (``config.json`` and ``diffusion_pytorch_model.safetensors``) is the user's."""
    if folder_is_ours(folder, MOTION_KIND):
        return True
    listed = owned_files(folder.parent, RUN_KIND)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        if any(os.path.islink(os.path.join(dirpath, d)) for d in dirnames):
            return False
        found += [Path(dirpath, name) for name in filenames]
    return bool(found) and all(p.relative_to(folder.parent).as_posix() in listed for p in found)


def _is_safetensors(path: Path) -> bool:
    try:
        read_header(path)
    except UserError:
        return False
    return True


def _write_adapter(
    out: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any], extra=None, *, receipt: bool = True
) -> None:
    """The MotionAdapter folder ``out``, written whole (atomically), with its receipt; ``extra(tmp)`` adds files."""
    with atomic_dir(out) as tmp:
        _write_folder(tensors, config, tmp)
        if extra is not None:
            extra(tmp)
        if receipt:
            write_receipt(tmp, MOTION_KIND, [p.name for p in tmp.iterdir()])


def save_motion_folder(
    stack: MotionStack, folder: str | Path, *, overwrite: bool = False, receipt: bool = False
) -> Path:
    """Write ``stack`` as a diffusers ``MotionAdapter`` folder (``config.json`` + safetensors), atomically.

    An existing ``folder`` is replaced (with ``overwrite``) only when videodiff wrote everything in it: its own
    receipt (written with ``receipt=True``) or a training run's receipt in the folder above (a run's
    ``motion_module``, which training writes without one) lists every file, unchanged."""
    out = prepare_output(
        folder, overwrite=overwrite, folder_ok=_written_here, file_ok=lambda p: False, kind=MOTION_KIND
    )
    _write_adapter(out, _stack_tensors(stack), dict(stack.config), receipt=receipt)
    return out


# Files videodiff keeps beside motion modules: inside a MotionAdapter folder under these names, beside an
# original-layout file ``mm.safetensors`` as ``mm.<name>`` (AnimateDiff's loaders read the file alone, strictly).
SPATIAL_FILE = "spatial.safetensors"  # image-U-Net tensors trained together with the motion modules
COMPANIONS = (PRIOR_FILE, SPATIAL_FILE)


def companion_path(location: str | Path, name: str) -> Path:
    """Where the companion ``name`` of the motion modules at ``location`` (a folder or a file) lives."""
    location = Path(location)
    return (
        location / name if location.is_dir() or not location.suffix else location.with_name(f"{location.stem}.{name}")
    )


def companion_files(location: str | Path) -> dict[str, Path]:
    """The companions (motion prior, spatial tensors) that exist beside the motion modules at ``location``."""
    found = {name: companion_path(location, name) for name in COMPANIONS}
    return {name: path for name, path in found.items() if path.is_file()}


def _check_companion(target: Path, source: Path, overwrite: bool) -> None:
    """A companion beside an original-layout file is derived, not named: with ``overwrite`` it may replace only a
    file of the same bytes, or a motion prior by its header's ``format`` key; anything else there is the user's."""
    if not check_replaceable(target, kind="companion file"):
        return
    if not overwrite:
        raise UserError(f"{target} already exists; pass --overwrite to replace it")
    if file_digest(target) == file_digest(source):
        return
    if target.name.endswith(PRIOR_FILE) and _is_safetensors(target):
        if read_header(target).metadata.get("format") == PRIOR_FORMAT:
            return
    raise UserError(
        f"{target} exists and was not written by videodiff (it would receive the {source.name} carried along); "
        "refusing to replace it: move it away or choose another output name"
    )


def convert_motion_module(
    src: str,
    dst: str,
    to: Literal["diffusers", "original"],
    motion_config: str | None = None,
    *,
    overwrite: bool = False,
    defaults: dict[str, Any] | None = None,
) -> Path:
    """Convert any supported motion module to a diffusers MotionAdapter folder or an original ``.safetensors``.

    ``defaults`` (checked settings, :func:`videodiff.config.parse_defaults`) are recorded in the folder's
    ``videodiff.json`` so that renders with it use them unasked (a few-step module's steps, scheduler...).

    The weights keep the source's dtype; the result is validated by a strict load first. The files
    videodiff keeps beside motion modules (a motion prior, trained spatial tensors) travel with them:
    into the folder, or beside an original file as ``<name>.motion_prior.safetensors`` (the original
    layout is one file that AnimateDiff's loaders read strictly, so it cannot hold them itself).
    """
    if to not in ("diffusers", "original"):
        raise UserError(f"cannot convert to {to!r}: choose 'diffusers' or 'original'")
    if to == "original" and Path(dst).suffix.lower() != ".safetensors":
        raise UserError(f"{dst}: original-layout motion modules are written as .safetensors only")
    if defaults and to != "diffusers":
        raise UserError("recorded defaults live in a folder's videodiff.json: convert --to diffusers")
    if to == "diffusers":  # a folder replaces only a folder videodiff wrote, never a file
        rules: dict[str, Any] = {"folder_ok": _written_here, "file_ok": lambda p: False, "kind": MOTION_KIND}
    else:  # the file named, when it is a safetensors file; never a folder
        rules = {"file_ok": _is_safetensors, "kind": "safetensors file"}
    prepare_output(dst, overwrite=overwrite, create=False, **rules)  # no folders made for an input that fails
    source = Path(src).expanduser()
    carried = companion_files(source) if source.exists() else {}
    if to == "original":
        for name, path in carried.items():
            _check_companion(companion_path(Path(dst).expanduser(), name), path, overwrite)
    stack, info = load_any_motion_module(src, motion_config)
    out = prepare_output(dst, overwrite=overwrite, **rules)
    tensors = _stack_tensors(stack, getattr(torch, info.dtype, None))
    if to == "diffusers":

        def extra(tmp: Path) -> None:
            for name, path in carried.items():
                shutil.copyfile(path, tmp / name)
            if defaults:
                (tmp / DEFAULTS_FILE).write_text(json.dumps({"defaults": defaults}, indent=2) + "\n")

        _write_adapter(out, tensors, dict(stack.config), extra)
    else:
        from safetensors.torch import save_file

        for name, path in carried.items():
            _check_companion(companion_path(out, name), path, overwrite)
            with atomic_file(companion_path(out, name)) as tmp:
                shutil.copyfile(path, tmp)
        with atomic_file(out) as tmp:
            save_file(to_original_state_dict(tensors), str(tmp), metadata={"format": "pt"})
    for name in carried:
        where = out / name if to == "diffusers" else companion_path(out, name)
        what = "motion prior" if name == PRIOR_FILE else "trained image U-Net tensors"
        notice(f"the {what} came along: {where}")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# MotionLoRA


def _lora_target(module: str) -> str:
    module = WRAPPER_PREFIXES.sub("", module)
    if TEMPORAL_PREFIX in module:
        mapped = original_key_to_ours(module)
        if mapped is not None:
            module = mapped[0]
    return module


def _lora_file(path: Path) -> Path:
    if not path.is_dir():
        return path
    for name in (
        "pytorch_lora_weights.safetensors",
        "adapter_model.safetensors",
        "diffusion_pytorch_model.safetensors",
    ):
        if (path / name).is_file():
            return path / name
    single = single_weights_file(path)
    if single is None:
        raise UserError(f"{path}: no single LoRA weights file inside")
    return single


def apply_motion_lora(stack: MotionStack, path: str | Path, scale: float = 1.0) -> None:
    """Merge a MotionLoRA into ``stack``'s weights: ``W += scale * (alpha / rank) * up @ down``.

    See :func:`motion_lora_deltas` for the layouts read.
    """
    params = dict(stack.named_parameters())
    with torch.no_grad():
        for name, delta in motion_lora_deltas(stack, path, scale).items():
            params[name].add_(delta.to(params[name].device, params[name].dtype))


def motion_lora_deltas(stack: MotionStack, path: str | Path, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A MotionLoRA's update of each ``stack`` weight it touches (float32, CPU): ``scale * (alpha / rank) * up @ down``.

    Reads the original AnimateDiff layout (``...attention_blocks.0.processor.to_q_lora.down.weight``),
    diffusers' attention-processor layout (``...attn1.processor.to_q_lora.down.weight``) and
    PEFT (``...attn1.to_q.lora_A.weight``, optionally prefixed ``unet.``/``base_model.model.``).
    The factor is :func:`~videodiff.weights.lora_pairs.lora_factor`'s, as for image LoRAs: a stored
    alpha, else a PEFT config (``adapter_config.json`` beside the file or the safetensors header's
    ``lora_adapter_metadata``, with ``alpha_pattern`` and ``use_rslora``), else 1 as in the original
    MotionLoRA. Merging several
    LoRAs adds their deltas. Everything is checked before any weight changes.
    """
    file = _lora_file(Path(path).expanduser())
    state_dict = read_state_dict(file)
    source = str(file)
    entries, unknown, sdxl = parse_lora_keys(list(state_dict))
    params = dict(stack.named_parameters())
    unmatched = unknown + sdxl
    targets: dict[str, LoraEntry] = {}
    for entry in entries.values():
        target = _lora_target(entry.name)
        sample = next(iter(entry.keys.values()))
        if entry.style != "dotted" or component_of(entry) != UNET or f"{target}.weight" not in params:
            unmatched.append(sample)  # kohya names, text-encoder weights, modules the stack does not have
        elif target in targets:
            raise UserError(f"{source}: {sample} is a second LoRA for {target}")
        else:
            targets[target] = entry
    if unmatched or not targets:
        sample = unmatched[0] if unmatched else next(iter(state_dict), "(none)")
        raise UserError(
            f"{source}: {len(unmatched) or len(state_dict)} keys match no motion-module weight (e.g. {sample}); "
            "not a MotionLoRA for these motion modules"
        )
    configs = peft_configs(file)
    config = configs.get(UNET) or configs.get(None)
    merges = []  # (weight name, down, up, factor)
    for target, entry in targets.items():
        if not {"down", "up"} <= set(entry.keys):
            have = next(iter(entry.keys.values()))
            raise UserError(f"{source}: {have} has no matching {'up' if 'down' in entry.keys else 'down'} weight")
        down_key, up_key = entry.keys["down"], entry.keys["up"]
        down, up = state_dict[down_key], state_dict[up_key]
        weight = params[f"{target}.weight"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise UserError(
                f"{source}: {up_key} {tuple(up.shape)} and {down_key} {tuple(down.shape)} are not a LoRA pair"
            )
        if (up.shape[0], down.shape[1]) != tuple(weight.shape):
            raise UserError(
                f"{source}: {down_key} gives a {up.shape[0]}x{down.shape[1]} update for {target}.weight of shape "
                f"{tuple(weight.shape)} (a LoRA for another model size, e.g. SDXL?)"
            )
        factor = lora_factor(source, entry, state_dict, down.shape[0], config, target)
        merges.append((f"{target}.weight", down, up, factor))
    if scale == 0:
        return {}
    return {
        name: ((up.double() @ down.double()) * (float(scale) * factor)).float() for name, down, up, factor in merges
    }


def load_motion_folder(folder: str | Path) -> MotionStack:
    """A diffusers ``MotionAdapter`` folder as a :class:`MotionStack` (strict)."""
    return load_any_motion_module(str(folder))[0]
