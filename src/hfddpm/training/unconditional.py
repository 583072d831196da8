"""DDPM training, unconditional or class-conditional, in pixel space or an autoencoder's latent space: the denoising
objective on an image dataset, run by the engine."""

from __future__ import annotations

from ..pipelines.loading import load_autoencoder
from ..run_folder import run_lock
from .config import TrainingConfig
from .continuous import ContinuousTimeLoss, ContinuousTimeModel
from .engine import Trainer
from .latent_data import TrainingLatents
from .objectives import DenoisingLoss
from .output_folder import check_output_dir
from .setup import create_accelerator, create_training_unet, load_training_images


def train_unconditional(config: TrainingConfig) -> int:
    """Train a `UNet2DModel` on `config`'s images (and labels, with --class_conditional) to predict ε, x_0 or v of
    x_t, and save the EMA weights as an `HFDDPMPipeline` in `config.output_dir`; the exit status (0, or 1 when a push
    failed). With --vae the data are the images' latents (`TrainingLatents`) and the pipeline holds the autoencoder.
    The output folder is checked first and locked for the run's life; the data, the network and the objective are
    built before the engine replaces an earlier run."""
    output_dir = check_output_dir(config)
    with run_lock(output_dir):
        accelerator = create_accelerator(config, output_dir)
        vae = load_autoencoder(config.vae) if config.vae else None
        data = load_training_images(config, accelerator)
        channels, size = data.preprocessing.channels, config.resolution
        if vae is not None:
            if vae.config.in_channels != channels:
                raise ValueError(
                    f"--vae {config.vae} encodes {vae.config.in_channels}-channel images, and the data have "
                    f"{channels}: pass --channels {vae.config.in_channels} or another autoencoder"
                )
            data = TrainingLatents.encode(data, vae, accelerator.device)
            channels, size = data.shape[0], data.shape[-1]
        unet = create_training_unet(config, channels, data.label_names and len(data.label_names), size)
        if config.continuous_time is None:
            objective = DenoisingLoss.from_config(config, data.label_names, vae)
        else:
            objective = ContinuousTimeLoss.from_config(config, data.label_names)
            unet = ContinuousTimeModel.of(unet, config.continuous_time)
        status = Trainer(config, accelerator, objective, unet, data).run()
        accelerator.end_training()
    return status
