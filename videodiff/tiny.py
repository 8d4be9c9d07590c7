"""Tiny, randomly initialised models built offline: for tests, benchmarks and examples.

Every component is the standard class a Stable Diffusion 1.5 model uses (a CLIP
tokenizer and text model, ``AutoencoderKL``, ``UNet2DConditionModel``, a
``MotionAdapter``), only small, so the real loading code runs on them unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


# The CLIP byte-to-unicode table (the BPE alphabet); printable bytes map to themselves.
def bytes_to_unicode() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def write_clip_tokenizer(folder: str | Path, words: tuple[str, ...] = (), max_length: int = 77) -> Path:
    """Write a CLIP BPE tokenizer (``vocab.json``, ``merges.txt``) over single bytes plus ``words``.

    Every text still tokenizes (unknown words fall back to characters); each word in
    ``words`` becomes one token through a chain of merges.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(bytes_to_unicode().values())
    vocab: list[str] = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            pair = f"{pieces[0]} {pieces[1]}"
            if pair not in merges:
                merges.append(pair)
                vocab.append(merged)
            pieces = [merged] + pieces[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    vocab = list(dict.fromkeys(vocab))
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + ("\n" if merges else ""))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": max_length,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "do_lower_case": True,
                "tokenizer_class": "CLIPTokenizer",
            }
        )
    )
    return folder


def write_model_index(folder: str | Path) -> None:
    """``model_index.json`` of an SD1.5-layout diffusers folder (what ``DiffusionPipeline`` expects)."""
    index = {
        "_class_name": "StableDiffusionPipeline",
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (Path(folder) / "model_index.json").write_text(json.dumps(index, indent=2))


def diffusers_reference(model: str | Path, motion, scheduler):
    """diffusers' ``AnimateDiffPipeline`` on the same folders: the reference in parity tests and benchmarks.
    ``motion`` is a ``MotionAdapter`` folder or a ``MotionAdapter`` (e.g. one a Lightning file was loaded into)."""
    from diffusers import AnimateDiffPipeline, AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model = Path(model)
    pipe = AnimateDiffPipeline(
        vae=AutoencoderKL.from_pretrained(model / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(model / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(model / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(model / "unet"),
        motion_adapter=motion if isinstance(motion, MotionAdapter) else MotionAdapter.from_pretrained(motion),
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_model(
    folder: str | Path,
    *,
    seed: int = 0,
    block_out_channels: tuple[int, ...] = (32, 64),
    cross_attention_dim: int = 32,
    vae_channels: tuple[int, ...] = (32, 64),
    with_motion_adapter: bool = False,
    motion_max_seq_length: int = 32,
    attention_head_dim: int = 8,
    text_layers: int = 2,
    motion_heads: int = 4,
) -> Path:
    """Save a random SD1.5-layout model folder (``tokenizer/ text_encoder/ vae/ unet/ scheduler/``).

    The VAE downsamples by ``2 ** (len(vae_channels) - 1)``. With ``with_motion_adapter``
    a ``motion_adapter/`` folder is added, as a model that ships its own motion modules.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    tok_dir = write_clip_tokenizer(folder / "tokenizer", ("a", "red", "circle", "moving", "right", "cat"))
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cross_attention_dim,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).save_pretrained(folder / "text_encoder")
    levels = len(vae_channels)
    AutoencoderKL(
        block_out_channels=vae_channels,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        norm_num_groups=min(32, vae_channels[0]),
        sample_size=64,
    ).save_pretrained(folder / "vae")
    n = len(block_out_channels)
    UNet2DConditionModel(
        block_out_channels=block_out_channels,
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        norm_num_groups=32,
    ).save_pretrained(folder / "unet")
    DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    ).save_pretrained(folder / "scheduler")
    write_model_index(folder)
    if with_motion_adapter:
        build_tiny_motion_adapter(
            folder / "motion_adapter",
            seed=seed + 1,
            block_out_channels=block_out_channels,
            motion_max_seq_length=motion_max_seq_length,
            motion_heads=motion_heads,
        )
    return folder


def build_tiny_motion_adapter(
    folder: str | Path,
    *,
    seed: int = 1,
    block_out_channels: tuple[int, ...] = (32, 64),
    motion_max_seq_length: int = 32,
    use_motion_mid_block: bool = True,
    scale: float = 0.1,
    motion_heads: int = 4,
) -> Path:
    """Save a diffusers ``MotionAdapter`` folder with random, non-zero weights (so motion matters)."""
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    adapter = MotionAdapter(
        block_out_channels=block_out_channels,
        motion_layers_per_block=2,
        motion_num_attention_heads=motion_heads,
        motion_norm_num_groups=32,
        motion_max_seq_length=motion_max_seq_length,
        use_motion_mid_block=use_motion_mid_block,
    )
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.endswith("proj_out.weight") or name.endswith("proj_out.bias"):
                p.normal_(0.0, scale)
    adapter.save_pretrained(folder)
    return Path(folder)


# std of the tiny ControlNet's zero convolutions (residuals that steer, at a strength the scale still changes) and of
# the maps' embedding (so that where the maps are white matters)
ZERO_CONV, HINT = 0.05, 0.5


def build_tiny_controlnet(folder: str | Path, model: str | Path, *, seed: int = 1) -> Path:
    """A diffusers ``ControlNetModel`` folder for ``model`` (a tiny model's folder): its U-Net's encoder with random
    weights everywhere (zero convolutions too, so that it steers the tests' renders), one conditioning downsampling
    per VAE downsampling."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(model) / "unet")
    vae_config = json.loads((Path(model) / "vae" / "config.json").read_text())
    levels = len(vae_config["block_out_channels"])  # the VAE downsamples levels - 1 times
    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(8 * 2**i for i in range(levels)))
    with torch.no_grad():
        for name, p in net.named_parameters():  # zero convolutions made large enough to steer a 4-step render
            hint = name.startswith("controlnet_cond_embedding")
            p.add_(torch.randn_like(p) * (HINT if hint else ZERO_CONV if name.startswith("controlnet_") else 0.05))
    net.save_pretrained(folder)
    return Path(folder)


def _controlled_reference(pipeline_class: str, model: str | Path, motion, scheduler, controlnet):
    """diffusers' AnimateDiff pipeline ``pipeline_class`` with ``controlnet`` on the same folders as
    :func:`diffusers_reference`."""
    import diffusers

    base = diffusers_reference(model, motion, scheduler)
    pipe = getattr(diffusers, pipeline_class)(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=base.unet,
        motion_adapter=base.motion_adapter,
        controlnet=controlnet,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_controlnet_reference(model: str | Path, motion, scheduler, controlnets: list):
    """diffusers' ``AnimateDiffControlNetPipeline`` on the same folders (one ``ControlNetModel`` or several)."""
    from diffusers import ControlNetModel

    nets = [ControlNetModel.from_pretrained(c) for c in controlnets]
    net = nets[0] if len(nets) == 1 else nets
    return _controlled_reference("AnimateDiffControlNetPipeline", model, motion, scheduler, net)


def build_tiny_sparsectrl(
    folder: str | Path, model: str | Path, *, kind: str = "rgb", seed: int = 2, frames: int = 32
) -> Path:
    """A diffusers ``SparseControlNetModel`` folder for ``model`` (a tiny model's folder), as AnimateDiff v3's are
    made: ``rgb`` reads 4-channel VAE latents through one convolution (``use_simplified_condition_embedding``),
    ``scribble`` 3-channel pixel maps through a conditioning embedding with one downsampling per VAE downsampling.
    Random weights everywhere (zero convolutions and motion modules too, so that it steers the tests' renders);
    its motion modules see at most ``frames`` frames at once."""
    from diffusers import SparseControlNetModel, UNet2DConditionModel

    if kind not in ("rgb", "scribble"):
        raise ValueError(f"kind must be rgb or scribble, got {kind!r}")
    unet = UNet2DConditionModel.from_pretrained(Path(model) / "unet")
    vae_config = json.loads((Path(model) / "vae" / "config.json").read_text())
    levels = len(vae_config["block_out_channels"])
    torch.manual_seed(seed)
    c = unet.config
    net = SparseControlNetModel(
        in_channels=c.in_channels,
        conditioning_channels=4 if kind == "rgb" else 3,
        down_block_types=[t.replace("2D", "Motion") for t in c.down_block_types],
        block_out_channels=c.block_out_channels,
        layers_per_block=c.layers_per_block,
        cross_attention_dim=c.cross_attention_dim,
        attention_head_dim=c.attention_head_dim,
        norm_num_groups=c.norm_num_groups,
        conditioning_embedding_out_channels=tuple(8 * 2**i for i in range(levels)),
        use_simplified_condition_embedding=kind == "rgb",
        motion_max_seq_length=frames,
        motion_num_attention_heads=8,  # AnimateDiff v3's (what a file's loader assumes: the weights do not say)
    )
    net.load_state_dict({k: v for k, v in unet.state_dict().items() if k in net.state_dict()}, strict=False)
    with torch.no_grad():
        for name, p in net.named_parameters():
            hint = name.startswith("controlnet_cond_embedding")
            p.add_(torch.randn_like(p) * (HINT if hint else ZERO_CONV if name.startswith("controlnet_") else 0.05))
    net.save_pretrained(folder)
    return Path(folder)


def diffusers_sparsectrl_reference(model: str | Path, motion, scheduler, sparsectrl: str | Path):
    """diffusers' ``AnimateDiffSparseControlNetPipeline`` on the same folders."""
    from diffusers import SparseControlNetModel

    net = SparseControlNetModel.from_pretrained(sparsectrl)
    return _controlled_reference("AnimateDiffSparseControlNetPipeline", model, motion, scheduler, net)


def diffusers_vid2vid_controlnet_reference(model: str | Path, motion, scheduler, controlnet: str | Path):
    """diffusers' ``AnimateDiffVideoToVideoControlNetPipeline`` on the same folders (one ``ControlNetModel``)."""
    from diffusers import ControlNetModel

    net = ControlNetModel.from_pretrained(controlnet)
    return _controlled_reference("AnimateDiffVideoToVideoControlNetPipeline", model, motion, scheduler, net)


def build_tiny_image_encoder(folder: str | Path, *, seed: int = 5, hidden: int = 32, projection: int = 24) -> Path:
    """A random ``CLIPVisionModelWithProjection`` folder (32 x 32 pictures in 8 x 8 patches): IP-Adapter's image
    encoder in the tests."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=64, projection_dim=projection, num_hidden_layers=2,
        num_attention_heads=4, image_size=32, patch_size=8,
    )  # fmt: skip
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    return Path(folder)


def _plus_original_keys(module) -> dict[str, torch.Tensor]:
    """diffusers' ``IPAdapterPlusImageProjection`` weights under the original Resampler's names (the inverse of
    ``_convert_ip_adapter_image_proj_to_diffusers``)."""
    out: dict[str, torch.Tensor] = {}
    state = module.state_dict()
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "layers":
            out[key] = value
            continue
        head, rest = f"layers.{parts[1]}", ".".join(parts[2:])
        if rest.startswith("ln0."):
            out[f"{head}.0.norm1.{parts[-1]}"] = value
        elif rest.startswith("ln1."):
            out[f"{head}.0.norm2.{parts[-1]}"] = value
        elif rest == "attn.to_q.weight":
            out[f"{head}.0.to_q.weight"] = value
        elif rest == "attn.to_k.weight":
            out[f"{head}.0.to_kv.weight"] = torch.cat([value, state[f"{head}.attn.to_v.weight"]])
        elif rest == "attn.to_out.0.weight":
            out[f"{head}.0.to_out.weight"] = value
        elif rest.startswith("ff.0."):
            out[f"{head}.1.0.{parts[-1]}"] = value
        elif rest == "ff.1.net.0.proj.weight":
            out[f"{head}.1.1.weight"] = value
        elif rest == "ff.1.net.2.weight":
            out[f"{head}.1.3.weight"] = value
        elif rest != "attn.to_v.weight":
            raise KeyError(key)
    return out


def build_tiny_ip_adapter(
    path: str | Path, model: str | Path, encoder: str | Path, *, layout: str = "plain", seed: int = 6
) -> Path:
    """A random IP-Adapter for ``model`` (a tiny model's folder) reading ``encoder`` (:func:`build_tiny_image_encoder`),
    saved in the original key layout (``image_proj.*``, ``ip_adapter.N.to_k_ip/to_v_ip``) as ``path``
    (``.safetensors``, or ``.bin``: a plain pickle of tensors). ``layout``: ``plain``, ``plus`` or ``full-face``."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.embeddings import IPAdapterPlusImageProjection
    from transformers import CLIPVisionConfig

    unet = UNet2DConditionModel.from_pretrained(Path(model) / "unet")
    vision = CLIPVisionConfig.from_pretrained(encoder)
    width, hidden = unet.config.cross_attention_dim, vision.hidden_size
    torch.manual_seed(seed)
    if layout == "plain":
        proj = {"proj.weight": torch.randn(4 * width, vision.projection_dim) * 0.3, "proj.bias": torch.randn(4 * width)}
        proj.update({"norm.weight": 1 + 0.1 * torch.randn(width), "norm.bias": 0.1 * torch.randn(width)})
    elif layout == "plus":
        module = IPAdapterPlusImageProjection(
            embed_dims=hidden, output_dims=width, hidden_dims=64, heads=1, num_queries=8
        )
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        proj = _plus_original_keys(module)
    elif layout == "full-face":
        proj = {"proj.0.weight": torch.randn(hidden, hidden) * 0.2, "proj.0.bias": torch.randn(hidden) * 0.1}
        proj.update({"proj.2.weight": torch.randn(width, hidden) * 0.2, "proj.2.bias": torch.randn(width) * 0.1})
        proj.update({"proj.3.weight": 1 + 0.1 * torch.randn(width), "proj.3.bias": 0.1 * torch.randn(width)})
    else:
        raise ValueError(f"unknown layout {layout!r}")
    state = {f"image_proj.{k}": v.contiguous() for k, v in proj.items()}
    names = [n.removesuffix(".processor") for n in unet.attn_processors if n.endswith("attn2.processor")]
    for i, attn in enumerate(unet.get_submodule(n) for n in names):  # diffusers' processor order
        for kv in "kv":
            state[f"ip_adapter.{2 * i + 1}.to_{kv}_ip.weight"] = torch.randn(attn.to_k.out_features, width) * 0.3
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".bin":  # as the original .bin files hold it: {"image_proj": {...}, "ip_adapter": {...}}
        nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            nested[head][rest] = value
        torch.save(nested, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    return path


def diffusers_ip_adapter_reference(model: str | Path, motion, scheduler, adapters: list[Path], base=None):
    """diffusers' ``AnimateDiffPipeline`` (or ``base``, another AnimateDiff pipeline on the same folders) with
    ``load_ip_adapter`` of ``adapters`` (files with ``image_encoder/`` beside the first), offline."""
    base = diffusers_reference(model, motion, scheduler) if base is None else base
    first = Path(adapters[0])
    base.load_ip_adapter(
        str(first.parent.parent), subfolder=[Path(a).parent.name for a in adapters],
        weight_name=[Path(a).name for a in adapters], image_encoder_folder=str(first.parent / "image_encoder"),
        local_files_only=True,
    )  # fmt: skip
    return base
