"""What a run leaves besides checkpoints: the pipeline, sample grids, evaluations, its records, and Hub pushes."""

from __future__ import annotations

import platform
import shutil
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

import accelerate
import diffusers
import PIL.Image
import torch
from safetensors import SafetensorError

from .. import __version__, durable
from ..arguments import first_line
from ..conditioning import every_class
from ..pipelines import HFDDPMPipeline
from ..records import write_record
from ..run_folder import RUN_RECORD
from ..visualize import sample_grid, save_image, to_pil
from .config import RunConfig
from .faults import CheckpointError

if TYPE_CHECKING:
    from ..evaluation import EvaluationReport


def record_arguments(config: RunConfig, output_dir: Path, records: dict[str, dict]) -> None:
    """Write the run's configuration (never the token) to `RUN_RECORD`, before anything else: it marks the folder
    as one a run wrote, whose run outputs a later --overwrite_output_dir may delete (`written_by_run`); then the
    run's other `records` (file name: content)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, record in {RUN_RECORD: config.recorded(), **records}.items():
        write_record(output_dir / name, record)


def save_pipeline(pipeline: HFDDPMPipeline, output_dir: Path) -> None:
    """Save to a staging folder, then move its files into place: a kill leaves a loadable pipeline (each file the
    old or the new one, which share their configuration within a run), a failed write the earlier pipeline."""
    staging = output_dir / ".pipeline.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        pipeline.save_pretrained(staging)
        durable.finish_tree(staging)
    except (OSError, RuntimeError, SafetensorError) as error:  # safetensors raises its own on a full disk
        shutil.rmtree(staging, ignore_errors=True)
        problem = durable.write_problem(error)
        raise CheckpointError(
            f"{problem} to save the pipeline in {output_dir} ({first_line(error)}); the earlier files are "
            "kept: free disk space, then resume with --resume_from_checkpoint latest"
        ) from error
    durable.move_files_into(staging, output_dir, last="model_index.json")


def save_sample_grid(pipeline: HFDDPMPipeline, path: Path, config: RunConfig) -> PIL.Image.Image:
    """Sample `config.num_sample_images` images, image i from seed `config.seed` + i as `hfddpm sample --seed`
    draws it (`generate_samples`), and save their grid atomically to `path`; a class-conditional model draws class
    k in column k (at the default guidance scale)."""
    from ..evaluation.sample_quality import generate_samples

    classes = pipeline.num_classes
    labels = every_class(config.num_sample_images, classes) if classes else None
    images = generate_samples(
        pipeline,
        config.num_sample_images,
        config.num_sample_images,
        config.num_inference_steps,
        seed=config.seed,
        progress_bar=False,
        class_labels=labels,
    )
    grid = sample_grid(to_pil(images * 2 - 1), cols=classes)
    save_image(grid, path)
    return grid


def check_eval_metrics(config: RunConfig, device: torch.device) -> None:
    """Build the feature networks of --eval_metrics once, before training: missing weights are refused now, not at
    the first evaluation."""
    from ..evaluation.report import feature_networks

    if config.eval_every:
        feature_networks(tuple(config.eval_metrics), device=device)


def evaluate_during_training(config: RunConfig, pipeline: HFDDPMPipeline, device: torch.device) -> EvaluationReport:
    """--eval_metrics of the current EMA pipeline against the training split (bits/dim: 100 terms per image)."""
    from ..evaluation import evaluate_pipeline

    options = {"image_column": config.image_column, "num_samples": config.eval_num_samples, "device": device}
    options.update(num_inference_steps=config.num_inference_steps, seed=config.seed, progress_bar=False)
    return evaluate_pipeline(
        pipeline,
        config.dataset_source,
        config.eval_metrics,
        split=config.split,
        reference_split=config.split,
        **options,
    )


def training_info(accelerator: accelerate.Accelerator, model: torch.nn.Module, **run: object) -> dict:
    """What the model card reports of the run besides its configuration: hardware, versions, and `run`'s values
    (time, steps, final loss, counters)."""
    processes = accelerator.num_processes
    if accelerator.device.type == "cuda":
        hardware = f"{processes} × {torch.cuda.get_device_name(accelerator.device)}"
    else:
        hardware = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads × {processes} process(es))"
    parameters = sum(p.numel() for p in accelerator.unwrap_model(model).parameters())
    versions = {"hfddpm": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}
    return {
        "device": hardware,
        "num_processes": processes,
        "mixed_precision": accelerator.mixed_precision,
        **run,
        "parameters": f"{parameters / 1e6:.2f}M",
        "versions": {**versions, "accelerate": accelerate.__version__},
    }


def push(config: RunConfig, output_dir: Path, commit_message: str, **options: object) -> object:
    """Push `output_dir` to the configured Hub repository, branch and visibility (`hfddpm.hub.push_to_hub`); with
    `run_as_future=True` in the background, while training goes on (--hub_push_intermediate)."""
    from ..hub import push_to_hub

    hub = {"token": config.hub_token, "private": config.hub_private_repo, "revision": config.hub_revision}
    return push_to_hub(output_dir, config.hub_model_id, commit_message=commit_message, **hub, **options)


def publish(config: RunConfig, output_dir: Path, intermediate_pushes: list[Future]) -> int:
    """Push (or, with --hub_dry_run, export) the finished run; 1 when a push failed, after saying why."""
    from ..hub import RUN_EXPORT, HubError, export_for_hub

    for future in intermediate_pushes:  # a lost intermediate push does not fail the run
        if (error := future.exception()) is not None:
            print(f"warning: an intermediate push failed: {first_line(error)}", file=sys.stderr)
    training_state = config.hub_include_training_state
    try:
        if config.hub_dry_run:
            files = export_for_hub(output_dir, output_dir / RUN_EXPORT, config.hub_model_id, training_state)
            print(
                f"--hub_dry_run: the {len(files)} files a push to {config.hub_model_id} uploads are in "
                f"{output_dir / RUN_EXPORT}"
            )
        elif config.push_to_hub:
            commit = push(config, output_dir, "Final pipeline", include_training_state=training_state)
            print(f"Pushed {output_dir} to {config.hub_model_id}: {commit.commit_url}")
    except HubError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
