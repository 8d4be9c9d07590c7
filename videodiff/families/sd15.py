"""Stable Diffusion 1.5 and its fine-tunes: one CLIP ViT-L text encoder, the timestep alone in the time embedding,
512 pixels, AnimateDiff v1/v2/v3 motion modules (four blocks, 320 to 1280 channels)."""

from videodiff.families.family import Family

SD15 = Family(
    name="sd15",
    title="SD1.5",
    supported=True,
    text_encoders=("text_encoder",),
    tokenizers=("tokenizer",),
    addition_embed_type=None,
    added_conditioning=(),
    text_width=768,
    default_size=512,
    motion_channels=(320, 640, 1280, 1280),
    motion_layout="AnimateDiff v1, v2 and v3 motion modules (four blocks)",
)
