"""scripts/train_shapes.py: the stage-1 loops checkpoint and resume exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_shapes.py"


@pytest.fixture(scope="module")
def train_shapes():
    spec = importlib.util.spec_from_file_location("train_shapes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Interrupted(Exception):
    pass


def vae_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "base" / "vae" / "diffusion_pytorch_model.safetensors"))


def test_vae_stage_resumes_exactly(tmp_path, train_shapes, monkeypatch):
    bank = train_shapes.FrameBank(4, seed=0)
    monkeypatch.setattr(train_shapes, "vae_check", lambda *a: 0.0)  # the detector gate is not under test
    args = dict(steps=4, batch=2, device="cpu", seed=0, save_every=2)
    train_shapes.train_vae(tmp_path / "straight", bank, **args)

    crops = bank.crops
    calls = []

    def crops_then_die(*a, **k):
        calls.append(1)
        if len(calls) == 4:  # killed during step 3, after the checkpoint of step 2
            raise Interrupted
        return crops(*a, **k)

    monkeypatch.setattr(bank, "crops", crops_then_die)
    with pytest.raises(Interrupted):
        train_shapes.train_vae(tmp_path / "killed", bank, **args)
    assert (tmp_path / "killed" / "base" / "vae-state.pt").is_file()
    assert not (tmp_path / "killed" / "base" / "vae").exists()
    calls.clear()
    monkeypatch.setattr(bank, "crops", lambda *a, **k: calls.append(1) or crops(*a, **k))
    train_shapes.train_vae(tmp_path / "killed", bank, **args)
    assert len(calls) == 2  # resumed at step 2: only steps 2 and 3 ran again
    assert not (tmp_path / "killed" / "base" / "vae-state.pt").exists()
    straight, resumed = vae_weights(tmp_path / "straight"), vae_weights(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow  # about a minute on a 2-core CPU; tests/test_motion_prior.py checks the same on the tiny model
def test_fine_tuning_the_builtin_model_keeps_its_motion_prior(tmp_path, monkeypatch):
    """`train --help`'s built-in example, a few steps: the result renders from the kept motion prior (no 'does not
    apply'), and a direction word still sets the direction."""
    from cli_helpers import invoke, ok, read_json

    from videodiff.media.clips import read_video
    from videodiff.motion_prior import PRIOR_FILE
    from videodiff.shapes.evaluate import detect

    monkeypatch.chdir(tmp_path)
    ok(invoke("data", "shapes", "--out", "data/shapes", "--count", 4))
    train = ("--data", "data/shapes", "--output", "runs/shapes", "--resolution", 64, "--frames", 16, "--steps", 2)
    ok(invoke("train", *train, "--cache-latents", "--num-workers", 0, "--quiet"))
    assert (tmp_path / "runs/shapes/motion_module" / PRIOR_FILE).is_file()
    result = ok(invoke("render", "a cyan triangle moving up", "--motion-module", "runs/shapes/motion_module",
                       "--seed", 0, "-o", "trained.gif"))  # fmt: skip
    assert "does not apply" not in result.stderr
    assert read_json(tmp_path / "trained.gif.json")["motion_prior"] == 0.375
    assert detect(read_video(tmp_path / "trained.gif")[0]).direction == "up"
