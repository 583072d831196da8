"""Analytic-DPM (Bao et al. 2022): measure Γ_t once per model, then sample with the optimal reverse variance.

The optimal variance of every step needs one number per timestep, Γ_t = E_{q(x_t)} ‖ε_θ(x_t, t)‖²/d (eq. 8): the
mean squared noise prediction, which `estimate_analytic_gamma` measures by Monte Carlo over training images.
`fit_analytic_variance` stores it in the scheduler's config (`analytic_gamma`) with ``reverse_variance="analytic"``,
so a saved pipeline keeps it; `GaussianDiffusionMixin.analytic_variance` turns it into σ*² for any pair of steps.
A class-conditional model's Γ_t is measured on its unconditional prediction ε_θ(x_t, t, ∅).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..conditioning import predict
from ..eval_mode import eval_mode
from . import as_hfddpm_scheduler
from .scheduling_ddim import DDIMScheduler
from .scheduling_ddpm import DDPMScheduler

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, ModelMixin


@torch.no_grad()
def estimate_analytic_gamma(
    model: ModelMixin,
    scheduler: DDPMScheduler | DDIMScheduler,
    batches: Iterable[torch.Tensor],
    generator: torch.Generator | None = None,
    progress_bar: bool = True,
) -> torch.Tensor:
    """Γ_t = E‖ε_θ(x_t, t)‖²/d for every training timestep t, float64 of shape (T,) (Bao et al. 2022, eq. 8).

    Each image x_0 of `batches` (in [−1, 1]) is noised once per t, x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, and the network's
    prediction, converted to ε̂ from the scheduler's prediction type, is squared and averaged: an unbiased
    estimate whose error shrinks as 1/√(images · d). A few hundred images suffice (Bao et al. use a few thousand
    for CIFAR-10; the error they report is small beside the variance's range).
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    num_timesteps = scheduler.config.num_train_timesteps
    sums = torch.zeros(num_timesteps, dtype=torch.float64)
    count = 0
    device, dtype = model.device, model.dtype
    total = len(batches) * num_timesteps if hasattr(batches, "__len__") else None
    progress = tqdm(total=total, desc="Estimating Γ_t", unit="term-batch", disable=not progress_bar)
    for batch in batches:
        original = batch.to(device=device, dtype=torch.float64)
        for t in range(num_timesteps):
            timesteps = torch.full((len(original),), t, device=device)
            noise = torch.randn(original.shape, generator=generator, dtype=torch.float64).to(device)
            noisy = scheduler.add_noise(original, noise, timesteps)
            output = predict(model, noisy.to(dtype), timesteps).to(torch.float64)
            prediction, _ = scheduler.split_model_output(output, noisy)
            epsilon = scheduler.convert_prediction(prediction, noisy, timesteps, "epsilon")
            sums[t] += epsilon.pow(2).flatten(1).mean(1).sum().item()
            progress.update(1)
        count += len(original)
    progress.close()
    if count == 0:
        raise ValueError("no images to estimate Γ_t on; check the dataset and its split")
    return sums / count


def fit_analytic_variance(
    pipeline: DiffusionPipeline,
    batches: Iterable[torch.Tensor],
    generator: torch.Generator | None = None,
    progress_bar: bool = True,
) -> DiffusionPipeline:
    """Give `pipeline` (in place, and return it) an hfddpm DDPM or DDIM scheduler that samples with Analytic-DPM's
    variance: ``reverse_variance="analytic"`` and the `analytic_gamma` measured on `batches`. Its scheduler must be
    a DDPM or DDIM scheduler, hfddpm's or stock (which becomes hfddpm's of the same name)."""
    scheduler = as_hfddpm_scheduler(pipeline.scheduler)
    if scheduler is None:
        raise ValueError(
            f"Analytic-DPM needs a DDPM or DDIM scheduler, not {type(pipeline.scheduler).__name__}; set "
            "pipeline.scheduler = hfddpm.DDIMScheduler.from_config(pipeline.scheduler.config) first"
        )
    with eval_mode(pipeline.unet):
        gamma = estimate_analytic_gamma(pipeline.unet, scheduler, batches, generator, progress_bar)
    pipeline.scheduler = type(scheduler).from_config(
        scheduler.config, reverse_variance="analytic", analytic_gamma=gamma.tolist()
    )
    return pipeline
