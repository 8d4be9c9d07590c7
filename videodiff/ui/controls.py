"""ControlNet control in the web app: the ControlNets a server offers, the maps uploaded for one request, the preview.

No Gradio, no torch. ``videodiff serve --controlnet PATH`` (repeatable) names the ControlNets the page offers; a
web user picks one by its name (:func:`served_names`: the folder's or file's name, a hub id as it is), or the
model's own when the model records one, and uploads maps: never a path on the server. Uploads are taken from
Gradio's upload folder only, checked by type and size, and copied into a folder of their own inside the
server's temporary area (:class:`ServedControls`): several pictures become that folder's ``0000.png``,
``0001.jpg``... (the frames, in upload order); one picture (every frame's map) or one video keeps its name.
The render layer then checks and reads them exactly as it reads ``--control`` maps; the request's folder is
removed when its render ends.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from videodiff.errors import UserError
from videodiff.settings.checks import MAX_FRAMES
from videodiff.settings.control import (
    CANNY_THRESHOLDS,
    DETECTORS,
    MAX_CONTROL_SCALE,
    PATH_SOURCE,
    Control,
    parse_points,
)
from videodiff.ui.form import IMAGE_SUFFIXES, MAX_IMAGE_BYTES, MAX_VIDEO_BYTES, UPLOAD_VIDEO_SUFFIXES

__all__ = [
    "DETECTOR_CHOICES",
    "FORM_CONTROLS",
    "MAX_CONTROL_SCALE",
    "NONE",
    "OWN",
    "ControlRequest",
    "ServedControls",
    "check_controlnets",
    "served_names",
]

NONE = "none"  # no ControlNet (the control is off) / no detector (the pictures are the maps)
OWN = "the model's own"  # the ControlNet the model's videodiff.json records
FORM_CONTROLS = 2  # controls the form offers (the render layer takes up to MAX_CONTROLS)
DETECTOR_CHOICES = (NONE, *DETECTORS)
MAP_SUFFIXES = tuple(dict.fromkeys((*IMAGE_SUFFIXES, *UPLOAD_VIDEO_SUFFIXES)))


def check_controlnets(sources: Sequence[str]) -> tuple[str, ...]:
    """``serve --controlnet`` values, checked before the model loads: an existing folder or file (made absolute,
    so a later change of folder does not move it) or a hub id (found in the local cache or downloaded, as
    ``render --controlnet`` finds it). One line otherwise. Duplicates are dropped."""
    from videodiff.weights.hub import locate

    found: list[str] = []
    for source in sources:
        if not isinstance(source, str) or not source.strip() or "\0" in source:
            raise UserError(f"--controlnet must be a folder, hub id or file, got {source!r}")
        path = Path(source).expanduser()
        if path.exists():
            found.append(str(path.resolve()))
        else:
            locate(source, "--controlnet")  # one line when it is neither here nor on the hub
            found.append(source)
    return tuple(dict.fromkeys(found))


def served_names(sources: Sequence[str]) -> dict[str, str]:
    """The name the page shows for each served ControlNet -> its source: a local folder or file by its own name
    (``NAME-2``, ``NAME-3``... when two share one), a hub id as it is."""
    names: dict[str, str] = {}
    for source in sources:
        first = Path(source).name if Path(source).is_absolute() else source
        name, n = first, 1
        while name in names or name in (NONE, OWN):
            n += 1
            name = f"{first}-{n}"
        names[name] = source
    return names


@dataclass(frozen=True)
class ControlRequest:
    """One control as the page or the API sends it: a ControlNet's name, the uploaded maps (Gradio file paths, or
    the API's file dicts), the detector and its thresholds, the scale, the step range, and a drawn path in place of
    maps (``X0,Y0:X1,Y1[:...]``, as ``--control-path``: a blob moving along it)."""

    controlnet: Any = NONE
    files: Any = None
    detector: Any = NONE
    low: Any = CANNY_THRESHOLDS[0]
    high: Any = CANNY_THRESHOLDS[1]
    scale: Any = 1.0
    start: Any = 0.0
    end: Any = 1.0
    path: Any = ""

    @property
    def net(self) -> str:
        return str(self.controlnet or NONE).strip() or NONE

    @property
    def uploads(self) -> list[Any]:
        """The uploaded files, in order ([] for none)."""
        if self.files is None or self.files == "":
            return []
        return list(self.files) if isinstance(self.files, (list, tuple)) else [self.files]

    @property
    def wanted(self) -> bool:
        """Whether this control was asked for at all (a ControlNet chosen or maps uploaded)."""
        return self.net != NONE or bool(self.uploads) or bool(self.drawn)

    @property
    def drawn(self) -> str:
        """The path given in place of maps, stripped ("" for none)."""
        return self.path.strip() if isinstance(self.path, str) else ""


def _number(what: str, value: Any, whole: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise UserError(f"{what} must be a finite number, got {value!r}")
    if whole and number != int(number):
        raise UserError(f"{what} must be a whole number, got {number:g}")
    return int(number) if whole else number


class ServedControls:
    """The ControlNets one server offers (``sources``, plus ``own``: the model's, or ``None``), and the maps of
    each request, staged in ``scratch`` (the server's temporary area) from files under ``uploads`` (Gradio's
    upload folder) only."""

    def __init__(self, sources: Sequence[str], own: str | None, scratch: str | Path, uploads: str | Path) -> None:
        self.names = served_names(sources)
        self.own = own
        self.scratch = Path(scratch)
        self.uploads = Path(uploads).resolve()

    @property
    def choices(self) -> list[str]:
        """The page's dropdown: none, the served ControlNets by name, the model's own when it records one."""
        return [NONE, *self.names, *([OWN] if self.own else [])]

    @property
    def available(self) -> bool:
        return bool(self.names) or self.own is not None

    def source(self, name: str) -> str | None:
        """The ControlNet a name picks (``None``: the model's own); a one-line error for any other name."""
        if name in self.names:
            return self.names[name]
        if name == OWN and self.own is not None:
            return None
        if not self.available:
            raise UserError("this server offers no ControlNet: start it with videodiff serve --controlnet PATH")
        offered = ", ".join(repr(c) for c in self.choices[1:])
        raise UserError(f"unknown ControlNet {name!r}: this server offers {offered}")

    # ---------------------------------------------------------------- uploads
    def uploaded(self, value: Any, what: str = "maps") -> Path:
        """An uploaded file's path: a page's file path or an API file dict (``gradio_client.handle_file``) naming
        a regular file inside Gradio's upload folder; anything else (a path on the server) is refused."""
        path = value.get("path") if isinstance(value, dict) else value
        if not isinstance(path, str) or not path or "\0" in path:
            raise UserError(f"{what} must be uploaded files (gradio_client.handle_file(PATH) in the API)")
        resolved = Path(path).resolve()
        if self.uploads not in resolved.parents:
            raise UserError(
                f"{what} must be uploaded files, not a path on the server ({Path(path).name}): "
                "use gradio_client.handle_file(PATH) in the API"
            )
        from videodiff.media.images import check_file

        check_file(resolved, f"{what} file")
        return resolved

    def stage(self, request: ControlRequest, folder: Path) -> str:
        """The maps of ``request`` copied into ``folder`` (created): the path to read them from."""
        files = [self.uploaded(v) for v in request.uploads]
        if not files:
            raise UserError("upload maps: a video, a picture (every frame) or several pictures (one per frame)")
        for f in files:
            if f.suffix.lower() not in MAP_SUFFIXES:
                raise UserError(f"{f.name}: not a picture or video file this app takes ({' '.join(MAP_SUFFIXES)})")
        folder.mkdir(parents=True)
        if len(files) == 1:
            (source,) = files
            video = source.suffix.lower() in UPLOAD_VIDEO_SUFFIXES
            self._limit(source, MAX_VIDEO_BYTES if video else MAX_IMAGE_BYTES, "videos" if video else "pictures")
            target = folder / source.name  # its own name (Gradio keeps it), so that messages name it
            shutil.copyfile(source, target)
            return str(target)
        if len(files) > MAX_FRAMES:
            raise UserError(f"{len(files)} pictures are too many: at most {MAX_FRAMES}, one per frame")
        for i, source in enumerate(files):
            if source.suffix.lower() not in IMAGE_SUFFIXES:
                raise UserError(f"{source.name}: several maps must all be pictures (one per frame), not a video")
            self._limit(source, MAX_IMAGE_BYTES, "pictures")
            shutil.copyfile(source, folder / f"{i:04d}{source.suffix.lower()}")
        return str(folder)

    @staticmethod
    def _limit(path: Path, limit: int, what: str) -> None:
        size = path.stat().st_size
        if size > limit:
            raise UserError(f"{path.name} is {size / 2**20:.0f} MiB; {what} up to {limit >> 20} MiB are taken")

    def request_folder(self) -> Path:
        """A new folder for one request's maps, inside the server's temporary area."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="maps-", dir=self.scratch))

    # ---------------------------------------------------------------- controls
    def maps_text(self, request: ControlRequest, folder: Path) -> str:
        """The staged maps as the CLI's ``--control`` text (``canny:LOW,HIGH:PATH`` with the detector)."""
        if request.drawn:
            if request.uploads:
                raise UserError("give maps or a path, not both")
            parse_points(request.drawn)  # one line for a bad path
            return f"{PATH_SOURCE}:{request.drawn}"
        detector = str(request.detector or NONE)
        if detector not in DETECTOR_CHOICES:
            raise UserError(f"unknown detector {detector!r}; choose one of: {', '.join(DETECTOR_CHOICES)}")
        path = self.stage(request, folder)
        if detector == NONE:
            return path
        low, high = _number("canny low", request.low, whole=True), _number("canny high", request.high, whole=True)
        return f"{detector}:{low},{high}:{path}"

    def controls(self, requests: Sequence[ControlRequest], folder: Path) -> tuple[Control, ...]:
        """The requests that ask for control as :class:`Control` s, their maps staged under ``folder``; each error
        one line naming the control ("control 2: ...")."""
        out = []
        several = sum(r.wanted for r in requests) > 1
        for i, request in enumerate(requests, 1):
            if not request.wanted:
                continue
            try:
                if request.net == NONE:
                    raise UserError("choose a ControlNet for the uploaded maps")
                source = self.source(request.net)
                if not request.uploads and not request.drawn:
                    raise UserError(f"upload maps for ControlNet {request.net!r}: a video or pictures, or draw a path")
                scale = _number("scale", request.scale)
                steps = (_number("step range start", request.start), _number("step range end", request.end))
                text = self.maps_text(request, folder / f"control-{i}")
                out.append(Control(maps=text, controlnet=source, scale=scale, range=steps).checked())
            except UserError as exc:
                raise UserError(f"control {i}: {exc}" if several else str(exc)) from None
        return tuple(out)

    def preview(self, request: ControlRequest, frames: int, height: int, width: int, fit: str) -> np.ndarray:
        """The maps a render of ``frames`` frames of ``height`` x ``width`` would read, uint8 ``[f h w 3]``
        (fitted, the detector applied); the staged copy is removed before returning."""
        from videodiff.control.maps import read_maps

        folder = self.request_folder()
        try:
            return read_maps(self.maps_text(request, folder / "control"), frames, height, width, fit=fit)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
