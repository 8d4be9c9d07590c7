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

OWN_MOTION_FOLDER = "motion_adapter"  # a model folder that ships its own motion modules
#: other motion modules of the built-in model, by name (``--motion-module shapes-teacher``; a local folder of that
#: name: pass ./shapes-teacher): the 16-step model the default 4-step one was distilled from
BUILTIN_MOTION_MODULES = {"shapes-teacher": "teacher"}


def builtin_motion_module(source: str | None) -> str | None:
    """The package folder a built-in motion-module name (:data:`BUILTIN_MOTION_MODULES`) stands for, else ``source``."""
    if source in BUILTIN_MOTION_MODULES:
        return str(BUILTIN_MODEL / BUILTIN_MOTION_MODULES[source])
    return source


def builtin_model() -> str:
    """The folder of the built-in shapes model (``a {color} {shape} moving {direction}``, 64x64, 16 frames)."""
    if not (BUILTIN_MODEL / "model_index.json").is_file():
        raise UserError(
            f"the built-in shapes model is missing from {BUILTIN_MODEL} (a broken install?); "
            "pass --model, or rebuild it with scripts/train_shapes.py"
        )
    return str(BUILTIN_MODEL)


BUILTIN_NAME = "shapes"  # --model shapes: the built-in model (a local folder of that name: pass ./shapes)


def model_source(model: str | None) -> str:
    """The model to load: ``model`` itself, or the built-in model's folder for ``None``, ``""`` and ``"shapes"``."""
    return builtin_model() if not model or model == BUILTIN_NAME else model


def offline() -> bool:
    """``VIDEODIFF_OFFLINE=1`` (or the hub's own ``HF_HUB_OFFLINE=1``) never touches the network."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes") for v in ("VIDEODIFF_OFFLINE", "HF_HUB_OFFLINE")
    )


def is_hub_id(source: str) -> bool:
    """``org/name`` (letters, digits, ``_.-``), the form of a Hugging Face hub repository id."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source) is not None


HUB_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def hub_file(source: str) -> tuple[str, str] | None:
    """``org/name/path/in/repo.safetensors`` -> ``("org/name", "path/in/repo.safetensors")``: one weights file of
    a hub repository (``ByteDance/AnimateDiff-Lightning/animatediff_lightning_4step_diffusers.safetensors``);
    None for anything else."""
    repo, sep, filename = str(source).partition("/")[2].partition("/")
    if not sep or not filename.lower().endswith(HUB_FILE_SUFFIXES) or ".." in filename.split("/"):
        return None
    repo = str(source).split("/", 1)[0] + "/" + repo
    return (repo, filename) if is_hub_id(repo) else None


def hub_folder(source: str) -> tuple[str, str] | None:
    """``org/name/path/to/folder`` -> ``("org/name", "path/to/folder")``: one folder of a hub repository
    (``h94/IP-Adapter/models/image_encoder``); None for a weights file (:func:`hub_file`) or anything else."""
    parts = str(source).split("/")
    if len(parts) < 3 or hub_file(source) is not None or any(p in ("", ".", "..") for p in parts[2:]):
        return None
    repo = "/".join(parts[:2])
    return (repo, "/".join(parts[2:])) if is_hub_id(repo) else None


def locate(source: str, what: str, *, folders: bool = False) -> Path:
    """A local path for ``source``: the file or folder itself, a hub id's snapshot in the local cache, or one
    file of a hub repository (``org/name/file.safetensors``, :func:`hub_file`), downloaded alone; with ``folders``,
    also one folder of a hub repository (:func:`hub_folder`, downloaded alone; the path may not exist when the
    repository has no such folder)."""
    source = builtin_motion_module(source)
    path = Path(source).expanduser()
    if path.exists():
        return path
    single = hub_file(source)
    folder = hub_folder(source) if folders else None
    if not is_hub_id(source) and single is None and folder is None:
        raise UserError(f"{what} {source!r} not found: no such file or folder (a hub id looks like 'org/name')")
    from huggingface_hub import constants, hf_hub_download, snapshot_download

    local_only = offline() or not hub_reachable()  # no network: the cache at once, not after timeouts
    try:
        if single is not None:
            return Path(hf_hub_download(single[0], single[1], local_files_only=local_only))
        if folder is not None:
            snapshot = snapshot_download(folder[0], local_files_only=local_only, allow_patterns=[f"{folder[1]}/*"])
            return Path(snapshot) / folder[1]
        return Path(snapshot_download(source, local_files_only=local_only, ignore_patterns=HUB_SKIP))
    except Exception as exc:  # noqa: BLE001 - hub errors become one line
        label = repr(source)
        if single is not None:  # a mistyped local path reads like a file of a hub repository
            label += f" (no such local file; read as file {single[1]} of hub repository {single[0]})"
        elif folder is not None:
            label += f" (no such local folder; read as folder {folder[1]} of hub repository {folder[0]})"
        if local_only:
            why = "offline (VIDEODIFF_OFFLINE=1)" if offline() else "the Hugging Face hub cannot be reached"
            raise UserError(
                f"{what} {label}: {why}, and it is not in the local cache ({constants.HF_HUB_CACHE}); "
                "pass a local folder or file instead, or download it once on a machine that is online"
            ) from None
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"{what} {label} could not be found or downloaded: {type(exc).__name__} {reason}") from None


_REACHABLE: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host (``HF_ENDPOINT``) accepts a connection within ``timeout`` s; asked once per process.

    Behind a proxy (``HTTPS_PROXY``...) the direct connection says nothing: assume it is reachable.
    """
    import socket
    from urllib.parse import urlsplit

    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    if endpoint not in _REACHABLE:
        if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
            _REACHABLE[endpoint] = True
        else:
            url = urlsplit(endpoint)
            try:
                port = url.port or (443 if url.scheme == "https" else 80)
                socket.create_connection((url.hostname or "", port), timeout=timeout).close()
                _REACHABLE[endpoint] = True
            except (OSError, ValueError):
                _REACHABLE[endpoint] = False
    return _REACHABLE[endpoint]


def read_model_defaults(model: str | None, motion_module: str | None = None) -> dict[str, Any]:
    """The settings a model folder recommends (``videodiff.json``), or ``{}``; cheap, loads no weights.

    ``None`` reads the built-in model's. A local ``motion_module`` folder's own ``videodiff.json`` defaults
    (a few-step motion module's steps, scheduler, spacing, guidance) win over the image model's.
    """
    if not model or model == BUILTIN_NAME:
        if not (BUILTIN_MODEL / DEFAULTS_FILE).is_file():
            return {}
        model = str(BUILTIN_MODEL)
    return {**_recorded_defaults(Path(model).expanduser() / DEFAULTS_FILE), **motion_module_defaults(motion_module)}


def motion_module_defaults(motion_module: str | None) -> dict[str, Any]:
    """The defaults a local motion-module folder records in its ``videodiff.json`` (``{}`` for files, hub ids)."""
    motion_module = builtin_motion_module(motion_module)
    if not motion_module or not Path(motion_module).expanduser().is_dir():
        return {}
    return _recorded_defaults(Path(motion_module).expanduser() / DEFAULTS_FILE)


def _recorded_defaults(path: Path) -> dict[str, Any]:
    defaults = _model_json(path).get("defaults", {})
    if not isinstance(defaults, dict):
        raise UserError(f"{path}: defaults must be a mapping of settings")
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


def recorded_lcm_steps(folder: Path | None) -> int | None:
    """The skipping-step solver's steps a distilled motion-module folder was trained on (``videodiff.json``'s
    ``distilled.solver_steps``, written by ``videodiff train --distill lcm``), else ``None``: the LCM sampler must
    pick its timesteps from that grid (its ``original_inference_steps``), not from its default of 50."""
    if folder is None or not Path(folder).is_dir():
        return None
    path = Path(folder) / DEFAULTS_FILE
    distilled = _model_json(path).get("distilled")
    value = distilled.get("solver_steps") if isinstance(distilled, dict) else None
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
        raise UserError(f"{path}: distilled.solver_steps must be a whole number from 1 to 1000, got {value!r}")
    return value


def model_triggers(root: Path) -> dict[str, str]:
    """``{"motion_lora_triggers": {word: "PATH[:SCALE]"}}`` of a model folder's ``videodiff.json``, or ``{}``."""
    path = root / DEFAULTS_FILE
    triggers = _model_json(path).get("motion_lora_triggers", {})
    pairs = triggers.items() if isinstance(triggers, dict) else [(None, None)]
    if not all(isinstance(k, str) and WORD.fullmatch(k) and isinstance(v, str) for k, v in pairs):
        raise UserError(f"{path}: motion_lora_triggers must map words (one each) to PATH[:SCALE] strings")
    return {k.lower(): v for k, v in triggers.items()}


VOCABULARY_KEYS = ("grammar", "color", "shape", "direction", "heldout")


def recorded_controlnet(root: Path) -> str | None:
    """The model's own ControlNet: ``videodiff.json``'s ``controlnet``, a folder inside the model's folder (what
    ``--control`` without ``--controlnet`` uses); ``None`` when it records none."""
    name = _model_json(root / DEFAULTS_FILE).get("controlnet")
    if not isinstance(name, str) or not name:
        return None
    folder = (root / name).resolve()
    if not folder.is_relative_to(root.resolve()) or not folder.is_dir():
        raise UserError(f"{root / DEFAULTS_FILE}: controlnet {name!r} is not a folder inside the model's folder")
    return str(folder)


def model_vocabulary(root: str | Path | None) -> dict[str, Any]:
    """What a model with a closed vocabulary understands (``videodiff.json``'s ``vocabulary``), or ``{}``.

    ``{"grammar": "a {color} {shape} moving {direction}", "color": [...], ..., "heldout": [prompts]}``:
    the grammar's ``{slot}`` names a list of words; ``heldout`` lists prompts it never saw in training.
    ``None`` reads the built-in model's.
    """
    path = Path(root).expanduser() if root and str(root) != BUILTIN_NAME else BUILTIN_MODEL
    data = _model_json(path / DEFAULTS_FILE).get("vocabulary", {})
    if not isinstance(data, dict) or not isinstance(data.get("grammar", ""), str):
        raise UserError(f"{path / DEFAULTS_FILE}: vocabulary must map 'grammar' to a text and slots to word lists")
    return data


def vocabulary_words(vocabulary: dict[str, Any]) -> set[str]:
    """Every word a closed-vocabulary model knows: its grammar's own words and every slot's words."""
    grammar = vocabulary.get("grammar", "")
    words = set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", grammar.lower())))
    for slot in re.findall(r"\{(\w+)\}", grammar):
        words.update(str(w).lower() for w in vocabulary.get(slot, []))
    return words


def unknown_words(prompt: str, vocabulary: dict[str, Any]) -> list[str]:
    """The words of ``prompt`` a closed-vocabulary model never saw (in order, once each); ``[]`` for open models."""
    if not vocabulary.get("grammar"):
        return []
    known = vocabulary_words(vocabulary)
    found = re.findall(r"[a-z0-9]+", prompt.lower())
    return list(dict.fromkeys(w for w in found if w not in known))


def describe_vocabulary(vocabulary: dict[str, Any], *, heldout: bool = True) -> str:
    """One line: the grammar and each slot's words (and the held-out prompts, when recorded)."""
    grammar = vocabulary.get("grammar", "")
    parts = [f"{slot}: {', '.join(vocabulary.get(slot, []))}" for slot in re.findall(r"\{(\w+)\}", grammar)]
    line = f"'{grammar}' ({'; '.join(parts)})"
    if heldout and vocabulary.get("heldout"):
        line += f"; never trained on: {', '.join(vocabulary['heldout'])}"
    return line


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


def own_version() -> str:
    """videodiff's version as installed (read from its metadata: the package root sits above this module)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("videodiff")
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "unknown"


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the output, for sidecars."""
    import platform

    import diffusers
    import torch
    import transformers

    return {
        "videodiff": own_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
