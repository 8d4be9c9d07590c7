"""The training loop on Hugging Face Accelerate: one process or many, CPU or GPU, with no code change.

    accelerate launch -m videodiff train --model M --data clips/ --output run/

Each optimizer step: for each of ``grad_accum`` micro-batches, encode the clips
(or take cached latents), draw the noise prior and timesteps, noise the latents
(q(x_t|x_0)), predict with the video U-Net and take the MSE to the target (epsilon,
or velocity for v-prediction schedulers); then clip gradients and step. All
randomness derives from (seed, micro-step, process), so a resumed run is exact.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from videodiff import noise as noise_priors
from videodiff import vae
from videodiff.config import TrainConfig
from videodiff.errors import UserError
from videodiff.launch import CPU_FLAG_ADVICE, check_launch, close
from videodiff.log import notice
from videodiff.sampling.cond import Cond
from videodiff.schedulers import ANIMATEDIFF_SCHEDULE
from videodiff.training.captions import Captions
from videodiff.training.checkpoints import load_checkpoint, resolve_resume, save_checkpoint
from videodiff.training.data import ClipDataset, ResumableBatches, find_clips, step_generator
from videodiff.training.distill import FEW_STEP_DEFAULTS, TARGET_PREFIX, Distiller, frozen_copy
from videodiff.training.export import (
    MetricsLog,
    check_motion_prior_data,
    check_run_folder,
    copy_companions,
    fit_motion_prior,
    record,
    render_validation,
    save_run_config,
    save_trained,
)
from videodiff.training.latents import ClipEncoder, LatentCache, check_cache_path, clip_latents, collate_any
from videodiff.training.trainable import select_trainable
from videodiff.unet import VideoUNet
from videodiff.weights.hub import BUILTIN_NAME, builtin_model
from videodiff.weights.models import ModelParts, load_model_parts


def training_scheduler(model_config: dict[str, Any]):
    """DDPM forward process with AnimateDiff's training schedule (linear betas 0.00085-0.012)."""
    from diffusers import DDPMScheduler

    config = {k: v for k, v in model_config.items() if not k.startswith("_")}
    config.update(ANIMATEDIFF_SCHEDULE)
    return DDPMScheduler.from_config(config, clip_sample=False)


def target_for(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    if kind == "sample":
        return latents
    raise UserError(f"unsupported prediction type {kind!r} in the model's scheduler config")


class EMA:
    """Exponential moving average of the trained parameters (Polyak averaging)."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float) -> None:
        self.decay = decay
        self.shadow = {k: p.detach().clone().float() for k, p in params.items()}

    @torch.no_grad()
    def update(self, params: dict[str, torch.nn.Parameter]) -> None:
        for k, p in params.items():
            self.shadow[k].lerp_(p.detach().float(), 1 - self.decay)


def sample_timesteps(n: int, total: int, late: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` training timesteps, uniform over ``[0, total)``; a ``late`` fraction of them (on average)
    from the noisiest quarter instead. There the noisy input barely shows the clip, so what the
    prompt says (a direction of motion, say) is what lowers the loss: extra samples there teach
    prompt-following layout and motion faster (the idea of diffusers' ``timestep_bias_strategy="later"``).
    """
    t = torch.randint(0, total, (n,), generator=generator)
    if late > 0:
        upper = torch.randint(total - total // 4, total, (n,), generator=generator)
        t = torch.where(torch.rand(n, generator=generator) < late, upper, t)
    return t


class Trainer:
    uses_maps = False  # whether the clips' control maps are read (ControlNet training, :mod:`.controlnet`)

    def __init__(self, config: TrainConfig) -> None:
        from accelerate import Accelerator

        self.config = config.validate()
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision)
        check_launch(self.accelerator.num_processes, advice=CPU_FLAG_ADVICE)
        self.run = Path(config.output)
        self.device = self.accelerator.device
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.skipped: dict[str, str] = {}
        self.nan_total = 0
        self.metrics = MetricsLog(self.run)

    # 1. models
    def build_models(self) -> None:
        c = self.config
        torch.manual_seed(c.seed)  # new motion modules and LoRA layers draw their initial weights here
        if not c.model or c.model == BUILTIN_NAME:
            notice(f"training on the built-in shapes model ({builtin_model()}); pass --model for another")
        self.parts: ModelParts = load_model_parts(c.model, c.motion_module, new_motion=True)
        if c.distill:
            self.parts.family.require("consistency distillation")
        if c.motion_prior:
            self.parts.family.require("motion prior")
        self.video_unet = self.trained_module = VideoUNet(self.parts.unet, self.parts.motion)
        teacher = frozen_copy(self.video_unet) if c.distill else None  # the model as loaded, before any LoRA
        self.trained_names = select_trainable(self.video_unet, c.trainable, c.lora_rank)
        self.video_unet.gradient_checkpointing = c.gradient_checkpointing
        self.video_unet.train()
        self.parts.vae.to(self.device)
        for encoder in self.parts.text_encoders:
            encoder.to(self.device)
        self.scheduler = training_scheduler(self.parts.scheduler_config)
        self.captions = Captions(self.parts, self.device)
        self.distiller = self.build_distiller(teacher) if teacher is not None else None

    def build_distiller(self, teacher: VideoUNet) -> Distiller:
        """``--distill lcm``: the frozen teacher, the target network and the solver (:mod:`.distill`)."""
        c = self.config
        kind = self.scheduler.config.prediction_type
        if kind != "epsilon":
            raise UserError(f"--distill {c.distill} needs an epsilon-prediction model; this one predicts {kind}")
        if self.parts.sources.get("motion_module", {}).get("id", "").startswith("new "):
            raise UserError(
                f"--distill {c.distill} needs a model with motion modules (the teacher): pass --motion-module"
            )
        total = self.scheduler.config.num_train_timesteps
        if c.distill_steps > total:
            raise UserError(f"--distill-steps {c.distill_steps} exceeds the model's {total} training timesteps")
        guidance = c.distill_guidance or float(self.parts.defaults.get("guidance") or 4.0)
        distiller = Distiller(
            teacher,
            self.video_unet,
            self.trained_names,
            self.scheduler.alphas_cumprod,
            steps=c.distill_steps,
            guidance=guidance,
            ema=c.distill_ema,
        )
        return distiller.to(self.device)

    def trained_params(self, module: torch.nn.Module | None = None) -> dict[str, torch.nn.Parameter]:
        module = module or self.accelerator.unwrap_model(self.model)
        params = dict(module.named_parameters())
        return {n: params[n] for n in self.trained_names}

    # 2. data
    def build_data(self, position: int) -> None:
        c = self.config
        height, width = c.size
        sources = find_clips(c.data, c.data_root)
        self.dataset: torch.utils.data.Dataset = ClipDataset(
            sources, frames=c.frames, stride=c.stride, height=height, width=width, flip=c.flip, seed=c.seed,
            maps=self.uses_maps,
        )  # fmt: skip
        workers = c.num_workers
        self.encoder = ClipEncoder(self.parts.vae, self.device, c.seed, progress=self.is_main and not c.quiet)
        if c.cache_latents:
            path = Path(c.latent_cache) if c.latent_cache else self.run / "latents.safetensors"
            cache = LatentCache.open(path, self.parts.vae, self.dataset, main=self.is_main)
            self.dataset = cache.encode_or_load(self.dataset, self.encoder, self.skipped, c.data)
            workers = 0
        self.sampler = ResumableBatches(
            len(self.dataset), c.batch_size, seed=c.seed, rank=self.rank, world=self.world, position=position
        )
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate_any,
            persistent_workers=workers > 0,
            # spawned, not forked: a fork copies locks other threads (FFmpeg's, OpenCV's, OpenMP's) hold at that
            # moment, and a worker that needs one then waits forever
            multiprocessing_context="spawn" if workers > 0 else None,
        )
        self.batches = iter(loader)
        self.position = position

    def next_batch(self) -> dict:
        """The next batch with at least one readable clip; a dataset with none is an error."""
        # a run of unreadable batches can span the end of one epoch and the start of the next: allow two epochs
        for _ in range(2 * max(1, self.sampler.per_epoch) + 1):
            batch = next(self.batches)
            self.position += 1
            self.skipped.update(dict(batch["skipped"]))
            if "latents" in batch or "pixels" in batch:
                return batch
        raise UserError(
            f"no readable clips in {self.config.data}: a whole epoch was unreadable or too short "
            f"(e.g. {next(iter(self.skipped.items()), ('?', '?'))})"
        )

    # 3. one micro-step
    def caption_context(self, caption: str) -> torch.Tensor:
        """The text context ``[n d]`` of ``caption``, encoded once per run (:class:`.captions.Captions`)."""
        return self.captions.context(caption)

    def encode_captions(self, captions: list[str], gen_seed: str, latents: torch.Tensor) -> Cond:
        """The micro-batch's conditioning; a dropped caption trains the unconditional branch guidance needs."""
        scale = 2 ** (len(self.parts.vae.config.block_out_channels) - 1)  # the clips' pixel size, for size ids
        height, width = (scale * s for s in latents.shape[-2:])
        return self.captions.cond(captions, self.config.caption_dropout, gen_seed, height, width)

    def latents_and_noise(self, batch: dict, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A micro-batch's clean latents (cached, or encoded from its pixels) and the noise prior's draw for them,
        both from ``gen`` in this order (what makes a resumed run exact)."""
        if "latents" in batch:
            latents = batch["latents"].to(self.device)
        else:
            pixels = batch["pixels"].to(self.device, self.parts.vae.dtype)
            latents = vae.encode(self.parts.vae, pixels, sample=True, generator=gen)
        latents = latents.float()
        c = self.config
        eps = noise_priors.sample_noise(tuple(latents.shape), kind=c.noise, alpha=c.noise_alpha, generator=gen)
        return latents, eps.to(self.device)

    def loss(self, batch: dict, micro_step: int) -> torch.Tensor:
        if self.distiller is not None:
            return self.distill_loss(batch, micro_step)
        c = self.config
        gen = step_generator(c.seed, micro_step, self.rank)
        with torch.no_grad():
            latents, eps = self.latents_and_noise(batch, gen)
            t = sample_timesteps(latents.shape[0], self.scheduler.config.num_train_timesteps, c.late_timesteps, gen)
            t = t.to(self.device)
            noisy = self.scheduler.add_noise(latents, eps, t)
            cond = self.encode_captions(batch["captions"], f"{c.seed}/{micro_step}/{self.rank}/captions", latents)
            target = target_for(self.scheduler, latents, eps, t)
        with self.accelerator.autocast():
            pred = self.model(noisy, t, cond)
        return F.mse_loss(pred.float(), target.float())

    def distill_loss(self, batch: dict, micro_step: int) -> torch.Tensor:
        """The consistency-distillation loss (:meth:`Distiller.loss`): the same latents, noise prior and
        generator discipline as :meth:`loss`, so a resumed run is exact."""
        c = self.config
        gen = step_generator(c.seed, micro_step, self.rank)
        with torch.no_grad():
            latents, eps = self.latents_and_noise(batch, gen)
            seed = f"{c.seed}/{micro_step}/{self.rank}/captions"
            context = self.encode_captions(batch["captions"], seed, latents).context  # SD1.5's: SDXL's is refused
            uncond = self.caption_context("")
        return self.distiller.loss(self.model, latents, eps, context, uncond, gen, self.accelerator.autocast)

    # 4. the loop
    def train(self) -> Path:
        c, acc = self.config, self.accelerator
        self.check_data(find_clips(c.data, c.data_root))  # an empty dataset fails before minutes of model loading
        check_run_folder(self.run)  # a file, a link, a device, or a user's files where the run writes: refused
        if c.cache_latents:
            check_cache_path(Path(c.latent_cache) if c.latent_cache else self.run / "latents.safetensors")
        if not c.resume and ((self.run / "metrics.jsonl").exists() or (self.run / "checkpoints").exists()):
            raise UserError(
                f"{self.run} already holds a training run; pass --resume latest to continue it, or another --output"
            )
        self.build_models()
        resume = resolve_resume(self.run, c.resume) if c.resume else None
        state = load_checkpoint(resume) if resume else None
        if state:  # weights before the optimizer is built, so it holds the resumed tensors
            self.load_trained(state["tensors"])
        params = [p for p in self.trained_module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        from diffusers.optimization import get_scheduler

        # diffusers' "constant" ignores warm-up; "constant_with_warmup" is the same schedule with it
        name = "constant_with_warmup" if c.lr_schedule == "constant" and c.warmup else c.lr_schedule
        lr_schedule = get_scheduler(name, optimizer, num_warmup_steps=c.warmup, num_training_steps=c.steps)
        self.model, self.optimizer = acc.prepare(self.trained_module, optimizer)
        self.ema = EMA(self.trained_params(), c.ema_decay) if c.ema_decay else None
        start, position = 0, 0
        if state:
            self.optimizer.optimizer.load_state_dict(state["optimizer"])
            lr_schedule.load_state_dict(state["lr_scheduler"])
            if state["scaler"] is not None and acc.scaler is not None:
                acc.scaler.load_state_dict(state["scaler"])
            s = state["state"]
            if s.get("world", 1) != self.world:
                raise UserError(
                    f"{resume} was written by {s.get('world', 1)} processes; resume it with the same number "
                    f"(this run has {self.world}), or the data order cannot continue exactly"
                )
            start, position, self.nan_total = s["step"], s["positions"][self.rank], s["nan_total"]
            if self.ema is not None:
                self.ema.shadow = {
                    k[len("ema.") :]: v.float() for k, v in state["tensors"].items() if k.startswith("ema.")
                }
            if self.distiller is not None:
                self.distiller.load_target(state["tensors"])
            if self.is_main:
                notice(f"resuming from {resume} at step {start}")
        self.build_data(position)
        if self.is_main:
            save_run_config(self.run, c)
        bar = self.bar = tqdm(total=c.steps, initial=start, disable=not self.is_main or c.quiet, desc="training")
        nan_in_a_row, last = 0, time.perf_counter()
        for step in range(start, c.steps):
            losses, clips = [], 0
            finite = True
            for micro in range(c.grad_accum):
                batch = self.next_batch()
                loss = self.loss(batch, step * c.grad_accum + micro)
                ok = acc.gather(torch.isfinite(loss).float().reshape(1).to(self.device)).min().item() > 0
                if not ok:  # every process skips together, or the gradient all-reduce would hang
                    finite = False
                    break
                acc.backward(loss / c.grad_accum)
                losses.append(loss.detach())
                clips += len(batch["captions"])
            if not finite:
                self.optimizer.zero_grad(set_to_none=True)
                self.nan_total += 1
                nan_in_a_row += 1
                if nan_in_a_row >= c.max_nan_steps:
                    raise UserError(
                        f"the loss was NaN or infinite in {nan_in_a_row} steps in a row (step {step + 1}); "
                        "lower --lr or use --mixed-precision bf16/no"
                    )
                continue
            nan_in_a_row = 0
            acc.clip_grad_norm_(params, c.max_grad_norm)
            used_lr = lr_schedule.get_last_lr()[0]
            self.optimizer.step()
            lr_schedule.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.trained_params())
            if self.distiller is not None:
                self.distiller.update_target(self.trained_params())
            done = step + 1
            mean_loss = acc.reduce(torch.stack(losses).mean(), reduction="mean").item()
            now = time.perf_counter()
            record = {
                "step": done,
                "loss": mean_loss,
                "lr": used_lr,
                "clips_per_s": clips * self.world / max(now - last, 1e-9),
                "nan_skipped": self.nan_total,
            }
            last = now
            if self.is_main:
                self.metrics.write(record)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{mean_loss:.4f}", lr=f"{record['lr']:.2e}", clips_s=f"{record['clips_per_s']:.2f}"
                )
            if done % c.save_every == 0 or done == c.steps:
                self.save(done, lr_schedule)
            if c.validate_every and done % c.validate_every == 0 and self.is_main:
                few_step = dict(FEW_STEP_DEFAULTS) if self.distiller is not None else None
                render_validation(self.run, done, self.parts, acc.unwrap_model(self.model), self.device, c, few_step)
        bar.close()
        self.finish()
        close(self.accelerator.state)
        return self.run

    def check_data(self, sources: list) -> None:  # clips that cannot serve this run fail before model loading
        if self.config.controlnet and not self.uses_maps:
            raise ValueError("a --controlnet run is ControlNetTrainer's (videodiff.training.run.train picks it)")
        if self.config.motion_prior:  # a motion prior needs captions to fit
            check_motion_prior_data(sources)

    # 5. saving
    def load_trained(self, tensors: dict[str, torch.Tensor]) -> None:
        trained = self.trained_params(self.trained_module)
        weights = {k: v for k, v in tensors.items() if not k.startswith(("ema.", TARGET_PREFIX))}
        if self.distiller is None and any(k.startswith(TARGET_PREFIX) for k in tensors):
            raise UserError("the checkpoint is of a --distill run; resume it with the same --distill")
        if set(weights) != set(trained):
            raise UserError("the checkpoint's trained tensors do not match this run's --trainable set")
        with torch.no_grad():
            for k, p in trained.items():
                p.copy_(weights[k])

    def save(self, step: int, lr_schedule) -> None:
        acc = self.accelerator
        positions = acc.gather(torch.tensor([self.position], device=self.device)).tolist()
        if self.is_main:
            tensors = {k: p.detach() for k, p in self.trained_params().items()}
            if self.ema is not None:
                tensors.update({f"ema.{k}": v for k, v in self.ema.shadow.items()})
            if self.distiller is not None:
                tensors.update(self.distiller.target_state())
            state = {
                "step": step,
                "positions": positions,
                "nan_total": self.nan_total,
                "world": self.world,
                "trainable": self.config.trainable,
            }
            save_checkpoint(
                self.run,
                step,
                tensors=tensors,
                optimizer=self.optimizer.optimizer.state_dict(),
                lr_scheduler=lr_schedule.state_dict(),
                state=state,
                keep=self.config.keep,
                scaler=acc.scaler.state_dict() if acc.scaler is not None else None,
            )
        acc.wait_for_everyone()

    def finished_model(self) -> torch.nn.Module | None:
        """Report skipped videos; the trained model with its final (EMA) weights on the main process, else None."""
        self.accelerator.wait_for_everyone()
        if self.skipped and self.is_main:
            example = next(iter(self.skipped.items()))
            notice(f"skipped {len(self.skipped)} unreadable or too-short videos (e.g. {example[0]}: {example[1]})")
        if not self.is_main:
            return None
        model = self.accelerator.unwrap_model(self.model)
        if self.ema is not None:  # the averaged weights are the result
            with torch.no_grad():
                for k, p in self.trained_params(model).items():
                    p.copy_(self.ema.shadow[k].to(p.dtype))
        return model

    def finish(self) -> None:
        """Save the result on the main process (:meth:`finished_model`)."""
        if (unet := self.finished_model()) is None:
            return
        folder = save_trained(
            unet, self.run, self.config.trainable, self.trained_params(unet), train_frames=self.config.frames
        )
        if folder is not None and self.distiller is not None:
            self.record_few_step(folder)
        elif self.distiller is not None:  # a motion LoRA file records no defaults: say what to render it with
            notice("render the distilled motion LoRA with --scheduler lcm --steps 4 --guidance 1")
        if folder is not None and (self.distiller is None or self.config.motion_prior):  # a student copies its own
            self.save_motion_prior(folder)

    def save_motion_prior(self, folder: Path) -> None:
        """``--motion-prior`` fits a motion prior to the clips. Without it, motion modules trained from ones that
        have a prior keep that prior as it is (it reads the text encoder and the VAE, which training leaves alone; a
        refit to a few clips would guess worse than one fitted to the teacher's data), with the start the teacher
        recorded (``motion_prior``, ``motion_prior_space``), so the result renders as the teacher did."""
        from videodiff.motion_prior import PRIOR_FILE

        kept = self.parts.motion_prior is not None
        if self.config.motion_prior:
            clips = clip_latents(self.dataset, self.encoder, "fitting the motion prior", self.skipped)
            fit_motion_prior(clips, self.caption_context, folder)
        elif kept:
            copy_companions(self.motion_location(), folder, (PRIOR_FILE,))
            notice(f"kept the motion modules' motion prior in {folder} (--motion-prior refits it to these clips)")
        starts = {k: self.parts.defaults[k] for k in ("motion_prior", "motion_prior_space") if k in self.parts.defaults}
        if kept and starts:
            record(folder, {}, starts)

    def record_few_step(self, folder: Path) -> None:
        """A distilled folder renders with LCM's few-step defaults unasked; it keeps the teacher's motion prior
        (file, start fraction and where it draws) and, unless trained here, the teacher's spatial tensors."""
        from videodiff.motion_prior import PRIOR_FILE
        from videodiff.weights.models import SPATIAL_FILE

        defaults = dict(FEW_STEP_DEFAULTS)
        copied = copy_companions(self.motion_location(), folder, (PRIOR_FILE, SPATIAL_FILE))
        if PRIOR_FILE in copied:  # the prior's start and where it draws, as the teacher recorded them
            for key in ("motion_prior", "motion_prior_space"):
                if self.parts.defaults.get(key) is not None:
                    defaults[key] = self.parts.defaults[key]
        record(folder, {"distilled": {"kind": "lcm", "solver_steps": self.config.distill_steps}}, defaults)

    def motion_location(self) -> Path | None:
        """Where the teacher's motion modules were loaded from (None: new ones)."""
        from videodiff.weights.hub import locate

        source = self.parts.sources.get("motion_module", {}).get("id", "")
        return None if not source or source.startswith("new ") else locate(source, "motion module")


def train(config: TrainConfig, trainer_class: type[Trainer] = Trainer) -> Path:
    """Train as ``config`` says with ``trainer_class`` (:func:`videodiff.training.run.train` picks it, for
    ``--controlnet`` too); returns the run folder. Launch with ``accelerate launch`` for several processes."""
    trainer = trainer_class(config)
    try:
        return trainer.train()
    finally:  # closed before an error is printed, so the error is the last line (not a redrawn bar)
        if (bar := getattr(trainer, "bar", None)) is not None:
            bar.close()
