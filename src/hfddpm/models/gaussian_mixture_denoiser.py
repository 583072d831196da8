"""The exact denoiser of Gaussian-mixture data: a stand-in for the UNet that has no training error."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from diffusers import ConfigMixin, ModelMixin  # the pipeline loader finds ModelMixin in this module by name
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

from ..schedulers.gaussian_diffusion import convert_prediction

if TYPE_CHECKING:
    from diffusers import SchedulerMixin


class GaussianMixtureDenoiser(ModelMixin, ConfigMixin):
    """Bayes-optimal prediction for data x_0 ~ Σ_k w_k N(μ_k, s_k² I), called like a `UNet2DModel`.

    Under q(x_t|x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) the noisy data is the mixture Σ_k w_k N(√ᾱ_t μ_k, v_k I) with
    v_k = ᾱ_t s_k² + 1 − ᾱ_t, and the minimiser of E‖ε − ε_θ(x_t, t)‖² is
    E[ε|x_t] = Σ_k r_k(x_t) √(1 − ᾱ_t) (x_t − √ᾱ_t μ_k)/v_k, with r_k the posterior responsibilities
    (Tweedie's formula). It is returned as ε, x_0 or v according to `prediction_type`. A component with s_k = 0 is
    a point mass, and N(0, I) is the single component μ = 0, s = 1.

    Args:
        means: one image-shaped mean per component, as nested lists of shape (K, C, H, W).
        stds: the K standard deviations s_k.
        weights: the K mixture weights (normalised here).
        alphas_cumprod: ᾱ_t of the scheduler the model is paired with (`scheduler.alphas_cumprod`).
        prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
    """

    @register_to_config
    def __init__(
        self,
        means: Sequence,
        stds: Sequence[float],
        weights: Sequence[float],
        alphas_cumprod: Sequence[float],
        prediction_type: str = "epsilon",
    ) -> None:
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 4 or not len(means) == len(stds) == len(weights):
            raise ValueError("means must have shape (K, C, H, W), with one std and one weight per component")
        weights = torch.as_tensor(weights, dtype=torch.float64)
        self.register_buffer("component_means", means, persistent=False)
        self.register_buffer("component_stds", torch.as_tensor(stds, dtype=torch.float64), persistent=False)
        self.register_buffer("log_weights", torch.log(weights / weights.sum()), persistent=False)
        self.register_buffer(
            "schedule_alphas_cumprod", torch.as_tensor(alphas_cumprod, dtype=torch.float64), persistent=False
        )
        self.register_to_config(sample_size=tuple(means.shape[2:]), in_channels=means.shape[1])
        self.register_to_config(out_channels=means.shape[1])

    @classmethod
    def for_scheduler(
        cls,
        scheduler: SchedulerMixin,
        means: torch.Tensor,
        stds: Sequence[float],
        weights: Sequence[float] | None = None,
    ) -> GaussianMixtureDenoiser:
        """The exact denoiser for `scheduler`'s noise schedule and prediction type."""
        weights = [1.0] * len(means) if weights is None else list(weights)
        return cls(
            means=torch.as_tensor(means).tolist(),
            stds=[float(s) for s in stds],
            weights=[float(w) for w in weights],
            alphas_cumprod=scheduler.alphas_cumprod.tolist(),
            prediction_type=scheduler.config.prediction_type,
        )

    def forward(
        self, sample: torch.Tensor, timestep: int | torch.Tensor, return_dict: bool = True
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        x = sample.to(torch.float64)
        t = torch.as_tensor(timestep, device=x.device).long().reshape(-1)
        alpha_bar = self.schedule_alphas_cumprod[t].reshape(-1, 1).expand(len(x), 1)  # (B, 1)
        flat = x.reshape(len(x), 1, -1)  # (B, 1, D)
        centred = flat - alpha_bar.unsqueeze(-1).sqrt() * self.component_means.reshape(
            1, len(self.component_means), -1
        )  # (B, K, D)
        variance = alpha_bar * self.component_stds**2 + (1 - alpha_bar)  # (B, K)
        dim = flat.shape[-1]
        log_likelihood = -0.5 * (centred**2).sum(-1) / variance - 0.5 * dim * torch.log(2 * math.pi * variance)
        responsibilities = torch.softmax(self.log_weights + log_likelihood, dim=1)  # (B, K)
        epsilon = ((responsibilities / variance).unsqueeze(-1) * centred).sum(1) * (1 - alpha_bar).sqrt()
        epsilon = epsilon.reshape(x.shape)
        prediction = convert_prediction(
            epsilon, x, alpha_bar.reshape(-1, 1, 1, 1), "epsilon", self.config.prediction_type
        ).to(sample.dtype)
        if not return_dict:
            return (prediction,)
        return UNet2DOutput(sample=prediction)

    def sample_data(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw x_0 from the mixture (float64, on the model's device)."""
        components = torch.multinomial(
            self.log_weights.exp().cpu(), num_samples, replacement=True, generator=generator
        )
        noise = torch.randn((num_samples, *self.component_means.shape[1:]), generator=generator, dtype=torch.float64)
        components, noise = components.to(self.component_means.device), noise.to(self.component_means.device)
        return self.component_means[components] + self.component_stds[components].reshape(-1, 1, 1, 1) * noise
