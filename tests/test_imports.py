"""A built-in render imports none of the modules that optional features bring, so they cannot slow its start.

The render runs the CLI's own entry point in a fresh interpreter; ``sys.modules`` at its end is the record of
everything it imported. The forbidden names are matched by prefix, so modules that do not exist yet (an upscaler,
RIFE, an SDXL pipeline) are covered as soon as they land.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUNNER = r"""
import json, sys
from videodiff.cli import main
out, record, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.argv = ["videodiff", "render", "a red circle moving right", "--seed", "1", "-o", out, *extra]
try:
    main()
except SystemExit as exc:
    if exc.code not in (None, 0):
        raise
with open(record, "w") as f:
    json.dump(sorted(sys.modules), f)
"""

# modules (with everything under them) that a plain built-in render must not import
FORBIDDEN = (
    "cv2",  # OpenCV: Canny maps, optical-flow interpolation
    "videodiff.weights.ip_adapter",  # IP-Adapter
    "videodiff.pipeline.image_prompts",
    "gradio",  # the web app
    "videodiff.weights.controlnets",
)
# name stems: any module whose name starts with one
FORBIDDEN_STEMS = (
    "videodiff.post.upscale",  # upscalers (videodiff.post.upscale, upscale_esrgan, ...)
    "videodiff.post.rife",  # RIFE frame interpolation
    "videodiff.ui.",  # the web app's modules (the package itself holds serve's option limits and imports no Gradio)
    "videodiff.control.",  # ControlNet, SparseCtrl, control maps (the package's lazy names are allowed)
)
# modules with "sdxl" in their name that are tables, not code that runs SDXL
SDXL_TABLES = ("videodiff.families.sdxl",)


def imported_by_render(tmp_path: Path, *extra: str) -> list[str]:
    out, record = tmp_path / "c.gif", tmp_path / "modules.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", RUNNER, str(out), str(record), *extra], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.is_file()
    return json.loads(record.read_text())


def forbidden(modules: list[str]) -> list[str]:
    def bad(name: str) -> bool:
        if any(name == p or name.startswith(p + ".") for p in FORBIDDEN) or name.startswith(FORBIDDEN_STEMS):
            return True
        return "sdxl" in name.lower() and name not in SDXL_TABLES

    return [m for m in modules if bad(m)]


def test_the_forbidden_list_matches_what_it_should():
    assert forbidden(["cv2", "cv2.data", "videodiff.post.upscale", "videodiff.post.upscale_esrgan",
                      "videodiff.post.rife", "videodiff.ui.app", "videodiff.control.controlnet",
                      "videodiff.pipeline.sdxl", "gradio.blocks"]) == [
        "cv2", "cv2.data", "videodiff.post.upscale", "videodiff.post.upscale_esrgan", "videodiff.post.rife",
        "videodiff.ui.app", "videodiff.control.controlnet", "videodiff.pipeline.sdxl", "gradio.blocks"]
    assert forbidden(["videodiff.ui", "videodiff.control", "videodiff.families.sdxl", "videodiff.post.paste",
                      "cv2x", "torch"]) == []


def test_a_builtin_render_imports_no_optional_feature(tmp_path, monkeypatch):
    monkeypatch.delenv("VIDEODIFF_EAGER_IMPORTS", raising=False)  # the CLI's default
    modules = imported_by_render(tmp_path, "--steps", "2", "--frames", "4")
    assert "videodiff.pipelines" in modules  # the render ran in this process
    assert forbidden(modules) == []
