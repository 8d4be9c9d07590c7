"""FreeInit (Wu et al. 2023): the start of each further sampling pass, and one progress bar over all passes."""

from __future__ import annotations

import torch

from videodiff import noise as noise_priors
from videodiff import sampling, starts, windows
from videodiff.config import SampleSettings


def free_init_start(
    settings: SampleSettings,
    result: torch.Tensor,
    begin: starts.Start,
    noise: torch.Tensor,
    scheduler,
    generator: torch.Generator | None,
    plan: windows.WindowPlan | None,
    device: torch.device,
    dtype: torch.dtype,
) -> starts.Start:
    """FreeInit (Wu et al. 2023): the next pass's start from the last pass's ``result``: the result noised
    by the first pass's ``noise`` to where sampling starts, low-pass filtered in space and time, plus the
    high frequencies of fresh noise (the same prior, rescheduled the same way) at that noise level."""
    schedule = sampling.Schedule(scheduler, settings.steps, begin.step, device)
    fresh = noise_priors.sample_noise(
        noise.shape, kind=settings.noise, alpha=settings.noise_alpha, generator=generator
    )
    if plan is not None and settings.window_noise == "freenoise":
        fresh = noise_priors.reschedule(fresh, plan.window, plan.stride, generator)
    result = result.float()
    lowpass = noise_priors.lowpass_filter(
        result.shape, settings.free_init_filter, settings.free_init_spatial, settings.free_init_temporal
    )
    if begin.step > 0:  # a start part-way (motion prior, pictures, a clip): the result whole, the noise renewed
        renewed = noise_priors.mix_frequencies(noise.float().to(result.device), fresh.to(result.device), lowpass)
        return starts.Start(schedule.add_noise(result, renewed).to(device, dtype), begin.step, begin.record)
    low = schedule.add_noise(result, noise.float().to(result.device))
    high = schedule.add_noise(torch.zeros_like(result), fresh.to(result.device))
    mixed = noise_priors.mix_frequencies(low, high, lowpass)
    return starts.Start(mixed.to(device, dtype), begin.step, begin.record)


class FreeInitProgress:
    """One progress bar over every FreeInit pass (steps x passes), fed by the step hook; ``on_step`` still runs."""

    def __init__(self, total: int, shown: bool, on_step: sampling.OnStep | None) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, disable=not shown, desc="denoising (FreeInit)", leave=False)
        self.inner = on_step

    def on_step(self, i, total, t, t_next, latents, pass_index):
        self.bar.update()
        self.bar.set_postfix_str(f"pass {pass_index + 1}")
        return self.inner(i, total, t, t_next, latents, pass_index) if self.inner else None

    def close(self) -> None:
        self.bar.close()
