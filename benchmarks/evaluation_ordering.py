"""Do the metrics rank generators as they must? Noise < an early checkpoint < a trained one < real held-out digits.

    accelerate launch examples/train_unconditional.py --max_train_steps 200 --output_dir outputs/ddpm-digits-early
    python benchmarks/evaluation_ordering.py outputs/ddpm-digits-early outputs/ddpm-digits

Every row is scored by `hfddpm.evaluate` with 297 images (the size of the digits test split, so that every Fréchet
distance carries the same small-sample bias) against the training digits: uniform noise images, the two
checkpoints (DDIM, 50 steps, seed 0; bits/dim on the test split from 100 stratified terms per image) and the test
digits themselves. Prints a Markdown table and writes evaluation_ordering.json to --output_dir.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from hfddpm.evaluation import evaluate
from hfddpm.image_data import image_batches

NUM_IMAGES = 297
COLUMNS = ("fd_digits", "digits_class_coverage", "digits_confidence", "bits_per_dim")


def write_images(images: torch.Tensor, folder: Path) -> Path:
    """Images in [0, 1], shape (N, 1, H, W), as 8-bit PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        pixels = (image[0].numpy() * 255).round().astype(np.uint8)
        PIL.Image.fromarray(pixels).save(folder / f"{index:04d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("early", help="a checkpoint after few steps")
    parser.add_argument("trained", help="the same run's configuration trained fully")
    parser.add_argument("--output_dir", default="outputs/evaluation-ordering")
    args = parser.parse_args()
    output = Path(args.output_dir)
    noise = torch.rand(NUM_IMAGES, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    test = torch.cat(list(image_batches("digits", "test", 8, 1, batch_size=NUM_IMAGES))) / 2 + 0.5
    rows = {
        "uniform noise": write_images(noise, output / "noise"),
        f"early checkpoint ({args.early})": args.early,
        f"trained checkpoint ({args.trained})": args.trained,
        "held-out test digits": write_images(test, output / "test-digits"),
    }
    results = {}
    for name, source in rows.items():
        metrics = ["fd_digits", "digits_scores"] + (["bits_per_dim"] if "checkpoint" in name else [])
        report = evaluate(source, "digits", metrics, num_samples=NUM_IMAGES, num_timesteps=100, progress_bar=False)
        results[name] = report.metrics
        print(report.summary(), flush=True)
    (output / "evaluation_ordering.json").write_text(json.dumps(results, indent=2))
    print("\n| generator | " + " | ".join(COLUMNS) + " |\n| --- |" + " ---: |" * len(COLUMNS))
    for name, metrics in results.items():
        values = [f"{metrics[c]:.3f}" if c in metrics else "—" for c in COLUMNS]
        print(f"| {name} | " + " | ".join(values) + " |")


if __name__ == "__main__":
    main()
