"""Sample-quality metrics: Fréchet distances to a reference split, and the digits classifier's verdict on samples.

Samples are images in [0, 1] of shape (N, C, H, W): drawn from a pipeline (`generate_samples`) or read from a
folder (`load_image_folder`). Reference images are the dataset's, preprocessed as for training at the samples'
resolution; their feature statistics are cached (`frechet.cached_statistics`), keyed by dataset, split, resolution,
channels, count and feature extractor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..arguments import check_fits_in_memory
from ..image_data import channels_of_mode, image_batches, read_image, to_eight_bit
from .frechet import FeatureStatistics, cached_statistics

if TYPE_CHECKING:
    from ..pipelines import HFDDPMPipeline
    from .features import ClassifierFeatures, Dinov2Features, InceptionFeatures

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# A digit class counts as drawn when it gets at least half of its fair share of the samples.
COVERAGE_SHARE = 0.05


def generate_samples(
    pipeline: HFDDPMPipeline,
    num_samples: int,
    batch_size: int = 250,
    num_inference_steps: int | None = None,
    eta: float = 0.0,
    seed: int = 0,
    progress_bar: bool = True,
    class_labels: Sequence[int | str] | None = None,
    **call_options: Any,
) -> torch.Tensor:
    """`num_samples` images in [0, 1], on the CPU. Image i is drawn from its own generator seeded with seed + i (and
    of class `class_labels[i]` when given), so the samples do not depend on the batch size; `num_inference_steps`
    None is the pipeline's own count (50 unless it is a distilled student). `call_options` go to the pipeline's
    call (e.g. corrector_steps, guidance_scale)."""
    _, channels, size, _ = pipeline.sample_shape(1)
    check_fits_in_memory(num_samples * channels * size * size * 4, f"{num_samples} samples")
    pipeline.set_progress_bar_config(disable=True)  # one bar for every batch, counting steps
    batches = range(0, num_samples, batch_size)
    steps = pipeline.inference_steps(num_inference_steps)
    progress = tqdm(total=len(batches) * steps, desc="Sampling", unit="step", disable=not progress_bar)
    call_options.update(num_inference_steps=num_inference_steps, eta=eta, output_type="pt")

    def count_step(pipe, index, timestep, tensors):
        progress.update(1)
        return {}

    images = []
    for start in batches:
        count = min(batch_size, num_samples - start)
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(count)]
        if class_labels is not None:
            call_options["class_labels"] = list(class_labels[start : start + count])
        output = pipeline(batch_size=count, generator=generators, callback_on_step_end=count_step, **call_options)
        images.append(output.images.float().cpu())
    progress.close()
    return torch.cat(images)


def load_image_folder(folder: str | os.PathLike, channels: int | None = None) -> torch.Tensor:
    """Every image file in `folder` (sorted by name) as a tensor in [0, 1]; all must have one size.

    `channels` 1 or 3 converts them to grey or RGB; by default the first image's mode decides.
    """
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}; point at a folder of samples")
    arrays = []
    for path in paths:
        with read_image(path, str(path)) as image:
            if channels is None:
                channels = channels_of_mode(image.mode)
            arrays.append(np.asarray(to_eight_bit(image, channels, str(path)), dtype=np.uint8))
        if arrays[-1].shape != arrays[0].shape:
            raise ValueError(f"{path} is {arrays[-1].shape[:2]}, the first image {arrays[0].shape[:2]}; use one size")
    stacked = torch.from_numpy(np.stack(arrays)).float() / 255
    return stacked.unsqueeze(1) if stacked.ndim == 3 else stacked.permute(0, 3, 1, 2)


def reference_statistics(
    extractor: ClassifierFeatures | InceptionFeatures | Dinov2Features,
    dataset: str,
    split: str,
    resolution: int,
    channels: int,
    image_column: str | None = None,
    max_images: int | None = None,
    batch_size: int = 250,
    cache_dir: str | os.PathLike | None = None,
) -> FeatureStatistics:
    """Feature statistics of a dataset split preprocessed to (channels, resolution, resolution), cached."""
    key = {
        "dataset": str(Path(dataset).resolve()) if os.path.isdir(dataset) else dataset,
        "modified": os.stat(dataset).st_mtime_ns if os.path.isdir(dataset) else None,
        "split": split,
        "image_column": image_column,
        "resolution": resolution,
        "channels": channels,
        "max_images": max_images,
        "extractor": extractor.name,
        "preprocessing": f"hfddpm-{__version__}-resize-centre-crop",
    }

    def compute() -> FeatureStatistics:
        batches = image_batches(dataset, split, resolution, channels, batch_size, image_column, max_images)
        features = [extractor((batch + 1) / 2).double().cpu() for batch in batches]
        return FeatureStatistics.of(torch.cat(features))

    return cached_statistics(key, compute, cache_dir)


def class_scores(probabilities: torch.Tensor, name: str = "digits") -> dict[str, float]:
    """What the classifier `name` ("digits", "fashion") says of samples, from its softmax outputs (N, K).

    - ``<name>_class_coverage``: the fraction of the K classes that get at least `COVERAGE_SHARE` of the samples'
      predicted labels (1.0 for the real test split; a generator that draws only some classes scores lower).
    - ``<name>_confidence``: the mean of the classifier's top probability (clear images score near 1).
    """
    predicted = probabilities.argmax(dim=1)
    shares = torch.bincount(predicted, minlength=probabilities.shape[1]).double() / len(predicted)
    return {
        f"{name}_class_coverage": (shares >= COVERAGE_SHARE).double().mean().item(),
        f"{name}_confidence": probabilities.max(dim=1).values.double().mean().item(),
    }
