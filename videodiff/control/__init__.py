"""Control: ControlNets (and SparseCtrl) steering what moves where, as a denoiser wrapper and the maps it reads.

:mod:`videodiff.control.maps` is torch-free (checked before any model loads); :mod:`videodiff.control.controlnet`
holds the conditioning field and the denoiser wrapper. Their names are importable from here, loaded when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CONTROLS": "controlnet", "ControlInput": "controlnet", "ControlInputs": "controlnet", "Controlled": "controlnet",
    "in_range": "controlnet", "canny": "maps", "check_maps": "maps", "map_source": "maps", "read_maps": "maps",
}  # fmt: skip
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
