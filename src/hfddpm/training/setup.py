"""Setting up a run: Accelerate, the training images and the UNet."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import UNet2DModel

from ..arguments import check_fits_in_memory
from ..image_data import (
    DECODE_BATCH,
    ImagePreprocessing,
    TrainingImages,
    channels_of_mode,
    check_same_colour,
    class_labels,
    first_image_mode,
    load_image_dataset,
    pretensorize,
)
from ..models.fourier_features import FourierFeaturesUNet
from ..models.unet_presets import check_sample_size, create_unet
from ..schedulers.gaussian_diffusion import LEARNED_VARIANCES
from .config import RunConfig, TrainingConfig
from .tracking import JSONLinesTracker


def create_accelerator(config: RunConfig, output_dir: Path) -> Accelerator:
    """Accelerate with the run's accumulation, precision and trackers (JSON lines always, TensorBoard if asked); sets
    the CPU threads and seeds every generator."""
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=[JSONLinesTracker("train", output_dir / "logs")]
        + (["tensorboard"] if config.report_to == "tensorboard" else []),
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if accelerator.mixed_precision == "fp16" and accelerator.scaler is None:
        raise ValueError(
            f"--mixed_precision fp16 needs a GPU (Accelerate has no fp16 training on {accelerator.device.type}); "
            "use --mixed_precision bf16 or no"
        )
    if accelerator.device.type == "cpu":
        torch.set_num_threads(config.cpu_threads)
    set_seed(config.seed)
    return accelerator


def load_training_images(config: RunConfig, accelerator: Accelerator) -> TrainingImages:
    """The training images, decoded and resized once (by the main process first, so the others reuse its cache),
    then cropped and flipped per item; with their class labels for class-conditional training."""
    dataset, image_column = load_image_dataset(
        config.dataset_name,
        config.dataset_config_name,
        config.train_data_dir,
        config.split,
        config.image_column,
        config.cache_dir,
    )
    labels, label_names = class_labels(dataset, config.label_column) if config.class_conditional else (None, None)
    channels = config.channels or channels_of_mode(first_image_mode(dataset, image_column))
    preprocessing = ImagePreprocessing(config.resolution, channels, not config.random_crop, config.random_flip)
    decoded = min(len(dataset), DECODE_BATCH) * channels * config.resolution**2 * 2  # uint8 arrays and their bytes
    check_fits_in_memory(decoded, f"--resolution {config.resolution}: decoding {DECODE_BATCH} images at a time")
    with accelerator.main_process_first():
        pixels = pretensorize(dataset, image_column, preprocessing, config.preprocessing_num_workers)
    if config.channels is None:
        check_same_colour(pixels)
    return TrainingImages(pixels, preprocessing, seed=config.seed, labels=labels, label_names=label_names)


def create_training_unet(
    config: TrainingConfig, channels: int, num_classes: int | None = None, sample_size: int | None = None
) -> UNet2DModel | FourierFeaturesUNet:
    """The UNet to train: a preset or `--model_config`, with the data's channels (doubled for a learned variance)
    and size (`sample_size`, default the resolution), and for `num_classes` classes a class embedding with one more
    entry, "no label" (`hfddpm.conditioning`); with --fourier_features, inside a `FourierFeaturesUNet`."""
    learned = config.reverse_variance in LEARNED_VARIANCES
    fixed = {"in_channels": channels, "sample_size": sample_size or config.resolution}
    if num_classes:
        fixed.update(num_class_embeds=num_classes + 1, class_embed_type=None)
    if config.model_config:
        unet = unet_from_config_file(config.model_config, {**fixed, "out_channels": channels * (2 if learned else 1)})
    else:
        unet = create_unet(config.model_preset, learned_variance=learned, **fixed)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return FourierFeaturesUNet.around(unet) if config.fourier_features else unet


def unet_from_config_file(path: str, fixed: dict) -> UNet2DModel:
    """The UNet2DModel of the JSON options in `path` (keys left out take diffusers' defaults) with the `fixed` ones
    (the data's channels and size, the class embedding); one line naming the file when it is missing, not JSON, or no
    UNet2DModel, or when it has a class embedding and the run is unconditional."""
    try:
        options = json.loads(Path(path).read_text())
        if not isinstance(options, dict):
            raise ValueError(f"it holds a JSON {type(options).__name__}, not an object")
        if "num_class_embeds" not in fixed and (options.get("num_class_embeds") or options.get("class_embed_type")):
            raise ValueError("it has a class embedding: pass --class_conditional, or remove num_class_embeds")
        unet = UNet2DModel.from_config({**options, **fixed})
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"--model_config {path} does not make a UNet2DModel ({error}); fix the file") from None
    check_sample_size(unet.config, f"--model_config {path}")
    return unet
