"""Sampling: the loop over a denoiser callable (:mod:`.loop`), the conditioning object every denoiser takes
(:mod:`.cond`) and the guides (:mod:`.guidance`). Imports nothing else of videodiff."""

from videodiff.sampling.cond import (
    Cond,
    Field,
    Residuals,
    TensorField,
    TokenSet,
    TokenSets,
    as_cond,
)
from videodiff.sampling.guidance import (
    ClassifierFreeGuidance,
    GuidanceInterval,
    Guide,
    NoGuidance,
    guide_for,
    guided,
    uses_guidance,
)
from videodiff.sampling.loop import Cancelled, Denoiser, OnStep, Schedule, noised_start, sample, set_start

__all__ = [
    "Cancelled",
    "ClassifierFreeGuidance",
    "Cond",
    "Denoiser",
    "Field",
    "Guide",
    "GuidanceInterval",
    "NoGuidance",
    "OnStep",
    "Residuals",
    "Schedule",
    "TensorField",
    "TokenSet",
    "TokenSets",
    "as_cond",
    "guide_for",
    "guided",
    "noised_start",
    "sample",
    "set_start",
    "uses_guidance",
]
