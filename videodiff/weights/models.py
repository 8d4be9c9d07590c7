"""Assembling a model: the image model, its add-ons (VAE, LoRAs, embeddings), motion modules, MotionLoRA triggers.

The top of ``videodiff.weights``: finding files is :mod:`videodiff.weights.hub`'s job, reading
them the format readers'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videodiff import families
from videodiff.config import parse_scaled_path, parse_trigger
from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.motion_prior import PRIOR_FILE, MotionPrior
from videodiff.unet.temporal import MotionStack
from videodiff.unet.triggers import Trigger
from videodiff.weights.checkpoints import load_strict, read_state_dict
from videodiff.weights.embeddings import load_embedding
from videodiff.weights.hub import (
    DEFAULTS_FILE,
    OWN_MOTION_FOLDER,
    fingerprint,
    hub_file,
    locate,
    model_source,
    model_triggers,
    model_vocabulary,
    motion_module_defaults,
    quiet_hub_logging,
    read_model_defaults,
    recorded_controlnet,
    recorded_lcm_steps,
    recorded_train_frames,
)
from videodiff.weights.lora import apply_lora
from videodiff.weights.motion_formats import (
    SPATIAL_FILE,
    apply_motion_lora,
    companion_files,
    load_any_motion_module,
    motion_lora_deltas,
)
from videodiff.weights.motion_headers import TRAINED_AT
from videodiff.weights.single_file import load_single_file, load_vae_file


def new_motion_stack(unet) -> MotionStack:
    """A zero-initialised motion stack shaped for ``unet`` (AnimateDiff v2's layout: mid block, 32 frames)."""
    channels = list(unet.config.block_out_channels)
    heads = 8 if all(c % 8 == 0 for c in channels) else 1
    groups = 32 if all(c % 32 == 0 for c in channels) else 1
    notice("starting from new, zero-initialised motion modules")
    return MotionStack(
        block_out_channels=channels,
        motion_layers_per_block=unet.config.layers_per_block,
        motion_num_attention_heads=heads,
        motion_norm_num_groups=groups,
        motion_max_seq_length=32,
        use_motion_mid_block=unet.mid_block is not None,
    )


def apply_spatial_weights(unet, path: Path) -> None:
    """Load fine-tuned image-U-Net tensors shipped beside motion modules (e.g. after ``--trainable motion+attn``).

    Every tensor must name an existing U-Net parameter of the same shape (``load_strict``
    with ``subset``), so the partial load is never a silent ``strict=False``.
    """
    tensors = read_state_dict(path)
    load_strict(unet, tensors, str(path), subset=True)
    notice(f"loaded {len(tensors)} fine-tuned image-U-Net tensors from {path.name}")


@dataclass
class ModelParts:
    """Everything a pipeline needs, loaded and on the CPU in float32."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    motion: MotionStack
    scheduler_config: dict[str, Any]
    defaults: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)  # {"model": {"id", "sha256"}, "lora": [...], ...}
    norm_over_frames: bool = False  # original AnimateDiff v1 ran spatial GroupNorms over all frames
    triggers: tuple = ()  # Trigger: MotionLoRAs merged only for prompts with their word (videodiff.unet.triggers)
    motion_prior: Any = None  # a MotionPrior saved beside the motion modules (videodiff.motion_prior)
    vocabulary: dict[str, Any] = field(default_factory=dict)  # a closed-vocabulary model's words (videodiff.json)
    train_frames: int = 16  # the clip length the motion modules were trained on (videodiff.json's train_frames)
    family: families.Family = families.SD15  # the model family, decided once at load (videodiff.families)
    controlnet: str | None = None  # its own ControlNet folder (videodiff.json's controlnet): --control alone uses it
    tokenizer_2: Any = None  # a second tokenizer and text encoder (SDXL's, with projection), else None
    text_encoder_2: Any = None

    @property
    def tokenizers(self) -> tuple:
        """Every tokenizer, in the order the family's text encoders concatenate."""
        return (self.tokenizer,) if self.tokenizer_2 is None else (self.tokenizer, self.tokenizer_2)

    @property
    def text_encoders(self) -> tuple:
        """Every text encoder, in the family's order (the last one pools, where the family pools)."""
        return (self.text_encoder,) if self.text_encoder_2 is None else (self.text_encoder, self.text_encoder_2)


def folder_family(root: Path) -> families.Family:
    """The model family of a diffusers folder, from its ``unet/config.json`` (SD1.5 when that cannot be read: the
    loader then says what is wrong with the folder); an unsupported family is refused here, by name."""
    import json

    try:
        config = json.loads((root / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return families.SD15
    if not isinstance(config, dict):
        return families.SD15
    return families.require_supported(families.of_unet(config), f"{root}: the model is")


def _text_encoder(folder: Path):
    """A ``CLIPTextModel``, or the ``CLIPTextModelWithProjection`` its config names (SDXL's second encoder)."""
    import json

    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    try:
        names = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures") or ()
    except (OSError, ValueError, AttributeError):
        names = ()
    cls = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in names else CLIPTextModel
    return cls.from_pretrained(folder)


def _load_image_model(model: str) -> tuple[Path, dict[str, Any]]:
    """A diffusers folder or hub id, or a single-file SD1.5 or SDXL checkpoint, as components (a family with two text
    encoders also gives ``tokenizer_2`` and ``text_encoder_2``)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    root = locate(model, "model")
    if root.is_file():
        return root, load_single_file(root)
    family = folder_family(root)
    for sub in family.folders:
        if not (root / sub).is_dir():
            raise UserError(f"{root}: not a diffusers {family.title} model folder (no {sub}/ inside)")
    try:
        return root, {
            **{sub: CLIPTokenizer.from_pretrained(root / sub) for sub in family.tokenizers},
            **{sub: _text_encoder(root / sub) for sub in family.text_encoders},
            "vae": AutoencoderKL.from_pretrained(root / "vae"),
            "unet": UNet2DConditionModel.from_pretrained(root / "unet"),
            "scheduler_config": dict(DDIMScheduler.load_config(root / "scheduler")),
        }
    except Exception as exc:  # noqa: BLE001 - a refused pickle, a broken file...: the folder's fault, in one line
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{root}: could not load the model ({first[:300]})") from None


def local_file(path: str, what: str) -> str:
    """``path`` itself, or for ``org/name/file.safetensors`` that is not a local path, that one file of the hub
    repository (downloaded, or from the cache): AnimateLCM's LoRA as ``wangfuyun/AnimateLCM/<file>``."""
    if Path(path).expanduser().exists() or hub_file(path) is None:
        return path  # the reader names a missing local file
    return str(locate(path, what))


def load_model_parts(
    model: str | None,
    motion_module: str | None = None,
    *,
    new_motion: bool = False,
    motion_config: str | None = None,
    vae: str | None = None,
    loras: tuple[str, ...] = (),
    embeddings: tuple[str, ...] = (),
    motion_loras: tuple[str, ...] = (),
    motion_lora_triggers: tuple[str, ...] = (),
) -> ModelParts:
    """Load an SD1.5-family or SDXL model (diffusers folder, hub id or single file), its add-ons and motion modules.

    Motion modules come from ``motion_module`` (a MotionAdapter folder or hub id, or an
    original AnimateDiff file), else the model's own ``motion_adapter/``, else (only with
    ``new_motion``, for training) a fresh zero-initialised stack. ``loras`` and
    ``motion_loras`` are ``PATH[:SCALE]`` strings, merged into the weights.
    ``motion_lora_triggers`` (``WORD=PATH[:SCALE]``) and the model folder's own triggers are
    checked against the motion modules here and merged per prompt by the pipeline.
    """
    quiet_hub_logging()
    model = model_source(model)  # "shapes" (or nothing): the built-in model
    root, c = _load_image_model(model)
    sources: dict[str, Any] = {"model": {"id": model, "sha256": fingerprint(root)}}
    if vae:
        c["vae"] = load_vae_file(vae, family=families.of_unet(c["unet"].config).name)
        sources["vae"] = {"id": vae, "sha256": fingerprint(vae)}
    own = root / OWN_MOTION_FOLDER if root.is_dir() else None
    norm_over_frames, motion_prior = False, None
    motion_folder = None
    given_motion = motion_module
    own_motion = motion_module is None and own is not None and own.is_dir()
    if own_motion:
        motion_module = str(own)
    if motion_module is None:
        if not new_motion:
            raise UserError(
                f"{model} has no motion modules of its own; pass --motion-module (a MotionAdapter "
                "folder or an AnimateDiff .safetensors/.ckpt file)"
            )
        motion = new_motion_stack(c["unet"])
        sources["motion_module"] = {"id": "new (zero-initialised)", "sha256": ""}
    else:
        motion, info = load_any_motion_module(motion_module, motion_config)
        norm_over_frames = info.norm_over_frames
        location = locate(motion_module, "motion module")
        motion_folder = location if location.is_dir() else None
        sources["motion_module"] = {
            "id": motion_module,
            "sha256": fingerprint(location),
            "version": info.version,
            "format": info.format,
        }
        companions = companion_files(location)  # in its folder, or beside an original-layout file
        if SPATIAL_FILE in companions:
            apply_spatial_weights(c["unet"], companions[SPATIAL_FILE])
        if PRIOR_FILE in companions:
            families.of_unet(c["unet"].config).require("motion prior")
            motion_prior = load_motion_prior(companions[PRIOR_FILE], c)
    second = c.get("text_encoder_2")
    for spec in loras:
        path, scale = parse_scaled_path(spec)
        local = local_file(path, "LoRA")
        apply_lora(c["unet"], c["text_encoder"], local, scale, text_encoder_2=second)
        sources.setdefault("lora", []).append({"id": path, "scale": scale, "sha256": fingerprint(local)})
    for path in embeddings:
        pair = (c["tokenizer_2"], second) if second is not None else None  # SDXL's: clip_l and clip_g vectors
        tokens = load_embedding(c["tokenizer"], c["text_encoder"], path, second=pair)
        sources.setdefault("embedding", []).append({"id": path, "tokens": tokens, "sha256": fingerprint(path)})
    for spec in motion_loras:
        path, scale = parse_scaled_path(spec)
        apply_motion_lora(motion, path, scale)
        sources.setdefault("motion_lora", []).append({"id": path, "scale": scale, "sha256": fingerprint(path)})
    triggers = load_triggers(root, motion, motion_lora_triggers, sources)
    lcm_steps = recorded_lcm_steps(motion_folder)
    if lcm_steps is not None:  # distilled on that grid of timesteps: the lcm sampler picks its steps from it
        c["scheduler_config"] = {**c["scheduler_config"], "original_inference_steps": lcm_steps}
    for module in (c["text_encoder"], *([second] if second is not None else []), c["vae"], c["unet"], motion):
        module.requires_grad_(False).eval()
    return ModelParts(
        c["tokenizer"],
        c["text_encoder"],
        c["vae"],
        c["unet"],
        motion,
        c["scheduler_config"],
        # a few-step motion module's recorded steps, scheduler... win over the image model's, and both over the
        # size and length the motion module was trained at
        {
            **TRAINED_AT.get(sources["motion_module"].get("version", ""), {}),
            **(read_model_defaults(str(root)) if root.is_dir() else {}),
            **motion_module_defaults(given_motion),
        },
        sources,
        norm_over_frames,
        triggers,
        motion_prior,
        model_vocabulary(root) if root.is_dir() else {},
        # the model folder's train_frames speaks for its own motion modules only
        recorded_train_frames(motion_folder, root if own_motion else None),
        families.require_supported(families.of_unet(c["unet"].config), f"{model}: the model is"),
        recorded_controlnet(root) if root.is_dir() else None,
        c.get("tokenizer_2"),
        second,
    )


def load_motion_prior(path: Path, components: dict[str, Any]) -> MotionPrior:
    """The motion prior beside motion modules, checked against the text encoder and U-Net it will read and feed."""
    prior = MotionPrior.load(path)
    width = components["text_encoder"].config.hidden_size
    channels = components["unet"].config.in_channels
    if prior.dim != width or prior.channels != channels:
        raise UserError(
            f"{path} is for {prior.dim}-wide text embeddings and {prior.channels}-channel latents; "
            f"this model has {width} and {channels}"
        )
    return prior


def load_triggers(root: Path, motion: MotionStack, specs: tuple[str, ...], sources: dict[str, Any]) -> tuple:
    """The model folder's triggers (its ``videodiff.json``), then ``specs``; a later one for a word replaces it."""
    chosen: dict[str, tuple[str, float]] = {}
    own = model_triggers(root) if root.is_dir() else {}
    for word, spec in own.items():
        path, scale = parse_scaled_path(spec)
        inside = (root / path).resolve()
        if not inside.is_relative_to(root.resolve()):  # a downloaded model folder reads only its own files
            raise UserError(f"{root / DEFAULTS_FILE}: motion LoRA trigger {word!r} points outside the model folder")
        chosen[word] = (str(inside), scale)
    for spec in specs:
        word, path, scale = parse_trigger(spec)
        chosen[word] = (path, scale)
    triggers = []
    for word, (path, scale) in chosen.items():
        triggers.append(Trigger(word, motion_lora_deltas(motion, path, scale)))
        entry = {"word": word, "id": path, "scale": scale, "sha256": fingerprint(path)}
        sources.setdefault("motion_lora_trigger", []).append(entry)
    return tuple(triggers)
