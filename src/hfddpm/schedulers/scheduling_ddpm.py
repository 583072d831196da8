"""DDPM ancestral sampling (Ho et al. 2020) with the reverse-variance choices of the DDPM derivation."""

from __future__ import annotations

import diffusers
import numpy as np
import torch
from diffusers import SchedulerMixin  # noqa: F401  (the pipeline loader finds the base class in this module by name)
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ..arguments import checked_integer
from .checks import checked_timesteps
from .gaussian_diffusion import STOCK_EQUIVALENTS, STOCK_VARIANCE_TYPES, GaussianDiffusionMixin, stock_variance_type

# The stock DDPM scheduler's schedules; "cosine" is accepted as an alias of "squaredcos_cap_v2".
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid")


class DDPMScheduler(GaussianDiffusionMixin, diffusers.DDPMScheduler):
    """diffusers' `DDPMScheduler`, plus the closed forms of `GaussianDiffusionMixin` and a `reverse_variance` option.

    With `reverse_variance` None every stock argument and method behaves as in diffusers, with one difference: the
    step that returns x_0 adds no noise (see `step`). The added arguments are:

    Args:
        beta_schedule: also accepts ``"cosine"``, the schedule of Nichol & Dhariwal (2021, eq. 17),
            ᾱ_t = f(t)/f(0) with f(t) = cos²((t/T + 0.008)/1.008 · π/2) and β_t capped at 0.999; it is stored
            under diffusers' name for it, ``"squaredcos_cap_v2"``.
        reverse_variance (`ReverseVariance` or None): the variance σ²_{t→s} of p_θ(x_s|x_t) = N(μ̃(x_t, x̂_0), σ²),
            one of ``fixed_small``, ``fixed_large``, ``learned``, ``learned_range``, ``analytic`` (see
            `ReverseVariance`). Unlike the stock `variance_type`, it is right for every timestep spacing,
            ``learned`` reads log σ² (not σ²) from the network, and ``fixed_large`` carries the first-step fix of
            the DDPM code. It decides, and `variance_type` follows it: the nearest stock choice
            (``fixed_small`` for ``analytic``), which stock diffusers samples with when it loads this config. Given
            both, they must agree; `from_config(config, variance_type=...)` replaces the config's
            `reverse_variance` by the equivalent of the `variance_type` named.
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
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        reverse_variance: str | None = None,
        analytic_gamma: list[float] | None = None,
    ) -> None:
        named = "variance_type" not in (self.config.get("_use_default_values") or ())
        options = self._checked_config(BETA_SCHEDULES)
        if variance_type is not None and variance_type not in STOCK_VARIANCE_TYPES:  # None: old stock configs
            raise ValueError(f"variance_type must be one of {STOCK_VARIANCE_TYPES}, got {variance_type!r}")
        if (reverse_variance := self.config.get("reverse_variance")) is not None:
            synced = stock_variance_type(reverse_variance)
            if named and variance_type != synced and STOCK_EQUIVALENTS.get(variance_type) != reverse_variance:
                raise ValueError(
                    f"variance_type={variance_type!r} and reverse_variance={reverse_variance!r} disagree; pass "
                    "reverse_variance alone (variance_type follows it), or variance_type alone for stock sampling"
                )
            options["variance_type"] = synced
        super().__init__(**options)
        self._drop_unset_options("variance_type")
        self.final_alpha_cumprod = torch.tensor(1.0)

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' `from_config`, where of `reverse_variance` and `variance_type` the one named in `kwargs`
        decides and the other follows it (the stock `variance_type` of a config without `reverse_variance` stays
        stock's)."""
        saved = getattr(config, "config", config) or {}
        if kwargs.get("reverse_variance") is not None and "variance_type" not in kwargs:
            kwargs["variance_type"] = stock_variance_type(kwargs["reverse_variance"])
        elif "variance_type" in kwargs and "reverse_variance" not in kwargs and saved.get("reverse_variance"):
            kwargs["reverse_variance"] = STOCK_EQUIVALENTS.get(kwargs["variance_type"])  # None: stock's "learned"
        return super().from_config(config, return_unused_kwargs, **kwargs)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """As diffusers' `set_timesteps`, refusing in one line a step count outside [1, T] and custom timesteps that
        are not distinct integers of [0, T − 1] in descending order, and with the "quadratic" spacing of the DDIM
        paper besides the stock ones."""
        if num_inference_steps is None and timesteps is None:
            raise ValueError("set_timesteps needs num_inference_steps or timesteps")
        if num_inference_steps is not None:
            num_inference_steps = checked_integer("num_inference_steps", num_inference_steps, 1, len(self.betas))
        if timesteps is not None and num_inference_steps is None:
            timesteps = checked_timesteps(timesteps, self.config.num_train_timesteps)
        if timesteps is None and self.config.timestep_spacing == "quadratic":
            num_inference_steps, timesteps = None, self.quadratic_timesteps(num_inference_steps).tolist()
        super().set_timesteps(num_inference_steps, device=device, timesteps=timesteps)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> DDPMSchedulerOutput | tuple:
        """One ancestral step x_t → x_s ~ N(μ̃(x_t, x̂_0), σ²_{t→s} I) (Ho et al. 2020, eq. 7 and Algorithm 2).

        x̂_0 comes from the network's prediction (clipped or thresholded as configured), μ̃ is the posterior mean of
        `posterior_mean_variance`, σ² follows `reverse_variance`; the step to x_0 adds no noise. With
        `reverse_variance=None` this is diffusers' own step, except on that last step: stock adds noise whenever
        t > 0, so on "trailing" spacing (or `steps_offset=1`), whose last t is above 0, its x_0 got noise of variance
        β_t (`fixed_large`) or the learned one; there stock's mean is x̂_0 exactly, which is returned instead.
        """
        prev_timestep = self.previous_timestep(timestep)
        if self.config.get("reverse_variance") is None:
            prev_sample, pred_original_sample = super().step(
                model_output, timestep, sample, generator=generator, return_dict=False
            )
            if timestep > 0 and prev_timestep < 0:
                prev_sample = pred_original_sample.clone()
        else:
            prediction, model_variance = self.split_model_output(model_output, sample)
            pred_original_sample = self.clip_original_sample(
                self.convert_prediction(prediction, sample, timestep, "sample")
            )
            prev_sample, _ = self.posterior_mean_variance(pred_original_sample, sample, timestep, prev_timestep)
            if prev_timestep >= 0:
                noise_std = torch.exp(0.5 * self.reverse_log_variance(timestep, prev_timestep, model_variance))
                noise = randn_tensor(
                    prediction.shape, generator=generator, device=prediction.device, dtype=prediction.dtype
                )
                prev_sample = prev_sample + noise_std.to(prev_sample) * noise
            prev_sample, pred_original_sample = prev_sample.to(sample.dtype), pred_original_sample.to(sample.dtype)
        if not return_dict:
            return prev_sample, pred_original_sample
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
