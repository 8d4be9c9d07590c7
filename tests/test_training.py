"""``videodiff train`` on the tiny random model: learning, what changes, outputs, exact resume, failures, launchers.

Every run is a real run of :class:`videodiff.training.loop.Trainer` on 4-frame 16x16 clips
(8x8 latents), CPU, fp32. Runs are shared where tests only look at them (``trained``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from statistics import mean

import pytest
import torch
from click.testing import CliRunner, Result
from clips import moving_square, write_clip, write_corrupt, write_dataset
from safetensors.torch import load_file

from videodiff.config import TrainConfig
from videodiff.errors import UserError
from videodiff.training.data import ResumableBatches
from videodiff.training.loop import Trainer
from videodiff.unet import VideoUNet
from videodiff.weights.models import SPATIAL_FILE, load_model_parts

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # as in conftest.py


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def three_clips(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("three-clips"), count=3)


@pytest.fixture(scope="module")
def one_clip(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("one-clip"), count=1)


def settings(model: Path, data: Path, output: Path, **changes) -> TrainConfig:
    """The small CPU setting: 4 frames every 2nd at 16x16, cached latents, no caption dropout."""
    base = {
        "model": str(model),
        "data": str(data),
        "output": str(output),
        "frames": 4,
        "stride": 2,
        "resolution": 16,
        "steps": 4,
        "lr": 1e-3,
        "cache_latents": True,
        "caption_dropout": 0.0,
        "save_every": 1000,
        "num_workers": 0,
        "quiet": True,
    }
    base.update({k: str(v) if isinstance(v, Path) else v for k, v in changes.items()})
    return TrainConfig(**base)


def run(model: Path, data: Path, output: Path, **changes) -> Trainer:
    trainer = Trainer(settings(model, data, output, **changes))
    trainer.train()
    return trainer


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def trained_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in trainer.trained_params().items()}


def changed(a: torch.nn.Module, b: torch.nn.Module, skip: str | None = None) -> set[str]:
    """Names of the state-dict entries of ``a`` and ``b`` that are not bitwise equal (``skip``: a name part to drop)."""
    sa = {k: v for k, v in a.state_dict().items() if skip is None or skip not in k}
    sb = {k: v for k, v in b.state_dict().items() if skip is None or skip not in k}
    assert sa.keys() == sb.keys()
    return {k for k in sa if not torch.equal(sa[k], sb[k])}


@pytest.fixture
def notices():
    """Messages of the ``videodiff`` logger (notices) during a test."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("videodiff")
    handler, level = Collect(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


# ---------------------------------------------------------------------------------------------------------------------
# learning


@pytest.mark.slow  # .ci/run runs it (kept out of the default suite for its time)
def test_loss_falls_on_one_repeated_clip(tiny_model, one_clip, tmp_path):
    """New zero-initialised motion modules, trained alone (AnimateDiff's setting), fit one clip: the loss halves."""
    out = tmp_path / "run"
    torch.manual_seed(0)  # the new modules' initial weights come from the global generator (see test_same_seed_...)
    run(tiny_model, one_clip, out, trainable="motion", steps=200, lr=3e-3)
    losses = [r["loss"] for r in metrics(out)]
    assert len(losses) == 200 and all(math.isfinite(x) for x in losses)
    first, last = mean(losses[:5]), mean(losses[-5:])
    assert last < first / 2, f"loss went from {first:.3f} to {last:.3f}"


@pytest.mark.slow
def test_loss_falls_with_fresh_clips_every_step(tiny_model, tiny_motion, one_clip, tmp_path):
    """Without cached latents every step decodes a new random clip of the video and encodes it with the VAE."""
    out = tmp_path / "run"
    run(tiny_model, one_clip, out, motion_module=tiny_motion, steps=300, lr=3e-3, cache_latents=False)
    losses = [r["loss"] for r in metrics(out)]
    first, last = mean(losses[:10]), mean(losses[-10:])
    assert last < first / 2, f"loss went from {first:.3f} to {last:.3f}"


# ---------------------------------------------------------------------------------------------------------------------
# what changes: one short run per trainable set, shared by the tests below

TRAINABLE = ("motion", "motion+attn", "lora", "all")


@pytest.fixture(scope="module")
def reference(tiny_model, tiny_motion):
    """Untouched copies of every part, loaded from the model folders."""
    return load_model_parts(str(tiny_model), str(tiny_motion))


@pytest.fixture(scope="module")
def trained(tiny_model, tiny_motion, three_clips, tmp_path_factory):
    """``trained(trainable)``: a finished 3-step run (checkpoint every step, 2 kept) from ``tiny_motion``."""
    runs: dict[str, Trainer] = {}

    def get(trainable: str) -> Trainer:
        if trainable not in runs:
            out = tmp_path_factory.mktemp("run-" + trainable.replace("+", "-")) / "out"
            runs[trainable] = run(
                tiny_model,
                three_clips,
                out,
                motion_module=tiny_motion,
                trainable=trainable,
                steps=3,
                lr=1e-2,
                lora_rank=4,
                save_every=1,
                keep=2,
            )
        return runs[trainable]

    return get


def to_q_names(unet: torch.nn.Module) -> set[str]:
    from diffusers.models.attention_processor import Attention

    return {f"{name}.to_q.weight" for name, m in unet.named_modules() if isinstance(m, Attention)}


@pytest.mark.parametrize("trainable", TRAINABLE)
def test_only_the_chosen_parameters_change(trained, reference, trainable):
    trainer = trained(trainable)
    parts = trainer.parts
    assert changed(parts.vae, reference.vae) == set()
    assert changed(parts.text_encoder, reference.text_encoder) == set()
    unet_changed = changed(parts.unet, reference.unet)
    motion_params = {n for n, _ in reference.motion.named_parameters()}
    if trainable == "lora":
        assert unet_changed == set()
        assert changed(parts.motion, reference.motion, skip=".lora_") == set()  # base motion weights bitwise equal
        lora = {k: v for k, v in parts.motion.state_dict().items() if ".lora_" in k}
        assert len(lora) == 8 * sum(1 for k in motion_params if k.endswith(".to_q.weight"))  # q k v out, A and B
        assert {n.removeprefix("motion.") for n in trainer.trained_names} == set(lora)
        assert all(lora[k].abs().max() > 0 for k in lora if ".lora_B." in k)  # B starts at zero: it learned
        return
    motion_changed = changed(parts.motion, reference.motion)
    assert motion_changed <= motion_params  # no buffer (positional tables) changes
    assert len(motion_changed) > 0.9 * len(motion_params), sorted(motion_params - motion_changed)
    if trainable == "motion":
        assert unet_changed == set()
    elif trainable == "motion+attn":
        q = to_q_names(reference.unet)
        assert len(q) == 2 * 2 + 2 * 3 + 2  # self and cross attention: 2 down, 3 up, 1 mid transformer
        assert unet_changed == q
    else:
        assert len(unet_changed) > 0.9 * len(dict(reference.unet.named_parameters()))


def test_trained_names_match_the_set(trained, reference):
    names = {t: set(trained(t).trained_names) for t in TRAINABLE}
    motion = {f"motion.{n}" for n, _ in reference.motion.named_parameters()}
    assert names["motion"] == motion
    assert names["motion+attn"] == motion | {f"unet.{n}" for n in to_q_names(reference.unet)}
    assert all(".lora_A." in n or ".lora_B." in n for n in names["lora"])
    assert names["all"] == motion | {f"unet.{n}" for n, _ in reference.unet.named_parameters()}


# ---------------------------------------------------------------------------------------------------------------------
# outputs


def test_motion_module_folder_loads_and_renders(trained, tiny_model, tmp_path):
    trainer = trained("motion")
    folder = trainer.run / "motion_module"
    names = ["config.json", "diffusion_pytorch_model.safetensors", "videodiff.json"]
    assert sorted(p.name for p in folder.iterdir()) == names
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "MotionAdapter"
    assert json.loads((folder / "videodiff.json").read_text()) == {"train_frames": trainer.config.frames}
    loaded = load_model_parts(str(tiny_model), str(folder))
    assert changed(loaded.motion, trainer.parts.motion) == set()

    from videodiff.cli import cli

    out = tmp_path / "clip.gif"
    result = invoke(
        cli,
        "render", "a red square moving right", "--model", tiny_model, "--motion-module", folder,
        "--frames", "4", "--steps", "2", "--height", "16", "--width", "16", "--seed", "1", "-o", out, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.stat().st_size > 0


def test_motion_attn_folder_carries_the_spatial_weights(trained, reference, tiny_model):
    trainer = trained("motion+attn")
    folder = trainer.run / "motion_module"
    spatial = load_file(str(folder / SPATIAL_FILE))
    assert set(spatial) == to_q_names(reference.unet)
    loaded = load_model_parts(str(tiny_model), str(folder))
    # loading the folder changes exactly the to_q weights of the image U-Net, to the trained ones
    assert changed(loaded.unet, reference.unet) == set(spatial)
    assert changed(loaded.unet, trainer.parts.unet) == set()
    assert changed(loaded.motion, trainer.parts.motion) == set()


def test_motion_lora_file_reproduces_the_trained_model(trained, reference, tiny_model, tiny_motion):
    from videodiff.weights.motion_formats import apply_motion_lora

    trainer = trained("lora")
    path = trainer.run / "motion_lora.safetensors"
    assert path.is_file() and not (trainer.run / "motion_module").exists()
    tensors = load_file(str(path))
    assert set(tensors) == {n.removeprefix("motion.") for n in trainer.trained_names}

    base = reference.motion
    merged = load_model_parts(str(tiny_model), str(tiny_motion)).motion
    apply_motion_lora(merged, path)
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    t = torch.tensor([400])
    with torch.no_grad():
        want = trainer.video_unet.eval()(x, t, context)
        got = VideoUNet(reference.unet, merged).eval()(x, t, context)
        before = VideoUNet(reference.unet, base).eval()(x, t, context)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (want - before).abs().max() > 1e-3  # the LoRA matters, so the comparison means something


def test_checkpoints_and_metrics(trained):
    trainer = trained("motion")
    root = trainer.run / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-2", "step-3"]  # keep=2, no temporary folders left
    for step in (2, 3):
        folder = root / f"step-{step}"
        assert sorted(p.name for p in folder.iterdir()) == [
            "lr_scheduler.pt",
            "optimizer.pt",
            "state.json",
            "trainable.safetensors",
        ]
        state = json.loads((folder / "state.json").read_text())
        assert state == {"step": step, "positions": [step], "nan_total": 0, "world": 1, "trainable": "motion"}
    tensors = load_file(str(root / "step-3" / "trainable.safetensors"))
    final = trained_weights(trainer)
    assert tensors.keys() == final.keys()
    assert all(torch.equal(tensors[k], final[k]) for k in final)

    records = metrics(trainer.run)
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert set(r) >= {"step", "loss", "lr", "clips_per_s", "nan_skipped"}
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert r["lr"] == pytest.approx(1e-2)
        assert math.isfinite(r["clips_per_s"]) and r["clips_per_s"] > 0
        assert r["nan_skipped"] == 0
    assert json.loads((trainer.run / "train_config.json").read_text()) == asdict(trainer.config)
    from videodiff.media.gate import RECEIPT  # the run's receipt of what it wrote: not a leftover

    leftovers = [
        p for p in trainer.run.rglob("*") if (p.name.startswith(".") and p.name != RECEIPT) or p.name.endswith(".tmp")
    ]
    assert leftovers == []


def test_validation_and_checkpointing_do_not_change_training(trained, tiny_model, tiny_motion, three_clips, tmp_path):
    """Validation renders (on the modules being trained) and gradient checkpointing leave the result bitwise equal."""
    plain = trained("motion")
    other = run(
        tiny_model,
        three_clips,
        tmp_path / "run",
        motion_module=tiny_motion,
        steps=3,
        lr=1e-2,
        save_every=1,
        keep=2,
        gradient_checkpointing=True,
        validate_every=2,
        validation_prompt="a red square moving right",
        validation_steps=2,
    )
    assert sorted(p.name for p in (tmp_path / "run" / "validation").iterdir()) == ["step-2.gif"]
    want, got = trained_weights(plain), trained_weights(other)
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
    assert [r["loss"] for r in metrics(tmp_path / "run")] == [r["loss"] for r in metrics(plain.run)]
    assert other.video_unet.training  # back in training mode after the validation render


def test_caption_dropout_trains_the_empty_caption(tiny_model, three_clips, tmp_path, trained):
    assert set(trained("motion").captions.cache) == {"a red square moving right"}
    trainer = run(tiny_model, three_clips, tmp_path / "run", steps=2, caption_dropout=1.0)
    assert set(trainer.captions.cache) == {""}


def test_warmup_applies_to_the_constant_schedule(tiny_model, three_clips, tmp_path):
    out = tmp_path / "run"
    run(tiny_model, three_clips, out, steps=2, warmup=4, lr=1e-3)
    lrs = [r["lr"] for r in metrics(out)]
    assert all(lr < 1e-3 for lr in lrs), lrs


@pytest.mark.parametrize("kind", ["lora", "new-motion"])
def test_same_seed_gives_the_same_weights(tiny_model, tiny_motion, three_clips, tmp_path, kind):
    changes = {"trainable": "lora", "motion_module": tiny_motion} if kind == "lora" else {}
    weights = []
    for i in range(2):
        torch.manual_seed(100 + i)  # whatever state the global generator happens to be in (another process)
        weights.append(trained_weights(run(tiny_model, three_clips, tmp_path / str(i), steps=1, **changes)))
    assert [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])] == []


# ---------------------------------------------------------------------------------------------------------------------
# resume


class Stop(Exception):
    """Stands for a run killed right after a checkpoint."""


@pytest.mark.parametrize(
    "cache, workers, extra",
    [
        (True, 0, {}),
        (True, 0, {"ema_decay": 0.9, "grad_accum": 2, "batch_size": 2}),
        (False, 0, {}),
        (False, 2, {}),
    ],
    ids=["cached", "cached-ema-accum-batch2", "decoded", "decoded-2-workers"],
)
def test_resume_is_exact(tiny_model, tiny_motion, three_clips, tmp_path, monkeypatch, cache, workers, extra):
    """N steps straight == N/2 steps, killed, then resumed with ``resume="latest"`` (cosine schedule with warm-up)."""
    steps = 6
    common = {
        "motion_module": tiny_motion,
        "steps": steps,
        "lr_schedule": "cosine",
        "warmup": 2,
        "cache_latents": cache,
        "num_workers": workers,
        **extra,
    }
    straight = run(tiny_model, three_clips, tmp_path / "straight", **common)
    want = trained_weights(straight)

    original_save = Trainer.save

    def save_then_stop(self, step, lr_schedule):
        original_save(self, step, lr_schedule)
        if step == steps // 2:
            raise Stop

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    with pytest.raises(Stop):
        run(tiny_model, three_clips, tmp_path / "split", save_every=steps // 2, **common)
    monkeypatch.setattr(Trainer, "save", original_save)
    assert [p.name for p in (tmp_path / "split" / "checkpoints").iterdir()] == [f"step-{steps // 2}"]
    resumed = run(tiny_model, three_clips, tmp_path / "split", save_every=steps // 2, resume="latest", **common)
    got = trained_weights(resumed)

    assert got.keys() == want.keys()
    differing = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[0]}: " + str(
        (got[differing[0]] - want[differing[0]]).abs().max().item()
    )
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert [r["step"] for r in b] == list(range(1, steps + 1))  # each step logged once
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["lr"] for r in a] == [r["lr"] for r in b]


def test_resume_latest_without_checkpoints_starts_fresh(tiny_model, three_clips, tmp_path):
    out = tmp_path / "run"
    run(tiny_model, three_clips, out, steps=2, resume="latest")
    assert [r["step"] for r in metrics(out)] == [1, 2]


def test_resume_with_another_trainable_set_is_refused(tiny_model, three_clips, tmp_path):
    out = tmp_path / "run"
    run(tiny_model, three_clips, out, steps=1)
    with pytest.raises(UserError, match="trainable"):
        run(tiny_model, three_clips, out, steps=2, trainable="motion+attn", resume="latest")
    with pytest.raises(UserError, match="not a checkpoint"):
        run(tiny_model, three_clips, out, steps=2, resume=str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------------
# unreadable data


@pytest.fixture(scope="module")
def with_bad_files(tmp_path_factory) -> Path:
    folder = write_dataset(tmp_path_factory.mktemp("with-bad"), count=2)
    write_corrupt(folder / "random.mp4", "random")
    write_corrupt(folder / "text.mp4", "text")
    write_clip(folder / "short.mp4", moving_square(2, 32), "too short")
    for name in ("random", "text"):
        (folder / f"{name}.txt").write_text("a broken file")
    return folder


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "decoded"])
def test_unreadable_videos_are_skipped_and_counted(tiny_model, with_bad_files, tmp_path, notices, cache):
    # 5 sources, 1 clip per batch: 5 steps consume at least one whole epoch, so every file is tried
    trainer = run(tiny_model, with_bad_files, tmp_path / "run", steps=5, cache_latents=cache)
    assert set(trainer.skipped) == {str(with_bad_files / f"{n}.mp4") for n in ("random", "text", "short")}
    assert trainer.skipped[str(with_bad_files / "short.mp4")] == "too short (2 frames)"
    assert all(reason and "\n" not in reason for reason in trainer.skipped.values())
    assert len(metrics(tmp_path / "run")) == 5
    assert any(m.startswith("skipped 3 unreadable or too-short videos") for m in notices), notices


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "decoded"])
def test_nothing_readable_is_a_user_error(tiny_model, tmp_path, cache):
    data = tmp_path / "data"
    for i in range(3):
        write_corrupt(data / f"bad{i}.mp4", "random", seed=i)
        (data / f"bad{i}.txt").write_text("broken")
    write_clip(data / "short.mp4", moving_square(3, 32), "short")
    with pytest.raises(UserError, match="no readable clips") as info:
        run(tiny_model, data, tmp_path / "run", steps=2, cache_latents=cache)
    assert "\n" not in str(info.value)


def sampler_run_of_unreadable(readable: int, seed: int) -> int:
    """The longest run of consecutive batches without ``readable`` in the first epochs (3 sources, batch 1)."""
    it, longest, current = iter(ResumableBatches(3, 1, seed=seed)), 0, 0
    for _ in range(12):
        current = 0 if next(it)[0][0] == readable else current + 1
        longest = max(longest, current)
    return longest


def test_readable_clip_among_unreadable_ones_is_found(tiny_model, tmp_path):
    data = tmp_path / "data"
    write_corrupt(data / "a.mp4", "random")
    write_corrupt(data / "b.mp4", "text")
    write_clip(data / "c.mp4", moving_square(12, 32), "a red square moving right")  # index 2 of the sorted sources
    assert sampler_run_of_unreadable(readable=2, seed=3) >= 4  # the order that triggers it
    run(tiny_model, data, tmp_path / "run", steps=3, seed=3, cache_latents=False)


# ---------------------------------------------------------------------------------------------------------------------
# non-finite losses


def nan_loss(monkeypatch, when) -> None:
    original = Trainer.loss

    def loss(self, batch, micro_step):
        value = original(self, batch, micro_step)
        return value * float("nan") if when(micro_step) else value

    monkeypatch.setattr(Trainer, "loss", loss)


def test_nan_every_step_stops_the_run(tiny_model, tiny_motion, three_clips, tmp_path, monkeypatch, reference):
    nan_loss(monkeypatch, lambda step: True)
    trainer = Trainer(settings(tiny_model, three_clips, tmp_path / "run", motion_module=tiny_motion, max_nan_steps=3))
    with pytest.raises(UserError, match="NaN or infinite in 3 steps in a row") as info:
        trainer.train()
    assert "\n" not in str(info.value)
    assert trainer.nan_total == 3
    assert changed(trainer.parts.motion, reference.motion) == set()  # no step was taken
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "run" / "motion_module").exists()


def test_one_nan_step_is_skipped_and_counted(tiny_model, tiny_motion, three_clips, tmp_path, monkeypatch):
    nan_loss(monkeypatch, lambda step: step == 2)  # the third step
    trainer = run(tiny_model, three_clips, tmp_path / "run", motion_module=tiny_motion, steps=5, save_every=1)
    records = metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2, 4, 5]
    assert [r["nan_skipped"] for r in records] == [0, 0, 1, 1]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert all(torch.isfinite(p).all() for p in trainer.trained_params().values())
    assert json.loads((tmp_path / "run" / "checkpoints" / "step-5" / "state.json").read_text())["nan_total"] == 1
    assert (tmp_path / "run" / "motion_module").is_dir()


def test_nan_steps_must_be_in_a_row_to_stop(tiny_model, three_clips, tmp_path, monkeypatch):
    nan_loss(monkeypatch, lambda step: step % 2 == 0)  # every other step: never 2 in a row
    run(tiny_model, three_clips, tmp_path / "run", steps=6, max_nan_steps=2)
    assert [r["nan_skipped"] for r in metrics(tmp_path / "run")] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------------------------------
# several processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_CPU")}
    env.update({"OMP_NUM_THREADS": "1", "VIDEODIFF_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **extra})
    return env


def train_args(model: Path, data: Path, output: Path, steps: int) -> list[str]:
    return [
        "train", "--model", str(model), "--data", str(data), "--output", str(output), "--frames", "4",
        "--stride", "2", "--resolution", "16", "--steps", str(steps), "--save-every", "2", "--cache-latents",
        "--num-workers", "0", "--caption-dropout", "0", "--quiet",
    ]  # fmt: skip


def launch(launcher: list[str], args: list[str], env: dict[str, str], timeout: int = 300):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no"]
    command += ["--dynamo_backend", "no", "--main_process_port", str(free_port()), *launcher, "-m", "videodiff", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_two_processes_train_one_model(tiny_model, three_clips, tmp_path):
    """``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``: two CPU processes, one run."""
    out, steps = tmp_path / "run", 4
    done = launch(
        ["--multi_gpu", "--num_processes", "2"],
        train_args(tiny_model, three_clips, out, steps),
        launch_env(ACCELERATE_USE_CPU="1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in metrics(out)] == list(range(1, steps + 1))  # written once, by the main process
    assert sorted(p.name for p in (out / "motion_module").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "videodiff.json",
    ]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    state = json.loads((out / "checkpoints" / "step-4" / "state.json").read_text())
    assert state["world"] == 2 and state["positions"] == [steps, steps]
    # the data each rank drew from those positions: disjoint within every epoch
    seen = [
        [batch[0] for _, batch in zip(range(steps), ResumableBatches(3, 1, seed=0, rank=r, world=2))] for r in (0, 1)
    ]
    assert all(a[1] == b[1] and a[0] != b[0] for a, b in zip(*seen))
    # the saved motion modules are the final checkpoint's weights
    final = load_file(str(out / "checkpoints" / "step-4" / "trainable.safetensors"))
    saved = load_file(str(out / "motion_module" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(saved[k.removeprefix("motion.")], v) for k, v in final.items())


@pytest.mark.slow
def test_resume_with_another_number_of_processes(tiny_model, three_clips, tmp_path):
    out = tmp_path / "run"
    run(tiny_model, three_clips, out, steps=2, save_every=2)
    args = [*train_args(tiny_model, three_clips, out, 4), "--resume", "latest"]
    done = launch(["--multi_gpu", "--num_processes", "2"], args, launch_env(ACCELERATE_USE_CPU="1"))
    # a refusal is fine (the launcher then reports the failed child), a crash inside a rank is not
    assert not re.search(r"\[rank\d\]: Traceback", done.stderr), done.stderr[-2000:]
    assert done.returncode == 0 or "videodiff: error: " in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(tiny_model, tiny_motion, three_clips, tmp_path, precision):
    """In a fresh process each (accelerate fixes the precision once per process)."""
    out = tmp_path / "run"
    args = [*train_args(tiny_model, three_clips, out, 3), "--mixed-precision", precision, "--motion-module"]
    args.append(str(tiny_motion))
    done = subprocess.run(
        [sys.executable, "-m", "videodiff", *map(str, args)],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert all(math.isfinite(r["loss"]) for r in metrics(out)) and len(metrics(out)) == 3
    tensors = load_file(str(out / "motion_module" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.float32}  # master weights stay fp32


def test_launcher_without_cpu_flag_is_refused(tiny_model, three_clips, tmp_path):
    """Two processes that each see themselves alone (no ACCELERATE_USE_CPU on a CPU machine): refused, not trained."""
    out = tmp_path / "run"
    done = launch(["--multi_gpu", "--num_processes", "2"], train_args(tiny_model, three_clips, out, 2), launch_env())
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("videodiff: error: ")]
    assert len(errors) == 2, done.stderr[-3000:]  # one line from each process
    assert all("the launcher started 2 processes but each one sees itself alone" in line for line in errors)
    assert "Traceback" not in done.stderr.split("videodiff: error:")[0]
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_world_size_without_a_process_group_is_refused(tiny_model, three_clips, tmp_path):
    """WORLD_SIZE=2 in the environment, one plain process: a one-line error, exit 2, nothing written."""
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "videodiff", *train_args(tiny_model, three_clips, out, 2)],
        env=launch_env(WORLD_SIZE="2", RANK="0"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("videodiff: error: the launcher started 2 processes"), lines
    assert "ACCELERATE_USE_CPU=1" in lines[0]
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------------
# the command line


def invoke(command, *args: object) -> Result:
    """Run a click command in-process, undoing the CLI's logging set-up afterwards."""
    logger = logging.getLogger("videodiff")
    saved = list(logger.handlers), logger.level, logger.propagate
    try:
        return CliRunner().invoke(command, [str(a) for a in args], env={"VIDEODIFF_MODEL": None})
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


def train_cli(*args: object) -> Result:
    from videodiff.cli import cli

    return invoke(cli, "train", *args)


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("videodiff: error: "), lines
    return lines[0]


SMALL_YAML = """\
# a small CPU run
frames: 4
stride: 2
resolution: 16
steps: 2
lr: 1.0e-3
trainable: motion
cache_latents: true
caption_dropout: 0.0
num_workers: 0
save_every: 2
quiet: true
"""


SMALL_FLAGS = (
    "--frames", 4, "--stride", 2, "--resolution", 16, "--lr", 1e-3, "--cache-latents", "--caption-dropout", 0,
    "--num-workers", 0, "--save-every", 2, "--quiet",
)  # fmt: skip


def test_cli_train_with_flags(tiny_model, three_clips, tmp_path):
    out = tmp_path / "run"
    result = train_cli("--model", tiny_model, "--data", three_clips, "--output", out, "--steps", 3, *SMALL_FLAGS)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert result.stdout.strip() == str(out)
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    recorded = json.loads((out / "train_config.json").read_text())
    assert recorded["frames"] == 4 and recorded["lr"] == 1e-3 and recorded["steps"] == 3
    assert recorded["model"] == str(tiny_model) and recorded["cache_latents"] is True
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-3"]
    # --resume continues the run: the settings again, more steps
    result = train_cli(
        "--model", tiny_model, "--data", three_clips, "--output", out, "--steps", 4, "--resume", "latest", *SMALL_FLAGS
    )
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]


def test_cli_train_with_a_config_file(tiny_model, three_clips, tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(SMALL_YAML)
    out = tmp_path / "run"
    result = train_cli("--config", config, "--model", tiny_model, "--data", three_clips, "--output", out, "--steps", 3)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert result.stdout.strip() == str(out)
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]  # the command line wins over the file
    recorded = json.loads((out / "train_config.json").read_text())
    assert recorded["frames"] == 4 and recorded["lr"] == 1e-3 and recorded["steps"] == 3
    assert recorded["model"] == str(tiny_model) and recorded["cache_latents"] is True
    # README: resume with the recorded settings
    result = train_cli("--config", out / "train_config.json", "--resume", "latest", "--steps", 5)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5]


def test_cli_train_unknown_yaml_key(tiny_model, three_clips, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(SMALL_YAML + "learning_rate: 1.0e-4\n")
    result = train_cli("--config", config, "--model", tiny_model, "--data", three_clips, "--output", tmp_path / "o")
    assert "unknown key(s) learning_rate" in one_line_error(result)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--trainable", "bogus"), "unknown --trainable 'bogus'"),
        (("--frames", "0"), "--frames must be a positive whole number"),
        (("--steps", "many"), "'many' is not a valid integer"),
        (("--resolution", "20"), "--resolution must be a multiple of 8"),
        (("--lr-schedule", "linear"), "unknown --lr-schedule 'linear'"),
    ],
    ids=["bogus-trainable", "zero-frames", "text-steps", "resolution", "schedule"],
)
def test_cli_train_bad_settings(tiny_model, three_clips, tmp_path, args, message):
    result = train_cli("--model", tiny_model, "--data", three_clips, "--output", tmp_path / "o", *SMALL_FLAGS, *args)
    assert message in one_line_error(result)
    assert not (tmp_path / "o").exists()


def test_cli_train_needs_data_and_output(tiny_model, three_clips, tmp_path):
    assert "--data" in one_line_error(train_cli("--model", tiny_model, "--output", tmp_path / "o"))
    # no --model is the built-in shapes model, as for render and eval (tests/test_builtin.py)
    assert "--output" in one_line_error(train_cli("--model", tiny_model, "--data", three_clips))
    missing = train_cli("--model", tiny_model, "--data", tmp_path / "nope", "--output", tmp_path / "o", "--quiet")
    assert "no such file or folder" in one_line_error(missing)
    assert "does not exist" in one_line_error(train_cli("--config", tmp_path / "none.yaml"))


# ---------------------------------------------------------------------------------------------------------------------
# real footage


@pytest.mark.slow
def test_real_footage_smoke(tiny_model, tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    manifest = tmp_path / "data.jsonl"
    rows = [
        {"path": str(SHARED_DATA / "cockatoo.mp4"), "caption": "a cockatoo"},
        {"path": str(SHARED_DATA / "newtonscradle.gif"), "caption": "a newton's cradle"},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    trainer = run(tiny_model, manifest, out, steps=3, resolution=32, cache_latents=False, batch_size=2)
    assert trainer.skipped == {}
    records = metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in records)
    assert (out / "motion_module" / "config.json").is_file()


def test_late_timesteps_draw_from_the_noisiest_quarter():
    from videodiff.training.loop import sample_timesteps

    uniform = sample_timesteps(4000, 1000, 0.0, torch.Generator().manual_seed(0))
    biased = sample_timesteps(4000, 1000, 0.5, torch.Generator().manual_seed(0))
    late = sample_timesteps(4000, 1000, 1.0, torch.Generator().manual_seed(0))
    assert uniform.min() >= 0 and uniform.max() < 1000
    assert 0.2 < (uniform >= 750).float().mean() < 0.3
    assert 0.57 < (biased >= 750).float().mean() < 0.68  # half from the top quarter, half uniform
    assert late.min() >= 750 and late.max() < 1000
    with pytest.raises(UserError, match="--late-timesteps"):
        TrainConfig(model="m", data="d", output="o", late_timesteps=1.5).validate()


def test_latent_cache_is_saved_and_reused(tiny_model, with_bad_files, tmp_path, notices):
    cache = tmp_path / "latents.safetensors"
    first = run(tiny_model, with_bad_files, tmp_path / "a", steps=3, latent_cache=cache)
    assert cache.is_file() and not any("reusing" in m for m in notices)
    notices.clear()
    second = run(tiny_model, with_bad_files, tmp_path / "b", steps=3, latent_cache=cache)
    assert any(m == f"reusing the latents cached in {cache}" for m in notices), notices
    # the same latents, captions and skipped files: the same training
    assert [m["loss"] for m in metrics(tmp_path / "a")] == [m["loss"] for m in metrics(tmp_path / "b")]
    assert second.skipped == first.skipped and len(second.skipped) == 3
    assert all(torch.equal(a, b) for a, b in zip(trained_weights(first).values(), trained_weights(second).values()))


def test_latent_cache_of_other_settings_is_not_used(tiny_model, three_clips, tmp_path, notices):
    cache = tmp_path / "latents.safetensors"
    run(tiny_model, three_clips, tmp_path / "a", steps=1, latent_cache=cache)
    notices.clear()
    run(tiny_model, three_clips, tmp_path / "b", steps=1, latent_cache=cache, stride=1)
    assert any("holds latents of other clips, settings or VAE" in m for m in notices), notices
    user_file = tmp_path / "mine.safetensors"  # a file that is not a cache is the user's: refused, kept
    user_file.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a latent cache"):
        run(tiny_model, three_clips, tmp_path / "x", steps=1, latent_cache=user_file)
    assert user_file.read_bytes() == b"not a safetensors file"
    data = cache.read_bytes()  # a cache of ours cut short (its header intact): encoded again and rewritten
    cache.write_bytes(data[: 8 + int.from_bytes(data[:8], "little") + 4])
    notices.clear()
    run(tiny_model, three_clips, tmp_path / "c", steps=1, latent_cache=cache)
    assert any("is not a readable latent cache" in m for m in notices), notices
    assert "reusing" not in " ".join(notices)
    notices.clear()
    run(tiny_model, three_clips, tmp_path / "d", steps=1, latent_cache=cache)  # the run before rewrote it
    assert any(m.startswith("reusing the latents cached in") for m in notices), notices


def test_latent_cache_without_cached_latents_is_refused(tiny_model, three_clips, tmp_path):
    flags = [f for f in SMALL_FLAGS if f != "--cache-latents"]
    out = tmp_path / "o"
    result = train_cli("--model", tiny_model, "--data", three_clips, "--output", out, *flags, "--latent-cache", "x")
    assert "--latent-cache needs --cache-latents" in one_line_error(result)
    assert not out.exists()


def test_resume_reads_the_run_folders_latent_cache(tiny_model, three_clips, tmp_path, notices):
    out = tmp_path / "run"
    run(tiny_model, three_clips, out, steps=2, save_every=1)
    assert (out / "latents.safetensors").is_file()
    notices.clear()
    run(tiny_model, three_clips, out, steps=3, resume="latest")
    assert any(m.startswith("reusing the latents cached in") for m in notices), notices
