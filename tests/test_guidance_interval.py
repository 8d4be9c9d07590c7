"""--timestep-spacing, the lcm scheduler and --guidance-interval: against diffusers and by counting the batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke, ok

import videodiff
from videodiff import sampling
from videodiff.config import SampleSettings
from videodiff.errors import UserError
from videodiff.noise import sample_noise
from videodiff.sampling import ClassifierFreeGuidance, GuidanceInterval, NoGuidance, guide_for
from videodiff.schedulers import make_scheduler

SD15 = Path(videodiff.__file__).parent / "assets" / "sd15" / "scheduler" / "scheduler_config.json"
PROMPT = "a red circle moving right"


def sd15_config() -> dict:
    return json.loads(SD15.read_text())


# ---------------------------------------------------------------------------------------------------------------------
# spacing and schedulers


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 25])
def test_trailing_euler_has_diffusers_lightning_timesteps(steps):
    """AnimateDiff-Lightning's model card: EulerDiscreteScheduler.from_config(sd15, timestep_spacing="trailing",
    beta_schedule="linear"); ours gives exactly its timesteps and sigmas, and trailing's definition: the last
    training timestep first, then every 1000/steps below it."""
    from diffusers import EulerDiscreteScheduler

    ours = make_scheduler("euler", sd15_config(), "trailing")
    theirs = EulerDiscreteScheduler.from_config(sd15_config(), timestep_spacing="trailing", beta_schedule="linear")
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    assert torch.equal(ours.sigmas, theirs.sigmas)
    expected = np.round(np.arange(1000, 0, -1000 / steps)) - 1
    assert ours.timesteps.tolist() == expected.tolist()
    assert ours.timesteps[0] == 999  # trailing starts at the noisiest timestep (linspace too; leading does not)


DIFFUSERS_CLASSES = {
    "ddim": ("DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=False)),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2)),
}


@pytest.mark.parametrize("name", sorted(DIFFUSERS_CLASSES))
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_spacing_reaches_every_scheduler(name, spacing):
    """Each scheduler with each spacing has the timesteps diffusers' class gives for the same config."""
    import diffusers

    cls_name, extra = DIFFUSERS_CLASSES[name]
    theirs = getattr(diffusers, cls_name).from_config(
        sd15_config(), beta_schedule="linear", timestep_spacing=spacing, steps_offset=1, **extra
    )
    ours = make_scheduler(name, sd15_config(), spacing)
    assert type(ours) is type(theirs) and ours.config.timestep_spacing == spacing
    for steps in (4, 7):
        ours.set_timesteps(steps)
        theirs.set_timesteps(steps)
        assert torch.equal(ours.timesteps, theirs.timesteps)
    trailing = make_scheduler(name, sd15_config(), "trailing")
    leading = make_scheduler(name, sd15_config(), "leading")
    trailing.set_timesteps(4)
    leading.set_timesteps(4)
    assert int(trailing.timesteps[0]) == 999 > int(leading.timesteps[0])  # leading never starts at pure noise


def test_default_spacing_is_animatediffs_linspace():
    assert SampleSettings().timestep_spacing == "linspace"
    assert make_scheduler("ddim", sd15_config()).config.timestep_spacing == "linspace"


def test_lcm_is_diffusers_lcm_scheduler_as_animatelcm_configures_it():
    """AnimateLCM's card: LCMScheduler.from_config(sd15, beta_schedule="linear"): the same timesteps and steps."""
    from diffusers import LCMScheduler

    ours = make_scheduler("lcm", sd15_config())
    theirs = LCMScheduler.from_config(sd15_config(), beta_schedule="linear")
    assert isinstance(ours, LCMScheduler)
    for steps in (1, 4, 6, 8):
        ours.set_timesteps(steps)
        theirs.set_timesteps(steps)
        assert torch.equal(ours.timesteps, theirs.timesteps)
    assert torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)


def test_lcm_steps_are_limited_to_its_schedule():
    with pytest.raises(UserError, match="at most 50"):
        SampleSettings(scheduler="lcm", steps=51).validate()
    SampleSettings(scheduler="lcm", steps=50).validate()


# ---------------------------------------------------------------------------------------------------------------------
# guidance interval


class Spy:
    """Records the batch size of every denoiser call."""

    def __init__(self, denoiser):
        self.denoiser, self.batches = denoiser, []

    def __call__(self, x, t, context):
        self.batches.append(x.shape[0])
        return self.denoiser(x, t, context)


def run(tiny_pipe, interval, steps=6, scheduler="ddim", start=0, **kw):
    latents = sample_noise(tiny_pipe.latent_shape(3, 16, 16), generator=torch.Generator().manual_seed(0))
    sched = make_scheduler(scheduler, tiny_pipe.parts.scheduler_config)
    context, uncond = tiny_pipe.encode(PROMPT), tiny_pipe.encode("cat")
    spy = Spy(tiny_pipe.unet)
    guide = guide_for(7.5, context, uncond, interval)
    out = sampling.sample(spy, latents * sched.init_noise_sigma, sched, steps=steps, guide=guide, start=start, **kw)
    return out, spy.batches


def test_interval_0_1_is_plain_guidance_bitwise(tiny_pipe):
    plain, plain_batches = run(tiny_pipe, None)
    full, full_batches = run(tiny_pipe, (0.0, 1.0))
    assert torch.equal(plain, full)
    assert plain_batches == full_batches == [2] * 6


def test_narrower_interval_drops_the_unconditional_branch_outside_it(tiny_pipe):
    """6 steps at positions 0, .2, .4, .6, .8, 1: 0,0.5 guides the first three (batch 2), the rest run the
    conditional branch alone (batch 1); 0.25,0.75 the middle two."""
    first, batches = run(tiny_pipe, (0.0, 0.5))
    assert batches == [2, 2, 2, 1, 1, 1]
    _, middle = run(tiny_pipe, (0.25, 0.75))
    assert middle == [1, 1, 2, 2, 1, 1]
    plain, _ = run(tiny_pipe, None)
    assert not torch.equal(first, plain)


def test_outside_the_interval_is_the_conditional_prediction(tiny_pipe):
    """An empty-width interval at the last step guides only that one; the steps before equal guidance 1 exactly."""
    latents = sample_noise(tiny_pipe.latent_shape(3, 16, 16), generator=torch.Generator().manual_seed(1))
    sched = make_scheduler("ddim", tiny_pipe.parts.scheduler_config)
    context, uncond = tiny_pipe.encode(PROMPT), tiny_pipe.encode("cat")
    seen = {}

    def keep(i, total, t, t_next, x, p):
        seen.setdefault(i, x.clone())

    guide = guide_for(7.5, context, uncond, (1.0, 1.0))
    sampling.sample(tiny_pipe.unet, latents.clone(), sched, steps=4, guide=guide, on_step=keep, progress=False)
    cond_only = {}

    def keep_cond(i, total, t, t_next, x, p):
        cond_only.setdefault(i, x.clone())

    sampling.sample(
        tiny_pipe.unet, latents.clone(), sched, steps=4, guide=NoGuidance(context), on_step=keep_cond, progress=False
    )
    for i in range(3):
        assert torch.equal(seen[i], cond_only[i])
    assert not torch.equal(seen[3], cond_only[3])


def test_interval_counts_the_steps_sampled_after_a_part_way_start(tiny_pipe):
    """With 8 steps started at step 4 (the motion prior, img2vid), 4 steps run; 0,0.5 guides the first two of
    those (positions 0 and 1/3), not steps 0-3 of the full schedule (which are never run)."""
    _, batches = run(tiny_pipe, (0.0, 0.5), steps=8, start=4)
    assert batches == [2, 2, 1, 1]


def test_single_step_is_at_position_zero():
    cfg = ClassifierFreeGuidance(2.0, torch.zeros(1, 2, 3), torch.zeros(1, 2, 3))
    assert GuidanceInterval(cfg, 0.0, 0.5).inside(0, 1)
    assert not GuidanceInterval(cfg, 0.5, 1.0).inside(0, 1)


def test_interval_reaches_the_render(tiny_pipe):
    """Through the pipeline: a render with 0,0.5 differs from plain guidance, with 0,1 it is the same video."""
    kw = dict(num_frames=3, height=16, width=16, num_inference_steps=4, seed=2, negative_prompt="cat")
    plain = tiny_pipe(PROMPT, **kw).frames
    assert np.array_equal(tiny_pipe(PROMPT, guidance_interval=(0, 1), **kw).frames, plain)
    half = tiny_pipe(PROMPT, guidance_interval=(0, 0.5), **kw)
    assert not np.array_equal(half.frames, plain)
    assert tuple(half.settings["guidance_interval"]) == (0, 0.5)


@pytest.mark.parametrize(
    "value, message",
    [
        ("0.6,0.2", "LOW <= HIGH"),
        ("-0.1,0.5", "LOW <= HIGH"),
        ("0,1.5", "LOW <= HIGH"),
        ("0.5", "two numbers"),
        ("0,0.5,1", "two numbers"),
        ("a,b", "two numbers"),
        ("nan,1", "two numbers"),
    ],
)
def test_bad_interval_is_a_one_line_error(models, tmp_path, value, message):
    result = invoke("render", PROMPT, *models, "--guidance-interval", value, "-o", tmp_path / "x.gif")
    assert message in assert_user_error(result)
    assert not (tmp_path / "x.gif").exists()


def test_bad_interval_in_a_config_file_is_a_one_line_error(models, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("guidance_interval: [0.9, 0.1]\n")
    result = invoke("render", PROMPT, *models, "--config", config, "-o", tmp_path / "x.gif")
    assert "LOW <= HIGH" in assert_user_error(result)


def test_cli_interval_spacing_and_lcm_render_and_are_recorded(models, tmp_path):
    out = tmp_path / "x.gif"
    args = ("--frames", 3, "--height", 16, "--width", 16, "--steps", 4, "--seed", 1, "-o", out)
    ok(invoke("render", PROMPT, *models, *args, "--guidance-interval", "0,0.5", "--timestep-spacing", "trailing"))
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["guidance_interval"] == [0.0, 0.5] and sidecar["timestep_spacing"] == "trailing"
    # the sidecar renders the same settings again (a list in JSON is the pair)
    ok(invoke("render", *models, "--config", out.with_name(out.name + ".json"), "-o", tmp_path / "y.gif"))
    ok(invoke("render", PROMPT, *models, *args[:-2], "--scheduler", "lcm", "-o", tmp_path / "lcm.gif"))
