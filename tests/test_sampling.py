"""The sampling loop over a toy denoiser: guides, the on_step hook, and restarting the solver's history."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from diffusers import DEISMultistepScheduler, PNDMScheduler, SASolverScheduler, UniPCMultistepScheduler

import videodiff
from videodiff import sampling
from videodiff.sampling import Cancelled, ClassifierFreeGuidance, NoGuidance, Schedule, guide_for
from videodiff.schedulers import make_scheduler

BUILTIN = Path(videodiff.__file__).parent / "models" / "shapes" / "scheduler" / "scheduler_config.json"
SD15 = Path(videodiff.__file__).parent / "assets" / "sd15" / "scheduler" / "scheduler_config.json"
STEPS = 6


def builtin_config() -> dict:
    return json.loads(BUILTIN.read_text())


MAKERS = {
    "dpm++": lambda: make_scheduler("dpm++", builtin_config()),
    "unipc": lambda: UniPCMultistepScheduler.from_config(builtin_config()),
    "deis": lambda: DEISMultistepScheduler.from_config(builtin_config()),
    "sa-solver": lambda: SASolverScheduler.from_config(builtin_config()),  # stochastic: needs the seed
    "euler-a": lambda: make_scheduler("euler-a", builtin_config()),
    "ddim": lambda: make_scheduler("ddim", builtin_config()),
    "euler": lambda: make_scheduler("euler", builtin_config()),
}


def toy(x: torch.Tensor, t: torch.Tensor, cond: sampling.Cond | torch.Tensor) -> torch.Tensor:
    """A deterministic, batch-independent stand-in for the U-Net: nonlinear in x, depends on t and context."""
    c = sampling.as_cond(cond).context
    per_sample = c.mean(dim=tuple(range(1, c.ndim))).view(-1, 1, 1, 1, 1)
    return 0.3 * torch.tanh(x) + 0.2 * per_sample + 0.05 * torch.sin(t.float() / 100)


def latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


CONTEXT = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(1))
UNCOND = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(2))


def replace(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x + 0.1


def run(name: str, *, on_step=None, start: int = 0, seed: int | None = None, guide=None, **kwargs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return sampling.sample(
        toy,
        latents(),
        MAKERS[name](),
        steps=STEPS,
        guide=guide or NoGuidance(CONTEXT),
        on_step=on_step,
        generator=generator,
        progress=False,
        start=start,
        **kwargs,
    )


def replace_at(k: int):
    def hook(i, total, t, t_next, x, pass_index):
        return replace(x) if i == k else None

    return hook


def fresh_restart_reference(name: str, k: int, seed: int | None = None) -> torch.Tensor:
    """k+1 steps, replace, then a FRESH scheduler begun at step k+1 from the replaced latents (diffusers API only)."""
    x = latents()
    s = MAKERS[name]()
    takes_generator = "generator" in inspect.signature(s.step).parameters
    kw = {"generator": torch.Generator().manual_seed(seed)} if seed is not None and takes_generator else {}
    s.set_timesteps(STEPS)
    for t in s.timesteps[: k + 1]:
        x = s.step(toy(s.scale_model_input(x, t), t, CONTEXT), t, x, **kw).prev_sample
    x = replace(x)
    s = MAKERS[name]()
    s.set_timesteps(STEPS)
    s.set_begin_index(k + 1)
    for t in s.timesteps[k + 1 :]:
        x = s.step(toy(s.scale_model_input(x, t), t, CONTEXT), t, x, **kw).prev_sample
    return x


@pytest.mark.parametrize("name", ["dpm++", "unipc", "deis", "sa-solver"])
@pytest.mark.parametrize("k", [0, 2])
def test_replacing_latents_restarts_multistep_history(name, k, monkeypatch):
    """After a hook replaces latents the rest is a fresh solver started there; keeping the old history is not."""
    reference = fresh_restart_reference(name, k, seed=1)
    restarted = run(name, on_step=replace_at(k), seed=1)
    assert torch.equal(restarted, reference)

    monkeypatch.setattr(Schedule, "restart", lambda self: None)
    stale = run(name, on_step=replace_at(k), seed=1)
    assert not torch.allclose(stale, reference, rtol=0, atol=1e-4)


def test_euler_ancestral_restart_is_a_no_op():
    """Euler-a keeps no history: replacing latents equals the fresh-scheduler reference with the same noise stream,
    and a hook handing back the latents unchanged gives the hook-free result."""
    k = 2
    assert torch.equal(run("euler-a", on_step=replace_at(k), seed=3), fresh_restart_reference("euler-a", k, seed=3))
    same = run("euler-a", on_step=lambda i, n, t, tn, x, p: x, seed=3)
    assert torch.equal(same, run("euler-a", seed=3))
    assert not torch.equal(run("euler-a", seed=3), run("euler-a", seed=4))  # the generator does feed the steps


@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_restart_is_a_no_op_without_history(name):
    same = run(name, on_step=lambda i, n, t, tn, x, p: x)
    assert torch.equal(same, run(name))


@pytest.mark.parametrize("start", [0, 3])
def test_hook_sees_every_step(start):
    calls = []

    def hook(i, total, t, t_next, x, pass_index):
        calls.append((i, total, int(t), None if t_next is None else int(t_next), pass_index, x.clone()))

    out = run("dpm++", on_step=hook, start=start, pass_index=7)
    s = MAKERS["dpm++"]()
    s.set_timesteps(STEPS)
    ts = [int(t) for t in s.timesteps[start:]]
    total = STEPS - start
    assert [c[:5] for c in calls] == [(i, total, ts[i], ts[i + 1] if i + 1 < total else None, 7) for i in range(total)]
    assert torch.equal(calls[-1][5], out)  # the hook sees the latents after the step


@pytest.mark.parametrize("name,seed", [("dpm++", None), ("euler-a", 5)])
def test_hook_returning_none_changes_nothing(name, seed):
    assert torch.equal(run(name, on_step=lambda *a: None, seed=seed), run(name, seed=seed))


def test_cancelled_stops_at_the_step_it_is_raised():
    calls = []

    def counting(x, t, c):
        calls.append(int(t))
        return toy(x, t, c)

    def stop(i, total, t, t_next, x, pass_index):
        if i == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        sampling.sample(
            counting, latents(), MAKERS["dpm++"](), steps=STEPS, guide=NoGuidance(CONTEXT), on_step=stop, progress=False
        )
    assert len(calls) == 3


def test_no_guidance_is_one_conditional_call():
    x, t = latents(), torch.tensor(500)
    batches = []

    def spy(x, t, c):
        batches.append(x.shape[0])
        return toy(x, t, c)

    assert torch.equal(NoGuidance(CONTEXT)(spy, x, t), toy(x, t, CONTEXT))
    assert isinstance(guide_for(1.0, CONTEXT, UNCOND), NoGuidance)
    assert isinstance(guide_for(3.0, CONTEXT, None), NoGuidance)
    run("ddim", guide=guide_for(1.0, CONTEXT, UNCOND))
    sampling.sample(spy, latents(), MAKERS["ddim"](), steps=2, guide=guide_for(1.0, CONTEXT, UNCOND), progress=False)
    assert batches == [1, 1, 1]
    # CFG at scale 1 is the conditional branch (up to rounding)
    torch.testing.assert_close(ClassifierFreeGuidance(1.0, CONTEXT, UNCOND)(toy, x, t), toy(x, t, CONTEXT))


def test_cfg_is_eps_u_plus_s_times_the_difference_in_one_batch():
    x, t = latents(), torch.tensor(500)
    seen = []

    def spy(x, t, c):
        seen.append((x.clone(), c.context.clone()))
        return toy(x, t, c)

    guide = guide_for(3.0, CONTEXT, UNCOND)
    assert isinstance(guide, ClassifierFreeGuidance)
    out = guide(spy, x, t)
    ((bx, bc),) = seen
    assert torch.equal(bx, torch.cat([x, x])) and torch.equal(bc, torch.cat([UNCOND, CONTEXT]))
    eps_u, eps_c = toy(x, t, UNCOND), toy(x, t, CONTEXT)
    torch.testing.assert_close(out, eps_u + 3.0 * (eps_c - eps_u))


@pytest.mark.parametrize("name", ["euler", "dpm++"])
def test_guided_sampling_is_bitwise_the_old_loop(name):
    """The loop before guides existed: cat the latents, scale the pair, one call, split, guide, step."""
    s = MAKERS[name]()
    s.set_timesteps(STEPS)
    x = latents() * s.init_noise_sigma
    context = torch.cat([UNCOND, CONTEXT])
    for t in s.timesteps:
        eps_u, eps_c = toy(s.scale_model_input(torch.cat([x] * 2), t), t, context).chunk(2)
        x = s.step(sampling.guided(eps_u, eps_c, 4.0), t, x).prev_sample
    new = sampling.sample(
        toy,
        latents() * s.init_noise_sigma,
        MAKERS[name](),
        steps=STEPS,
        guide=guide_for(4.0, CONTEXT, UNCOND),
        progress=False,
    )
    assert torch.equal(new, x)


def test_sample_takes_a_schedule():
    schedule = Schedule(MAKERS["dpm++"](), STEPS, start=2)
    full = MAKERS["dpm++"]()
    full.set_timesteps(STEPS)
    assert torch.equal(schedule.timesteps, full.timesteps[2:])
    a = sampling.sample(toy, latents(), schedule, steps=STEPS, start=2, guide=NoGuidance(CONTEXT), progress=False)
    assert torch.equal(a, run("dpm++", start=2))
    with pytest.raises(ValueError):
        sampling.sample(toy, latents(), schedule, steps=STEPS, guide=NoGuidance(CONTEXT), progress=False)


def test_noised_start_is_the_schedules_add_noise():
    clean, noise = latents(1), latents(2)
    s = MAKERS["dpm++"]()
    x = sampling.noised_start(s, STEPS, 2, clean, noise)
    schedule = Schedule(MAKERS["dpm++"](), STEPS, 2)
    assert torch.equal(x, schedule.add_noise(clean, noise, schedule.timesteps[:1]))
    assert torch.equal(x, s.add_noise(clean, noise, s.timesteps[2:3]))


def test_pndm_refuses_to_restart_but_samples_with_a_passive_hook():
    """The SD1.5 folder's PNDM pairs its first steps; clearing that mid-run would skip a noise level."""
    pndm = PNDMScheduler.from_config(json.loads(SD15.read_text()))
    with pytest.raises(NotImplementedError):
        Schedule(pndm, STEPS).restart()
    a = sampling.sample(
        toy, latents(), pndm, steps=STEPS, guide=NoGuidance(CONTEXT), on_step=lambda *a: None, progress=False
    )
    b = sampling.sample(toy, latents(), pndm, steps=STEPS, guide=NoGuidance(CONTEXT), progress=False)
    assert torch.equal(a, b)
