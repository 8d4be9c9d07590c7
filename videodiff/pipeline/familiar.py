"""Pictures far from a model's world: img2vid's pictures and vid2vid's clip measured by the VAE's round trip.

The rule: a picture fitted to the render size, encoded and decoded by the model's VAE, differs from itself by its
round-trip error: the mean absolute difference over its pixels and channels, on the 0-255 scale. A VAE trained on a
world rebuilds that world's pictures closely and others poorly, so a picture whose error is above the threshold the
model records (``videodiff.json``: ``{"pictures": {"roundtrip_error": 20}}``) gets a notice: the model will redraw
it as its own world. Models that record no threshold, and models given another VAE (``--vae``), get no notice; the
built-in model's threshold and the margins it was measured with are in docs/guides/builtin-model.md.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from videodiff import vae
from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.weights.hub import DEFAULTS_FILE


@functools.lru_cache(maxsize=8)
def recorded_threshold(root: str) -> float | None:
    """The round-trip error above which a picture is far from the world of the model folder ``root``
    (its ``videodiff.json``'s ``pictures.roundtrip_error``), or ``None`` when it records none."""
    path = Path(root) / DEFAULTS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    rule = data.get("pictures") if isinstance(data, dict) else None
    if rule is None:
        return None
    value = rule.get("roundtrip_error") if isinstance(rule, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"{path}: pictures.roundtrip_error must be a number above 0, got {value!r}")
    return float(value)


def threshold(pipe) -> float | None:
    """The loaded model's threshold (:func:`recorded_threshold`): ``None`` for a model that is not a local folder, and
    for a model whose VAE was replaced (the threshold was measured with its own)."""
    sources = pipe.parts.sources
    model = str(sources.get("model", {}).get("id", ""))
    if "vae" in sources or not model or not Path(model).expanduser().is_dir():
        return None
    return recorded_threshold(str(Path(model).expanduser().resolve()))


def roundtrip_errors(pipe, pictures: np.ndarray, latents: torch.Tensor) -> np.ndarray:
    """``[n]``: each picture's round-trip error: uint8 ``pictures`` ``[n h w 3]`` against its ``latents``
    (``[1 c n h w]``, as :meth:`~videodiff.pipelines.VideoPipeline.encode_pictures` gives them) decoded."""
    decoded = vae.to_uint8(vae.decode(pipe.vae, latents.to(pipe.device, pipe.dtype), vae.default_chunk(pipe.device)))[0]
    return np.abs(decoded.astype(np.float32) - pictures.astype(np.float32)).mean(axis=(1, 2, 3))


def tell_unfamiliar(pipe, pictures: np.ndarray, latents: torch.Tensor, names: list[str]) -> float | None:
    """Notice, in one line, when ``pictures`` (uint8 ``[n h w 3]``; ``latents`` their encoding ``[1 c n h w]``) are
    far from the model's world by the stated rule, naming the farthest (``names``: one per picture, e.g.
    ``"the picture"``, ``"the clip's frame 3"``). Returns the largest error, or ``None`` when the model states no
    rule (nothing is decoded then)."""
    limit = threshold(pipe)
    if limit is None:
        return None
    errors = roundtrip_errors(pipe, pictures, latents)
    worst = int(errors.argmax())
    if errors[worst] > limit:
        notice(
            f"{names[worst]} is far from anything this model was trained on: its VAE round trip is off by "
            f"{errors[worst]:.1f} (mean absolute, 0-255; the model's own pictures stay under {limit:g}), so the "
            "model will redraw it as its own world; use a model trained on such pictures"
        )
    return float(errors[worst])
