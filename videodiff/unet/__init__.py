"""The video U-Net: temporal transformers (motion modules) and the inflation of a 2D U-Net."""

from videodiff.unet.inflate import VideoUNet
from videodiff.unet.temporal import MotionStack, TemporalTransformer

__all__ = ["MotionStack", "TemporalTransformer", "VideoUNet"]
