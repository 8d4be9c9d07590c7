"""Control settings: which ControlNets steer a render, from which maps, how strongly and on which steps.

One :class:`Control` per ControlNet; :class:`ControlSettings` holds them (``controls``) as the stage of a render's
settings. Torch-free: everything here is checked before any model loads.

Maps are named by one text, the same on the command line, in settings files and in the Python API::

    PATH                      a video, a folder of images (sorted by name) or one image (every frame)
    canny:PATH                Canny edges of PATH's frames (OpenCV, thresholds 100 and 200)
    canny:LOW,HIGH:PATH       with other thresholds (0 to 255 each, LOW <= HIGH)
    path:X0,Y0:X1,Y1[:...]    drawn here: a white blob moving along the polyline at constant speed, first frame to
                              last (pixels of the video, x right and y down); for blob-trained ControlNets

The step range follows diffusers' ``control_guidance_start``/``_end``: of the ``n`` steps a run takes (counted
from where it starts: img2vid and vid2vid start part-way), step ``i`` is controlled when ``START <= i / n`` and
``(i + 1) / n <= END``.

SparseCtrl (AnimateDiff v3's sparse ControlNet) reads pictures at chosen frames instead of a map per frame: a
control with ``sparse_at`` (``FRAME:PATH`` items, negative frames counting from the end, as ``--image-at``) and no
``maps``, whose ControlNet is a SparseCtrl one (``--sparsectrl MODEL --sparse-at 0:first.png --sparse-at
-1:last.png``). An RGB SparseCtrl reads the pictures through the VAE, a scribble one as pixels; either is told which
frames are given by a mask. Its scale and step range work as a ControlNet's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from videodiff.errors import UserError
from videodiff.settings.fields import composite_items, setting, shown

DETECTORS = ("canny",)  # maps computed here from pictures; detectors that need weights (depth, pose) are not
CANNY_THRESHOLDS = (100, 200)  # controlnet_aux's CannyDetector defaults, which the canny ControlNets were shown
MAX_CONTROL_SCALE = 10.0  # a residual ten times what the ControlNet was trained to add is far past any use
CONTROLS = "controls"  # the conditioning field the controls are (videodiff.sampling.Cond; read by videodiff.control)
MAX_CONTROLS = 8  # each ControlNet is a second encoder run every step: eight is already eight times the cost


@dataclass(frozen=True)
class Maps:
    """A parsed maps text: the source ``path`` and the ``detector`` run on it (``None``: the pictures are maps)."""

    path: str
    detector: str | None = None
    thresholds: tuple[int, int] = CANNY_THRESHOLDS

    def text(self, path: str | None = None) -> str:
        """The maps text again (:func:`parse_maps`), with ``path`` in place of the source when given."""
        head = "" if self.detector is None else f"{self.detector}:"
        if self.detector == "canny" and self.thresholds != CANNY_THRESHOLDS:
            head += f"{self.thresholds[0]},{self.thresholds[1]}:"
        return head + (self.path if path is None else path)

    def record(self) -> dict[str, Any]:
        """What a sidecar records of how the maps were made (besides the source's digest)."""
        if self.detector == PATH_SOURCE:
            return {"detector": PATH_SOURCE, "points": [list(p) for p in parse_points(self.path)]}
        out: dict[str, Any] = {"path": self.path}
        if self.detector == "canny":
            out.update(detector="canny", low=self.thresholds[0], high=self.thresholds[1])
        return out


PATH_SOURCE = "path"  # maps drawn here: a blob moving along a polyline (--control-path)
MAX_PATH_POINTS = 1000
MAX_PATH_COORD = 100_000  # pixels; a path may leave the frame and come back, not go to infinity


def parse_points(text: str) -> tuple[tuple[float, float], ...]:
    """``X0,Y0:X1,Y1[:...]``: two or more points in the video's pixels (x right, y down, as ``--motion``)."""
    items = text.split(":") if isinstance(text, str) else []
    points = []
    for item in items[: MAX_PATH_POINTS + 1]:
        try:
            x, y = (float(v) for v in item.split(","))
        except ValueError:
            raise UserError(f"--control-path must be X0,Y0:X1,Y1[:...] in pixels, got {shown(text)}") from None
        if not (math.isfinite(x) and math.isfinite(y) and abs(x) <= MAX_PATH_COORD and abs(y) <= MAX_PATH_COORD):
            raise UserError(f"--control-path points must be finite pixels within +-{MAX_PATH_COORD}, got {shown(item)}")
        points.append((x, y))
    if not 2 <= len(points) <= MAX_PATH_POINTS:
        raise UserError(f"--control-path needs 2 to {MAX_PATH_POINTS} points X,Y separated by ':', got {shown(text)}")
    return tuple(points)


def _exists(text: str) -> bool:
    """Whether ``text`` names an existing file or folder (a name too long for the system names none)."""
    try:
        return Path(text).exists()
    except (OSError, ValueError):
        return False


def parse_maps(text: str) -> Maps:
    """``PATH``, ``canny:PATH``, ``canny:LOW,HIGH:PATH`` or ``path:X0,Y0:X1,Y1[:...]`` (module docstring) as
    :class:`Maps`."""
    if not isinstance(text, str) or not text:
        raise UserError(f"--control needs maps: a video, a folder of images or an image, got {shown(text)}")
    head, sep, rest = text.partition(":")
    if head == PATH_SOURCE and sep and rest and not _exists(text):
        parse_points(rest)
        return Maps(rest, PATH_SOURCE)
    if not sep or head not in DETECTORS or not rest:
        return Maps(text)
    numbers, sep2, path = rest.partition(":")
    if sep2 and "," in numbers:
        low_text, _, high_text = numbers.partition(",")
        try:
            low, high = int(low_text), int(high_text)
        except ValueError:
            raise UserError(
                f"--control canny thresholds must be two whole numbers LOW,HIGH, got {shown(numbers)}"
            ) from None
        if not 0 <= low <= high <= 255:
            raise UserError(f"--control canny thresholds must have 0 <= LOW <= HIGH <= 255, got {low},{high}")
        return Maps(path, head, (low, high))
    return Maps(rest, head)


def parse_range(value: Any, flag: str = "--control-range") -> tuple[float, float]:
    """``START,END`` (text, or two numbers) with ``0 <= START <= END <= 1``: the part of the steps controlled
    (``flag`` names the option in errors)."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        start, end = (float(v) for v in items)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise UserError(f"{flag} must be two numbers START,END from 0 to 1, got {shown(value)}") from None
    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start <= end <= 1):
        raise UserError(f"{flag} must have 0 <= START <= END <= 1, got {shown(value)}")
    return start, end


def parse_sparse_at(spec: Any) -> tuple[int, str]:
    """``FRAME:PATH`` (``--sparse-at``): the frame (negative counts from the end) and the picture's path."""
    frame, sep, path = str(spec).partition(":")
    try:
        index = int(frame)
    except ValueError:
        index = None
    if not isinstance(spec, str) or not sep or index is None or not path:
        raise UserError(f"--sparse-at must be FRAME:PATH, e.g. 0:first.png or -1:last.png; got {shown(spec)}")
    if "\0" in path:
        raise UserError("--sparse-at contains a NUL character")
    return index, path


@dataclass(frozen=True)
class Control:
    """One ControlNet and its maps. ``controlnet``: a diffusers ``ControlNetModel`` folder, hub id or original
    single file (``None``: the model's own, when it records one); ``maps``: see the module docstring; ``scale``:
    diffusers' ``controlnet_conditioning_scale``; ``range``: diffusers' ``control_guidance_start, _end``;
    ``sparse_at``: SparseCtrl's pictures, ``FRAME:PATH`` items, in place of ``maps`` (module docstring)."""

    maps: str | None = None
    controlnet: str | None = None
    scale: float = 1.0
    range: tuple[float, float] = (0.0, 1.0)
    sparse_at: tuple[str, ...] = ()

    KEYS = ("maps", "controlnet", "scale", "range", "sparse_at")

    @classmethod
    def of(cls, value: Any) -> Control:
        """A :class:`Control` from itself or a mapping with its keys (a settings file's ``controls:`` item)."""
        if isinstance(value, Control):
            return value.checked()
        if not isinstance(value, dict):
            raise UserError(f"each of controls must be a mapping of {', '.join(cls.KEYS)}; got {shown(value)}")
        unknown = [str(k) for k in value if k not in cls.KEYS]
        if unknown:
            raise UserError(f"controls: unknown key {shown(unknown[0])}; known: {', '.join(cls.KEYS)}")
        if value.get("maps") is None and not value.get("sparse_at"):
            raise UserError(
                "each of controls needs maps (a video, a folder of images or an image), or sparse_at pictures "
                "for a SparseCtrl controlnet"
            )
        given = {k: value[k] for k in cls.KEYS if value.get(k) is not None}
        if "range" in given:
            given["range"] = parse_range(given["range"])
        if "sparse_at" in given:
            items = given["sparse_at"]
            given["sparse_at"] = (items,) if isinstance(items, str) else items
            if not isinstance(given["sparse_at"], (list, tuple)):
                raise UserError(f"controls: sparse_at must be a list of FRAME:PATH, got {shown(items)}")
            given["sparse_at"] = tuple(given["sparse_at"])
        return cls(**given).checked()

    def checked(self) -> Control:
        if self.controlnet is not None and (not isinstance(self.controlnet, str) or not self.controlnet):
            raise UserError(f"--controlnet must be a folder, hub id or file, got {shown(self.controlnet)}")
        if isinstance(self.controlnet, str) and "\0" in self.controlnet:
            raise UserError("--controlnet contains a NUL character")
        if not isinstance(self.sparse_at, tuple):
            raise UserError(f"--sparse-at must be a list of FRAME:PATH, got {shown(self.sparse_at)}")
        if self.sparse_at:
            if self.maps is not None:
                raise UserError(
                    "a control takes --control maps (a ControlNet) or --sparse-at pictures (SparseCtrl), not both"
                )
            if self.controlnet is None:
                raise UserError("--sparse-at needs --sparsectrl MODEL: a SparseCtrl ControlNet to read the pictures")
            for spec in self.sparse_at:
                parse_sparse_at(spec)
        else:
            maps = parse_maps(self.maps)  # type: ignore[arg-type]
            if "\0" in maps.path:
                raise UserError("--control contains a NUL character")
        scale, flag = self.scale, "--sparse" if self.sparse_at else "--control"
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise UserError(f"{flag}-scale must be a finite number, got {shown(scale)}")
        if not 0 <= scale <= MAX_CONTROL_SCALE:
            raise UserError(f"{flag}-scale must be from 0 to {MAX_CONTROL_SCALE:g}, got {scale:g}")
        parse_range(self.range, f"{flag}-range")
        return self

    @property
    def parsed_maps(self) -> Maps:
        return parse_maps(self.maps)  # type: ignore[arg-type]

    @property
    def sparse(self) -> bool:
        """Whether this is a SparseCtrl control (pictures at frames, ``sparse_at``)."""
        return bool(self.sparse_at)

    def pictures(self, frames: int) -> dict[int, str]:
        """``sparse_at`` as ``{frame: path}`` for a video of ``frames`` frames (negative frames counted from the
        end); a frame outside the video or given twice is a one-line :class:`UserError`."""
        out: dict[int, str] = {}
        for spec in self.sparse_at:
            frame, path = parse_sparse_at(spec)
            if not -frames <= frame < frames:
                raise UserError(f"--sparse-at frame {frame} is outside the video's {frames} frames (0 to {frames - 1})")
            index = frame % frames
            if index in out:
                raise UserError(f"--sparse-at gives frame {index} twice ({out[index]} and {path})")
            out[index] = path
        return out

    def record(self) -> dict[str, Any]:
        """The control as a settings file holds it (a sidecar's ``controls`` item)."""
        out = {"maps": self.maps, "controlnet": self.controlnet, "scale": self.scale, "range": list(self.range)}
        if self.sparse_at:
            out["sparse_at"] = list(self.sparse_at)
        return out


@dataclass(frozen=True, kw_only=True)
class ControlSettings:
    """The ControlNets steering a render (none: no control)."""

    controls: tuple[Any, ...] = setting(  # Control items (mappings in settings files); the CLI builds them
        (), "ControlNets and their maps: a list of {maps, controlnet, scale, range} (SparseCtrl: sparse_at, not maps)."
    )

    def validate(self) -> ControlSettings:
        """Raise :class:`UserError` (one line) for any control that cannot work; return self."""
        self.parsed()
        return self

    def parsed(self) -> tuple[Control, ...]:
        return composite_items(self.controls, "controls", "controls", MAX_CONTROLS, Control.of)


def controls_from_flags(
    controlnets: tuple[str, ...], maps: tuple[str, ...], scales: tuple[float, ...], ranges: tuple[str, ...]
) -> tuple[Control, ...]:
    """The command line's ``--controlnet``/``--control``/``--control-scale``/``--control-range`` as controls: the
    n-th of each belongs to the n-th ``--control``. ``--control`` without any ``--controlnet`` uses the model's own
    ControlNet; scales and ranges are given for no control or for each."""
    if not maps:
        if controlnets or scales or ranges:
            raise UserError("--controlnet, --control-scale and --control-range need --control MAPS")
        return ()
    if controlnets and len(controlnets) != len(maps):
        raise UserError(
            f"{len(maps)} --control for {len(controlnets)} --controlnet: give one --control per --controlnet "
            "(or --control alone for the model's own ControlNet)"
        )
    for name, given in (("--control-scale", scales), ("--control-range", ranges)):
        if given and len(given) != len(maps):
            raise UserError(f"{len(given)} {name} for {len(maps)} --control: give none, or one per --control")
    out = []
    for i, spec in enumerate(maps):
        out.append(
            Control(
                maps=spec,
                controlnet=controlnets[i] if controlnets else None,
                scale=scales[i] if scales else 1.0,
                range=parse_range(ranges[i]) if ranges else (0.0, 1.0),
            ).checked()
        )
    return tuple(out)


CONTROL_FIELDS = tuple(f.name for f in fields(ControlSettings))


def parse_controls(value: Any) -> tuple[Control, ...]:
    """Controls as the Python API takes them: ``None``, a :class:`ControlSettings`, or a list of :class:`Control` s
    and mappings of its fields."""
    if value is None:
        return ()
    if isinstance(value, ControlSettings):
        return value.validate().parsed()
    if isinstance(value, (Control, dict)):
        value = (value,)
    return ControlSettings(controls=tuple(value)).validate().parsed()


def sparse_from_flags(
    sparsectrl: str | None, sparse_at: tuple[str, ...], scale: float | None, range_: str | None
) -> tuple[Control, ...]:
    """The command line's ``--sparsectrl``/``--sparse-at``/``--sparse-scale``/``--sparse-range`` as one more
    control (none without any of them)."""
    if sparsectrl is None:
        if sparse_at:
            raise UserError("--sparse-at needs --sparsectrl MODEL: a SparseCtrl ControlNet to read the pictures")
        if scale is not None or range_ is not None:
            raise UserError("--sparse-scale and --sparse-range need --sparsectrl MODEL and --sparse-at FRAME:PATH")
        return ()
    if not sparse_at:
        raise UserError("--sparsectrl needs --sparse-at FRAME:PATH: the pictures it reads, and at which frames")
    control = Control(
        controlnet=sparsectrl,
        sparse_at=tuple(sparse_at),
        scale=1.0 if scale is None else scale,
        range=(0.0, 1.0) if range_ is None else parse_range(range_, "--sparse-range"),
    )
    return (control.checked(),)


def check_sparse(controls: Any, frames: int) -> None:
    """SparseCtrl's pictures for a video of ``frames`` frames, before any model loads: every ``--sparse-at`` frame
    inside the video, none given twice, every picture a file. One-line :class:`UserError` otherwise."""
    for control in parse_controls(controls):
        for path in control.pictures(frames).values():
            if not Path(path).is_file():
                raise UserError(f"--sparse-at {shown(path)}: no such file")


CONTROLNET_FLAGS = ("controlnet", "control", "control_scale", "control_range")
SPARSE_FLAGS = ("sparsectrl", "sparse_at", "sparse_scale", "sparse_range")
PATH_FLAG = "control_path"  # --control-path SPEC: --control path:SPEC, after the --control ones
CONTROL_FLAGS = CONTROLNET_FLAGS + SPARSE_FLAGS + (PATH_FLAG,)  # every flag flags_to_controls makes into controls


def flags_to_controls(command_line: dict[str, Any]) -> dict[str, Any]:
    """The command line's values with its control flags (:data:`CONTROL_FLAGS`) made into ``controls``: the
    ControlNets' (:func:`controls_from_flags`), then SparseCtrl's (:func:`sparse_from_flags`); without any of
    them, as given."""
    given = {k: command_line.get(k) or () for k in CONTROLNET_FLAGS}
    given["control"] = (*given["control"], *(f"{PATH_SOURCE}:{spec}" for spec in command_line.get(PATH_FLAG) or ()))
    sparse = [command_line.get(k) for k in SPARSE_FLAGS]
    rest = {k: v for k, v in command_line.items() if k not in CONTROL_FLAGS}
    if any(given.values()) or any(v not in (None, ()) for v in sparse):
        controls = controls_from_flags(*(tuple(given[k]) for k in CONTROLNET_FLAGS))
        sparsectrl, sparse_at, scale, range_ = sparse
        rest["controls"] = controls + sparse_from_flags(sparsectrl or None, tuple(sparse_at or ()), scale, range_)
    return rest


def control_record(control: Control) -> dict[str, Any]:
    """A control as a sidecar records it: its maps' source and a local ControlNet by absolute path, so that the
    sidecar renders the same video again from any folder."""
    from pathlib import Path

    record = control.record()
    if control.maps is not None and control.parsed_maps.detector != PATH_SOURCE:
        maps = control.parsed_maps
        record["maps"] = maps.text(str(Path(maps.path).resolve()))
    if control.sparse_at:
        pinned = (parse_sparse_at(spec) for spec in control.sparse_at)
        record["sparse_at"] = [f"{frame}:{Path(path).resolve()}" for frame, path in pinned]
    if control.controlnet is not None and Path(control.controlnet).exists():
        record["controlnet"] = str(Path(control.controlnet).resolve())
    return record
