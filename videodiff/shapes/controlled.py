"""``videodiff eval shapes --controlled``: does the object go where the control map puts it?

Every colour and shape of the world along each held-out path (:data:`videodiff.shapes.paths.HELDOUT_PATHS`: kinds
never drawn for training), prompted ``a {color} {shape} moving {the path's net direction}`` and controlled by the
path's blob maps (``--control-path``). Per frame where the map shows a blob, the distance between the detected
object's centroid and the blob's (the centroid of the map's white pixels, so a blob cut by the frame's edge counts
where it is seen); per video, colour and shape as ``eval shapes`` scores them (direction is not scored: the path
decides it). The same numbers for the ground-truth clips drawn along the same paths, raw and after the model's VAE:
the floor a model can reach.

A frame *follows* the map when its object is within :data:`WITHIN` pixels (at 64) of the blob, or within
:data:`OVER_FLOOR` pixels of the VAE round trip's own error at that frame where that is larger (a triangle's
centroid sits below its centre, and the VAE blurs; the ground truth pays both). A frame with a blob and no object
does not follow it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from videodiff.shapes.detect import detect
from videodiff.shapes.paths import HELDOUT_PATHS, draw_path_clip, heldout_path, net_direction
from videodiff.shapes.world import COLORS, SHAPES

__all__ = ["OVER_FLOOR", "WITHIN", "ControlledReport", "controlled_videos", "map_centroids", "run_controlled_eval"]

WITHIN = 3.0  # pixels at 64: a frame follows its map when the object is this close to the blob
OVER_FLOOR = 1.0  # ... or this close to the VAE round trip's own error at that frame, where that is larger
SIZE, FRAMES = 64, 16


@dataclass(frozen=True)
class Video:
    """One scored video: which colour, shape, path and seed, the prompt, and the path's maps ``[F H W 3]``."""

    color: str
    shape: str
    path: str
    seed: int
    points: tuple[tuple[float, float], ...]

    @property
    def prompt(self) -> str:
        return f"a {self.color} {self.shape} moving {net_direction(self.points)}"

    @property
    def control_path(self) -> str:
        """The points as ``--control-path`` takes them."""
        return ":".join(f"{x:.4g},{y:.4g}" for x, y in self.points)


def controlled_videos(seeds: int, paths: tuple[str, ...] | None = None) -> list[Video]:
    """Every colour and shape along every held-out path (or ``paths``), ``seeds`` videos each."""
    kinds = paths or tuple(HELDOUT_PATHS)
    return [
        Video(c, s, kind, seed, heldout_path(kind, SIZE))
        for kind in kinds
        for c in COLORS
        for s in SHAPES
        for seed in range(seeds)
    ]


def map_centroids(maps: np.ndarray) -> np.ndarray:
    """``[F 2]`` (x, y): the centroid of each map's white pixels (over half bright), NaN where a map shows none."""
    bright = np.asarray(maps)[..., :3].mean(-1) > 127  # [F H W]
    out = np.full((bright.shape[0], 2), np.nan)
    ys, xs = np.mgrid[: bright.shape[1], : bright.shape[2]]
    for i, mask in enumerate(bright):
        if mask.any():
            out[i] = xs[mask].mean() + 0.5, ys[mask].mean() + 0.5  # pixel centres, as the detector measures
    return out


def frame_errors(frames: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, Any]:
    """``[F]`` distance (pixels at 64) between the detected object and each map centroid (NaN where the map shows no
    blob, infinity where it does and no object is seen), and the detection."""
    found = detect(frames)
    scale = SIZE / min(np.asarray(frames).shape[1:3])
    error = np.linalg.norm((found.centroids - centres), axis=-1) * scale
    error = np.where(np.isnan(centres[:, 0]), np.nan, np.where(np.isnan(error), np.inf, error))
    return error, found


@dataclass
class ControlledReport:
    """Per video and in total: frames that follow the map (of those with a blob), colour and shape right."""

    label: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, video: Video, error: np.ndarray, found: Any, floor: np.ndarray | None) -> None:
        blob = ~np.isnan(error)
        limit = np.full(error.shape, WITHIN) if floor is None else np.maximum(WITHIN, np.nan_to_num(floor) + OVER_FLOOR)
        follows = blob & (error <= limit)
        finite = error[blob & np.isfinite(error)]
        self.rows.append({
            "prompt": video.prompt, "path": video.path, "seed": video.seed,
            "color_ok": found.color == video.color, "shape_ok": found.shape == video.shape,
            "frames": int(blob.sum()), "follow": int(follows.sum()),
            "mean_error": round(float(finite.mean()), 3) if finite.size else None,
            "max_error": round(float(error[blob].max()), 3) if blob.any() else None,
        })  # fmt: skip

    def totals(self, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        rows = self.rows if rows is None else rows
        frames = sum(r["frames"] for r in rows)
        errors = [r["mean_error"] for r in rows if r["mean_error"] is not None]
        pct = lambda n, d: round(100.0 * n / d, 1) if d else None  # noqa: E731
        return {
            "videos": len(rows),
            "follow_pct": pct(sum(r["follow"] for r in rows), frames),
            "color_pct": pct(sum(r["color_ok"] for r in rows), len(rows)),
            "shape_pct": pct(sum(r["shape_ok"] for r in rows), len(rows)),
            "mean_error": round(float(np.mean(errors)), 3) if errors else None,
        }

    def table(self) -> str:
        lines = [
            f"### {self.label} ({self.seconds:.1f} s)",
            f"| path | videos | frames following the map (within {WITHIN:g} px) | colour | shape | mean error (px) |",
            "|---|---|---|---|---|---|",
        ]
        for kind in dict.fromkeys(r["path"] for r in self.rows):
            t = self.totals([r for r in self.rows if r["path"] == kind])
            lines.append(
                f"| {kind} | {t['videos']} | {t['follow_pct']}% | {t['color_pct']}% | {t['shape_pct']}% "
                f"| {t['mean_error']} |"
            )
        t = self.totals()
        lines.append(
            f"| **all** | {t['videos']} | {t['follow_pct']}% | {t['color_pct']}% | {t['shape_pct']}% "
            f"| {t['mean_error']} |"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "seconds": round(self.seconds, 2), "total": self.totals(), "videos": self.rows}


def ground_truth(video: Video) -> tuple[np.ndarray, np.ndarray]:
    """The world's clip of ``video`` along its path, and the path's maps."""
    pair = COLORS.index(video.color) * len(SHAPES) + SHAPES.index(video.shape)
    rng = np.random.default_rng([7, pair, list(HELDOUT_PATHS).index(video.path), video.seed])
    clip, maps = draw_path_clip(video.color, video.shape, video.points, rng=rng, frames=FRAMES, size=SIZE)
    return clip.frames, maps


def score(
    truths: dict[Video, tuple[np.ndarray, np.ndarray]],
    render: Callable[[Video], np.ndarray],
    label: str,
    floors: dict | None = None,
    stage=None,
) -> tuple[ControlledReport, dict]:
    """``render(video) -> frames`` scored on each video of ``truths`` (:func:`ground_truth` of each, drawn once);
    returns the report and each video's per-frame errors."""
    from videodiff.log import Progress

    report, errors, start = ControlledReport(label), {}, time.perf_counter()
    with Progress(stage or f"scoring {label}", len(truths)) as shown:
        for video, (_, maps) in truths.items():
            error, found = frame_errors(render(video), map_centroids(maps))
            report.add(video, error, found, None if floors is None else floors[video])
            errors[video] = error
            shown.update()
    report.seconds = time.perf_counter() - start
    return report, errors


def run_controlled_eval(
    model: str | None = None,
    motion_module: str | None = None,
    *,
    seeds: int = 1,
    controlnet: str | None = None,
    given: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
    device: str | None = "auto",
    dtype: str | None = "auto",
) -> dict[str, Any]:
    """What ``videodiff eval shapes --controlled`` does: the ground truth along the held-out paths raw and after
    the model's VAE, then the model's videos controlled by each path's maps (``controlnet``: the ControlNet; ``None``,
    the model's own). ``given``: other render keywords (steps, guidance, motion prior, ``--set``'s)."""
    from videodiff.errors import UserError
    from videodiff.pipelines import load_pipeline
    from videodiff.shapes.evaluate import vae_roundtrip

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds must be a positive integer, got {seeds!r}")
    pipe = load_pipeline(model, motion_module, device=device, dtype=dtype)  # first: a bad model fails at once
    if controlnet is None and pipe.parts.controlnet is None:
        raise UserError("eval shapes --controlled needs --controlnet: this model records no ControlNet of its own")
    name = model or "built-in shapes"
    videos = controlled_videos(seeds)
    results: dict[str, Any] = {"settings": {"seeds": list(range(seeds)), "paths": list(HELDOUT_PATHS)}}

    truths = {video: ground_truth(video) for video in videos}
    truth, _ = score(truths, lambda v: truths[v][0], "ground truth along the paths")
    echo(truth.table() + "\n")
    results["ground_truth"] = truth.to_dict()
    trip, floors = score(truths, lambda v: vae_roundtrip(pipe, truths[v][0]), "ground truth after the VAE")
    echo(trip.table() + "\n")
    results["ground_truth_vae"] = trip.to_dict()

    control: dict[str, Any] = {"maps": ""}
    if controlnet is not None:
        control["controlnet"] = controlnet
    settings: dict[str, Any] = {}

    def render(video: Video) -> np.ndarray:
        result = pipe(
            video.prompt, seed=video.seed, num_frames=FRAMES, height=SIZE, width=SIZE,
            controls=[{**control, "maps": f"path:{video.control_path}"}], **(given or {}),
        )  # fmt: skip
        if not settings:
            settings.update({k: result.settings.get(k) for k in ("steps", "guidance", "scheduler", "motion_prior")})
        return result.frames

    label = f"model {name} controlled"
    model, _ = score(truths, render, label, floors, stage=f"rendering and scoring {name} controlled")
    results["settings"]["model"] = {"model": name, "controlnet": controlnet, **settings}
    results["model"] = model.to_dict()
    echo(model.table())
    return results
