"""Image prompts (IP-Adapter) in the web app: the adapters a server offers and the picture uploaded for one request.

No Gradio, no torch. ``videodiff serve --ip-adapter PATH`` (repeatable, with ``--image-encoder FOLDER`` for adapters
that have no ``image_encoder/`` beside them) names the adapters the page offers; a web user picks one by its name
(the file's or folder's name, :func:`videodiff.ui.controls.served_names`) and uploads a picture: never a path on the
server. The picture is taken from Gradio's upload folder only, checked by type and size, and copied into the
request's own folder in the server's temporary area (as control maps are); the render layer reads it as it reads
``--ip-image``, and the folder is removed when the render ends.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videodiff.errors import UserError
from videodiff.settings.ip_adapter import MAX_IP_SCALE, ImagePrompt
from videodiff.ui.controls import NONE, ServedControls, _number, served_names
from videodiff.ui.form import IMAGE_SUFFIXES, MAX_IMAGE_BYTES

__all__ = ["IP_SCALE", "MAX_IP_SCALE", "ImagePromptRequest", "ServedAdapters", "check_ip_adapters"]

IP_SCALE = ImagePrompt.scale  # the form's and the API's default: the command line's --ip-scale default


def check_ip_adapters(sources: Sequence[str], encoder: str | None) -> tuple[tuple[str, ...], str | None]:
    """``serve --ip-adapter`` values and ``--image-encoder``, checked before the model loads: each adapter an
    existing weights file (or a folder holding one), made absolute, or a file of a hub repository, kept as it is;
    each finds its image encoder (``encoder`` or ``image_encoder/`` beside it). One line otherwise. Duplicates are
    dropped."""
    from videodiff.weights.ip_adapter import locate_adapter, locate_image_encoder

    if encoder is not None and not sources:
        raise UserError("--image-encoder needs --ip-adapter PATH")
    found: list[str] = []
    for source in sources:
        if not isinstance(source, str) or not source.strip() or "\0" in source:
            raise UserError(f"--ip-adapter must be a weights file or a folder holding one, got {source!r}")
        locate_adapter(source)  # one line: no such file, a folder without exactly one, not on the hub
        locate_image_encoder(source, encoder)
        local = Path(source).expanduser()
        found.append(str(local.resolve()) if local.exists() else source)
    if encoder is not None and Path(encoder).expanduser().exists():
        encoder = str(Path(encoder).expanduser().resolve())
    return tuple(dict.fromkeys(found)), encoder


@dataclass(frozen=True)
class ImagePromptRequest:
    """The Image prompt section as the page or the API sends it: an adapter's name, the uploaded picture (a Gradio
    file path, or the API's file dict), the scale, and an optional picture for the last frame (``image_end``: the
    image prompt moves from the first picture to it over the video, as ``--ip-image-at -1:PATH`` does)."""

    adapter: Any = NONE
    image: Any = None
    scale: Any = IP_SCALE
    image_end: Any = None

    @property
    def name(self) -> str:
        return str(self.adapter or NONE).strip() or NONE

    @staticmethod
    def _one(image: Any, which: str) -> Any:
        if isinstance(image, (list, tuple)):
            if len(image) > 1:
                raise UserError(f"upload one picture for the image prompt's {which}")
            image = image[0] if image else None
        return None if image in (None, "") else image

    @property
    def upload(self) -> Any:
        return self._one(self.image, "picture")

    @property
    def upload_end(self) -> Any:
        return self._one(self.image_end, "last frame")

    @property
    def wanted(self) -> bool:
        """Whether an image prompt was asked for at all (an adapter chosen or a picture uploaded)."""
        return self.name != NONE or self.upload is not None or self.upload_end is not None


class ServedAdapters:
    """The IP-Adapters one server offers (``sources``, each with ``encoder`` or its own ``image_encoder/``); the
    uploads are checked as :class:`~videodiff.ui.controls.ServedControls` checks maps (``served``)."""

    def __init__(self, sources: Sequence[str], encoder: str | None, served: ServedControls) -> None:
        self.names = served_names(sources)
        self.encoder = encoder
        self.served = served

    @property
    def choices(self) -> list[str]:
        return [NONE, *self.names]

    def source(self, name: str) -> str:
        if name in self.names:
            return self.names[name]
        if not self.names:
            raise UserError("this server offers no IP-Adapter: start it with videodiff serve --ip-adapter PATH")
        offered = ", ".join(repr(c) for c in self.names)
        raise UserError(f"unknown IP-Adapter {name!r}: this server offers {offered}")

    def prompt(self, request: ImagePromptRequest, folder: Path) -> ImagePrompt:
        """The request as an :class:`ImagePrompt`, its picture copied into ``folder`` (created); one line otherwise."""
        if request.name == NONE:
            raise UserError("choose an IP-Adapter for the uploaded picture")
        source = self.source(request.name)
        if request.upload is None:
            raise UserError(f"upload a picture for the IP-Adapter {request.name!r}")
        scale = _number("image prompt scale", request.scale)
        if not 0 <= scale <= MAX_IP_SCALE:
            raise UserError(f"image prompt scale must be from 0 to {MAX_IP_SCALE:g}, got {scale:g}")
        pictures = [self._checked(request.upload)]
        if request.upload_end is not None:
            pictures.append(self._checked(request.upload_end))
        targets = []
        for picture, place in zip(pictures, (folder, folder / "last-frame")):
            place.mkdir(parents=True)
            targets.append(place / picture.name)  # its own name (Gradio keeps it), so that messages name it
            shutil.copyfile(picture, targets[-1])
        keyframes = tuple(f"-1:{t}" for t in targets[1:])
        return ImagePrompt(source, str(targets[0]), scale, self.encoder, keyframes).checked()

    def _checked(self, upload: Any) -> Path:
        """An uploaded picture, from Gradio's upload folder only, checked by type, size and header."""
        picture = self.served.uploaded(upload, "image prompt pictures")
        if picture.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f"{picture.name}: not a picture file this app takes ({' '.join(IMAGE_SUFFIXES)})")
        self.served._limit(picture, MAX_IMAGE_BYTES, "pictures")
        from videodiff.media.images import check_image

        check_image(picture)
        return picture
