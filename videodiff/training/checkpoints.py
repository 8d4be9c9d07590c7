"""Training checkpoints: ``DIR/checkpoints/step-N/``, written to a temporary folder and renamed.

Only what training changes is stored (the trained tensors, their EMA, the optimizer,
the learning-rate schedule, the step and the data position); the frozen model is
loaded from its source again. Pickled parts (optimizer state) are read back with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from videodiff.errors import UserError
from videodiff.media.atomic import user_mode

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(run: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(run: Path, resume: str) -> Path | None:
    """``latest`` -> the newest checkpoint of ``run`` (None when there is none yet); else a folder.

    Temporary folders of checkpoints whose writing was killed (``kill -9``) are removed first.
    """
    remove_stray_temps(run)
    if resume == "latest":
        dirs = checkpoint_dirs(run)
        return dirs[-1] if dirs else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise UserError(f"--resume {resume}: not a checkpoint folder (no state.json inside)")
    return path


def remove_stray_temps(run: Path) -> list[Path]:
    """Remove ``checkpoints/.step-N.*.tmp`` folders that a killed run left; return them."""
    root = run / "checkpoints"
    stray = sorted(p for p in root.glob(".step-*.tmp") if p.is_dir() and not p.is_symlink()) if root.is_dir() else []
    for path in stray:
        shutil.rmtree(path, ignore_errors=True)
    return stray


def save_checkpoint(
    run: Path,
    step: int,
    *,
    tensors: dict[str, torch.Tensor],
    optimizer: dict,
    lr_scheduler: dict,
    state: dict[str, Any],
    keep: int,
    scaler: dict | None = None,
) -> Path:
    """Write ``run/checkpoints/step-<step>/`` atomically, then keep only the newest ``keep``."""
    root = run / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(lr_scheduler, tmp / "lr_scheduler.pt")
        if scaler is not None:
            torch.save(scaler, tmp / "scaler.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        user_mode(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoint_dirs(run)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint folder back (tensors, optimizer, schedule, scaler, state)."""
    try:
        out = {
            "tensors": load_file(str(path / "trainable.safetensors")),
            "optimizer": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
            "lr_scheduler": torch.load(path / "lr_scheduler.pt", map_location="cpu", weights_only=True),
            "state": json.loads((path / "state.json").read_text()),
            "scaler": None,
        }
        if (path / "scaler.pt").is_file():
            out["scaler"] = torch.load(path / "scaler.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a refused pickle, a truncated file...: a bad checkpoint, in one line
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {first[:300]})") from None
    check_state(out["state"], path)
    return out


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_state(state: Any, path: Path) -> None:
    """``state.json`` is what :func:`save_checkpoint` wrote: ``{"step", "positions", "nan_total", "world"}`` with
    whole numbers >= 0 (one position per process); anything else is a one-line :class:`UserError`."""
    world = state.get("world", 1) if isinstance(state, dict) else None
    positions = state.get("positions") if isinstance(state, dict) else None
    ok = (
        isinstance(state, dict)
        and all(_whole(state.get(k)) for k in ("step", "nan_total"))
        and _whole(world)
        and world >= 1
        and isinstance(positions, list)
        and len(positions) == world
        and all(map(_whole, positions))
    )
    if not ok:
        raise UserError(
            f"{path}: cannot read the checkpoint (state.json is not what videodiff writes: "
            '{"step": N, "positions": [N, ...], "nan_total": N, "world": N})'
        )
