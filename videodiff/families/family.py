"""What a model family is (:class:`Family`); the families themselves are one module each beside this one."""

from __future__ import annotations

from dataclasses import dataclass

from videodiff.errors import UserError


@dataclass(frozen=True)
class Family:
    """One family of image models and the motion modules made for it."""

    name: str  # short name in messages and sidecars
    title: str  # the name people know it by
    supported: bool  # whether videodiff loads and renders it
    text_encoders: tuple[str, ...]  # diffusers subfolders of the text encoders, in the order their tokens concatenate
    tokenizers: tuple[str, ...]  # and of their tokenizers
    addition_embed_type: str | None  # the U-Net config's addition_embed_type (None: the timestep alone)
    added_conditioning: tuple[str, ...]  # conditioning fields the time embedding takes besides the timestep
    default_size: int  # frame height and width the family was trained at, in pixels
    motion_channels: tuple[int, ...]  # channels of the motion modules' blocks made for it
    motion_layout: str  # which motion modules fit it
    text_layer: str = "last"  # "last": the last encoder layer through its final norm (--clip-skip N: N layers earlier,
    # through that norm); "penultimate": the layer before the last, no final norm (--clip-skip N: N more layers back),
    # every encoder's concatenated, the last encoder's projected pooled output beside them (SDXL's)
    zero_empty_negative: bool = False  # no negative prompt: zeros as the unconditional text (diffusers'
    # force_zeros_for_empty_prompt), not the empty prompt's encoding
    vae_upcast: bool = False  # a half-precision render keeps a VAE whose config says force_upcast in float32
    text_width: int = 0  # the full-size models' text token width (the U-Net's cross_attention_dim): 768, 2048
    not_yet: tuple[str, ...] = ()  # features videodiff has for other families but not this one (refused by name)

    def require(self, feature: str) -> None:
        """The one refusal of a feature this family does not have yet (``feature`` as :attr:`not_yet` names it)."""
        if feature in self.not_yet:
            raise UserError(f"{feature} is not supported for {self.title} models yet")

    @property
    def folders(self) -> tuple[str, ...]:
        """The subfolders a diffusers folder of this family has."""
        return (*self.tokenizers, *self.text_encoders, "vae", "unet", "scheduler")
