"""The variational bound on −log p_θ(x_0) over a dataset (Ho et al. 2020, eq. 5), term by term, and its figure.

L = L_T + Σ_t L_t, each term a closed form of `hfddpm.schedulers.bound_terms`, estimated per image from one x_t per
timestep (or per stratum of timesteps). Every term is reported in bits per dimension: nats summed over pixels,
divided by their number and by log 2. For 8-bit images scaled to [−1, 1] the decoder is the discretised Gaussian of
Ho et al. (eq. 13), and the bound is an upper bound on the negative log-likelihood of the discrete data; the
continuous decoder bounds the density instead. A class-conditional model is evaluated as its unconditional model
ε_θ(x_t, t, ∅) (`hfddpm.conditioning.predict`): the bound is on its marginal p_θ(x_0).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..conditioning import predict
from ..models.latent_space import shift
from ..schedulers.bound_terms import Decoder, discretized_gaussian_log_likelihood, prior_term, vlb_terms
from ..schedulers.gaussian_diffusion import reverse_variance_of

if TYPE_CHECKING:
    from diffusers import ModelMixin, SchedulerMixin

    from ..schedulers import DDPMScheduler


def standard_error(values: torch.Tensor) -> float:
    """The standard error of the mean of `values` (NaN for a single one)."""
    return (values.std() / math.sqrt(values.numel())).item() if values.numel() > 1 else math.nan


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


def bound_scheduler(scheduler: SchedulerMixin, reverse_variance: str | None = None) -> DDPMScheduler:
    """hfddpm's `DDPMScheduler` with `scheduler`'s noise schedule and prediction type and the reverse variance to
    evaluate (by default the one `scheduler` samples with, see `reverse_variance_of`)."""
    from ..schedulers import DDPMScheduler

    accepted = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"variance_type"}  # it follows
    config = {key: value for key, value in scheduler.config.items() if key in accepted}
    config["reverse_variance"] = reverse_variance or reverse_variance_of(scheduler.config)
    return DDPMScheduler.from_config(config)


@torch.no_grad()
def variational_bound(
    model: ModelMixin,
    scheduler: SchedulerMixin,
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
    """
    scheduler = bound_scheduler(scheduler, reverse_variance)
    num_train_timesteps = scheduler.config.num_train_timesteps
    strata = timestep_strata(num_train_timesteps, num_timesteps)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    term_sums = torch.zeros(num_train_timesteps, dtype=torch.float64)
    term_counts = torch.zeros(num_train_timesteps, dtype=torch.float64)
    per_image, priors = [], []
    total = len(batches) * len(strata) if hasattr(batches, "__len__") else None
    progress = tqdm(total=total, desc="Variational bound", unit="term-batch", disable=not progress_bar)
    for batch in batches:
        original = batch.to(device=model.device, dtype=torch.float64)
        bound, prior = diffusion_terms(model, scheduler, original, strata, decoder, generator, term_sums, term_counts)
        per_image.append(bound)
        priors.append(prior)
        progress.update(len(strata))
    progress.close()
    if not per_image:
        raise ValueError("no images to evaluate the bound on; check the dataset and its split")

    per_image, priors = torch.cat(per_image), torch.cat(priors)
    seen = term_counts > 0
    means = term_sums[seen] / term_counts[seen]
    return VariationalBound(
        bits_per_dim=per_image.mean().item(),
        standard_error=standard_error(per_image),
        prior_bits_per_dim=priors.mean().item(),
        decoder_bits_per_dim=(term_sums[0] / term_counts[0]).item(),
        timesteps=seen.nonzero().flatten().tolist(),
        terms_bits_per_dim=means.tolist(),
        num_images=len(per_image),
        num_timesteps=len(strata),
        reverse_variance=scheduler.config.reverse_variance,
        decoder=Decoder(decoder).value,
    )


def diffusion_terms(
    model: ModelMixin,
    scheduler: DDPMScheduler,
    original: torch.Tensor,
    strata: list[tuple[int, int]],
    decoder: str,
    generator: torch.Generator,
    term_sums: torch.Tensor,
    term_counts: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's bound L_T + Σ_strata (hi − lo) L_t and its L_T, in bits/dim on the CPU, for a float64 batch
    `original`; each L_t drawn is added to `term_sums` and counted in `term_counts` (the per-timestep means)."""
    device = original.device
    prior = prior_term(scheduler, original).cpu()
    bound = prior.clone()
    for low, high in strata:
        timesteps = torch.randint(low, high, (len(original),), generator=generator)
        noise = torch.randn(original.shape, generator=generator, dtype=torch.float64).to(device)
        noisy = scheduler.add_noise(original, noise, timesteps.to(device))
        model_output = predict(model, noisy.to(model.dtype), timesteps.to(device)).to(torch.float64)
        terms = vlb_terms(scheduler, model_output, original, noisy, timesteps.to(device), decoder).cpu()
        bound += (high - low) * terms
        term_sums.index_add_(0, timesteps, terms)
        term_counts.index_add_(0, timesteps, torch.ones_like(terms))
    return bound, prior


@dataclass
class LatentVariationalBound:
    """A latent diffusion model's bound on −log p(x) over a dataset, in bits per pixel dimension, and its three
    parts (see `latent_variational_bound`)."""

    bits_per_dim: float  # mean over images of the three parts' sum
    standard_error: float  # of that mean, over images
    decoder_bits_per_dim: float  # E_q[−log p(x|E)], the discretised Gaussian decoder on the 8-bit pixels
    entropy_bits_per_dim: float  # −H(q(E|x))
    prior_bits_per_dim: float  # E_q[−log p_θ(E)]: the diffusion's bound on z, with the change of variables
    decoder_scale: float  # σ of p(x|E) = N(D(E), σ² I)
    num_images: int
    num_timesteps: int  # strata of the diffusion's bound per image
    reverse_variance: str


# The σ a Gaussian decoder on 8-bit pixels in [−1, 1] may take: from an eighth of a bin to the data's whole range,
# 6 % apart (a σ off by half a step costs about 0.001 bits/dim).
DECODER_SCALES = torch.logspace(-3, 0, 121, dtype=torch.float64)


def decoder_nll_by_scale(images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Σ over images and pixels of −log p(x|E) under the discretised Gaussian N(D(E), σ²) (Ho et al. 2020, eq. 13),
    for each σ of `DECODER_SCALES`, in nats."""
    images, reconstruction = images.double(), reconstruction.double()
    return torch.stack(
        [-discretized_gaussian_log_likelihood(images, reconstruction, scale.log()).sum() for scale in DECODER_SCALES]
    )


@torch.no_grad()
def decoder_scale(vae: ModelMixin, batches: Iterable[torch.Tensor], generator: torch.Generator | None = None) -> float:
    """σ of a Gaussian decoder p(x|E) = N(D(E), σ² I) fitted by maximum likelihood to `batches` of images (the
    training images), E ~ q(E|x): the σ of `DECODER_SCALES` that gives their 8-bit pixels the most mass. An
    autoencoder's decoder gives a mean D(E) only; the bound needs a likelihood. Not the root mean square error: the
    end bins take everything below −1 or above 1, so a mean beyond them costs a black or white pixel nothing."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    nll = torch.zeros_like(DECODER_SCALES)
    for batch in batches:
        images = batch.to(vae.device)
        latents = vae.encode(images.to(vae.dtype)).latent_dist.sample(generator)
        nll += decoder_nll_by_scale(images, vae.decode(latents).sample).cpu()
    return DECODER_SCALES[nll.argmin()].item()


LATENT_BOUND_PARTS = ("decoder", "entropy", "prior")  # `latent_bound_terms`' parts, in order


def latent_bound_terms(
    images: torch.Tensor,
    reconstruction: torch.Tensor,
    log_variance: torch.Tensor,
    prior_bits_per_dim: torch.Tensor,
    decoder_scale: float | torch.Tensor,
    scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three parts of the VAE bound with a diffusion prior (Vahdat et al. 2021), per image, in bits per
    pixel dimension, for 8-bit `images` in [−1, 1], their `reconstruction` D(E) from one E ~ q(E|x) = N(μ, diag σ²)
    whose log σ² is `log_variance`, and the diffusion's bound on z = s·(E − b), `prior_bits_per_dim` per latent
    dimension:

    - −log p(x|E) under the discretised Gaussian N(D(E), `decoder_scale`²) (Ho et al. 2020, eq. 13);
    - −H(q(E|x)) = −Σ ½ log(2πe σ²), in closed form;
    - −log p_θ(E) = −log p_θ(z) − d log s, the change of variables to the d-dimensional z.
    """
    log_scale = torch.as_tensor(decoder_scale, dtype=images.dtype, device=images.device).log().expand_as(images)
    decoder = -discretized_gaussian_log_likelihood(images, reconstruction, log_scale).flatten(1).sum(1)
    entropy = (0.5 * (math.log(2 * math.pi) + 1) + 0.5 * log_variance).flatten(1).sum(1)
    dims = log_variance[0].numel()
    prior = prior_bits_per_dim.to(decoder) * dims * math.log(2.0) - dims * math.log(scaling_factor)
    pixels_log2 = images[0].numel() * math.log(2.0)
    return decoder / pixels_log2, -entropy / pixels_log2, prior / pixels_log2


@torch.no_grad()
def latent_variational_bound(
    model: ModelMixin,
    scheduler: SchedulerMixin,
    vae: ModelMixin,
    batches: Iterable[torch.Tensor],
    decoder_scale: float,
    num_timesteps: int | None = None,
    reverse_variance: str | None = None,
    generator: torch.Generator | None = None,
    progress_bar: bool = True,
) -> LatentVariationalBound:
    """Estimate the bound of a latent diffusion model on −log p(x), in bits/dim over `batches` of 8-bit images in
    [−1, 1]: the VAE bound with the diffusion model as the prior (Vahdat et al. 2021, §2),

        −log p(x) ≤ E_q[−log p(x|E)] − H(q(E|x)) + E_q[−log p_θ(E)].

    Per image, one E ~ q(E|x) from `generator` and the parts of `latent_bound_terms`, with the decoder's σ
    `decoder_scale` and −log p_θ(z) bounded by `variational_bound`'s terms on z with the continuous decoder
    (stratified as `num_timesteps` says)."""
    scheduler = bound_scheduler(scheduler, reverse_variance)
    strata = timestep_strata(scheduler.config.num_train_timesteps, num_timesteps)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    term_sums = torch.zeros(scheduler.config.num_train_timesteps, dtype=torch.float64)
    term_counts = torch.zeros_like(term_sums)
    scale, offset = vae.config.scaling_factor, shift(vae)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in LATENT_BOUND_PARTS}
    progress = tqdm(desc="Variational bound", unit="term-batch", disable=not progress_bar)
    for batch in batches:
        images = batch.to(vae.device, torch.float64)
        posterior = vae.encode(images.to(vae.dtype)).latent_dist
        latents = posterior.sample(generator).double()
        reconstruction = vae.decode(latents.to(vae.dtype)).sample.double()
        z = ((latents - offset) * scale).to(model.device)
        bound, _ = diffusion_terms(model, scheduler, z, strata, "continuous", generator, term_sums, term_counts)
        terms = latent_bound_terms(images, reconstruction, posterior.logvar.double(), bound, decoder_scale, scale)
        for name, bits in zip(LATENT_BOUND_PARTS, terms, strict=True):
            parts[name].append(bits.cpu())
        progress.update(len(strata))
    progress.close()
    if not parts["decoder"]:
        raise ValueError("no images to evaluate the bound on; check the dataset and its split")
    parts = {name: torch.cat(values) for name, values in parts.items()}
    total = parts["decoder"] + parts["entropy"] + parts["prior"]
    return LatentVariationalBound(
        bits_per_dim=total.mean().item(),
        standard_error=standard_error(total),
        decoder_bits_per_dim=parts["decoder"].mean().item(),
        entropy_bits_per_dim=parts["entropy"].mean().item(),
        prior_bits_per_dim=parts["prior"].mean().item(),
        decoder_scale=decoder_scale,
        num_images=len(total),
        num_timesteps=len(strata),
        reverse_variance=scheduler.config.reverse_variance,
    )


def plot_bound_terms(bound: VariationalBound, path: str | Path, title: str | None = None) -> Path:
    """Save the figure readers of the papers expect (Nichol & Dhariwal 2021, Fig. 2): L_t against t on a log
    scale, and the share of the bound accumulated from t = 0 upwards."""
    from matplotlib.figure import Figure  # no pyplot: no backend to choose, no global figure to close

    timesteps = torch.tensor(bound.timesteps)
    terms = torch.tensor(bound.terms_bits_per_dim)
    figure = Figure(figsize=(10, 3.6))
    left, right = figure.subplots(1, 2)
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
    return path
