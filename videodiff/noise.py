"""Initial noise for video latents: the one place that draws it.

Sampling (the starting latent ``x_T``) and training (the ``eps`` added to a clean
latent) both call :func:`sample_noise`, so the two always agree on what "noise"
means for a given kind, alpha and seed.

Shapes follow the package convention: video latents are ``[b c f h w]``.

Kinds
-----
``independent``
    i.i.d. N(0, I) over every element, drawn exactly like diffusers' video
    pipelines, ``torch.randn((b, c, f, h, w), generator=cpu_generator)``, so a
    seed reproduces their starting latent bitwise.
``mixed``
    PYoCo mixed noise model (Ge et al. 2023, "Preserve Your Own Correlation: A
    Noise Prior for Video Diffusion Models", eq. 5): a component shared by all
    frames of a video plus a per-frame component.
``progressive``
    PYoCo progressive noise model (same paper, eq. 6): each frame's noise is an
    AR(1) step from the previous frame's.

Both PYoCo kinds keep every element's marginal at N(0, 1), which is what the
diffusion schedule assumes; only the correlation *between frames* changes.

Reproducibility: randomness is always drawn on the CPU in float32 and only then
moved to the requested device/dtype, because CUDA/MPS generators produce
different streams from the CPU one; this way a seed names the same noise
everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange

from videodiff.config import FREE_INIT_FILTERS, NOISE_KINDS
from videodiff.errors import UserError

__all__ = [
    "NOISE_KINDS",
    "expected_correlation",
    "frame_correlation",
    "freenoise_order",
    "lowpass_filter",
    "mix_frequencies",
    "reschedule",
    "sample_noise",
]


def _check_kind_alpha(kind: str, alpha: float) -> float:
    """Validate ``kind`` and ``alpha`` (user settings), returning alpha as a float."""
    if kind not in NOISE_KINDS:
        raise UserError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise UserError(f"noise alpha must be a finite number >= 0, got {alpha!r}") from None
    # NaN fails both comparisons, so test finiteness explicitly.
    if not math.isfinite(a) or a < 0:
        raise UserError(f"noise alpha must be a finite number >= 0, got {alpha!r}")
    return a


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int, int, int]:
    """Return ``shape`` as a 5-tuple of ints ``(b, c, f, h, w)`` or raise ValueError."""
    dims = tuple(int(d) for d in shape)
    if len(dims) != 5:
        raise ValueError(f"noise shape must be (b, c, f, h, w), got {tuple(shape)}")
    return dims  # type: ignore[return-value]


def sample_noise(
    shape: Sequence[int],
    *,
    kind: str = "independent",
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Draw initial noise of shape ``[b c f h w]``.

    Args:
        shape: ``(b, c, f, h, w)``; anything else raises ``ValueError``.
        kind: one of :data:`NOISE_KINDS`.
        alpha: PYoCo's correlation strength ``a >= 0`` (ignored by
            ``independent``). ``mixed``: inter-frame correlation
            ``a^2 / (1 + a^2)``; ``progressive``: ``(a / sqrt(1 + a^2))^|i-j|``.
            ``alpha = 0`` makes both independent in distribution.
        generator: a CPU ``torch.Generator`` (or ``None`` for the global RNG).
        device, dtype: where and as what the result is returned; the draw
            itself always happens on the CPU in float32.

    Returns:
        ``[b c f h w]`` tensor with every element ~ N(0, 1).

    ``independent`` consumes the generator exactly like
    ``torch.randn(shape, generator=generator)`` and returns the same values.
    ``mixed`` and ``progressive`` first draw that same full-shape tensor (so at
    ``alpha = 0`` they return it unchanged); ``mixed`` then draws the shared
    ``[b c 1 h w]`` component.
    """
    dims = _check_shape(shape)
    a = _check_kind_alpha(kind, alpha)
    if generator is not None and generator.device.type != "cpu":
        # A CUDA generator would give device-dependent noise; refuse it loudly.
        raise UserError(f"noise generator must be a CPU torch.Generator, got one on {generator.device}")

    # One full-shape draw first: for `independent` this *is* the result, and
    # keeping it first for the other kinds makes alpha=0 reduce to it exactly.
    base = torch.randn(dims, generator=generator, dtype=torch.float32)

    if kind == "independent":
        noise = base
    elif kind == "mixed":
        # PYoCo eq. 5: eps_f = sqrt(a^2/(1+a^2)) * shared + sqrt(1/(1+a^2)) * ind_f.
        # Weights' squares sum to 1, so each frame stays unit variance.
        b, c, _, h, w = dims
        shared = torch.randn((b, c, 1, h, w), generator=generator, dtype=torch.float32)
        w_shared = math.sqrt(a * a / (1.0 + a * a))
        w_ind = math.sqrt(1.0 / (1.0 + a * a))
        # `shared` broadcasts over the frame axis: one draw per video.
        noise = w_shared * shared + w_ind * base
    else:  # progressive
        # PYoCo eq. 6: eps_0 = xi_0; eps_f = r * eps_{f-1} + s * xi_f with
        # r = a/sqrt(1+a^2), s = 1/sqrt(1+a^2); r^2 + s^2 = 1 keeps unit variance.
        r = a / math.sqrt(1.0 + a * a)
        s = 1.0 / math.sqrt(1.0 + a * a)
        frames = [base[:, :, 0]]
        for f in range(1, dims[2]):
            frames.append(r * frames[-1] + s * base[:, :, f])
        noise = torch.stack(frames, dim=2)

    return noise.to(device=device, dtype=dtype)


def frame_correlation(noise: torch.Tensor) -> torch.Tensor:
    """Empirical Pearson correlation between frames of ``noise``.

    Args:
        noise: ``[b c f h w]``.

    Returns:
        ``[f f]`` float64 matrix; entry ``(i, j)`` correlates frame ``i`` with
        frame ``j`` over all ``b, c, h, w`` positions. Frames with zero
        variance give NaN rows.
    """
    if noise.ndim != 5:
        raise ValueError(f"noise must be [b c f h w], got shape {tuple(noise.shape)}")
    # float64 so the diagnostic is not limited by half-precision inputs.
    per_frame = rearrange(noise.detach().to("cpu", torch.float64), "b c f h w -> f (b c h w)")
    # torch.corrcoef squeezes a single row to a 0-d tensor; keep it [f f].
    return torch.corrcoef(per_frame).reshape(noise.shape[2], noise.shape[2])


def expected_correlation(kind: str, alpha: float, num_frames: int) -> torch.Tensor:
    """Theoretical ``[f f]`` inter-frame correlation of :func:`sample_noise`.

    - ``independent``: identity.
    - ``mixed`` (PYoCo eq. 5): 1 on the diagonal, ``a^2 / (1 + a^2)`` elsewhere.
    - ``progressive`` (PYoCo eq. 6): ``(a / sqrt(1 + a^2)) ** |i - j|``.

    Returns a float64 ``[num_frames, num_frames]`` tensor.
    """
    a = _check_kind_alpha(kind, alpha)
    if int(num_frames) < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    n = int(num_frames)
    eye = torch.eye(n, dtype=torch.float64)
    if kind == "independent":
        return eye
    if kind == "mixed":
        rho = a * a / (1.0 + a * a)
        return eye + rho * (1.0 - eye)
    idx = torch.arange(n, dtype=torch.float64)
    lag = (idx[:, None] - idx[None, :]).abs()
    # 0 ** 0 == 1, so alpha = 0 still gives the identity.
    return torch.pow(torch.tensor(a / math.sqrt(1.0 + a * a), dtype=torch.float64), lag)


# ---------------------------------------------------------------------------------------------------------------------
# Long videos: FreeNoise's rescheduling (windows) and FreeInit's frequency mixing


def freenoise_order(frames: int, window: int, stride: int, generator: torch.Generator | None = None) -> list[int]:
    """FreeNoise's noise rescheduling (Qiu et al. 2023, sec. 3.2) as frame indices: frame ``i`` takes the noise
    of frame ``order[i]``, always one of the first ``window`` frames.

    The first window keeps its own noise; from there on every ``stride`` frames take the noise of the ``stride``
    frames one window earlier, in an order shuffled by ``generator`` (``torch.randperm``): so each later window
    holds the first window's noise, shuffled within it (as diffusers' ``_prepare_latents_free_noise``). The
    shuffle is the generator's only use here: one seed, one order.
    """
    order = list(range(min(frames, window)))
    for begin in range(window, frames, stride):
        source = order[begin - window : begin - window + stride]
        perm = torch.randperm(len(source), generator=generator).tolist()
        order.extend(source[p] for p in perm[: frames - begin])
    return order[:frames]


def reschedule(noise: torch.Tensor, window: int, stride: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``noise`` ``[b c f h w]`` with its frames rescheduled as :func:`freenoise_order` says (a new tensor).

    Every prior's noise is drawn for the whole video first and then rescheduled, so ``mixed`` keeps its
    shared component in every frame and ``progressive`` its AR(1) chain inside the first window (later
    windows hold shuffled pieces of that chain); every element stays N(0, 1).
    """
    order = freenoise_order(noise.shape[2], window, stride, generator)
    return noise[:, :, order].clone()


def lowpass_filter(
    shape: Sequence[int], kind: str = "butterworth", spatial: float = 0.25, temporal: float = 0.25, order: int = 4
) -> torch.Tensor:
    """FreeInit's (Wu et al. 2023) low-pass filter ``[f h w]`` for centred (``fftshift``-ed) 3-D spectra.

    ``spatial``/``temporal`` are the normalised cutoffs (0 to 1, 1 the Nyquist frequency); the distance of a
    frequency from the centre is ``d^2 = ((spatial/temporal) * ft)^2 + fh^2 + fw^2`` with ``ft, fh, fw`` in
    ``[-1, 1]``, as FreeInit's code measures it. ``butterworth``: ``1 / (1 + (d^2 / spatial^2)^order)``;
    ``gaussian``: ``exp(-d^2 / (2 spatial^2))``; ``ideal``: 1 where ``d <= 2 spatial`` (FreeInit's cut), else 0.
    """
    if kind not in FREE_INIT_FILTERS:
        raise UserError(f"unknown --free-init-filter {kind!r}; choose one of: {', '.join(FREE_INIT_FILTERS)}")
    f, h, w = (int(n) for n in shape[-3:])

    def axis(n: int) -> torch.Tensor:
        return (2 * torch.arange(n, dtype=torch.float32) / n - 1) if n > 1 else torch.zeros(1)

    ft, fh, fw = torch.meshgrid(axis(f), axis(h), axis(w), indexing="ij")
    d2 = ((spatial / temporal) * ft) ** 2 + fh**2 + fw**2
    if kind == "butterworth":
        return 1 / (1 + (d2 / spatial**2) ** order)
    if kind == "gaussian":
        return torch.exp(-d2 / (2 * spatial**2))
    return (d2 <= (2 * spatial) ** 2).float()


def mix_frequencies(low_from: torch.Tensor, high_from: torch.Tensor, lowpass: torch.Tensor) -> torch.Tensor:
    """FreeInit's noise reinitialisation: the low spatio-temporal frequencies of ``low_from`` and the high ones of
    ``high_from`` (both ``[b c f h w]``), split by ``lowpass`` ``[f h w]`` (:func:`lowpass_filter`)."""
    dims = (-3, -2, -1)
    low = torch.fft.fftshift(torch.fft.fftn(low_from.float(), dim=dims), dim=dims)
    high = torch.fft.fftshift(torch.fft.fftn(high_from.float(), dim=dims), dim=dims)
    mask = lowpass.to(low.device)
    mixed = low * mask + high * (1 - mask)
    out = torch.fft.ifftn(torch.fft.ifftshift(mixed, dim=dims), dim=dims).real
    return out.to(low_from.dtype)
