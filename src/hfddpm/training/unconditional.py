"""DDPM training, unconditional or class-conditional: the denoising objective on an image dataset, run by the
engine."""

from __future__ import annotations

from ..run_folder import run_lock
from .config import TrainingConfig
from .engine import Trainer
from .objectives import DenoisingLoss
from .output_folder import check_output_dir
from .setup import create_accelerator, create_training_unet, load_training_images


def train_unconditional(config: TrainingConfig) -> int:
    """Train a `UNet2DModel` on `config`'s images (and labels, with --class_conditional) to predict ε, x_0 or v of
    x_t, and save the EMA weights as an `HFDDPMPipeline` in `config.output_dir`; the exit status (0, or 1 when a push
    failed). The output folder is checked first and locked for the run's life; the data, the network and the
    objective are built before the engine replaces an earlier run."""
    output_dir = check_output_dir(config)
    with run_lock(output_dir):
        accelerator = create_accelerator(config, output_dir)
        images = load_training_images(config, accelerator)
        objective = DenoisingLoss.from_config(config, images.label_names)
        unet = create_training_unet(
            config, images.preprocessing.channels, images.label_names and len(images.label_names)
        )
        status = Trainer(config, accelerator, objective, unet, images).run()
        accelerator.end_training()
    return status
