"""Renders for the web app: one warm pipeline, one render at a time, a queue with limits, progress, previews, stop.

:class:`Renderer` holds the pipeline, one render thread and the queue in front of it. A request is checked
before it is queued (:meth:`Renderer.check`: the render layer's ``check_render``, the same limits and memory
estimate as the command line), each client may have at most ``queue_per_client`` renders waiting, and a
render that runs longer than ``time_limit_s`` is stopped. Progress is fed from the sampler's ``on_step``
hook (steps and FreeInit passes), a few frames are decoded now and then as a preview, and a render is
stopped (Stop, a cancelled API call, the time budget, the server shutting down) by raising
:class:`~videodiff.sampling.Cancelled` from the hook at its next step: nothing is decoded or written after that.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videodiff.config import RenderConfig
from videodiff.errors import UserError
from videodiff.render import RenderOutcome, check_render, render
from videodiff.sampling import Cancelled
from videodiff.ui import JOB_MINUTES, QUEUE_PER_CLIENT
from videodiff.ui.form import free_name

if TYPE_CHECKING:
    import numpy as np

    from videodiff.pipelines import VideoPipeline

__all__ = ["Cancelled", "Job", "OverTime", "Renderer", "StepHook"]

log = logging.getLogger("videodiff.ui")

PREVIEW_FRAMES = 4  # frames decoded for a preview (evenly spaced)
PREVIEWS = 4  # previews per render at most (decoding costs about one VAE call per frame)
MAX_WAITING = 64  # renders waiting from all clients together

Progress = Callable[[int, int, str], None]  # (done, total, what)
Preview = Callable[["np.ndarray"], None]  # frames [n h w 3] uint8


class OverTime(Cancelled):
    """A render stopped at its time budget (nothing written)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"stopped after {seconds / 60:g} minutes (the server's --job-time-limit)")


class Stopping(Cancelled):
    """A render stopped because the server is shutting down (nothing written)."""


@dataclass(eq=False)
class Job:
    """One queued render: who asked (``client`` counts against the queue cap; ``session``'s Stop stops it)."""

    config: RenderConfig
    client: str
    session: str
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future = field(default_factory=Future)
    ahead: int = 0  # renders queued or running before it when it was queued
    started: float | None = None  # time.monotonic() when it began to run
    steps: int = 0  # sampling steps taken (over every FreeInit pass)
    reason: Cancelled | None = None  # why it is being stopped, once it is

    @property
    def waiting(self) -> bool:
        return self.started is None and not self.future.done()

    def stop(self, reason: Cancelled | None = None) -> None:
        """Stop at the next step (or before it starts); the first reason given is kept."""
        if self.reason is None:
            self.reason = reason or Cancelled("stopped")
        self.cancel.set()


class Renderer:
    """The server's one pipeline, rendering one job at a time on one thread of its own (``pipe`` stays loaded).

    Every render runs on the same thread, whoever asked for it: the memory its tensors take is reused from one
    render to the next (a new thread per render would give the allocator new arenas to fill).
    ``queue_per_client``: renders one client may have waiting (not counting its running one);
    ``time_limit_s``: a running render's budget in seconds, checked at every sampling step.
    """

    def __init__(
        self,
        pipe: VideoPipeline,
        previews: int = PREVIEWS,
        *,
        queue_per_client: int = QUEUE_PER_CLIENT,
        time_limit_s: float = JOB_MINUTES * 60,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self.pipe = pipe
        self.previews = previews
        self.queue_per_client, self.time_limit_s, self.max_waiting = queue_per_client, time_limit_s, max_waiting
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="videodiff-render")
        self._jobs: list[Job] = []  # queued or running, in queue order
        self._lock = threading.Lock()
        self._closing = False
        self.finished: deque[Job] = deque(maxlen=32)  # the latest jobs that ended (for tests and logs)

    # ---------------------------------------------------------------- what is queued
    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs)

    def running(self) -> Job | None:
        return next((job for job in self.jobs() if job.started is not None), None)

    def cancel(self, session: str) -> bool:
        """Stop every render of ``session``, the running one at its next step (True if it had any)."""
        jobs = [job for job in self.jobs() if job.session == session]
        for job in jobs:
            job.stop()
        return bool(jobs)

    def stop_all(self) -> bool:
        """Refuse new renders and stop every queued and running one (the server is shutting down); True if one
        was running."""
        with self._lock:
            self._closing = True
            jobs = list(self._jobs)
        for job in jobs:
            job.stop(Stopping("stopped: the server is shutting down"))
        return any(job.started is not None for job in jobs)

    # ---------------------------------------------------------------- queueing
    def check(self, config: RenderConfig) -> RenderConfig:
        """The checks a render runs before any work (settings, limits, memory estimate, output, inputs), run
        before a request is queued, so a bad one fails at once instead of after its turn."""
        config, _, _ = check_render(config)
        self.pipe.check_frames(config.frames, config.window)
        return config

    def submit(
        self,
        config: RenderConfig,
        session: str = "",
        progress: Progress | None = None,
        preview: Preview | None = None,
        *,
        client: str | None = None,
    ) -> Job:
        """Queue ``config`` for the render thread; ``job.future`` holds what :meth:`render` returns or raises.

        ``client`` (default: ``session``) may have at most ``queue_per_client`` renders waiting: one more is
        a :class:`UserError`, as is any render once :meth:`stop_all` was called.
        """
        job = Job(config, session if client is None else client, session)
        with self._lock:
            if self._closing:
                raise UserError("the server is shutting down; no new renders")
            waiting = [j for j in self._jobs if j.waiting and not j.cancel.is_set()]
            mine = sum(j.client == job.client for j in waiting)
            if mine >= self.queue_per_client:
                raise UserError(
                    f"you have {mine} render{'s' * (mine != 1)} waiting, the most one client may queue "
                    f"(the server's --queue-per-client {self.queue_per_client}): wait for one to finish or stop it"
                )
            if len(waiting) >= self.max_waiting:
                raise UserError(f"the server has {len(waiting)} renders waiting; try again later")
            taken = {str(j.config.output) for j in self._jobs}
            if config.output and str(config.output) in taken:  # one name twice in one second (a double click)
                job.config = config.replace(output=str(free_name(Path(config.output), taken)))
            job.ahead = len(self._jobs)
            self._jobs.append(job)
        self._worker.submit(self._run, job, progress, preview)
        return job

    def _run(self, job: Job, progress: Progress | None, preview: Preview | None) -> None:
        if not job.future.set_running_or_notify_cancel():
            return self._done(job)
        job.started = time.monotonic()
        name = os.path.basename(job.config.output or "")
        try:
            if job.cancel.is_set():
                raise job.reason or Cancelled()
            log.info("rendering %s (for %s)", name, job.client)
            hook = StepHook(self.pipe, job, progress, preview, self.previews, self.time_limit_s)
            outcome = render(job.config, self.pipe, on_step=hook)
        except Cancelled as exc:
            log.info("%s: %s after %d steps; nothing was written", name, job.reason or exc, job.steps)
            job.future.set_exception(job.reason or exc)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            job.future.set_exception(exc)
        else:
            log.info("wrote %s in %.1f s", name, time.monotonic() - job.started)
            job.future.set_result(outcome)
        finally:
            self._done(job)

    def _done(self, job: Job) -> None:
        with self._lock:
            if job in self._jobs:
                self._jobs.remove(job)
        self.finished.append(job)

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
        return self.submit(config, session, progress, preview).future.result()

    def close(self) -> None:
        """Refuse new renders and wait for the render thread to finish what it was given (after
        :meth:`stop_all`: until the running render's next step)."""
        with self._lock:
            self._closing = True
        self._worker.shutdown(wait=True)


class StepHook:
    """The sampler's ``on_step``: stop when asked or over budget, count steps over every pass, preview now and then."""

    def __init__(
        self,
        pipe: VideoPipeline,
        job: Job,
        progress: Progress | None,
        preview: Preview | None,
        previews: int,
        time_limit_s: float = float("inf"),
    ) -> None:
        self.pipe, self.job = pipe, job
        self.progress, self.preview = progress, preview
        self.passes = job.config.free_init + 1
        self.previews = previews
        self.time_limit_s = time_limit_s

    def __call__(self, i: int, total: int, t: Any, t_next: Any, latents: Any, pass_index: int) -> None:
        job = self.job
        if job.cancel.is_set():
            raise job.reason or Cancelled()
        if job.started is not None and time.monotonic() - job.started > self.time_limit_s:
            job.stop(OverTime(self.time_limit_s))
            raise job.reason or OverTime(self.time_limit_s)
        done, steps = pass_index * total + i + 1, self.passes * total
        job.steps = done
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
