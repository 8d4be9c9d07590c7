"""Renders for the web app: one warm pipeline, one render at a time, progress, previews and a stop button.

Gradio's queue decides whose turn it is; :class:`Renderer` holds the pipeline and one render thread (so even
a caller outside the queue renders in turn), feeds progress from the sampler's ``on_step`` hook (steps and
FreeInit passes), decodes a few frames now and then as a preview, and stops a render when asked by raising
:class:`~videodiff.sampling.Cancelled` from the hook: nothing is decoded or written after that.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from videodiff.config import RenderConfig
from videodiff.render import RenderOutcome, render

if TYPE_CHECKING:
    import numpy as np

    from videodiff.pipelines import VideoPipeline

PREVIEW_FRAMES = 4  # frames decoded for a preview (evenly spaced)
PREVIEWS = 4  # previews per render at most (decoding costs about one VAE call per frame)

Progress = Callable[[int, int, str], None]  # (done, total, what)
Preview = Callable[["np.ndarray"], None]  # frames [n h w 3] uint8


@dataclass
class Job:
    session: str
    cancel: threading.Event


class Renderer:
    """The server's one pipeline, rendering one job at a time on one thread of its own (``pipe`` stays loaded).

    Every render runs on the same thread, whoever asked for it: the memory its tensors take is reused from one
    render to the next (a new thread per render would give the allocator new arenas to fill).
    """

    def __init__(self, pipe: VideoPipeline, previews: int = PREVIEWS) -> None:
        self.pipe = pipe
        self.previews = previews
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="videodiff-render")
        self._jobs: dict[str, Job] = {}  # session -> its render, queued or running
        self._jobs_lock = threading.Lock()

    def cancel(self, session: str) -> bool:
        """Stop ``session``'s render at its next step (True if it had one)."""
        with self._jobs_lock:
            job = self._jobs.get(session)
        if job is None:
            return False
        job.cancel.set()
        return True

    def submit(
        self,
        config: RenderConfig,
        session: str = "",
        progress: Progress | None = None,
        preview: Preview | None = None,
    ) -> Future[RenderOutcome]:
        """Queue ``config`` for the render thread; the future holds what :meth:`render` returns or raises."""
        job = Job(session, threading.Event())
        with self._jobs_lock:
            self._jobs[session] = job

        def run() -> RenderOutcome:
            from videodiff.sampling import Cancelled

            try:
                if job.cancel.is_set():
                    raise Cancelled()
                hook = StepHook(self.pipe, config, job.cancel, progress, preview, self.previews)
                return render(config, self.pipe, on_step=hook)
            finally:
                with self._jobs_lock:
                    if self._jobs.get(session) is job:
                        del self._jobs[session]

        return self._worker.submit(run)

    def render(
        self,
        config: RenderConfig,
        session: str = "",
        progress: Progress | None = None,
        preview: Preview | None = None,
    ) -> RenderOutcome:
        """Render ``config`` through the render layer (the CLI's: names, checks, sidecar, atomic writes).

        Raises :class:`~videodiff.sampling.Cancelled` when :meth:`cancel` was called for ``session``
        (then nothing was written), :class:`~videodiff.errors.UserError` for settings that cannot work.
        """
        return self.submit(config, session, progress, preview).result()

    def close(self) -> None:
        self._worker.shutdown(wait=True)


class StepHook:
    """The sampler's ``on_step``: stop when asked, count steps over every pass, decode a preview now and then."""

    def __init__(
        self,
        pipe: VideoPipeline,
        config: RenderConfig,
        cancel: threading.Event,
        progress: Progress | None,
        preview: Preview | None,
        previews: int,
    ) -> None:
        self.pipe, self.cancel = pipe, cancel
        self.progress, self.preview = progress, preview
        self.passes = config.free_init + 1
        self.previews = previews

    def __call__(self, i: int, total: int, t: Any, t_next: Any, latents: Any, pass_index: int) -> None:
        from videodiff.sampling import Cancelled

        if self.cancel.is_set():
            raise Cancelled()
        done, steps = pass_index * total + i + 1, self.passes * total
        if self.progress is not None:
            what = f"step {i + 1}/{total}" + (f", pass {pass_index + 1}/{self.passes}" if self.passes > 1 else "")
            self.progress(done, steps, what)
        every = max(1, steps // max(1, self.previews))
        if self.preview is not None and self.previews and done % every == 0 and done < steps:
            self.preview(self.decode_preview(latents))
        return None

    def decode_preview(self, latents: Any) -> np.ndarray:
        """A few frames ``[n h w 3]`` uint8 of the latents as they are now (evenly spaced; one VAE call each)."""
        frames = latents.shape[2]
        picks = sorted({round(k * (frames - 1) / max(1, PREVIEW_FRAMES - 1)) for k in range(PREVIEW_FRAMES)})
        return self.pipe.decode(latents[:, :, picks], chunk=1)
