"""``videodiff train``'s entry: the trainer its settings ask for (temporal layers, or ``--controlnet``), run."""

from __future__ import annotations

from pathlib import Path

from videodiff.config import TrainConfig
from videodiff.training.controlnet import ControlNetTrainer
from videodiff.training.loop import Trainer
from videodiff.training.loop import train as train_with

__all__ = ["train"]


def train(config: TrainConfig) -> Path:
    """Train as ``config`` says; returns the run folder. Launch with ``accelerate launch`` for several processes."""
    return train_with(config, ControlNetTrainer if config.controlnet else Trainer)
