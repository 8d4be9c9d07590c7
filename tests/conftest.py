"""Shared fixtures: tiny models built offline once per test session (nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VIDEODIFF_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: as fast for these tiny tensors, and no spinning threads on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random SD1.5-layout diffusers folder (VAE downsampling 2, U-Net channels (32, 64))."""
    from videodiff.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_motion(tmp_path_factory) -> Path:
    """A MotionAdapter folder with non-zero temporal weights matching ``tiny_model``."""
    from videodiff.tiny import build_tiny_motion_adapter

    return build_tiny_motion_adapter(tmp_path_factory.mktemp("models") / "tiny-motion")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model, tiny_motion):
    from videodiff import load_pipeline

    return load_pipeline(str(tiny_model), str(tiny_motion), device="cpu")


@pytest.fixture(scope="session")
def models(tiny_model, tiny_motion) -> tuple[str, ...]:
    """The command-line flags that select the tiny model and motion module."""
    return ("--model", str(tiny_model), "--motion-module", str(tiny_motion))


@pytest.fixture(scope="session")
def tiny_sdxl_model(tmp_path_factory) -> Path:
    """A random SDXL-layout diffusers folder (two text encoders, ``text_time``, U-Net channels (32, 64, 64))."""
    from videodiff.tiny_sdxl import build_tiny_sdxl_model

    return build_tiny_sdxl_model(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sdxl_motion(tmp_path_factory) -> Path:
    """A diffusers SDXL MotionAdapter folder (three blocks, no mid block) matching ``tiny_sdxl_model``."""
    from videodiff.tiny_sdxl import build_tiny_sdxl_motion_adapter

    return build_tiny_sdxl_motion_adapter(tmp_path_factory.mktemp("models") / "tiny-sdxl-motion")


@pytest.fixture(scope="session")
def tiny_sdxl_pipe(tiny_sdxl_model, tiny_sdxl_motion):
    from videodiff import load_pipeline

    return load_pipeline(str(tiny_sdxl_model), str(tiny_sdxl_motion), device="cpu")


@pytest.fixture
def shared_data() -> Path:
    """The real media in ../shared/data; tests using it skip where it is absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
