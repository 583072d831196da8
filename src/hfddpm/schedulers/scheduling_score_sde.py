"""Sampling a diffusion model in continuous time: the reverse SDE by Euler–Maruyama, or the probability-flow ODE by
Euler's method (Song et al. 2021, §4), on the continuous schedule of a DDPM table (`TableSchedule`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..arguments import checked_integer
from .continuous_time import TableSchedule, alpha_sigma, network_timestep, probability_flow_drift
from .gaussian_diffusion import convert_prediction

SAMPLERS = ("euler_maruyama", "probability_flow")


@dataclass
class ScoreSDESchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class ScoreSDEScheduler(SchedulerMixin, ConfigMixin):
    """N steps of equal length in t from t = 1 to t = 0 on the continuous γ(t) of a table of ᾱ (a DDPM scheduler's
    `trained_betas`, or its linear schedule), in the variance-preserving scale, where every schedule is the VP SDE
    with f = −½ σ_t² γ'(t), g² = σ_t² γ'(t) (`hfddpm.schedulers.continuous_time`), and the score is −ε̂/σ_t:

    - ``euler_maruyama``: z_s = z_t + (½ σ² γ' z_t − σ γ' ε̂) Δt + σ √(γ' Δt) ξ, the reverse SDE
      dz = [f z − g² ∇log p_t] dt + g dw̄ (Song et al. 2021, eq. 6, Algorithm "EM");
    - ``probability_flow``: z_s = z_t − ½ γ' σ (ε̂ − σ z_t) Δt, Euler's method on the ODE (Song et al. 2021, eq. 13).

    The network is called at the label (T − 1) t, so any N works, more than T included. The last step returns the
    denoised x̂_0 = (z − σ ε̂)/α at the final t, as score_sde's samplers do.

    Args:
        num_train_timesteps: T, the table's length.
        trained_betas: the table's β (default: DDPM's linear schedule from `beta_start` to `beta_end`).
        sampler: ``"euler_maruyama"`` or ``"probability_flow"``.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        trained_betas: np.ndarray | list[float] | None = None,
        sampler: str = "euler_maruyama",
        prediction_type: str = "epsilon",
    ) -> None:
        if sampler not in SAMPLERS or prediction_type != "epsilon":
            raise ValueError(f"sampler must be one of {SAMPLERS} and prediction_type 'epsilon'")
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps) if trained_betas is None else trained_betas
        self.betas = torch.as_tensor(betas, dtype=torch.float32)  # as diffusers' schedulers hold them
        self.schedule = TableSchedule.of_betas(betas)
        self.init_noise_sigma = 1.0
        self.set_timesteps(num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """N equal steps from t = 1 to 0; `timesteps` are the network's labels (T − 1) t of the N starting times.
        N = 0 would return the noise itself as the sample: refused."""
        num_inference_steps = checked_integer("num_inference_steps", num_inference_steps)
        self.times = torch.linspace(1, 0, num_inference_steps + 1, dtype=torch.float64)
        self.timesteps = network_timestep(self.times[:-1], self.config.num_train_timesteps).float().to(device)
        self.num_inference_steps = num_inference_steps
        self._step_index = 0

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor | None = None) -> torch.Tensor:
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> ScoreSDESchedulerOutput | tuple:
        """One step from the time of `timestep` to the next (see the class docstring)."""
        t, s = self.times[self._step_index], self.times[self._step_index + 1]
        self._step_index += 1
        gamma, gamma_derivative = self.schedule.gamma_and_derivative(t.reshape(1))
        alpha, sigma = (value.to(sample) for value in alpha_sigma(gamma.detach()))
        gamma_derivative, dt = gamma_derivative.detach().to(sample), float(t - s)
        original = convert_prediction(model_output, sample, alpha**2, "epsilon", "sample")
        if self._step_index == self.num_inference_steps:
            previous = original
        elif self.config.sampler == "probability_flow":
            previous = sample - probability_flow_drift(sample, model_output, gamma_derivative, sigma) * dt
        else:
            drift = 0.5 * sigma**2 * gamma_derivative * sample - sigma * gamma_derivative * model_output
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            previous = sample + drift * dt + sigma * (gamma_derivative * dt).sqrt() * noise
        if not return_dict:
            return (previous, original)
        return ScoreSDESchedulerOutput(prev_sample=previous, pred_original_sample=original)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
