"""Every file videodiff writes gets the user's umask (safetensors' save_file alone makes 0600 files)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from videodiff.media.atomic import atomic_dir, atomic_file
from videodiff.media.video import save_video
from videodiff.training.checkpoints import save_checkpoint
from videodiff.weights.motion_formats import convert_motion_module


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def modes(root: Path) -> dict[str, int]:
    paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode) for p in paths}


def test_safetensors_through_atomic_file_get_the_umask(tmp_path: Path, umask: int) -> None:
    with atomic_file(tmp_path / "w.safetensors") as tmp:
        save_file({"a": torch.zeros(2)}, str(tmp))
    with atomic_dir(tmp_path / "folder") as tmp:
        save_file({"a": torch.zeros(2)}, str(tmp / "w.safetensors"))
        (tmp / "config.json").write_text("{}")
    want = 0o666 & ~umask
    assert set(modes(tmp_path / "w.safetensors").values()) == {want}
    assert set(modes(tmp_path / "folder").values()) == {want}


def test_checkpoints_get_the_umask(tmp_path: Path, umask: int) -> None:
    folder = save_checkpoint(
        tmp_path, 1, tensors={"w": torch.ones(3)}, optimizer={"state": {}}, lr_scheduler={}, state={"step": 1}, keep=2
    )
    found = modes(folder)
    assert "step-1/trainable.safetensors" in found
    assert set(found.values()) == {0o666 & ~umask}


def test_converted_motion_modules_and_videos_get_the_umask(tmp_path: Path, tiny_motion: Path, umask: int) -> None:
    original = convert_motion_module(str(tiny_motion), str(tmp_path / "mm.safetensors"), to="original")
    folder = convert_motion_module(str(original), str(tmp_path / "adapter"), to="diffusers")
    video = save_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "clip.gif")
    want = 0o666 & ~umask
    for path in (original, folder, video):
        assert set(modes(path).values()) == {want}, modes(path)
