"""videodiff: turn a Stable Diffusion 1.5-family image model into a text-to-video model.

Heavy modules (torch, diffusers) load on first use, so ``import videodiff`` and the
CLI's ``--help`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "LoadSettings",
    "RenderConfig",
    "SampleSettings",
    "UserError",
    "VideoPipeline",
    "VideoResult",
    "WriteSettings",
    "__version__",
    "load_pipeline",
    "render",
    "save_video",
]

_LAZY = {
    "load_pipeline": "videodiff.pipelines",
    "VideoPipeline": "videodiff.pipelines",
    "VideoResult": "videodiff.pipelines",
    "render": "videodiff.render",
    "RenderConfig": "videodiff.config",
    "SampleSettings": "videodiff.config",
    "LoadSettings": "videodiff.config",
    "WriteSettings": "videodiff.config",
    "save_video": "videodiff.media.video",
    "UserError": "videodiff.errors",
}

if TYPE_CHECKING:
    from videodiff.config import LoadSettings, RenderConfig, SampleSettings, WriteSettings
    from videodiff.errors import UserError
    from videodiff.media.video import save_video
    from videodiff.pipelines import VideoPipeline, VideoResult, load_pipeline
    from videodiff.render import render


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'videodiff' has no attribute {name!r}")
