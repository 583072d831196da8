"""Closed forms of the Gaussian diffusion process, shared by hfddpm's schedulers.

Notation follows Ho et al. (2020): ᾱ_t = ∏_{i≤t} (1 − β_i) over diffusers' 0-based timesteps, and a reverse step goes
from timestep t to an earlier timestep s: s = t − 1 in the training chain, the next entry of `scheduler.timesteps`
when sampling with fewer steps, and s = −1 for the last step, which returns x_0. ᾱ_{−1} is 1 (or ᾱ_0 for a DDIM
scheduler with `set_alpha_to_one=False`). For a step t → s, β_{t,s} = 1 − ᾱ_t/ᾱ_s is the variance of the forward
jump q(x_t|x_s) and β̃_{t,s} = β_{t,s}(1 − ᾱ_s)/(1 − ᾱ_t) that of the posterior q(x_s|x_t, x_0); with s = t − 1
they are Ho et al.'s β_t and β̃_t.

Everything here is computed in at least float32, whatever the dtype of the samples: in half precision
√(1 − ᾱ_t) rounds to 0 at the first timesteps.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

import torch
from diffusers.configuration_utils import FrozenDict

from .checks import check_scheduler_options


class ReverseVariance(str, Enum):
    """Choices for the variance σ²_{t→s} of the reverse step p_θ(x_s|x_t) = N(μ_θ, σ² I).

    - ``fixed_small``: β̃_{t,s}, exact when the data is a single point (Ho et al. 2020, §3.2).
    - ``fixed_large``: β_{t,s}, exact when the data is N(0, I) (Ho et al. 2020, §3.2). On the last step,
      where β̃ vanishes, the log-variance is that of the training step landing on t (Ho et al.'s code sets
      σ²_1 = β̃_2 "to get a better decoder log likelihood").
    - ``learned``: the network's extra output channels are log σ² (Nichol & Dhariwal 2021, §3.1).
    - ``learned_range``: the extra channels are v ∈ [−1, 1] and log σ² = f log β + (1 − f) log β̃ with f = (v + 1)/2
      (Nichol & Dhariwal 2021, eq. 15).
    - ``analytic``: the optimal variance of Analytic-DPM (Bao et al. 2022, Thm. 1), computed from
      Γ_t = E‖ε_θ(x_t, t)‖²/d, which the scheduler's `analytic_gamma` holds (`analytic_dpm.estimate_analytic_gamma`
      measures it once per model); see `GaussianDiffusionMixin.analytic_variance`.
    """

    FIXED_SMALL = "fixed_small"
    FIXED_LARGE = "fixed_large"
    LEARNED = "learned"
    LEARNED_RANGE = "learned_range"
    ANALYTIC = "analytic"


REVERSE_VARIANCES = tuple(choice.value for choice in ReverseVariance)
LEARNED_VARIANCES = (ReverseVariance.LEARNED.value, ReverseVariance.LEARNED_RANGE.value)
# Stock `variance_type` values and the `reverse_variance` that samples alike; stock "learned" reads σ², not log σ², so
# it has none.
STOCK_EQUIVALENTS = {
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large",
    "fixed_large_log": "fixed_large",
    "learned_range": "learned_range",
}
STOCK_VARIANCE_TYPES = (*STOCK_EQUIVALENTS, "learned")


def stock_variance_type(reverse_variance: str) -> str:
    """The stock `variance_type` nearest a `reverse_variance`, which stock diffusers samples with when it loads an
    hfddpm config (β̃ for ``analytic``)."""
    return "fixed_small" if reverse_variance == ReverseVariance.ANALYTIC else reverse_variance


def reverse_variance_of(config: Mapping[str, Any]) -> str:
    """The `ReverseVariance` a DDPM or DDIM scheduler config samples with: `reverse_variance` when set, else the
    stock `variance_type`'s equivalent, and β̃ (``fixed_small``) for a stock DDIM config (η = 1 is that DDPM step)."""
    if config.get("reverse_variance") is not None:
        return config["reverse_variance"]
    variance_type = config.get("variance_type") or "fixed_small"
    if variance_type not in STOCK_EQUIVALENTS:
        raise ValueError(
            f"the stock variance_type {variance_type!r} has no hfddpm reverse_variance; set reverse_variance to one "
            f"of {list(REVERSE_VARIANCES)}"
        )
    return STOCK_EQUIVALENTS[variance_type]


def convert_prediction(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor, from_type: str, to_type: str
) -> torch.Tensor:
    """Convert a prediction of ε, x_0 or v made at x_t into another of the three.

    With x_t = √ᾱ x_0 + √(1−ᾱ) ε (Ho et al. 2020, eq. 4) and v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022, §4):
    x_0 = (x_t − √(1−ᾱ) ε)/√ᾱ = √ᾱ x_t − √(1−ᾱ) v and ε = (x_t − √ᾱ x_0)/√(1−ᾱ) = √(1−ᾱ) x_t + √ᾱ v.
    `alpha_bar` broadcasts against `sample`.
    """
    if from_type == to_type:
        return model_output
    beta_bar = 1 - alpha_bar
    if from_type == "epsilon":
        epsilon = model_output
        original = (sample - beta_bar**0.5 * model_output) / alpha_bar**0.5
    elif from_type == "sample":
        original = model_output
        epsilon = (sample - alpha_bar**0.5 * model_output) / beta_bar**0.5
    else:
        original = alpha_bar**0.5 * sample - beta_bar**0.5 * model_output
        epsilon = alpha_bar**0.5 * model_output + beta_bar**0.5 * sample
    if to_type == "epsilon":
        return epsilon
    if to_type == "sample":
        return original
    return velocity(original, epsilon, alpha_bar)


def velocity(original_samples: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """v = √ᾱ ε − √(1 − ᾱ) x_0 (Salimans & Ho 2022, §4); `alpha_bar` broadcasts against the samples."""
    return alpha_bar**0.5 * noise - (1 - alpha_bar) ** 0.5 * original_samples


def posterior_variance_between(alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor) -> torch.Tensor:
    """β̃_{t,s} = (1 − ᾱ_s)/(1 − ᾱ_t) · β_{t,s} with β_{t,s} = 1 − ᾱ_t/ᾱ_s: the variance of q(x_s|x_t, x_0) (Ho et al.
    2020, eq. 7, with t − 1 replaced by any s < t)."""
    return (1 - alpha_bar_s) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_s)


def ddim_step(
    sample: torch.Tensor, original: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor
) -> torch.Tensor:
    """The deterministic DDIM step x_t → x_s from a prediction x̂_0 (Song et al. 2021, eq. 12 with σ = 0):

    x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s) ε̂,  ε̂ = (x_t − √ᾱ_t x̂_0)/√(1 − ᾱ_t);

    ᾱ_s = 1 lands on x̂_0 itself. With ε̂ re-derived from a clipped x̂_0 this is the step `HFDDPMPipeline` takes.
    """
    noise = (sample - alpha_bar_t**0.5 * original) / (1 - alpha_bar_t) ** 0.5
    return alpha_bar_s**0.5 * original + (1 - alpha_bar_s) ** 0.5 * noise


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Values of shape () or (batch,) reshaped to broadcast over `like` (full-shape values pass), on its device, in
    at least float32."""
    dtype = torch.promote_types(like.dtype, torch.float32)
    values = values.to(device=like.device, dtype=dtype)
    if values.ndim in (0, like.ndim):
        return values
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


class GaussianDiffusionMixin:
    """The closed forms that training, sampling and evaluation need, for schedulers with `alphas_cumprod`.

    Timestep arguments are ints or integer tensors of shape () or (batch,); an s of −1 denotes x_0."""

    # Config keys hfddpm adds to the stock schedulers; None means "as stock diffusers".
    hfddpm_options = ("reverse_variance", "analytic_gamma")

    def _checked_config(self, beta_schedules: tuple[str, ...]) -> dict[str, Any]:
        """The constructor's arguments, as diffusers' `register_to_config` recorded them, checked
        (`check_scheduler_options`); hfddpm's options are registered, the stock ones returned for the stock
        constructor; `_drop_unset_options` follows the stock constructor."""
        arguments = {key: value for key, value in self.config.items() if not key.startswith("_")}
        options = check_scheduler_options(arguments, beta_schedules, REVERSE_VARIANCES)
        self.register_to_config(**{key: options.pop(key) for key in self.hfddpm_options})
        return options

    def _drop_unset_options(self, *synced: str) -> None:
        """Leave hfddpm's unset options out of the config, so that a config without them is stock's: a stock
        scheduler made `from_config` of it sees no unknown key, and it saves and reloads, or goes through another
        scheduler's config and back, to the same config (diffusers' `test_from_pretrained`, `test_compatibles`).
        The stock keys in `synced`, set from hfddpm's options, leave `_use_default_values` (diffusers' private list
        of the arguments left at their defaults, which `from_config` drops), as do hfddpm's own."""
        unset = [key for key in self.hfddpm_options if self.config.get(key) is None]
        config = {key: value for key, value in self.config.items() if key not in unset}
        # sorted: diffusers lists them in a set's order, which a config that went through another class's loses
        defaults = sorted(
            key for key in config.pop("_use_default_values", []) if key not in (*self.hfddpm_options, *synced)
        )
        # Private, no public twin: `register_to_config` only adds keys.
        self._internal_dict = FrozenDict({**config, **({"_use_default_values": defaults} if defaults else {})})

    def quadratic_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """The "quadratic" spacing (see `TIMESTEP_SPACINGS`), descending, bumped to stay strictly increasing where
        the squares of small i round to the same timestep."""
        top = (0.8 * self.config.num_train_timesteps) ** 0.5
        squares = (torch.linspace(0, top, num_inference_steps, dtype=torch.float64) ** 2).floor().long().tolist()
        timesteps = []
        for t in squares:
            timesteps.append(max(t, timesteps[-1] + 1) if timesteps else t)
        return torch.tensor(timesteps[::-1])

    def alpha_bar(self, timesteps: int | torch.Tensor) -> torch.Tensor:
        """ᾱ_t as a float32 tensor shaped like `timesteps`; any t < 0 stands for x_0, with `final_alpha_cumprod`."""
        index = self._as_timesteps(timesteps)
        if index.ndim == 0:  # a sampling step's single t: plain indexing, a few times per step
            t = int(index)
            return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod.to(self.alphas_cumprod)
        table = torch.cat([self.final_alpha_cumprod.reshape(1).to(self.alphas_cumprod), self.alphas_cumprod])
        return table[index.clamp(min=-1) + 1]

    def _as_timesteps(self, timesteps: int | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(timesteps, device=self.alphas_cumprod.device).long()

    def snr(self, timesteps: int | torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio SNR(t) = ᾱ_t / (1 − ᾱ_t) of q(x_t|x_0) (Kingma et al. 2021, eq. 3)."""
        alpha_bar = self.alpha_bar(timesteps).double()
        return (alpha_bar / (1 - alpha_bar)).float()

    def marginal_mean_variance(
        self, original_samples: torch.Tensor, timesteps: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Moments of q(x_t|x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (Ho et al. 2020, eq. 4)."""
        alpha_bar = per_sample(self.alpha_bar(timesteps), original_samples)
        return alpha_bar**0.5 * original_samples, 1 - alpha_bar

    def posterior_mean_variance(
        self,
        original_samples: torch.Tensor,
        sample: torch.Tensor,
        timesteps: int | torch.Tensor,
        prev_timesteps: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Moments of q(x_s|x_t, x_0) for s < t (s = t − 1 unless `prev_timesteps` is given).

        μ̃ = √ᾱ_s β_{t,s}/(1 − ᾱ_t) x_0 + √(ᾱ_t/ᾱ_s) (1 − ᾱ_s)/(1 − ᾱ_t) x_t and β̃_{t,s} = (1 − ᾱ_s)/(1 − ᾱ_t) β_{t,s}
        (Ho et al. 2020, eqs. 6–7, with t − 1 replaced by any s < t). At s = −1 the mean is x_0 and the variance 0.
        """
        if prev_timesteps is None:
            prev_timesteps = self._as_timesteps(timesteps) - 1
        alpha_bar_t = per_sample(self.alpha_bar(timesteps), sample)
        alpha_bar_s = per_sample(self.alpha_bar(prev_timesteps), sample)
        beta_bar_t, beta_bar_s = 1 - alpha_bar_t, 1 - alpha_bar_s
        alpha_ts = alpha_bar_t / alpha_bar_s
        original_weight = alpha_bar_s**0.5 * (1 - alpha_ts) / beta_bar_t
        sample_weight = alpha_ts**0.5 * beta_bar_s / beta_bar_t
        mean = original_weight * original_samples + sample_weight * sample
        return mean, posterior_variance_between(alpha_bar_t, alpha_bar_s)

    def posterior_variance(self, timesteps: int | torch.Tensor, prev_timesteps: int | torch.Tensor) -> torch.Tensor:
        """β̃_{t,s} of the step t → s (`posterior_variance_between`), float32, shaped like `timesteps`; 0 at s = −1
        when ᾱ_{−1} = 1."""
        return posterior_variance_between(self.alpha_bar(timesteps), self.alpha_bar(prev_timesteps))

    def convert_prediction(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        timesteps: int | torch.Tensor,
        to_type: str,
        from_type: str | None = None,
    ) -> torch.Tensor:
        """Turn a prediction (of type `from_type`, by default `config.prediction_type`) at x_t into `to_type`; the
        formulas are the module's `convert_prediction`'s."""
        alpha_bar = per_sample(self.alpha_bar(timesteps), sample)
        return convert_prediction(model_output, sample, alpha_bar, from_type or self.config.prediction_type, to_type)

    def training_target(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """What the network learns to output for x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε: ε, x_0 or v per `prediction_type`."""
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            return noise
        if prediction_type == "sample":
            return original_samples
        return velocity(original_samples, noise, per_sample(self.alpha_bar(timesteps), original_samples))

    def reverse_log_variance(
        self,
        timesteps: int | torch.Tensor,
        prev_timesteps: int | torch.Tensor,
        model_variance: torch.Tensor | None = None,
        reverse_variance: str | None = None,
    ) -> torch.Tensor:
        """log σ²_{t→s} of p_θ(x_s|x_t) for a `ReverseVariance` choice (default `config.reverse_variance`).

        Fixed and analytic choices return a float32 tensor shaped like `timesteps`; learned ones return a tensor
        shaped like `model_variance`, the network's extra output channels. See `ReverseVariance` for the formulas;
        ``analytic`` is the DDPM member of its family (λ² = β̃_{t,s}).
        """
        choice = ReverseVariance(reverse_variance or self.config.get("reverse_variance"))
        if choice == ReverseVariance.LEARNED:
            return model_variance
        timesteps = self._as_timesteps(timesteps)
        prev_timesteps = self._as_timesteps(prev_timesteps)
        alpha_bar_t = self.alpha_bar(timesteps).double()
        alpha_bar_s = self.alpha_bar(prev_timesteps).double()
        log_beta = torch.log(1 - alpha_bar_t / alpha_bar_s)
        small_variance = posterior_variance_between(alpha_bar_t, alpha_bar_s)
        # On the step to x_0, where β̃ is 0: log β̃ of the training step n → n − 1 landing on t (Ho et al. 2020, code).
        step = (timesteps + 1).clamp(1, self.config.num_train_timesteps - 1)  # n = t + 1, kept inside [1, T − 1]
        last_step = torch.log(
            posterior_variance_between(self.alpha_bar(step).double(), self.alpha_bar(step - 1).double())
        )
        log_posterior_variance = torch.where(
            prev_timesteps >= 0, torch.log(small_variance.clamp(min=1e-20)), last_step
        )
        if choice == ReverseVariance.FIXED_SMALL:
            return log_posterior_variance.float()
        if choice == ReverseVariance.FIXED_LARGE:
            return torch.where(prev_timesteps >= 0, log_beta, log_posterior_variance).float()
        if choice == ReverseVariance.ANALYTIC:
            analytic = self.analytic_variance(timesteps, prev_timesteps, small_variance)
            return torch.where(
                prev_timesteps >= 0, torch.log(analytic.clamp(min=1e-20)), log_posterior_variance
            ).float()
        frac = (model_variance + 1) / 2
        max_log = per_sample(log_beta, model_variance)
        min_log = per_sample(log_posterior_variance, model_variance)
        return frac * max_log + (1 - frac) * min_log

    def analytic_variance(
        self, timesteps: int | torch.Tensor, prev_timesteps: int | torch.Tensor, lambda_sq: torch.Tensor | float
    ) -> torch.Tensor:
        """Analytic-DPM's optimal variance of a step t → s whose mean has the noise weight √(β̄_s − λ²):

        σ*² = λ² + (√ᾱ_s − √((β̄_s − λ²) ᾱ_t/β̄_t))² · clip((β̄_t/ᾱ_t)(1 − Γ_t), 0, 1)

        (Bao et al. 2022, Thm. 1 and its skip-step form, §4), with β̄ = 1 − ᾱ and Γ_t = E‖ε_θ(x_t, t)‖²/d from
        `config.analytic_gamma`. (β̄_t/ᾱ_t)(1 − Γ_t) is the model's estimate of E Var(x_0|x_t) per dimension; the clip
        keeps it between 0 and 1, the most data in [−1, 1] can have (Thm. 2), so σ*² stays between λ² and the
        bound of Thm. 2. λ² = β̃_{t,s} is the DDPM step, λ² = η² β̃_{t,s} a DDIM step. Float64, shaped like `timesteps`.
        """
        timesteps = self._as_timesteps(timesteps)
        gamma = torch.tensor(self.config.analytic_gamma, dtype=torch.float64)[timesteps.cpu()].to(timesteps.device)
        alpha_bar_t = self.alpha_bar(timesteps).double()
        alpha_bar_s = self.alpha_bar(prev_timesteps).double()
        lambda_sq = torch.as_tensor(lambda_sq, dtype=torch.float64, device=alpha_bar_t.device)
        beta_bar_t, beta_bar_s = 1 - alpha_bar_t, 1 - alpha_bar_s
        x0_variance = (beta_bar_t / alpha_bar_t * (1 - gamma)).clamp(0, 1)
        weight = (alpha_bar_s.sqrt() - ((beta_bar_s - lambda_sq).clamp(min=0) * alpha_bar_t / beta_bar_t).sqrt()) ** 2
        return lambda_sq + weight * x0_variance

    def split_model_output(
        self, model_output: torch.Tensor, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split a learned-variance network's 2C output channels into (prediction, variance channels)."""
        channels = sample.shape[1]
        if model_output.shape[1] == 2 * channels:
            return torch.split(model_output, channels, dim=1)
        if self.config.get("reverse_variance") in LEARNED_VARIANCES:
            raise ValueError(
                f"reverse_variance={self.config.reverse_variance!r} needs a model with 2 × {channels} output "
                f"channels (prediction and variance), got {model_output.shape[1]}; train with a learned-variance "
                "UNet preset or choose reverse_variance='fixed_small' or 'fixed_large'"
            )
        return model_output, None

    def clip_original_sample(self, original_sample: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding (Saharia et al. 2022) or clipping of x̂_0, as the stock config asks."""
        if self.config.thresholding:
            # Private stock method, no public twin: calling it keeps DDIM's thresholding bit for bit the stock one.
            return self._threshold_sample(original_sample)
        if self.config.clip_sample:
            return original_sample.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return original_sample
