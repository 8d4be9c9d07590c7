"""Launchers: how many processes a run has, whether they see each other, closing their group before exit.

    accelerate launch --multi_gpu --num_processes 2 -m videodiff render --prompt-file ...
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m videodiff train ...

Shared by training (whose ``Accelerator`` holds the processes' state) and batch rendering
(which asks :func:`launch_state`). A plain, unlaunched run never imports accelerate here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from videodiff.errors import UserError

__all__ = ["CPU_FLAG_ADVICE", "MULTI_GPU_ADVICE", "SingleProcess", "check_launch", "close", "launch_state", "launched"]

# How to make launched CPU processes see each other, after "on CPUs set ACCELERATE_USE_CPU=1 "
MULTI_GPU_ADVICE = "(and launch with accelerate launch --multi_gpu --num_processes N)"
CPU_FLAG_ADVICE = "(or pass --cpu to accelerate launch)"


class SingleProcess:
    """What callers need of accelerate's ``PartialState``, for a plain unlaunched run."""

    num_processes = 1
    process_index = 0
    is_main_process = True
    device = None  # the config's --device decides

    @contextmanager
    def split_between_processes(self, items: list) -> Iterator[list]:
        yield items

    def wait_for_everyone(self) -> None:
        pass

    def destroy_process_group(self) -> None:
        pass


def world_size(environ: Mapping[str, str] | None = None) -> int:
    """The number of processes a launcher (accelerate launch, torchrun) says it started: ``WORLD_SIZE``, else 1."""
    value = (os.environ if environ is None else environ).get("WORLD_SIZE", "") or "1"
    try:
        return int(value)
    except ValueError:
        raise UserError(f"WORLD_SIZE must be a whole number, got {value!r}") from None


def launched(environ: Mapping[str, str] | None = None) -> bool:
    """Started by a launcher (accelerate launch, torchrun) with several processes."""
    return world_size(environ) > 1


def check_launch(
    num_processes: int, environ: Mapping[str, str] | None = None, *, advice: str = MULTI_GPU_ADVICE
) -> None:
    """Refuse a multi-process launch in which every process believes it is alone (each would do all the work).

    ``advice`` ends the message: how this command's processes are launched so that they see each other.
    """
    world = world_size(environ)
    if world > 1 and num_processes == 1:
        raise UserError(
            f"the launcher started {world} processes but each one sees itself alone; on CPUs set "
            f"ACCELERATE_USE_CPU=1 {advice}"
        )


def _partial_state():
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def launch_state():
    """accelerate's ``PartialState`` under a multi-process launcher, else a :class:`SingleProcess` (no accelerate)."""
    if not launched():
        return SingleProcess()
    state = _partial_state()
    check_launch(state.num_processes)
    return state


def close(state) -> None:
    """Close the process group of ``state`` (a ``PartialState``, an ``AcceleratorState`` or a :class:`SingleProcess`).

    torch's gloo threads can abort the interpreter's exit (SIGABRT, "terminate called without an
    active exception") when the process group is left to the finaliser: close it while Python is
    still alive.
    """
    state.destroy_process_group()
