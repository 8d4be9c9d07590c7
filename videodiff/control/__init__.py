"""Control: ControlNets (and SparseCtrl) steering what moves where, as a denoiser wrapper and the maps it reads."""

from videodiff.control.controlnet import CONTROLS, ControlInput, ControlInputs, Controlled, in_range
from videodiff.control.maps import canny, check_maps, map_source, read_maps

__all__ = [
    "CONTROLS", "ControlInput", "ControlInputs", "Controlled", "canny", "check_maps", "in_range", "map_source",
    "read_maps",
]  # fmt: skip
