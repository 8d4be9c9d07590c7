"""What a training run writes besides its checkpoints: the results, where ``videodiff render`` loads them.

In the run folder:

- ``train_config.json``: the resolved settings (:func:`save_run_config`);
- ``metrics.jsonl``: one line a step, and TensorBoard scalars under ``tensorboard/`` (:class:`MetricsLog`);
- ``validation/step-N.gif``: validation renders (:func:`render_validation`);
- ``motion_module/`` (a diffusers ``MotionAdapter`` folder, with ``spatial.safetensors`` when image
  U-Net weights were trained too) or ``motion_lora.safetensors`` (:func:`save_trained`);
- ``motion_module/motion_prior.safetensors`` with ``--motion-prior`` (:func:`fit_motion_prior`);
- ``controlnet/`` (a diffusers ``ControlNetModel`` folder) with ``--controlnet`` (:mod:`.controlnet`).

Each function takes what it needs explicitly and knows nothing of the training loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import torch

from videodiff.config import TrainConfig
from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.motion_prior import PRIOR_FILE, ClipTargets, MotionPrior, clip_targets, prompt_features
from videodiff.training.data import ClipSource
from videodiff.training.trainable import SPATIAL_PREFIX
from videodiff.unet import VideoUNet
from videodiff.unet.lora import lora_state_dict
from videodiff.weights.models import SPATIAL_FILE, ModelParts

PRIOR_CAPTIONS = "--motion-prior fits the clips' captions, and fewer than two clips have one"


RUN_KIND = "training run"  # the receipt a run's folder carries (videodiff.media.gate)
# what a run replaces in its folder; metrics.jsonl is appended to (and refused without --resume), checkpoints/
# and tensorboard/ get new names
RUN_FILES = ("train_config.json", "motion_lora.safetensors", "motion_module", "controlnet", "validation")


def check_run_folder(run: Path) -> None:
    """Before any work: ``run`` is a folder (or nothing yet), and every file of it a run would replace is one
    that videodiff wrote there and that is unchanged since (its receipt says so); a user's file is never replaced."""
    from videodiff.media.atomic import check_replaceable
    from videodiff.media.gate import check_owned

    check_replaceable(run, file_ok=lambda p: False, folder_ok=lambda p: True, kind="training folder (--output)")
    check_owned(run, RUN_FILES, RUN_KIND, what=" in this training folder")


def note_written(run: Path, *paths: Path) -> None:
    """Add ``paths`` (written into ``run``) to the run folder's receipt: what a later run may replace."""
    from videodiff.media.gate import record as record_written

    record_written(run, RUN_KIND, paths)


def save_run_config(run: Path, config: TrainConfig) -> None:
    """``train_config.json``: the run's resolved settings, beside its outputs."""
    from videodiff.media.atomic import write_text_atomic

    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run / "train_config.json", json.dumps(asdict(config), indent=2))
    note_written(run, run / "train_config.json")


class MetricsLog:
    """``metrics.jsonl`` (one JSON object a step), and the same numbers in TensorBoard when it is installed."""

    def __init__(self, run: Path) -> None:
        self.run = run
        self._tb = None
        self._tb_tried = False  # the writer is made at the first record: a run that logs nothing leaves no folder

    def write(self, record: dict) -> None:
        with (self.run / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if not self._tb_tried:
            self._tb_tried = True
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run / "tensorboard"))
            except Exception:  # noqa: BLE001 - TensorBoard is optional
                self._tb = None
        if self._tb is not None:
            for k, v in record.items():
                if k != "step":
                    self._tb.add_scalar(f"train/{k}", v, record["step"])


def render_validation(
    run: Path,
    step: int,
    parts: ModelParts,
    unet: VideoUNet,
    device: torch.device,
    config: TrainConfig,
    sample: dict | None = None,
) -> Path:
    """Render ``config.validation_prompt`` with the modules being trained (``parts``, wrapped by ``unet``) into
    ``validation/step-N.gif``; ``unet`` is back in training mode afterwards. ``sample``: sample settings that
    win over the model's (a distillation's few-step ones; its ``steps`` over ``config.validation_steps``)."""
    from videodiff.media.video import save_video
    from videodiff.pipelines import VideoPipeline

    pipe = VideoPipeline(parts, device, torch.float32)
    height, width = config.size
    extra = dict(sample or {})
    result = pipe(
        config.validation_prompt,
        num_frames=min(config.frames, unet.max_frames),
        height=height,
        width=width,
        num_inference_steps=extra.pop("steps", config.validation_steps),
        seed=config.seed,
        **extra,
    )
    path = run / "validation" / f"step-{step}.gif"
    save_video(result.frames, path, fps=8, overwrite=True)
    note_written(run, path)
    unet.train()
    return path


def save_trained(
    unet: VideoUNet,
    run: Path,
    trainable: str,
    trained: dict[str, torch.nn.Parameter],
    train_frames: int | None = None,
) -> Path | None:
    """Write the trained weights (``trained``, named as in ``unet``) where render loads them.

    ``trainable="lora"``: ``motion_lora.safetensors`` (returns None). Otherwise the ``motion_module``
    folder, with the trained image U-Net tensors in ``spatial.safetensors`` and the clip length trained on
    (``train_frames``, what render's sliding windows default to) in ``videodiff.json`` (returns the folder).
    """
    from safetensors.torch import save_file

    from videodiff.media.atomic import atomic_file, user_mode
    from videodiff.weights.motion_formats import save_motion_folder

    if trainable == "lora":
        with atomic_file(run / "motion_lora.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in lora_state_dict(unet.motion).items()}, str(tmp))
        note_written(run, run / "motion_lora.safetensors")
        return None
    folder = save_motion_folder(unet.motion, run / "motion_module", overwrite=True)
    spatial = {
        k[len(SPATIAL_PREFIX) :]: p.detach().cpu().contiguous()
        for k, p in trained.items()
        if k.startswith(SPATIAL_PREFIX)
    }
    if spatial:
        save_file(spatial, str(folder / SPATIAL_FILE))
        user_mode(folder / SPATIAL_FILE)
    if train_frames is not None:
        record(folder, {"train_frames": int(train_frames)})
    note_written(run, folder)
    return folder


def check_motion_prior_data(sources: list[ClipSource]) -> None:
    """Fail before training when :func:`fit_motion_prior` would fail after it: fewer than two captioned clips."""
    if sum(bool(source.caption) for source in sources) < 2:
        raise UserError(PRIOR_CAPTIONS)


@torch.no_grad()
def fit_motion_prior(
    clips: Iterable[tuple[torch.Tensor, str]], context_for: Callable[[str], torch.Tensor], folder: Path
) -> Path:
    """Fit a motion prior (:mod:`videodiff.motion_prior`) to the captioned ``clips``; save it in ``folder``.

    ``clips``: ``(latents [c f h w], caption)`` of one clip per video; ``context_for``: a caption's text
    context ``[n d]``. Clip by clip: what is kept of each is its caption's features and ~100 numbers,
    not its latents.
    """
    features, targets = [], []
    for clip, caption in clips:
        if not caption:
            continue
        features.append(prompt_features(context_for(caption)[None])[0])
        targets.append(clip_targets(clip[None].float().cpu()))
    if len(features) < 2:
        raise UserError(PRIOR_CAPTIONS)
    prior, fit = MotionPrior.fit_targets(torch.stack(features), ClipTargets.cat(targets))
    path = folder / PRIOR_FILE
    prior.save(path, fit)
    notice(
        f"motion prior fitted to {fit['clips']} captioned clips (velocity rms error "
        f"{fit['velocity_rms_cells_per_frame']:.3f} cells/frame, direction agrees on "
        f"{100 * fit['direction_agreement']:.0f}%): {path}"
    )
    return path


def copy_companions(source: Path | None, folder: Path, names: Iterable[str]) -> list[str]:
    """Copy the companion files ``names`` (motion prior, spatial tensors) of the motion modules at ``source`` into
    ``folder``; returns the names copied. Spatial tensors ``folder`` already holds (trained there) win over the
    copied ones, tensor by tensor."""
    import shutil

    from safetensors.torch import load_file, save_file

    from videodiff.media.atomic import user_mode
    from videodiff.weights.motion_formats import companion_files

    if source is None:
        return []
    found = companion_files(source)
    copied = []
    for name in names:
        if name not in found:
            continue
        dst = folder / name
        if dst.exists() and name == SPATIAL_FILE:
            save_file({**load_file(str(found[name])), **load_file(str(dst))}, str(dst))
        elif not dst.exists():
            shutil.copyfile(found[name], dst)
        user_mode(dst)
        copied.append(name)
    return copied


def record(folder: Path, entries: dict, defaults: dict | None = None) -> Path:
    """Merge ``entries`` (top-level keys) and ``defaults`` (render settings, keys of
    :data:`videodiff.config.MODEL_DEFAULT_KEYS`) into ``folder``'s ``videodiff.json``, keeping what it records
    already; written whole under a temporary name, then renamed."""
    from videodiff.media.atomic import atomic_file, user_mode
    from videodiff.weights.hub import DEFAULTS_FILE

    path = folder / DEFAULTS_FILE
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(entries)
    if defaults:
        data.setdefault("defaults", {}).update(defaults)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    user_mode(path)
    return path
