"""The terms of the variational bound on −log p_θ(x_0) (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, eqs. 4–6).

L = L_T + Σ_{t>1} L_{t−1} + L_0 with L_T = KL(q(x_T|x_0) ‖ N(0, I)),
L_{t−1} = KL(q(x_{t−1}|x_t, x_0) ‖ p_θ(x_{t−1}|x_t)) and L_0 = −log p_θ(x_0|x_1). In diffusers' 0-based timesteps
the term of timestep t is a KL for t ≥ 1 and the decoder L_0 for t = 0; L_T is `prior_term`. Every term is in bits
per dimension: nats summed over pixels, divided by their number and by log 2.

Training (the hybrid and vlb losses) and evaluation (`hfddpm.evaluation.variational_bound`, the sum over a dataset)
both use these closed forms.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import TYPE_CHECKING

import torch

from .gaussian_diffusion import LEARNED_VARIANCES, per_sample, reverse_variance_of

if TYPE_CHECKING:
    from .scheduling_ddim import DDIMScheduler
    from .scheduling_ddpm import DDPMScheduler


class Decoder(str, Enum):
    """The decoder p_θ(x_0|x_1) = N(μ_θ(x_1, 1), σ_1²) of the last term L_0.

    - ``discretized``: the mass of the pixel's bin, for 8-bit data in [−1, 1] (Ho et al. 2020, eq. 13).
    - ``continuous``: the Gaussian density, for data with a density (the bound then bounds −log q(x_0)).
    """

    DISCRETIZED = "discretized"
    CONTINUOUS = "continuous"


def normal_kl(
    mean1: torch.Tensor, log_variance1: torch.Tensor, mean2: torch.Tensor, log_variance2: torch.Tensor
) -> torch.Tensor:
    """KL(N(μ_1, σ_1²) ‖ N(μ_2, σ_2²)) = ½ (log σ_2² − log σ_1² + (σ_1² + (μ_1 − μ_2)²)/σ_2² − 1), elementwise, in
    nats."""
    return 0.5 * (
        log_variance2
        - log_variance1
        + torch.exp(log_variance1 - log_variance2)
        + (mean1 - mean2) ** 2 * torch.exp(-log_variance2)
        - 1.0
    )


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
    """log N(x; μ, σ²) = −½ (log 2π + log σ² + (x − μ)²/σ²), elementwise, in nats."""
    return -0.5 * (math.log(2 * math.pi) + log_variance + (x - mean) ** 2 * torch.exp(-log_variance))


def _log_normal_cdf_difference(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """log(Φ(upper) − Φ(lower)) for lower < upper, accurate in both tails (the upper tail is mirrored)."""
    mirror = lower > 0
    lower, upper = torch.where(mirror, -upper, lower), torch.where(mirror, -lower, upper)
    log_upper, log_lower = torch.special.log_ndtr(upper), torch.special.log_ndtr(lower)
    return log_upper + torch.log(-torch.expm1(log_lower - log_upper))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, num_levels: int = 256
) -> torch.Tensor:
    """log p(x) for data on `num_levels` levels scaled to [−1, 1] under N(mean, exp(log_scale)²) (Ho et al. 2020,
    eq. 13): the Gaussian mass of x's bin [x − δ, x + δ], δ = 1/(num_levels − 1), with the first bin extended to −∞
    and the last to +∞. Elementwise, in nats.
    """
    half_bin = 1.0 / (num_levels - 1)
    inv_scale = torch.exp(-log_scale)
    lower = torch.where(x <= -1 + half_bin, -math.inf, (x - half_bin - mean) * inv_scale)
    upper = torch.where(x >= 1 - half_bin, math.inf, (x + half_bin - mean) * inv_scale)
    return _log_normal_cdf_difference(lower, upper).clamp(min=math.log(1e-12))


def mean_over_pixels(values: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return values.flatten(1).mean(1)


def prior_term(scheduler: DDPMScheduler | DDIMScheduler, original_samples: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T|x_0) ‖ N(0, I)) with q(x_T|x_0) = N(√ᾱ_T x_0, (1 − ᾱ_T) I), per sample, in bits/dim.

    No parameter enters it; for the standard schedules it is ≈ 0 (ᾱ_T ≈ 4·10⁻⁵ for DDPM's linear schedule).
    """
    last = scheduler.config.num_train_timesteps - 1
    mean, variance = scheduler.marginal_mean_variance(original_samples, last)
    zero = torch.zeros_like(mean)
    kl = normal_kl(mean, torch.log(variance).expand_as(mean), zero, zero)
    return mean_over_pixels(kl) / math.log(2.0)


def vlb_terms(
    scheduler: DDPMScheduler | DDIMScheduler,
    model_output: torch.Tensor,
    original_samples: torch.Tensor,
    noisy_samples: torch.Tensor,
    timesteps: torch.Tensor,
    decoder: str = Decoder.DISCRETIZED,
) -> torch.Tensor:
    """Per-sample term of the bound at each sample's timestep, in bits per dimension.

    For t ≥ 1 the KL between the posterior q(x_{t−1}|x_t, x_0) and p_θ(x_{t−1}|x_t) = N(μ̃(x_t, x̂_0), σ²_t), for
    t = 0 the decoder NLL −log p_θ(x_0|x_1) (`Decoder`). x̂_0 comes unclipped from `model_output` (in the
    scheduler's prediction type) and σ²_t from its `reverse_variance`; the computation runs in `model_output`'s
    dtype (at least float32).
    """
    decoder = Decoder(decoder)
    prediction, model_variance = scheduler.split_model_output(model_output, noisy_samples)
    pred_original = scheduler.convert_prediction(prediction, noisy_samples, timesteps, "sample")
    model_mean, _ = scheduler.posterior_mean_variance(pred_original, noisy_samples, timesteps)
    model_log_variance = per_sample(
        scheduler.reverse_log_variance(timesteps, timesteps - 1, model_variance), noisy_samples
    ).to(model_mean.dtype)
    true_mean, true_variance = scheduler.posterior_mean_variance(original_samples, noisy_samples, timesteps)
    kl = normal_kl(true_mean, torch.log(true_variance.clamp(min=1e-20)), model_mean, model_log_variance)
    if decoder == Decoder.DISCRETIZED:
        decoder_nll = -discretized_gaussian_log_likelihood(original_samples, model_mean, 0.5 * model_log_variance)
    else:
        decoder_nll = -gaussian_log_likelihood(original_samples, model_mean, model_log_variance)
    is_decoder = (timesteps == 0).reshape(-1, *([1] * (kl.ndim - 1)))
    return mean_over_pixels(torch.where(is_decoder, decoder_nll, kl)) / math.log(2.0)


def _fixed_variances(scheduler: DDPMScheduler) -> tuple[torch.Tensor, ...]:
    """σ²_t (the scheduler's fixed variance, β̃_t for a learned one), β̃_t, ᾱ_t and ᾱ_{t−1} of every t, in float64."""
    timesteps = torch.arange(scheduler.config.num_train_timesteps)
    choice = reverse_variance_of(scheduler.config)
    choice = "fixed_small" if choice in LEARNED_VARIANCES else choice
    variance = scheduler.reverse_log_variance(timesteps, timesteps - 1, reverse_variance=choice).double().exp()
    alpha_bar, alpha_bar_prev = scheduler.alpha_bar(timesteps).double(), scheduler.alpha_bar(timesteps - 1).double()
    posterior = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
    return variance, posterior, alpha_bar, alpha_bar_prev


def constant_terms(scheduler: DDPMScheduler) -> torch.Tensor:
    """L_t where μ_θ = μ̃ (x̂_0 = x_0), in nats per dimension at every timestep: the part of each term that neither
    data nor network changes, ½ (log σ²_t/β̃_t + β̃_t/σ²_t − 1) for t ≥ 1 and ½ log 2πσ²_0 for the continuous decoder
    (`normal_kl` and `gaussian_log_likelihood` with equal means). Float64."""
    variance, posterior, _, _ = _fixed_variances(scheduler)
    kl = 0.5 * (variance.log() - posterior.log() + posterior / variance - 1)
    return torch.cat([0.5 * (math.log(2 * math.pi) + variance[:1].log()), kl[1:]])


def normal_data_mean_terms(scheduler: DDPMScheduler) -> torch.Tensor:
    """E‖μ̃_t − μ_θ‖²/(2σ²_t) per dimension at every timestep, for data x_0 ~ N(0, I) under its exact denoiser
    x̂_0 = √ᾱ_t x_t: the part of L_t through which data and network enter it (`constant_terms` is the rest), LSGM's
    likelihood-weighted denoising error under its Normal assumption, to which it samples t in proportion for
    variance reduction (Vahdat et al. 2021). With μ̃_t − μ_θ = c_t (x_0 − x̂_0), c_t = √ᾱ_{t−1} β_t/(1 − ᾱ_t) (Ho et
    al. 2020, eq. 7; c_0 = 1, the decoder's mean being x̂_0) and E(x_0 − x̂_0)² = 1 − ᾱ_t,

        E‖μ̃_t − μ_θ‖²/(2σ²_t) = ½ c_t² (1 − ᾱ_t)/σ²_t.

    Float64, one value per timestep."""
    variance, _, alpha_bar, alpha_bar_prev = _fixed_variances(scheduler)
    weight = alpha_bar_prev.sqrt() * (1 - alpha_bar / alpha_bar_prev) / (1 - alpha_bar)
    return 0.5 * weight**2 * (1 - alpha_bar) / variance
