"""Training the temporal layers of an SDXL model: a few steps on the tiny SDXL model lower nothing but the motion
modules, and a run stopped half-way and resumed ends bit-exactly where an uninterrupted run does, as on SD1.5 (the
SD1.5 test itself, called with the SDXL model)."""

from __future__ import annotations

import pytest
import test_training as training
import torch
from clips import write_dataset

from videodiff import families


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("three-clips"), count=3)


def test_resume_is_exact_on_sdxl(tiny_sdxl_model, tiny_sdxl_motion, clips, tmp_path, monkeypatch, one_thread):
    training.test_resume_is_exact(tiny_sdxl_model, tiny_sdxl_motion, clips, tmp_path, monkeypatch, True, 0, {})


def test_training_sdxl_changes_only_the_motion_modules_and_sees_the_pooled_text(
    tiny_sdxl_model, tiny_sdxl_motion, clips, tmp_path, monkeypatch, one_thread
):
    seen = []
    config = training.settings(tiny_sdxl_model, clips, tmp_path / "run", motion_module=tiny_sdxl_motion, steps=2)
    trainer = training.Trainer(config)
    real = training.VideoUNet.forward

    def spy(self, sample, timestep, cond):
        seen.append({k: cond[k].shape for k in ("text_embeds", "time_ids")})
        return real(self, sample, timestep, cond)

    monkeypatch.setattr(training.VideoUNet, "forward", spy)
    trainer.train()
    assert trainer.parts.family is families.SDXL
    assert seen and seen[0] == {"text_embeds": torch.Size([1, 24]), "time_ids": torch.Size([1, 6])}
    assert all(n.startswith("motion.") for n in trainer.trained_names)
