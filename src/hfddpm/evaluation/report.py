"""`evaluate`: the numbers of a checkpoint on a dataset, as a report (and `hfddpm evaluate` on the shell)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import durable
from ..conditioning import every_class
from ..eval_mode import eval_mode
from ..image_data import DIGITS, image_batches
from ..model_cards import is_hfddpm_card, rewrite_model_card
from ..models.latent_space import image_size
from ..pipelines import AutoencoderPipeline, HFDDPMPipeline
from ..pipelines.pipeline_hfddpm import DEFAULT_GUIDANCE_SCALE
from ..records import loaded_fingerprint, read_record
from .classifiers import CLASSIFIERS, DATASET_METRICS, classifier_metrics
from .features import DINOV2_DEFAULT, ClassifierFeatures, Dinov2Features, InceptionFeatures
from .frechet import FeatureStatistics, frechet_distance
from .likelihood import decoder_scale, latent_variational_bound, plot_bound_terms, variational_bound
from .sample_quality import class_scores, generate_samples, load_image_folder, reference_statistics

# What `evaluate` can measure, and what each is.
METRICS = {
    "bits_per_dim": "the variational bound on −log p(x_0) of the held-out images, bits/dim (lower is better)",
    "bits_per_dim_continuous": "the continuous-time bound (VDM) on −log p(x) of the held-out images, bits/dim",
    "nll_ode": "−log p(x) of the held-out images through the probability-flow ODE (Song et al. 2021), bits/dim",
    "fd_digits": "Fréchet distance in the shipped digits classifier's features (offline; lower is better)",
    "digits_scores": "digits classifier: share of the ten digits drawn, and mean confidence (higher is better)",
    "fd_fashion": "Fréchet distance in the shipped Fashion-MNIST classifier's features (offline; lower is better)",
    "fashion_scores": "Fashion-MNIST classifier: share of the ten classes drawn, mean confidence (higher is better)",
    "fid": "FID: Fréchet distance in Inception features, torchmetrics' network (needs local weights)",
    "fd_dinov2": "FD_DINOv2: Fréchet distance in DINOv2 ViT-L/14 features (needs local weights)",
}
SAMPLE_METRICS = ("fd_digits", "digits_scores", "fd_fashion", "fashion_scores", "fid", "fd_dinov2")
# The shipped classifiers' metrics: (its Fréchet distance, its scores) by classifier name (`classifiers.CLASSIFIERS`).
CLASSIFIER_METRICS = {name: classifier_metrics(name) for name in CLASSIFIERS}
# Training images that fit a latent pipeline's decoder σ (`decoder_scale`) for its bound.
FIT_IMAGES = 1000
# By default a dataset with a shipped classifier gets every offline metric, other data bits/dim (the others need
# downloaded weights).
OFFLINE_METRICS = {dataset: (*metrics, "bits_per_dim") for dataset, metrics in DATASET_METRICS.items()}
PARTS = ("metrics", "details")  # what a report adds to an earlier one of the same weights


@dataclass
class EvaluationReport:
    """What `evaluate` measured: `metrics` maps a metric's name to its value; `details` says how it was measured."""

    checkpoint: str
    dataset: str
    weights: str | None = None  # `loaded_fingerprint` of the networks measured (None for a folder of images)
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [f"{self.checkpoint} on {self.dataset}"]
        if "bits_per_dim" in self.metrics and "entropy_bits_per_dim" in self.details["bits_per_dim"]:
            bound = self.details["bits_per_dim"]
            lines.append(
                f"  bits/dim ≤ {self.metrics['bits_per_dim']:.4f} ± {bound['standard_error']:.4f} on {bound['split']} "
                f"({bound['num_images']} images): decoder {bound['decoder_bits_per_dim']:.4f} (σ "
                f"{bound['decoder_scale']:.4f}), −entropy {bound['entropy_bits_per_dim']:.4f}, latent prior "
                f"{bound['prior_bits_per_dim']:.4f} ({bound['num_timesteps']} terms each)"
            )
        elif "bits_per_dim" in self.metrics:
            bound = self.details["bits_per_dim"]
            lines.append(
                f"  bits/dim ≤ {self.metrics['bits_per_dim']:.4f} ± {bound['standard_error']:.4f} on {bound['split']} "
                f"({bound['num_images']} images, {bound['num_timesteps']} terms each, reverse variance "
                f"{bound['reverse_variance']}; L_T {bound['prior_bits_per_dim']:.1e}, L_0 "
                f"{bound['decoder_bits_per_dim']:.4f})"
            )
        for metric in [metric for metric in CONTINUOUS_METRICS if metric in self.metrics]:
            result = self.details[metric]
            lines.append(
                f"  {metric} {self.metrics[metric]:.4f} ± {result['standard_error']:.4f} on {result['split']} "
                f"({result['num_images']} images)"
            )
        if "samples" in self.details:
            samples = self.details["samples"]
            lines.append(f"  {samples['num_samples']} samples ({samples['source']}) against {samples['reference']}:")
            for name in [name for name in self.metrics if name not in ("bits_per_dim", *CONTINUOUS_METRICS)]:
                lines.append(f"    {name:22s} {self.metrics[name]:.4f}")
        return "\n".join(lines)


def evaluate(
    checkpoint: str | os.PathLike,
    dataset: str = DIGITS,
    metrics: tuple[str, ...] | list[str] | str | None = None,
    *,
    allow_pickle: bool = False,
    **options: Any,
) -> EvaluationReport:
    """Measure a pipeline checkpoint, or a folder of generated images, against a dataset (see `METRICS`).

    `checkpoint` is an `HFDDPMPipeline` (or stock DDPM/DDIM pipeline) folder or Hub repository, or a folder of
    generated images for the sample metrics; `allow_pickle` is `HFDDPMPipeline.from_pretrained`'s; `options` are
    those of `evaluate_pipeline`, which measures a local `AutoencoderPipeline` folder by its reconstructions.
    """
    device = torch.device(options.pop("device", None) or ("cuda" if torch.cuda.is_available() else "cpu"))
    options.update(name=str(checkpoint), device=device)
    index = Path(checkpoint) / "model_index.json"
    if os.path.isdir(checkpoint) and not index.is_file():
        return evaluate_pipeline(None, dataset, metrics, samples=load_image_folder(checkpoint), **options)
    autoencoder = index.is_file() and read_record(index).get("_class_name") == "AutoencoderPipeline"
    pipeline_class = AutoencoderPipeline if autoencoder else HFDDPMPipeline
    pipeline = pipeline_class.from_pretrained(checkpoint, allow_pickle=allow_pickle).to(device)
    return evaluate_pipeline(pipeline, dataset, metrics, **options)


def record_evaluation(folder: str | os.PathLike, report: EvaluationReport) -> bool:
    """Merge `report` into the `evaluation.json` of the run in `folder` (a metric measured again replaces its old
    value; numbers of other weights are dropped) and rewrite its model card, both atomically, when hfddpm wrote that
    card; False (nothing written) otherwise, e.g. for a folder someone else published. The caller holds the run's
    lock (`hfddpm.run_folder.run_lock`)."""
    folder = Path(folder)
    if not is_hfddpm_card(folder / "README.md"):
        return False
    path = folder / "evaluation.json"
    earlier = read_record(path)
    if earlier.get("weights") == report.weights:
        report = replace(report, **{part: {**earlier.get(part, {}), **getattr(report, part)} for part in PARTS})
    durable.write_text(path, report.to_json())
    return rewrite_model_card(folder)


def draw_samples(
    pipeline: HFDDPMPipeline,
    num_samples: int,
    batch_size: int,
    num_inference_steps: int | None,
    eta: float,
    seed: int,
    progress_bar: bool,
) -> tuple[torch.Tensor, str]:
    """The samples the sample metrics score, and how they were drawn; a class-conditional model draws every class
    alike (sample i of class i mod K) at the default guidance scale."""
    classes = pipeline.num_classes
    labels = None if classes is None else every_class(num_samples, classes)
    samples = generate_samples(
        pipeline, num_samples, batch_size, num_inference_steps, eta, seed, progress_bar, class_labels=labels
    )
    steps = pipeline.inference_steps(num_inference_steps)
    source = f"{type(pipeline.scheduler).__name__}, {steps} steps, eta {eta}, seed {seed}"
    if classes is not None:
        source += f", class i mod {classes} for sample i, guidance scale {DEFAULT_GUIDANCE_SCALE}"
    return samples, source


def feature_networks(
    metrics: tuple[str, ...],
    inception_weights: str | os.PathLike | None = None,
    dinov2_model: str | os.PathLike = DINOV2_DEFAULT,
    device: str | torch.device = "cpu",
) -> dict:
    """The feature network of each sample metric in `metrics` (one shipped classifier serves its distance and its
    scores); a missing or wrong weights file is refused here, in one line, before any long work."""
    networks = {}
    for name, pair in CLASSIFIER_METRICS.items():
        if set(pair) & set(metrics):
            networks.update(dict.fromkeys(pair, ClassifierFeatures(name, device)))
    if "fid" in metrics:
        networks["fid"] = InceptionFeatures(inception_weights, device)
    if "fd_dinov2" in metrics:
        networks["fd_dinov2"] = Dinov2Features(dinov2_model, device)
    return {metric: networks[metric] for metric in SAMPLE_METRICS if metric in metrics}


CONTINUOUS_METRICS = ("bits_per_dim_continuous", "nll_ode")


def held_out_batches(data: dict[str, Any], resolution: int, channels: int):
    """The first `max_images` images (all when None) of `data`'s split, in batches (`image_batches`)."""
    return image_batches(
        data["dataset"],
        data["split"],
        resolution,
        channels,
        data["batch_size"],
        data["image_column"],
        data["max_images"],
    )


def add_variational_bound(
    report: EvaluationReport,
    pipeline: HFDDPMPipeline,
    data: dict[str, Any],
    reference_split: str,
    reverse_variance: str | None,
    output_dir: str | os.PathLike | None,
    options: dict[str, Any],
) -> None:
    """`bits_per_dim` (see `evaluate_pipeline`) into `report`: the discrete-time bound on the 8-bit data, or a
    latent pipeline's VAE bound with the diffusion model as prior, its decoder's σ fitted on `reference_split`."""
    _, channels, resolution, _ = pipeline.sample_shape(1)
    bound_options = {
        "num_timesteps": options["num_timesteps"],
        "reverse_variance": reverse_variance,
        "generator": torch.Generator().manual_seed(options["seed"]),
        "progress_bar": options["progress_bar"],
    }
    if pipeline.vae is not None:
        vae = pipeline.vae
        channels, resolution = vae.config.in_channels, image_size(vae, resolution)
        fit = held_out_batches({**data, "split": reference_split, "max_images": FIT_IMAGES}, resolution, channels)
        batches = held_out_batches(data, resolution, channels)
        with eval_mode(pipeline.unet), eval_mode(vae):
            scale = decoder_scale(vae, fit, torch.Generator().manual_seed(options["seed"]))
            bound = latent_variational_bound(pipeline.unet, pipeline.scheduler, vae, batches, scale, **bound_options)
    else:
        batches = held_out_batches(data, resolution, channels)
        with eval_mode(pipeline.unet):  # the discretised decoder: the bound on the 8-bit data
            bound = variational_bound(pipeline.unet, pipeline.scheduler, batches, **bound_options)
        if output_dir is not None:
            plot_bound_terms(bound, Path(output_dir) / "bits_per_dim_terms.png")
    report.metrics["bits_per_dim"] = bound.bits_per_dim
    report.details["bits_per_dim"] = {"split": data["split"], **asdict(bound)}


def add_continuous_time_metrics(
    report: EvaluationReport,
    pipeline: HFDDPMPipeline,
    metrics: list[str],
    data: dict[str, Any],
    num_probes: int,
    options: dict[str, Any],
) -> None:
    """`metrics` of `CONTINUOUS_METRICS` (see `evaluate_pipeline`) of a pixel-space pipeline into `report`."""
    from .continuous_likelihood import continuous_bound, ode_likelihood  # scipy's solver: imported when asked for

    if pipeline.vae is not None:
        raise ValueError(f"{report.checkpoint}: {metrics} measure a pixel-space pipeline; drop them for this one")
    _, channels, resolution, _ = pipeline.sample_shape(1)
    batches = held_out_batches(data, resolution, channels)
    generator, progress_bar = torch.Generator().manual_seed(options["seed"]), options["progress_bar"]
    model, scheduler = pipeline.unet, pipeline.scheduler
    with eval_mode(model):
        for metric in metrics:
            if metric == "nll_ode":
                result = ode_likelihood(model, scheduler, batches, num_probes, generator, progress_bar=progress_bar)
            else:
                num_times = options["num_timesteps"] or 100
                result = continuous_bound(model, scheduler, batches, num_times, generator, progress_bar)
            report.metrics[metric] = result.bits_per_dim
            report.details[metric] = {"split": data["split"], **asdict(result)}


def evaluate_pipeline(
    pipeline: HFDDPMPipeline | None,
    dataset: str = DIGITS,
    metrics: tuple[str, ...] | list[str] | str | None = None,
    *,
    samples: torch.Tensor | None = None,
    name: str = "pipeline",
    split: str = "test",
    reference_split: str = "train",
    image_column: str | None = None,
    max_images: int | None = None,
    num_timesteps: int | None = 100,
    reverse_variance: str | None = None,
    num_probes: int = 1,
    num_samples: int = 1000,
    num_inference_steps: int | None = None,
    eta: float = 0.0,
    batch_size: int = 250,
    inception_weights: str | os.PathLike | None = None,
    dinov2_model: str | os.PathLike = DINOV2_DEFAULT,
    device: str | torch.device = "cpu",
    seed: int = 0,
    output_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress_bar: bool = True,
) -> EvaluationReport:
    """Measure a pipeline (on `device`) against a dataset, or given `samples` (images in [0, 1]) without one.

    Args:
        dataset: "digits" (built in), an image folder, a `save_to_disk` folder or a Hub dataset name.
        metrics: names from `METRICS`; by default `OFFLINE_METRICS` of the dataset (the digits, Fashion-MNIST), else
            bits_per_dim.
        split: the held-out split of ``bits_per_dim``; the first `max_images` of it (all when None).
        reference_split: the split the samples are compared with (its statistics are cached).
        num_timesteps: ``bits_per_dim`` terms per image, stratified over t: an unbiased estimate with its standard
            error; None (or T or more) computes all T, the exact sum, in T/`num_timesteps` times the time.
            `reverse_variance` overrides the checkpoint's σ²_t. For ``bits_per_dim_continuous``, the strata of
            t ∈ [0, 1] per image (100 when None).
        num_probes: ``nll_ode``'s solves per image, each with its own dequantization and Hutchinson probe.
        num_samples, num_inference_steps, eta: the samples drawn with the pipeline's scheduler for the sample
            metrics, image i seeded with `seed` + i; `num_inference_steps` None is the pipeline's own count.
        inception_weights, dinov2_model: where ``fid`` and ``fd_dinov2`` find their networks.
        output_dir: when given, `evaluation.json` and the plot of the bound's terms are written there.
        cache_dir: where reference statistics are cached (default `frechet.statistics_cache_dir()`).

    An `AutoencoderPipeline` is measured by its reconstructions (`reconstruction.evaluate_autoencoder`): of the first
    `max_images` (default `num_samples`) images of `split`, their PSNR and sample metrics; bits_per_dim is left out.
    """
    if metrics is None:
        metrics = OFFLINE_METRICS.get(dataset, ("bits_per_dim",))
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if unknown := sorted(set(metrics) - set(METRICS)):
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    if isinstance(pipeline, AutoencoderPipeline):
        from .reconstruction import evaluate_autoencoder

        return evaluate_autoencoder(
            pipeline,
            dataset,
            [metric for metric in metrics if metric != "bits_per_dim"],
            split=split,
            reference_split=reference_split,
            num_images=max_images or num_samples,
            batch_size=batch_size,
            image_column=image_column,
            name=name,
            inception_weights=inception_weights,
            dinov2_model=dinov2_model,
            device=device,
            output_dir=output_dir,
            cache_dir=cache_dir,
            progress_bar=progress_bar,
        )
    if pipeline is None and (needs_pipeline := [m for m in metrics if m not in SAMPLE_METRICS]):
        raise ValueError(f"{name} holds images, not a pipeline: {needs_pipeline} need a checkpoint")
    report = EvaluationReport(name, dataset, pipeline and loaded_fingerprint(pipeline))
    # The networks first: a missing or wrong weights file is refused before the long work.
    features = feature_networks(metrics, inception_weights, dinov2_model, device)
    scorers = {name: features.pop(scores) for name, (_, scores) in CLASSIFIER_METRICS.items() if scores in features}

    data = {
        "dataset": dataset,
        "split": split,
        "max_images": max_images,
        "batch_size": batch_size,
        "image_column": image_column,
    }
    options = {"num_timesteps": num_timesteps, "seed": seed, "progress_bar": progress_bar}
    if "bits_per_dim" in metrics:
        add_variational_bound(report, pipeline, data, reference_split, reverse_variance, output_dir, options)
    if continuous := [metric for metric in metrics if metric in CONTINUOUS_METRICS]:
        add_continuous_time_metrics(report, pipeline, continuous, data, num_probes, options)

    if any(metric in metrics for metric in SAMPLE_METRICS):
        if samples is None:
            samples, source = draw_samples(
                pipeline, num_samples, batch_size, num_inference_steps, eta, seed, progress_bar
            )
        else:
            source = f"images in {name}"
        resolution, channels = samples.shape[-1], samples.shape[1]
        report.details["samples"] = {
            "num_samples": len(samples),
            "source": source,
            "reference": f"{dataset} {reference_split} at {channels}×{resolution}×{resolution}",
        }

        for metric, extractor in features.items():
            reference = reference_statistics(
                extractor, dataset, reference_split, resolution, channels, image_column, None, batch_size, cache_dir
            )
            generated = torch.cat([extractor(batch).cpu() for batch in samples.split(batch_size)])
            report.metrics[metric] = frechet_distance(FeatureStatistics.of(generated), reference)
            report.details[metric] = {"extractor": extractor.name, "num_reference": reference.count}
        for classifier_name, scorer in scorers.items():  # scores, not distances
            probabilities = torch.cat([scorer.probabilities(batch).cpu() for batch in samples.split(batch_size)])
            report.metrics.update(class_scores(probabilities, classifier_name))

    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        durable.write_text(Path(output_dir) / "evaluation.json", report.to_json())
    return report
