"""The `hfddpm` command (also `python -m hfddpm`): one subcommand per task, each with `--help`."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .schedulers import ReverseVariance


def add_evaluate_parser(subparsers) -> None:
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
    parser.add_argument("--max_images", type=int, help="bits/dim: the first N images of the split (default: all)")
    parser.add_argument(
        "--num_timesteps", type=int, help="bits/dim: terms per image, stratified over t (default: all T, exact)"
    )
    parser.add_argument(
        "--reverse_variance",
        choices=[choice.value for choice in ReverseVariance],
        help="bits/dim: the reverse variance to evaluate (default: the checkpoint's)",
    )
    parser.add_argument("--num_samples", type=int, default=1000, help="samples drawn for the sample metrics")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="sampling steps")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM's eta for sampling")
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--inception_weights", help="FID: path of pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("--dinov2_model", default=DINOV2_DEFAULT, help="FD_DINOv2: local folder or cached Hub id")
    parser.add_argument("--device", help="e.g. cpu, cuda (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the samples, noise and timesteps drawn")
    parser.add_argument("--output_dir", help="write evaluation.json and plots here")
    parser.add_argument("--cache_dir", help="where reference statistics are cached (default ~/.cache/hfddpm)")
    parser.set_defaults(run=run_evaluate, command="evaluate")


def run_evaluate(args: argparse.Namespace) -> None:
    from .evaluation import evaluate

    options = {key: value for key, value in vars(args).items() if key not in ("checkpoint", "run", "command")}
    report = evaluate(args.checkpoint, **options)
    print(report.summary())
    if args.output_dir:
        print(f"  written to {args.output_dir}/evaluation.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hfddpm", description="Denoising diffusion probabilistic models built on diffusers."
    )
    parser.add_argument("--version", action="version", version=f"hfddpm {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_evaluate_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"hfddpm {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
