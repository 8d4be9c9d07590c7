"""``videodiff train --distill lcm``: the consistency function, the solver against diffusers' DDIM, a frozen
teacher, the few-step folder it writes, exact resume and bad values (tiny random models, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_user_error, invoke, ok, read_json
from clips import write_dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from videodiff.config import TrainConfig
from videodiff.errors import UserError
from videodiff.schedulers import ANIMATEDIFF_SCHEDULE
from videodiff.training.distill import DDIMSolver, boundary_scalings, consistency
from videodiff.training.loop import Trainer
from videodiff.unet import VideoUNet
from videodiff.weights.models import load_model_parts

PROMPT = "a red square moving right"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("distill-clips"), count=2)


def ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**ANIMATEDIFF_SCHEDULE, clip_sample=False, set_alpha_to_one=False)


def config(model, motion, data, output, **changes) -> TrainConfig:
    base = dict(
        model=str(model),
        motion_module=str(motion),
        data=str(data),
        output=str(output),
        frames=4,
        stride=2,
        resolution=16,
        steps=2,
        lr=1e-3,
        cache_latents=True,
        caption_dropout=0.0,
        save_every=1000,
        num_workers=0,
        quiet=True,
        distill="lcm",
        distill_steps=10,
        distill_ema=0.5,
    )
    base.update({k: str(v) if isinstance(v, Path) else v for k, v in changes.items()})
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------------------------------
# the consistency function and the solver


def test_boundary_condition():
    t = torch.tensor([0, 0, 0])
    c_skip, c_out = boundary_scalings(t)
    assert c_skip.shape == c_out.shape == (3,)
    assert torch.equal(c_skip, torch.ones(3)) and torch.equal(c_out, torch.zeros(3))
    solver = DDIMSolver(ddim().alphas_cumprod, 50)
    x, eps = torch.randn(3, 4, 2, 5, 5), torch.randn(3, 4, 2, 5, 5)
    assert torch.equal(consistency(solver, x, eps, t), x)  # f(x, 0) = x whatever the prediction
    later = consistency(solver, x, eps, torch.tensor([999, 500, 19]))
    assert not torch.allclose(later, x)  # away from 0 the prediction counts
    c_skip, c_out = boundary_scalings(torch.tensor([999.0]))
    assert c_skip.item() < 1e-6 and abs(c_out.item() - 1) < 1e-6  # and far from it, f is x0


@settings(max_examples=40, deadline=None)
@given(
    steps=st.integers(2, 1000),
    pick=st.floats(0, 1, exclude_max=True),
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_solver_step_is_diffusers_ddim_step(steps, pick, shape, seed):
    """One solver step from t_cur to t_prev = t_cur - 1000 // steps is diffusers' DDIMScheduler.step (eta 0)
    between the same timesteps, the last one (to below 0) included."""
    scheduler = ddim()
    scheduler.set_timesteps(steps)
    solver = DDIMSolver(scheduler.alphas_cumprod, steps)
    n = torch.tensor([int(pick * steps)])
    t_cur, t_prev = solver.pair(n)
    assert int(t_cur) - int(t_prev) == 1000 // steps or int(t_prev) == 0
    gen = torch.Generator().manual_seed(seed)
    x, eps = torch.randn(1, *shape, generator=gen), torch.randn(1, *shape, generator=gen)
    want = scheduler.step(eps, int(t_cur), x, eta=0.0).prev_sample
    got = solver.ddim_step(x, eps, t_cur, t_prev)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# what trains


def reference_unet(model, motion) -> VideoUNet:
    parts = load_model_parts(str(model), str(motion))
    return VideoUNet(parts.unet, parts.motion)


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_teacher_frozen_student_trains(tiny_model, tiny_motion, clips, tmp_path):
    trainer = Trainer(config(tiny_model, tiny_motion, clips, tmp_path / "run"))
    trainer.train()
    reference = reference_unet(tiny_model, tiny_motion).state_dict()
    teacher = trainer.distiller.teacher.state_dict()
    assert not differing(reference, teacher), "the teacher changed"
    student = {k: v.detach() for k, v in trainer.video_unet.state_dict().items()}
    changed = differing(reference, student)
    trained = set(trainer.trained_names)
    assert trained and all(k.startswith("motion.") for k in trained)
    assert changed and changed <= trained, f"untrained parameters changed: {sorted(changed - trained)[:3]}"
    assert len(changed) > len(trained) // 2  # most trained tensors moved
    # the target network is an EMA of the student: between the teacher (its start) and the student
    target = trainer.distiller.target.state_dict()
    moved = differing(reference, target)
    assert moved and moved <= trained and differing(target, student) >= moved
    # neither holds a second copy of what does not train
    own = dict(trainer.video_unet.named_parameters())
    for network in (trainer.distiller.teacher, trainer.distiller.target):
        for name, p in network.named_parameters():
            assert (p is own[name]) == (name not in trained), name


# ---------------------------------------------------------------------------------------------------------------------
# the command: a few-step folder that render uses unasked

SMALL = (
    "--frames", 4, "--stride", 2, "--resolution", 16, "--lr", 1e-3, "--cache-latents", "--caption-dropout", 0,
    "--num-workers", 0, "--quiet", "--distill-steps", 10,
)  # fmt: skip


def test_cli_distill_writes_a_four_step_lcm_folder(tiny_model, tiny_motion, clips, tmp_path):
    out = tmp_path / "run"
    ok(invoke("train", "--model", tiny_model, "--motion-module", tiny_motion, "--data", clips, "--output", out,
              "--steps", 2, "--distill", "lcm", *SMALL))  # fmt: skip
    folder = out / "motion_module"
    recorded = read_json(folder / "videodiff.json")
    assert recorded["defaults"] == {"scheduler": "lcm", "steps": 4, "guidance": 1.0}
    assert recorded["train_frames"] == 4 and recorded["distilled"] == {"kind": "lcm", "solver_steps": 10}
    assert read_json(out / "train_config.json")["distill"] == "lcm"
    common = ("--model", tiny_model, "--frames", 4, "--height", 16, "--width", 16, "--seed", 1)
    ok(invoke("render", PROMPT, *common, "--motion-module", folder, "-o", tmp_path / "a.gif"))
    sidecar = read_json(tmp_path / "a.gif.json")
    assert (sidecar["steps"], sidecar["scheduler"], sidecar["guidance"]) == (4, "lcm", 1.0)
    # the steps that run: 4, one model call each (guidance 1: no unconditional branch)
    from videodiff import load_pipeline

    pipe = load_pipeline(str(tiny_model), str(folder), device="cpu")
    seen: list[tuple[int, int]] = []
    pipe(PROMPT, num_frames=4, height=16, width=16, seed=1, on_step=lambda i, total, *rest: seen.append((i, total)))
    assert [i for i, _ in seen] == [0, 1, 2, 3] and {total for _, total in seen} == {4}
    # its steps come from the grid it was distilled on (10 solver steps, k = 100), not LCM's default 50 (k = 20)
    from videodiff.schedulers import make_scheduler

    scheduler = make_scheduler("lcm", pipe.parts.scheduler_config)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 799, 499, 299]  # the default grid would give 759 and 259
    refused = invoke("render", PROMPT, *common, "--motion-module", folder, "--steps", 11, "-o", tmp_path / "b.gif")
    assert "at most 10" in assert_user_error(refused)
    with pytest.raises(UserError, match="at most 10"):
        pipe(PROMPT, num_frames=4, height=16, width=16, steps=11)
    assert not (tmp_path / "b.gif").exists()


def test_distilled_folder_keeps_the_teachers_motion_prior(tiny_model, tiny_motion, clips, tmp_path):
    """A teacher with a motion prior: the distilled folder carries its file and start fraction."""
    from videodiff.motion_prior import PRIOR_FILE
    from videodiff.weights.hub import DEFAULTS_FILE

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_motion, teacher)
    prior = b"not read: the run only copies it"
    (teacher / PRIOR_FILE).write_bytes(prior)
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    recorded = {"motion_prior": 0.25, "motion_prior_space": "pixels", "guidance": 3}
    (model / DEFAULTS_FILE).write_text(json.dumps({"defaults": recorded}))
    trainer = Trainer(config(model, tiny_motion, clips, tmp_path / "run", steps=1))
    trainer.build_models()
    assert trainer.distiller.guidance == 3.0  # the model's recorded guidance
    trainer.parts.sources["motion_module"]["id"] = str(teacher)
    folder = tmp_path / "out"
    folder.mkdir()
    trainer.record_few_step(folder)
    assert (folder / PRIOR_FILE).read_bytes() == prior
    recorded = read_json(folder / DEFAULTS_FILE)["defaults"]
    assert recorded["motion_prior"] == 0.25 and recorded["motion_prior_space"] == "pixels"


def test_distilled_motion_lora_says_how_to_render_it(tiny_model, tiny_motion, clips, tmp_path):
    import logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("videodiff")
    logger.addHandler(handler)
    try:
        trainer = Trainer(config(tiny_model, tiny_motion, clips, tmp_path / "run", steps=1, trainable="lora"))
        trainer.train()
    finally:
        logger.removeHandler(handler)
    assert (tmp_path / "run" / "motion_lora.safetensors").is_file()
    assert any("--scheduler lcm --steps 4 --guidance 1" in r for r in records)
    # the LoRA-free teacher is the model as loaded
    reference = reference_unet(tiny_model, tiny_motion).state_dict()
    assert not differing(reference, trainer.distiller.teacher.state_dict())


def test_validation_renders_use_the_few_step_settings(tiny_model, tiny_motion, clips, tmp_path, monkeypatch):
    """A distillation's validation GIFs sample as its result will be rendered: lcm, 4 steps, guidance 1."""
    from videodiff.pipelines import VideoPipeline

    seen = []
    original = VideoPipeline.settings

    def record(self, *args, **kwargs):
        settings = original(self, *args, **kwargs)
        seen.append(settings)
        return settings

    monkeypatch.setattr(VideoPipeline, "settings", record)
    Trainer(config(tiny_model, tiny_motion, clips, tmp_path / "run", steps=1, validate_every=1,
                   validation_prompt=PROMPT)).train()  # fmt: skip
    assert [(s.scheduler, s.steps, s.guidance) for s in seen] == [("lcm", 4, 1.0)]
    assert (tmp_path / "run" / "validation" / "step-1.gif").is_file()


def test_lcm_with_a_motion_prior_start_skips_one_of_four_steps():
    from videodiff.schedulers import make_scheduler
    from videodiff.starts import start_step

    assert start_step(4, 0.33) == 1
    scheduler = make_scheduler("lcm", {"num_train_timesteps": 1000, "prediction_type": "epsilon"})
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 759, 499, 259]  # LCM's 50-step skipping schedule, k = 20


# ---------------------------------------------------------------------------------------------------------------------
# resume


class Stop(Exception):
    pass


def test_resume_is_exact(tiny_model, tiny_motion, clips, tmp_path, monkeypatch):
    """2 steps straight == 1 step, killed, then --resume latest and 1 more (the target EMA is in the checkpoint)."""
    straight = Trainer(config(tiny_model, tiny_motion, clips, tmp_path / "straight", caption_dropout=0.5))
    straight.train()
    original = Trainer.save

    def save_then_stop(self, step, lr_schedule):
        original(self, step, lr_schedule)
        if step == 1:
            raise Stop

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    with pytest.raises(Stop):
        Trainer(config(tiny_model, tiny_motion, clips, tmp_path / "split", save_every=1, caption_dropout=0.5)).train()
    monkeypatch.setattr(Trainer, "save", original)
    tensors = load_file(str(tmp_path / "split" / "checkpoints" / "step-1" / "trainable.safetensors"))
    assert any(k.startswith("target.") for k in tensors)
    resumed = Trainer(
        config(tiny_model, tiny_motion, clips, tmp_path / "split", save_every=1, caption_dropout=0.5, resume="latest")
    )
    resumed.train()
    want, got = straight.trained_params(), resumed.trained_params()
    assert not differing({k: v.detach() for k, v in want.items()}, {k: v.detach() for k, v in got.items()})
    want_t, got_t = straight.distiller.target_params(), resumed.distiller.target_params()
    assert not differing({k: v.detach() for k, v in want_t.items()}, {k: v.detach() for k, v in got_t.items()})


# ---------------------------------------------------------------------------------------------------------------------
# bad values


@pytest.mark.parametrize(
    "args, message",
    [
        (("--distill", "sdxl-turbo"), "unknown --distill 'sdxl-turbo'"),
        (("--distill", "lcm", "--distill-steps", "1"), "--distill-steps must be a whole number from 2 to 1000"),
        (("--distill", "lcm", "--distill-steps", "1001"), "--distill-steps must be a whole number from 2 to 1000"),
        (("--distill", "lcm", "--distill-ema", "1"), "--distill-ema must be in [0, 1)"),
        (("--distill", "lcm", "--distill-ema", "-0.1"), "--distill-ema must be in [0, 1)"),
        (("--distill", "lcm", "--distill-guidance", "0.5"), "--distill-guidance must be a number >= 1"),
        (("--distill", "lcm", "--late-timesteps", "0.5"), "--late-timesteps does not apply to --distill"),
    ],
    ids=["kind", "steps-1", "steps-1001", "ema-1", "ema-negative", "guidance", "late"],
)
def test_bad_values(tiny_model, tiny_motion, clips, tmp_path, args, message):
    out = tmp_path / "o"
    result = invoke("train", "--model", tiny_model, "--data", clips, "--output", out, "--steps", 1, *SMALL[:-2], *args)
    assert message in assert_user_error(result)
    assert not out.exists()


def test_v_prediction_teacher_is_refused(tiny_model, tiny_motion, clips, tmp_path):
    model = tmp_path / "v-model"
    shutil.copytree(tiny_model, model)
    path = model / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**read_json(path), "prediction_type": "v_prediction"}))
    result = invoke("train", "--model", model, "--motion-module", tiny_motion, "--data", clips,
                    "--output", tmp_path / "o", "--steps", 1, "--distill", "lcm", *SMALL)  # fmt: skip
    assert "needs an epsilon-prediction model" in assert_user_error(result)


def test_a_teacher_without_motion_modules_is_refused(tiny_model, clips, tmp_path):
    result = invoke("train", "--model", tiny_model, "--data", clips, "--output", tmp_path / "o", "--steps", 1,
                    "--distill", "lcm", *SMALL)  # fmt: skip
    assert "needs a model with motion modules" in assert_user_error(result)
