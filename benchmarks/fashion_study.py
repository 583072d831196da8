"""A Fashion-MNIST run measured: fd_fashion and the class scores per sampler, each beside its real-data floor, and the
bound in bits/dim on the test set.

    python benchmarks/fashion_study.py outputs/fashion-cpu
    python benchmarks/fashion_study.py outputs/fashion-cpu --num_samples 1000 --ddpm_samples 256 --bound_images 1000

The samples are compared with the 10,000 test images. A Fréchet distance shrinks with the sample count, so each
sampler's floor is the same count of real training images against the same test set: a generator that drew the
training distribution exactly would score about its floor.
"""

from __future__ import annotations

import argparse
import time

import diffusers
import torch

from hfddpm import DDIMScheduler, DDPMScheduler, HFDDPMPipeline
from hfddpm.evaluation import evaluate_pipeline
from hfddpm.evaluation.classifiers import labelled_images

DATA = "fashion_mnist"
METRICS = ["fd_fashion", "fashion_scores"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--ddpm_samples", type=int, default=256, help="DDPM's 1000 steps cost 20× DDIM-50's (0: none)")
    parser.add_argument("--bound_images", type=int, default=1000, help="test images of the bound (0: none)")
    args = parser.parse_args()
    pipeline = HFDDPMPipeline.from_pretrained(args.run)
    config = pipeline.scheduler.config
    samplers = [
        ("DDIM η=0", DDIMScheduler, 50, args.num_samples),
        ("DPM-Solver++ (stock)", diffusers.DPMSolverMultistepScheduler, 10, args.num_samples),
        ("DPM-Solver++ (stock)", diffusers.DPMSolverMultistepScheduler, 20, args.num_samples),
        ("DDPM", DDPMScheduler, 1000, args.ddpm_samples),
    ]
    train, _ = labelled_images(DATA, "train")
    floors = {}
    print("| sampler | steps | samples | fd_fashion | floor | classes drawn | confidence | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, scheduler, steps, count in [sampler for sampler in samplers if sampler[-1]]:
        if count not in floors:
            real = evaluate_pipeline(None, DATA, METRICS, samples=train[:count], reference_split="test")
            floors[count] = real.metrics["fd_fashion"]
        pipeline.scheduler = scheduler.from_config(config)
        started = time.perf_counter()
        report = evaluate_pipeline(
            pipeline, DATA, METRICS, reference_split="test", num_samples=count, num_inference_steps=steps
        )
        seconds = time.perf_counter() - started
        m = report.metrics
        print(
            f"| {name} | {steps} | {count} | {m['fd_fashion']:.3f} | {floors[count]:.3f} | "
            f"{m['fashion_class_coverage']:.2f} | {m['fashion_confidence']:.3f} | {seconds:.0f} |",
            flush=True,
        )
    if not args.bound_images:
        return
    pipeline.scheduler = DDPMScheduler.from_config(config)
    bound = evaluate_pipeline(pipeline, DATA, ["bits_per_dim"], split="test", max_images=args.bound_images)
    details = bound.details["bits_per_dim"]
    print(
        f"\nbits/dim ≤ {bound.metrics['bits_per_dim']:.4f} ± {details['standard_error']:.4f} on the first "
        f"{details['num_images']} test images ({details['num_timesteps']} terms each)"
    )


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
