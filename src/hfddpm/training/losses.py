"""The training objective: L_simple, min-SNR-γ weighting, the hybrid loss of a learned variance, and the bound."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from ..schedulers import DDPMScheduler
from ..schedulers.bound_terms import Decoder, mean_over_pixels, vlb_terms
from ..schedulers.gaussian_diffusion import LEARNED_VARIANCES


class LossType(str, Enum):
    """What the network minimises (Nichol & Dhariwal 2021, §3.1 and §3.3).

    - ``simple``: L_simple = ‖target − prediction‖² (Ho et al. 2020, eq. 14), for a fixed reverse variance.
    - ``hybrid``: L_simple + λ L_vlb with the mean's gradient stopped in L_vlb, so that the bound trains the
      variance only; for a learned variance.
    - ``vlb``: the bound L_vlb = Σ_t L_t alone, training mean and variance; best with importance sampling of t
      (`TimestepSampling.LOSS_SECOND_MOMENT`), whose uniform estimate is too noisy.
    """

    SIMPLE = "simple"
    HYBRID = "hybrid"
    VLB = "vlb"


@dataclass
class LossOutput:
    loss: torch.Tensor  # the scalar to minimise: the per-sample losses, importance-weighted, averaged
    per_sample: torch.Tensor  # each sample's unweighted loss (what a loss-aware timestep sampler learns from)
    mse: torch.Tensor  # per-sample mean squared error of the prediction (unweighted)
    vlb: torch.Tensor | None  # per-sample term L_t of the bound, bits/dim, when the loss uses it
    timesteps: torch.Tensor  # each sample's t


class DiffusionLoss:
    """What the network minimises, per sample, averaged over the batch.

    - L_simple = ‖target − prediction‖² averaged over pixels (Ho et al. 2020, eq. 14), the target being ε, x_0 or v
      as the scheduler's `prediction_type` says (`GaussianDiffusionMixin.training_target`).
    - With `snr_gamma`, the min-SNR-γ weight of Hang et al. (2023, eq. 9): min(SNR_t, γ)/SNR_t for ε,
      min(SNR_t, γ)/(SNR_t + 1) for v and min(SNR_t, γ) for x_0.
    - ``hybrid``: L_simple + λ L_vlb with λ = `vlb_weight` (0.001) on the whole bound, the mean's gradient stopped
      in L_vlb. L_vlb = Σ_t L_t is estimated from the sample's t as T · L_t (λ · L_t alone would make the variance
      term T times too weak).
    - ``vlb``: T · L_t, the same estimate of the bound, with gradients to mean and variance.

    `loss_type` defaults to ``hybrid`` when the scheduler's `reverse_variance` is learned and ``simple`` otherwise;
    `decoder` is the bound's L_0 (`Decoder`): discretised for 8-bit images, continuous for data with a density.
    """

    def __init__(
        self,
        scheduler: DDPMScheduler,
        loss_type: str | None = None,
        snr_gamma: float | None = None,
        vlb_weight: float = 1e-3,
        decoder: str = Decoder.DISCRETIZED,
    ) -> None:
        learned_variance = scheduler.config.reverse_variance in LEARNED_VARIANCES
        if loss_type is None:
            loss_type = LossType.HYBRID if learned_variance else LossType.SIMPLE
        if loss_type not in [choice.value for choice in LossType]:
            raise ValueError(f"loss_type must be one of {[choice.value for choice in LossType]}, got {loss_type!r}")
        loss_type = LossType(loss_type)
        if loss_type == LossType.SIMPLE and learned_variance:
            raise ValueError(
                "loss_type 'simple' trains no variance: use 'hybrid' or 'vlb' with a learned reverse_variance"
            )
        if loss_type == LossType.HYBRID and not learned_variance:
            raise ValueError(
                "loss_type 'hybrid' needs a learned variance (its bound term trains only the variance): set "
                "reverse_variance to 'learned_range' or 'learned', or use loss_type 'simple'"
            )
        if snr_gamma is not None and snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be positive (5 is the paper's choice), got {snr_gamma}")
        if snr_gamma is not None and loss_type == LossType.VLB:
            raise ValueError("snr_gamma weights the MSE term, which loss_type 'vlb' does not have; drop one of them")
        self.scheduler = scheduler
        self.loss_type = loss_type
        self.snr_gamma = snr_gamma
        self.vlb_weight = vlb_weight
        self.decoder = Decoder(decoder)

    def __call__(
        self,
        model_output: torch.Tensor,
        original_samples: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        noisy_samples: torch.Tensor,
        importance_weights: torch.Tensor | None = None,
    ) -> LossOutput:
        model_output = model_output.float()
        prediction, model_variance = self.scheduler.split_model_output(model_output, noisy_samples)
        target = self.scheduler.training_target(original_samples, noise, timesteps)
        mse = mean_over_pixels((prediction - target) ** 2)
        num_timesteps = self.scheduler.config.num_train_timesteps
        vlb = None
        if self.loss_type == LossType.VLB:
            vlb = vlb_terms(self.scheduler, model_output, original_samples, noisy_samples, timesteps, self.decoder)
            per_sample = num_timesteps * vlb
        else:
            per_sample = mse * self.snr_weight(timesteps).to(mse) if self.snr_gamma is not None else mse
            if self.loss_type == LossType.HYBRID:
                frozen_mean = torch.cat([prediction.detach(), model_variance], dim=1)
                vlb = vlb_terms(self.scheduler, frozen_mean, original_samples, noisy_samples, timesteps, self.decoder)
                per_sample = per_sample + self.vlb_weight * num_timesteps * vlb
        weighted = per_sample if importance_weights is None else per_sample * importance_weights.to(per_sample)
        return LossOutput(
            loss=weighted.mean(),
            per_sample=per_sample.detach(),
            mse=mse.detach(),
            vlb=None if vlb is None else vlb.detach(),
            timesteps=timesteps,
        )

    def snr_weight(self, timesteps: torch.Tensor) -> torch.Tensor:
        snr = self.scheduler.snr(timesteps)
        clipped = snr.clamp(max=self.snr_gamma)
        prediction_type = self.scheduler.config.prediction_type
        if prediction_type == "epsilon":
            return clipped / snr
        if prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped
