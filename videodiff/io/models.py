"""Finding and loading models: diffusers folders or hub ids, motion modules, model defaults, fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from videodiff.config import MODEL_DEFAULT_KEYS, check_keys
from videodiff.errors import UserError
from videodiff.io.checkpoints import load_strict, read_state_dict
from videodiff.log import notice
from videodiff.unet.temporal import MotionStack

# Files a diffusers hub repository may hold that videodiff never reads (often several GB).
HUB_SKIP = [
    "*.ckpt",
    "*.pt",
    "*.pth",
    "*.fp16.*",
    "*non_ema*",
    "*.msgpack",
    "*.onnx*",
    "*.h5",
    "*.ot",
    "safety_checker/*",
    "feature_extractor/*",
]
SPATIAL_FILE = "spatial.safetensors"  # image-U-Net tensors trained together with the motion modules
DEFAULTS_FILE = "videodiff.json"  # a model's recorded preferences: {"defaults": {"height": 512, ...}}
OWN_MOTION_FOLDER = "motion_adapter"  # a model folder that ships its own motion modules
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)


def offline() -> bool:
    """``VIDEODIFF_OFFLINE=1`` (or the hub's own ``HF_HUB_OFFLINE=1``) never touches the network."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes") for v in ("VIDEODIFF_OFFLINE", "HF_HUB_OFFLINE")
    )


def is_hub_id(source: str) -> bool:
    """``org/name`` (letters, digits, ``_.-``), the form of a Hugging Face hub repository id."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source) is not None


def locate(source: str, what: str) -> Path:
    """A local folder for ``source``: the folder itself, or a hub id's snapshot in the local cache."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if not is_hub_id(source):
        raise UserError(f"{what} {source!r} not found: no such file or folder (a hub id looks like 'org/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, local_files_only=offline(), ignore_patterns=HUB_SKIP))
    except Exception as exc:  # noqa: BLE001 - hub errors become one line
        hint = " (offline: only the local cache is searched)" if offline() else ""
        raise UserError(f"{what} {source!r} could not be found or downloaded{hint}: {type(exc).__name__}") from None


def read_model_defaults(model: str | None) -> dict[str, Any]:
    """The settings a model folder recommends (``videodiff.json``), or ``{}``; cheap, loads no weights."""
    if not model:
        return {}
    path = Path(model).expanduser() / DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    defaults = data.get("defaults", {}) if isinstance(data, dict) else {}
    return check_keys(dict(defaults), str(path), MODEL_DEFAULT_KEYS)


def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"{folder}: no weights file found (expected one of {', '.join(WEIGHT_NAMES)})")


def load_motion_folder(folder: Path) -> MotionStack:
    """Build a :class:`MotionStack` from a diffusers ``MotionAdapter`` folder (``config.json`` + weights)."""
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder}: not a motion-module folder (no config.json)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{config_path}: not valid JSON ({exc})") from None
    if config.get("_class_name", "MotionAdapter") != "MotionAdapter":
        raise UserError(f"{folder}: holds a {config.get('_class_name')}, not a MotionAdapter")
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        stack = MotionStack(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{config_path}: unsupported motion-module config ({exc})") from None
    weights = _weights_file(folder)
    load_strict(stack, read_state_dict(weights), str(weights))
    return stack


def load_motion_module(source: str) -> MotionStack:
    """A motion module from a ``MotionAdapter`` folder or hub id."""
    folder = locate(source, "motion module")
    if folder.is_file():
        raise UserError(f"{source}: single-file motion modules are not supported yet; pass a MotionAdapter folder")
    return load_motion_folder(folder)


def new_motion_stack(unet) -> MotionStack:
    """A zero-initialised motion stack shaped for ``unet`` (AnimateDiff v2's layout: mid block, 32 frames)."""
    channels = list(unet.config.block_out_channels)
    heads = 8 if all(c % 8 == 0 for c in channels) else 1
    groups = 32 if all(c % 32 == 0 for c in channels) else 1
    notice("starting from new, zero-initialised motion modules")
    return MotionStack(
        block_out_channels=channels,
        motion_layers_per_block=unet.config.layers_per_block,
        motion_num_attention_heads=heads,
        motion_norm_num_groups=groups,
        motion_max_seq_length=32,
        use_motion_mid_block=unet.mid_block is not None,
    )


def apply_spatial_weights(unet, path: Path) -> None:
    """Load fine-tuned image-U-Net tensors shipped beside motion modules (e.g. after ``--trainable motion+attn``).

    Every tensor must name an existing U-Net parameter of the same shape: checked here,
    so the partial load below is never a silent ``strict=False``.
    """
    tensors = read_state_dict(path)
    expected = unet.state_dict()
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise UserError(f"{path}: {len(unknown)} tensors are not in the image U-Net (e.g. {unknown[0]})")
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise UserError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, the U-Net expects {tuple(expected[key].shape)}"
            )
    unet.load_state_dict(tensors, strict=False)
    notice(f"loaded {len(tensors)} fine-tuned image-U-Net tensors from {path.name}")


def fingerprint(path: str | Path) -> str:
    """SHA-256 over a file, or over a folder's weight and config files (names and contents), cached by mtime."""
    path = Path(path).resolve()
    files = (
        [path]
        if path.is_file()
        else sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix in (".safetensors", ".bin", ".json", ".txt", ".ckpt")
            and ".cache" not in p.parts
        )
    )
    total = hashlib.sha256()
    for f in files:
        total.update(str(f.relative_to(path) if f != path else f.name).encode())
        total.update(_file_hash(f).encode())
    return total.hexdigest()


_HASHES: dict[tuple[str, int, int], str] = {}


def _file_hash(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


@dataclass
class ModelParts:
    """Everything a pipeline needs, loaded and on the CPU in float32."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    motion: MotionStack
    scheduler_config: dict[str, Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, dict[str, str]] = field(default_factory=dict)  # {"model": {"id", "sha256"}, ...}


def load_model_parts(model: str, motion_module: str | None = None, *, new_motion: bool = False) -> ModelParts:
    """Load an SD1.5-family diffusers model (folder or hub id) and its motion modules.

    Motion modules come from ``motion_module``, else the model's own ``motion_adapter/``,
    else (only with ``new_motion``, for training) a fresh zero-initialised stack.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    quiet_hub_logging()
    root = locate(model, "model")
    if root.is_file():
        raise UserError(f"{model}: single-file checkpoints are not supported yet; pass a diffusers model folder")
    for sub in ("tokenizer", "text_encoder", "vae", "unet", "scheduler"):
        if not (root / sub).is_dir():
            raise UserError(f"{root}: not a diffusers SD1.5 model folder (no {sub}/ inside)")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder")
        vae = AutoencoderKL.from_pretrained(root / "vae")
        unet = UNet2DConditionModel.from_pretrained(root / "unet")
        scheduler_config = dict(DDIMScheduler.load_config(root / "scheduler"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{root}: could not load the model ({str(exc).splitlines()[0]})") from None
    sources = {"model": {"id": model, "sha256": fingerprint(root)}}
    if motion_module is None and (root / OWN_MOTION_FOLDER).is_dir():
        motion_folder: Path | None = root / OWN_MOTION_FOLDER
        motion = load_motion_folder(motion_folder)
        sources["motion_module"] = {"id": f"{model}/{OWN_MOTION_FOLDER}", "sha256": fingerprint(motion_folder)}
    elif motion_module is None:
        if not new_motion:
            raise UserError(f"{model} has no motion modules of its own; pass --motion-module (a MotionAdapter folder)")
        motion_folder = None
        motion = new_motion_stack(unet)
        sources["motion_module"] = {"id": "new (zero-initialised)", "sha256": ""}
    else:
        motion_folder = locate(motion_module, "motion module")
        motion = load_motion_module(motion_module)
        sources["motion_module"] = {"id": motion_module, "sha256": fingerprint(motion_folder)}
    if motion_folder is not None and motion_folder.is_dir() and (motion_folder / SPATIAL_FILE).is_file():
        apply_spatial_weights(unet, motion_folder / SPATIAL_FILE)
    for module in (text_encoder, vae, unet, motion):
        module.requires_grad_(False).eval()
    return ModelParts(
        tokenizer, text_encoder, vae, unet, motion, scheduler_config, read_model_defaults(str(root)), sources
    )


def quiet_hub_logging() -> None:
    """diffusers/transformers print progress bars and advice while loading; videodiff reports for itself."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def hub_versions() -> dict[str, str]:
    """Versions of the packages that decide the output, for sidecars."""
    import platform

    import diffusers
    import transformers

    import videodiff

    return {
        "videodiff": videodiff.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
