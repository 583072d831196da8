"""Inpainting the held-out digits: do the completions read as the right digit?

    accelerate launch examples/train_unconditional.py                                        # ~3 min
    accelerate launch examples/train_unconditional.py --class_conditional --output_dir outputs/ddpm-digits-cond
    python benchmarks/inpainting_study.py outputs/ddpm-digits outputs/ddpm-digits-cond

The 297 test digits, with the bottom half (rows 4–7) or the centre square (rows and columns 2–5) masked, are
completed once each (image i from seed i) and read by the shipped digits classifier; the score is the share read as
the true label. Rows, at equal network evaluations (RePaint's schedule: N steps, jumps of 10, 10 resamplings):

- hfddpm's `HFDDPMInpaintPipeline` on the unconditional default run, with the checkpoint's own DDIM (η = 0) and
  with its DDPM (β̃_t);
- stock diffusers' `RePaintPipeline` with `RePaintScheduler` (η = 0, its default) on the same UNet, the mask inverted
  (stock keeps where the mask is 1);
- for reference: the known pixels alone (masked region black), the uncut digits, and hfddpm on the class-
  conditional run given the true label (guidance 1), which stock cannot run.

Writes inpainting_study.json and docs/inpainting.png (a few digits: original, masked, completions).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import diffusers
import torch

from hfddpm import DDPMScheduler, HFDDPMInpaintPipeline
from hfddpm.evaluation.classifiers import labelled_images
from hfddpm.evaluation.features import ClassifierFeatures
from hfddpm.visualize import labelled_grid, to_pil

MASKS = {"bottom half": (slice(4, 8), slice(0, 8)), "centre square": (slice(2, 6), slice(2, 6))}
STEPS = (50, 100)


def generate_mask(name: str) -> torch.Tensor:
    """1 where pixels are generated (hfddpm's and diffusers' inpainting convention), shape (1, 1, 8, 8)."""
    mask = torch.zeros(1, 1, 8, 8)
    rows, cols = MASKS[name]
    mask[..., rows, cols] = 1
    return mask


def seeded(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(i) for i in range(n)]


def ours(pipeline: HFDDPMInpaintPipeline, images: torch.Tensor, mask: torch.Tensor, steps: int, **kwargs):
    return pipeline((images + 1) / 2, mask, steps, 10, 10, generator=seeded(len(images)), output_type="pt", **kwargs)


def stock(pipeline: diffusers.RePaintPipeline, images: torch.Tensor, mask: torch.Tensor, steps: int, **_):
    keep = (1 - mask).expand(len(images), -1, -1, -1)
    output = pipeline(images, keep, steps, 0.0, 10, 10, generator=seeded(len(images)), output_type="np")
    return diffusers.ImagePipelineOutput(images=torch.from_numpy(output.images).permute(0, 3, 1, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("unconditional", nargs="?", default="outputs/ddpm-digits")
    parser.add_argument("conditional", nargs="?", default="outputs/ddpm-digits-cond")
    parser.add_argument("--output_dir", default="benchmarks")
    parser.add_argument("--figure", default="docs/inpainting.png")
    args = parser.parse_args()
    classifier = ClassifierFeatures()
    images, labels = labelled_images("digits", "test")
    images = images * 2 - 1  # in [−1, 1], as the pipelines' samples

    def accuracy(completed: torch.Tensor) -> float:  # completions in [0, 1]
        return (classifier.probabilities(completed).argmax(1) == labels).double().mean().item()

    ddim = HFDDPMInpaintPipeline.from_pretrained(args.unconditional)
    ddpm = HFDDPMInpaintPipeline(unet=ddim.unet, scheduler=DDPMScheduler.from_config(ddim.scheduler.config))
    conditional = HFDDPMInpaintPipeline.from_pretrained(args.conditional)
    repaint = diffusers.RePaintPipeline(
        unet=ddim.unet, scheduler=diffusers.RePaintScheduler.from_config(ddim.scheduler.config)
    )
    for pipeline in (ddim, ddpm, conditional, repaint):
        pipeline.set_progress_bar_config(disable=True)
    results = {"uncut digits": accuracy((images + 1) / 2)}
    shown = {}
    for mask_name in MASKS:
        mask = generate_mask(mask_name)
        results[f"{mask_name}: known pixels only"] = accuracy((images * (1 - mask) - mask + 1) / 2)
        for steps in STEPS:
            runs = {
                "hfddpm, DDIM η=0": (ours, ddim, {}),
                "hfddpm, DDPM β̃": (ours, ddpm, {}),
                "stock RePaintPipeline": (stock, repaint, {}),
                "hfddpm, class-conditional given the label": (
                    ours,
                    conditional,
                    {"class_labels": labels, "guidance_scale": 1.0},
                ),
            }
            for name, (run, pipeline, options) in runs.items():
                start = time.perf_counter()
                completed = run(pipeline, images, mask, steps, **options).images
                key = f"{mask_name}: {name}, {steps} steps"
                results[key] = accuracy(completed)
                shown[(mask_name, name, steps)] = completed[:8]
                print(f"{key:75s} {results[key]:.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    Path(args.output_dir, "inpainting_study.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    figure_rows = [to_pil(images[:8], scale=6)]
    for mask_name in MASKS:
        mask = generate_mask(mask_name)
        figure_rows.append(to_pil(images[:8] * (1 - mask) - mask, scale=6))
        figure_rows.append(to_pil(shown[(mask_name, "hfddpm, DDPM β̃", STEPS[-1])] * 2 - 1, scale=6))
        figure_rows.append(to_pil(shown[(mask_name, "stock RePaintPipeline", STEPS[-1])] * 2 - 1, scale=6))
    rows = [list(row) for row in zip(*figure_rows, strict=True)]  # one digit per row
    labelled_grid(rows, ["digit", *(["masked", "hfddpm", "stock"] * len(MASKS))]).save(args.figure)


if __name__ == "__main__":
    main()
