"""Measurements of long shapes videos (issue 16's proof); they live in :mod:`videodiff.shapes.long`."""

from __future__ import annotations

from videodiff.shapes.long import changes, objects_per_frame, seam_ratio, seam_steps, stretch_report

__all__ = ["changes", "objects_per_frame", "seam_ratio", "seam_steps", "stretch_report"]
