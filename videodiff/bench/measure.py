"""What ``videodiff bench diffusers`` measures besides time: peak memory, and FLOPs for the fraction of peak."""

from __future__ import annotations

from pathlib import Path

import torch


class PeakMemory:
    """Peak memory of the code inside: ``max_memory_allocated`` on GPU, else the highest RSS a sampling
    thread sees above the RSS before (a process's own peak RSS cannot be reset)."""

    def __init__(self, device: str) -> None:
        self.device, self.peak = device, 0

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            return self
        import threading

        import psutil

        proc = psutil.Process()
        self.base, self._stop = proc.memory_info().rss, threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.01):
                self.peak = max(self.peak, proc.memory_info().rss - self.base)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()


def count_flops(model: Path, motion: Path, render: dict, device: str, dtype: str, batch: int = 2) -> dict:
    """FLOPs of one U-Net call (``batch`` 2: guided) and of the VAE decode of all frames (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    from videodiff.pipelines import load_pipeline

    pipe = load_pipeline(str(model), str(motion), device=device, dtype=dtype)
    f, h, w = render["num_frames"], render["height"], render["width"]
    latents = torch.randn(pipe.latent_shape(f, h, w), device=device, dtype=pipe.dtype)
    context = pipe.encode("a red circle moving right")
    with torch.no_grad():
        with FlopCounterMode(display=False) as unet_count:
            pipe.unet(torch.cat([latents] * batch), torch.tensor(500, device=device), torch.cat([context] * batch))
        with FlopCounterMode(display=False) as vae_count:
            from videodiff import vae

            vae.decode(pipe.vae, latents, chunk=f)
    return {"unet_tflop_per_step": unet_count.get_total_flops() / 1e12, "vae_tflop": vae_count.get_total_flops() / 1e12}
