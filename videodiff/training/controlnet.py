"""``videodiff train --controlnet``: a ControlNet for an image model, trained on clips and their control maps.

The ControlNet (diffusers' ``ControlNetModel``) is an image ControlNet, as AnimateDiff's are: it runs on the frames
folded into the batch (``b c f h w -> (b f) c h w``), and its residuals go into the *image* U-Net, frozen, frame by
frame. The motion modules are left out of the loss (a ControlNet steers each frame; at render time its residuals
enter the video U-Net's image layers the same way). The image U-Net carries the spatial weights the model's motion
modules bring (``spatial.safetensors``), so it is the one a render runs. Only the ControlNet trains.

A new ControlNet is made from the image U-Net's encoder (``ControlNetModel.from_unet``: its weights copied, the zero
convolutions zero), reading 3-channel maps, with one downsampling of its maps' embedding per VAE downsampling; or
training continues a ControlNet folder (``--controlnet FOLDER``). Everything else is :class:`~.loop.Trainer`'s:
the data (and its maps, :mod:`.maps`), exact resume, the latent cache (which keeps the maps), checkpoints and
metrics. The result is ``OUTPUT/controlnet``, a diffusers ``ControlNetModel`` folder (safetensors) that
``videodiff render --controlnet OUTPUT/controlnet --control MAPS`` uses.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from videodiff.errors import UserError
from videodiff.log import notice
from videodiff.settings.train import NEW_CONTROLNET
from videodiff.training.captions import Captions
from videodiff.training.data import step_generator
from videodiff.training.export import note_written
from videodiff.training.loop import Trainer, sample_timesteps, target_for, training_scheduler
from videodiff.training.maps import check_maps_given
from videodiff.weights.hub import BUILTIN_NAME, builtin_model
from videodiff.weights.models import load_model_parts

__all__ = ["CONTROLNET_FOLDER", "ControlNetTrainer", "new_controlnet"]

CONTROLNET_FOLDER = "controlnet"  # OUTPUT/controlnet
EMBEDDING_CHANNELS = (16, 32, 96, 256)  # diffusers' default maps embedding (SD1.5: three downsamplings, the VAE's)


def new_controlnet(unet, vae_config) -> torch.nn.Module:
    """A ControlNet made from ``unet``'s encoder (``ControlNetModel.from_unet``), reading RGB maps at the VAE's input
    size: as many downsamplings of the maps' embedding as the VAE has (SD1.5: three, diffusers' default)."""
    from diffusers import ControlNetModel

    downsamplings = len(vae_config["block_out_channels"]) - 1
    if not 1 <= downsamplings < len(EMBEDDING_CHANNELS):
        raise UserError(f"a VAE that downsamples {2**downsamplings}x is not an SD1.5-family VAE (8x)")
    channels = EMBEDDING_CHANNELS[: downsamplings + 1]
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels, conditioning_channels=3)


class ControlNetTrainer(Trainer):
    """:class:`~.loop.Trainer` whose trained module is a ControlNet and whose loss runs the image U-Net per frame."""

    uses_maps = True

    def check_data(self, sources: list) -> None:
        """Before any model loads: every clip has maps, and a ControlNet to continue is an image ControlNet."""
        from videodiff.weights.controlnets import local_controlnet_kind

        check_maps_given(sources)
        source = self.config.controlnet
        if source != NEW_CONTROLNET and local_controlnet_kind(source) == "sparsectrl":
            raise UserError(f"--controlnet {source}: a SparseCtrl model; only image ControlNets train")

    def build_models(self) -> None:
        c = self.config
        torch.manual_seed(c.seed)
        if not c.model or c.model == BUILTIN_NAME:
            notice(f"training a ControlNet for the built-in shapes model ({builtin_model()}); pass --model for another")
        self.parts = load_model_parts(c.model, c.motion_module, new_motion=True)
        self.parts.family.require("ControlNet training")  # an SD1.5 image ControlNet; SDXL ones render, not train
        self.unet = self.parts.unet.to(self.device)  # frozen (requires_grad off, eval), with the motion's spatial
        if c.controlnet == NEW_CONTROLNET:
            net = new_controlnet(self.parts.unet, self.parts.vae.config)
        else:
            from videodiff.weights.controlnets import check_fits, load_controlnet

            net = load_controlnet(c.controlnet)
            if type(net).__name__ != "ControlNetModel":
                raise UserError(f"--controlnet {c.controlnet}: a SparseCtrl model; only image ControlNets train")
            check_fits(net, self.unet.config, c.controlnet)
        net.requires_grad_(True).train()
        if c.gradient_checkpointing:
            net.enable_gradient_checkpointing()
        self.controlnet = self.trained_module = net
        self.trained_names = [name for name, _ in net.named_parameters()]
        self.video_unet = None  # no motion modules in this loss
        self.parts.vae.to(self.device)
        self.parts.text_encoder.to(self.device)
        self.scheduler = training_scheduler(self.parts.scheduler_config)
        self.captions = Captions(self.parts, self.device)
        self.distiller = None

    def loss(self, batch: dict, micro_step: int) -> torch.Tensor:
        """The denoising loss of the image U-Net with the ControlNet's residuals, over every frame of the batch: the
        latents, noise prior, timesteps and captions drawn as :meth:`Trainer.loss` draws them (one timestep a clip,
        shared by its frames), so a resumed run is exact."""
        c = self.config
        gen = step_generator(c.seed, micro_step, self.rank)
        with torch.no_grad():
            latents, eps = self.latents_and_noise(batch, gen)  # [b c f h w]
            b, f = latents.shape[0], latents.shape[2]
            t = sample_timesteps(b, self.scheduler.config.num_train_timesteps, c.late_timesteps, gen).to(self.device)
            noisy = self.scheduler.add_noise(latents, eps, t)
            cond = self.encode_captions(batch["captions"], f"{c.seed}/{micro_step}/{self.rank}/captions", latents)
            context = cond.context
            target = rearrange(target_for(self.scheduler, latents, eps, t), "b c f h w -> (b f) c h w")
            x = rearrange(noisy, "b c f h w -> (b f) c h w")
            frame_t = repeat(t, "b -> (b f)", f=f)
            frame_context = repeat(context, "b n d -> (b f) n d", f=f)
            maps = rearrange(batch["maps"].to(self.device).float() / 255, "b c f h w -> (b f) c h w")
        with self.accelerator.autocast():
            down, mid = self.model(
                x, frame_t, encoder_hidden_states=frame_context, controlnet_cond=maps, return_dict=False
            )
            pred = self.unet(
                x,
                frame_t,
                encoder_hidden_states=frame_context,
                down_block_additional_residuals=down,
                mid_block_additional_residual=mid,
            ).sample
        return F.mse_loss(pred.float(), target.float())

    def finish(self) -> None:
        """On the main process, save the ControlNet (:meth:`Trainer.finished_model`) as ``OUTPUT/controlnet``."""
        from videodiff.media.atomic import atomic_dir, user_mode

        if (net := self.finished_model()) is None:
            return
        folder = Path(self.run) / CONTROLNET_FOLDER
        with atomic_dir(folder) as tmp:
            net.save_pretrained(tmp, safe_serialization=True)
            user_mode(tmp)
        note_written(self.run, folder)
        notice(f"ControlNet saved in {folder}: videodiff render --controlnet {folder} --control MAPS ...")
