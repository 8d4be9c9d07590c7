"""IP-Adapter weights (Ye et al. 2023): an image projection and one key/value pair per cross-attention layer.

The layouts people have, told apart by the keys of ``image_proj`` (diffusers' own rule,
``UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers``, which also builds the projection here):

- plain (``ip-adapter_sd15``): ``image_proj.proj``, ``image_proj.norm``: the encoder's pooled embedding to 4 tokens;
- Plus (``ip-adapter-plus_sd15``, ``ip-adapter-plus-face_sd15``): ``image_proj.latents``, ``proj_in``, ``proj_out``,
  ``norm_out``, ``layers.N...``: a resampler over the encoder's penultimate hidden states;
- full-face (``ip-adapter-full-face_sd15``): ``image_proj.proj.0``, ``proj.2``, ``proj.3`` (an MLP over the hidden
  states, one token each).

``ip_adapter.N.to_k_ip/to_v_ip`` hold each cross-attention layer's projections, ``N`` the original attention
processor's index (``1, 3, 5, ...``: the self-attention layers took the even ones), in diffusers' processor order.
FaceID variants (insightface embeddings and a LoRA) are refused. Weights are read with
:func:`videodiff.weights.checkpoints.read_state_dict` (``.bin`` files weights-only, else refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from videodiff.errors import UserError
from videodiff.settings.ip_adapter import adapter_file, find_image_encoder
from videodiff.weights.checkpoints import _load_pickle, read_state_dict

__all__ = ["IPAdapter", "adapter_file", "find_image_encoder", "layout_of", "load_ip_adapter", "split_state_dict"]

def read_adapter(path: Path) -> dict[str, torch.Tensor]:
    """The adapter's tensors, flat (``image_proj.…``, ``ip_adapter.…``): a ``.safetensors`` file, or a weights-only
    pickle, flat or nested as the original ``.bin`` files are (``{"image_proj": {...}, "ip_adapter": {...}}``)."""
    try:
        return read_state_dict(path)
    except UserError as exc:
        if "does not hold a state dict of tensors" not in str(exc):
            raise
    data = _load_pickle(path, False)  # read weights-only once already: only its nesting was refused
    flat = {f"{k}.{n}": t for k, v in data.items() if isinstance(v, dict) for n, t in v.items()}
    if not flat or not all(isinstance(t, torch.Tensor) for t in flat.values()):
        raise UserError(f"{path}: does not hold IP-Adapter tensors")
    return flat


def split_state_dict(state: dict[str, torch.Tensor], source: Any) -> tuple[dict, dict]:
    """``(image_proj, ip_adapter)`` from a flat (``image_proj.…``) or nested (``{"image_proj": {...}}``) state dict."""
    if isinstance(state.get("image_proj"), dict) and isinstance(state.get("ip_adapter"), dict):
        return dict(state["image_proj"]), dict(state["ip_adapter"])
    proj = {k[len("image_proj.") :]: v for k, v in state.items() if k.startswith("image_proj.")}
    layers = {k[len("ip_adapter.") :]: v for k, v in state.items() if k.startswith("ip_adapter.")}
    if not proj or not layers:
        raise UserError(f"--ip-adapter {source}: not IP-Adapter weights (no image_proj.* and ip_adapter.* keys)")
    return proj, layers


def layout_of(proj: dict[str, torch.Tensor], layers: dict[str, torch.Tensor], source: Any) -> str:
    """``plain``, ``plus`` or ``full-face``; FaceID variants and unknown layouts are a one-line :class:`UserError`."""
    if "perceiver_resampler.proj_in.weight" in proj or any("lora" in k for k in layers) or (
        "proj.0.weight" in proj and "proj.3.weight" not in proj
    ):
        raise UserError(
            f"--ip-adapter {source}: a FaceID IP-Adapter (it needs insightface face embeddings and a LoRA), "
            "which is not supported; use a plain, Plus or full-face IP-Adapter"
        )
    if "proj.weight" in proj:
        return "plain"
    if "proj.3.weight" in proj:
        return "full-face"
    if "latents" in proj and "proj_in.weight" in proj:
        return "plus"
    raise UserError(f"--ip-adapter {source}: unknown IP-Adapter layout (image_proj keys {sorted(proj)[:4]}...)")


@dataclass
class IPAdapter:
    """A loaded adapter: its ``layout``, the image ``projection`` (diffusers' module), the key/value
    ``projections`` per cross-attention layer name (:meth:`videodiff.unet.VideoUNet.set_token_projections`)."""

    source: str
    layout: str
    projection: torch.nn.Module
    projections: dict[str, torch.nn.Module]

    @property
    def hidden_states(self) -> bool:
        """Whether the projection reads the encoder's penultimate hidden states (Plus, full-face), not its pooled
        image embedding (plain): diffusers' ``output_hidden_states`` rule."""
        return self.layout != "plain"


def load_ip_adapter(source: str | Path, unet: Any) -> IPAdapter:
    """Read and check the adapter ``source`` against ``unet`` (a diffusers ``UNet2DConditionModel``): a
    cross-attention width or layer count that does not fit is a one-line :class:`UserError`."""
    from videodiff.unet.inflate import TokenProjections, cross_attentions

    path = adapter_file(source)
    proj, layers = split_state_dict(read_adapter(path), source)
    layout = layout_of(proj, layers, source)
    width = unet.config.cross_attention_dim
    attentions = cross_attentions(unet)
    keys = [f"{2 * i + 1}.to_{kv}_ip.weight" for i in range(len(attentions)) for kv in "kv"]
    if sorted(keys) != sorted(layers):
        n = len({k.split(".")[0] for k in layers})
        raise UserError(
            f"--ip-adapter {source}: it has {n} cross-attention layers, the model {len(attentions)}; "
            "an adapter for another model family"
        )
    projections = {}
    for i, (name, attn) in enumerate(attentions.items()):
        k, v = layers[f"{2 * i + 1}.to_k_ip.weight"], layers[f"{2 * i + 1}.to_v_ip.weight"]
        if tuple(k.shape) != (attn.to_k.out_features, width) or k.shape != v.shape:
            raise UserError(
                f"--ip-adapter {source}: its layer {name} projects {k.shape[1]}-wide tokens to {k.shape[0]}, the "
                f"model's {width} to {attn.to_k.out_features}; an adapter for another model family"
            )
        pair = TokenProjections(width, attn.to_k.out_features)
        pair.to_k.weight.data.copy_(k)
        pair.to_v.weight.data.copy_(v)
        projections[name] = pair
    try:
        projection = unet._convert_ip_adapter_image_proj_to_diffusers(proj, low_cpu_mem_usage=False)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"--ip-adapter {source}: its image projection does not load ({first})") from None
    return IPAdapter(str(source), layout, projection.eval(), projections)
