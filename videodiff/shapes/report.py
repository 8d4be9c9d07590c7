"""Reports of scored shapes-world videos: metrics overall, per split, per word and per combination, as a
text table or JSON; and the summary of img2vid's frame-0 fidelity."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from videodiff.shapes.detect import Detection
from videodiff.shapes.world import ALL_COMBOS, COLORS, DIRECTIONS, SHAPES, prompt_of


@dataclass
class Scored:
    """One video: what it should show, what was detected."""

    prompt: str
    color: str
    shape: str
    direction: str
    split: str
    seed: int | None
    detection: Detection

    @property
    def correct(self) -> dict[str, bool]:
        d = self.detection
        return {
            "color": d.color == self.color,
            "shape": d.shape == self.shape,
            "direction": d.direction == self.direction,
        }


METRICS = ("color", "shape", "direction", "presence", "stable", "steady", "all")
_METRIC_HELP = {
    "color": "colour right",
    "shape": "shape right (voted over frames)",
    "direction": "direction right",
    "presence": "mean fraction of frames with the object",
    "stable": "present in every frame with constant size",
    "steady": "present in every frame, no jump of the centre above max(2 px, 2x its median step)",
    "all": "colour, shape and direction right and present in every frame",
}


def _metrics(items: Sequence[Scored]) -> dict[str, Any]:
    if not items:
        return {"n": 0, **{m: None for m in METRICS}}
    rows = [s.correct for s in items]
    out: dict[str, Any] = {"n": len(items)}
    for key in ("color", "shape", "direction"):
        out[key] = sum(r[key] for r in rows) / len(rows)
    out["presence"] = float(np.mean([s.detection.present_fraction for s in items]))
    out["stable"] = sum(s.detection.stable for s in items) / len(items)
    out["steady"] = sum(s.detection.steady for s in items) / len(items)
    out["all"] = sum(all(r.values()) and s.detection.present_fraction == 1 for r, s in zip(rows, items)) / len(items)
    return out


@dataclass
class Report:
    """Scores of a list of videos: overall, trained vs held-out combinations, per word, per combination."""

    items: list[Scored]
    label: str = ""
    seconds: float = 0.0

    def summary(self, split: str | None = None) -> dict[str, Any]:
        """Metrics over every video, or over one split (``train`` / ``heldout``)."""
        return _metrics([s for s in self.items if split is None or s.split == split])

    def per_word(self) -> dict[str, dict[str, Any]]:
        """Metrics of the videos whose prompt has each colour, shape and direction."""
        out = {}
        for key, words in (("color", COLORS), ("shape", SHAPES), ("direction", DIRECTIONS)):
            for word in words:
                chosen = [s for s in self.items if getattr(s, key) == word]
                if chosen:
                    out[word] = _metrics(chosen)
        return out

    def per_combo(self) -> dict[str, dict[str, Any]]:
        """Metrics per prompt (with its split), in the order of :data:`ALL_COMBOS`."""
        groups: dict[str, list[Scored]] = {}
        for s in self.items:
            groups.setdefault(s.prompt, []).append(s)
        order = {prompt_of(*c): i for i, c in enumerate(ALL_COMBOS)}
        return {p: {"split": g[0].split, **_metrics(g)} for p, g in sorted(groups.items(), key=lambda kv: order[kv[0]])}

    def confusion(self, key: str) -> dict[str, dict[str, int]]:
        """Counts of detected values per expected value of ``key`` (color, shape or direction)."""
        out: dict[str, dict[str, int]] = {}
        for s in self.items:
            got = str(getattr(s.detection, key) or "absent")
            row = out.setdefault(getattr(s, key), {})
            row[got] = row.get(got, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "seconds": round(self.seconds, 3),
            "metrics": {m: _METRIC_HELP[m] for m in METRICS},
            "all": self.summary(),
            "train": self.summary("train"),
            "heldout": self.summary("heldout"),
            "per_word": self.per_word(),
            "per_combo": self.per_combo(),
            "confusion": {k: self.confusion(k) for k in ("color", "shape", "direction")},
            "videos": [
                {"prompt": s.prompt, "split": s.split, "seed": s.seed, **s.detection.summary()} for s in self.items
            ],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self, worst: int = 5) -> str:
        """A text table: splits, words, the held-out combinations and up to ``worst`` imperfect trained ones."""

        def pct(v: Any) -> str:
            return "    -" if v is None else f"{100 * v:5.1f}"

        def line(name: str, m: dict[str, Any]) -> str:
            return f"{name:<32} {m['n']:>5} " + " ".join(f"{pct(m[k]):>9}" for k in METRICS)

        head = f"{'':<32} {'n':>5} " + " ".join(f"{k:>9}" for k in METRICS)
        out = [f"{self.label or 'shapes report'} ({len(self.items)} videos, {self.seconds:.1f} s)", head]
        for split in (None, "train", "heldout"):
            out.append(line(split or "all", self.summary(split)))
        out.append("")
        out.extend(line(word, m) for word, m in self.per_word().items())
        combos = self.per_combo()
        held = {p: m for p, m in combos.items() if m["split"] == "heldout"}
        if held:
            out += ["", "held-out combinations:"]
            out.extend(line(p, m) for p, m in held.items())
        failing = [(p, m) for p, m in combos.items() if m["split"] == "train" and m["all"] < 1]
        if failing and worst:
            failing.sort(key=lambda kv: kv[1]["all"])
            out += ["", f"worst trained combinations ({min(worst, len(failing))} of {len(failing)} imperfect):"]
            out.extend(line(p, m) for p, m in failing[:worst])
        out.append("(percent; " + "; ".join(f"{k}: {v}" for k, v in _METRIC_HELP.items()) + ")")
        return "\n".join(out)


def fidelity_summary(fidelity: list[dict[str, float]]) -> dict[str, float]:
    """Frame 0 against the picture over a run: mean PSNRs and how often frame 0 is within 1 dB of the VAE's own; with
    keyframes, the percentage of videos whose object moves from one picture to the other (``track``)."""
    frame0 = np.array([f["frame0"] for f in fidelity])
    vae_best = np.array([f["vae"] for f in fidelity])
    return {
        "frame0_psnr": round(float(np.mean(frame0)), 2),
        "vae_psnr": round(float(np.mean(vae_best)), 2),
        "within_1db": round(100 * float(np.mean(frame0 >= vae_best - 1)), 1),
        "seam": round(float(np.median([f["seam"] for f in fidelity])), 2),
        "videos": len(fidelity),
        **({"track": round(100 * float(np.mean([f["track"] for f in fidelity])), 1)} if "track" in fidelity[0] else {}),
    }
