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
from videodiff.motion_prior import PRIOR_FILE, MotionPrior
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
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)
SPATIAL_FILE = "spatial.safetensors"  # image-U-Net tensors trained together with the motion modules
DEFAULTS_FILE = "videodiff.json"  # a model's recorded preferences: {"defaults": {"height": 512, ...}}
OWN_MOTION_FOLDER = "motion_adapter"  # a model folder that ships its own motion modules
# The built-in "shapes" model, trained by scripts/train_shapes.py: what renders when no model is given.
BUILTIN_MODEL = Path(__file__).resolve().parents[1] / "models" / "shapes"


def builtin_model() -> str:
    """The folder of the built-in shapes model (``a {color} {shape} moving {direction}``, 64x64, 16 frames)."""
    if not (BUILTIN_MODEL / "model_index.json").is_file():
        raise UserError(
            f"the built-in shapes model is missing from {BUILTIN_MODEL} (a broken install?); "
            "pass --model, or rebuild it with scripts/train_shapes.py"
        )
    return str(BUILTIN_MODEL)


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
    """The settings a model folder recommends (``videodiff.json``), or ``{}``; cheap, loads no weights.

    ``None`` reads the built-in model's.
    """
    if not model:
        if not (BUILTIN_MODEL / DEFAULTS_FILE).is_file():
            return {}
        model = str(BUILTIN_MODEL)
    path = Path(model).expanduser() / DEFAULTS_FILE
    defaults = _model_json(path).get("defaults", {})
    return check_keys(dict(defaults), str(path), MODEL_DEFAULT_KEYS)


def _model_json(path: Path) -> dict[str, Any]:
    """A model folder's ``videodiff.json`` as a dict; ``{}`` when it has none."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


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

    Every tensor must name an existing U-Net parameter of the same shape (``load_strict``
    with ``subset``), so the partial load is never a silent ``strict=False``.
    """
    tensors = read_state_dict(path)
    load_strict(unet, tensors, str(path), subset=True)
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
    sources: dict[str, Any] = field(default_factory=dict)  # {"model": {"id", "sha256"}, "lora": [...], ...}
    norm_over_frames: bool = False  # original AnimateDiff v1 ran spatial GroupNorms over all frames
    triggers: tuple = ()  # Trigger: MotionLoRAs merged only for prompts with their word (videodiff.io.triggers)
    motion_prior: Any = None  # a MotionPrior saved beside the motion modules (videodiff.motion_prior)


def _load_image_model(model: str) -> tuple[Path, dict[str, Any]]:
    """A diffusers folder or hub id, or a single-file SD1.5 checkpoint, as components."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = locate(model, "model")
    if root.is_file():
        from videodiff.io.single_file import load_single_file

        return root, load_single_file(root)
    for sub in ("tokenizer", "text_encoder", "vae", "unet", "scheduler"):
        if not (root / sub).is_dir():
            raise UserError(f"{root}: not a diffusers SD1.5 model folder (no {sub}/ inside)")
    try:
        return root, {
            "tokenizer": CLIPTokenizer.from_pretrained(root / "tokenizer"),
            "text_encoder": CLIPTextModel.from_pretrained(root / "text_encoder"),
            "vae": AutoencoderKL.from_pretrained(root / "vae"),
            "unet": UNet2DConditionModel.from_pretrained(root / "unet"),
            "scheduler_config": dict(DDIMScheduler.load_config(root / "scheduler")),
        }
    except (OSError, ValueError) as exc:
        raise UserError(f"{root}: could not load the model ({str(exc).splitlines()[0]})") from None


def load_model_parts(
    model: str,
    motion_module: str | None = None,
    *,
    new_motion: bool = False,
    motion_config: str | None = None,
    vae: str | None = None,
    loras: tuple[str, ...] = (),
    embeddings: tuple[str, ...] = (),
    motion_loras: tuple[str, ...] = (),
    motion_lora_triggers: tuple[str, ...] = (),
) -> ModelParts:
    """Load an SD1.5-family model (diffusers folder, hub id or single file), its add-ons and motion modules.

    Motion modules come from ``motion_module`` (a MotionAdapter folder or hub id, or an
    original AnimateDiff file), else the model's own ``motion_adapter/``, else (only with
    ``new_motion``, for training) a fresh zero-initialised stack. ``loras`` and
    ``motion_loras`` are ``PATH[:SCALE]`` strings, merged into the weights.
    ``motion_lora_triggers`` (``WORD=PATH[:SCALE]``) and the model folder's own triggers are
    checked against the motion modules here and merged per prompt by the pipeline.
    """
    from videodiff.io.embeddings import load_embedding
    from videodiff.io.lora import apply_lora, parse_scaled_path
    from videodiff.io.motion_formats import apply_motion_lora, load_any_motion_module

    quiet_hub_logging()
    root, c = _load_image_model(model)
    sources: dict[str, Any] = {"model": {"id": model, "sha256": fingerprint(root)}}
    if vae:
        from videodiff.io.single_file import load_vae_file

        c["vae"] = load_vae_file(vae)
        sources["vae"] = {"id": vae, "sha256": fingerprint(vae)}
    own = root / OWN_MOTION_FOLDER if root.is_dir() else None
    norm_over_frames, motion_prior = False, None
    if motion_module is None and own is not None and own.is_dir():
        motion_module = str(own)
    if motion_module is None:
        if not new_motion:
            raise UserError(
                f"{model} has no motion modules of its own; pass --motion-module (a MotionAdapter "
                "folder or an AnimateDiff .safetensors/.ckpt file)"
            )
        motion = new_motion_stack(c["unet"])
        sources["motion_module"] = {"id": "new (zero-initialised)", "sha256": ""}
    else:
        motion, info = load_any_motion_module(motion_module, motion_config)
        norm_over_frames = info.norm_over_frames
        location = locate(motion_module, "motion module")
        sources["motion_module"] = {
            "id": motion_module,
            "sha256": fingerprint(location),
            "version": info.version,
            "format": info.format,
        }
        if location.is_dir() and (location / SPATIAL_FILE).is_file():
            apply_spatial_weights(c["unet"], location / SPATIAL_FILE)
        if location.is_dir() and (location / PRIOR_FILE).is_file():
            motion_prior = load_motion_prior(location / PRIOR_FILE, c)
    for spec in loras:
        path, scale = parse_scaled_path(spec)
        apply_lora(c["unet"], c["text_encoder"], path, scale)
        sources.setdefault("lora", []).append({"id": path, "scale": scale, "sha256": fingerprint(path)})
    for path in embeddings:
        tokens = load_embedding(c["tokenizer"], c["text_encoder"], path)
        sources.setdefault("embedding", []).append({"id": path, "tokens": tokens, "sha256": fingerprint(path)})
    for spec in motion_loras:
        path, scale = parse_scaled_path(spec)
        apply_motion_lora(motion, path, scale)
        sources.setdefault("motion_lora", []).append({"id": path, "scale": scale, "sha256": fingerprint(path)})
    triggers = load_triggers(root, motion, motion_lora_triggers, sources)
    for module in (c["text_encoder"], c["vae"], c["unet"], motion):
        module.requires_grad_(False).eval()
    return ModelParts(
        c["tokenizer"],
        c["text_encoder"],
        c["vae"],
        c["unet"],
        motion,
        c["scheduler_config"],
        read_model_defaults(str(root)) if root.is_dir() else {},
        sources,
        norm_over_frames,
        triggers,
        motion_prior,
    )


def load_motion_prior(path: Path, components: dict[str, Any]) -> MotionPrior:
    """The motion prior beside motion modules, checked against the text encoder and U-Net it will read and feed."""
    prior = MotionPrior.load(path)
    width = components["text_encoder"].config.hidden_size
    channels = components["unet"].config.in_channels
    if prior.dim != width or prior.channels != channels:
        raise UserError(
            f"{path} is for {prior.dim}-wide text embeddings and {prior.channels}-channel latents; "
            f"this model has {width} and {channels}"
        )
    return prior


def load_triggers(root: Path, motion: MotionStack, specs: tuple[str, ...], sources: dict[str, Any]) -> tuple:
    """The model folder's triggers (its ``videodiff.json``), then ``specs``; a later one for a word replaces it."""
    from videodiff.io.lora import parse_scaled_path
    from videodiff.io.motion_formats import motion_lora_deltas
    from videodiff.io.triggers import Trigger, parse_trigger

    chosen: dict[str, tuple[str, float]] = {}
    own = model_triggers(root) if root.is_dir() else {}
    for word, spec in own.items():
        path, scale = parse_scaled_path(spec)
        inside = (root / path).resolve()
        if not inside.is_relative_to(root.resolve()):  # a downloaded model folder reads only its own files
            raise UserError(f"{root / DEFAULTS_FILE}: motion LoRA trigger {word!r} points outside the model folder")
        chosen[word] = (str(inside), scale)
    for spec in specs:
        word, path, scale = parse_trigger(spec)
        chosen[word] = (path, scale)
    triggers = []
    for word, (path, scale) in chosen.items():
        triggers.append(Trigger(word, motion_lora_deltas(motion, path, scale)))
        entry = {"word": word, "id": path, "scale": scale, "sha256": fingerprint(path)}
        sources.setdefault("motion_lora_trigger", []).append(entry)
    return tuple(triggers)


def model_triggers(root: Path) -> dict[str, str]:
    """``{"motion_lora_triggers": {word: "PATH[:SCALE]"}}`` of a model folder's ``videodiff.json``, or ``{}``."""
    from videodiff.io.triggers import WORD

    path = root / DEFAULTS_FILE
    triggers = _model_json(path).get("motion_lora_triggers", {})
    pairs = triggers.items() if isinstance(triggers, dict) else [(None, None)]
    if not all(isinstance(k, str) and WORD.fullmatch(k) and isinstance(v, str) for k, v in pairs):
        raise UserError(f"{path}: motion_lora_triggers must map words (one each) to PATH[:SCALE] strings")
    return {k.lower(): v for k, v in triggers.items()}


def quiet_hub_logging() -> None:
    """diffusers/transformers print progress bars and advice while loading; videodiff reports for itself."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def package_versions() -> dict[str, str]:
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
