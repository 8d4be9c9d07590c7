"""Upscaling (``--upscale MODEL_FILE``, ``--upscale-factor S``): every frame enlarged, by a model or by Lanczos.

With a model file (:mod:`videodiff.post.upscalers`: ESRGAN/RRDBNet or Real-ESRGAN Compact, ``.safetensors`` or a
weights-only ``.pth``/``.pt``), frames run through it in overlapping tiles (:func:`tiled`: memory bounded by the
tile, not the frame), blended where they overlap; a factor other than the model's scale resizes its output with
Lanczos to ``round(h * S) x round(w * S)``. Without a model, Lanczos (PIL) makes the size. Other architectures
load through spandrel when ``import spandrel`` works (an optional extra, never needed).
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from videodiff.errors import UserError

if TYPE_CHECKING:
    import torch

    from videodiff.post.stage import Clip
    from videodiff.post.upscaler_keys import UpscalerInfo

__all__ = [
    "Upscale",
    "check_size",
    "check_upscaler",
    "lanczos",
    "load_upscaler",
    "read_weights",
    "target_size",
    "tiled",
]

SUFFIXES = (".safetensors", ".pth", ".pt")
MAX_SIDE = 8192  # pixels a side an upscaled frame may have (what videodiff reads back, media.budget)
MAX_BYTES = 4 << 30  # the upscaled clip, uint8, held whole for the writer
TILE = 128  # input pixels per tile's core: a 4x RRDBNet tile's features stay near 100 MB
OVERLAP = 16  # input pixels of context each side; outputs cross-fade over the middle half of the overlap


def target_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """The frame size ``factor`` times ``height x width`` makes: ``(round(h * S), round(w * S))``."""
    return max(1, round(height * factor)), max(1, round(width * factor))


def check_size(frames: int, height: int, width: int, factor: float) -> None:
    """Refuse (one line) an upscaled clip wider or taller than :data:`MAX_SIDE` or larger than :data:`MAX_BYTES`."""
    h, w = target_size(height, width, factor)
    if max(h, w) > MAX_SIDE:
        raise UserError(
            f"upscaling {width}x{height} by {factor:g} makes {w}x{h} frames; at most {MAX_SIDE} pixels a side"
        )
    if frames * h * w * 3 > MAX_BYTES:
        raise UserError(
            f"upscaling {frames} frames of {width}x{height} by {factor:g} makes {frames * h * w * 3 / 2**30:.1f} GiB "
            f"of frames; at most {MAX_BYTES / 2**30:g} GiB: fewer frames or a smaller factor"
        )


def lanczos(frames: np.ndarray, size: tuple[int, int], method: str = "lanczos") -> np.ndarray:
    """uint8 ``[f h w 3]`` resized to ``size`` (height, width) with PIL's ``method`` (lanczos, bicubic, nearest)."""
    from PIL import Image

    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [f h w 3], got {frames.dtype} {tuple(frames.shape)}")
    how = {
        "lanczos": Image.Resampling.LANCZOS,
        "bicubic": Image.Resampling.BICUBIC,
        "nearest": Image.Resampling.NEAREST,
    }
    height, width = size
    out = np.empty((frames.shape[0], height, width, 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize((width, height), how[method]))
    return out


# ---- model files: checked from their names and shapes, then loaded


def _refusal(path: Path, exc: BaseException) -> UserError:
    full = str(exc)
    if any(m in full for m in ("weights_only", "Weights only", "Unsupported global", "GLOBAL")):
        return UserError(f"--upscale {path}: refused, it needs arbitrary code to load (convert it to .safetensors)")
    line = (full.strip().splitlines() or [type(exc).__name__])[0][:200]
    return UserError(f"--upscale {path}: not a readable weights file ({line})")


def _unwrap(data: Any, path: Path) -> dict[str, Any]:
    """A pickle's state dict: bare, or under Real-ESRGAN's ``params_ema``/``params`` or ``state_dict``."""
    import torch

    for key in ("params_ema", "params", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"--upscale {path}: does not hold a state dict of tensors")
    return data


def read_weights(path: str | Path, *, shapes_only: bool = False) -> dict[str, Any]:
    """The tensors of an upscaler file (``{name: shape}`` with ``shapes_only``; torch-free for ``.safetensors``);
    one-line :class:`UserError` for a missing, unreadable, truncated file, or a pickle that needs code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--upscale {path}: {'not a regular file' if path.exists() else 'no such file'}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"--upscale {path}: use a .safetensors, .pth or .pt upscaler file, got {suffix or 'no suffix'}")
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt" if not shapes_only else "numpy") as fh:
                if shapes_only:
                    return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
                return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except Exception as exc:  # noqa: BLE001 - any failure here is a bad file, reported in one line
            raise _refusal(path, exc) from None
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=shapes_only or None)
    except Exception as exc:  # noqa: BLE001
        if shapes_only and "mmap" in str(exc):  # the legacy (not zip) format cannot be mapped
            return read_weights(path)
        raise _refusal(path, exc) from None
    state = _unwrap(data, path)
    return {k: tuple(v.shape) for k, v in state.items()} if shapes_only else state


def check_upscaler(path: str | Path) -> UpscalerInfo:
    """What ``path`` holds, from names and shapes (no weights read from a ``.safetensors``); a one-line
    :class:`UserError` for a bad file or one that is no upscaler this package (or spandrel) loads."""
    from videodiff.post.upscaler_keys import NotAnUpscaler, describe

    shapes = read_weights(path, shapes_only=True)
    try:
        return describe(shapes)
    except NotAnUpscaler as exc:
        if _spandrel() is not None:
            return _spandrel_info(path)
        raise UserError(f"--upscale {path}: {exc}") from None


@lru_cache(maxsize=2)
def _load_cached(path: str, digest: str) -> tuple[torch.nn.Module, UpscalerInfo]:
    from videodiff.post.upscalers import NotAnUpscaler, build

    try:
        return build(read_weights(path))
    except NotAnUpscaler as exc:
        if _spandrel() is not None:
            return _spandrel_load(Path(path))
        raise UserError(f"--upscale {path}: {exc}") from None


def load_upscaler(path: str | Path) -> tuple[torch.nn.Module, UpscalerInfo, str]:
    """The network in ``path`` (eval mode, float32, CPU), what it is, and the file's SHA-256 (the cache's key:
    a batch loads each file once)."""
    from videodiff.media.images import file_sha256

    check_upscaler(path)
    digest = file_sha256(path)
    net, info = _load_cached(str(Path(path).resolve()), digest)
    return net, info, digest


def _spandrel() -> Any:
    """spandrel, where it is installed and imports (an optional extra for architectures not written here)."""
    try:
        import spandrel
    except Exception:  # noqa: BLE001 - absent, or broken on this machine (torchvision): the families here only
        return None
    return spandrel


def _spandrel_load(path: Path) -> tuple[Any, UpscalerInfo]:
    from videodiff.post.upscaler_keys import UpscalerInfo

    try:
        descriptor = _spandrel().ModelLoader().load_from_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"--upscale {path}: neither family written here, and spandrel cannot load it ({exc})") from None
    if getattr(descriptor, "input_channels", 3) != 3 or getattr(descriptor, "output_channels", 3) != 3:
        raise UserError(f"--upscale {path}: spandrel loads it, but it is no RGB-to-RGB image model")
    arch = getattr(getattr(descriptor, "architecture", None), "id", "spandrel")
    info = UpscalerInfo(f"spandrel:{arch}", int(descriptor.scale), 0, 0, layout="spandrel")
    model = descriptor.model.eval()
    return model, info


def _spandrel_info(path: str | Path) -> UpscalerInfo:
    return _spandrel_load(Path(path))[1]


# ---- running a network over frames in tiles


def _ramp(length: int, lead: bool, trail: bool, overlap: int) -> np.ndarray:
    """One axis of a tile's blending weight: 0 over the outer quarter of a 2*overlap-wide seam, rising linearly
    to 1 across its middle half (the neighbour's falls the same way, so the two sum to 1); 1 at frame edges."""
    d = np.arange(length, dtype=np.float32) + 0.5
    w = np.ones(length, np.float32)
    if overlap > 0:
        rise = lambda x: np.clip((x - overlap / 2) / overlap, 0.0, 1.0)  # noqa: E731
        if lead:
            w = np.minimum(w, rise(d))
        if trail:
            w = np.minimum(w, rise(d[::-1]))
    return w


def _starts(size: int, tile: int) -> list[int]:
    return list(range(0, size, tile)) if size > tile else [0]


def tiled(
    net: Any, frame: np.ndarray, scale: int, *, tile: int = TILE, overlap: int = OVERLAP, multiple: int = 1,
    device: str = "cpu",
) -> np.ndarray:  # fmt: skip
    """uint8 ``[h w 3]`` -> uint8 ``[h*scale w*scale 3]`` through ``net`` (``[1 3 h w]`` in [0, 1] -> ``[1 3 h*s
    w*s]``), ``tile`` input pixels at a time with ``overlap`` pixels of context each side, cross-faded. Tiles are
    reflected to a multiple of ``multiple`` (pixel-unshuffling nets) and cropped back. Exact (as one tile) when
    the net's receptive radius is at most ``overlap / 2``."""
    import torch

    if frame.ndim != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 [h w 3], got {frame.dtype} {tuple(frame.shape)}")
    h, w = frame.shape[:2]
    acc = np.zeros((h * scale, w * scale, 3), np.float32)
    total = np.zeros((h * scale, w * scale, 1), np.float32)
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float().div_(255)  # [1 3 h w]
    for top in _starts(h, tile):
        for left in _starts(w, tile):
            y0, y1 = max(0, top - overlap), min(h, top + tile + overlap)
            x0, x1 = max(0, left - overlap), min(w, left + tile + overlap)
            part = x[..., y0:y1, x0:x1]
            ph, pw = (-(y1 - y0)) % multiple, (-(x1 - x0)) % multiple
            if ph or pw:
                part = torch.nn.functional.pad(
                    part, (0, pw, 0, ph), mode="reflect" if min(y1 - y0, x1 - x0) > max(ph, pw) else "replicate"
                )
            with torch.no_grad():
                out = net(part.to(device)).float().clamp_(0, 1)[0, :, : (y1 - y0) * scale, : (x1 - x0) * scale]
            out = out.permute(1, 2, 0).cpu().numpy()
            wy = _ramp(out.shape[0], y0 > 0, y1 < h, overlap * scale)
            wx = _ramp(out.shape[1], x0 > 0, x1 < w, overlap * scale)
            weight = (wy[:, None] * wx[None, :])[..., None]
            acc[y0 * scale : y1 * scale, x0 * scale : x1 * scale] += out * weight
            total[y0 * scale : y1 * scale, x0 * scale : x1 * scale] += weight
    acc /= total  # in place: a 2048x2048 frame's float copies are 48 MiB each
    acc *= 255
    np.rint(acc, out=acc)
    np.clip(acc, 0, 255, out=acc)
    return acc.astype(np.uint8)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Upscale:
    """The post step: frames ``factor`` times larger, through ``model`` (a file) when one is given, else Lanczos.
    ``factor`` ``None``: the model's scale. Pinned pictures are dropped (no later step uses them)."""

    name = "upscale"

    def __init__(self, model: str | None = None, factor: float | None = None, *, tile: int = TILE,
                 overlap: int = OVERLAP) -> None:  # fmt: skip
        if model is None and factor is None:
            raise ValueError("an upscale step needs a model or a factor")
        self.model, self.factor, self.tile, self.overlap = model, factor, tile, overlap
        self._record: dict[str, Any] = {}

    def __call__(self, clip: Clip) -> Clip:
        f, h, w = clip.frames.shape[:3]
        if self.model is None:
            size = target_size(h, w, float(self.factor))
            self._record = {"model": None, "factor": self.factor, "method": "lanczos", "size": [size[1], size[0]]}
            return replace(clip, frames=lanczos(clip.frames, size), pictures={})
        import torch

        net, info, digest = load_upscaler(self.model)
        device = _device()
        net = net.to(device)
        factor = float(self.factor) if self.factor is not None else float(info.scale)
        size = target_size(h, w, factor)
        out = np.empty((f, *size, 3), np.uint8)
        with torch.inference_mode():
            for i, frame in enumerate(clip.frames):
                big = tiled(net, frame, info.scale, tile=self.tile, overlap=self.overlap, multiple=info.unshuffle,
                            device=device)  # fmt: skip
                out[i] = big if big.shape[:2] == size else lanczos(big[None], size)[0]
        self._record = {
            "model": str(Path(self.model).resolve()), "sha256": digest, "architecture": info.family,
            "model_scale": info.scale, "factor": self.factor if self.factor is not None else info.scale,
            "method": "model" if math.isclose(factor, info.scale) else "model+lanczos", "size": [size[1], size[0]],
            "tile": self.tile, "overlap": self.overlap, "device": device,
        }  # fmt: skip
        return replace(clip, frames=out, pictures={})

    def record(self) -> dict[str, Any]:
        return dict(self._record)
