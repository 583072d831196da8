"""DDIM sampling (Song et al. 2021) on the right timestep grid, with a choice of reverse variance beside η."""

from __future__ import annotations

import diffusers
import numpy as np
import torch
from diffusers import SchedulerMixin  # noqa: F401  (the pipeline loader finds the base class in this module by name)
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ..arguments import checked_integer, checked_number
from .checks import ETA_MEANING
from .gaussian_diffusion import GaussianDiffusionMixin, ReverseVariance

# The stock DDIM scheduler's schedules; "cosine" is accepted as an alias of "squaredcos_cap_v2".
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class DDIMScheduler(GaussianDiffusionMixin, diffusers.DDIMScheduler):
    """diffusers' `DDIMScheduler`, plus the closed forms of `GaussianDiffusionMixin` and a `reverse_variance` option.

    A step t → s follows Song et al. (2021, eq. 12):
    x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − λ²) ε̂ + σ z, with λ = η √β̃_{t,s} (eq. 16).

    Unlike stock diffusers, s is always the next entry of `timesteps` (stock takes t − T//S, which misreads ᾱ on
    most steps of the "linspace" spacing and of "trailing" with T not a multiple of S); for a t that is not on the
    schedule the stock rule is kept. On the stock spacings where the two agree, every output is stock's.

    Args:
        beta_schedule: also accepts ``"cosine"`` (Nichol & Dhariwal 2021, eq. 17), stored as ``"squaredcos_cap_v2"``.
        reverse_variance (`ReverseVariance` or None): what η = 1 means. η still selects the mean (λ above) and scales
            the noise, σ² = η² σ²_choice, with σ²_choice = β̃_{t,s} (``fixed_small``: the η-family of the paper,
            as stock), β_{t,s} (``fixed_large``: the σ̂ of Song et al. 2021, §5.1) or the model's ``learned`` /
            ``learned_range`` variance. So η = 0 is deterministic DDIM whatever the choice — a config converted
            from a DDPM scheduler keeps sampling as DDIM — and with η = 1 each choice is the DDPM step of the same
            name. Unlike None (stock), the step to x_0 adds no noise. ``analytic`` is the exception: σ² is
            Analytic-DPM's optimal variance for the mean that λ gives (`analytic_variance` with λ² = η² β̃_{t,s}), so
            η = 0 is Analytic-DDIM, which adds noise, and η = 1 is Analytic-DDPM (Bao et al. 2022, §3 and §4).
        analytic_gamma (list of floats or None): Γ_t = E‖ε_θ(x_t, t)‖²/d for every training timestep, which
            ``analytic`` needs (Bao et al. 2022, eq. 8); `analytic_dpm.fit_analytic_variance` measures it.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
        reverse_variance: str | None = None,
        analytic_gamma: list[float] | None = None,
    ) -> None:
        super().__init__(**self._checked_config(BETA_SCHEDULES))
        self._drop_unset_options()

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """As diffusers' `set_timesteps`, refusing a step count outside [1, T] in one line, and with the
        "quadratic" spacing of the DDIM paper besides the stock ones."""
        num_inference_steps = checked_integer("num_inference_steps", num_inference_steps, 1, len(self.betas))
        if self.config.timestep_spacing != "quadratic":
            super().set_timesteps(num_inference_steps, device=device)
            return
        self.num_inference_steps = num_inference_steps
        self.timesteps = self.quadratic_timesteps(num_inference_steps).to(device)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep s a step from t lands on: the next entry of `timesteps`, or −1 after the last one; before
        `set_timesteps` the training chain's t − 1, and for a t off the schedule stock diffusers' t − T//S."""
        if self.num_inference_steps is None:
            return timestep - 1
        matches = (self.timesteps == torch.as_tensor(timestep).to(self.timesteps.device)).nonzero()
        if len(matches) == 0:
            return timestep - self.config.num_train_timesteps // self.num_inference_steps
        index = int(matches[0, 0])
        return self.timesteps[index + 1] if index + 1 < len(self.timesteps) else -1

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """One generalized DDIM step x_t → x_s (Song et al. 2021, eq. 12); arguments as in diffusers.

        `variance_noise` replaces the Gaussian z drawn from `generator`. A learned-variance network's extra
        channels are used by the learned choices of `reverse_variance` and ignored otherwise.
        """
        if self.num_inference_steps is None:
            raise ValueError(
                "Number of inference steps is 'None', you need to run 'set_timesteps' after creating the scheduler"
            )
        eta = checked_number("eta", eta, "[0, 1]", ETA_MEANING)
        prev_timestep = self.previous_timestep(timestep)
        prediction, model_variance = self.split_model_output(model_output, sample)
        alpha_prod_t_prev = self.alpha_bar(prev_timestep)

        pred_original_sample = self.convert_prediction(prediction, sample, timestep, "sample")
        pred_epsilon = self.convert_prediction(prediction, sample, timestep, "epsilon")
        pred_original_sample = self.clip_original_sample(pred_original_sample)
        if use_clipped_model_output:
            # Re-derive ε̂ from the clipped x̂_0, as GLIDE does.
            pred_epsilon = self.convert_prediction(pred_original_sample, sample, timestep, "epsilon", "sample")

        std_dev_t = eta * self.posterior_variance(timestep, prev_timestep) ** 0.5  # λ of eq. 16
        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * pred_epsilon
        prev_sample = alpha_prod_t_prev**0.5 * pred_original_sample + pred_sample_direction

        if self.config.get("reverse_variance") is None:
            noise_std = std_dev_t if eta > 0 else None
        elif prev_timestep < 0:
            noise_std = None
        elif self.config.get("reverse_variance") == ReverseVariance.ANALYTIC:  # Analytic-DDIM when η = 0
            noise_std = self.analytic_variance(timestep, prev_timestep, std_dev_t**2).sqrt().float()
        elif eta > 0:
            noise_std = eta * torch.exp(0.5 * self.reverse_log_variance(timestep, prev_timestep, model_variance))
        else:
            noise_std = None
        if noise_std is not None:
            if variance_noise is not None and generator is not None:
                raise ValueError(
                    "Cannot pass both generator and variance_noise. Please make sure that either `generator` or"
                    " `variance_noise` stays `None`."
                )
            if variance_noise is None:
                variance_noise = randn_tensor(
                    prediction.shape, generator=generator, device=prediction.device, dtype=prediction.dtype
                )
            prev_sample = prev_sample + noise_std.to(prev_sample) * variance_noise

        prev_sample, pred_original_sample = prev_sample.to(sample.dtype), pred_original_sample.to(sample.dtype)
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
