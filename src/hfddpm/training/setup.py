"""Setting up a run: the output folder, Accelerate, the training images, the UNet, the optimizer and the EMA."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel

from ..image_data import (
    ImagePreprocessing,
    TrainingImages,
    channels_of_mode,
    check_same_colour,
    class_labels,
    first_image_mode,
    load_image_dataset,
    pretensorize,
)
from ..models.unet_presets import check_unet_config, create_unet
from ..schedulers.gaussian_diffusion import LEARNED_VARIANCES
from .config import TrainingConfig, launched_as_main_process
from .tracking import JSONLinesTracker

# Everything a run writes at the top of its output folder, and so all that --overwrite_output_dir may remove.
RUN_OUTPUTS = (
    "checkpoints",
    "samples",
    "logs",
    "unet",
    "scheduler",
    "model_index.json",
    "training_args.json",
    "training_info.json",
    "evaluation.json",
    "README.md",
    "hub-export",
    "distillation.json",
)


# The record every run writes before anything else (`artefacts.record_arguments`): the mark of a folder a run wrote.
RUN_RECORD = "training_args.json"
# Held (flock) by a run's main process for the run's life; the kernel releases it when the process dies, however.
LOCK_FILE = ".hfddpm-run.lock"


def check_output_dir(config: TrainingConfig) -> Path:
    """The output folder, refused when it cannot be created or written, holds files a run would replace but no run
    wrote, or holds an earlier run that the config neither resumes nor overwrites."""
    output_dir = check_output_path(config.output_dir)
    if foreign := foreign_run_outputs(output_dir):
        raise ValueError(
            f"--output_dir {output_dir} holds {', '.join(foreign)}, which a run would replace, but no training run "
            f"wrote it (no {RUN_RECORD}); choose a new or empty --output_dir"
        )
    if holds_earlier_run(output_dir) and config.resume_from_checkpoint is None and not config.overwrite_output_dir:
        raise ValueError(
            f"{output_dir} holds an earlier run; pass --resume_from_checkpoint latest to continue it, "
            "--overwrite_output_dir to replace it, or another --output_dir"
        )
    return output_dir


def check_output_path(path: str | os.PathLike) -> Path:
    """`path` as an output folder that exists or can be created, and can be written: refused in one line otherwise,
    so that a run does not fail at its first save after minutes of work."""
    output_dir = Path(path)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output_dir {output_dir} is a file; choose a folder")
    existing = next(folder for folder in (output_dir, *output_dir.absolute().parents) if folder.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"--output_dir {output_dir} cannot be created: {existing} is a file; choose a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == output_dir else f" cannot be created: {existing}"
        raise ValueError(f"--output_dir {output_dir}{where} is not writable; choose a folder you can write to")
    return output_dir


def written_by_run(output_dir: Path) -> bool:
    """Whether a training run wrote `output_dir`: it holds the run's record, a JSON object naming its output folder."""
    try:
        record = json.loads((output_dir / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, unreadable or not JSON: not a run's record
        return False
    return isinstance(record, dict) and "output_dir" in record


def foreign_run_outputs(output_dir: Path) -> list[str]:
    """The names of `RUN_OUTPUTS` in `output_dir` when no run wrote it: files of the user's that a run would replace
    (a saved pipeline, a README.md, a samples/ folder)."""
    if written_by_run(output_dir):
        return []
    return [name for name in RUN_OUTPUTS if (output_dir / name).exists()]


def holds_earlier_run(output_dir: Path) -> bool:
    """Whether `output_dir` holds a run's checkpoints or saved pipeline."""
    return written_by_run(output_dir) and (
        (output_dir / "checkpoints").is_dir() or (output_dir / "model_index.json").is_file()
    )


def remove_earlier_run_outputs(config: TrainingConfig, accelerator: Accelerator, output_dir: Path) -> None:
    """With --overwrite_output_dir (and no resume), delete what an earlier run wrote in `output_dir` (`RUN_OUTPUTS`,
    nothing else), and only when a run wrote it; the main process deletes, the others wait."""
    if config.overwrite_output_dir and config.resume_from_checkpoint is None and accelerator.is_main_process:
        delete_run_outputs(output_dir)
    accelerator.wait_for_everyone()


def delete_run_outputs(output_dir: Path) -> None:
    """Delete what a run wrote in `output_dir` (`RUN_OUTPUTS`, nothing else), if a run wrote it and holds an earlier
    run; a folder no run wrote loses nothing."""
    if holds_earlier_run(output_dir):
        for part in RUN_OUTPUTS:
            path = output_dir / part
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


@contextlib.contextmanager
def output_dir_lock(output_dir: Path) -> Iterator[None]:
    """Hold `output_dir`'s lock while the block runs, creating the folder; a second run into the same folder is
    refused in one line. Only the main process of a launch locks (the others write where it says).

    The lock is `flock` on `LOCK_FILE`: the kernel drops it when the holder dies, even by SIGKILL, so no lock is
    ever left stuck; the file may stay. Folders created here that hold nothing but the lock file at the end (the run
    was refused before it wrote anything) are removed again. Where `fcntl` is missing (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is None or not launched_as_main_process():
        yield
        return
    created = [folder for folder in (output_dir, *output_dir.absolute().parents) if not folder.exists()]
    descriptor = lock_file(fcntl, output_dir)
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            if created and [path.name for path in output_dir.iterdir()] == [LOCK_FILE]:
                (output_dir / LOCK_FILE).unlink()
                remove_empty_folders(created)
    finally:
        os.close(descriptor)


def lock_file(fcntl: Any, output_dir: Path) -> int:
    """Open and `flock` `output_dir`'s `LOCK_FILE` (creating both), or refuse in one line naming the holder. A lock
    taken on a file that a refused run removed meanwhile (its inode no longer the path's) is taken again on the new
    file, so two runs never both hold "the" lock."""
    while True:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            problem = f"--output_dir {output_dir} cannot be written ({error.strerror})"
            raise ValueError(f"{problem}; choose another") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise ValueError(
                f"--output_dir {output_dir} is in use by another training run (process {holder}); wait for it to "
                "end, or choose another --output_dir"
            ) from None
        try:
            if os.stat(output_dir / LOCK_FILE).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) while they are empty; one that is not (another run wrote there) stays, and so
    do its parents."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def create_accelerator(config: TrainingConfig, output_dir: Path) -> Accelerator:
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
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(config.cpu_threads or max(1, cores // local_processes))
    set_seed(config.seed)
    return accelerator


def load_training_images(config: TrainingConfig, accelerator: Accelerator) -> TrainingImages:
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
    with accelerator.main_process_first():
        pixels = pretensorize(dataset, image_column, preprocessing, config.preprocessing_num_workers)
    if config.channels is None:
        check_same_colour(pixels)
    return TrainingImages(pixels, preprocessing, seed=config.seed, labels=labels, label_names=label_names)


def create_training_unet(config: TrainingConfig, channels: int, num_classes: int | None = None) -> UNet2DModel:
    """The UNet to train: a preset or `--model_config`, with the data's channels (doubled for a learned variance)
    and resolution, and for `num_classes` classes a class embedding with one more entry, "no label"
    (`hfddpm.conditioning`)."""
    learned = config.reverse_variance in LEARNED_VARIANCES
    classes = {"num_class_embeds": num_classes + 1, "class_embed_type": None} if num_classes else {}
    if not config.model_config:
        unet = create_unet(
            config.model_preset,
            learned_variance=learned,
            in_channels=channels,
            sample_size=config.resolution,
            **classes,
        )
    else:
        try:
            unet_config = json.loads(Path(config.model_config).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"--model_config {config.model_config} does not exist; fix the path") from None
        except json.JSONDecodeError as error:
            raise ValueError(
                f"--model_config {config.model_config} is not valid JSON ({error}); fix the file"
            ) from None
        if not isinstance(unet_config, dict):
            raise ValueError(f"--model_config {config.model_config} must hold a JSON object of UNet2DModel options")
        if not num_classes and (unet_config.get("num_class_embeds") or unet_config.get("class_embed_type")):
            raise ValueError(
                f"--model_config {config.model_config} has a class embedding; pass --class_conditional to train it "
                "on labels, or remove num_class_embeds and class_embed_type from it"
            )
        unet_config.update(
            in_channels=channels,
            out_channels=channels * (2 if learned else 1),
            sample_size=config.resolution,
            **classes,
        )
        # The keys it leaves out take diffusers' defaults.
        unet = UNet2DModel.from_config(check_unet_config(unet_config, f"--model_config {config.model_config}", ()))
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


def create_optimizer(config: TrainingConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where PyTorch has one (CPU and CUDA) instead of a loop over parameters."""
    return torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        fused=device.type in ("cpu", "cuda"),
    )


def create_ema(config: TrainingConfig, model: torch.nn.Module) -> EMAModel | None:
    """diffusers' `EMAModel` of the weights with its warm-up, decay min(1 − (1 + step/γ)^−p, max decay), or None."""
    if not config.use_ema:
        return None
    return EMAModel(
        model.parameters(),
        decay=config.ema_max_decay,
        use_ema_warmup=True,
        inv_gamma=config.ema_inv_gamma,
        power=config.ema_power,
        foreach=True,
    )
