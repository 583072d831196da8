"""LSGM's joint fine-tune against the two-stage latent model it starts from, on Fashion-MNIST.

    accelerate launch --config_file examples/accelerate_config.yaml examples/train_lsgm.py \
        --model outputs/latent-fashion --output_dir outputs/lsgm-fashion --max_train_steps 600 --lr_warmup_steps 50
    python benchmarks/lsgm_study.py outputs/latent-fashion outputs/lsgm-fashion

For each model: fd_fashion and the class scores of 1,000 DDIM-50 samples against the 10,000 test images, and the
bound in bits/dim on 1,000 test images (the decoder's σ fitted on the first 1,000 images of the reference split, here
the test split; 100 terms of the diffusion's bound per image), with its three parts. Then the two networks swapped
between the first model and each other, so that a change of fd_fashion can be told apart: the autoencoder's or the
UNet's. Writes `lsgm_study.json` to `--output_dir`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from latent_study import measure

from hfddpm import HFDDPMPipeline


def measure_with_bound(pipeline: HFDDPMPipeline, metrics: list[str]) -> dict:
    report = measure(pipeline, 1000, metrics, max_images=1000)
    bound = report.details.get("bits_per_dim", {})
    parts = {
        key: bound[key] for key in bound if key.endswith("_bits_per_dim") or key in ("standard_error", "decoder_scale")
    }
    return {**report.metrics, **parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("two_stage")
    parser.add_argument("lsgm", nargs="+")
    parser.add_argument("--output_dir", default="benchmarks")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = HFDDPMPipeline.from_pretrained(args.two_stage)
    results = {}
    for run in [args.two_stage, *args.lsgm]:
        results[run] = measure_with_bound(
            HFDDPMPipeline.from_pretrained(run), ["fd_fashion", "fashion_scores", "bits_per_dim"]
        )
        print(run, results[run], flush=True)
    for run in args.lsgm:
        tuned = HFDDPMPipeline.from_pretrained(run)
        for label, unet, vae in (
            ("its UNet, the first autoencoder", tuned.unet, start.vae),
            ("the first UNet, its autoencoder", start.unet, tuned.vae),
        ):
            pipeline = HFDDPMPipeline(unet=unet, scheduler=start.scheduler, vae=vae)
            results[f"{run}: {label}"] = measure_with_bound(pipeline, ["fd_fashion", "fashion_scores"])
            print(run, label, results[f"{run}: {label}"], flush=True)
    (Path(args.output_dir) / "lsgm_study.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
