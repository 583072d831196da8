"""The Langevin corrector of predictor–corrector sampling for variance-preserving models (Song et al. 2021)."""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor


def langevin_corrector_step(
    sample: torch.Tensor,
    epsilon: torch.Tensor,
    alpha_bar: torch.Tensor,
    alpha: torch.Tensor,
    snr: float,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """One Langevin step at the noise level of x_t, with the step size set by a signal-to-noise ratio r.

    Song et al. (2021), Algorithm 5 (corrector of the VP SDE):
        s = −ε_θ(x_t, t)/√(1 − ᾱ_t)              the score ∇ log q_t(x_t)
        z ~ N(0, I),  step = 2 α_t (r ‖z‖ / ‖s‖)²
        x_t ← x_t + step · s + √(2 step) · z
    with α_t = 1 − β_t; r = 0.16 is their choice for VP models on CIFAR-10. As in their code, ‖z‖ and ‖s‖ are
    averaged over the batch, so one step size serves every image: a step size that followed each image's own ‖s‖
    would bias the chain's stationary law away from q_t (by 2/d of the variance, whatever the step), at the price
    of an image depending on its batch.
    """
    score = -epsilon / (1 - alpha_bar) ** 0.5
    noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
    score_norm = score.flatten(1).norm(dim=1).mean().clamp(min=1e-12)
    noise_norm = noise.flatten(1).norm(dim=1).mean()
    step = 2 * alpha * (snr * noise_norm / score_norm) ** 2
    return sample + step * score + (2 * step) ** 0.5 * noise
