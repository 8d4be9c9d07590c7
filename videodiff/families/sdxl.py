"""Stable Diffusion XL: two text encoders (CLIP ViT-L and OpenCLIP bigG, tokens concatenated), pooled text and
size ids added to the time embedding (``text_time``), 1024 pixels, AnimateDiff-SDXL / Hotshot-XL motion modules
(three blocks, 320 to 1280 channels)."""

from videodiff.families.family import Family

SDXL = Family(
    name="sdxl",
    title="SDXL",
    supported=True,
    text_encoders=("text_encoder", "text_encoder_2"),
    tokenizers=("tokenizer", "tokenizer_2"),
    addition_embed_type="text_time",
    added_conditioning=("text_embeds", "time_ids"),  # the names videodiff.sampling.cond gives these fields
    text_width=2048,
    default_size=1024,
    motion_channels=(320, 640, 1280),
    motion_layout="AnimateDiff-SDXL and Hotshot-XL motion modules (three blocks)",
    text_layer="penultimate",
    zero_empty_negative=True,
    vae_upcast=True,
    # SparseCtrl exists for SD1.5 only (AnimateDiff v3); SDXL ControlNets render (diffusers' ControlNetModel with
    # text_time) but do not train here
    not_yet=("SparseCtrl", "ControlNet training", "consistency distillation",
             "motion prior"),  # fmt: skip
)
