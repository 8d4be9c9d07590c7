"""`videodiff inspect` recognises every file videodiff writes; `convert` carries the motion prior."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import invoke, ok
from safetensors import safe_open
from safetensors.torch import save_file

from videodiff.media.video import save_video
from videodiff.motion_prior import PRIOR_FILE
from videodiff.training.checkpoints import save_checkpoint
from videodiff.weights import hub
from videodiff.weights.motion_formats import companion_files

SMALL = ("--height", "32", "--width", "32", "--frames", "4", "--steps", "2")
builtin = pytest.mark.skipif(not (hub.BUILTIN_MODEL / "model_index.json").is_file(), reason="no built-in model")


def inspect(path) -> dict:
    return json.loads(ok(invoke("inspect", path, "--json")).stdout)


def recorded_fit(path) -> dict:
    """The fit a motion prior file records, read with safetensors itself (not through inspect)."""
    with safe_open(str(path), framework="pt") as fh:
        return json.loads(fh.metadata()["info"])


@builtin
def test_inspect_the_builtin_model_folder_shows_what_videodiff_json_records():
    info = inspect(hub.BUILTIN_MODEL)
    assert info["kind"] == "diffusers model folder"
    recorded = json.loads((hub.BUILTIN_MODEL / "videodiff.json").read_text())
    for key, value in recorded["defaults"].items():
        assert f"{key} {value}" in info["defaults"]
    clips = recorded_fit(hub.BUILTIN_MODEL / "motion_adapter" / PRIOR_FILE)["clips"]
    assert "motion_prior.safetensors" in info["motion_prior"] and f"fitted to {clips} clips" in info["motion_prior"]
    vocabulary = recorded["vocabulary"]
    for word in [*vocabulary["color"], *vocabulary["shape"], *vocabulary["direction"], *vocabulary["heldout"]]:
        assert word in info["vocabulary"]
    table = ok(invoke("inspect", hub.BUILTIN_MODEL)).stdout  # the table form too
    assert "vocabulary" in table and "defaults" in table and "motion_prior" in table


@builtin
def test_inspect_a_motion_prior_is_not_an_embedding():
    prior = hub.BUILTIN_MODEL / "motion_adapter" / PRIOR_FILE
    info = inspect(prior)
    assert info["kind"] == "videodiff motion prior"
    assert info["latent_channels"] == 4 and info["fit"] == recorded_fit(prior)
    assert info["fit"]["clips"] > 0
    folder = inspect(hub.BUILTIN_MODEL / "motion_adapter")
    assert folder["kind"] == "motion_module" and PRIOR_FILE in folder["motion_prior"]


def test_inspect_videos_sidecars_caches_and_checkpoints(tmp_path, models, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok(invoke("render", "a red circle moving right", *models, *SMALL, "--seed", 1, "-o", "clip.gif"))
    video = inspect(tmp_path / "clip.gif")
    assert video["kind"] == "video" and video["frames"] == 4 and video["size"] == "32x32"
    assert video["fps"] == 8 and video["duration_s"] == 0.5 and video["sidecar"].endswith("clip.gif.json")
    sidecar = inspect(tmp_path / "clip.gif.json")
    assert sidecar["kind"] == "videodiff render sidecar" and sidecar["seed"] == 1
    assert "--config" in sidecar["use"]
    save_video(np.zeros((3, 8, 8, 3), np.uint8), tmp_path / "frames")
    frames = inspect(tmp_path / "frames")
    assert frames["kind"] == "video as PNG frames" and frames["frames"] == 3

    meta = {"key": "abc", "captions": json.dumps(["a", "b"]), "skipped": "{}"}
    save_file({"latents": torch.zeros(2, 4, 4, 8, 8)}, str(tmp_path / "latents.safetensors"), metadata=meta)
    cache = inspect(tmp_path / "latents.safetensors")
    assert cache["kind"] == "videodiff latent cache" and cache["clips"] == 2 and cache["latents"] == [4, 4, 8, 8]

    step = save_checkpoint(
        tmp_path / "run", 5, tensors={"w": torch.ones(2)}, optimizer={"state": {}}, lr_scheduler={}, state={"step": 5},
        keep=1,
    )  # fmt: skip
    for path in (step, step / "trainable.safetensors"):
        got = inspect(path)
        assert got["kind"] == "videodiff training checkpoint" and got["step"] == 5 and "--resume" in got["use"]
    (tmp_path / "run" / "train_config.json").write_text(json.dumps({"data": "clips", "steps": 5}))
    assert inspect(tmp_path / "run")["kind"] == "videodiff training run"


@builtin
def test_convert_carries_the_motion_prior_both_ways(tmp_path):
    from videodiff.weights.models import load_model_parts

    src = hub.BUILTIN_MODEL / "motion_adapter"
    prior = (src / PRIOR_FILE).read_bytes()
    result = ok(invoke("convert", src, tmp_path / "mm.safetensors", "--to", "original"))
    beside = tmp_path / "mm.motion_prior.safetensors"
    assert beside.read_bytes() == prior and "motion prior" in result.stderr
    assert companion_files(tmp_path / "mm.safetensors") == {PRIOR_FILE: beside}
    assert inspect(tmp_path / "mm.safetensors")["motion_prior"].startswith(str(beside))
    ok(invoke("convert", tmp_path / "mm.safetensors", tmp_path / "again", "--to", "diffusers"))
    assert (tmp_path / "again" / PRIOR_FILE).read_bytes() == prior
    # direction control survives the round trip: the pipeline finds the prior beside the original file
    parts = load_model_parts(str(hub.BUILTIN_MODEL), str(tmp_path / "mm.safetensors"))
    assert parts.motion_prior is not None
    # an existing prior beside the target is not replaced without --overwrite, and nothing is written
    (tmp_path / "b.motion_prior.safetensors").write_bytes(b"x")
    r = invoke("convert", src, tmp_path / "b.safetensors", "--to", "original")
    assert r.exit_code == 2 and not (tmp_path / "b.safetensors").exists()
