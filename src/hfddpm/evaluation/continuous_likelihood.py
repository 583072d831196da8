"""Likelihoods in continuous time, of any pixel-space pipeline: the continuous-time bound (Kingma et al. 2021) and
the exact log-likelihood through the probability-flow ODE (Song et al. 2021, App. D.2).

A pipeline's scheduler defines the continuous process by its table of ᾱ (`TableSchedule`: a continuous-time model's
own schedule, or a discrete DDPM's, whose network is then called at fractional timesteps). Data are 8-bit images in
[−1, 1]. A class-conditional network is evaluated as its unconditional model ε_θ(x_t, t, ∅).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp
from tqdm.auto import tqdm

from ..conditioning import predict
from ..schedulers.continuous_time import (
    NoiseSchedule,
    TableSchedule,
    alpha_sigma,
    diffusion_loss,
    discrete_decoder_nll,
    network_timestep,
    prior_kl,
    probability_flow_drift,
)
from ..schedulers.gaussian_diffusion import convert_prediction
from .likelihood import standard_error


@dataclass
class ContinuousBound:
    """The continuous-time bound on −log p(x) of the 8-bit data, in bits/dim (means over images)."""

    bits_per_dim: float
    standard_error: float  # over images (the draws of t and ε included)
    diffusion_bits_per_dim: float
    prior_bits_per_dim: float
    decoder_bits_per_dim: float
    num_images: int
    num_times: int  # strata of t per image


@dataclass
class ODELikelihood:
    """−log p(x) of the 8-bit data through the probability-flow ODE, in bits/dim (Song et al. 2021, App. D.2)."""

    bits_per_dim: float
    standard_error: float  # over images and probes
    num_images: int
    num_probes: int  # Hutchinson probes per image (0: the exact trace)
    function_evaluations: float  # of the network per solve, mean over batches


def epsilon_model(model, num_train_timesteps: int, channels: int):
    """ε_θ(z, t) at continuous t, in float64: the network at the label (T − 1) t, its first `channels` outputs."""

    def epsilon(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        label = network_timestep(t, num_train_timesteps).to(z.device, torch.float32).expand(len(z))
        return predict(model, z.to(model.dtype), label)[:, :channels].double()

    return epsilon


@torch.no_grad()
def continuous_bound(
    model,
    scheduler,
    batches: Iterable[torch.Tensor],
    num_times: int = 100,
    generator: torch.Generator | None = None,
    progress_bar: bool = True,
) -> ContinuousBound:
    """The bound E_t[½ γ'(t) ‖ε − ε̂‖²] + KL(q(z_1|x) ‖ N(0, I)) − E log p(x|z_0) (VDM, eqs. 10, 17, and its
    discrete decoder) per image, with one t in each of `num_times` equal strata of [0, 1] (an unbiased,
    stratified estimate of the integral), noise from `generator` (seed 0 by default) on the CPU."""
    schedule = TableSchedule.of_scheduler(scheduler).to(model.device)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    ends = schedule.end_points(model.device)
    parts = []
    for batch in tqdm(batches, desc="Continuous-time bound", disable=not progress_bar):
        original = batch.to(model.device, torch.float64)
        epsilon = epsilon_model(model, scheduler.config.num_train_timesteps, original.shape[1])
        diffusion = torch.zeros(len(original), dtype=torch.float64, device=model.device)
        for k in range(num_times):
            t = ((k + torch.rand(len(original), generator=generator, dtype=torch.float64)) / num_times).to(
                model.device
            )
            gamma, gamma_derivative = schedule.gamma_and_derivative(t)
            alpha, sigma = alpha_sigma(gamma.detach())
            noise = torch.randn(original.shape, generator=generator, dtype=torch.float64).to(model.device)
            noisy = alpha.reshape(-1, 1, 1, 1) * original + sigma.reshape(-1, 1, 1, 1) * noise
            diffusion += diffusion_loss(noise, epsilon(noisy, t), gamma_derivative.detach()) / num_times
        decoder_noise = torch.randn(original.shape, generator=generator, dtype=torch.float64).to(model.device)
        decoder = discrete_decoder_nll(original, decoder_noise, ends[0])
        parts.append(torch.stack([diffusion, prior_kl(original, ends[1]), decoder], 1).cpu())
    if not parts:
        raise ValueError("no images to evaluate the bound on; check the dataset and its split")
    parts = torch.cat(parts) / (batch[0].numel() * math.log(2.0))
    total = parts.sum(1)
    return ContinuousBound(
        total.mean().item(),
        standard_error(total),
        *parts.mean(0).tolist(),
        len(total),
        num_times,
    )


def probability_flow(
    epsilon,
    schedule: NoiseSchedule,
    points: torch.Tensor,
    span: tuple[float, float],
    vectors: list[torch.Tensor] | torch.Tensor | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The probability-flow ODE dz/dt = v(z, t) (`probability_flow_drift`, Song et al. 2021, eq. 13) integrated from
    z = `points` over the times `span` by scipy's RK45 at tolerances `rtol`, `atol` (score_sde's), with
    ∫ Σ_u uᵀ(∂v/∂z)u dt over the `vectors` u (each shaped like one point or like `points`) alongside when given:
    z at the end, that integral per point (None without vectors), and the network evaluations taken."""
    shape, count = points.shape, len(points) if vectors is not None else 0
    evaluations = 0

    def derivative(t: float, state: np.ndarray) -> np.ndarray:
        nonlocal evaluations
        evaluations += 1
        z = torch.from_numpy(state[: state.size - count]).reshape(shape).to(points)
        time = torch.full((len(points),), t, dtype=torch.float64, device=points.device)
        gamma, gamma_derivative = schedule.gamma_and_derivative(time)
        _, sigma = alpha_sigma(gamma.detach())
        with torch.enable_grad():
            z.requires_grad_(True)
            drift = probability_flow_drift(
                z, epsilon(z, time), gamma_derivative.detach().reshape(-1, 1, 1, 1), sigma.reshape(-1, 1, 1, 1)
            )
            traces = [
                (torch.autograd.grad(drift, z, u.expand(shape), retain_graph=True)[0] * u).flatten(1).sum(1)
                for u in (vector.reshape(-1, *shape[1:]) for vector in (vectors if vectors is not None else []))
            ]
        parts = [drift.detach().flatten()] + ([sum(traces).detach()] if traces else [])
        return torch.cat(parts).cpu().numpy()

    start = torch.cat([points.detach().double().flatten(), points.new_zeros(count, dtype=torch.float64)])
    solution = solve_ivp(derivative, span, start.cpu().numpy(), rtol=rtol, atol=atol, method="RK45")
    end = torch.from_numpy(solution.y[:, -1]).to(points.device)
    integral = end[end.numel() - count :] if vectors is not None else None
    return end[: end.numel() - count].reshape(shape), integral, evaluations


def ode_log_density(
    epsilon,
    schedule: NoiseSchedule,
    points: torch.Tensor,
    probes: torch.Tensor | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[torch.Tensor, int]:
    """log p_0(x) per point, in nats, and the network evaluations taken: the probability-flow ODE from z(0) = x to
    t = 1 (`probability_flow`) and log p_0(x) = log N(z(1); 0, I) + ∫₀¹ ∇·v(z(t), t) dt (Song et al. 2021, eq. 39).
    The divergence is Hutchinson's estimate εᵀ(∂v/∂z)ε with one probe per point held for the whole path (`probes`,
    shaped like `points`), or exact (D vector–Jacobian products) without probes."""
    size = points[0].numel()
    vectors = [probes] if probes is not None else torch.eye(size, dtype=points.dtype, device=points.device)
    end, integral, evaluations = probability_flow(epsilon, schedule, points, (0.0, 1.0), vectors, rtol, atol)
    prior = -0.5 * (end.flatten(1) ** 2).sum(1) - 0.5 * size * math.log(2 * math.pi)
    return prior + integral, evaluations


@torch.no_grad()
def sample_probability_flow(
    pipeline, batch_size: int, generator: torch.Generator | None = None, rtol: float = 1e-5, atol: float = 1e-5
) -> tuple[torch.Tensor, int]:
    """Samples of a pixel-space pipeline by the probability-flow ODE from N(0, I) at t = 1 to t = 0 with RK45
    (`probability_flow`; Song et al. 2021, §4.3) on the continuous schedule of its scheduler's table, then the
    denoised x̂_0 = (z_0 − σ_0 ε̂)/α_0; and the network evaluations taken."""
    model, scheduler = pipeline.unet, pipeline.scheduler
    schedule = TableSchedule.of_scheduler(scheduler).to(model.device)
    shape = pipeline.sample_shape(batch_size)
    noise = torch.randn(shape, generator=generator, dtype=torch.float64).to(model.device)
    epsilon = epsilon_model(model, scheduler.config.num_train_timesteps, shape[1])
    z, _, evaluations = probability_flow(epsilon, schedule, noise, (1.0, 0.0), rtol=rtol, atol=atol)
    start = torch.zeros(batch_size, dtype=torch.float64, device=model.device)
    alpha_bar = torch.sigmoid(-schedule(start)).reshape(-1, 1, 1, 1)
    return convert_prediction(epsilon(z, start), z, alpha_bar, "epsilon", "sample"), evaluations + 1


def ode_likelihood(
    model,
    scheduler,
    batches: Iterable[torch.Tensor],
    num_probes: int = 1,
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    progress_bar: bool = True,
) -> ODELikelihood:
    """−log p(x) of 8-bit images x = 2k/255 − 1 in bits/dim through the ODE (`ode_log_density`) of the
    continuous process `scheduler`'s table defines, with uniform dequantization (Song et al. 2021, App. D.2) over
    each level's bin, the one the discretised decoders use: v = x + (2/255)(u − ½), u ~ U[0, 1)^D, and
    −log₂ P(k) ≤ E_u[−log₂ p(v)] + log₂(255/2) per dimension. (Song et al.'s v = (k + u)/256 puts the levels 0 and
    255, the background of most images, on their bins' edges, where a model sharp at the levels has little density.)
    Each of `num_probes` solves per image draws its own u and Gaussian probe from `generator` (seed 0)."""
    schedule = TableSchedule.of_scheduler(scheduler).to(model.device)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    per_image, evaluations = [], []
    for batch in tqdm(batches, desc="ODE likelihood", disable=not progress_bar):
        levels = ((batch.double() + 1) * 127.5).round() / 127.5 - 1
        epsilon = epsilon_model(model, scheduler.config.num_train_timesteps, batch.shape[1])
        nats = []
        for _ in range(num_probes):
            uniform = torch.rand(batch.shape, generator=generator, dtype=torch.float64)
            probes = torch.randn(batch.shape, generator=generator, dtype=torch.float64).to(model.device)
            points = (levels + (uniform - 0.5) / 127.5).to(model.device)
            log_density, count = ode_log_density(epsilon, schedule, points, probes, rtol, atol)
            nats.append(-log_density.cpu())
            evaluations.append(count)
        per_image.append(torch.stack(nats, 1))
    if not per_image:
        raise ValueError("no images to evaluate the likelihood on; check the dataset and its split")
    per_image = torch.cat(per_image) / (batch[0].numel() * math.log(2.0)) + math.log2(127.5)
    return ODELikelihood(
        per_image.mean().item(),
        standard_error(per_image),
        len(per_image),
        num_probes,
        float(np.mean(evaluations)),
    )
