"""Classifier-free guidance on the digits: label accuracy against sample quality as the guidance scale w grows.

    accelerate launch examples/train_unconditional.py                                        # unconditional, ~3 min
    accelerate launch examples/train_unconditional.py --class_conditional --output_dir outputs/ddpm-digits-cond
    python benchmarks/guidance_study.py outputs/ddpm-digits-cond outputs/ddpm-digits

For each w: 1000 samples, 100 of each label, image i from seed i (the same x_T at every w), drawn with the
checkpoint's own sampler (DDIM, 50 steps, as `hfddpm evaluate` draws), scored by the shipped digits classifier —
the share of samples it reads as their label — and by fd_digits (Fréchet distance in its features against the 1500
training digits). w = 0 is the conditional model's unconditional half (no label), w = 1 its conditional model. The
unconditional default run is scored the same way (1000 samples, no labels). Writes guidance_study.json,
guidance_study.png (accuracy and fd_digits against w) and a grid with one row per label at --grid_scale into
docs/class-conditional-digits.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hfddpm import HFDDPMPipeline
from hfddpm.evaluation.features import ClassifierFeatures
from hfddpm.evaluation.frechet import FeatureStatistics, frechet_distance
from hfddpm.evaluation.sample_quality import generate_samples, reference_statistics
from hfddpm.visualize import sample_grid, to_pil

SCALES = (0.0, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
PER_LABEL = 100


def score(images: torch.Tensor, labels: torch.Tensor | None, extractor: ClassifierFeatures, reference) -> dict:
    """fd_digits of `images` (in [0, 1]) and, given their labels, the classifier's accuracy on them."""
    result = {"fd_digits": frechet_distance(FeatureStatistics.of(extractor(images)), reference)}
    if labels is not None:
        predicted = extractor.probabilities(images).argmax(1)
        result["label_accuracy"] = (predicted == labels).double().mean().item()
        result["per_label_accuracy"] = [(predicted[labels == k] == k).double().mean().item() for k in range(10)]
    return result


def plot(results: dict, unconditional_fd: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [float(w) for w in results]
    figure, accuracy_axis = plt.subplots(figsize=(6.5, 4))
    accuracy_axis.plot(scales, [100 * r["label_accuracy"] for r in results.values()], "o-", color="C0")
    accuracy_axis.set(xlabel="guidance scale w", ylabel="label accuracy (%)")
    accuracy_axis.yaxis.label.set_color("C0")
    fd_axis = accuracy_axis.twinx()
    fd_axis.plot(scales, [r["fd_digits"] for r in results.values()], "s-", color="C1")
    fd_axis.axhline(unconditional_fd, color="C1", linestyle=":", label="unconditional default run")
    fd_axis.set(ylabel="fd_digits (lower is better)")
    fd_axis.yaxis.label.set_color("C1")
    fd_axis.legend(loc="upper center", fontsize=8)
    accuracy_axis.set_title("Classifier-free guidance on the digits: fidelity against quality")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("conditional", nargs="?", default="outputs/ddpm-digits-cond")
    parser.add_argument("unconditional", nargs="?", default="outputs/ddpm-digits")
    parser.add_argument("--output_dir", default="benchmarks")
    parser.add_argument("--grid", default="docs/class-conditional-digits.png")
    parser.add_argument("--grid_scale", type=float, default=1.5)
    args = parser.parse_args()
    extractor = ClassifierFeatures()
    reference = reference_statistics(extractor, "digits", "train", 8, 1)
    conditional = HFDDPMPipeline.from_pretrained(args.conditional)
    labels = torch.arange(10).repeat_interleave(PER_LABEL)
    results = {}
    for w in SCALES:
        images = generate_samples(
            conditional, len(labels), 500, class_labels=labels.tolist(), guidance_scale=w, progress_bar=False
        )
        results[w] = score(images, labels, extractor, reference)
        print(f"w = {w}: label accuracy {results[w]['label_accuracy']:.3f}, fd_digits {results[w]['fd_digits']:.3f}")
    unconditional = HFDDPMPipeline.from_pretrained(args.unconditional)
    unconditional_fd = score(
        generate_samples(unconditional, 1000, 500, progress_bar=False), None, extractor, reference
    )
    print(f"unconditional default run: fd_digits {unconditional_fd['fd_digits']:.3f}")
    output = Path(args.output_dir)
    summary = {"guided": results, "unconditional_default_run": unconditional_fd, "per_label": PER_LABEL}
    (output / "guidance_study.json").write_text(json.dumps(summary, indent=2))
    plot(results, unconditional_fd["fd_digits"], output / "guidance_study.png")
    grid_labels = torch.arange(10).repeat_interleave(10).tolist()
    grid = generate_samples(conditional, 100, 100, class_labels=grid_labels, guidance_scale=args.grid_scale)
    sample_grid(to_pil(grid * 2 - 1), cols=10).save(args.grid)


if __name__ == "__main__":
    main()
