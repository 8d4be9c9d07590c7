"""Latent consistency distillation (``videodiff train --distill lcm``): a few-step student from the model as loaded.

LCM (Luo et al. 2023, "Latent Consistency Models"), as AnimateLCM applies it to motion modules: the
trained parameters (``--trainable``: the motion modules by default) learn a consistency function
``f(x, t) = c_skip(t) x + c_out(t) x0(x, t)`` that maps any point of a probability-flow trajectory to
its start, so that sampling needs a handful of steps (diffusers' ``LCMScheduler``). One loss term:

- a solver step ``n`` is drawn uniformly from the ``N`` steps of a skipping-step DDIM solver over the
  training schedule (``k = 1000 / N``): ``t_cur = (n + 1) k - 1`` and ``t_prev = t_cur - k`` (0 below);
- the clean latents are noised to ``t_cur`` (q(x_t|x_0), the training loop's noise prior);
- the frozen **teacher** (a copy of the model as loaded, never updated) predicts epsilon with
  classifier-free guidance (the empty caption is the unconditional branch); one DDIM step (eta 0)
  takes ``x_cur`` to ``x_prev``;
- the **target** network, an EMA of the student, evaluates ``f(x_prev, t_prev)`` without gradients;
  the student evaluates ``f(x_cur, t_cur)``; the loss is the pseudo-Huber distance (c = 0.001).

The boundary scalings (sigma_data 0.5, timestep scaling 10) are those of diffusers' ``LCMScheduler``,
so ``f(x, 0) = x``. The training loop (:mod:`videodiff.training.loop`) calls :meth:`Distiller.loss`
in place of its denoising loss; checkpoints carry the target as ``target.<name>`` tensors.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch

from videodiff.errors import UserError

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0  # diffusers' LCMScheduler default, what renders of the result use
HUBER_C = 0.001
TARGET_PREFIX = "target."  # the target network's tensors in a checkpoint
FEW_STEP_DEFAULTS = {"scheduler": "lcm", "steps": 4, "guidance": 1.0}  # LCM bakes guidance into the student


def boundary_scalings(
    t: torch.Tensor, sigma_data: float = SIGMA_DATA, timestep_scaling: float = TIMESTEP_SCALING
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)`` at timesteps ``t`` (``[b]``, float): ``c_skip(0) = 1`` and ``c_out(0) = 0``."""
    scaled = timestep_scaling * t.double()
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip.float(), c_out.float()


def expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[b]`` values broadcast over the other dimensions of ``like``."""
    return values.to(like.device, like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


class DDIMSolver:
    """The skipping-step DDIM solver: ``steps`` steps over the ``alphas_cumprod`` training schedule."""

    def __init__(self, alphas_cumprod: torch.Tensor, steps: int) -> None:
        total = len(alphas_cumprod)
        if not 2 <= steps <= total:
            raise UserError(f"--distill-steps must be from 2 to the {total} training timesteps, got {steps}")
        self.alphas_cumprod = alphas_cumprod.detach().double().cpu()
        self.steps = steps
        self.skip = total // steps  # k
        self.timesteps = torch.arange(1, steps + 1) * self.skip - 1  # t_cur of each solver step

    def pair(self, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t_cur, t_prev)`` of solver steps ``n`` (``t_prev`` clamped at 0)."""
        t_cur = self.timesteps[n]
        return t_cur, (t_cur - self.skip).clamp(min=0)

    def alpha(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return expand(self.alphas_cumprod[t.cpu()], like)

    def x0(self, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean latents an epsilon prediction implies: ``(x - sqrt(1 - a) eps) / sqrt(a)``."""
        a = self.alpha(t, x)
        return (x - (1 - a).sqrt() * eps) / a.sqrt()

    def ddim_step(self, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
        """One DDIM step (eta 0) from ``x`` at ``t`` to ``t_prev``, epsilon ``eps``."""
        a_prev = self.alpha(t_prev, x)
        return a_prev.sqrt() * self.x0(x, eps, t) + (1 - a_prev).sqrt() * eps


def consistency(solver: DDIMSolver, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``f(x, t) = c_skip(t) x + c_out(t) x0(x, t)``."""
    c_skip, c_out = boundary_scalings(t)
    return expand(c_skip, x) * x + expand(c_out, x) * solver.x0(x, eps, t)


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float = HUBER_C) -> torch.Tensor:
    return torch.mean(torch.sqrt((a.float() - b.float()) ** 2 + c**2) - c)


def frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with no gradients, in eval mode (the teacher, the target network)."""
    clone = copy.deepcopy(module)
    clone.requires_grad_(False).eval()
    if hasattr(clone, "gradient_checkpointing"):
        clone.gradient_checkpointing = False
    return clone


def share_frozen(clone: torch.nn.Module, source: torch.nn.Module, trained_names: list[str]) -> int:
    """Point ``clone``'s parameters at ``source``'s same-named ones that do not train (bitwise equal copies,
    never updated): the teacher and the target then hold only their own copy of the trained set, not a
    second image U-Net. Returns how many were shared."""
    trained = set(trained_names)
    own = dict(clone.named_parameters())
    shared = 0
    for name, p in source.named_parameters():
        if name in trained or name not in own or own[name].shape != p.shape or not torch.equal(own[name], p):
            continue
        prefix, _, leaf = name.rpartition(".")
        setattr(clone.get_submodule(prefix) if prefix else clone, leaf, p)
        shared += 1
    return shared


class Distiller:
    """The LCM loss of a student, with its frozen teacher and its EMA target network.

    ``teacher``: the model as loaded, copied before the student's trainable set was chosen.
    ``student``: the module being trained; ``trained_names`` its trained parameters, whose EMA the target
    network holds (everything else of the target is the student's frozen rest, copied once).
    """

    def __init__(
        self,
        teacher: torch.nn.Module,
        student: torch.nn.Module,
        trained_names: list[str],
        alphas_cumprod: torch.Tensor,
        *,
        steps: int,
        guidance: float,
        ema: float,
    ) -> None:
        self.teacher = teacher
        self.target = frozen_copy(student)
        share_frozen(self.teacher, student, trained_names)
        share_frozen(self.target, student, trained_names)
        self.trained_names = list(trained_names)
        self.solver = DDIMSolver(alphas_cumprod, steps)
        self.guidance = guidance
        self.ema = ema

    def to(self, device: torch.device) -> Distiller:
        self.teacher.to(device)
        self.target.to(device)
        return self

    def target_params(self) -> dict[str, torch.nn.Parameter]:
        params = dict(self.target.named_parameters())
        return {n: params[n] for n in self.trained_names}

    @torch.no_grad()
    def update_target(self, student_params: dict[str, torch.nn.Parameter]) -> None:
        """target <- ema * target + (1 - ema) * student, for the trained parameters."""
        for k, p in self.target_params().items():
            p.lerp_(student_params[k].detach().to(p.dtype), 1 - self.ema)

    def target_state(self) -> dict[str, torch.Tensor]:
        return {TARGET_PREFIX + k: p.detach() for k, p in self.target_params().items()}

    @torch.no_grad()
    def load_target(self, tensors: dict[str, torch.Tensor]) -> None:
        found = {k[len(TARGET_PREFIX) :]: v for k, v in tensors.items() if k.startswith(TARGET_PREFIX)}
        params = self.target_params()
        if set(found) != set(params):
            raise UserError("the checkpoint has no target network for this --distill run (was it a distillation?)")
        for k, p in params.items():
            p.copy_(found[k])

    def loss(
        self,
        student: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        latents: torch.Tensor,
        eps: torch.Tensor,
        context: torch.Tensor,
        uncond: torch.Tensor,
        generator: torch.Generator,
        autocast=None,
    ) -> torch.Tensor:
        """The pseudo-Huber consistency loss of ``student`` (called as ``student(x, t, context)``) on the clean
        ``latents`` (``[b c f h w]``) noised by ``eps``; ``uncond``: the empty caption's context ``[n d]``;
        the solver steps are drawn from ``generator``; ``autocast``: a context manager factory for the U-Nets."""
        autocast = autocast or contextlib.nullcontext
        b, device = latents.shape[0], latents.device
        n = torch.randint(0, self.solver.steps, (b,), generator=generator)
        t_cur, t_prev = self.solver.pair(n)
        with torch.no_grad():
            a = self.solver.alpha(t_cur, latents)
            x_cur = a.sqrt() * latents + (1 - a).sqrt() * eps
            t_in, t_prev_in = t_cur.to(device), t_prev.to(device)
            if self.guidance > 1:
                both = torch.cat([uncond.expand(b, *uncond.shape).to(context), context])
                with autocast():
                    out = self.teacher(torch.cat([x_cur, x_cur]), torch.cat([t_in, t_in]), both).float()
                e_uncond, e_cond = out.chunk(2)
                e_teacher = e_uncond + self.guidance * (e_cond - e_uncond)
            else:
                with autocast():
                    e_teacher = self.teacher(x_cur, t_in, context).float()
            x_prev = self.solver.ddim_step(x_cur, e_teacher, t_cur, t_prev)
            with autocast():
                e_target = self.target(x_prev, t_prev_in, context).float()
            target = consistency(self.solver, x_prev, e_target, t_prev)
        with autocast():
            e_student = student(x_cur, t_in, context)
        pred = consistency(self.solver, x_cur, e_student.float(), t_cur)
        return pseudo_huber(pred, target)
