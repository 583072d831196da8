"""DDPM training, unconditional or class-conditional: the denoising objective on an image dataset, run by the
engine."""

from __future__ import annotations

from .command import run_command
from .config import TrainingConfig, parse_training_config
from .engine import Trainer
from .objectives import DenoisingObjective
from .setup import (
    check_output_dir,
    create_accelerator,
    create_training_unet,
    load_training_images,
    output_dir_lock,
    remove_earlier_run_outputs,
)


def train_unconditional(config: TrainingConfig) -> int:
    """Train a `UNet2DModel` on `config`'s images (and their class labels, with --class_conditional) to predict the
    noise (or x_0, or v) of x_t, and save the EMA weights as an `HFDDPMPipeline` in `config.output_dir`; the exit
    status (0, or 1 when a push failed).

    Every option is checked before the data or the model is loaded: the configuration when it is built, the
    objective here, the output folder first; the output folder is locked for the run's life, so a second run
    into it is refused.
    """
    output_dir = check_output_dir(config)
    objective = DenoisingObjective.from_config(config)
    with output_dir_lock(output_dir):
        accelerator = create_accelerator(config, output_dir)
        remove_earlier_run_outputs(config, accelerator, output_dir)
        images = load_training_images(config, accelerator)
        num_classes = None
        if config.class_conditional:  # the objective again, now with the data's class names
            objective = DenoisingObjective.from_config(config, images.label_names)
            num_classes = len(images.label_names)
        unet = create_training_unet(config, images.preprocessing.channels, num_classes)
        status = Trainer(config, accelerator, objective, unet, images).run()
        accelerator.end_training()
    return status


def train_unconditional_command(argv: list[str] | None = None, description: str | None = None) -> int:
    """`examples/train_unconditional.py`: parse `argv` and train; the exit status (0 done, 1 a fault, 2 bad input,
    128 + N stopped by signal N), with faults and bad input as one line on stderr (`run_command`)."""
    return run_command(lambda: train_unconditional(parse_training_config(argv, description)))
