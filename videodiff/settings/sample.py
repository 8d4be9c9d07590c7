"""What to sample: :class:`SampleSettings` and the names its choices take (schedulers, noise priors, windows).

Each field is written once with :func:`~videodiff.settings.fields.setting`: its default (with the reason
beside it), help, choices and bounds; ``validate()`` checks the bounds from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from videodiff.errors import UserError
from videodiff.settings.checks import (
    LCM_MAX_STEPS,
    MAX_CACHE,
    MAX_FRAMES,
    MAX_FREE_INIT,
    MAX_SIDE,
    MAX_STEPS,
    check_interval,
    check_text,
    check_types,
)
from videodiff.settings.fields import check_bounds, check_choices, setting, shown

SCHEDULERS = ("ddim", "euler", "euler-a", "dpm++", "lcm", "model")
# How a scheduler spreads its steps over the 1000 training timesteps (diffusers' timestep_spacing); linspace is
# AnimateDiff's, trailing is what few-step models (AnimateDiff-Lightning) were distilled for (Lin et al. 2024)
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
NOISE_KINDS = ("independent", "mixed", "progressive")  # priors of videodiff.noise
FUSE_KINDS = ("pyramid", "flat", "overlap-linear")  # weights of overlapping windows (videodiff.windows)
WINDOW_NOISE = ("freenoise", "plain")  # initial noise of windowed videos (videodiff.noise.reschedule)
# what runs per window: the whole U-Net (memory follows the window) or only the motion modules' attention
# (FreeNoise's way: the spatial layers see every frame, so memory grows with the video)
WINDOW_LAYERS = ("unet", "temporal")
FREE_INIT_FILTERS = ("butterworth", "gaussian", "ideal")  # FreeInit's low-pass filters (videodiff.noise)
TRAVEL = ("linear", "slerp")  # prompt travel: how embeddings are interpolated between keyframes
# where the motion prior draws its guess: resampled in latents, or moved in pixels and encoded by the VAE
MOTION_PRIOR_SPACES = ("latent", "pixels")

SIDE = 8  # frame sides are multiples of 8: the VAE downsamples by 8
_TOO_LARGE = "--{flag} {value} is too large: at most {max} pixels (SD1.5 models work at 512)"


@dataclass(frozen=True, kw_only=True)
class SampleSettings:
    """What to sample: prompt, frames, size, steps, guidance, scheduler, noise, seed, where sampling starts."""

    prompt: str | None = setting(None, "The text to render.")  # may come from the config file
    negative: str | None = setting(None, "Negative prompt (used only with guidance above 1).")
    frames: int = setting(  # AnimateDiff's motion modules were trained on 16-frame clips
        16,
        "Number of frames.",
        min=1,
        max=MAX_FRAMES,
        too_large="--{flag} {value} is too many: at most {max} frames in one video",
    )
    steps: int = setting(  # 25 DDIM steps is AnimateDiff's published setting
        25,
        "Denoising steps.",
        min=1,
        max=MAX_STEPS,
        too_large="--{flag} {value} is too many: at most {max} (the schedule has 1000 timesteps)",
    )
    guidance: float = setting(  # SD1.5's usual value; <= 1 disables it
        7.5, "Classifier-free guidance scale.", min=0, finite=False, must="a number >= 0"
    )
    seed: int | None = setting(
        None,
        "Random seed (drawn, printed and recorded when omitted).",
        min=0,
        max=2**64 - 1,
        must="a whole number from 0 to 2^64-1",
    )
    height: int | None = setting(  # None: the model's
        None,
        "Frame height, a multiple of 8 (default: the model's).",
        min=1,
        max=MAX_SIDE,
        step=SIDE,
        too_large=_TOO_LARGE,
    )
    width: int | None = setting(  # preferred size
        None,
        "Frame width, a multiple of 8 (default: the model's).",
        min=1,
        max=MAX_SIDE,
        step=SIDE,
        too_large=_TOO_LARGE,
    )
    # ddim with AnimateDiff's betas is what they saw
    scheduler: str = setting("ddim", "|".join(SCHEDULERS) + ".", choices=SCHEDULERS)
    timestep_spacing: str = setting(  # linspace: AnimateDiff's; few-step models record theirs (videodiff.json)
        "linspace",
        "How the steps spread over the schedule: " + "|".join(TIMESTEP_SPACINGS) + " (trailing for "
        "AnimateDiff-Lightning; every --scheduler but model, whose own config decides, and lcm, which has its own).",
        choices=TIMESTEP_SPACINGS,
    )
    guidance_interval: tuple[float, float] | None = setting(  # None: every step (the same as 0,1)
        None,
        "LOW,HIGH: run guidance's unconditional branch only for steps inside this part of the steps sampled "
        "(0 the first and noisiest, 1 the last); outside it the conditional prediction alone "
        "[default: the model's, else 0,1: every step].",
    )
    noise: str = setting("independent", "Initial noise: " + "|".join(NOISE_KINDS) + ".", choices=NOISE_KINDS)
    # PYoCo's alpha: frame correlation a^2/(1+a^2) (mixed), a/sqrt(1+a^2) (progressive)
    noise_alpha: float = setting(
        1.0,
        "Frame correlation strength for mixed/progressive noise (PYoCo's alpha).",
        min=0,
        must="a finite number >= 0",
    )
    motion_prior: float = setting(  # 0: pure noise
        0.0,
        "Start this fraction into the schedule from the model's motion prior (a guess of the moving object's "
        "track from the prompt); 0 starts from pure noise.",
        min=0,
        max=1,
        max_open=True,
        must="a number from 0 up to (not including) 1",
    )
    motion_prior_space: str = setting(  # latent: what every sidecar written before the choice rendered
        "latent",
        "Where the motion prior draws its guess: latent (the patch resampled between latent cells) or pixels "
        "(moved in pixels and encoded by the VAE: one more VAE decode and encode) [default: the model's, else latent].",
        choices=MOTION_PRIOR_SPACES,
    )
    motion: tuple[float, float] | None = setting(  # None: the prompt's
        None,
        "The motion prior's velocity DX,DY in pixels per frame, x right, y down [default: predicted from the prompt].",
    )
    decode_chunk: int | None = setting(  # None: 2 on the CPU (heap reuse), 16 elsewhere
        None, "Frames per VAE decode call [default: 2 on the CPU, 16 on a GPU].", min=1
    )
    # sliding windows: videos longer than the motion modules' training clips (videodiff.windows)
    window: int | None = setting(  # None: the motion modules' train_frames
        None,
        "Frames per sliding window when --frames exceeds it [default: the motion modules' training length].",
        min=1,
    )
    overlap: int | None = setting(
        None, "Frames shared by neighbouring windows [default: a quarter of the window].", min=0
    )
    fuse: str = setting(
        "pyramid", "How overlapping windows' outputs are weighted: " + "|".join(FUSE_KINDS) + ".", choices=FUSE_KINDS
    )
    loop: bool = setting(False, "Wrap the windows around the end: a closed loop (seamless GIFs).")
    window_noise: str = setting(  # FreeNoise (Qiu et al. 2023): windows agree on what they start from
        "freenoise",
        "Initial noise with windows: freenoise (the first window's noise, shuffled, for the later ones) or plain.",
        choices=WINDOW_NOISE,
    )
    window_layers: str = setting(
        "unet",
        "What runs per window: unet (the whole U-Net; memory follows the window) or temporal (only the motion "
        "modules' attention, FreeNoise's way; every other layer sees all frames, so memory grows with them).",
        choices=WINDOW_LAYERS,
    )
    free_init: int = setting(
        0,
        "FreeInit: re-noise the result (fresh high frequencies) and sample again N times.",
        min=0,
        max=MAX_FREE_INIT,
        must=f"a whole number from 0 (off) to {MAX_FREE_INIT}",
    )
    free_init_filter: str = setting(
        "butterworth", "FreeInit's low-pass filter: " + "|".join(FREE_INIT_FILTERS) + ".", choices=FREE_INIT_FILTERS
    )
    free_init_spatial: float = setting(
        0.25,
        "FreeInit's spatial cutoff (normalised frequency, 0 to 1).",
        min=0,
        min_open=True,
        max=1,
        must="a number above 0 and at most 1",
    )
    free_init_temporal: float = setting(
        0.25,
        "FreeInit's temporal cutoff (normalised frequency, 0 to 1).",
        min=0,
        min_open=True,
        max=1,
        must="a number above 0 and at most 1",
    )
    prompt_at: dict[int, str] | None = setting(  # {frame: prompt}; PROMPT, if given too, is frame 0's
        None, "FRAME:TEXT: the prompt from that frame on (prompt travel); repeatable, PROMPT may then be omitted."
    )
    travel: str = setting(
        "linear", "How prompts blend between --prompt-at frames: " + "|".join(TRAVEL) + ".", choices=TRAVEL
    )
    cache: int = setting(  # 1: off (opt-in: it trades quality for time, see the Benchmarks page of the docs)
        1,
        f"Feature caching (DeepCache): run the deep U-Net blocks on every N-th step only and reuse their "
        f"features in between (1 to {MAX_CACHE}); 1: off.",
        min=1,
        max=MAX_CACHE,
        must=f"a whole number from 1 (off) to {MAX_CACHE}",
    )

    def validate(self) -> SampleSettings:
        """Raise :class:`UserError` (one line) for any of these settings that cannot work; return self."""
        check_types(self, SampleSettings)
        check_text(self.prompt, "the prompt")
        check_text(self.negative, "--negative")
        for frame, text in (self.prompt_at or {}).items():
            check_text(text, f"--prompt-at {frame}")  # the same limits as PROMPT
        check_bounds(self, "frames", "steps", "decode_chunk", upper=False)
        check_bounds(self, "steps", "frames", lower=False)
        for name in ("height", "width"):
            check_bounds(self, name)
            value = getattr(self, name)
            if value is not None and value % SIDE:
                nearest = max(SIDE, int(round(value / SIDE)) * SIDE)
                raise UserError(f"--{name} {value} is not a multiple of 8; the nearest valid value is {nearest}")
        check_bounds(self, "guidance")
        if math.isinf(self.guidance):
            raise UserError("--guidance must be finite")
        check_bounds(self, "noise_alpha", "motion_prior")
        numbers = [v for v in self.motion or () if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if self.motion is not None and (len(numbers) != 2 or not all(map(math.isfinite, numbers))):
            raise UserError(f"--motion must be two finite numbers DX,DY (pixels per frame), got {shown(self.motion)}")
        check_bounds(self, "seed")
        check_choices(self, "scheduler", "noise", "timestep_spacing", "motion_prior_space")
        if self.scheduler == "lcm" and self.steps > LCM_MAX_STEPS:
            raise UserError(f"--steps {self.steps} is too many for lcm: at most {LCM_MAX_STEPS} (its own schedule)")
        check_interval(self.guidance_interval)
        self._validate_long()
        check_bounds(self, "cache")
        return self

    def _validate_long(self) -> None:
        """Windows, FreeInit and prompt travel."""
        check_bounds(self, "window", "overlap")
        if self.window is not None and self.overlap is not None and self.overlap >= self.window:
            raise UserError(f"--overlap {self.overlap} must be less than --window {self.window}")
        check_bounds(self, "free_init", "free_init_spatial", "free_init_temporal")
        for frame in self.prompt_at or {}:
            if not 0 <= frame < self.frames:
                raise UserError(f"--prompt-at frame {frame} is outside the video's frames 0 to {self.frames - 1}")
        check_choices(self, "fuse", "window_noise", "window_layers", "free_init_filter", "travel")

    def keyframes(self) -> dict[int, str]:
        """Prompt travel's ``{frame: prompt}`` in frame order: ``prompt_at``, with ``prompt`` at frame 0 unless
        ``prompt_at`` names frame 0 (``{0: prompt}`` without ``prompt_at``)."""
        keys = dict(self.prompt_at or {})
        if self.prompt and 0 not in keys:
            keys[0] = self.prompt
        return dict(sorted(keys.items()))
