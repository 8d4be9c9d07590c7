"""Past runs read back from an outputs folder: each video and its sidecar (pure Python: no torch, no Gradio).

A run is an output the render layer wrote (``NAME.mp4`` with ``NAME.mp4.json`` beside it). A
sidecar that is missing, unreadable or not a render's settings is skipped with a notice, never a crash:
the folder is shared with the command line and with people, and may hold anything.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videodiff.config import FIELD_NAMES, INFO_KEY
from videodiff.errors import UserError
from videodiff.settings.render import VIDEO_SUFFIXES

MAX_SIDECAR_BYTES = 1 << 20  # a sidecar is a page of JSON; anything larger is not one
INPUTS_FOLDER = "inputs"  # the web app's copies of uploaded pictures and clips (content-addressed)
THUMBS_FOLDER = ".thumbnails"


@dataclass(frozen=True)
class Run:
    """One past render: its output, its sidecar and the settings that reproduce it."""

    output: Path
    sidecar: Path
    settings: dict[str, Any]  # the sidecar without its informational part: what --config reads
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.output.name

    @property
    def prompt(self) -> str:
        keys = self.settings.get("prompt_at") or {}
        return str(self.settings.get("prompt") or next(iter(keys.values()), "") or "")

    @property
    def mode(self) -> str:
        """text-to-video, img2vid, vid2vid or prompt travel: the tab that renders it again."""
        if self.settings.get("image_at"):
            return "img2vid"
        if self.settings.get("video"):
            return "vid2vid"
        if self.settings.get("prompt_at"):
            return "travel"
        return "text"

    @property
    def created(self) -> str:
        return str(self.info.get("created") or "")

    def caption(self) -> str:
        return f"{self.prompt[:60]} · seed {self.settings.get('seed')} · {self.settings.get('frames')} frames"


def inside(folder: str | os.PathLike[str], name: str | os.PathLike[str]) -> Path:
    """``folder/name`` if it stays inside ``folder`` (after following links), else a :class:`UserError`.

    Every path that comes from the page goes through here: ``..``, absolute paths and links out are refused.
    """
    root = Path(folder).resolve()
    text = str(name)
    if not text or "\0" in text:
        raise UserError("no such run in the outputs folder")
    candidate = (root / text).resolve()
    if candidate != root and root not in candidate.parents:
        raise UserError(f"{text!r} is outside the outputs folder; only its own runs can be opened")
    return candidate


def read_sidecar(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A sidecar's settings and informational part; :class:`ValueError` (a reason) when it is not a sidecar."""
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):  # a link could point anywhere, a FIFO would block the read
            raise ValueError("not a regular file")
        if st.st_size > MAX_SIDECAR_BYTES:
            raise ValueError(f"larger than {MAX_SIDECAR_BYTES // 1024} KiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError("no sidecar") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"unreadable ({type(exc).__name__})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON (line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"a {type(data).__name__}, not a mapping of settings")
    info = data.pop(INFO_KEY, None)
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"unknown keys {', '.join(map(str, unknown[:3]))}")
    if not (data.get("prompt") or data.get("prompt_at")):
        raise ValueError("no prompt")
    return data, info if isinstance(info, dict) else {}


def _candidates(root: Path) -> list[Path]:
    """Outputs directly in ``root`` and one folder down (batches), newest first; the app's own folders skipped."""
    found: list[Path] = []
    folders = [root]
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    folders += [
        Path(e.path)
        for e in entries
        if e.is_dir(follow_symlinks=False) and not e.name.startswith(".") and e.name != INPUTS_FOLDER
    ]
    for folder in folders:
        try:
            found += [Path(e.path) for e in os.scandir(folder) if e.name.lower().endswith(VIDEO_SUFFIXES)]
        except OSError:
            continue

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    return sorted(found, key=lambda p: (mtime(p), p.name), reverse=True)


def read_runs(outputs: str | os.PathLike[str], limit: int = 200) -> tuple[list[Run], list[str]]:
    """The runs in ``outputs`` (newest first, at most ``limit``) and one notice per output skipped, saying why."""
    root = Path(outputs)
    runs: list[Run] = []
    notices: list[str] = []
    for output in _candidates(root):
        if len(runs) >= limit:
            break
        if output.is_symlink() or not output.is_file():
            continue  # links could point anywhere; folders of PNG frames are not shown
        side = output.with_name(output.name + ".json")
        try:
            settings, info = read_sidecar(side)
        except ValueError as exc:
            notices.append(f"skipped {output.relative_to(root)}: sidecar {side.name}: {exc}")
            continue
        runs.append(Run(output, side, settings, info))
    return runs, notices


def thumbnail(run: Run, outputs: str | os.PathLike[str], side: int = 160) -> Path:
    """A PNG of the run's middle frame in ``OUTPUTS/.thumbnails/`` (made once; the video itself if unreadable)."""
    from PIL import Image

    from videodiff.media.atomic import atomic_file
    from videodiff.media.clips import UnreadableVideo, probe, read_frames

    root = Path(outputs)
    relative = run.output.resolve().relative_to(root.resolve())
    target = root / THUMBS_FOLDER / (str(relative).replace(os.sep, "__") + ".png")
    try:
        if target.is_file() and target.stat().st_mtime >= run.output.stat().st_mtime:
            return target
        info = probe(run.output)
        frame = read_frames(run.output, [max(0, info.num_frames // 2)], info)[0]
        image = Image.fromarray(frame)
        scale = max(1, side // max(image.size))
        if scale > 1:  # small videos (the shapes model's 64x64) are enlarged without blurring
            image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target) as tmp:
            image.save(tmp, format="PNG")
        return target
    except (UnreadableVideo, OSError, ValueError, IndexError):
        return run.output
