"""What happens between decoding and writing (:class:`PostSettings`): the post-processing steps' settings."""

from __future__ import annotations

from dataclasses import dataclass

from videodiff.settings.checks import check_types
from videodiff.settings.fields import setting


@dataclass(frozen=True, kw_only=True)
class PostSettings:
    """The post-processing stage (:mod:`videodiff.post`): which steps run on the decoded frames, with what settings."""

    paste: bool = setting(  # off: the decoded frame 0 is the model's own; on: exact, colours matched around it
        False, "Put the exact pictures into their frames and match the other frames' colours to them."
    )

    def validate(self) -> PostSettings:
        """Raise :class:`UserError` (one line) for any of these settings that cannot work; return self."""
        check_types(self, PostSettings)
        return self
