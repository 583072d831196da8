"""An autoencoder measured: how closely it reconstructs images (PSNR), and how far its reconstructions are from the
data in the sample metrics' features — the floor a latent diffusion model on it can reach, since its samples are
decoded latents."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import durable
from ..image_data import image_batches
from ..pipelines.pipeline_autoencoder import AutoencoderPipeline
from ..records import loaded_fingerprint
from .report import EvaluationReport, evaluate_pipeline


def psnr(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Each image's peak signal-to-noise ratio in dB, 10 log₁₀(1/MSE) on the [0, 1] scale of 8-bit pixels."""
    mse = ((images - reconstructions) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp(min=1e-10))


def evaluate_autoencoder(
    pipeline: AutoencoderPipeline,
    dataset: str,
    metrics: tuple[str, ...] | list[str] = (),
    *,
    split: str = "test",
    reference_split: str = "test",
    num_images: int = 1000,
    batch_size: int = 250,
    image_column: str | None = None,
    name: str = "autoencoder",
    **options,
) -> EvaluationReport:
    """The mean PSNR of the reconstructions of the first `num_images` images of `split`, and the sample `metrics` of
    those reconstructions against `reference_split` (`evaluate_pipeline`'s sample metrics, which `options` go to)."""
    config = pipeline.vae.config
    batches = image_batches(
        dataset, split, config.sample_size, config.in_channels, batch_size, image_column, num_images
    )
    images = torch.cat(list(batches))
    reconstructions = torch.cat([pipeline.reconstruct(batch).cpu() for batch in images.split(batch_size)])
    samples, output_dir = (reconstructions + 1) / 2, options.pop("output_dir", None)
    options.update(name=name, reference_split=reference_split, batch_size=batch_size, image_column=image_column)
    report = evaluate_pipeline(None, dataset, list(metrics), samples=samples, **options)
    if "samples" in report.details:
        report.details["samples"]["source"] = f"reconstructions of the first {len(images)} {split} images"
    report.weights = loaded_fingerprint(pipeline)
    report.metrics["psnr"] = float(psnr(images, reconstructions).mean())
    report.details["psnr"] = {"split": split, "num_images": len(images), "reconstructed": "through the encoder's mean"}
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        durable.write_text(Path(output_dir) / "evaluation.json", report.to_json())
    return report
