"""Train an unconditional DDPM with Accelerate and save it as an HFDDPMPipeline.

    accelerate launch examples/train_unconditional.py            # built-in digits, offline, ~10 min on 2 CPU cores
    accelerate launch examples/train_unconditional.py --dataset_name ylecun/mnist --resolution 28
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 examples/train_unconditional.py   # two processes on CPU

The output folder holds the pipeline (EMA weights; `HFDDPMPipeline.from_pretrained(output_dir)`), `samples/`
(a grid every --save_images_steps), `checkpoints/` (for --resume_from_checkpoint) and `logs/` (TensorBoard and
`train.jsonl`).

Faults (docs/reliability.md): SIGTERM or SIGINT saves a checkpoint and exits with 128 + the signal number; a kill
or a full disk leaves every checkpoint complete or absent; a NaN or Inf loss stops the run (or skips the update,
--on_nonfinite_loss skip) without touching the weights. Errors are one line: "error: <problem>; <fix>".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import sys
import time
from pathlib import Path

import accelerate
import diffusers
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

import hfddpm
from hfddpm import UNET_PRESETS, DDIMScheduler, DDPMScheduler, HFDDPMPipeline, create_unet
from hfddpm.evaluation import METRICS, EvaluationReport, evaluate_pipeline
from hfddpm.hub import HubError, check_repo_id, export_for_hub, push_to_hub, resolve_token
from hfddpm.model_cards import model_card
from hfddpm.models.unet_presets import check_sample_size
from hfddpm.training import durable
from hfddpm.training.checkpoints import CheckpointError, CheckpointManager
from hfddpm.training.data import (
    DIGITS,
    ImagePreprocessing,
    TrainingImages,
    channels_of_mode,
    check_same_colour,
    first_image_mode,
    load_image_dataset,
    pretensorize,
)
from hfddpm.training.guards import NonFiniteLossError, RunInterrupted, StopRequest, check_step
from hfddpm.training.loop import TrainingRandomness, averaged_copy, replica_checksum, training_step
from hfddpm.training.losses import DiffusionLoss, LossType
from hfddpm.training.timestep_sampling import TimestepSampling, create_timestep_sampler
from hfddpm.training.tracking import JSONLinesTracker
from hfddpm.visualize import sample_grid

DEFAULT_MAX_TRAIN_STEPS = 2000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", help="Hub dataset or save_to_disk folder (default: the built-in digits)")
    data.add_argument("--dataset_config_name", help="configuration of the Hub dataset")
    data.add_argument("--train_data_dir", help="folder of images, read with datasets' imagefolder")
    data.add_argument("--split", default="train", help="dataset split to train on")
    data.add_argument("--image_column", help="column holding the images (default: the first image column)")
    data.add_argument("--cache_dir", help="where datasets caches downloads and preprocessed images")
    data.add_argument("--resolution", type=int, default=8, help="square training resolution in pixels")
    data.add_argument("--channels", type=int, choices=(1, 3), help="1 grayscale, 3 RGB (default: the first image's)")
    data.add_argument("--random_crop", action="store_true", help="crop at random instead of at the centre")
    data.add_argument("--random_flip", action="store_true", help="flip horizontally with probability 1/2")
    data.add_argument("--dataloader_num_workers", type=int, default=0)
    data.add_argument("--preprocessing_num_workers", type=int, help="processes decoding images once, before training")

    model = parser.add_argument_group("model and objective")
    model.add_argument("--model_preset", default="digits", choices=sorted(UNET_PRESETS), help="UNet preset")
    model.add_argument("--model_config", help="UNet2DModel config.json to use instead of a preset")
    model.add_argument("--prediction_type", default="epsilon", choices=("epsilon", "sample", "v_prediction"))
    model.add_argument("--beta_schedule", default="linear", choices=("linear", "cosine"))
    model.add_argument("--num_train_timesteps", type=int, default=1000)
    model.add_argument(
        "--variance_type",
        default="fixed_small",
        choices=("fixed_small", "fixed_large", "learned", "learned_range"),
        help="reverse variance; the learned ones train with the hybrid loss L_simple + λ L_vlb",
    )
    model.add_argument(
        "--loss_type",
        choices=[choice.value for choice in LossType],
        help="simple: L_simple; hybrid: L_simple + λ L_vlb (learned variance); vlb: the bound alone "
        "(default: hybrid for a learned variance, simple otherwise)",
    )
    model.add_argument("--vlb_weight", type=float, default=1e-3, help="λ of the hybrid loss (learned variance)")
    model.add_argument(
        "--timestep_sampling",
        default="uniform",
        choices=[choice.value for choice in TimestepSampling],
        help="how t is drawn; loss_second_moment is Improved DDPM's importance sampling, for --loss_type vlb",
    )
    model.add_argument("--snr_gamma", type=float, help="min-SNR-γ loss weighting (Hang et al. 2023 use 5)")

    train = parser.add_argument_group("training")
    train.add_argument("--output_dir", default="outputs/ddpm-digits")
    train.add_argument("--overwrite_output_dir", action="store_true", help="delete an earlier run's output first")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--train_batch_size", type=int, default=64, help="per process")
    train.add_argument("--num_epochs", type=int, help="epochs to train (or set --max_train_steps)")
    train.add_argument("--max_train_steps", type=int, help=f"optimizer steps (default {DEFAULT_MAX_TRAIN_STEPS})")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--gradient_checkpointing", action="store_true")
    train.add_argument("--learning_rate", type=float, default=2e-3)
    train.add_argument(
        "--lr_scheduler", default="cosine", choices=("constant", "constant_with_warmup", "linear", "cosine")
    )
    train.add_argument("--lr_warmup_steps", type=int, default=100, help="in optimizer steps")
    train.add_argument("--adam_beta1", type=float, default=0.9)
    train.add_argument("--adam_beta2", type=float, default=0.999)
    train.add_argument("--adam_weight_decay", type=float, default=0.0)
    train.add_argument("--adam_epsilon", type=float, default=1e-8)
    train.add_argument("--max_grad_norm", type=float, default=1.0)
    train.add_argument(
        "--on_nonfinite_loss",
        default="stop",
        choices=("stop", "skip"),
        help="a NaN or Inf loss (or gradient) stops the run, keeping the last checkpoint, or skips that update",
    )
    train.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True, help="save EMA weights")
    train.add_argument("--ema_max_decay", type=float, default=0.9999)
    train.add_argument("--ema_inv_gamma", type=float, default=1.0)
    train.add_argument("--ema_power", type=float, default=0.75)
    train.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), help="default: accelerate's config")
    train.add_argument(
        "--cpu_threads",
        type=int,
        help="PyTorch threads per process when training on CPU (default: this machine's cores divided among its "
        "processes; `accelerate launch` alone would leave one)",
    )

    output = parser.add_argument_group("checkpoints, samples and logs")
    output.add_argument("--checkpointing_steps", type=int, default=500)
    output.add_argument("--checkpoints_total_limit", type=int, default=3)
    output.add_argument(
        "--resume_from_checkpoint",
        help='"latest" (the newest complete checkpoint; a fresh start when there is none yet) or a checkpoint folder',
    )
    output.add_argument("--save_images_steps", type=int, default=500, help="sample grid every N steps")
    output.add_argument("--save_model_steps", type=int, help="save the pipeline every N steps (always at the end)")
    output.add_argument("--num_sample_images", type=int, default=64)
    output.add_argument(
        "--inference_scheduler", default="ddim", choices=("ddpm", "ddim"), help="saved with the pipeline"
    )
    output.add_argument("--num_inference_steps", type=int, default=50, help="steps of the sample grids")
    output.add_argument("--logging_steps", type=int, default=10)
    output.add_argument("--report_to", default="tensorboard", choices=("tensorboard", "none"), help="besides jsonl")
    output.add_argument(
        "--eval_every", type=int, help="every N steps and at the end, measure --eval_metrics and log them"
    )
    output.add_argument(
        "--eval_metrics",
        nargs="+",
        choices=list(METRICS),
        help="default: fd_digits and digits_scores (offline) for the built-in digits; fid and fd_dinov2 need weights",
    )
    output.add_argument("--eval_num_samples", type=int, default=256, help="samples drawn for each evaluation")
    hub = parser.add_argument_group("Hugging Face Hub")
    hub.add_argument("--push_to_hub", action="store_true", help="publish the final pipeline and its model card")
    hub.add_argument("--hub_model_id", help="'user/name' of the repository (default: the output folder's name)")
    hub.add_argument("--hub_token", help="token to push with (default: $HF_TOKEN or the saved login)")
    hub.add_argument("--hub_private_repo", action="store_true", help="create the repository private")
    hub.add_argument("--hub_revision", help="branch to push to (created if needed; default main)")
    hub.add_argument(
        "--hub_push_intermediate", action="store_true", help="push every --save_model_steps save, in the background"
    )
    hub.add_argument(
        "--hub_include_training_state", action="store_true", help="also push checkpoints/ (optimizer states)"
    )
    hub.add_argument(
        "--hub_dry_run", action="store_true", help="write the folder that would be pushed to output_dir/hub-export"
    )
    args = parser.parse_args(argv)

    if args.num_epochs is None and args.max_train_steps is None:
        args.max_train_steps = DEFAULT_MAX_TRAIN_STEPS
    positive = ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "save_images_steps")
    positive += ("logging_steps", "num_sample_images", "num_inference_steps", "num_epochs", "max_train_steps")
    positive += ("cpu_threads", "eval_every", "eval_num_samples")
    for name in positive:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")
    if args.hub_push_intermediate and not (args.push_to_hub and args.save_model_steps):
        raise ValueError("--hub_push_intermediate needs --push_to_hub and --save_model_steps")
    if args.push_to_hub or args.hub_dry_run:
        args.hub_model_id = args.hub_model_id or Path(args.output_dir).resolve().name
        check_repo_id(args.hub_model_id)
        if args.push_to_hub and not args.hub_dry_run:
            resolve_token(args.hub_token, args.output_dir)  # fail now, not after hours of training
    if args.eval_every and not args.eval_metrics:
        if dataset_source(args) != DIGITS:
            raise ValueError(
                "--eval_every needs --eval_metrics for datasets other than the built-in digits "
                "(fid, fd_dinov2 or bits_per_dim)"
            )
        args.eval_metrics = ["fd_digits", "digits_scores"]
    return args


def recorded_args(args: argparse.Namespace) -> dict:
    """The arguments as the run records them (training_args.json, trackers, model card): never the token."""
    return {key: value for key, value in vars(args).items() if key != "hub_token"}


def tracker_config(args: argparse.Namespace) -> dict:
    """The arguments as trackers take hyper-parameters: scalars only (TensorBoard's hparams refuses lists)."""
    return {
        key: ", ".join(map(str, value)) if isinstance(value, list) else value
        for key, value in recorded_args(args).items()
        if value is not None
    }


def dataset_source(args: argparse.Namespace) -> str:
    """The training data as `hfddpm.evaluate` names it: an image folder, a dataset name, or the built-in digits."""
    return args.train_data_dir or args.dataset_name or DIGITS


def prepare_output_dir(args: argparse.Namespace) -> Path:
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output_dir {output_dir} is a file; choose a folder")
    earlier_run = (output_dir / "checkpoints").is_dir() or (output_dir / "model_index.json").is_file()
    if earlier_run and args.resume_from_checkpoint is None:
        if not args.overwrite_output_dir:
            raise ValueError(
                f"{output_dir} holds an earlier run; pass --resume_from_checkpoint latest to continue it, "
                "--overwrite_output_dir to replace it, or another --output_dir"
            )
    return output_dir


def build_unet(args: argparse.Namespace, channels: int) -> UNet2DModel:
    learned = args.variance_type in ("learned", "learned_range")
    if args.model_config:
        try:
            config = json.loads(Path(args.model_config).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"--model_config {args.model_config} does not exist; fix the path") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"--model_config {args.model_config} is not valid JSON ({error}); fix the file") from None
        config.update(in_channels=channels, out_channels=channels * (2 if learned else 1), sample_size=args.resolution)
        check_sample_size(config, f"--model_config {args.model_config}")
        return UNet2DModel.from_config(config)
    return create_unet(args.model_preset, learned_variance=learned, in_channels=channels, sample_size=args.resolution)


def inference_pipeline(args, model, ema, training_scheduler, accelerator) -> HFDDPMPipeline:
    """The pipeline to sample and save: EMA weights and the chosen inference scheduler."""
    unet = accelerator.unwrap_model(model)
    if ema is not None:
        unet = averaged_copy(unet, ema)
    scheduler_class = DDIMScheduler if args.inference_scheduler == "ddim" else DDPMScheduler
    scheduler = scheduler_class.from_config(training_scheduler.config, timestep_spacing="trailing")
    pipeline = HFDDPMPipeline(unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def save_sample_grid(args, pipeline, path: Path, accelerator, step: int) -> None:
    images = pipeline(
        batch_size=args.num_sample_images,
        generator=torch.Generator().manual_seed(args.seed),
        num_inference_steps=args.num_inference_steps,
    ).images
    grid = sample_grid(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    with durable.replacing(path) as temporary:
        grid.save(temporary, format="PNG")
    if args.report_to == "tensorboard":
        array = np.asarray(grid.convert("RGB"))
        accelerator.get_tracker("tensorboard").writer.add_image("samples", array, step, dataformats="HWC")


def evaluate_during_training(args, pipeline, accelerator) -> EvaluationReport:
    """--eval_metrics of the current EMA pipeline against the training split (bits/dim: 100 terms per image)."""
    report = evaluate_pipeline(
        pipeline,
        dataset_source(args),
        args.eval_metrics,
        split=args.split,
        reference_split=args.split,
        image_column=args.image_column,
        num_timesteps=100,
        num_samples=args.eval_num_samples,
        num_inference_steps=args.num_inference_steps,
        device=accelerator.device,
        seed=args.seed,
        progress_bar=False,
    )
    return report


def save_pipeline(pipeline: HFDDPMPipeline, output_dir: Path) -> None:
    """Save to a staging folder, then move its files into place: a kill leaves a loadable pipeline (each file the
    old or the new one, which share their configuration within a run), a failed write the earlier pipeline."""
    staging = output_dir / ".pipeline.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        pipeline.save_pretrained(staging)
        durable.fsync_tree(staging)
    except (OSError, RuntimeError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        problem = "no space left" if durable.is_disk_full(error) else "could not write"
        raise CheckpointError(
            f"{problem} to save the pipeline in {output_dir} ({str(error).splitlines()[0]}); the earlier files are "
            "kept: free disk space, then resume with --resume_from_checkpoint latest"
        ) from error
    # File by file, each replaced atomically, model_index.json last: the folder always holds a whole pipeline.
    files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda path: path.name == "model_index.json")
    for file in files:
        target = output_dir / file.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(file, target)
    shutil.rmtree(staging)


def training_info(accelerator, unet, wall_time: float, global_step: int, final_loss: float | None) -> dict:
    """What the model card reports of the run besides its arguments: hardware, time, versions, final loss."""
    device = accelerator.device
    if device.type == "cuda":
        hardware = f"{accelerator.num_processes} × {torch.cuda.get_device_name(device)}"
    else:
        hardware = (
            f"CPU ({platform.machine()}, {torch.get_num_threads()} threads × {accelerator.num_processes} process(es))"
        )
    return {
        "device": hardware,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "wall_time_seconds": round(wall_time, 1),
        "global_step": global_step,
        "final_loss": final_loss,
        "parameters": f"{sum(p.numel() for p in accelerator.unwrap_model(unet).parameters()) / 1e6:.2f}M",
        "versions": {
            "hfddpm": hfddpm.__version__,
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
            "accelerate": accelerate.__version__,
        },
    }


def publish(args: argparse.Namespace, output_dir: Path, intermediate_pushes: list) -> int:
    """Push (or, with --hub_dry_run, export) the finished run; 1 when a push failed, after saying why."""
    status = 0
    for future in intermediate_pushes:
        try:
            future.result()
        except Exception as error:  # a lost intermediate push does not fail the run
            print(f"warning: an intermediate push failed: {str(error).splitlines()[0]}", file=sys.stderr)
    try:
        if args.hub_dry_run:
            export = output_dir / "hub-export"
            files = export_for_hub(output_dir, export, args.hub_model_id, args.hub_include_training_state)
            print(f"--hub_dry_run: the {len(files)} files a push to {args.hub_model_id} uploads are in {export}")
        elif args.push_to_hub:
            commit = push_to_hub(
                output_dir,
                args.hub_model_id,
                token=args.hub_token,
                private=args.hub_private_repo,
                revision=args.hub_revision,
                commit_message="Final pipeline",
                include_training_state=args.hub_include_training_state,
            )
            print(f"Pushed {output_dir} to {args.hub_model_id}: {commit.commit_url}")
    except HubError as error:
        print(f"error: {error}", file=sys.stderr)
        status = 1
    return status


def main(args: argparse.Namespace) -> int:
    run_start = time.perf_counter()
    output_dir = prepare_output_dir(args)
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule,
        prediction_type=args.prediction_type,
        reverse_variance=args.variance_type,
    )
    try:
        loss_fn = DiffusionLoss(noise_scheduler, args.loss_type, snr_gamma=args.snr_gamma, vlb_weight=args.vlb_weight)
    except ValueError as error:  # the loss's reverse_variance is this script's --variance_type
        raise ValueError(str(error).replace("reverse_variance", "--variance_type")) from None
    timestep_sampler = create_timestep_sampler(args.timestep_sampling, args.num_train_timesteps)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=[JSONLinesTracker("train", output_dir / "logs")]
        + (["tensorboard"] if args.report_to == "tensorboard" else []),
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    if accelerator.mixed_precision == "fp16" and accelerator.scaler is None:
        raise ValueError(
            f"--mixed_precision fp16 needs a GPU (Accelerate has no fp16 training on {accelerator.device.type}); "
            "use --mixed_precision bf16 or no"
        )
    if accelerator.is_main_process and args.overwrite_output_dir and args.resume_from_checkpoint is None:
        for part in ("checkpoints", "samples", "logs", "unet", "scheduler", "model_index.json"):
            path = output_dir / part
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    if accelerator.device.type == "cpu":
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(args.cpu_threads or max(1, cores // local_processes))
    set_seed(args.seed)

    # Data: decoded and resized once, by the main process first so the others reuse its cache.
    dataset, image_column = load_image_dataset(
        args.dataset_name, args.dataset_config_name, args.train_data_dir, args.split, args.image_column, args.cache_dir
    )
    channels = args.channels or channels_of_mode(first_image_mode(dataset, image_column))
    preprocessing = ImagePreprocessing(args.resolution, channels, not args.random_crop, args.random_flip)
    with accelerator.main_process_first():
        pixels = pretensorize(dataset, image_column, preprocessing, args.preprocessing_num_workers)
    if args.channels is None:
        check_same_colour(pixels)
    images = TrainingImages(pixels, preprocessing, seed=args.seed)
    dataloader = torch.utils.data.DataLoader(
        images, batch_size=args.train_batch_size, shuffle=True, num_workers=args.dataloader_num_workers
    )

    # Model and optimizer.
    unet = build_unet(args, channels)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
        fused=accelerator.device.type in ("cpu", "cuda"),  # one kernel instead of a loop over parameters
    )
    ema = None
    if args.use_ema:
        ema = EMAModel(
            unet.parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            foreach=True,
        )
    unet, optimizer, dataloader = accelerator.prepare(unet, optimizer, dataloader)
    if ema is not None:
        ema.to(accelerator.device)

    # The schedule counts optimizer steps, however many batches each accumulates.
    steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=max_train_steps
    )
    randomness = TrainingRandomness(args.seed, accelerator.process_index, accelerator.device)
    checkpoints = CheckpointManager(output_dir / "checkpoints", args.checkpoints_total_limit)
    saved_objects = {"lr_scheduler": lr_scheduler, **({"ema": ema} if ema is not None else {})}
    learns_timesteps = args.timestep_sampling != TimestepSampling.UNIFORM
    if learns_timesteps:
        saved_objects["timestep_sampler"] = timestep_sampler

    global_step, first_epoch, batches_done = 0, 0, 0
    resume_from = args.resume_from_checkpoint
    if resume_from == "latest" and checkpoints.latest() is None:
        if (output_dir / "model_index.json").is_file():
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: {output_dir} holds a finished run without checkpoints; "
                "pass --overwrite_output_dir to train it again, or another --output_dir"
            )
        accelerator.print(f"No checkpoint in {checkpoints.folder} yet: starting a new run")
        resume_from = None
    if resume_from:
        path = checkpoints.resolve(resume_from)
        state = checkpoints.load(accelerator, path, saved_objects, randomness)
        global_step, first_epoch, batches_done = state["global_step"], state["epoch"], state["batches_in_epoch"]
        accelerator.print(f"Resuming from {path} at step {global_step}")

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        durable.write_text(output_dir / "training_args.json", json.dumps(recorded_args(args), indent=2))
    accelerator.init_trackers("train", config=tracker_config(args))
    accelerator.print(
        f"{len(images)} images, {accelerator.num_processes} process(es) × batch {args.train_batch_size} × "
        f"{args.gradient_accumulation_steps} accumulation; {max_train_steps} steps"
    )

    progress = tqdm(total=max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process)
    unet.train()
    running_loss, running_count, start = 0.0, 0, time.perf_counter()
    skipped_steps, nonfinite_steps, last_checkpoint_step = 0, 0, global_step
    step_loss = torch.zeros((), device=accelerator.device)  # this optimizer step's loss, over accumulated batches
    loss, intermediate_pushes = None, []
    try:
        with StopRequest() as stop_request:
            for epoch in range(first_epoch, num_epochs):
                dataloader.set_epoch(epoch)
                images.set_epoch(epoch)
                batches = accelerator.skip_first_batches(dataloader, batches_done) if batches_done else dataloader
                for batch in batches:
                    batches_done += 1
                    with accelerator.accumulate(unet):
                        output = training_step(unet, noise_scheduler, loss_fn, batch, randomness, timestep_sampler)
                        step_loss += output.loss.detach()
                        accelerator.backward(output.loss)
                        if accelerator.sync_gradients:
                            grad_norm = accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                            check = check_step(accelerator, step_loss, grad_norm, stop_request)
                            if check.fault is None:
                                optimizer.step()
                            elif accelerator.scaler is not None:
                                accelerator.scaler.update()  # closes clip_grad_norm_'s unscale_ without a step
                            optimizer.zero_grad(set_to_none=True)
                    if learns_timesteps:  # every replica learns from every process's losses, so all draw alike
                        timestep_sampler.update(
                            accelerator.gather(output.timesteps), accelerator.gather(output.per_sample)
                        )
                    running_loss += output.loss.detach()
                    running_count += 1
                    if not accelerator.sync_gradients:
                        continue
                    step_loss.zero_()

                    if check.fault is not None:
                        nonfinite_steps += 1
                        message = f"step {global_step + 1}: {check.fault}"
                        if args.on_nonfinite_loss == "stop":
                            kept = checkpoints.latest()
                            raise NonFiniteLossError(
                                f"{message}; the run stopped without updating the weights, and "
                                f"{kept.name if kept else 'no checkpoint yet'} is its last checkpoint: lower "
                                "--learning_rate or --max_grad_norm, or pass --on_nonfinite_loss skip, then resume "
                                "with --resume_from_checkpoint latest"
                            )
                        if accelerator.is_main_process:
                            warning = f"warning: {message}; its update was skipped (--on_nonfinite_loss skip)"
                            progress.write(warning, file=sys.stderr)  # on a line of its own, not after the bar
                    elif accelerator.optimizer_step_was_skipped:
                        skipped_steps += 1  # fp16 overflow: the grad scaler skipped this update
                    else:
                        lr_scheduler.step()
                        if ema is not None:
                            ema.step(unet.parameters())
                    global_step += 1
                    progress.update(1)

                    if global_step % args.logging_steps == 0 or global_step == max_train_steps:
                        loss = accelerator.gather(running_loss.reshape(1) / running_count).mean().item()
                        logs = {"loss": loss, "lr": lr_scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
                        if output.vlb is not None:
                            logs["vlb_bits_per_dim"] = accelerator.gather(output.vlb).mean().item()
                        if ema is not None:
                            logs["ema_decay"] = ema.cur_decay_value or 0.0
                        logs["skipped_steps"] = skipped_steps
                        logs["nonfinite_steps"] = nonfinite_steps
                        if learns_timesteps:
                            logs["timestep_sampler_warm"] = int(timestep_sampler.warmed_up())
                        images_seen = running_count * args.train_batch_size * accelerator.num_processes
                        logs["images_per_second"] = images_seen / (time.perf_counter() - start)
                        accelerator.log(logs, step=global_step)
                        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{logs['lr']:.2e}")
                        running_loss, running_count, start = 0.0, 0, time.perf_counter()

                    position = data_position(epoch, batches_done, len(dataloader))
                    if global_step % args.checkpointing_steps == 0 and global_step < max_train_steps:
                        checkpoints.save(accelerator, global_step, position, saved_objects, randomness)
                        last_checkpoint_step = global_step
                    if accelerator.is_main_process and global_step % args.save_images_steps == 0:
                        pipeline = inference_pipeline(args, unet, ema, noise_scheduler, accelerator)
                        path = output_dir / "samples" / f"step_{global_step:07d}.png"
                        save_sample_grid(args, pipeline, path, accelerator, global_step)
                    if accelerator.is_main_process and args.eval_every and global_step % args.eval_every == 0:
                        report = evaluate_during_training(
                            args, inference_pipeline(args, unet, ema, noise_scheduler, accelerator), accelerator
                        )
                        metrics = {f"eval/{name}": value for name, value in report.metrics.items()}
                        accelerator.log(metrics, step=global_step)
                    save_model = args.save_model_steps and global_step % args.save_model_steps == 0
                    if accelerator.is_main_process and save_model:
                        save_pipeline(inference_pipeline(args, unet, ema, noise_scheduler, accelerator), output_dir)
                        if args.hub_push_intermediate:
                            intermediate_pushes.append(
                                push_to_hub(
                                    output_dir,
                                    args.hub_model_id,
                                    token=args.hub_token,
                                    private=args.hub_private_repo,
                                    revision=args.hub_revision,
                                    commit_message=f"Pipeline at step {global_step}",
                                    run_as_future=True,
                                )
                            )
                    if global_step >= max_train_steps:
                        break
                    if check.stop_signal is not None:
                        if last_checkpoint_step != global_step:
                            checkpoints.save(accelerator, global_step, position, saved_objects, randomness)
                        raise RunInterrupted(
                            f"{signal.Signals(check.stop_signal).name}: stopped at step {global_step} and saved "
                            f"checkpoint-{global_step}; continue with --resume_from_checkpoint latest",
                            check.stop_signal,
                        )
                batches_done = 0
                if global_step >= max_train_steps:
                    break
        progress.close()

        # Data-parallel replicas must hold the same weights: compare a float64 checksum across processes.
        checksums = accelerator.gather(replica_checksum(unet).reshape(1).to(accelerator.device))
        if (checksums != checksums[0]).any():
            raise RuntimeError(f"data-parallel replicas diverged: parameter checksums {checksums.tolist()}")
        accelerator.log(
            {"replica_checksum": checksums[0].item(), "num_processes": accelerator.num_processes}, global_step
        )
        if skipped_steps:
            accelerator.print(f"The fp16 grad scaler skipped {skipped_steps} of {global_step} updates (overflow)")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            pipeline = inference_pipeline(args, unet, ema, noise_scheduler, accelerator)
            save_pipeline(pipeline, output_dir)
            save_sample_grid(args, pipeline, output_dir / "samples" / "final.png", accelerator, global_step)
            if args.eval_every:
                report = evaluate_during_training(args, pipeline, accelerator)
                durable.write_text(output_dir / "evaluation.json", report.to_json())
                metrics = {f"eval/{name}": value for name, value in report.metrics.items()}
                accelerator.log(metrics, step=global_step)
            info = training_info(accelerator, unet, time.perf_counter() - run_start, global_step, loss)
            info.update(skipped_steps=skipped_steps, nonfinite_steps=nonfinite_steps)
            durable.write_text(output_dir / "training_info.json", json.dumps(info, indent=2))
            card = model_card(output_dir, args.hub_model_id or output_dir.resolve().name)
            durable.write_text(output_dir / "README.md", str(card))
            accelerator.print(
                f"Saved the pipeline and its model card to {output_dir}, samples to "
                f"{output_dir / 'samples' / 'final.png'}"
            )
    finally:
        progress.close()
        accelerator.end_training()
    return publish(args, output_dir, intermediate_pushes) if accelerator.is_main_process else 0


def data_position(epoch: int, batches_done: int, batches_per_epoch: int) -> dict:
    """Where the data stands after `batches_done` batches of `epoch`, as a checkpoint records it."""
    if batches_done == batches_per_epoch:
        return {"epoch": epoch + 1, "batches_in_epoch": 0}
    return {"epoch": epoch, "batches_in_epoch": batches_done}


def run(argv: list[str] | None = None) -> int:
    """The command line: train; answer a bad input or a fault with one line on stderr and an exit status.

    Exit status: 0 done; 1 a fault stopped the run (a non-finite loss, a checkpoint that could not be written or
    read, a failed push); 2 a bad argument or input; 128 + N stopped by signal N after saving a checkpoint.
    """
    main_process = os.environ.get("RANK", "0") == "0"
    try:
        return main(parse_args(argv))
    except RunInterrupted as interruption:
        if main_process:
            print(interruption, file=sys.stderr)
        return interruption.exit_code
    except KeyboardInterrupt:
        if main_process:
            print("interrupted; the checkpoints written so far are kept", file=sys.stderr)
        return 128 + signal.SIGINT
    except (ValueError, FileNotFoundError, NotADirectoryError, HubError, CheckpointError, NonFiniteLossError) as error:
        if main_process:
            print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1 if isinstance(error, (CheckpointError, NonFiniteLossError)) else 2


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
