"""videodiff.launch: the check shared by ``train`` and batch ``render`` under a launcher, without launching.

Launched runs themselves are tested in test_training.py and test_batch.py (two CPU processes).
"""

from __future__ import annotations

import pytest

from videodiff import launch
from videodiff.errors import UserError
from videodiff.launch import CPU_FLAG_ADVICE, MULTI_GPU_ADVICE, check_launch


@pytest.mark.parametrize("advice", [CPU_FLAG_ADVICE, MULTI_GPU_ADVICE], ids=["train", "render"])
def test_check_launch(monkeypatch, advice):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_launch(1, advice=advice)
    monkeypatch.setenv("WORLD_SIZE", "")
    check_launch(1, advice=advice)
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_launch(1, advice=advice)
    monkeypatch.setenv("WORLD_SIZE", "4")
    check_launch(4, advice=advice)
    with pytest.raises(UserError, match="4 processes") as info:
        check_launch(1, advice=advice)
    assert str(info.value).endswith(f"ACCELERATE_USE_CPU=1 {advice}")  # each command keeps its own advice


def test_check_launch_refuses_processes_that_each_think_they_are_alone():
    with pytest.raises(UserError, match="ACCELERATE_USE_CPU=1"):
        check_launch(1, {"WORLD_SIZE": "2"})
    check_launch(2, {"WORLD_SIZE": "2"})
    check_launch(1, {})
    assert launch.launched({"WORLD_SIZE": "2"}) and not launch.launched({})


def test_plain_run_does_not_touch_accelerate(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(launch, "_partial_state", lambda: pytest.fail("accelerate initialised"))
    assert isinstance(launch.launch_state(), launch.SingleProcess)


def test_world_size_that_is_not_a_number_is_a_user_error():
    with pytest.raises(UserError, match="WORLD_SIZE must be a whole number"):
        launch.launched({"WORLD_SIZE": "two"})
