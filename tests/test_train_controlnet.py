"""``videodiff train --controlnet`` on the tiny random model, control maps in training data, and ``data shapes --maps``.

Runs are real runs of :class:`videodiff.training.controlnet.ControlNetTrainer` on 4-frame 16x16 clips (8x8 latents),
CPU, fp32; the clips are a red square moving right and their maps a white disc on the square's centre.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke, ok, read_json
from clips import moving_square, write_clip
from PIL import Image
from safetensors import safe_open

from videodiff.config import TrainConfig
from videodiff.control.maps import BLOB_RADIUS, blob_maps, path_positions
from videodiff.media.clips import read_video
from videodiff.media.video import sidecar_path
from videodiff.shapes.paths import HELDOUT_PATHS, heldout_path, net_direction
from videodiff.shapes.world import clip_rng, dataset_combos, draw_clip, parse_prompt, write_dataset
from videodiff.training.controlnet import ControlNetTrainer
from videodiff.training.data import ClipDataset, find_clips

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

SQUARE, TOP, STEP = 8, 12, 2  # clips.moving_square's geometry at 32x32


def square_centres(frames: int, phase: int) -> np.ndarray:
    left = (phase + np.arange(frames) * STEP) % (32 - SQUARE)
    return np.stack([left + SQUARE / 2, np.full(frames, TOP + SQUARE / 2)], axis=1)


@pytest.fixture(scope="module")
def blob_clips(tmp_path_factory) -> Path:
    """Three 12-frame 32x32 clips with their maps (GIF) and a manifest naming them (``maps`` column)."""
    folder = tmp_path_factory.mktemp("blob-clips")
    rows = []
    for i in range(3):
        write_clip(folder / f"clip{i}.gif", moving_square(12, 32, phase=5 * i), "a red square moving right")
        write_clip(folder / f"clip{i}.maps.gif", blob_maps(square_centres(12, 5 * i), 32, 32))
        rows.append({"path": f"clip{i}.gif", "caption": "a red square moving right", "maps": f"clip{i}.maps.gif"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "manifest.jsonl"


def settings(model: Path, data: Path, output: Path, **changes) -> TrainConfig:
    base = {
        "model": str(model),
        "data": str(data),
        "output": str(output),
        "controlnet": "new",
        "frames": 4,
        "stride": 2,
        "resolution": 16,
        "steps": 3,
        "lr": 1e-3,
        "cache_latents": True,
        "caption_dropout": 0.0,
        "save_every": 1000,
        "num_workers": 0,
        "quiet": True,
    }
    base.update({k: str(v) if isinstance(v, Path) else v for k, v in changes.items()})
    return TrainConfig(**base)


def run(model: Path, data: Path, output: Path, **changes) -> ControlNetTrainer:
    trainer = ControlNetTrainer(settings(model, data, output, **changes))
    trainer.train()
    return trainer


def weights(trainer: ControlNetTrainer) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in trainer.trained_params().items()}


@pytest.fixture(scope="module")
def trained(tiny_model, blob_clips, tmp_path_factory) -> ControlNetTrainer:
    return run(tiny_model, blob_clips, tmp_path_factory.mktemp("cn-run") / "run")


def test_only_the_controlnet_trains_and_its_folder_loads(trained, tiny_model):
    from diffusers import ControlNetModel, UNet2DConditionModel

    from videodiff.training.controlnet import new_controlnet

    folder = trained.run / "controlnet"
    net = ControlNetModel.from_pretrained(folder)
    assert net.config.conditioning_channels == 3
    got = weights(trained)
    saved = dict(net.named_parameters())
    assert got.keys() == saved.keys()
    assert all(torch.equal(saved[k], got[k]) for k in got)
    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    torch.manual_seed(0)
    start = dict(new_controlnet(unet, json.loads((tiny_model / "vae" / "config.json").read_text())).named_parameters())
    assert sum(not torch.equal(start[k], got[k]) for k in got) > len(got) // 2  # the ControlNet learned
    frozen = dict(unet.named_parameters())
    assert all(torch.equal(p, frozen[k]) for k, p in trained.unet.named_parameters())  # the image U-Net did not
    losses = [json.loads(line)["loss"] for line in (trained.run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(np.isfinite(losses))
    with safe_open(str(trained.run / "latents.safetensors"), "pt") as fh:  # the cache keeps the maps
        assert fh.get_tensor("maps").shape == (3, 3, 4, 16, 16)


def test_a_render_uses_the_trained_controlnet(trained, models, blob_clips, tmp_path):
    out = tmp_path / "a.gif"
    folder = trained.run / "controlnet"
    maps = blob_clips.parent / "clip0.maps.gif"
    size = ("--frames", "4", "--height", "16", "--width", "16", "--steps", "2", "--seed", "1")
    ok(invoke("render", "a red square moving right", *models, *size, "--controlnet", folder, "--control", maps,
              "-o", out))  # fmt: skip
    assert read_video(out, frames=None)[0].shape == (4, 16, 16, 3)
    assert read_json(sidecar_path(out))["controls"][0]["controlnet"] == str(folder.resolve())


class Stop(Exception):
    """Stands for a run killed right after a checkpoint."""


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "decoded"])
def test_resume_is_exact(tiny_model, blob_clips, tmp_path, monkeypatch, cache):
    """N steps straight == N/2 steps, killed, then resumed (cosine schedule with warm-up, EMA)."""
    steps = 4
    common = {"steps": steps, "lr_schedule": "cosine", "warmup": 1, "cache_latents": cache, "ema_decay": 0.9}
    want = weights(run(tiny_model, blob_clips, tmp_path / "straight", **common))
    original_save = ControlNetTrainer.save

    def save_then_stop(self, step, lr_schedule):
        original_save(self, step, lr_schedule)
        if step == steps // 2:
            raise Stop

    monkeypatch.setattr(ControlNetTrainer, "save", save_then_stop)
    with pytest.raises(Stop):
        run(tiny_model, blob_clips, tmp_path / "split", save_every=steps // 2, **common)
    monkeypatch.setattr(ControlNetTrainer, "save", original_save)
    got = weights(run(tiny_model, blob_clips, tmp_path / "split", save_every=steps // 2, resume="latest", **common))
    assert got.keys() == want.keys()
    assert [k for k in want if not torch.equal(got[k], want[k])] == []
    loss = lambda run: [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert loss(tmp_path / "straight") == loss(tmp_path / "split")


def test_training_continues_a_controlnet_folder(trained, tiny_model, blob_clips, tmp_path):
    source = trained.run / "controlnet"
    again = run(tiny_model, blob_clips, tmp_path / "again", controlnet=source, steps=1, lr=1e-12, weight_decay=0.0)
    before, after = weights(trained), weights(again)
    assert all(torch.allclose(before[k], after[k], atol=1e-8) for k in before)


def test_a_clip_without_maps_is_refused_before_any_model_loads(tiny_model, blob_clips, tmp_path, monkeypatch):
    import videodiff.training.controlnet as module

    monkeypatch.setattr(module, "load_model_parts", lambda *a, **k: pytest.fail("the model was loaded"))
    rows = [json.loads(line) for line in blob_clips.read_text().splitlines()]
    del rows[1]["maps"]
    manifest = blob_clips.parent / "some-without.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ("--model", tiny_model, "--output", tmp_path / "run", "--resolution", 16, "--frames", 4)
    message = assert_user_error(invoke("train", "--controlnet", "--data", manifest, *common))
    assert "clip1.gif has none" in message
    rows[1]["maps"] = "nowhere.gif"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    message = assert_user_error(invoke("train", "--controlnet", "--data", manifest, *common))
    assert "nowhere.gif: no such file" in message and "clip1.gif" in message
    message = assert_user_error(invoke("train", "--controlnet", "--distill", "lcm", "--data", blob_clips, *common))
    assert "--distill does not apply to --controlnet" in message
    (tmp_path / "not-a-controlnet").mkdir()
    message = assert_user_error(invoke("train", "--controlnet", tmp_path / "not-a-controlnet", "--data", blob_clips,
                                       *common))  # fmt: skip
    assert "no readable config.json" in message
    assert not (tmp_path / "run").exists()


def test_a_users_controlnet_folder_in_the_run_folder_is_never_replaced(tiny_model, blob_clips, tmp_path, monkeypatch):
    import videodiff.training.controlnet as module

    monkeypatch.setattr(module, "load_model_parts", lambda *a, **k: pytest.fail("the model was loaded"))
    mine = tmp_path / "run" / "controlnet" / "config.json"
    mine.parent.mkdir(parents=True)
    mine.write_text("{}")
    common = ("--model", tiny_model, "--output", tmp_path / "run", "--resolution", 16, "--frames", 4)
    message = assert_user_error(invoke("train", "--controlnet", "--data", blob_clips, *common))
    assert "controlnet" in message
    assert mine.read_text() == "{}"


def test_maps_beside_clips_in_a_folder_are_found_and_not_clips(blob_clips):
    found = find_clips(blob_clips.parent)
    assert [s.path.name for s in found] == ["clip0.gif", "clip1.gif", "clip2.gif"]
    assert [s.maps.name for s in found] == ["clip0.maps.gif", "clip1.maps.gif", "clip2.maps.gif"]


@pytest.mark.parametrize("flip", [False, True])
def test_a_maps_blob_lands_on_its_frames_object_after_the_crop(tmp_path, flip):
    """A 24x40 clip fitted to 16x16 (scaled by 2/3, then 5 px cropped off each side), maps a folder of pictures: in
    every frame of every drawn clip, the blob's centroid is the object's."""
    frames, height, width = 10, 24, 40
    centres = np.stack([np.linspace(12, 28, frames), np.linspace(8, 16, frames)], axis=1)
    clip = np.full((frames, height, width, 3), 40, np.uint8)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    for k, (x, y) in enumerate(centres):
        clip[k][(np.abs(xs - x) <= 3) & (np.abs(ys - y) <= 3)] = (230, 30, 30)
    write_clip(tmp_path / "c.gif", clip, "a red square")
    (tmp_path / "c.maps").mkdir()
    for k, picture in enumerate(blob_maps(centres, height, width)):
        Image.fromarray(picture).save(tmp_path / "c.maps" / f"{k:03d}.png")
    (source,) = find_clips(tmp_path)
    dataset = ClipDataset([source], frames=4, stride=2, height=16, width=16, flip=flip, seed=3, maps=True)
    for epoch in range(4):  # different starts (and flips)
        item = dataset[(0, epoch)]
        red = (item["pixels"][0] - item["pixels"][1]).clamp(min=0)  # [f h w]: the object
        white = item["maps"][0].float()
        assert item["maps"].dtype == torch.uint8 and item["maps"].shape == (3, 4, 16, 16)
        assert torch.abs(_centroids(red) - _centroids(white)).max() < 0.5


def test_maps_of_another_frame_count_skip_their_clip(tmp_path):
    """One map a frame: maps with a frame fewer (a GIF that merged two equal frames) would misalign every later one."""
    write_clip(tmp_path / "c.gif", moving_square(12, 32), "a red square moving right")
    write_clip(tmp_path / "c.maps.gif", blob_maps(square_centres(11, 0), 32, 32))
    item = ClipDataset(find_clips(tmp_path), frames=4, stride=2, height=16, width=16, maps=True)[0]
    assert "c.maps.gif have 11 frames, the clip 12" in item["reason"]


def test_data_shapes_writes_maps_that_repeat_a_frame_as_pngs(tmp_path, monkeypatch):
    import videodiff.control.maps as maps_module

    still = lambda positions, height, width: blob_maps(positions[:1].repeat(len(positions), 0), height, width)  # noqa: E731
    monkeypatch.setattr(maps_module, "blob_maps", still)
    write_dataset(tmp_path / "d", 2, maps=True)
    (source, _) = find_clips(tmp_path / "d" / "manifest.jsonl")
    assert source.maps == tmp_path / "d" / "00000.maps" and len(list(source.maps.glob("*.png"))) == 16


def _centroids(weights: torch.Tensor) -> torch.Tensor:
    """``[f 2]`` weighted (x, y) centroids of ``[f h w]``."""
    ys, xs = torch.meshgrid(torch.arange(weights.shape[1]), torch.arange(weights.shape[2]), indexing="ij")
    total = weights.sum(dim=(1, 2))
    return torch.stack([(weights * xs).sum(dim=(1, 2)) / total, (weights * ys).sum(dim=(1, 2)) / total], dim=1)


def _blob_centres(maps: np.ndarray) -> np.ndarray:
    return np.array([(xs.mean() + 0.5, ys.mean() + 0.5) for ys, xs in (np.nonzero(m[:, :, 0] > 127) for m in maps)])


def test_data_shapes_maps_mark_the_objects_centre(tmp_path):
    write_dataset(tmp_path / "d", 4, maps=True)
    rows = [json.loads(line) for line in (tmp_path / "d" / "manifest.jsonl").read_text().splitlines()]
    for i, (row, combo) in enumerate(zip(rows, dataset_combos(4, seed=0, split="train"))):
        maps, _ = read_video(tmp_path / "d" / row["maps"], frames=None)
        truth = draw_clip(*combo, rng=clip_rng(0, i)).centers
        assert np.abs(_blob_centres(maps) - truth).max() <= 1.0
        area = (maps[0, :, :, 0] > 127).sum()
        assert abs(area - np.pi * (BLOB_RADIUS * 64) ** 2) < 0.15 * area  # the disc of BLOB_RADIUS


def test_data_shapes_paths_follow_training_paths_named_by_net_direction(tmp_path):
    ok(invoke("data", "shapes", "--out", tmp_path / "d", "--count", 6, "--maps", "--paths"))
    heldout = {tuple(heldout_path(kind)) for kind in HELDOUT_PATHS}
    for row in (json.loads(line) for line in (tmp_path / "d" / "manifest.jsonl").read_text().splitlines()):
        points = [tuple(p) for p in row["points"]]
        assert tuple(points) not in heldout
        assert parse_prompt(row["caption"])[2] == net_direction(points) == row["direction"]
        assert row["split"] == "train"
        maps, _ = read_video(tmp_path / "d" / row["maps"], frames=None)
        assert np.abs(_blob_centres(maps) - path_positions(points, 16)).max() <= 1.0
