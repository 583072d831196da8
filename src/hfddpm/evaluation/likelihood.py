"""The variational bound on −log p_θ(x_0) (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, eqs. 4–6), term by term.

L = L_T + Σ_{t>1} L_{t−1} + L_0 with L_T = KL(q(x_T|x_0) ‖ N(0, I)),
L_{t−1} = KL(q(x_{t−1}|x_t, x_0) ‖ p_θ(x_{t−1}|x_t)) and L_0 = −log p_θ(x_0|x_1). In diffusers' 0-based timesteps
the term of timestep t is a KL for t ≥ 1 and the decoder L_0 for t = 0; L_T is `prior_term`.

Every term is reported in bits per dimension: nats summed over pixels, divided by their number and by log 2. For
8-bit images scaled to [−1, 1] the decoder is the discretised Gaussian of Ho et al. (eq. 13), and the bound is an
upper bound on the negative log-likelihood of the discrete data; the continuous decoder bounds the density instead.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..schedulers.gaussian_diffusion import per_sample, reverse_variance_of


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
    """KL(N(μ_1, σ_1²) ‖ N(μ_2, σ_2²)) = ½ (log σ_2² − log σ_1² + (σ_1² + (μ_1 − μ_2)²)/σ_2² − 1), in nats.

    Elementwise; the Gaussians are given by their means and log-variances.
    """
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


def prior_term(scheduler, original_samples: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_T|x_0) ‖ N(0, I)) with q(x_T|x_0) = N(√ᾱ_T x_0, (1 − ᾱ_T) I), per sample, in bits/dim.

    No parameter enters it; for the standard schedules it is ≈ 0 (ᾱ_T ≈ 4·10⁻⁵ for DDPM's linear schedule).
    """
    last = scheduler.config.num_train_timesteps - 1
    mean, variance = scheduler.marginal_mean_variance(original_samples, last)
    zero = torch.zeros_like(mean)
    kl = normal_kl(mean, torch.log(variance).expand_as(mean), zero, zero)
    return mean_over_pixels(kl) / math.log(2.0)


def vlb_terms(
    scheduler,
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


def timestep_strata(num_train_timesteps: int, num_timesteps: int | None = None) -> list[tuple[int, int]]:
    """The [lo, hi) ranges of t that `variational_bound` draws one timestep from, per image.

    All T timesteps one by one when `num_timesteps` is None or ≥ T; otherwise the decoder's t = 0 alone and
    `num_timesteps` − 1 near-equal slices of [1, T). Weighting the term drawn from a slice by its length makes the
    sum an unbiased, stratified estimate of Σ_t L_t.
    """
    if num_timesteps is None or num_timesteps >= num_train_timesteps:
        return [(t, t + 1) for t in range(num_train_timesteps)]
    if num_timesteps < 2:
        raise ValueError(
            f"num_timesteps must be at least 2 (the decoder and one slice of the KL terms), got {num_timesteps}"
        )
    edges = torch.linspace(1, num_train_timesteps, num_timesteps).round().long().tolist()
    return [(0, 1), *zip(edges[:-1], edges[1:], strict=True)]


@dataclass
class VariationalBound:
    """The bound L over a dataset, in bits per dimension (see the module docstring)."""

    bits_per_dim: float  # mean over images of L_T + Σ_t L_t
    standard_error: float  # of that mean, over images (the draws of t and x_t included)
    prior_bits_per_dim: float  # mean L_T
    decoder_bits_per_dim: float  # mean L_0
    timesteps: list[int]  # the timesteps evaluated, ascending
    terms_bits_per_dim: list[float]  # mean L_t at each of them
    num_images: int
    num_timesteps: int  # strata per image: T for the exact sum over t
    reverse_variance: str
    decoder: str

    def to_dict(self) -> dict:
        return asdict(self)


def bound_scheduler(scheduler, reverse_variance: str | None = None):
    """hfddpm's `DDPMScheduler` with `scheduler`'s noise schedule and prediction type and the reverse variance to
    evaluate (by default the one `scheduler` samples with, see `reverse_variance_of`)."""
    from ..schedulers import DDPMScheduler

    accepted = inspect.signature(DDPMScheduler.__init__).parameters
    config = {key: value for key, value in scheduler.config.items() if key in accepted}
    config["reverse_variance"] = reverse_variance or reverse_variance_of(scheduler.config)
    return DDPMScheduler.from_config(config)


@torch.no_grad()
def variational_bound(
    model,
    scheduler,
    batches: Iterable[torch.Tensor],
    num_timesteps: int | None = None,
    reverse_variance: str | None = None,
    decoder: str = Decoder.DISCRETIZED,
    generator: torch.Generator | None = None,
    progress_bar: bool = True,
) -> VariationalBound:
    """Estimate the bound on −log p_θ(x_0) in bits/dim over `batches` of images in [−1, 1].

    Each image gets L_T exactly and, for each stratum of `timestep_strata`, one t drawn uniformly in it, one
    x_t ~ q(x_t|x_0), and the term L_t weighted by the stratum's length: the exact sum over all T terms when
    `num_timesteps` is None, an unbiased estimate otherwise. The network runs in its own dtype; the terms are
    computed in float64. Noise and timesteps come from `generator` (seed 0 by default), drawn on the CPU, so the
    estimate does not depend on the device.

    Args:
        model: a `UNet2DModel` (or a model called the same way) trained with `scheduler`'s noise schedule.
        scheduler: its DDPM or DDIM scheduler (any config with `num_train_timesteps` and the beta schedule).
        reverse_variance: the σ²_t of p_θ to evaluate (`ReverseVariance`), by default the scheduler's own.
        decoder: see `Decoder`.
    """
    scheduler = bound_scheduler(scheduler, reverse_variance)
    num_train_timesteps = scheduler.config.num_train_timesteps
    strata = timestep_strata(num_train_timesteps, num_timesteps)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    device, dtype = model.device, model.dtype
    term_sums = torch.zeros(num_train_timesteps, dtype=torch.float64)
    term_counts = torch.zeros(num_train_timesteps, dtype=torch.float64)
    per_image, priors = [], []
    total = len(batches) * len(strata) if hasattr(batches, "__len__") else None
    progress = tqdm(total=total, desc="Variational bound", unit="term-batch", disable=not progress_bar)
    for batch in batches:
        original = batch.to(device=device, dtype=torch.float64)
        prior = prior_term(scheduler, original).cpu()
        bound = prior.clone()
        for low, high in strata:
            timesteps = torch.randint(low, high, (len(original),), generator=generator)
            noise = torch.randn(original.shape, generator=generator, dtype=torch.float64).to(device)
            noisy = scheduler.add_noise(original, noise, timesteps.to(device))
            model_output = model(noisy.to(dtype), timesteps.to(device)).sample.to(torch.float64)
            terms = vlb_terms(scheduler, model_output, original, noisy, timesteps.to(device), decoder).cpu()
            bound += (high - low) * terms
            term_sums.index_add_(0, timesteps, terms)
            term_counts.index_add_(0, timesteps, torch.ones_like(terms))
            progress.update(1)
        per_image.append(bound)
        priors.append(prior)
    progress.close()
    if not per_image:
        raise ValueError("no images to evaluate the bound on; check the dataset and its split")

    per_image, priors = torch.cat(per_image), torch.cat(priors)
    seen = term_counts > 0
    means = term_sums[seen] / term_counts[seen]
    return VariationalBound(
        bits_per_dim=per_image.mean().item(),
        standard_error=(per_image.std() / math.sqrt(len(per_image))).item() if len(per_image) > 1 else math.nan,
        prior_bits_per_dim=priors.mean().item(),
        decoder_bits_per_dim=(term_sums[0] / term_counts[0]).item(),
        timesteps=seen.nonzero().flatten().tolist(),
        terms_bits_per_dim=means.tolist(),
        num_images=len(per_image),
        num_timesteps=len(strata),
        reverse_variance=scheduler.config.reverse_variance,
        decoder=Decoder(decoder).value,
    )


def plot_bound_terms(bound: VariationalBound, path: str | Path, title: str | None = None) -> Path:
    """Save the figure readers of the papers expect (Nichol & Dhariwal 2021, Fig. 2): L_t against t on a log
    scale, and the share of the bound accumulated from t = 0 upwards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timesteps = torch.tensor(bound.timesteps)
    terms = torch.tensor(bound.terms_bits_per_dim)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.semilogy(timesteps, terms.clamp(min=1e-8), lw=1)
    left.set(xlabel="timestep t", ylabel="L_t (bits/dim)", title="terms of the bound")
    # With strata the terms stand for their slices: weight each by the width of the t it represents.
    widths = torch.diff(torch.cat([timesteps, torch.tensor([timesteps[-1] + 1])])).double()
    share = torch.cumsum(terms * widths, 0)
    share = share / share[-1]
    right.plot(timesteps, share, lw=1)
    right.set(xlabel="timestep t", ylabel="share of Σ L_t", title="cumulative share", ylim=(0, 1.02))
    figure.suptitle(
        title
        or f"{bound.bits_per_dim:.3f} ± {bound.standard_error:.3f} bits/dim ({bound.reverse_variance}, "
        f"{bound.num_images} images, {bound.num_timesteps} terms)"
    )
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
