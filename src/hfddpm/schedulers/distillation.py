"""Closed forms of few-step distillation: the deterministic DDIM step in x-space, progressive distillation's target
and loss weight, and the consistency model's boundary condition.

Notation: α_t = √ᾱ_t and σ_t = √(1 − ᾱ_t), so x_t = α_t x_0 + σ_t ε; every argument named `alpha_bar_*` broadcasts
against the samples (`gaussian_diffusion.per_sample`), and ᾱ = 1 (σ = 0) stands for x_0 itself.
"""

from __future__ import annotations

import torch


def ddim_step(
    sample: torch.Tensor, original: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor
) -> torch.Tensor:
    """The deterministic DDIM step x_t → x_s from a prediction x̂_0 (Song et al. 2021, eq. 12 with σ = 0):

    x_s = α_s x̂_0 + σ_s ε̂,  ε̂ = (x_t − α_t x̂_0)/σ_t.

    With ε̂ re-derived from x̂_0 this is also the step `HFDDPMPipeline` takes after clipping x̂_0 (σ_t > 0 here).
    """
    noise = (sample - alpha_bar_t**0.5 * original) / (1 - alpha_bar_t) ** 0.5
    return alpha_bar_s**0.5 * original + (1 - alpha_bar_s) ** 0.5 * noise


def progressive_distillation_target(
    sample: torch.Tensor, sample_after_two_steps: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor
) -> torch.Tensor:
    """The x̃ with which one DDIM step from x_t lands on the teacher's two-step result x_s (Salimans & Ho 2022,
    Algorithm 2, the line that solves for x̃):

    x̃ = (x_s − (σ_s/σ_t) x_t) / (α_s − (σ_s/σ_t) α_t),

    so that `ddim_step(x_t, x̃, ᾱ_t, ᾱ_s)` = x_s exactly. s is the student's next timestep (t″ = t − 1/N of the
    paper), not the teacher's midpoint t′; the denominator is positive because the SNR grows from t to s.
    """
    ratio = ((1 - alpha_bar_s) / (1 - alpha_bar_t)) ** 0.5
    return (sample_after_two_steps - ratio * sample) / (alpha_bar_s**0.5 - ratio * alpha_bar_t**0.5)


def truncated_snr_weight(alpha_bar: torch.Tensor) -> torch.Tensor:
    """max(SNR(t), 1) with SNR = ᾱ/(1 − ᾱ): the "truncated SNR" weighting of an x-space loss (Salimans & Ho 2022,
    §4), which keeps the weight of the noisiest timesteps at 1 where plain SNR weighting would give them none."""
    return (alpha_bar / (1 - alpha_bar)).clamp(min=1)


def consistency_function(
    sample: torch.Tensor, original: torch.Tensor, c_skip: torch.Tensor, c_out: torch.Tensor
) -> torch.Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x̂_0(x_t, t) (Song et al. 2023, eq. 3; Luo et al. 2023, eq. 9); with
    c_skip(t_min) = 1 and c_out(t_min) = 0 it meets the boundary condition f(x, t_min) = x exactly."""
    return c_skip * sample + c_out * original
