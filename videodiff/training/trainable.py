"""Which parameters train: chosen by module type, never by name substring."""

from __future__ import annotations

from torch import nn

from videodiff.unet import VideoUNet
from videodiff.unet.lora import add_motion_lora

SPATIAL_PREFIX = "unet."  # parameters of the image U-Net inside a VideoUNet


def spatial_query_projections(video_unet: VideoUNet) -> list[nn.Module]:
    """The query projections of every spatial attention (self and cross), Tune-A-Video's choice."""
    from diffusers.models.attention_processor import Attention

    return [m.to_q for m in video_unet.unet.modules() if isinstance(m, Attention)]


def select_trainable(video_unet: VideoUNet, trainable: str, lora_rank: int = 16) -> list[str]:
    """Freeze everything, then unfreeze the ``trainable`` set; returns the names of trained parameters.

    ``motion``: the motion modules (AnimateDiff). ``motion+attn``: plus the spatial
    attention query projections (Tune-A-Video). ``lora``: low-rank adapters on the
    temporal attention projections (MotionLoRA). ``all``: the whole video U-Net.
    """
    video_unet.requires_grad_(False)
    if trainable == "motion":
        video_unet.motion.requires_grad_(True)
    elif trainable == "motion+attn":
        video_unet.motion.requires_grad_(True)
        for proj in spatial_query_projections(video_unet):
            proj.requires_grad_(True)
    elif trainable == "lora":
        add_motion_lora(video_unet.motion, lora_rank)
        for name, p in video_unet.motion.named_parameters():
            p.requires_grad_(".lora_A." in name or ".lora_B." in name)
    elif trainable == "all":
        video_unet.requires_grad_(True)
    else:
        raise ValueError(f"unknown trainable set {trainable!r}")
    return [n for n, p in video_unet.named_parameters() if p.requires_grad]
