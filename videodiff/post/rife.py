"""RIFE v4.x frame interpolation (``--interpolate-method rife --interpolate-model FILE``).

IFNet (Huang et al., "Real-Time Intermediate Flow Estimation for Video Frame Interpolation", ECCV 2022), written
here from its description and from the key layout of the released v4.x ``flownet.pkl`` files (no reference
implementation installs here; the tests check loading by key, shapes and ranges, not parity). A coarse-to-fine
stack of IFBlocks estimates the flows from the in-between time ``t`` to both frames and a fusion mask: block ``i``
of ``n`` sees the inputs downscaled by ``2 ** (n - 1 - i)``, the earlier blocks' flows and both frames warped
along them, and adds a flow correction. Each block is ``conv0`` (two stride-2 convolutions), ``convblock`` (eight
3x3 convolutions) and ``lastconv`` (a transposed convolution, from v4.5 followed by a pixel shuffle) giving four
flow channels, a mask channel and (v4.21 on) features the next block reads. From v4.7 an ``encode`` head gives
each frame feature channels that are warped beside it.

What differs between the released versions is read from the file's keys and shapes (:func:`layout_of`), never
from its name: PReLU or LeakyReLU activations (``conv0.0.1.weight``), one residual over the whole ``convblock``
or one per convolution with a learned scale (``convblock.0.beta``), the encoder's layers, the channels passed on
between blocks, and the block count (4, or 5 from v4.25, whose coarsest block sees 1/16 of the frame). The
v4.0 fallback that re-runs the first block at twice the scale on large motions, and ensembling, are not done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from videodiff.errors import UserError
from videodiff.settings.post import RIFE_SUFFIXES

__all__ = ["IFNet", "Layout", "RIFE_SUFFIXES", "interpolate_pair", "layout_of", "load_rife", "read_weights"]

_BLOCK = re.compile(r"^block(\d+)\.")
_ENCODER_KERNELS = {3: "conv", 4: "up"}  # 3x3 convolutions (the first with stride 2), one 4x4 transposed (x2)


@dataclass(frozen=True)
class Layout:
    """What a RIFE v4.x file holds: per block its input channels and width, and the network-wide choices."""

    inputs: tuple[int, ...]  # each block's input channels (its conv0's), the flow's 4 included after block 0
    widths: tuple[tuple[int, int], ...]  # each block's conv0 widths (c // 2, c)
    outputs: tuple[int, ...]  # each block's lastconv channels (after the pixel shuffle)
    convs: int  # convolutions in each convblock
    prelu: bool  # PReLU activations (v4.0-4.1); LeakyReLU(0.2) otherwise
    per_conv_residual: bool  # ResConv units with a learned scale (v4.5 on); one residual over the stack otherwise
    shuffle: bool  # lastconv is a transposed convolution then a pixel shuffle (v4.5 on)
    encoder: tuple[tuple[str, str, int, int, bool], ...]  # (key, kind, in, out, activation after) per layer
    features: int  # channels the encoder gives each frame (0: no encoder)
    carried: int  # block features passed on to the next block (v4.21 on)

    @property
    def label(self) -> str:
        """The released versions this layout matches (for messages and the sidecar)."""
        if len(self.inputs) == 5:
            return "v4.25-4.26"
        if self.carried:
            return "v4.21-4.23"
        if self.features:
            return "v4.7-4.20, 4.24"
        if self.prelu:
            return "v4.0-4.1"
        return "v4.5-4.6" if self.shuffle else "v4.2-4.4"

    @property
    def multiple(self) -> int:
        """Frames are padded to a multiple of this: the coarsest block downscales by ``2 ** (n - 1)``, then 4."""
        return 4 * 2 ** (len(self.inputs) - 1)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file, or a pickle (``.pkl``/``.pth``/``.pt``/``.ckpt``) read with
    ``torch.load(weights_only=True)`` so that no code in it runs, as a state dict with the ``module.`` prefix
    the released files carry (a DataParallel save) removed."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in RIFE_SUFFIXES:
        raise UserError(
            f"{path}: a RIFE model is a {'/'.join(RIFE_SUFFIXES)} file, not {suffix or 'one without a suffix'}"
        )
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    else:
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure is a bad file, reported in one line
            full = str(exc)
            if any(m in full for m in ("weights_only", "Weights only", "Unsupported global", "GLOBAL")):
                raise UserError(
                    f"{path}: refused, it needs arbitrary code to load "
                    "(convert it to .safetensors with a tool you trust)"
                ) from None
            raise UserError(f"{path}: not a readable weights file ({_first_line(exc)})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{path}: does not hold a state dict of tensors, so it is not a RIFE model")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in data.items()}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def layout_of(state: dict[str, torch.Tensor], source: str = "the file") -> Layout:
    """The :class:`Layout` of a RIFE v4.x state dict (``module.`` prefix removed), or :class:`UserError` in one
    line naming what was found instead."""
    count = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK.match(k))), default=-1)
    if count not in (4, 5) or any(f"block{i}.conv0.0.0.weight" not in state for i in range(count)):
        found = ", ".join(sorted({k.split(".")[0] for k in state})[:6])
        raise UserError(
            f"{source}: not a RIFE v4.x IFNet (block0-block3 or block0-block4 with conv0/convblock/lastconv); "
            f"its top-level keys are {found or 'none'}"
        )
    shape = {k: tuple(v.shape) for k, v in state.items()}
    inputs, widths, outputs = [], [], []
    for i in range(count):
        first, second = shape[f"block{i}.conv0.0.0.weight"], shape.get(f"block{i}.conv0.1.0.weight", ())
        last = shape.get(f"block{i}.lastconv.0.weight") or shape.get(f"block{i}.lastconv.weight")
        if len(first) != 4 or len(second) != 4 or last is None or len(last) != 4:
            raise UserError(f"{source}: block{i} lacks conv0's two convolutions or lastconv; not a RIFE v4.x IFNet")
        inputs.append(first[1])
        widths.append((first[0], second[0]))
        outputs.append(last[1] // 4 if f"block{i}.lastconv.0.weight" in shape else last[1])
    shuffle = "block0.lastconv.0.weight" in shape
    per_conv = "block0.convblock.0.beta" in shape
    unit = r"\.conv\.weight$" if per_conv else r"\.0\.weight$"
    convs = len({k.split(".")[2] for k in shape if k.startswith("block0.convblock.") and re.search(unit, k)})
    encoder = _encoder_layout(shape, source)
    features = encoder[-1][3] if encoder else 0
    carried = inputs[1] - 12 - 2 * features
    if inputs[0] != 7 + 2 * features or carried not in (0, outputs[0] - 5) or len(set(inputs[1:])) != 1:
        raise UserError(
            f"{source}: IFNet blocks take {', '.join(map(str, inputs))} input channels, which no known RIFE v4.x "
            f"layout does with {features} encoder channels per frame"
        )
    if min(outputs) < 5:
        raise UserError(f"{source}: lastconv gives {min(outputs)} channels; RIFE v4.x gives flow (4) and a mask (1)")
    return Layout(
        tuple(inputs), tuple(widths), tuple(outputs), convs, "block0.conv0.0.1.weight" in shape, per_conv, shuffle,
        encoder, features, carried,
    )  # fmt: skip


def _encoder_layout(shape: dict[str, tuple[int, ...]], source: str) -> tuple[tuple[str, str, int, int, bool], ...]:
    """The ``encode`` layers: a head of ``cnn0..cnn3`` with LeakyReLU between them (v4.13 on), or a Sequential
    whose index gaps are the activations (v4.7-4.12)."""
    names = sorted({k[len("encode.") :].rsplit(".", 1)[0] for k in shape if k.startswith("encode.")})
    if not names:
        return ()
    head = all(n.startswith("cnn") for n in names)
    digits = [n[3:] if head else n for n in names]
    if not all(d.isdigit() for d in digits):
        raise UserError(f"{source}: encode has layers {', '.join(names)}; a RIFE encoder has cnn0.. or 0, 1, ..")
    order = [n for _, n in sorted(zip(map(int, digits), names, strict=True))]
    layers = []
    for pos, name in enumerate(order):
        weight = shape.get(f"encode.{name}.weight", ())
        kind = _ENCODER_KERNELS.get(weight[-1]) if len(weight) == 4 else None
        if kind is None:
            raise UserError(f"{source}: encode.{name} is not a RIFE encoder layer (shape {weight})")
        cin, cout = (weight[1], weight[0]) if kind == "conv" else (weight[0], weight[1])
        act = pos < len(order) - 1 and (head or str(int(name) + 1) not in names)
        layers.append((name, "first" if pos == 0 and kind == "conv" else kind, cin, cout, act))
    return tuple(layers)


def _act(channels: int, prelu: bool) -> nn.Module:
    return nn.PReLU(channels) if prelu else nn.LeakyReLU(0.2)


def _conv(cin: int, cout: int, stride: int, prelu: bool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), _act(cout, prelu))


class _ResConv(nn.Module):
    """A 3x3 convolution scaled per channel by ``beta`` plus its input, then LeakyReLU (v4.5 on)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x) * self.beta + x, 0.2)


class _Block(nn.Module):
    """One IFBlock: ``[b cin h w]`` inputs at full size (and the flow so far) -> flow ``[b 4 h w]`` (pixels at
    full size), mask logits ``[b 1 h w]`` and features ``[b k h w]``, estimated at ``1 / scale`` of the size."""

    def __init__(self, layout: Layout, index: int) -> None:
        super().__init__()
        half, c = layout.widths[index]
        prelu = layout.prelu
        self.conv0 = nn.Sequential(_conv(layout.inputs[index], half, 2, prelu), _conv(half, c, 2, prelu))
        units = [_ResConv(c) if layout.per_conv_residual else _conv(c, c, 1, prelu) for _ in range(layout.convs)]
        self.convblock = nn.Sequential(*units)
        self.stack_residual = not layout.per_conv_residual
        out = layout.outputs[index]
        up = nn.ConvTranspose2d(c, out * 4 if layout.shuffle else out, 4, 2, 1)
        self.lastconv = nn.Sequential(up, nn.PixelShuffle(2)) if layout.shuffle else up

    def forward(self, x: torch.Tensor, flow: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, ...]:
        h, w = x.shape[-2:]
        small = (h // int(scale), w // int(scale))
        x = F.interpolate(x, size=small, mode="bilinear", align_corners=False) if scale != 1 else x
        if flow is not None:
            flow = F.interpolate(flow, size=small, mode="bilinear", align_corners=False) / scale if scale != 1 else flow
            x = torch.cat((x, flow), 1)
        feat = self.conv0(x)
        out = self.convblock(feat)
        out = self.lastconv(out + feat if self.stack_residual else out)
        ratio = w / out.shape[-1]  # 2 * scale before v4.5, scale after: flows are in pixels of the full size
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return out[:, :4] * ratio, out[:, 4:5], out[:, 5:]


class _Head(nn.Module):
    """The frame encoder under its released names (``cnn0..`` or ``0, 2, ..``); LeakyReLU where ``layout`` says."""

    def __init__(self, layers: tuple[tuple[str, str, int, int, bool], ...]) -> None:
        super().__init__()
        self.order, self.acts = [name for name, *_ in layers], [act for *_, act in layers]
        for name, kind, cin, cout, _ in layers:
            layer = (
                nn.ConvTranspose2d(cin, cout, 4, 2, 1)
                if kind == "up"
                else nn.Conv2d(cin, cout, 3, 2 if kind == "first" else 1, 1)
            )
            self.add_module(name, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, act in zip(self.order, self.acts, strict=True):
            x = getattr(self, name)(x)
            x = F.leaky_relu(x, 0.2) if act else x
        return x


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``image`` ``[b c h w]`` sampled at ``x + flow(x)`` (``flow`` ``[b 2 h w]``, pixels): backward warping,
    bilinear, borders repeated."""
    b, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype), torch.arange(w, dtype=flow.dtype), indexing="ij")
    gx = (xs + flow[:, 0]) * (2 / max(w - 1, 1)) - 1
    gy = (ys + flow[:, 1]) * (2 / max(h - 1, 1)) - 1
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


class IFNet(nn.Module):
    """RIFE v4.x's IFNet built for a :class:`Layout`; its state dict keys are the released files' (``module.``
    removed). ``forward(img0, img1, t)``: frames ``[b 3 h w]`` in [0, 1], ``h`` and ``w`` multiples of
    ``layout.multiple``, ``t`` in (0, 1) -> the frame at ``t``, ``[b 3 h w]`` in [0, 1]."""

    def __init__(self, layout: Layout) -> None:
        super().__init__()
        self.layout = layout
        for i in range(len(layout.inputs)):
            self.add_module(f"block{i}", _Block(layout, i))
        if layout.encoder:
            self.encode = _Head(layout.encoder)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, t: float) -> torch.Tensor:
        if img0.ndim != 4 or img0.shape != img1.shape or img0.shape[1] != 3:
            raise ValueError(f"frames must be [b 3 h w] alike, got {tuple(img0.shape)} and {tuple(img1.shape)}")
        lay, (b, _, h, w) = self.layout, img0.shape
        stamp = img0.new_full((b, 1, h, w), float(t))
        f0 = self.encode(img0) if lay.features else None
        f1 = self.encode(img1) if lay.features else None
        flow = mask = feat = None
        warped0, warped1 = img0, img1
        count = len(lay.inputs)
        for i in range(count):
            block, scale = getattr(self, f"block{i}"), 2 ** (count - 1 - i)
            if flow is None:
                parts = [img0, img1, *([f0, f1] if f0 is not None else []), stamp]
                flow, mask, feat = block(torch.cat(parts, 1), None, scale)
            else:
                own = [warp(f0, flow[:, :2]), warp(f1, flow[:, 2:4])] if f0 is not None else []
                parts = [warped0, warped1, *own, stamp, mask, *([feat[:, : lay.carried]] if lay.carried else [])]
                delta, new_mask, feat = block(torch.cat(parts, 1), flow, scale)
                flow = flow + delta
                mask = new_mask if lay.features else mask + new_mask  # v4.0-4.6 add up the mask logits
            warped0, warped1 = warp(img0, flow[:, :2]), warp(img1, flow[:, 2:4])
        weight = torch.sigmoid(mask)
        return (warped0 * weight + warped1 * (1 - weight)).clamp(0, 1)


def load_rife(path: str | Path) -> IFNet:
    """The IFNet in ``path`` (:func:`read_weights`), every key matched with its shape, in eval mode; a file that
    is not a RIFE v4.x IFNet is refused in one line naming what was found."""
    state = read_weights(path)
    net = IFNet(layout_of(state, str(path)))
    expected = net.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"{path}: keys do not match a RIFE {net.layout.label} IFNet: {len(missing)} missing "
            f"({', '.join(missing[:3]) or '-'}), {len(unexpected)} unexpected ({', '.join(unexpected[:3]) or '-'})"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise UserError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, "
                f"a RIFE {net.layout.label} IFNet needs {tuple(expected[key].shape)}"
            )
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval().requires_grad_(False)


@torch.inference_mode()
def interpolate_pair(net: IFNet, a: np.ndarray, b: np.ndarray, times: list[float]) -> list[np.ndarray]:
    """The frames at each of ``times`` between uint8 ``[h w 3]`` frames ``a`` (t = 0) and ``b`` (t = 1): padded
    (zeros, as the released inference pads) to a multiple of ``net.layout.multiple`` and cropped back."""
    h, w = a.shape[:2]
    m = net.layout.multiple
    pad = (0, -w % m, 0, -h % m)
    x0, x1 = (
        F.pad(torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)[None].float() / 255, pad) for f in (a, b)
    )
    out = []
    for t in times:
        y = net(x0, x1, t)[0, :, :h, :w]
        out.append((y * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
    return out
