"""Finding models: the built-in model, hub ids and the local cache, fingerprints, a model folder's ``videodiff.json``.

The bottom of ``videodiff.weights``: imports no torch (diffusers and transformers only
inside the functions that need them) and nothing else of the package's weights code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from videodiff.config import MODEL_DEFAULT_KEYS, WORD, check_keys
from videodiff.errors import UserError

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
DEFAULTS_FILE = "videodiff.json"  # a model's recorded preferences: {"defaults": {"height": 512, ...}}
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


TRAIN_FRAMES = 16  # AnimateDiff's motion modules were trained on 16-frame clips


def recorded_train_frames(*folders: Path | None) -> int:
    """The clip length motion modules were trained on: ``train_frames`` in the first of ``folders`` (the motion
    modules' folder, then the model's) whose ``videodiff.json`` records it; 16 when none does."""
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        path = Path(folder) / DEFAULTS_FILE
        value = _model_json(path).get("train_frames")
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UserError(f"{path}: train_frames must be a positive whole number, got {value!r}")
        return value
    return TRAIN_FRAMES


def model_triggers(root: Path) -> dict[str, str]:
    """``{"motion_lora_triggers": {word: "PATH[:SCALE]"}}`` of a model folder's ``videodiff.json``, or ``{}``."""
    path = root / DEFAULTS_FILE
    triggers = _model_json(path).get("motion_lora_triggers", {})
    pairs = triggers.items() if isinstance(triggers, dict) else [(None, None)]
    if not all(isinstance(k, str) and WORD.fullmatch(k) and isinstance(v, str) for k, v in pairs):
        raise UserError(f"{path}: motion_lora_triggers must map words (one each) to PATH[:SCALE] strings")
    return {k.lower(): v for k, v in triggers.items()}


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
    import torch
    import transformers

    import videodiff

    return {
        "videodiff": videodiff.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
