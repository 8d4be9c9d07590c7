"""Global motion for the ``drift`` noise prior: measured in clips, predicted from prompts.

Go-with-the-Flow (Burgert et al., CVPR 2025) fine-tunes a video model on noise warped along
each training clip's motion, so that at sampling time noise warped along a chosen motion
yields that motion. videodiff uses the simplest warp, one global translation per video
(``drift`` noise in :mod:`videodiff.noise`):

1. :func:`estimate_motion` measures each training clip's global motion on its latents, by
   phase correlation between frames ``gap`` apart;
2. ``videodiff train --noise drift`` noises every clip with noise drifting along its own motion;
3. :class:`MotionPrior` is a linear map from the prompt's text embedding to that motion,
   fitted in closed form (ridge regression) to the training captions when training ends and
   saved beside the motion modules (``motion_prior.safetensors``), so the prompt chooses the
   drift at sampling time ("moving left" drifts the noise left); ``--motion DX,DY`` overrides it.

Units: the public unit is pixels per frame, ``(dx, dy)``, x to the right and y down;
the noise works in latent cells per frame ``(dy, dx)`` (pixels / the VAE's scale factor).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from videodiff.errors import UserError

PRIOR_FILE = "motion_prior.safetensors"
RIDGE = 1e-5  # ridge strength per sample on standardised features: direction words are faint in a frozen encoder


def estimate_motion(latents: torch.Tensor, gap: int = 4) -> torch.Tensor:
    """Global motion of each video of ``latents`` (``[b c f h w]``) in cells per frame, ``[b 2]`` as ``(dy, dx)``.

    Phase correlation of every frame with the one ``gap`` frames later (fewer frames: the
    first with the last), the normalised cross-power spectra averaged over frame pairs
    before the inverse transform, with a parabola through the peak for sub-cell shifts.
    Shifts up to half the frame per ``gap`` frames are measured; one frame gives zero.
    """
    b, _, f, h, w = latents.shape
    if f < 2:
        return torch.zeros(b, 2)
    gap = min(gap, f - 1)
    x = latents.detach().float().cpu()
    x = x - x.mean(dim=(-2, -1), keepdim=True)  # the background level is not motion
    spec = torch.fft.fft2(x)
    cross = (spec[:, :, gap:] * spec[:, :, :-gap].conj()).sum(1)  # [b pairs h w]: later against earlier
    cross = cross / (cross.abs() + 1e-8)
    surface = torch.fft.ifft2(cross.mean(1)).real  # [b h w]: a peak at the shift
    out = torch.zeros(b, 2)
    for i in range(b):
        peak = int(surface[i].argmax())
        py, px = divmod(peak, w)
        out[i, 0] = _refine(surface[i, :, px], py) / gap
        out[i, 1] = _refine(surface[i, py, :], px) / gap
    return out


def _refine(line: torch.Tensor, k: int) -> float:
    """The peak at index ``k`` of a circular ``line`` to a fraction of a cell, as a signed shift."""
    n = line.numel()
    left, mid, right = float(line[(k - 1) % n]), float(line[k]), float(line[(k + 1) % n])
    curve = left - 2 * mid + right
    offset = 0.5 * (left - right) / curve if curve < 0 else 0.0
    shift = k + max(-0.5, min(0.5, offset))
    return shift - n if shift > n / 2 else shift


def prompt_features(context: torch.Tensor) -> torch.Tensor:
    """What the prior reads from a text embedding ``[b n d]``: the mean over its tokens, ``[b d]``."""
    return context.detach().double().cpu().mean(1)


class MotionPrior:
    """``motion = standardise(features) @ weight + bias``: pixels per frame ``(dx, dy)`` from a prompt."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.mean, self.scale, self.weight, self.bias = (t.double() for t in (mean, scale, weight, bias))

    @classmethod
    def fit(cls, features: torch.Tensor, motion: torch.Tensor, ridge: float = RIDGE) -> MotionPrior:
        """Ridge regression of ``motion`` (``[n 2]``) on ``features`` (``[n d]``), in closed form."""
        x, y = features.double(), motion.double()
        if x.shape[0] < 2:
            raise UserError("a motion prior needs at least two captioned clips")
        mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
        z = (x - mean) / scale
        y_mean = y.mean(0)
        gram = z.T @ z + ridge * x.shape[0] * torch.eye(z.shape[1], dtype=z.dtype)
        weight = torch.linalg.solve(gram, z.T @ (y - y_mean))
        return cls(mean, scale, weight, y_mean)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """``[b 2]`` motion, pixels per frame ``(dx, dy)``."""
        return ((features.double() - self.mean) / self.scale) @ self.weight + self.bias

    def save(self, path: Path, info: dict | None = None) -> Path:
        from safetensors.torch import save_file

        from videodiff.io.atomic import atomic_file

        tensors = {"mean": self.mean, "scale": self.scale, "weight": self.weight, "bias": self.bias}
        with atomic_file(Path(path)) as tmp:
            save_file(
                {k: v.float().contiguous() for k, v in tensors.items()},
                str(tmp),
                metadata={"format": "videodiff-motion-prior", "info": json.dumps(info or {})},
            )
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> MotionPrior:
        """Read a prior written by :meth:`save`; anything else is a one-line error."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as fh:
                if (fh.metadata() or {}).get("format") != "videodiff-motion-prior":
                    raise UserError(f"{path}: not a videodiff motion prior")
                t = {k: fh.get_tensor(k) for k in ("mean", "scale", "weight", "bias")}
        except (OSError, SafetensorError, KeyError) as exc:
            raise UserError(f"{path}: not a readable motion prior ({exc})") from None
        d = t["mean"].shape[0] if t["mean"].ndim == 1 else -1
        if (
            d < 1
            or t["scale"].shape != (d,)
            or t["weight"].shape != (d, 2)
            or t["bias"].shape != (2,)
            or not all(torch.isfinite(v).all() for v in t.values())
        ):
            raise UserError(f"{path}: motion prior tensors have the wrong shapes or are not finite")
        return cls(t["mean"], t["scale"], t["weight"], t["bias"])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])
