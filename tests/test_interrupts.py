"""Interruptions at each named point, and processes racing for one output (issue 17).

Each case runs a real process (signals and ``kill -9`` cannot be simulated in-process) on the tiny
models, and checks what is left on disk afterwards: nothing half-written, no temporary, no video
without its sidecar, and a training run that resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from clips import write_dataset

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle moving right"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "VIDEODIFF_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

RENDER_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    where, signame = sys.argv[1], sys.argv[2]
    signum = getattr(signal, signame)
    # as in a terminal: a shell without job control starts background jobs with SIGINT ignored, and so CI may
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from videodiff import pipelines, sampling
    from videodiff.media import atomic
    if where == "while-loading":
        real_parts = pipelines.load_model_parts
        def parts(*a, **k):
            os.kill(os.getpid(), signum)
            return real_parts(*a, **k)
        pipelines.load_model_parts = parts
    elif where == "while-sampling":
        real_sample = sampling.sample
        def sample(denoiser, *a, **k):
            def interrupted(*args, **kwargs):
                os.kill(os.getpid(), signum)
                return denoiser(*args, **kwargs)
            return real_sample(interrupted, *a, **k)
        sampling.sample = sample
    elif where.startswith("slow-moves"):  # two processes meet at the moves: unserialised, their pairs would mix
        barrier = os.environ["RACE_BARRIER"]
        real_held = atomic.signals_held
        def held():
            open(os.path.join(barrier, str(os.getpid())), "w").close()
            deadline = time.monotonic() + 120
            while len(os.listdir(barrier)) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            return real_held()
        atomic.signals_held = held
        pauses = [float(x) for x in where.split(":")[1:]]  # before the sidecar's move and before the video's
        real_move = atomic._move_into_place
        def move(tmp, final):
            time.sleep(pauses.pop(0) if pauses else 0)
            real_move(tmp, final)
        atomic._move_into_place = move
    from videodiff.cli import main
    sys.argv = ["videodiff", *sys.argv[3:]]
    main()
    """
)


def render_args(models: tuple[str, ...], seed: int, out: str, *extra: str) -> list[str]:
    return ["render", PROMPT, *models, "--height", "16", "--width", "16", "--frames", "3", "--steps", "2",
            "--seed", str(seed), "-q", "-o", out, *extra]


def start(cwd: Path, where: str, signame: str, args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RENDER_SCRIPT, where, signame, *args], cwd=cwd, env={**ENV, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("where", ["while-loading", "while-sampling"])
def test_a_render_interrupted_while_loading_or_sampling_leaves_nothing(tmp_path, models, where, signame):
    proc = start(tmp_path, where, signame, render_args(models, 1, "x.gif"))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + getattr(signal, signame), stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("videodiff: interrupted"), stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def alone(models, tmp_path_factory) -> dict[int, bytes]:
    """``out.gif`` of seeds 1 and 2, each rendered alone."""
    folders = {seed: tmp_path_factory.mktemp(f"alone{seed}") for seed in (1, 2)}
    procs = {seed: start(folder, "none", "SIGINT", render_args(models, seed, "out.gif"))
             for seed, folder in folders.items()}
    for proc in procs.values():
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    videos = {seed: (folder / "out.gif").read_bytes() for seed, folder in folders.items()}
    assert videos[1] != videos[2]
    return videos


@pytest.mark.parametrize("overwrite", [False, True], ids=["no-overwrite", "overwrite"])
def test_two_renders_racing_for_one_output_never_mix_their_files(tmp_path, models, alone, overwrite):
    """Seeds 1 and 2 render into ``out.gif`` at once; what ends in place is one render's video with its own sidecar."""
    race, barrier = tmp_path / "race", tmp_path / "barrier"
    race.mkdir()
    barrier.mkdir()
    extra = ("--overwrite",) if overwrite else ()
    # both reach the moves together; unserialised, seed 1's sidecar (0.2 s) and seed 2's video (0.7 s) would be
    # overwritten by seed 2's sidecar (0.5 s) and seed 1's video (1.2 s): a mixed pair
    pauses = {1: "slow-moves:0.2:1.0", 2: "slow-moves:0.5:0.2"}
    procs = {seed: start(race, pauses[seed], "SIGINT", render_args(models, seed, "out.gif", *extra),
                         RACE_BARRIER=str(barrier)) for seed in (1, 2)}
    results = {seed: (p.wait(timeout=300), p.stderr.read()) for seed, p in procs.items()}
    assert sorted(p.name for p in race.iterdir()) == ["out.gif", "out.gif.json"]  # no temporaries
    seed_in_place = json.loads((race / "out.gif.json").read_text())["seed"]
    assert (race / "out.gif").read_bytes() == alone[seed_in_place]
    codes = sorted(code for code, _ in results.values())
    if overwrite:
        assert codes == [0, 0], results
    else:
        assert codes == [0, 2], results
        loser = next(err for code, err in results.values() if code == 2)
        assert "Traceback" not in loser
        assert loser.strip().splitlines()[-1].startswith("videodiff: error: ") and "out.gif" in loser


TRAIN_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from videodiff.config import TrainConfig
    from videodiff.training import checkpoints
    from videodiff.training.loop import Trainer
    model, motion, data, out, kill_at, resume = sys.argv[1:7]
    if kill_at != "none":  # kill -9 in the middle of writing that checkpoint's optimizer state
        real_save = checkpoints.torch.save
        def save(obj, path, *a, **k):
            if f".step-{kill_at}." in str(path) and str(path).endswith("optimizer.pt"):
                with open(path, "wb") as f:
                    f.write(b"half an optimizer")
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, path, *a, **k)
        checkpoints.torch.save = save
    config = TrainConfig(model=model, motion_module=motion, data=data, output=out, frames=4, stride=2,
                         resolution=16, steps=6, lr=1e-3, cache_latents=True, caption_dropout=0.0,
                         save_every=2, num_workers=0, quiet=True, resume=None if resume == "none" else resume)
    Trainer(config).train()
    """
)


def train(tiny_model: Path, tiny_motion: Path, data: Path, out: Path, kill_at: str, resume: str) -> int:
    args = [str(tiny_model), str(tiny_motion), str(data), str(out), kill_at, resume]
    return subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, *args], env=ENV, capture_output=True,
                          timeout=600).returncode


def test_training_killed_while_writing_a_checkpoint_resumes_exactly(tmp_path, tiny_model, tiny_motion):
    from safetensors.torch import load_file

    data = write_dataset(tmp_path / "clips", count=2)
    assert train(tiny_model, tiny_motion, data, tmp_path / "straight", "none", "none") == 0

    run = tmp_path / "killed"
    assert train(tiny_model, tiny_motion, data, run, "4", "none") == -signal.SIGKILL
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(left) == 2 and left[0].startswith(".step-4.") and left[1] == "step-2"  # the stray half
    assert train(tiny_model, tiny_motion, data, run, "none", "latest") == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-4", "step-6"]  # stray gone

    want = load_file(tmp_path / "straight" / "checkpoints" / "step-6" / "trainable.safetensors")
    got = load_file(run / "checkpoints" / "step-6" / "trainable.safetensors")
    assert want.keys() == got.keys() and all((want[k] == got[k]).all() for k in want)
