"""Samplers of a model in continuous time against its DDIM, by fd_digits of the same number of samples:

    python benchmarks/continuous_sampler_study.py outputs/continuous/vdm-learned-fourier [--num_samples 500]

DDIM on the checkpoint's table (trailing grid), `ScoreSDEScheduler`'s Euler–Maruyama and probability-flow Euler at
N equal steps in t, and the probability-flow ODE by adaptive RK45 (`sample_probability_flow`), which reports its
network evaluations. Seed 0 for every sampler; prints a Markdown table and writes it beside the script as JSON.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from hfddpm import DDIMScheduler, HFDDPMPipeline, ScoreSDEScheduler
from hfddpm.evaluation.continuous_likelihood import sample_probability_flow
from hfddpm.evaluation.report import evaluate_pipeline

FIXED_STEPS = {"DDIM": (10, 50), "Euler–Maruyama": (50, 200, 1000), "probability flow, Euler": (50, 200)}


def fd_digits(images: torch.Tensor) -> float:
    """fd_digits of images in [−1, 1] against the training digits."""
    report = evaluate_pipeline(None, "digits", ["fd_digits"], samples=(images.float() / 2 + 0.5).clamp(0, 1))
    return report.metrics["fd_digits"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--num_samples", type=int, default=500)
    args = parser.parse_args()
    pipeline = HFDDPMPipeline.from_pretrained(args.checkpoint)
    pipeline.set_progress_bar_config(disable=True)
    config = pipeline.scheduler.config
    schedulers = {
        "DDIM": DDIMScheduler.from_config(config, timestep_spacing="trailing"),
        "Euler–Maruyama": ScoreSDEScheduler.from_config(config, sampler="euler_maruyama"),
        "probability flow, Euler": ScoreSDEScheduler.from_config(config, sampler="probability_flow"),
    }
    rows = []
    for name, steps in FIXED_STEPS.items():
        pipeline.scheduler = schedulers[name]
        for count in steps:
            start = time.perf_counter()
            draw = {"num_inference_steps": count, "generator": torch.manual_seed(0), "output_type": "latent"}
            images = pipeline(batch_size=args.num_samples, **draw).images
            rows.append({"sampler": name, "evaluations": count, "fd_digits": fd_digits(images.clamp(-1, 1))})
            rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
            print(rows[-1], flush=True)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    pipeline.scheduler = schedulers["DDIM"]  # the table the ODE runs on
    images, evaluations = sample_probability_flow(pipeline, args.num_samples, generator)
    rows.append(
        {"sampler": "probability flow, RK45", "evaluations": evaluations, "fd_digits": fd_digits(images.clamp(-1, 1))}
    )
    rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
    print(f"{args.checkpoint}, {args.num_samples} samples\n\n| sampler | network evaluations | fd_digits | seconds |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['sampler']} | {row['evaluations']} | {row['fd_digits']:.2f} | {row['seconds']} |")
    output = Path(__file__).with_name("continuous_sampler_study.json")
    output.write_text(
        json.dumps({"checkpoint": args.checkpoint, "num_samples": args.num_samples, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
