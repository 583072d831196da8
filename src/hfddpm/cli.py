"""The `hfddpm` command (also `python -m hfddpm`): one subcommand per task, each an options dataclass whose fields
are its flags (`hfddpm.arguments.option`), checked before it loads a checkpoint or writes anything."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from . import __version__, durable
from .arguments import check_fits_in_memory, check_options, first_line, option
from .lazy import missing_extra
from .records import read_record, write_record
from .run_folder import RUN_RECORDS, recorded_data, run_lock

SEEDS = "[0, 4294967295]"  # as the training script's --seed
COUNT = "[1, inf)"
SCHEDULERS = Literal["checkpoint", "ddpm", "ddim", "dpm-solver", "euler", "euler-maruyama", "probability-flow"]
METRICS = Literal[
    "bits_per_dim",
    "bits_per_dim_continuous",
    "nll_ode",
    "fd_digits",
    "digits_scores",
    "fd_fashion",
    "fashion_scores",
    "fid",
    "fd_dinov2",
]
VARIANCES = Literal["fixed_small", "fixed_large", "learned", "learned_range", "analytic"]


@dataclasses.dataclass(kw_only=True)
class Options:
    def __post_init__(self) -> None:
        check_options(self)


@dataclasses.dataclass(kw_only=True)
class CheckpointOptions(Options):
    """The options of a command that loads a pipeline checkpoint."""

    device: str | None = option(None, "e.g. cpu, cuda (default: cuda when available)")
    allow_pickle: bool = option(
        False, "also load pickle weights (.bin, read with torch.load(weights_only=True)): only for a source you trust"
    )


@dataclasses.dataclass(kw_only=True)
class SampleOptions(CheckpointOptions):
    """Draw images from a pipeline checkpoint (folder or Hub repository) with any scheduler; write them as one grid
    image (--output grid.png) or one PNG per image (--output_dir folder/)."""

    checkpoint: str = option(help="pipeline folder or Hub repository", positional=True, path="input")
    num_images: int = option(16, "images to draw, of each label with --class_labels", interval=COUNT)
    class_labels: list[str] | None = option(None, "class names or ids of a class-conditional checkpoint")
    guidance_scale: float | None = option(
        None,
        "classifier-free guidance w: 1 conditional, 0 unconditional, > 1 closer to the label",
        interval="[0, inf)",
    )
    num_inference_steps: int | None = option(
        None, "reverse steps (default: the checkpoint's own, 50 unless distilled)", interval=COUNT
    )
    scheduler: SCHEDULERS = option("checkpoint", "the saved one, or one built from its config")
    eta: float = option(0.0, "DDIM's eta", interval="[0, 1]")
    corrector_steps: int = option(0, "Langevin corrector steps before each step", interval="[0, inf)")
    seed: int = option(0, "image i is drawn from seed + i (as the training grids)", interval=SEEDS)
    batch_size: int = option(250, "images per network call", interval=COUNT)
    output: str | None = option(None, "grid image to write (.png, or another extension PIL writes)", path="output")
    output_dir: str | None = option(None, "folder to write one PNG per image into", path="output")
    overwrite: bool = option(False, "replace existing output files")


@dataclasses.dataclass(kw_only=True)
class InpaintOptions(CheckpointOptions):
    """Generate the pixels of --image where --mask is white, keeping the others exactly, with any unconditional or
    class-conditional checkpoint and its own scheduler (RePaint, Lugmayr et al. 2022)."""

    checkpoint: str = option(help="pipeline folder or Hub repository", positional=True, path="input")
    image: str = option(help="the image to complete, of the model's size", path="input")
    mask: str = option(help="white where pixels are generated, black where kept", path="input")
    output: str = option(help="PNG to write: the completion, or a grid of --num_images completions", path="output")
    overwrite: bool = option(False, "replace an existing output file")
    num_images: int = option(1, "completions to draw", interval=COUNT)
    num_inference_steps: int | None = option(
        None, "reverse steps before resampling (default: the checkpoint's)", interval=COUNT
    )
    jump_length: int = option(10, "RePaint's j: steps of each jump back", interval=COUNT)
    jump_n_sample: int = option(10, "RePaint's r: resamplings of each stretch (1: none)", interval=COUNT)
    scheduler: Literal["checkpoint", "ddpm", "ddim"] = option("checkpoint")
    eta: float = option(0.0, "DDIM's eta", interval="[0, 1]")
    seed: int = option(0, "completion i is drawn from seed + i", interval=SEEDS)
    class_labels: list[str] | None = option(None, "the class of a class-conditional checkpoint (one)")
    guidance_scale: float | None = option(None, "classifier-free guidance w", interval="[0, inf)")


@dataclasses.dataclass(kw_only=True)
class EvaluateOptions(CheckpointOptions):
    """Measure a pipeline checkpoint, or a folder of generated images, against a dataset and print the numbers; with
    --output_dir, also write evaluation.json and a plot of the bound's terms L_t against t. On a run folder with
    hfddpm's model card, the numbers are recorded in its evaluation.json and card."""

    checkpoint: str = option(
        help="pipeline folder or Hub repository, or a folder of generated images", positional=True, path="input"
    )
    dataset: str | None = option(
        None,
        "'digits' (built in), an image folder, a save_to_disk folder or a Hub name (default: the data a run folder "
        "records, else digits)",
        path="input",
    )
    metrics: list[METRICS] | None = option(None, "default: every offline one for the digits, bits_per_dim otherwise")
    split: str = option("test", "held-out split for bits/dim")
    reference_split: str = option("train", "split the samples are compared with")
    image_column: str | None = option(None, "column holding the images (default: the first image column)")
    max_images: int | None = option(None, "bits/dim: the first N images of the split (default: all)", interval=COUNT)
    num_timesteps: int = option(
        100,
        "bits/dim: terms per image, stratified over t (an unbiased estimate with its standard error; T or more: "
        "all T, the exact sum, ten times the time at T = 1000)",
        interval="[2, inf)",
    )
    reverse_variance: VARIANCES | None = option(
        None, "bits/dim: the reverse variance to evaluate (default: the checkpoint's)"
    )
    num_probes: int = option(
        1, "nll_ode: ODE solves per image, each with its own dequantization and Hutchinson probe", interval=COUNT
    )
    num_samples: int = option(1000, "samples drawn for the sample metrics", interval=COUNT)
    num_inference_steps: int | None = option(None, "sampling steps (default: the checkpoint's own)", interval=COUNT)
    eta: float = option(0.0, "DDIM's eta for sampling", interval="[0, 1]")
    batch_size: int = option(250, "images per network call", interval=COUNT)
    inception_weights: str | None = option(None, "FID: path of pt_inception-2015-12-05-6726825d.pth", path="input")
    dinov2_model: str = option("facebook/dinov2-large", "FD_DINOv2: local folder or cached Hub id", path="input")
    seed: int = option(0, "seeds the samples, noise and timesteps drawn", interval=SEEDS)
    output_dir: str | None = option(None, "write evaluation.json and the plot here", path="output")
    overwrite: bool = option(False, "replace existing output files")
    cache_dir: str | None = option(None, "where reference statistics are cached (default ~/.cache/hfddpm)")


@dataclasses.dataclass(kw_only=True)
class VisualizeOptions(CheckpointOptions):
    """forward: real images (rows) noised to chosen timesteps (columns). reverse: a checkpoint's sampling, every few
    steps: x after the step from timestep t (top row of each image) and that step's prediction x̂_0 (bottom row)."""

    process: Literal["forward", "reverse"] = option(help="which process to picture", positional=True)
    checkpoint: str | None = option(None, "reverse: pipeline folder or Hub repository", positional=True, path="input")
    output: str = option(help="image to write (.png, or another extension PIL writes)", path="output")
    overwrite: bool = option(False, "replace an existing output file")
    dataset: str = option("digits", "forward: the images to noise", path="input")
    split: str = option("train", "forward: the split")
    resolution: int = option(8, "forward: image size", interval=COUNT)
    channels: Literal[1, 3] = option(1, "forward: 1 grey, 3 RGB")
    num_images: int = option(4, interval=COUNT)
    timesteps: list[int] = option((0, 50, 100, 200, 300, 400, 500, 700, 999), "forward: the columns' timesteps")
    beta_schedule: Literal["linear", "cosine"] = option("linear", "forward")
    num_inference_steps: int | None = option(
        None, "reverse: sampling steps (default: the checkpoint's own)", interval=COUNT
    )
    every: int = option(5, "reverse: a column every N steps", interval=COUNT)
    scheduler: SCHEDULERS = option("checkpoint", "reverse: the saved one, or one built from its config")
    seed: int = option(0, interval=SEEDS)
    scale: int = option(8, "enlarge each image N times", interval=COUNT)


@dataclasses.dataclass(kw_only=True)
class PushOptions(Options):
    """Publish a pipeline folder to a Hub repository with a model card generated from the run's records:
    model_index.json, configs, safetensors weights, the card, sample images and the run's JSON records. Optimizer
    states and other pickles stay local unless --include_training_state."""

    folder: str = option(help="the checkpoint folder (a training run's output_dir)", positional=True, path="input")
    repo_id: str = option(help="'user/name' (created if it does not exist)")
    token: str | None = option(None, "Hub token (default: $HF_TOKEN or the saved login)")
    private: bool = option(False, "create the repository private")
    revision: str | None = option(None, "branch to push to (created if needed; default main)")
    commit_message: str | None = option(None)
    include_training_state: bool = option(False, "also push checkpoints/ (pickles)")
    export_dir: str | None = option(
        None, "write the folder a push would upload here (new or empty), and upload nothing", path="output"
    )
    endpoint: str | None = option(None, "Hub address (default: $HF_ENDPOINT or huggingface.co)")


@dataclasses.dataclass(kw_only=True)
class AnalyticVarianceOptions(CheckpointOptions):
    """Estimate Γ_t = E‖ε_θ(x_t, t)‖²/d for every training timestep on training images (Bao et al. 2022) and save
    the pipeline with it in its scheduler config (reverse_variance='analytic') into a new folder (--output_dir), or
    rewrite the checkpoint's scheduler (--in_place), so that it samples with the optimal reverse variance."""

    checkpoint: str = option(help="a pipeline folder or Hub repository", positional=True, path="input")
    dataset: str | None = option(
        None, "the images the model was trained on (default: those a run folder records, else digits)", path="input"
    )
    split: str = option("train")
    image_column: str | None = option(None, "column holding the images (default: the first image column)")
    num_images: int = option(500, "images in the Monte Carlo average", interval=COUNT)
    batch_size: int = option(250, "images per network call", interval=COUNT)
    output_dir: str | None = option(
        None, "a new or empty folder: the pipeline with Analytic-DPM's variance, its card", path="output"
    )
    in_place: bool = option(False, "rewrite the checkpoint's scheduler config and card instead")
    seed: int = option(0, interval=SEEDS)


def load_pipeline(options: CheckpointOptions, pipeline_class: Any = None) -> Any:
    """The checkpoint's pipeline on the device, with the scheduler the options name (if they name one)."""
    import diffusers
    import torch

    from .pipelines import HFDDPMPipeline
    from .schedulers import DDIMScheduler, DDPMScheduler, ScoreSDEScheduler

    pipeline_class = pipeline_class or HFDDPMPipeline
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = pipeline_class.from_pretrained(options.checkpoint, allow_pickle=options.allow_pickle).to(device)
    schedulers = {
        "ddpm": DDPMScheduler,
        "ddim": DDIMScheduler,
        "dpm-solver": diffusers.DPMSolverMultistepScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "euler-maruyama": ScoreSDEScheduler,
        "probability-flow": ScoreSDEScheduler,
    }
    if (name := getattr(options, "scheduler", "checkpoint")) != "checkpoint":
        sampler = {"sampler": name.replace("-", "_")} if schedulers[name] is ScoreSDEScheduler else {}
        pipeline.scheduler = schedulers[name].from_config(pipeline.scheduler.config, **sampler)
    return pipeline


def label_ids(pipeline: Any, labels: list[str] | None) -> list[int] | None:
    """The command line's class labels as ids, checked by the pipeline: a class name of the checkpoint, else an id."""
    if labels is None:
        return None
    values = [label if label in pipeline.labels or not label.lstrip("-").isdigit() else int(label) for label in labels]
    return pipeline.class_label_ids(values, len(values), "cpu")[0].tolist()


def run_sample(options: SampleOptions) -> None:
    from .evaluation.sample_quality import generate_samples
    from .visualize import check_image_path, sample_grid, save_image, to_pil

    if (options.output is None) == (options.output_dir is None):
        raise ValueError("pass exactly one of --output GRID.png and --output_dir FOLDER")
    if options.output:
        check_image_path(options.output, "--output", options.overwrite)
    else:
        durable.check_output_folder(options.output_dir, "--output_dir")
    pipeline = load_pipeline(options)
    ids = label_ids(pipeline, options.class_labels)
    per_image = None if ids is None else [i for i in ids for _ in range(options.num_images)]
    count = options.num_images * len(ids or [None])
    paths = (
        [] if options.output else image_paths(options.output_dir, options.seed, count, per_image, options.overwrite)
    )
    call = dict(corrector_steps=options.corrector_steps, class_labels=per_image, guidance_scale=options.guidance_scale)
    images = generate_samples(
        pipeline, count, options.batch_size, options.num_inference_steps, options.eta, options.seed, **call
    )
    pictures = to_pil(images * 2 - 1)
    if options.output_dir:
        for picture, path in zip(pictures, paths, strict=True):
            save_image(picture, path)
        print(f"{len(pictures)} images written to {options.output_dir}")
        return
    save_image(sample_grid(pictures, cols=None if ids is None else options.num_images), options.output)
    steps = pipeline.inference_steps(options.num_inference_steps)
    print(f"{len(pictures)} images ({type(pipeline.scheduler).__name__}, {steps} steps) written to {options.output}")


def image_paths(folder: str, seed: int, count: int, labels: list[int] | None, overwrite: bool) -> list[Path]:
    """The files `hfddpm sample --output_dir` writes (image i: seed + i, and its class), checked before sampling."""
    names = [f"{seed + i:06d}{'' if labels is None else f'_class{labels[i]}'}.png" for i in range(count)]
    return [durable.check_output_file(Path(folder) / name, "--output_dir", overwrite) for name in names]


def run_inpaint(options: InpaintOptions) -> None:
    import torch

    from .image_data import read_image
    from .pipelines import HFDDPMInpaintPipeline
    from .visualize import check_image_path, sample_grid, save_image

    check_image_path(options.output, "--output", options.overwrite, suffixes=(".png",))
    image = read_image(options.image, f"--image {options.image}")
    mask = read_image(options.mask, f"--mask {options.mask}")
    pipeline = load_pipeline(options, HFDDPMInpaintPipeline)
    ids = label_ids(pipeline, options.class_labels)
    if ids is not None and len(ids) != 1:
        raise ValueError(f"--class_labels: inpainting takes one label, got {len(ids)}")
    completions = pipeline(
        [image] * options.num_images,
        mask,
        num_inference_steps=options.num_inference_steps,
        jump_length=options.jump_length,
        jump_n_sample=options.jump_n_sample,
        eta=options.eta,
        generator=[torch.Generator().manual_seed(options.seed + i) for i in range(options.num_images)],
        class_labels=None if ids is None else ids[0],
        guidance_scale=options.guidance_scale,
    ).images
    save_image(completions[0] if options.num_images == 1 else sample_grid(completions), options.output)
    print(f"{options.num_images} completion(s) of {options.image} written to {options.output}")


def run_evaluate(options: EvaluateOptions) -> None:
    """Evaluate; on a run folder with hfddpm's card, record the numbers there (`writing_into` it)."""
    from .evaluation import evaluate
    from .evaluation.report import record_evaluation
    from .model_cards import is_hfddpm_card

    if options.output_dir:
        for name in ("evaluation.json", "bits_per_dim_terms.png"):
            durable.check_output_file(Path(options.output_dir) / name, "--output_dir", options.overwrite)
    records = os.path.isfile(os.path.join(options.checkpoint, "model_index.json")) and is_hfddpm_card(
        os.path.join(options.checkpoint, "README.md")
    )
    with writing_into(options.checkpoint, records):
        arguments = dataclasses.asdict(options) | run_data(options)
        del arguments["overwrite"]
        report = evaluate(arguments.pop("checkpoint"), **arguments)
        print(report.summary())
        if options.output_dir:
            print(f"  written to {options.output_dir}/evaluation.json")
        if records and record_evaluation(options.checkpoint, report):
            print(f"  recorded in {options.checkpoint}/evaluation.json and its model card (README.md)")


@contextlib.contextmanager
def writing_into(folder: str, writes: bool) -> Iterator[None]:
    """For a command that `writes` into a run folder: hold its lock (`run_lock`) and read its records first, so that
    a malformed one is refused before any work."""
    if not writes:
        yield
        return
    with run_lock(Path(folder), "the run folder"):
        for name in RUN_RECORDS:
            read_record(Path(folder, name))
        yield


def run_data(options: EvaluateOptions | AnalyticVarianceOptions) -> dict:
    """--dataset and --image_column, by default those of the run folder's record (local paths found from it), else
    the built-in digits: a run is measured on the data it was trained on unless told otherwise."""
    if options.dataset is not None:
        return {"dataset": options.dataset, "image_column": options.image_column}
    data = recorded_data(options.checkpoint) if os.path.isdir(options.checkpoint) else {}
    dataset = data.get("train_data_dir") or data.get("dataset_name") or "digits"
    return {"dataset": dataset, "image_column": options.image_column or data.get("image_column")}


def run_visualize(options: VisualizeOptions) -> None:
    import torch

    from .image_data import image_batches
    from .schedulers import DDPMScheduler
    from .visualize import check_image_path, forward_noising_grid, reverse_trajectory_grid, save_image

    check_image_path(options.output, "--output", options.overwrite)
    generator = torch.Generator().manual_seed(options.seed)
    pipeline = load_pipeline(options) if options.process == "reverse" and options.checkpoint else None
    if pipeline is None:
        size, columns = options.resolution, len(options.timesteps)
    else:
        size = pipeline.sample_shape(1)[2]
        columns = math.ceil(pipeline.inference_steps(options.num_inference_steps) / options.every) + 1
    pixels = options.num_images * 2 * columns * (size * options.scale) ** 2
    check_fits_in_memory(pixels * 3, f"--scale {options.scale}: the picture")
    if options.process == "forward":
        size, count = options.resolution, options.num_images
        batches = image_batches(options.dataset, options.split, size, options.channels, count, max_images=count)
        scheduler = DDPMScheduler(beta_schedule=options.beta_schedule)
        grid = forward_noising_grid(next(iter(batches)), scheduler, options.timesteps, generator, options.scale)
    else:
        if pipeline is None:
            raise ValueError("visualize reverse needs a checkpoint: hfddpm visualize reverse CHECKPOINT --output ...")
        pipeline.set_progress_bar_config(disable=True)
        grid = reverse_trajectory_grid(
            pipeline, options.num_images, options.num_inference_steps, options.every, generator, options.scale
        )
    save_image(grid, options.output)
    size = f"{grid.width}×{grid.height}"
    print(f"{options.process} process of {options.num_images} images written to {options.output} ({size})")


def run_push(options: PushOptions) -> None:
    """Export or push, holding the run's lock (in a folder this user may write): what is published is one state of
    the folder."""
    with writing_into(options.folder, os.access(options.folder, os.W_OK)):
        publish_folder(options)


def publish_folder(options: PushOptions) -> None:
    from .hub import export_for_hub, push_to_hub

    if options.export_dir:
        files = export_for_hub(options.folder, options.export_dir, options.repo_id, options.include_training_state)
        print(f"{len(files)} files would be uploaded to {options.repo_id}; they are in {options.export_dir}:")
        print("\n".join(f"  {name}" for name in files))
        return
    push = dataclasses.asdict(options)
    del push["export_dir"]
    commit = push_to_hub(push.pop("folder"), push.pop("repo_id"), **push)
    print(f"pushed {options.folder} to {options.repo_id}: {commit.commit_url}")


def run_analytic_variance(options: AnalyticVarianceOptions) -> None:
    import torch

    from .image_data import image_batches
    from .schedulers.analytic_dpm import fit_analytic_variance

    if (options.output_dir is None) == (not options.in_place):
        raise ValueError(
            "pass --output_dir NEW_FOLDER to save the pipeline with Analytic-DPM's variance there, or --in_place to "
            f"rewrite the scheduler of {options.checkpoint} (its sample grid and evaluation then describe the old one)"
        )
    if options.in_place and not os.path.isfile(os.path.join(options.checkpoint, "model_index.json")):
        raise ValueError(f"--in_place: {options.checkpoint} is not a local pipeline folder; pass --output_dir instead")
    if options.output_dir:
        durable.check_new_folder(options.output_dir, "--output_dir")
    data = run_data(options)
    with writing_into(options.checkpoint, options.in_place):
        pipeline = load_pipeline(options)
        _, channels, size, _ = pipeline.sample_shape(1)
        source, column = data["dataset"], data["image_column"]
        batches = image_batches(source, options.split, size, channels, options.batch_size, column, options.num_images)
        fit_analytic_variance(pipeline, batches, torch.Generator().manual_seed(options.seed))
        if options.output_dir:
            save_analytic_pipeline(pipeline, options.checkpoint, options.output_dir)
        else:
            rewrite_scheduler(pipeline, options.checkpoint)
    gamma = pipeline.scheduler.config.analytic_gamma
    print(
        f"Γ_t over {len(batches.dataset)} images: Γ_0 = {gamma[0]:.4f}, Γ_T/2 = {gamma[len(gamma) // 2]:.4f}, "
        f"Γ_T−1 = {gamma[-1]:.4f}; {options.output_dir or options.checkpoint} now samples with "
        "reverse_variance='analytic'"
    )


def save_analytic_pipeline(pipeline: Any, checkpoint: str, output_dir: str) -> None:
    """Save `pipeline` into the new folder `output_dir`, atomically, with the records of the run it came from
    (not its evaluation or sample grid, which measured the old variance) and a card of its own."""
    from .model_cards import model_card

    with durable.new_folder(output_dir) as partial:
        pipeline.save_pretrained(partial)
        for name in RUN_RECORDS:
            if name != "evaluation.json" and (record := read_record(Path(checkpoint, name))):
                write_record(partial / name, record)
        durable.write_text(partial / "README.md", str(model_card(partial, Path(output_dir).resolve().name)))


def rewrite_scheduler(pipeline: Any, checkpoint: str) -> None:
    """Replace the scheduler config of the pipeline folder `checkpoint` atomically, and its card if hfddpm wrote it."""
    from .model_cards import rewrite_model_card

    staging = os.path.join(checkpoint, ".scheduler.partial")
    pipeline.scheduler.save_pretrained(staging)
    durable.finish_tree(staging)
    durable.move_files_into(staging, os.path.join(checkpoint, "scheduler"))
    rewrite_model_card(checkpoint)


COMMANDS: dict[str, tuple[type, Callable, str]] = {
    "sample": (SampleOptions, run_sample, "draw images from a checkpoint into a grid PNG or a folder"),
    "inpaint": (InpaintOptions, run_inpaint, "complete the masked part of an image with a checkpoint (RePaint)"),
    "evaluate": (EvaluateOptions, run_evaluate, "measure a checkpoint (or a folder of samples) against a dataset"),
    "visualize": (VisualizeOptions, run_visualize, "picture the forward noising of images or a reverse trajectory"),
    "push": (PushOptions, run_push, "publish a checkpoint folder to the Hugging Face Hub (or export what would go)"),
    "analytic-variance": (
        AnalyticVarianceOptions,
        run_analytic_variance,
        "make a checkpoint sample with Analytic-DPM's variance",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    from .arguments import add_options

    parser = argparse.ArgumentParser(
        prog="hfddpm", description="Denoising diffusion probabilistic models built on diffusers."
    )
    parser.add_argument("--version", action="version", version=f"hfddpm {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True, dest="command")
    for name, (options_class, _, summary) in COMMANDS.items():
        add_options(subparsers.add_parser(name, help=summary, description=options_class.__doc__), options_class)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = vars(build_parser().parse_args(argv))
    command = arguments.pop("command")
    options_class, run, _ = COMMANDS[command]
    try:
        run(options_class(**arguments))
    except ImportError as error:
        if (friendly := missing_extra(error)) is error:
            raise
        message = str(friendly)
    except (ValueError, OSError) as error:  # FileNotFoundError and HubError among them: bad input, one line
        message = first_line(error)
    else:
        return 0
    print(f"hfddpm {command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
