"""The `hfddpm` command (also `python -m hfddpm`): one subcommand per task, each with `--help`."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, durable
from .hub import HubError
from .schedulers import ReverseVariance

if TYPE_CHECKING:
    from diffusers import SchedulerMixin


SEED_RANGE = (0, 2**32 - 1)  # as the training script's --seed


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def finite(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def seed(text: str) -> int:
    """An argparse type: a seed in `SEED_RANGE`."""
    value = count(SEED_RANGE[0])(text)
    if value > SEED_RANGE[1]:
        raise argparse.ArgumentTypeError(f"must be in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {value}")
    return value


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """`--overwrite`: an existing output file is replaced only when asked."""
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def add_allow_pickle_argument(parser: argparse.ArgumentParser) -> None:
    """`--allow_pickle`, for the commands that load a checkpoint: its opt-in to pickle weights."""
    parser.add_argument(
        "--allow_pickle",
        action="store_true",
        help="also load pickle weights (.bin; read with torch.load(weights_only=True)): only for a source you trust",
    )


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    from .evaluation.features import DINOV2_DEFAULT
    from .evaluation.report import METRICS

    metric_help = "; ".join(f"{name}: {text}" for name, text in METRICS.items())
    parser = subparsers.add_parser(
        "evaluate",
        help="measure a checkpoint (or a folder of samples) against a dataset",
        description="Measure a pipeline checkpoint, or a folder of generated images, against a dataset and print the "
        "numbers; with --output_dir, also write evaluation.json and a plot of the bound's terms L_t against t.",
        epilog="examples:\n"
        "  hfddpm evaluate outputs/ddpm-digits                       # every offline metric of the built-in digits\n"
        "  hfddpm evaluate outputs/ddpm-digits --metrics bits_per_dim --num_timesteps 100   # a quick bound\n"
        "  hfddpm evaluate my-run --dataset my_images/ --metrics fid --inception_weights pt_inception.pth",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="pipeline folder or Hub repository, or a folder of generated images")
    parser.add_argument(
        "--dataset", default="digits", help="'digits' (built in), an image folder, a save_to_disk folder or a Hub name"
    )
    parser.add_argument(
        "--metrics", nargs="+", choices=list(METRICS), help=f"default: every offline one for digits. {metric_help}"
    )
    parser.add_argument("--split", default="test", help="held-out split for bits/dim (default: test)")
    parser.add_argument("--reference_split", default="train", help="split the samples are compared with")
    parser.add_argument("--image_column", help="column holding the images (default: the first image column)")
    parser.add_argument("--max_images", type=count(1), help="bits/dim: the first N images of the split (default: all)")
    parser.add_argument(
        "--num_timesteps", type=count(1), help="bits/dim: terms per image, stratified over t (default: all T, exact)"
    )
    parser.add_argument(
        "--reverse_variance",
        choices=[choice.value for choice in ReverseVariance],
        help="bits/dim: the reverse variance to evaluate (default: the checkpoint's)",
    )
    parser.add_argument("--num_samples", type=count(1), default=1000, help="samples drawn for the sample metrics")
    parser.add_argument(
        "--num_inference_steps",
        type=count(1),
        help="sampling steps (default: the checkpoint's own, 50 unless distilled)",
    )
    parser.add_argument("--eta", type=finite, default=0.0, help="DDIM's eta for sampling")
    parser.add_argument("--batch_size", type=count(1), default=250, help="images per network call (default 250)")
    parser.add_argument("--inception_weights", help="FID: path of pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--dinov2_model", default=DINOV2_DEFAULT, help="FD_DINOv2: local folder or cached Hub id")
    parser.add_argument("--device", help="e.g. cpu, cuda (default: cuda when available)")
    parser.add_argument("--seed", type=seed, default=0, help="seeds the samples, noise and timesteps drawn")
    parser.add_argument("--output_dir", help="write evaluation.json and plots here")
    add_overwrite_argument(parser)
    parser.add_argument("--cache_dir", help="where reference statistics are cached (default ~/.cache/hfddpm)")
    add_allow_pickle_argument(parser)
    parser.set_defaults(run=run_evaluate, command="evaluate")


def run_evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate
    from .evaluation.report import record_evaluation

    if args.output_dir:
        for name in ("evaluation.json", "bits_per_dim_terms.png"):
            durable.check_output_file(Path(args.output_dir) / name, "--output_dir", args.overwrite)
    skipped = ("checkpoint", "run", "command", "overwrite")
    report = evaluate(args.checkpoint, **{key: value for key, value in vars(args).items() if key not in skipped})
    print(report.summary())
    if args.output_dir:
        print(f"  written to {args.output_dir}/evaluation.json")
    if os.path.isfile(os.path.join(args.checkpoint, "model_index.json")) and record_evaluation(
        args.checkpoint, report
    ):
        print(f"  recorded in {args.checkpoint}/evaluation.json and its model card (README.md)")


def add_analytic_variance_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analytic-variance",
        help="measure Γ_t of a checkpoint and make it sample with Analytic-DPM's variance",
        description="Estimate Γ_t = E‖ε_θ(x_t, t)‖²/d for every training timestep on training images (Bao et al. "
        "2022) and save the pipeline with it in its scheduler config (reverse_variance='analytic') into a new folder "
        "(--output_dir), or rewrite the checkpoint's scheduler (--in_place), so that "
        "HFDDPMPipeline.from_pretrained samples with the optimal reverse variance.",
        epilog="example: hfddpm analytic-variance outputs/ddpm-digits --output_dir outputs/ddpm-digits-analytic",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="a pipeline folder or Hub repository")
    parser.add_argument("--dataset", default="digits", help="the images the model was trained on (default: digits)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--image_column", help="column holding the images (default: the first image column)")
    parser.add_argument("--num_images", type=count(1), default=500, help="images in the Monte Carlo average")
    parser.add_argument("--batch_size", type=count(1), default=250, help="images per network call (default 250)")
    parser.add_argument(
        "--output_dir", help="a new or empty folder: the pipeline with Analytic-DPM's variance, its records and card"
    )
    parser.add_argument(
        "--in_place",
        action="store_true",
        help="rewrite the checkpoint's scheduler config and card instead (its sample grid stays the old sampler's)",
    )
    parser.add_argument("--device", help="e.g. cpu, cuda (default: cuda when available)")
    parser.add_argument("--seed", type=seed, default=0)
    add_allow_pickle_argument(parser)
    parser.set_defaults(run=run_analytic_variance, command="analytic-variance")


def run_analytic_variance(args: argparse.Namespace) -> None:
    import torch

    from .image_data import image_batches
    from .pipelines import HFDDPMPipeline
    from .schedulers.analytic_dpm import fit_analytic_variance

    if (args.output_dir is None) == (not args.in_place):
        raise ValueError(
            "pass --output_dir NEW_FOLDER to save the pipeline with Analytic-DPM's variance there, or --in_place to "
            f"rewrite the scheduler of {args.checkpoint} (its sample grid and evaluation then describe the old one)"
        )
    if args.in_place and not os.path.isfile(os.path.join(args.checkpoint, "model_index.json")):
        raise ValueError(f"--in_place: {args.checkpoint} is not a local pipeline folder; pass --output_dir instead")
    if args.output_dir:
        durable.check_new_folder(args.output_dir, "--output_dir")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = HFDDPMPipeline.from_pretrained(args.checkpoint, allow_pickle=args.allow_pickle).to(device)
    unet = pipeline.unet
    size = unet.config.sample_size
    batches = image_batches(
        args.dataset,
        args.split,
        size if isinstance(size, int) else size[0],
        unet.config.in_channels,
        args.batch_size,
        image_column=args.image_column,
        max_images=args.num_images,
    )
    fit_analytic_variance(pipeline, batches, generator=torch.Generator().manual_seed(args.seed), progress_bar=True)
    if args.output_dir:
        save_analytic_pipeline(pipeline, args.checkpoint, args.output_dir)
    else:
        rewrite_scheduler(pipeline, args.checkpoint)
    target = args.output_dir or args.checkpoint
    gamma = pipeline.scheduler.config.analytic_gamma
    print(
        f"Γ_t over {len(batches.dataset)} images: Γ_0 = {gamma[0]:.4f}, Γ_T/2 = {gamma[len(gamma) // 2]:.4f}, "
        f"Γ_T−1 = {gamma[-1]:.4f}; {target} now samples with reverse_variance='analytic'"
    )


def save_analytic_pipeline(pipeline: Any, checkpoint: str, output_dir: str) -> None:
    """Save `pipeline` into the new folder `output_dir`, atomically, with the records of the run it came from
    (not its evaluation or sample grid, which measured the old variance) and a card of its own."""
    from .hub import RUN_RECORDS
    from .model_cards import model_card

    with durable.new_folder(output_dir) as partial:
        pipeline.save_pretrained(partial)
        for name in RUN_RECORDS:
            if name != "evaluation.json" and os.path.isfile(os.path.join(checkpoint, name)):
                durable.write_text(partial / name, Path(checkpoint, name).read_text(encoding="utf-8"))
        card = model_card(partial, Path(output_dir).resolve().name)
        durable.write_text(partial / "README.md", str(card))


def rewrite_scheduler(pipeline: Any, checkpoint: str) -> None:
    """Replace the scheduler config of the pipeline folder `checkpoint` atomically, and its card if hfddpm wrote it."""
    from .model_cards import rewrite_model_card

    staging = os.path.join(checkpoint, ".scheduler.partial")
    pipeline.scheduler.save_pretrained(staging)
    durable.fsync_tree(staging)
    durable.move_files_into(staging, os.path.join(checkpoint, "scheduler"))
    rewrite_model_card(checkpoint)


SCHEDULERS = ("ddpm", "ddim", "dpm-solver", "euler", "checkpoint")


def scheduler_for(name: str, config: dict[str, Any]) -> SchedulerMixin:
    """A scheduler by its CLI name, built from a checkpoint's scheduler config ("checkpoint": the saved one)."""
    import diffusers

    from .schedulers import DDIMScheduler, DDPMScheduler

    classes = {
        "ddpm": DDPMScheduler,
        "ddim": DDIMScheduler,
        "dpm-solver": diffusers.DPMSolverMultistepScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
    }
    return classes[name].from_config(config)


def add_sample_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="draw images from a checkpoint into a grid PNG or a folder",
        description="Draw images from a pipeline checkpoint (folder or Hub repository) with any scheduler; write "
        "them as one grid image (--output grid.png) or one PNG per image (--output_dir folder/).",
        epilog="examples:\n"
        "  hfddpm sample outputs/ddpm-digits --num_images 64 --output outputs/samples.png\n"
        "  hfddpm sample outputs/ddpm-digits --scheduler ddpm --steps 1000 --num_images 500 "
        "--output_dir outputs/samples/\n"
        "  hfddpm sample outputs/ddpm-digits-cond --class_labels 3 7 --guidance_scale 3 --num_images 8 "
        "--output outputs/sevens.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="pipeline folder or Hub repository")
    parser.add_argument(
        "--num_images",
        type=count(1),
        default=16,
        help="images to draw, of each label with --class_labels (default 16)",
    )
    add_class_label_arguments(parser)
    parser.add_argument(
        "--num_inference_steps",
        "--steps",
        type=count(1),
        help="reverse steps (--steps for short; default: the checkpoint's own, 50 unless distilled)",
    )
    parser.add_argument("--scheduler", default="checkpoint", choices=SCHEDULERS, help="default: the saved one")
    parser.add_argument("--eta", type=finite, default=0.0, help="DDIM's eta")
    parser.add_argument("--corrector_steps", type=count(0), default=0, help="Langevin corrector steps per step")
    parser.add_argument("--seed", type=seed, default=0, help="image i is drawn from seed + i (as the training grids)")
    parser.add_argument("--batch_size", type=count(1), default=250, help="images per network call (default 250)")
    parser.add_argument("--output", help="grid image to write (.png, or another extension PIL writes)")
    parser.add_argument("--output_dir", help="folder to write one PNG per image into")
    add_overwrite_argument(parser)
    parser.add_argument("--device", help="e.g. cpu, cuda (default: cuda when available)")
    add_allow_pickle_argument(parser)
    parser.set_defaults(run=run_sample, command="sample")


def add_class_label_arguments(parser: argparse.ArgumentParser) -> None:
    """`--class_labels` and `--guidance_scale`, for the commands that draw from a class-conditional checkpoint."""
    parser.add_argument(
        "--class_labels", nargs="+", help="class names or ids of a class-conditional checkpoint (default: none)"
    )
    parser.add_argument(
        "--guidance_scale",
        type=finite,
        help="classifier-free guidance w: 1 conditional, 0 unconditional, > 1 closer to the label (default: "
        "HFDDPMPipeline's, the measured best for the digits)",
    )


def label_ids(pipeline: Any, labels: list[str] | None) -> list[int] | None:
    """The command line's class labels as ids, checked by the pipeline: each a class name of the checkpoint, else
    an integer id."""
    if labels is None:
        return None
    names = pipeline.labels
    values = [label if label in names or not label.lstrip("-").isdigit() else int(label) for label in labels]
    return pipeline.class_label_ids(values, len(values), "cpu")[0].tolist()


def run_sample(args: argparse.Namespace) -> None:
    import torch

    from .evaluation.sample_quality import generate_samples
    from .pipelines import HFDDPMPipeline
    from .visualize import check_image_path, sample_grid, save_image, to_pil

    if (args.output is None) == (args.output_dir is None):
        raise ValueError("pass exactly one of --output GRID.png and --output_dir FOLDER")
    if args.output:
        check_image_path(args.output, "--output", args.overwrite)
    else:
        durable.check_output_folder(args.output_dir, "--output_dir")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = HFDDPMPipeline.from_pretrained(args.checkpoint, allow_pickle=args.allow_pickle).to(device)
    if args.scheduler != "checkpoint":
        pipeline.scheduler = scheduler_for(args.scheduler, pipeline.scheduler.config)
    ids = label_ids(pipeline, args.class_labels)
    pipeline.check_guidance_scale(args.guidance_scale, ids)
    options = {"corrector_steps": args.corrector_steps} if args.corrector_steps else {}
    if args.guidance_scale is not None:
        options["guidance_scale"] = args.guidance_scale
    per_image = None if ids is None else [i for i in ids for _ in range(args.num_images)]
    count = args.num_images * len(ids or [None])
    paths = [] if args.output else image_paths(args.output_dir, args.seed, count, per_image, args.overwrite)
    images = generate_samples(
        pipeline,
        count,
        args.batch_size,
        args.num_inference_steps,
        args.eta,
        args.seed,
        progress_bar=True,
        class_labels=per_image,
        **options,
    )
    pictures = to_pil(images * 2 - 1)
    if args.output_dir:
        for picture, path in zip(pictures, paths, strict=True):
            save_image(picture, path)
        print(f"{len(pictures)} images written to {args.output_dir}")
        return
    save_image(sample_grid(pictures, cols=None if ids is None else args.num_images), args.output)
    print(
        f"{len(pictures)} images ({type(pipeline.scheduler).__name__}, "
        f"{pipeline.inference_steps(args.num_inference_steps)} steps) written "
        f"to {args.output}"
    )


def image_paths(folder: str, seed: int, count: int, labels: list[int] | None, overwrite: bool) -> list[Path]:
    """The files `hfddpm sample --output_dir` writes (image i: seed + i, and its class), checked before sampling."""
    paths = [
        Path(folder) / f"{seed + i:06d}{'' if labels is None else f'_class{labels[i]}'}.png" for i in range(count)
    ]
    for path in paths:
        durable.check_output_file(path, "--output_dir", overwrite)
    return paths


def add_inpaint_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inpaint",
        help="complete the masked part of an image with a checkpoint (RePaint)",
        description="Generate the pixels of --image where --mask is white, keeping the others exactly, with any "
        "unconditional or class-conditional checkpoint and its own scheduler (RePaint, Lugmayr et al. 2022).",
        epilog="examples:\n"
        "  hfddpm inpaint outputs/ddpm-digits --image digit.png --mask bottom-half.png "
        "--output outputs/completed.png\n"
        "  hfddpm inpaint outputs/ddpm-digits-cond --image digit.png --mask m.png --class_labels 7 --num_images 8 "
        "--output outputs/sevens.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="pipeline folder or Hub repository")
    parser.add_argument("--image", required=True, help="the image to complete, of the model's size")
    parser.add_argument("--mask", required=True, help="white where pixels are generated, black where kept")
    parser.add_argument(
        "--output", required=True, help="PNG to write: the completed image, or a grid of --num_images completions"
    )
    add_overwrite_argument(parser)
    parser.add_argument("--num_images", type=count(1), default=1, help="completions to draw (default 1)")
    parser.add_argument(
        "--num_inference_steps",
        "--steps",
        type=count(1),
        help="reverse steps before resampling (default: the checkpoint's)",
    )
    parser.add_argument(
        "--jump_length", type=count(1), default=10, help="RePaint's j: steps of each jump back (default 10)"
    )
    parser.add_argument(
        "--jump_n_sample",
        type=count(1),
        default=10,
        help="RePaint's r: resamplings of each stretch (default 10; 1: none)",
    )
    parser.add_argument("--scheduler", default="checkpoint", choices=("ddpm", "ddim", "checkpoint"))
    parser.add_argument("--eta", type=finite, default=0.0, help="DDIM's eta")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--device", help="e.g. cpu, cuda (default: cuda when available)")
    add_class_label_arguments(parser)
    add_allow_pickle_argument(parser)
    parser.set_defaults(run=run_inpaint, command="inpaint")


def run_inpaint(args: argparse.Namespace) -> None:
    import torch

    from .image_data import read_image
    from .pipelines import HFDDPMInpaintPipeline
    from .visualize import check_image_path, sample_grid, save_image

    check_image_path(args.output, "--output", args.overwrite, suffixes=(".png",))
    image, mask = read_image(args.image, f"--image {args.image}"), read_image(args.mask, f"--mask {args.mask}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = HFDDPMInpaintPipeline.from_pretrained(args.checkpoint, allow_pickle=args.allow_pickle).to(device)
    if args.scheduler != "checkpoint":
        pipeline.scheduler = scheduler_for(args.scheduler, pipeline.scheduler.config)
    ids = label_ids(pipeline, args.class_labels)
    if ids is not None and len(ids) != 1:
        raise ValueError(f"--class_labels: inpainting takes one label, got {len(ids)}")
    completions = pipeline(
        [image] * args.num_images,
        mask,
        num_inference_steps=args.num_inference_steps,
        jump_length=args.jump_length,
        jump_n_sample=args.jump_n_sample,
        eta=args.eta,
        generator=[torch.Generator().manual_seed(args.seed + i) for i in range(args.num_images)],
        class_labels=None if ids is None else ids[0],
        guidance_scale=args.guidance_scale,
    ).images
    save_image(completions[0] if args.num_images == 1 else sample_grid(completions), args.output)
    print(f"{args.num_images} completion(s) of {args.image} written to {args.output}")


def add_visualize_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "visualize",
        help="picture the forward noising of real images or a pipeline's reverse trajectory",
        description="forward: real images (rows) noised to chosen timesteps (columns). reverse: a checkpoint's "
        "sampling, every few steps: x after the step from timestep t (top row of each image) and that step's "
        "prediction x̂_0 (bottom row).",
        epilog="examples:\n"
        "  hfddpm visualize forward --dataset digits --output outputs/forward.png\n"
        "  hfddpm visualize reverse outputs/ddpm-digits --steps 50 --every 5 --output outputs/reverse.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("process", choices=("forward", "reverse"))
    parser.add_argument("checkpoint", nargs="?", help="reverse: pipeline folder or Hub repository")
    parser.add_argument("--output", required=True, help="image to write (.png, or another extension PIL writes)")
    add_overwrite_argument(parser)
    parser.add_argument("--dataset", default="digits", help="forward: the images to noise")
    parser.add_argument("--split", default="train")
    parser.add_argument("--resolution", type=count(1), default=8, help="forward: image size")
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3), help="forward: 1 grey, 3 RGB")
    parser.add_argument("--num_images", type=count(1), default=4)
    parser.add_argument(
        "--timesteps", type=count(0), nargs="+", default=[0, 50, 100, 200, 300, 400, 500, 700, 999], help="forward"
    )
    parser.add_argument("--beta_schedule", default="linear", choices=("linear", "cosine"), help="forward")
    parser.add_argument(
        "--num_inference_steps",
        "--steps",
        type=count(1),
        help="reverse: sampling steps (--steps for short; default: the checkpoint's own, 50 unless distilled)",
    )
    parser.add_argument("--every", type=count(1), default=5, help="reverse: a column every N steps")
    parser.add_argument("--scheduler", default="checkpoint", choices=SCHEDULERS, help="reverse: default the saved one")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--scale", type=count(1), default=8, help="enlarge each image N times")
    add_allow_pickle_argument(parser)
    parser.set_defaults(run=run_visualize, command="visualize")


def run_visualize(args: argparse.Namespace) -> None:
    import torch

    from .image_data import image_batches
    from .pipelines import HFDDPMPipeline
    from .schedulers import DDPMScheduler
    from .visualize import check_image_path, forward_noising_grid, reverse_trajectory_grid, save_image

    check_image_path(args.output, "--output", args.overwrite)
    generator = torch.Generator().manual_seed(args.seed)
    if args.process == "forward":
        batches = image_batches(
            args.dataset, args.split, args.resolution, args.channels, args.num_images, max_images=args.num_images
        )
        scheduler = DDPMScheduler(beta_schedule=args.beta_schedule)
        grid = forward_noising_grid(next(iter(batches)), scheduler, args.timesteps, generator, args.scale)
    else:
        if args.checkpoint is None:
            raise ValueError("visualize reverse needs a checkpoint: hfddpm visualize reverse CHECKPOINT --output ...")
        pipeline = HFDDPMPipeline.from_pretrained(args.checkpoint, allow_pickle=args.allow_pickle)
        pipeline.set_progress_bar_config(disable=True)
        if args.scheduler != "checkpoint":
            pipeline.scheduler = scheduler_for(args.scheduler, pipeline.scheduler.config)
        grid = reverse_trajectory_grid(
            pipeline, args.num_images, args.num_inference_steps, args.every, generator, args.scale
        )
    save_image(grid, args.output)
    print(f"{args.process} process of {args.num_images} images written to {args.output} ({grid.width}×{grid.height})")


def add_push_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="publish a checkpoint folder to the Hugging Face Hub (or export what would be published)",
        description="Publish a pipeline folder to a Hub repository with a model card generated from the run's "
        "records: model_index.json, configs, safetensors weights, the card, sample images and the run's JSON "
        "records. Optimizer states and other pickles stay local unless --include_training_state.",
        epilog="examples:\n"
        "  hfddpm push outputs/ddpm-digits --repo_id user/ddpm-digits --private\n"
        "  hfddpm push outputs/ddpm-digits --repo_id user/ddpm-digits --export_dir outputs/export/   # no upload",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", help="the checkpoint folder (a training run's output_dir)")
    parser.add_argument("--repo_id", required=True, help="'user/name' (created if it does not exist)")
    parser.add_argument("--token", help="Hub token (default: $HF_TOKEN or the saved login)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", help="branch to push to (created if needed; default main)")
    parser.add_argument("--commit_message")
    parser.add_argument("--include_training_state", action="store_true", help="also push checkpoints/ (pickles)")
    parser.add_argument("--export_dir", help="write the folder that would be uploaded here, and upload nothing")
    parser.add_argument("--endpoint", help="Hub address (default: $HF_ENDPOINT or huggingface.co)")
    parser.set_defaults(run=run_push, command="push")


def run_push(args: argparse.Namespace) -> None:
    from .hub import export_for_hub, push_to_hub

    if args.export_dir:
        files = export_for_hub(args.folder, args.export_dir, args.repo_id, args.include_training_state)
        print(f"{len(files)} files would be uploaded to {args.repo_id}; they are in {args.export_dir}:")
        print("\n".join(f"  {name}" for name in files))
        return
    commit = push_to_hub(
        args.folder,
        args.repo_id,
        token=args.token,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        include_training_state=args.include_training_state,
        endpoint=args.endpoint,
    )
    print(f"pushed {args.folder} to {args.repo_id}: {commit.commit_url}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hfddpm", description="Denoising diffusion probabilistic models built on diffusers."
    )
    parser.add_argument("--version", action="version", version=f"hfddpm {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_sample_parser(subparsers)
    add_inpaint_parser(subparsers)
    add_evaluate_parser(subparsers)
    add_visualize_parser(subparsers)
    add_push_parser(subparsers)
    add_analytic_variance_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, OSError, HubError) as error:
        print(f"hfddpm {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
