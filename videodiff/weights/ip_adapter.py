"""IP-Adapter weights (Ye et al. 2023): an image projection and one key/value pair per cross-attention layer.

The layouts people have, told apart by the keys of ``image_proj`` (diffusers' own rule,
``UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers``, which also builds the projection here):

- plain (``ip-adapter_sd15``): ``image_proj.proj``, ``image_proj.norm``: the encoder's pooled embedding to 4 tokens;
- Plus (``ip-adapter-plus_sd15``, ``ip-adapter-plus-face_sd15``): ``image_proj.latents``, ``proj_in``, ``proj_out``,
  ``norm_out``, ``layers.N...``: a resampler over the encoder's penultimate hidden states;
- full-face (``ip-adapter-full-face_sd15``): ``image_proj.proj.0``, ``proj.2``, ``proj.3`` (an MLP over the hidden
  states, one token each).

``ip_adapter.N.to_k_ip/to_v_ip`` hold each cross-attention layer's projections, ``N`` the original attention
processor's index (``1, 3, 5, ...``: the self-attention layers took the even ones), in diffusers' processor order:
counted from the U-Net whatever its family (SD1.5: 16 layers, 768 wide; SDXL base: 70 layers, 2048 wide). An
adapter made for another width than the model's is refused naming both families (:func:`require_adapter_family`).
FaceID variants (insightface embeddings and a LoRA) are refused. Weights are read with
:func:`videodiff.weights.checkpoints.read_state_dict` (``.bin`` files weights-only, else refused).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videodiff.errors import UserError
from videodiff.settings.ip_adapter import ENCODER_FOLDER, adapter_file, find_image_encoder
from videodiff.weights.hub import hub_file, hub_folder, is_hub_id, locate

if TYPE_CHECKING:
    import torch

__all__ = [
    "IPAdapter",
    "adapter_file",
    "check_encoder_fits",
    "describe_ip_adapter",
    "encoder_width",
    "find_image_encoder",
    "layout_of",
    "load_ip_adapter",
    "locate_adapter",
    "require_adapter_family",
    "locate_image_encoder",
    "split_state_dict",
]


def _on_hub(source: str | Path) -> tuple[str, str] | None:
    """``(repo, file)`` when ``source`` is no local path but a file of a hub repository (:func:`hub_file`)."""
    return None if Path(source).expanduser().exists() else hub_file(str(source))


def locate_adapter(source: str | Path) -> Path:
    """The weights file ``source`` names: a local file, a folder holding one, or a file of a hub repository
    (``h94/IP-Adapter/models/ip-adapter_sd15.safetensors``: that file alone, from the local cache or downloaded)."""
    if _on_hub(source) is not None:
        return locate(str(source), "--ip-adapter")
    return adapter_file(Path(source).expanduser())


def locate_image_encoder(source: str | Path, given: str | None) -> str:
    """The image encoder's folder: ``given`` (a local folder, a hub id ``org/name`` or a hub folder
    ``org/name/path``), else ``image_encoder/`` beside the adapter: beside the local file (or in its folder), or, for
    an adapter on the hub, in the same repository folder as the file, then at the repository's top (as
    h94/IP-Adapter lays out ``models/`` and ``sdxl_models/``). Neither: a one-line :class:`UserError`."""
    if given is not None:
        if Path(given).expanduser().exists() or not (is_hub_id(given) or hub_folder(given)):
            return find_image_encoder(source, str(Path(given).expanduser()))
        folder = locate(given, "--image-encoder", folders=True)
        if not (folder / "config.json").is_file():
            raise UserError(f"--image-encoder {given}: no CLIP vision model there (no config.json)")
        return str(folder)
    hub = _on_hub(source)
    if hub is None:
        return find_image_encoder(locate_adapter(source), None)
    locate_adapter(source)  # the adapter first: a message about it, not its encoder, when it cannot be had
    repo, filename = hub
    parent = posixpath.dirname(filename)
    for folder in dict.fromkeys((posixpath.join(parent, ENCODER_FOLDER), ENCODER_FOLDER)):
        found = locate(f"{repo}/{folder}", "--image-encoder", folders=True)
        if (found / "config.json").is_file():
            return str(found)
    raise UserError(
        f"--ip-adapter {source}: no image encoder beside it in hub repository {repo} ({ENCODER_FOLDER}/ in "
        f"{parent or 'its top folder'} or at its top, downloaded or in the local cache); name one with --image-encoder"
    )

def read_adapter(path: Path) -> dict[str, torch.Tensor]:
    """The adapter's tensors, flat (``image_proj.…``, ``ip_adapter.…``): a ``.safetensors`` file, or a weights-only
    pickle, flat or nested as the original ``.bin`` files are (``{"image_proj": {...}, "ip_adapter": {...}}``)."""
    import torch

    from videodiff.weights.checkpoints import _load_pickle, read_state_dict

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

    path = locate_adapter(source)
    proj, layers = split_state_dict(read_adapter(path), source)
    layout = layout_of(proj, layers, source)
    width = unet.config.cross_attention_dim
    first = next((t for k, t in sorted(layers.items()) if k.endswith("to_k_ip.weight") and t.ndim == 2), None)
    if first is not None:
        require_adapter_family(source, int(first.shape[1]), width, _family_of(unet.config))
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


def _family_of(config: Any) -> Any:
    """The U-Net config's model family, ``None`` when it is of none."""
    from videodiff import families

    try:
        return families.of_unet(config)
    except UserError:
        return None


def require_adapter_family(source: Any, width: int, model_width: int, model: Any) -> None:
    """The one refusal of an adapter whose ``to_k_ip`` reads ``width``-wide tokens on a U-Net whose cross-attention is
    ``model_width`` wide (``model``: its :class:`~videodiff.families.Family`, ``None`` if unknown), naming both
    families; the same line told from headers before loading and from the loaded U-Net."""
    if width == model_width:
        return
    from videodiff import families

    its = families.of_text_width(width, model, model_width)
    named = f", {its.title}" if its is not None else ""
    ours = model.title if model is not None else "of another family"
    raise UserError(
        f"--ip-adapter {source}: made for another model family{named} ({width}-wide cross-attention); the model is "
        f"{ours} ({model_width}-wide): use an IP-Adapter made for {ours} models"
    )


# CLIP vision encoders by the width the projection reads: the pooled image embedding (plain) or the penultimate
# hidden states (Plus, full-face). h94/IP-Adapter keeps ViT-H/14 in models/image_encoder, ViT-bigG/14 in
# sdxl_models/image_encoder.
POOLED_ENCODERS = {768: "CLIP ViT-L/14", 1024: "CLIP ViT-H/14", 1280: "CLIP ViT-bigG/14"}
HIDDEN_ENCODERS = {1024: "CLIP ViT-L/14", 1280: "CLIP ViT-H/14", 1664: "CLIP ViT-bigG/14"}


def encoder_width(layout: str, proj: dict[str, Any]) -> tuple[int, bool]:
    """``(width, pooled)``: how wide the encoder output is that the image projection ``proj`` (shapes or tensors by
    key, ``image_proj.`` removed) reads, and whether it is the pooled image embedding (plain) or the hidden states."""
    key = {"plain": "proj.weight", "plus": "proj_in.weight"}.get(layout, "proj.0.weight")
    return int(tuple(getattr(proj[key], "shape", proj[key]))[1]), layout == "plain"


def check_encoder_fits(source: str | Path, folder: str) -> None:
    """A ``.safetensors`` adapter's input width (from its header) against the image encoder's ``config.json``
    (``projection_dim`` for a plain adapter, ``hidden_size`` otherwise), before anything loads: one line when they
    differ. Other files, and configs that do not say, are checked as the encoder runs."""
    import json

    from videodiff.weights.safetensors_header import read_header

    path = locate_adapter(source)
    config = Path(folder) / "config.json"
    if path.suffix.lower() != ".safetensors" or not config.is_file():
        return
    proj, layers = split_state_dict(dict(read_header(path).shapes), source)  # keys only; one line if none fit
    layout = layout_of(proj, layers, source)  # FaceID and unknown layouts: one line, before the model loads
    try:
        width, pooled = encoder_width(layout, proj)
        settings = json.loads(config.read_text(encoding="utf-8"))
        vision = settings.get("vision_config") or settings
        has = (settings.get("projection_dim") or vision.get("projection_dim")) if pooled else vision.get("hidden_size")
    except (OSError, ValueError, AttributeError, KeyError, IndexError, TypeError):
        return  # the adapter's or the encoder's own load says what is wrong
    if isinstance(has, int) and has != width:
        what = "pooled image embeddings" if pooled else "hidden states"
        raise UserError(
            f"--image-encoder {folder} does not fit --ip-adapter {source}: the adapter reads {width}-wide {what}, "
            f"the encoder gives {has}-wide ones (another CLIP vision model; see videodiff inspect on the adapter)"
        )


def _family_named(width: Any) -> str:
    """The model family an adapter's ``to_k_ip`` input ``width`` is made for, as ``inspect`` names it."""
    from videodiff import families

    family = families.of_text_width(width) if isinstance(width, int) else None
    return family.title if family is not None else f"a model with {width}-wide cross-attention (no known family)"


def describe_ip_adapter(path: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any] | None:
    """What ``videodiff inspect`` says of an IP-Adapter file: its layout, image tokens, the cross-attention it fits,
    the model family that is (768 wide: SD1.5, 2048: SDXL) and the image encoder it needs (named from the width its
    projection reads); ``None`` when ``path`` is no IP-Adapter. ``shapes``: a ``.safetensors`` header's (nothing
    loaded); otherwise the file is read weights-only."""
    if shapes is None:
        try:
            shapes = {k: tuple(v.shape) for k, v in read_adapter(path).items()}
        except UserError:
            return None
    proj = {k[len("image_proj.") :]: v for k, v in shapes.items() if k.startswith("image_proj.")}
    layers = {k[len("ip_adapter.") :]: v for k, v in shapes.items() if k.startswith("ip_adapter.")}
    if not proj or not layers:
        return None
    info: dict[str, Any] = {"kind": "IP-Adapter (image prompts)", "path": str(path)}
    try:
        layout = layout_of(proj, layers, path)  # type: ignore[arg-type]  # shapes stand in for tensors: keys only
    except UserError as exc:
        return {**info, "layout": "FaceID" if "FaceID" in str(exc) else "unknown", "use": f"not supported: {exc}"}
    info["layout"] = layout  # named in full below; first in the listing
    key = next((k for k in sorted(layers) if k.endswith("to_k_ip.weight")), None)
    if key is not None and len(layers[key]) == 2:
        info["cross_attention_width"] = layers[key][1]
    info["cross_attention_layers"] = len({k.split(".")[0] for k in layers})
    info["family"] = _family_named(info.get("cross_attention_width"))
    try:
        width, pooled = encoder_width(layout, proj)
        if layout == "plain":
            info["image_tokens"] = proj["proj.weight"][0] // max(1, proj.get("norm.weight", (1,))[0])
        elif layout == "plus":
            info["image_tokens"] = proj["latents"][1] if len(proj["latents"]) == 3 else None
        else:
            info["image_tokens"] = "one per encoder hidden state"
    except (KeyError, IndexError, TypeError):
        return {**info, "layout": layout, "use": "not usable: its image projection's shapes do not fit its layout"}
    if layout == "plus":
        face = "face" in path.name.lower()
        layout = "Plus face (by its file name; the layout is Plus's)" if face else "Plus"
    info["layout"] = layout
    name = (POOLED_ENCODERS if pooled else HIDDEN_ENCODERS).get(width, "a CLIP vision model")
    what = "pooled image embedding" if pooled else "penultimate hidden states"
    info["image_encoder"] = f"{name} ({what} {width} wide)"
    try:
        info["image_encoder_found"] = find_image_encoder(path, None)
    except UserError:
        info["image_encoder_found"] = f"none beside it ({ENCODER_FOLDER}/): name one with --image-encoder"
    model = " --model SDXL_MODEL --motion-module SDXL_MOTION" if info["family"] == "SDXL" else ""
    info["use"] = f"videodiff render PROMPT{model} --ip-adapter {path} --ip-image PICTURE [--ip-scale S]"
    return info
