#!/usr/bin/env python
"""Train the built-in "shapes" text-to-video model from scratch, in three stages.

    python scripts/train_shapes.py base --out build/shapes     # 1. VAE, then text encoder + image U-Net on frames
    python scripts/train_shapes.py data --out build/shapes     # 2. training clips (held-out combinations excluded)
    python scripts/train_shapes.py motion --out build/shapes   # 2. inflation + temporal: `videodiff train`
    python scripts/train_shapes.py package --out build/shapes  # 3. fp16 copy into videodiff/models/shapes/
    python scripts/train_shapes.py finetune --out build/shapes # 2c. more motion training from the package, repackaged
    python scripts/train_shapes.py all --out build/shapes      # everything, in order
    python scripts/train_shapes.py distill --out build/shapes --clips 600 --steps 500  # a 4-step LCM student
    python scripts/train_shapes.py package-distill --out build/shapes  # ... as the package's default (shipped)
    python scripts/train_shapes.py prior --out build/shapes    # refit the package's prior (2e's or 2c's cache)
    python scripts/train_shapes.py squares --out build/shapes  # 2e. 2c plus square clips, repackaged

Stage 1 is this script (it reuses the package's noise prior, training schedule and the
shapes generator); stage 2 is the package's own `videodiff train` (see `train_motion`):
new motion modules and the attention queries (configs/train/shapes-motion.yaml), and at its
end the motion prior that sampling starts from (`motion_prior: true`). Every stage
resumes: a finished stage is skipped, stage 1 checkpoints every `--save-every` steps, and
`videodiff train --resume latest` continues an interrupted motion run.
Stage 2c (`finetune`, configs/train/shapes-finetune.yaml) trains the packaged model's motion modules
and attention queries 600 steps more and packages the result over it: it made the motion steadier
(README, "The built-in shapes model"). Stage 2e (`squares`, configs/train/shapes-finetune-squares.yaml)
does it again with 400 clips of squares added, so that the steadier sampling keeps squares square.
Runs on a CPU (2 cores: about 80 minutes in all, measured, plus 50 for stage 2c and 35 for 2e)
or a GPU (`--device cuda`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from videodiff import noise as noise_priors
from videodiff import shapes
from videodiff.motion_prior import PRIOR_FILE
from videodiff.tiny import write_clip_tokenizer, write_model_index
from videodiff.training.loop import training_scheduler

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_MODEL = ROOT / "videodiff" / "models" / "shapes"
WORDS = ("a", "an", "moving", *shapes.COLORS, *shapes.SHAPES, *shapes.DIRECTIONS)
TOKENS = 12  # "a {color} {shape} moving {direction}" is 7 tokens with start and end
# Linear betas 0.00085-0.012 over 1000 steps: the schedule `videodiff train` and the ddim sampler use.
SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
}
MOTION_RUNS = ("motion",)  # the motion runs, in order: run folders and configs/train/shapes-<run>.yaml
DEFAULTS = {
    "frames": 16,
    "height": 64,
    "width": 64,
    "steps": 16,
    "guidance": 3.0,
    "scheduler": "dpm++",
    "fps": 8,
    "motion_prior": 0.375,  # skip 6 of the 16 steps: start from the motion prior's guess (videodiff.motion_prior)
    "motion_prior_space": "pixels",  # the guess drawn through the VAE (stage 2e's evaluation: README)
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class StageCheckpoint:
    """Resumable stage-1 loops: every ``every`` steps the model, optimizer, LR schedule and both
    random generators go to ``path`` (written under a temporary name, then renamed), so a
    killed run continues where it stopped and draws the same batches it would have drawn.
    Read back with ``torch.load(weights_only=True)``: tensors, numbers and strings only.
    """

    def __init__(self, path: Path, every: int, model: torch.nn.Module, opt, sched, rng: np.random.Generator):
        self.path, self.every = path, every
        self.model, self.opt, self.sched, self.rng = model, opt, sched, rng

    def restore(self) -> int:
        """The step to start from: 0, or the step after the last checkpoint."""
        if not self.path.is_file():
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        log(f"resuming {self.path.name} at step {state['step']}")
        return int(state["step"])

    def step_done(self, step: int) -> None:
        """Call after optimizer step ``step`` (0-based); saves every ``every`` steps."""
        if (step + 1) % self.every:
            return
        state = {
            "step": step + 1,
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": json.dumps(self.rng.bit_generator.state),
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


class FrameBank:
    """Every frame of ``clips`` generated training clips (uint8, held-out combinations excluded), with prompts.

    Drawing whole clips once and sampling frames from them keeps the generator out of the
    training step (rendering a clip to use one frame costs as much as a U-Net step on a CPU).
    """

    def __init__(self, clips: int, seed: int, split: str = "train") -> None:
        rng = np.random.default_rng(seed)
        combos = shapes.combos_of(split)
        pixels, self.prompts = [], []
        for _ in range(clips):
            color, shape, direction = combos[rng.integers(len(combos))]
            pixels.append(shapes.render_clip(color, shape, direction, rng=rng))
            self.prompts.append(shapes.prompt_of(color, shape, direction))
        self.pixels = np.stack(pixels)  # [clips frames H W 3]

    def crops(self, rng: np.random.Generator, n: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` random ``size``-pixel crops around the object (jittered), in [-1, 1], and its pixel mask.

        The VAE is all convolution, so it learns on crops what it does on whole frames; a crop
        around the object spends the compute where the colours and edges are, which whole
        frames (about 95% background) do not.
        """
        clip = rng.integers(len(self.pixels), size=n)
        frame = rng.integers(self.pixels.shape[1], size=n)
        images = self.pixels[clip, frame].astype(np.int16)  # [n H W 3]
        full = images.shape[1]
        out, masks = [], []
        for img in images:
            # the object: pixels far from the background (its median colour)
            mask = np.abs(img - np.median(img.reshape(-1, 3), axis=0)).max(axis=-1) > 48
            ys, xs = np.nonzero(mask)
            cy, cx = (ys.mean(), xs.mean()) if len(ys) else rng.uniform(0, full, 2)
            top, left = (
                int(np.clip(round(c - size / 2 + rng.uniform(-size / 4, size / 4)), 0, full - size)) for c in (cy, cx)
            )
            out.append(img[top : top + size, left : left + size])
            masks.append(mask[top : top + size, left : left + size])
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return x, torch.from_numpy(np.stack(masks))[:, None].float()

    def batch(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, list[str]]:
        """``n`` random frames in [-1, 1] ``[n 3 64 64]`` and their clips' prompts."""
        clip = rng.integers(len(self.pixels), size=n)
        frame = rng.integers(self.pixels.shape[1], size=n)
        x = torch.from_numpy(self.pixels[clip, frame]).permute(0, 3, 1, 2).float() / 127.5 - 1
        return x, [self.prompts[i] for i in clip]


def build_vae():
    from diffusers import AutoencoderKL

    # three levels: 4x downsampling, 64x64 frames -> 16x16x4 latents
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        # flat colours need little width at full resolution, where a VAE spends its FLOPs
        block_out_channels=(16, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        mid_block_add_attention=False,  # all convolution: cheaper, and nothing global to model
    )


def build_text(folder: Path):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder / "tokenizer", WORDS, max_length=TOKENS))
    encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return tokenizer, encoder


def build_unet():
    from diffusers import UNet2DConditionModel

    # cross-attention only at 8x8 and 4x4: colour and shape need no 16x16 attention, and it is the costly one
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=32,
    )


def train_vae(out: Path, bank: FrameBank, steps: int, batch: int, device: str, seed: int, save_every: int) -> None:
    folder = out / "base" / "vae"
    if (folder / "config.json").is_file():
        log("VAE: done already")
        return
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = build_vae().to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    folder.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = StageCheckpoint(folder.parent / "vae-state.pt", save_every, vae, opt, sched, rng)
    for step in range(checkpoint.restore(), steps):
        x, mask = bank.crops(rng, batch)
        x, mask = x.to(device), mask.to(device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        # L1 keeps colours exact, weighted 10x on the object (a few % of the pixels, yet the
        # colour and the shape); a tiny KL keeps the latent space smooth enough to diffuse in
        weight = 1 + 9 * mask
        loss = (weight * (recon - x).abs()).mean() / weight.mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"VAE step {step}/{steps} loss {loss.item():.4f}")
        checkpoint.step_done(step)
    vae.eval()
    with torch.no_grad():  # unit-variance latents, as SD's scaling factor makes them
        x, _ = bank.batch(rng, 256)
        z = torch.cat([vae.encode(c.to(device)).latent_dist.mean for c in x.split(64)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    log(f"VAE: the detector on 48 round trips gets {vae_check(vae, device, seed):.0%} of them entirely right")
    vae.save_pretrained(folder)
    log(f"VAE saved, scaling factor {vae.config.scaling_factor:.4f}")
    checkpoint.finish()


@torch.no_grad()
def vae_check(vae, device: str, seed: int) -> float:
    """Fraction of generated clips whose VAE round trip the shapes detector reads entirely right."""
    from videodiff import vae as vae_ops
    from videodiff.shapes.evaluate import detect

    rng = np.random.default_rng(seed + 7)
    combos = shapes.ALL_COMBOS[:: len(shapes.ALL_COMBOS) // 48]
    right = 0
    for combo in combos:
        clip = shapes.render_clip(*combo, rng=rng)
        x = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float().to(device) / 127.5 - 1
        back = vae_ops.to_uint8(vae_ops.decode(vae, vae_ops.encode(vae, x)))[0]
        found = detect(back)
        right += (found.color, found.shape, found.direction) == combo and found.present
    return right / len(combos)


def train_image_model(
    out: Path, bank: FrameBank, steps: int, batch: int, device: str, seed: int, save_every: int
) -> None:
    from diffusers import AutoencoderKL

    base = out / "base"
    if (base / "unet" / "config.json").is_file():
        log("image model: done already")
        return
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    vae = AutoencoderKL.from_pretrained(base / "vae").to(device).eval().requires_grad_(False)
    tokenizer, text_encoder = build_text(base)
    unet = build_unet()
    text_encoder.to(device).train()
    unet.to(device).train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-4, total_steps=steps, pct_start=0.05)
    noise_sched = training_scheduler(SCHEDULER)
    both = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    checkpoint = StageCheckpoint(base / "image-state.pt", save_every, both, opt, sched, rng)
    for step in range(checkpoint.restore(), steps):
        x, prompts = bank.batch(rng, batch)
        prompts = [p if rng.random() > 0.1 else "" for p in prompts]  # the unconditional branch for guidance
        with torch.no_grad():
            z = vae.encode(x.to(device)).latent_dist.sample() * vae.config.scaling_factor
        ids = tokenizer(prompts, padding="max_length", max_length=TOKENS, truncation=True, return_tensors="pt")
        context = text_encoder(ids.input_ids.to(device))[0]
        # single frames are 1-frame videos: the package's noise prior gives the noise
        eps = noise_priors.sample_noise((z.shape[0], z.shape[1], 1, *z.shape[2:]))[:, :, 0].to(device)
        t = torch.randint(0, 1000, (z.shape[0],), device=device)
        pred = unet(noise_sched.add_noise(z, eps, t), t, encoder_hidden_states=context).sample
        loss = F.mse_loss(pred, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"image model step {step}/{steps} loss {loss.item():.4f}")
        checkpoint.step_done(step)
    text_encoder.save_pretrained(base / "text_encoder")
    (base / "scheduler").mkdir(exist_ok=True)
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
    write_model_index(base)
    (base / "videodiff.json").write_text(json.dumps({"defaults": DEFAULTS}, indent=2))
    unet.save_pretrained(base / "unet")  # last: its presence marks the stage as done
    log("image model saved")
    checkpoint.finish()


def write_data(out: Path, count: int, seed: int) -> None:
    data = out / "data"
    if (data / "manifest.jsonl").is_file():
        log("data: done already")
        return
    shapes.write_dataset(data, count, seed=seed, split="train")  # GIF: 4:2:0 video would smear the colours
    log(f"{count} training clips written")


def write_squares(out: Path, count: int, seed: int) -> Path:
    """Stage 2e's data: ``count`` clips of squares (trained combinations only) in ``out/data-squares``, and the
    manifest ``out/data-2e.jsonl`` of those clips and the stage-2 clips (squares first: the order the measured run
    read)."""
    manifest = out / "data-2e.jsonl"
    if manifest.is_file():
        log("squares data: done already")
        return manifest
    folders = (out / "data-squares", out / "data")
    shapes.write_dataset(folders[0], count, seed=seed, split="train", shape="square", overwrite=True)
    rows = [
        {"path": f"{folder.name}/{row['path']}", "caption": row["caption"]}
        for folder in folders
        for row in map(json.loads, (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines())
    ]
    partial = manifest.with_suffix(".partial")
    partial.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    partial.replace(manifest)
    log(f"{count} square clips written; {len(rows)} clips in {manifest}")
    return manifest


def squares(out: Path, config: str, extra: list[str], target: Path) -> None:
    """Stage 2e (configs/train/shapes-finetune-squares.yaml): stage 2c's recipe from the package ``target`` on the
    stage-2 clips plus 400 clips of squares, into ``out/squares``, then packaged over ``target`` like stage 2c
    (``videodiff.json`` kept: set its defaults, guidance 3 and the prior drawn in pixels, with it)."""
    manifest = write_squares(out, 400, seed=5)
    run = out / "squares" / "motion_module"
    if (run / PRIOR_FILE).is_file():
        log("squares: done already")
    else:
        cmd = motion_command(out, "squares", config, extra, target / "motion_adapter", model=target)
        cmd[cmd.index("--data") + 1] = str(manifest)
        log("running " + " ".join(cmd))
        subprocess.run(cmd, check=True)
    package_motion(run, target)


def motion_command(
    out: Path, run: str, config: str, extra: list[str], motion_module: Path | None = None, model: Path | None = None
) -> list[str]:
    """The ``videodiff train`` command of one motion run into ``out/run`` (resumable: ``--resume latest``), from
    ``model`` (default: stage 1's ``out/base``)."""
    start = ["--motion-module", str(motion_module)] if motion_module else []
    return [
        sys.executable,
        "-m",
        "videodiff",
        "train",
        "--config",
        config,
        "--model",
        str(model or out / "base"),
        *start,
        "--data",
        str(out / "data"),
        "--output",
        str(out / run),
        "--resume",
        "latest",
        *extra,
    ]


def train_motion(out: Path, configs: list[str], extra: list[str]) -> None:
    """Each run of MOTION_RUNS in turn, each starting from the previous one's motion modules."""
    previous = None
    for run, config in zip(MOTION_RUNS, configs):
        if (out / run / "motion_module" / PRIOR_FILE).is_file():  # written last, by the end of the run
            log(f"{run}: done already")
        else:
            cmd = motion_command(out, run, config, extra, previous)
            log("running " + " ".join(cmd))
            subprocess.run(cmd, check=True)
        previous = out / run / "motion_module"


def distill(out: Path, config: str, extra: list[str]) -> Path:
    """``videodiff train --distill lcm`` of the packaged built-in model's 16-step motion modules (the teacher: its
    ``teacher/`` folder once a student is packaged, else its own) on the stage-2 clips into ``out/distill``
    (resumable); returns its ``motion_module`` folder. Not part of ``all``; ``package-distill`` packages it."""
    teacher = PACKAGE_MODEL / TEACHER_FOLDER
    cmd = motion_command(out, "distill", config, extra, teacher if teacher.is_dir() else None, model=PACKAGE_MODEL)
    log("running " + " ".join(cmd))
    began = time.perf_counter()
    subprocess.run(cmd, check=True)
    log(f"distill: {time.perf_counter() - began:.1f} s (loading, latent cache and steps)")
    metrics = [json.loads(line) for line in (out / "distill" / "metrics.jsonl").read_text().splitlines()]
    if len(metrics) > 1:  # the first step of a process carries the start-up; the rest are steps
        rates = [m["clips_per_s"] for m in metrics[1:]]
        log(f"distill: {len(rates) / sum(1 / r for r in rates):.3f} clips/s over steps 2-{metrics[-1]['step']}")
    return out / "distill" / "motion_module"


TEACHER_FOLDER = "teacher"  # the package's 16-step motion modules beside the student (--motion-module shapes-teacher)
STUDENT_DEFAULTS = ("steps", "guidance", "scheduler")  # what the model's videodiff.json takes from the student's


def package_student(student: Path, target: Path) -> None:
    """The distilled ``student`` (``out/distill/motion_module``) as the package ``target``'s motion modules, in fp16,
    its sampling defaults (4 lcm steps, guidance 1) the model's; the motion modules it was distilled from move to
    ``target/teacher`` with their own defaults (``videodiff render --motion-module shapes-teacher``). Packaging a
    student again keeps the teacher already there."""
    from safetensors.torch import load_file, save_file

    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(target, staging)
    model_json = json.loads((staging / "videodiff.json").read_text())
    if not (staging / TEACHER_FOLDER).is_dir():
        (staging / "motion_adapter").rename(staging / TEACHER_FOLDER)
        own = {k: model_json["defaults"][k] for k in (*STUDENT_DEFAULTS, "motion_prior", "motion_prior_space")}
        record = json.loads((staging / TEACHER_FOLDER / "videodiff.json").read_text())
        (staging / TEACHER_FOLDER / "videodiff.json").write_text(json.dumps({**record, "defaults": own}, indent=2))
    shutil.rmtree(staging / "motion_adapter", ignore_errors=True)
    shutil.copytree(student, staging / "motion_adapter")
    weights = staging / "motion_adapter" / "diffusion_pytorch_model.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}, str(weights))
    record = json.loads((student / "videodiff.json").read_text())
    model_json["defaults"].update({k: record["defaults"][k] for k in STUDENT_DEFAULTS})
    (staging / "videodiff.json").write_text(json.dumps(model_json, indent=2) + "\n")
    own = {k: v for k, v in record.items() if k != "defaults"}  # its frames and solver grid
    (staging / "motion_adapter" / "videodiff.json").write_text(json.dumps(own, indent=2) + "\n")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    log(f"packaged the student {student} into {target}, its teacher in {target / TEACHER_FOLDER}")


CONTROL_STEPS = 1000  # what the shipped ControlNet was trained for (its row in docs/guides/builtin-model.md)


def control(out: Path, extra: list[str], target: Path, steps: int = CONTROL_STEPS) -> None:
    """The built-in model's ControlNet: 2000 clips along random training paths with their blob maps
    (``videodiff data shapes --maps --paths``), ``videodiff train --controlnet`` on the packaged model (resumable),
    and the result in fp16 as ``target/controlnet``, recorded in ``videodiff.json`` (what ``--control`` alone uses)."""
    from safetensors.torch import load_file, save_file

    data = out / "data-control"
    if not (data / "manifest.jsonl").is_file():
        cmd = [sys.executable, "-m", "videodiff", "data", "shapes", "--out", str(data), "--count", "2000",
               "--seed", "0", "--maps", "--paths", "--overwrite"]  # fmt: skip
        log("running " + " ".join(cmd))
        subprocess.run(cmd, check=True)
    run = out / "control"
    if not (run / "controlnet" / "config.json").is_file():
        cmd = [sys.executable, "-m", "videodiff", "train", "--controlnet", "--model", str(target),
               "--data", str(data / "manifest.jsonl"), "--output", str(run), "--resolution", "64", "--stride", "1",
               "--frames", "16", "--cache-latents", "--steps", str(steps), "--save-every", "250", "--keep", "2",
               "--num-workers", "0", "--lr", "2e-4", "--warmup", "20", "--seed", "0", "--resume", "latest",
               *extra]  # fmt: skip
        log("running " + " ".join(cmd))
        subprocess.run(cmd, check=True)
    staging = target / "controlnet.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shutil.copy(run / "controlnet" / "config.json", staging / "config.json")
    weights = load_file(run / "controlnet" / "diffusion_pytorch_model.safetensors")
    save_file({k: v.half().contiguous() for k, v in weights.items()}, staging / "diffusion_pytorch_model.safetensors")
    shutil.rmtree(target / "controlnet", ignore_errors=True)
    staging.replace(target / "controlnet")
    record = json.loads((target / "videodiff.json").read_text())
    record["controlnet"] = "controlnet"
    (target / "videodiff.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"control: {target / 'controlnet'} installed")


def package(out: Path, target: Path) -> None:
    """fp16 safetensors of the base model plus the motion modules, into ``target`` (the package's model folder)."""
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(out / "base", staging, ignore=shutil.ignore_patterns("*.bin", "*-state.pt"))
    (staging / "videodiff.json").write_text(json.dumps({"defaults": DEFAULTS}, indent=2) + "\n")
    install(staging, out / MOTION_RUNS[-1] / "motion_module", target)


def install(staging: Path, motion: Path, target: Path) -> None:
    """Finish the package ``staging`` (a model folder without motion modules) and put it in ``target``'s place:
    ``motion`` (a `videodiff train` run's motion modules and prior) as its ``motion_adapter``, the image-U-Net
    tensors trained with them (``spatial.safetensors``) folded into ``unet/`` so the package holds one copy
    of every tensor, and every weight file in fp16 but the prior (29 kB, fp32 with its metadata)."""
    from safetensors.torch import load_file, save_file

    from videodiff.weights.models import SPATIAL_FILE

    shutil.copytree(motion, staging / "motion_adapter", ignore=shutil.ignore_patterns(SPATIAL_FILE))
    unet_file = staging / "unet" / "diffusion_pytorch_model.safetensors"
    trained = load_file(str(motion / SPATIAL_FILE)) if (motion / SPATIAL_FILE).is_file() else {}
    for weights in staging.rglob("*.safetensors"):  # one pass: fold, then write fp16
        if weights.name == PRIOR_FILE:
            continue
        tensors = load_file(str(weights))
        if weights == unet_file and trained:
            if not set(trained) <= set(tensors):
                missing = sorted(set(trained) - set(tensors))[:3]
                raise SystemExit(f"{motion}: tensors the image U-Net does not have: {missing}")
            tensors.update(trained)
            log(f"folded {len(trained)} trained image-U-Net tensors into unet/")
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(weights))
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    log(f"packaged {motion} into {target} ({size / 1e6:.1f} MB)")


def finetune(out: Path, config: str, extra: list[str], target: Path) -> None:
    """Stage 2c: more of the motion stage from the packaged model ``target`` (its motion modules and folded
    attention queries) into ``out/finetune``, then its motion modules, refitted prior and attention queries
    packaged over ``target``'s (``videodiff.json`` defaults kept)."""
    run = out / "finetune" / "motion_module"
    if (run / PRIOR_FILE).is_file():
        log("finetune: done already")
    else:
        cmd = motion_command(out, "finetune", config, extra, target / "motion_adapter", model=target)
        log("running " + " ".join(cmd))
        subprocess.run(cmd, check=True)
    package_motion(run, target)


def package_motion(motion: Path, target: Path) -> None:
    """``motion`` (a `videodiff train` run's motion modules, prior and ``spatial.safetensors``) in place of the
    package ``target``'s motion modules; the rest of ``target`` (``videodiff.json`` defaults too) is kept."""
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(target, staging, ignore=shutil.ignore_patterns("motion_adapter"))
    install(staging, motion, target)


def refit_prior(out: Path, target: Path) -> None:
    """Refit the package ``target``'s motion prior (the one its last training run, stage 2e or 2c, fits at its end)
    to the clips' latents that run cached (``out/squares`` or ``out/finetune``), with the package's own text
    encoder: after a change to how the prior reads a clip, without training again. The cache is read as training
    reads it, so it must be of these clips and this package's VAE."""
    from videodiff.config import TrainConfig
    from videodiff.pipelines import load_pipeline
    from videodiff.training.data import ClipDataset, find_clips
    from videodiff.training.export import fit_motion_prior
    from videodiff.training.latents import LatentCache

    run = out / "squares"  # the package's last training run: stage 2e, else stage 2c
    run = run if (run / "train_config.json").is_file() else out / "finetune"
    if not (run / "train_config.json").is_file():
        raise SystemExit(f"{run}: no stage 2c or 2e run to read the clips' latents from; run `finetune` first")
    c = TrainConfig(**json.loads((run / "train_config.json").read_text()))
    height, width = c.size
    clips = ClipDataset(
        find_clips(c.data, c.data_root), frames=c.frames, stride=c.stride, height=height, width=width, flip=c.flip,
        seed=c.seed,
    )  # fmt: skip
    pipe = load_pipeline(str(target))
    cached = LatentCache.open(Path(c.latent_cache or run / "latents.safetensors"), pipe.vae, clips).read({})
    if cached is None:
        raise SystemExit("no latent cache of these clips and this VAE to refit the prior from")
    context = lambda caption: pipe.encode(caption)[0]  # noqa: E731  [n d], as training's caption_context
    fit_motion_prior(zip(cached.latents, cached.captions), context, target / "motion_adapter")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = [
        "base", "data", "motion", "package", "finetune", "all", "distill", "package-distill", "prior", "squares",
        "control",
    ]  # fmt: skip
    parser.add_argument("stage", choices=stages)
    parser.add_argument("--out", type=Path, default=Path("build/shapes"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=2500)
    parser.add_argument("--image-steps", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--save-every", type=int, default=250, help="stage-1 checkpoint interval (resume)")
    parser.add_argument("--bank-clips", type=int, default=1500, help="clips whose frames stage 1 trains on")
    parser.add_argument("--clips", type=int, default=2000, help="training clips for the motion stage")
    parser.add_argument(
        "--motion-config",
        nargs=len(MOTION_RUNS),
        default=[str(ROOT / "configs" / "train" / f"shapes-{run}.yaml") for run in MOTION_RUNS],
        help="the motion runs' configs",
    )
    parser.add_argument("--target", type=Path, default=PACKAGE_MODEL)
    parser.add_argument(
        "--finetune-config", default=str(ROOT / "configs" / "train" / "shapes-finetune.yaml"), help="stage 2c's config"
    )
    parser.add_argument(
        "--squares-config",
        default=str(ROOT / "configs" / "train" / "shapes-finetune-squares.yaml"),
        help="stage 2e's config",
    )
    parser.add_argument(
        "--distill-config", default=str(ROOT / "configs" / "train" / "shapes-distill.yaml"), help="the distill config"
    )
    args, extra = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("base", "all"):
        bank = FrameBank(args.bank_clips, args.seed)
        log(f"frame bank: {bank.pixels.shape[0] * bank.pixels.shape[1]} frames of {bank.pixels.shape[0]} clips")
        train_vae(args.out, bank, args.vae_steps, args.batch, args.device, args.seed, args.save_every)
        train_image_model(args.out, bank, args.image_steps, args.batch, args.device, args.seed, args.save_every)
    if args.stage in ("data", "all"):
        write_data(args.out, args.clips, args.seed)
    if args.stage in ("motion", "all"):
        train_motion(args.out, args.motion_config, extra)
    if args.stage in ("package", "all"):
        package(args.out, args.target)
    if args.stage in ("finetune", "all"):
        write_data(args.out, args.clips, args.seed)  # the stage-2 clips (skipped when written already)
        finetune(args.out, args.finetune_config, extra, args.target)
    if args.stage in ("squares", "all"):
        write_data(args.out, args.clips, args.seed)  # the stage-2 clips (skipped when written already)
        squares(args.out, args.squares_config, extra, args.target)
    if args.stage in ("control", "all"):
        control(args.out, extra, args.target)
    if args.stage == "prior":
        refit_prior(args.out, args.target)
    if args.stage == "distill":
        write_data(args.out, args.clips, args.seed)  # the stage-2 clips (skipped when written already)
        distill(args.out, args.distill_config, extra)
    if args.stage == "package-distill":
        package_student(args.out / "distill" / "motion_module", args.target)


if __name__ == "__main__":
    main()
