"""Reading weights safely and loading them strictly.

Safetensors files are read directly; pickle-based files only through
``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers, so no code inside a checkpoint ever runs.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from videodiff.errors import UserError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

# What loading prints on stderr beside videodiff's own one-line error, and says nothing a user can act on: torch
# on any pickle not of protocol 2 (most checkpoints), diffusers when a folder has a .bin instead of .safetensors
# (the .bin is then read with weights_only, and refused or loaded: videodiff's error or none says which).
PICKLE_PROTOCOL_WARNING = r"Detected pickle protocol \d+ in the checkpoint"
FETCH_ERROR = "An error occurred while trying to fetch"


class _DropFetchError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(FETCH_ERROR)


def quiet_loading_noise() -> None:
    """Silence the two messages above wherever weights load (diffusers' and transformers' ``from_pretrained``
    too); idempotent. Called when this module is imported, before any weights load."""
    warnings.filterwarnings("ignore", message=PICKLE_PROTOCOL_WARNING, category=UserWarning)
    log = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _DropFetchError) for f in log.filters):
        log.addFilter(_DropFetchError())


quiet_loading_noise()


def _load_pickle(path: Path, mmap: bool) -> Any:
    with warnings.catch_warnings():  # torch's notes on the pickle protocol: the load's outcome says what matters
        warnings.simplefilter("ignore", UserWarning)
        if mmap:  # zip-format files map their tensors: shapes come without reading the data
            try:
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
        return torch.load(str(path), map_location="cpu", weights_only=True)  # the legacy format cannot be mapped


def read_state_dict(path: str | Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file, or a pickle checkpoint restricted to tensors, to a CPU state dict.

    ``mmap``: map a pickle checkpoint's tensors instead of reading them (for shapes and
    dtypes only: pages are read when a tensor is used)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    if suffix in PICKLE_SUFFIXES:
        try:
            data = _load_pickle(path, mmap)
        except Exception as exc:  # noqa: BLE001 - any failure here is a bad file, reported in one line
            text, full = _first_line(exc), str(exc)
            if any(m in full for m in ("weights_only", "Weights only", "Unsupported global", "GLOBAL")):
                raise UserError(
                    f"{path}: refused, it needs arbitrary code to load "
                    "(convert it to .safetensors with a tool you trust)"
                ) from None
            raise UserError(f"{path}: not a readable checkpoint ({text})") from None
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise UserError(f"{path}: does not hold a state dict of tensors")
        return data
    raise UserError(f"{path}: unsupported weights file type {suffix or '(none)'}; use .safetensors")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str, *, subset: bool = False) -> None:
    """Load every tensor into ``module`` or fail with one line naming ``source`` and what did not match.

    ``subset``: the file may cover only part of the module (fine-tuned tensors shipped on
    their own); every tensor it has must still name a tensor of the module, with its shape.
    """
    expected = module.state_dict()
    missing = [] if subset else sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise UserError(f"{source}: keys do not match the model: {'; '.join(parts)}")
    for key, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise UserError(
                f"{source}: {key} has shape {tuple(tensor.shape)}, the model expects {tuple(expected[key].shape)}"
            )
    module.load_state_dict(state_dict, strict=not subset)  # subset: every key was checked above
