"""Upscaler files' names and shapes, torch-free: which family (:func:`describe`), its sizes, and the names
BasicSR gives the original ESRGAN layout (:func:`esrgan_to_basicsr`). The networks are
:mod:`videodiff.post.upscalers`; the layouts are described there."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["NotAnUpscaler", "UpscalerInfo", "describe", "esrgan_to_basicsr", "expected_shapes"]

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class UpscalerInfo:
    """What a state dict holds: its family (``esrgan`` or ``compact``), scale and sizes."""

    family: str
    scale: int
    features: int  # nf
    blocks: int  # RRDB blocks (esrgan) or body convs between the first and the last (compact)
    growth: int = 0  # RRDB's gc (esrgan)
    unshuffle: int = 1  # esrgan: the input is pixel-unshuffled by this first (x2: 2, x1: 4)
    upsamples: int = 2  # esrgan: x2 nearest upsamplings (4x for the released files)
    layout: str = ""  # "basicsr" or "esrgan" (names), "compact"

    def context(self) -> int:
        """Input pixels on each side that reach an output pixel (its receptive radius): tiles whose overlap is at
        least twice this give the untiled frames; RRDBNet's reaches further than tiles hold, so tiles are blended."""
        if self.family == "compact":
            return self.blocks + 2
        return 1 + 15 * self.blocks + 1 + 4


_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)")
_OLD_TOP = re.compile(r"model\.(\d+)\.(weight|bias)")


def _old_tail(keys: Mapping[str, object]) -> list[int]:
    """The original layout's ``model.<i>`` conv indices after the body (upsampling convs, then hr and last)."""
    return sorted({int(m[1]) for k in keys if (m := _OLD_TOP.fullmatch(k)) and int(m[1]) > 1})


def esrgan_to_basicsr(state: Mapping[str, Any]) -> dict[str, Any]:
    """The original ESRGAN names (``model.0``, ``model.1.sub.N.RDBK.convJ.0``, ...) as BasicSR's."""
    body = {int(m[1]) for k in state if (m := re.fullmatch(r"model\.1\.sub\.(\d+)\.(weight|bias)", k))}
    tail = _old_tail(state)
    names = {0: "conv_first"} | {i: f"conv_up{n + 1}" for n, i in enumerate(tail[:-2])}
    names |= {tail[-2]: "conv_hr", tail[-1]: "conv_last"} if len(tail) >= 2 else {}
    out = {}
    for key, value in state.items():
        if m := _OLD_RDB.fullmatch(key):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        elif (m := re.fullmatch(r"model\.1\.sub\.(\d+)\.(weight|bias)", key)) and int(m[1]) == max(body, default=-1):
            out[f"conv_body.{m[2]}"] = value
        elif (m := _OLD_TOP.fullmatch(key)) and int(m[1]) in names:
            out[f"{names[int(m[1])]}.{m[2]}"] = value
        else:
            out[key] = value  # reported by the strict load
    return out


class NotAnUpscaler(ValueError):
    """The names and shapes are neither family's (the message says what was found)."""


def describe(shapes: Shapes) -> UpscalerInfo:
    """The family and sizes of a state dict from its names and shapes alone, every tensor checked against the
    network they imply; :class:`NotAnUpscaler` otherwise."""
    if "model.0.weight" in shapes and "model.1.sub.0.RDB1.conv1.0.weight" in shapes:
        return _complete(_rrdb(shapes, "esrgan"), esrgan_to_basicsr(shapes))
    if "conv_first.weight" in shapes and "body.0.rdb1.conv1.weight" in shapes:
        return _complete(_rrdb(shapes, "basicsr"), shapes)
    if "body.0.weight" in shapes and "body.1.weight" in shapes:
        return _complete(_compact(shapes), shapes)
    shown = ", ".join(sorted(shapes)[:3]) or "no tensors"
    raise NotAnUpscaler(
        f"neither an ESRGAN/RRDBNet nor a Real-ESRGAN Compact upscaler ({len(shapes)} tensors: {shown}"
        + (", ..." if len(shapes) > 3 else "")
        + ")"
    )


def _shape(shapes: Shapes, key: str, ndim: int) -> tuple[int, ...]:
    shape = shapes.get(key)
    if shape is None or len(shape) != ndim:
        raise NotAnUpscaler(f"{key} is {'missing' if shape is None else f'shaped {list(shape)}'}")
    return tuple(shape)


def _rrdb(shapes: Shapes, layout: str) -> UpscalerInfo:
    if layout == "esrgan":
        first, rdb = "model.0.weight", "model.1.sub.{}.RDB1.conv1.0.weight"
        tail = _old_tail(shapes)
        upsamples = len(tail) - 2
    else:
        first, rdb = "conv_first.weight", "body.{}.rdb1.conv1.weight"
        upsamples = sum(1 for k in shapes if re.fullmatch(r"conv_up\d+\.weight", k))
    nf, cin = _shape(shapes, first, 4)[:2]
    gc = _shape(shapes, rdb.format(0), 4)[0]
    nb = 0
    while rdb.format(nb) in shapes:
        nb += 1
    unshuffle = {3: 1, 12: 2, 48: 4}.get(cin)
    if unshuffle is None or upsamples < 1:
        raise NotAnUpscaler(f"an RRDBNet with {cin} input channels and {upsamples} upsamplings")
    scale = 2**upsamples // unshuffle
    return UpscalerInfo("esrgan", scale, nf, nb, gc, unshuffle, upsamples, layout)


def _compact(shapes: Shapes) -> UpscalerInfo:
    convs = sorted(
        int(m[1]) for k, s in shapes.items() if (m := re.fullmatch(r"body\.(\d+)\.weight", k)) and len(s) == 4
    )
    nf, cin = _shape(shapes, "body.0.weight", 4)[:2]
    if cin != 3 or convs != list(range(0, 2 * len(convs) - 1, 2)) or len(convs) < 2:
        raise NotAnUpscaler(
            f"a conv chain at body.{convs[:4]}... taking {cin} channels (Compact: 3, convs at 0, 2, 4...)"
        )
    for i in range(1, convs[-1], 2):
        if _shape(shapes, f"body.{i}.weight", 1)[0] != nf:
            raise NotAnUpscaler(f"body.{i}.weight is not a PReLU of {nf} features")
    out = _shape(shapes, f"body.{convs[-1]}.weight", 4)[0]
    scale = math.isqrt(out // 3)
    if out % 3 or scale * scale * 3 != out:
        raise NotAnUpscaler(f"a last conv to {out} channels (Compact: 3 * scale**2)")
    return UpscalerInfo("compact", scale, nf, len(convs) - 2, layout="compact")


def expected_shapes(info: UpscalerInfo) -> dict[str, tuple[int, ...]]:
    """Every tensor's name (BasicSR's for RRDBNet) and shape in the network ``info`` describes."""
    out: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int) -> None:
        out[f"{name}.weight"], out[f"{name}.bias"] = (cout, cin, 3, 3), (cout,)

    nf = info.features
    if info.family == "compact":
        conv("body.0", 3, nf)
        for i in range(info.blocks + 1):
            out[f"body.{2 * i + 1}.weight"] = (nf,)
            if i < info.blocks:
                conv(f"body.{2 * i + 2}", nf, nf)
        conv(f"body.{2 * info.blocks + 2}", nf, 3 * info.scale**2)
        return out
    conv("conv_first", 3 * info.unshuffle**2, nf)
    for n in range(info.blocks):
        for k in (1, 2, 3):
            for j in range(1, 6):
                conv(f"body.{n}.rdb{k}.conv{j}", nf + (j - 1) * info.growth, info.growth if j < 5 else nf)
    for name in ("conv_body", *(f"conv_up{i + 1}" for i in range(info.upsamples)), "conv_hr"):
        conv(name, nf, nf)
    conv("conv_last", nf, 3)
    return out


def _complete(info: UpscalerInfo, shapes: Shapes) -> UpscalerInfo:
    expected = expected_shapes(info)
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in expected if k in shapes and tuple(shapes[k]) != expected[k])
    if missing or extra or wrong:
        what = [f"missing {', '.join(missing[:3])}"] if missing else []
        what += [f"unexpected {', '.join(extra[:3])}"] if extra else []
        what += [f"{k} shaped {list(shapes[k])}, not {list(expected[k])}" for k in wrong[:2]]
        raise NotAnUpscaler(f"an incomplete or inconsistent {info.family} file: {'; '.join(what)}")
    return info
