"""A tiny, randomly initialised SDXL model and SDXL motion adapter built offline: for tests and examples.

Every component is the class a real SDXL folder holds, with the real configs' structure, only small: two CLIP
tokenizers (the second pads with ``!`` as OpenCLIP's does), ``CLIPTextModel`` and ``CLIPTextModelWithProjection``
(tokens concatenated, the second's projection pooled), ``UNet2DConditionModel`` with ``addition_embed_type="text_time"``
(its added projection takes the pooled text plus six size ids), ``AutoencoderKL``, and a diffusers
``MotionAdapter`` of three blocks without a mid block, as ``AnimateDiffSDXLPipeline`` expects.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from videodiff.tiny import write_clip_tokenizer

WORDS = ("a", "red", "circle", "moving", "right", "cat")
TEXT_WIDTH = (32, 32)  # hidden width of each text encoder; the U-Net's cross-attention takes their sum
POOLED = 24  # the second encoder's projection: the pooled text SDXL adds to the time embedding
TIME_ID_WIDTH = 8  # addition_time_embed_dim: each of the six size ids is embedded this wide
CHANNELS = (32, 64, 64)  # three U-Net levels, as SDXL's (320, 640, 1280)
ZERO_INITIALISED = ("controlnet_down_blocks.", "controlnet_mid_block.", "controlnet_cond_embedding.conv_out")


def write_sdxl_model_index(folder: str | Path) -> None:
    """``model_index.json`` of an SDXL diffusers folder (what ``StableDiffusionXLPipeline`` expects)."""
    index = {
        "_class_name": "StableDiffusionXLPipeline",
        "force_zeros_for_empty_prompt": True,
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    }
    (Path(folder) / "model_index.json").write_text(json.dumps(index, indent=2))


def _text_config(tokenizer, width: int, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, hidden_act="gelu", **extra,
    )  # fmt: skip


def build_tiny_sdxl_model(folder: str | Path, *, seed: int = 0, sample_size: int = 16) -> Path:
    """Save a random SDXL-layout model folder (``tokenizer/ tokenizer_2/ text_encoder/ text_encoder_2/ vae/ unet/
    scheduler/``). The VAE downsamples by 2; ``sample_size`` latents (32 pixels) is the model's default size."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "tokenizer", WORDS))
    second = write_clip_tokenizer(folder / "tokenizer_2", WORDS)
    config = json.loads((second / "tokenizer_config.json").read_text())
    (second / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "!"}))  # as OpenCLIP pads
    tokenizer_2 = CLIPTokenizer.from_pretrained(second)
    CLIPTextModel(_text_config(tokenizer, TEXT_WIDTH[0])).save_pretrained(folder / "text_encoder")
    encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer_2, TEXT_WIDTH[1], projection_dim=POOLED))
    encoder_2.save_pretrained(folder / "text_encoder_2")
    AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32, sample_size=2 * sample_size, scaling_factor=0.13025, force_upcast=True,
    ).save_pretrained(folder / "vae")  # fmt: skip
    UNet2DConditionModel(
        block_out_channels=CHANNELS,
        layers_per_block=2,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        cross_attention_dim=sum(TEXT_WIDTH),
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_ID_WIDTH,
        projection_class_embeddings_input_dim=POOLED + 6 * TIME_ID_WIDTH,
        norm_num_groups=32,
    ).save_pretrained(folder / "unet")
    DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
    ).save_pretrained(folder / "scheduler")  # fmt: skip
    write_sdxl_model_index(folder)
    return folder


def build_tiny_sdxl_motion_adapter(
    folder: str | Path, *, seed: int = 1, motion_max_seq_length: int = 32, scale: float = 0.1
) -> Path:
    """Save a diffusers SDXL ``MotionAdapter`` folder for :func:`build_tiny_sdxl_model` (three blocks, no mid
    block) with random, non-zero output projections (so motion matters)."""
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    adapter = MotionAdapter(
        block_out_channels=CHANNELS,
        motion_layers_per_block=2,
        motion_num_attention_heads=4,
        motion_norm_num_groups=32,
        motion_max_seq_length=motion_max_seq_length,
        use_motion_mid_block=False,
    )
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.endswith("proj_out.weight") or name.endswith("proj_out.bias"):
                p.normal_(0.0, scale)
    adapter.save_pretrained(folder)
    return Path(folder)


def diffusers_sdxl_reference(model: str | Path, motion, scheduler):
    """diffusers' ``AnimateDiffSDXLPipeline`` on the same folders: the reference of the SDXL parity tests.

    ``UNetMotionModel.from_unet2d`` (diffusers 0.42) leaves the added-conditioning projection (``add_embedding``:
    pooled text and size ids) at its random initialisation instead of copying the image U-Net's (raised in the
    review of huggingface/diffusers#6721 and left for later); it is copied here, so the reference is the model the
    folder holds."""
    from diffusers import AnimateDiffSDXLPipeline, AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    model = Path(model)
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    pipe = AnimateDiffSDXLPipeline(
        vae=AutoencoderKL.from_pretrained(model / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(model / "text_encoder"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(model / "text_encoder_2"),
        tokenizer=CLIPTokenizer.from_pretrained(model / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(model / "tokenizer_2"),
        unet=unet,
        motion_adapter=motion if isinstance(motion, MotionAdapter) else MotionAdapter.from_pretrained(motion),
        scheduler=scheduler,
    )
    pipe.unet.add_embedding.load_state_dict(unet.add_embedding.state_dict())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl_controlnet(folder: str | Path, model: str | Path, *, seed: int = 2, scale: float = 0.2) -> Path:
    """Save an SDXL ``ControlNetModel`` folder for :func:`build_tiny_sdxl_model`'s ``model``:
    ``ControlNetModel.from_unet`` of its U-Net (``text_time``: pooled text and size ids in its time embedding), one
    conditioning downsampling per VAE downsampling, random non-zero weights in its zero convolutions and
    conditioning embedding's last convolution (``scale`` wide) so that its residuals steer a render, and its time
    embedding's projections made ``scale`` wider so that what that embedding gets (timestep, pooled text, size
    ids) shows in the residuals."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(model) / "unet")
    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(ZERO_INITIALISED):
                p.normal_(0.0, scale)  # zero-initialised in a new ControlNet
            elif "time_emb_proj" in name or name.startswith("add_embedding."):
                p.add_(torch.randn_like(p) * scale)
    net.save_pretrained(folder)
    return Path(folder)
