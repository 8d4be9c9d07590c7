"""A render's memory: how much it needs (:func:`estimate`), how much the machine has free (:func:`available_memory`),
and the C heap during CPU renders (keep freed blocks for the next step, give them back after the render).

The estimate is arithmetic on the request and the model's config files, torch-free, so that a render that cannot
fit is refused before anything loads (:func:`videodiff.render.check_memory`); its formula is :func:`estimate`'s
docstring, its factors were measured (the docs' Runtime guide has the table).

The C heap:

A CPU render allocates and frees the same large activations (tens of MiB) at every layer
of every step. glibc serves blocks above its mmap threshold (at most 32 MiB, dynamically)
with fresh ``mmap`` pages and trims the heap top above 128 KiB-64 MiB, so each step takes
its working set from the kernel again: on ``cpu-small`` that was 0.5 million page faults
and up to 2 s of kernel time per guided U-Net call, and 6-9 s of kernel time in the VAE
decode (``videodiff bench diffusers``; the docs' Benchmarks page has the numbers). With
the thresholds raised the heap keeps the freed blocks and the next step reuses them;
:func:`release` hands the free memory back to the system when the render ends.

The thresholds are process-wide and stay raised once set (glibc cannot go back to its
dynamic threshold); ``VIDEODIFF_HEAP=system`` leaves the allocator alone. Not glibc
(macOS, Windows, musl): nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap, so they can be reused
TRIM_THRESHOLD = 2**31 - 1  # never trim by itself: release() does, after the render


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _ = libc.gnu_get_libc_version  # only glibc has it (and mallopt/malloc_trim with these meanings)
    except (OSError, AttributeError):
        return None
    return libc


def enabled() -> bool:
    """Whether the render heap policy applies in this process."""
    return os.environ.get("VIDEODIFF_HEAP", "").lower() != "system" and _glibc() is not None


def keep_freed() -> bool:
    """Raise glibc's mmap and trim thresholds so freed blocks stay for reuse; whether it was done."""
    libc = _glibc() if enabled() else None
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release() -> None:
    """Give the heap's free memory back to the system (``malloc_trim(0)``)."""
    libc = _glibc() if enabled() else None
    if libc is not None:
        libc.malloc_trim(0)


@contextmanager
def render_heap(device) -> Iterator[None]:
    """Keep freed blocks during a render on the CPU; release the free memory when it ends."""
    if getattr(device, "type", str(device)) != "cpu" or not keep_freed():
        yield
        return
    try:
        yield
    finally:
        release()


# ---------------------------------------------------------------------------------------------------------------------
# how much a render needs, and how much is free

# Factors measured on the CPU (peak RSS with ``resource.getrusage``, float32, the heap policy above), each taken
# above the largest value measured; the docs' Runtime guide has the table (tiny, built-in and SD1.5-sized models).
RUNTIME = 640 << 20  # Python with torch, diffusers and transformers imported, thread pools, a loaded small model
UNET_WIDTHS = 56  # U-Net activations per latent pixel of every frame in one call, in channels of its first level
VAE_WIDTHS = 8  # VAE activations per pixel of every frame in one call, in channels of its widest full-size tensor
SCORE_COPIES = 2  # a materialised attention score matrix and its softmax, alive at once (math and sliced attention)
PIXEL_BYTES = 3 * 4  # a decoded RGB pixel in float32
CONVERT_BYTES = 4 * PIXEL_BYTES + 3  # float32 -> uint8 holds four float32 copies of the frames, then the uint8 video
MARGIN = 1.25  # on everything but the runtime: allocator slack, and models unlike the ones measured
# A lower bound, for the check against a GPU's free memory (not measured there: no GPU was at hand): tensors that
# must be alive at once whatever the allocator. The U-Net's feed-forward (GEGLU: 8 widths in, 4 out) at its first
# level, the VAE's upsampling into full size (its input and output, 2 widths), one score matrix.
UNET_LIVE_WIDTHS, VAE_LIVE_WIDTHS = 12, 2


@dataclass(frozen=True)
class Architecture:
    """What the estimate reads of a model (its config files and safetensors headers); the defaults are SD1.5's."""

    vae_scale: int = 8  # pixels per latent pixel, a side: 2 ** (levels - 1)
    vae_width: int = 256  # channels of the decoder's widest full-size tensor (block_out_channels[1], upsampled)
    vae_tile: int = 512  # pixels a tile side with --vae-tiling (the VAE's sample_size)
    unet_width: int = 320  # channels of the U-Net's first level (block_out_channels[0])
    attention_level: int | None = 0  # the first level with spatial self-attention (None: none)
    attention_heads: int = 8  # heads there
    motion_heads: int = 8  # heads of the motion modules' attention over frames
    parameters: int = 1_519_500_000  # everything loaded: text encoder 123M, U-Net 860M, VAE 84M, motion modules 453M
    size: int = 512  # the model's own frame side


@dataclass(frozen=True)
class Footprint:
    """A render's memory, in bytes, by stage; each stage's working memory is freed before the next starts."""

    runtime: int  # the interpreter and libraries
    weights: int  # every model, in the compute dtype
    sampling: int  # one U-Net call: activations and attention scores
    decoding: int  # one VAE call (or the encode of img2vid/vid2vid inputs), and the frames decoded so far
    converting: int  # the decoded frames turned into uint8 video

    @property
    def total(self) -> int:
        """Everything in one memory (the CPU): the peak is the largest stage on top of runtime and weights."""
        return self.runtime + self.weights + max(self.sampling, self.decoding, self.converting)

    @property
    def device(self) -> int:
        """What a GPU holds beyond its weights: the larger of sampling and decoding (with the frames in float32)."""
        return max(self.sampling, self.decoding)

    @property
    def host(self) -> int:
        """What the CPU's memory holds while a GPU renders: runtime, the weights as they load, the conversion."""
        return self.runtime + self.weights + self.converting

    def parts(self, on_device: bool = False) -> str:
        """The stages, in GiB, for a message."""
        gib = lambda n: f"{n / 2**30:.1f}"  # noqa: E731
        head = "" if on_device else f"model {gib(self.weights)}, "
        return f"{head}sampling {gib(self.sampling)}, VAE {gib(self.decoding)}, frames {gib(self.converting)} GiB"


def estimate(
    arch: Architecture,
    *,
    frames: int,
    height: int,
    width: int,
    unet_frames: int,
    window: int,
    chunk: int,
    encode: int = 0,
    attention: str = "sdpa",
    sliced: bool = False,
    tiling: bool = False,
    value_bytes: int = 4,
    lower: bool = False,
) -> Footprint:
    """The memory a render of ``frames`` frames of ``height`` x ``width`` needs, stage by stage.

    ``unet_frames``: frames in one U-Net call (a window, or all frames; twice that with guidance), ``window``: the
    frames the motion modules attend over, ``chunk``: frames per VAE decode call, ``encode``: frames per VAE encode
    call of img2vid/vid2vid inputs (0: none), ``attention``: the kernel (``sdpa``/``xformers`` never materialise
    scores; ``math`` does), ``sliced``: diffusers' sliced attention (scores for half the heads at a time),
    ``tiling``: VAE tiling, ``value_bytes``: 4 (float32) or 2 (fp16/bf16). With ``b`` = ``value_bytes``,
    ``h, w`` the latent size (``height / vae_scale``), ``N`` the tokens at the first spatial-attention level::

        weights    = parameters * b
        sampling   = MARGIN * [unet_frames * h * w * (UNET_WIDTHS * unet_width * b + 2 * motion_heads * window * b)
                               + SCORE_COPIES * S * N**2 * b]     S = unet_frames * heads (math), heads // 2 (sliced),
                                                                    0 (sdpa, xformers)
        decoding   = MARGIN * [max(chunk, encode) * P * VAE_WIDTHS * vae_width * b + frames * height * width * 12]
                                                                    P = height * width, or a tile's pixels with tiling
        converting = MARGIN * frames * height * width * CONVERT_BYTES
        total      = RUNTIME + weights + max(sampling, decoding, converting)

    The factors are above every peak measured (:data:`UNET_WIDTHS` and :data:`VAE_WIDTHS` against 32-51 and 3.3-6.8
    measured, the score term against 1.8 copies) and :data:`MARGIN` is on top, so the estimate is an upper
    bound for the models measured, not a prediction. ``lower``: a lower bound instead (:data:`UNET_LIVE_WIDTHS`,
    :data:`VAE_LIVE_WIDTHS`, one score matrix, no margin), for a GPU, where a refusal must never stop a render that
    would have fitted (running out of GPU memory later is one line with advice too).
    """
    h, w = max(1, height // arch.vae_scale), max(1, width // arch.vae_scale)
    unet_widths, vae_widths = (UNET_LIVE_WIDTHS, VAE_LIVE_WIDTHS) if lower else (UNET_WIDTHS, VAE_WIDTHS)
    copies, margin = (1, 1.0) if lower else (SCORE_COPIES, MARGIN)
    per_latent = unet_widths * arch.unet_width * value_bytes + copies * arch.motion_heads * window * value_bytes
    scores = 0
    if arch.attention_level is not None and (attention == "math" or sliced):
        level = 2**arch.attention_level
        tokens = max(1, h // level) * max(1, w // level)
        heads = max(1, arch.attention_heads // 2) if sliced else unet_frames * arch.attention_heads
        scores = copies * heads * tokens**2 * value_bytes
    sampling = margin * (unet_frames * h * w * per_latent + scores)
    pixels = height * width
    if tiling and max(height, width) > arch.vae_tile:
        pixels = min(height, arch.vae_tile) * min(width, arch.vae_tile)
    calls = max(chunk, encode) * pixels * vae_widths * arch.vae_width * value_bytes
    decoding = margin * (calls + frames * height * width * PIXEL_BYTES)
    converting = margin * frames * height * width * CONVERT_BYTES
    return Footprint(RUNTIME, arch.parameters * value_bytes, int(sampling), int(decoding), int(converting))


def _read_int(path: str, key: str | None = None) -> int | None:
    """A number from a /proc or /sys file: the whole file, or the line ``key ...`` of a ``key value`` file."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines() if key else [text]:
        parts = line.replace(":", " ").split()
        if key is not None and (not parts or parts[0] != key):
            continue
        try:
            value = int(parts[1] if key else parts[0])
        except (IndexError, ValueError):
            return None
        return value * 1024 if key and line.rstrip().endswith("kB") else value
    return None


def _cgroup_room() -> int | None:
    """What this process's cgroup (v2, then v1) still allows, counting its reclaimable file cache as free."""
    for limit, usage, stat, inactive in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat", "inactive_file"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
            "/sys/fs/cgroup/memory/memory.stat",
            "total_inactive_file",
        ),
    ):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is None or used is None or cap >= 1 << 60:  # "max", or no limit
            continue
        return max(0, cap - used + (_read_int(stat, inactive) or 0))
    return None


def available_memory() -> int | None:
    """Bytes this process may still take: Linux's ``MemAvailable`` (free memory and what the kernel can reclaim),
    or a cgroup's limit when that leaves less; elsewhere the physical memory; None when unknown."""
    free = _read_int("/proc/meminfo", "MemAvailable")
    if free is None:
        try:
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    room = _cgroup_room()
    return free if room is None else min(free, room)


def likely_device() -> str:
    """What ``--device auto`` will most likely pick, judged without importing torch: ``mps`` on Apple silicon,
    ``cuda`` where an NVIDIA driver is loaded, else ``cpu`` (the check after loading uses the device it got)."""
    if sys.platform == "darwin":
        return "mps" if os.uname().machine == "arm64" else "cpu"
    return "cuda" if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl") else "cpu"
