"""Quality against training time on Fashion-MNIST: a pixel-space DDPM against a latent one (its autoencoder and its
latent UNet), each measured at its checkpoints and at the end.

    python benchmarks/latent_study.py outputs/fashion-cpu outputs/latent-fashion --output_dir benchmarks
    python benchmarks/latent_study.py outputs/fashion-cpu outputs/latent-fashion-short --tag _short \
        --pixel_from benchmarks/latent_study.json   # another latent run against the same pixel points

At each point: fd_fashion and the class scores of `--num_samples` DDIM samples (50 steps) against the 10,000 test
images, and the training time to that point, from the checkpoint's record (a latent run's includes its
autoencoder's training). Beside them: the real-data floor at the same sample count, the autoencoder's floor (its
reconstructions of as many training images), and each final pipeline's sampling speed at 50 steps. Writes
`latent_study.json` and `latent_study.png` to `--output_dir`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from hfddpm import AutoencoderPipeline, HFDDPMPipeline
from hfddpm.evaluation import EvaluationReport, evaluate_pipeline
from hfddpm.evaluation.classifiers import labelled_images
from hfddpm.evaluation.reconstruction import evaluate_autoencoder

DATA = "fashion_mnist"
METRICS = ["fd_fashion", "fashion_scores"]


def run_points(run: Path, start_seconds: float) -> list[tuple[float, str, dict | None]]:
    """(training seconds, label, EMA weights or None for the final pipeline's) at each checkpoint and the end."""
    points = []
    for checkpoint in sorted((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        state = json.loads((checkpoint / "training_state.json").read_text())
        points.append(
            (start_seconds + state["wall_time_seconds"], checkpoint.name, load_file(checkpoint / "ema.safetensors"))
        )
    info = json.loads((run / "training_info.json").read_text())
    points.append((start_seconds + info["wall_time_seconds"], "final", None))
    return points


def measure(pipeline: HFDDPMPipeline, num_samples: int, metrics: list[str] = METRICS, **options) -> EvaluationReport:
    """`metrics` of `pipeline`'s DDIM-50 samples (and bound) against Fashion-MNIST's test images."""
    return evaluate_pipeline(
        pipeline,
        DATA,
        metrics,
        reference_split="test",
        num_samples=num_samples,
        num_inference_steps=50,
        progress_bar=False,
        **options,
    )


def sampling_speed(pipeline: HFDDPMPipeline, batch_size: int = 250) -> float:
    """Images per second at 50 steps, the best of two batches."""
    best = float("inf")
    for seed in range(2):
        started = time.perf_counter()
        pipeline(batch_size=batch_size, num_inference_steps=50, generator=torch.manual_seed(seed), output_type="pt")
        best = min(best, time.perf_counter() - started)
    return batch_size / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pixel_run")
    parser.add_argument("latent_run")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--output_dir", default="benchmarks")
    parser.add_argument("--tag", default="", help="suffix of the files written")
    parser.add_argument("--pixel_from", help="an earlier latent_study.json whose pixel run and floor to take")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = {"num_samples": args.num_samples, "runs": {}}
    if args.pixel_from:
        earlier = json.loads(Path(args.pixel_from).read_text())
        results["real_floor"], results["runs"]["pixel"] = earlier["real_floor"], earlier["runs"]["pixel"]
    else:
        train, _ = labelled_images(DATA, "train")
        real = evaluate_pipeline(None, DATA, ["fd_fashion"], samples=train[: args.num_samples], reference_split="test")
        results["real_floor"] = real.metrics["fd_fashion"]
    autoencoder = json.loads((Path(args.latent_run) / "training_args.json").read_text())["vae"]
    autoencoder_seconds = json.loads((Path(autoencoder) / "training_info.json").read_text())["wall_time_seconds"]
    reconstructions = evaluate_autoencoder(
        AutoencoderPipeline.from_pretrained(autoencoder),
        DATA,
        ["fd_fashion"],
        split="train",
        num_images=args.num_samples,
    )
    results["autoencoder"] = {"seconds": autoencoder_seconds, **reconstructions.metrics}
    print(f"floors: real {results['real_floor']:.2f}, reconstructions {reconstructions.metrics}", flush=True)
    runs = (("pixel", args.pixel_run, 0.0), ("latent", args.latent_run, autoencoder_seconds))
    for kind, run, start in runs[1:] if args.pixel_from else runs:
        pipeline = HFDDPMPipeline.from_pretrained(run)
        pipeline.set_progress_bar_config(disable=True)
        final = {name: tensor.clone() for name, tensor in pipeline.unet.state_dict().items()}
        points = []
        for seconds, label, ema in run_points(Path(run), start):
            if ema is None:
                pipeline.unet.load_state_dict(final)
            else:
                for index, parameter in enumerate(pipeline.unet.parameters()):
                    parameter.data.copy_(ema[f"shadow_params.{index}"])
            metrics = measure(pipeline, args.num_samples).metrics
            points.append({"label": label, "minutes": seconds / 60, **metrics})
            print(f"{kind} {label}: {seconds / 60:.1f} min, {metrics}", flush=True)
        speed = sampling_speed(pipeline)
        results["runs"][kind] = {"run": run, "points": points, "images_per_second_50_steps": speed}
        print(f"{kind}: {speed:.1f} images/s at 50 steps", flush=True)
    output = Path(args.output_dir)
    (output / f"latent_study{args.tag}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, output / f"latent_study{args.tag}.png")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for kind, run in results["runs"].items():
        points = run["points"]
        axis.plot([p["minutes"] for p in points], [p["fd_fashion"] for p in points], "o-", label=f"{kind} DDPM")
    axis.axhline(results["real_floor"], color="grey", linestyle="--", label="real images (floor)")
    axis.axhline(results["autoencoder"]["fd_fashion"], color="grey", linestyle=":", label="reconstructions")
    axis.axvline(results["autoencoder"]["seconds"] / 60, color="lightgrey", linewidth=1)
    axis.set_xlabel("training time on 2 CPU cores (minutes; latent: autoencoder included)")
    axis.set_ylabel(f"fd_fashion, {results['num_samples']} DDIM-50 samples")
    axis.set_yscale("log")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
