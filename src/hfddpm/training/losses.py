"""The training objective: L_simple, min-SNR-γ weighting, and the hybrid loss of a learned variance."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..evaluation.likelihood import mean_over_pixels, vlb_terms
from ..schedulers.gaussian_diffusion import LEARNED_VARIANCES


@dataclass
class LossOutput:
    loss: torch.Tensor  # the scalar to minimise
    mse: torch.Tensor  # per-sample mean squared error of the prediction (unweighted)
    vlb: torch.Tensor | None  # per-sample term of the bound, bits/dim, when the variance is learned


class DiffusionLoss:
    """What the network minimises, per sample, averaged over the batch.

    - L_simple = ‖target − prediction‖² averaged over pixels (Ho et al. 2020, eq. 14), the target being ε, x_0 or v
      as the scheduler's `prediction_type` says (`GaussianDiffusionMixin.training_target`).
    - With `snr_gamma`, the min-SNR-γ weight of Hang et al. (2023, eq. 9): min(SNR_t, γ)/SNR_t for ε,
      min(SNR_t, γ)/(SNR_t + 1) for v and min(SNR_t, γ) for x_0.
    - When the scheduler's `reverse_variance` is learned, the hybrid loss of Nichol & Dhariwal (2021, §3.1):
      L_simple + λ L_vlb with λ = `vlb_weight` (0.001), the gradient of the mean stopped in L_vlb so that it trains
      the variance only. L_vlb = Σ_t L_t is estimated from the sample's uniformly drawn t as T · L_t.
    """

    def __init__(self, scheduler, snr_gamma: float | None = None, vlb_weight: float = 1e-3):
        if snr_gamma is not None and snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be positive (5 is the paper's choice), got {snr_gamma}")
        self.scheduler = scheduler
        self.snr_gamma = snr_gamma
        self.vlb_weight = vlb_weight
        self.learned_variance = scheduler.config.reverse_variance in LEARNED_VARIANCES

    def __call__(
        self,
        model_output: torch.Tensor,
        original_samples: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        noisy_samples: torch.Tensor,
    ) -> LossOutput:
        model_output = model_output.float()
        prediction, model_variance = self.scheduler.split_model_output(model_output, noisy_samples)
        target = self.scheduler.training_target(original_samples, noise, timesteps)
        mse = mean_over_pixels((prediction - target) ** 2)
        loss = mse * self.snr_weight(timesteps).to(mse) if self.snr_gamma is not None else mse
        vlb = None
        if self.learned_variance:
            frozen_mean = torch.cat([prediction.detach(), model_variance], dim=1)
            vlb = vlb_terms(self.scheduler, frozen_mean, original_samples, noisy_samples, timesteps)
            loss = loss + self.vlb_weight * self.scheduler.config.num_train_timesteps * vlb
        return LossOutput(loss=loss.mean(), mse=mse.detach(), vlb=None if vlb is None else vlb.detach())

    def snr_weight(self, timesteps: torch.Tensor) -> torch.Tensor:
        snr = self.scheduler.snr(timesteps)
        clipped = snr.clamp(max=self.snr_gamma)
        prediction_type = self.scheduler.config.prediction_type
        if prediction_type == "epsilon":
            return clipped / snr
        if prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped
