"""Upscaler networks, written here and loaded by key: ESRGAN's RRDBNet and Real-ESRGAN's Compact (SRVGGNetCompact).

Each family is recognised from its state dict's names and its sizes read from the tensors' shapes
(:func:`~videodiff.post.upscaler_keys.describe`, torch-free), so a file is checked before a tensor is read. Layouts:

* RRDBNet (Wang et al. 2018, ESRGAN), Real-ESRGAN/BasicSR names: ``conv_first``, ``body.N.rdbK.convJ``,
  ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``, ``conv_last``; a ``conv_first`` taking 12 or 48
  channels is the x2/x1 variant that pixel-unshuffles its input first (RealESRGAN_x2plus).
* RRDBNet, original ESRGAN names: ``model.0`` (first conv), ``model.1.sub.N.RDBK.convJ.0``, ``model.1.sub.<nb>``
  (the body's last conv), then one ``model.<i>`` conv per x2 nearest upsampling and the two last convs.
* Compact (Wang et al. 2021, Real-ESRGAN's ``SRVGGNetCompact``): ``body.0`` conv, ``body.1`` PReLU, then
  conv/PReLU pairs and a last conv to ``3 * scale**2`` channels, pixel-shuffled and added to the input
  upsampled (nearest).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from videodiff.post.upscaler_keys import NotAnUpscaler, UpscalerInfo, describe, esrgan_to_basicsr

__all__ = ["Compact", "NotAnUpscaler", "RRDBNet", "UpscalerInfo", "build", "describe", "esrgan_to_basicsr"]


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each fed every earlier output (dense), the last scaled by 0.2 onto the input."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3, self.conv4, self.conv5 = (
            nn.Conv2d(nf + i * gc, gc if i < 4 else nf, 3, 1, 1) for i in range(5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (ResidualDenseBlock(nf, gc) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator, BasicSR's names. ``[b 3 h w]`` in [0, 1] -> ``[b 3 h*s w*s]``, ``s = 2**upsamples /
    unshuffle``; ``h`` and ``w`` must be multiples of ``unshuffle``."""

    def __init__(self, nf: int = 64, nb: int = 23, gc: int = 32, *, unshuffle: int = 1, upsamples: int = 2) -> None:
        super().__init__()
        self.unshuffle = unshuffle
        self.conv_first = nn.Conv2d(3 * unshuffle * unshuffle, nf, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(nf, gc) for _ in range(nb)))
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.ups = upsamples
        for i in range(upsamples):
            self.add_module(f"conv_up{i + 1}", nn.Conv2d(nf, nf, 3, 1, 1))
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected [b c h w], got {tuple(x.shape)}")
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(self.ups):
            up = getattr(self, f"conv_up{i + 1}")
            feat = F.leaky_relu(up(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


class Compact(nn.Module):
    """Real-ESRGAN's SRVGGNetCompact (PReLU). ``[b 3 h w]`` in [0, 1] -> ``[b 3 h*s w*s]``."""

    def __init__(self, nf: int = 64, num_conv: int = 16, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(3, nf, 3, 1, 1), nn.PReLU(nf)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(nf, nf, 3, 1, 1), nn.PReLU(nf)]
        layers.append(nn.Conv2d(nf, 3 * scale * scale, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected [b c h w], got {tuple(x.shape)}")
        out = x
        for layer in self.body:
            out = layer(out)
        return F.pixel_shuffle(out, self.scale) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def build(state: Mapping[str, torch.Tensor]) -> tuple[nn.Module, UpscalerInfo]:
    """The network ``state`` describes, its weights loaded strictly (:class:`NotAnUpscaler` naming what did not
    match), in eval mode."""
    info = describe({k: tuple(v.shape) for k, v in state.items()})
    if info.family == "compact":
        net: nn.Module = Compact(info.features, info.blocks, info.scale)
    else:
        net = RRDBNet(info.features, info.blocks, info.growth, unshuffle=info.unshuffle, upsamples=info.upsamples)
        if info.layout == "esrgan":
            state = esrgan_to_basicsr(state)
    try:
        missing, unexpected = net.load_state_dict(dict(state), strict=False)
    except RuntimeError as exc:  # a tensor of another shape than the ones the names imply
        raise NotAnUpscaler(
            f"a {info.family} file with inconsistent shapes ({str(exc).strip().splitlines()[-1][:160]})"
        ) from None
    if missing or unexpected:
        what = [f"missing {', '.join(missing[:3])}"] if missing else []
        what += [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []
        raise NotAnUpscaler(f"a {info.family} file with other names: {'; '.join(what)}")
    return net.eval(), info
