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

import json
from collections.abc import Mapping
from enum import Enum
from typing import Any

import torch

from ..arguments import checked_integer, checked_number

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


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


LEARNED_VARIANCES = (ReverseVariance.LEARNED.value, ReverseVariance.LEARNED_RANGE.value)
# Stock `variance_type` values with an hfddpm equivalent. Stock "learned" reads σ², not log σ², so it has none.
_STOCK_VARIANCE_TYPES = {
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large",
    "fixed_large_log": "fixed_large",
    "learned_range": "learned_range",
}
STOCK_VARIANCE_TYPES = (*_STOCK_VARIANCE_TYPES, "learned")
# How `set_timesteps(S)` picks S of the T training timesteps (t descending, sampled from the first):
# - "leading": 0, T/S, 2T/S, … (stock default; never starts at T − 1, so x_T's noise level is not the first one).
# - "trailing": T − 1, T − 1 − T/S, …: starts at pure noise (Lin et al. 2024, §3.3) but ends at T/S − 1, so with few
#   steps the final jump to x_0 returns a mean over many images (blurred) when the data is spread out.
# - "linspace": round(linspace(0, T − 1, S)): both ends, T − 1 and 0, evenly in between (the DDPM/DDIM papers' grid).
# - "quadratic": ⌊(i √(0.8 T)/(S − 1))²⌋ (Song et al. 2021, App. D.2): dense at low noise, where detail forms;
#   their choice for the linear schedule on CIFAR-10 (it starts at 0.8 T, where that schedule is already noise).
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace", "quadratic")
BETA_SCHEDULE_ALIASES = {"cosine": "squaredcos_cap_v2"}


def validate_common_options(
    beta_schedule: str,
    prediction_type: str,
    timestep_spacing: str,
    reverse_variance: str | None,
    analytic_gamma: list[float] | None = None,
    num_train_timesteps: int = 1000,
    *,
    beta_schedules: tuple[str, ...],
    uses_trained_betas: bool = False,
) -> tuple[str, str | None, list[float] | None]:
    """Check the options both schedulers share; return the stored beta schedule and reverse variance names and Γ_t
    as plain floats (a config is JSON).

    `beta_schedules` are the stock names the scheduler implements; `beta_schedule` is ignored, as in stock diffusers,
    when the scheduler `uses_trained_betas`. Checked here, an unknown name gets the list of choices rather than stock's
    NotImplementedError.
    """
    beta_schedule = BETA_SCHEDULE_ALIASES.get(beta_schedule, beta_schedule)
    if not uses_trained_betas and beta_schedule not in beta_schedules:
        choices = (*beta_schedules, *BETA_SCHEDULE_ALIASES)
        raise ValueError(f"beta_schedule must be one of {choices} (or pass trained_betas), got {beta_schedule!r}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}")
    if reverse_variance is not None:
        choices = tuple(choice.value for choice in ReverseVariance)
        if reverse_variance not in choices:
            raise ValueError(f"reverse_variance must be None or one of {choices}, got {reverse_variance!r}")
        reverse_variance = ReverseVariance(reverse_variance).value
    if reverse_variance == ReverseVariance.ANALYTIC and analytic_gamma is None:
        raise ValueError(
            "reverse_variance='analytic' needs analytic_gamma, the model's Γ_t: estimate it with "
            "hfddpm.schedulers.analytic_dpm.fit_analytic_variance (or `hfddpm analytic-variance CHECKPOINT`)"
        )
    if analytic_gamma is not None and len(analytic_gamma) != num_train_timesteps:
        raise ValueError(
            f"analytic_gamma needs one Γ_t per training timestep ({num_train_timesteps}), got {len(analytic_gamma)}"
        )
    if analytic_gamma is not None:
        analytic_gamma = [checked_number(f"analytic_gamma[{t}]", value, 0) for t, value in enumerate(analytic_gamma)]
    return beta_schedule, reverse_variance, analytic_gamma


def check_num_inference_steps(num_inference_steps: int | None, num_train_timesteps: int) -> int:
    """The sampling step count as a plain int, refused outside [1, T] (each step visits a distinct training
    timestep) or when it is not an integer."""
    return checked_integer("num_inference_steps", num_inference_steps, 1, num_train_timesteps)


def reverse_variance_of(config: Mapping[str, Any]) -> str:
    """The `ReverseVariance` a DDPM or DDIM scheduler config samples with.

    hfddpm's `reverse_variance` when set; otherwise the stock `variance_type`'s equivalent, and β̃ (``fixed_small``)
    for a stock DDIM config, whose η = 1 is the DDPM step with β̃.
    """
    if config.get("reverse_variance") is not None:
        return config["reverse_variance"]
    variance_type = config.get("variance_type") or "fixed_small"
    if variance_type not in _STOCK_VARIANCE_TYPES:
        raise ValueError(
            f"the stock variance_type {variance_type!r} has no hfddpm reverse_variance; set reverse_variance to one "
            f"of {[choice.value for choice in ReverseVariance]}"
        )
    return _STOCK_VARIANCE_TYPES[variance_type]


def convert_prediction(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_bar: torch.Tensor,
    from_type: str,
    to_type: str,
) -> torch.Tensor:
    """Convert a prediction of ε, x_0 or v made at x_t into another of the three.

    With x_t = √ᾱ x_0 + √(1−ᾱ) ε (Ho et al. 2020, eq. 4) and v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022, §4):
    x_0 = (x_t − √(1−ᾱ) ε)/√ᾱ = √ᾱ x_t − √(1−ᾱ) v and ε = (x_t − √ᾱ x_0)/√(1−ᾱ) = √(1−ᾱ) x_t + √ᾱ v.
    `alpha_bar` broadcasts against `sample`.
    """
    for name in (from_type, to_type):
        if name not in PREDICTION_TYPES:
            raise ValueError(f"prediction type must be one of {PREDICTION_TYPES}, got {name!r}")
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

    Timestep arguments are ints or integer tensors of shape () or (batch,); an s of −1 denotes x_0.
    """

    # Config keys hfddpm adds to the stock schedulers; None means "as stock diffusers".
    hfddpm_options = ("reverse_variance", "analytic_gamma")

    def to_json_string(self) -> str:
        """The stock config JSON, without hfddpm's options while they are unset, so stock diffusers loads it as is."""
        config = json.loads(super().to_json_string())
        for key in self.hfddpm_options:
            if config.get(key) is None:
                config.pop(key, None)
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    @classmethod
    def extract_init_dict(cls, config_dict: dict, **kwargs: Any) -> tuple:
        """diffusers' reading of a config, where a missing hfddpm option means None, as `to_json_string` left it.

        Without this, an unset option left out of the saved JSON would come back listed in `_use_default_values`,
        so a scheduler saved and loaded had another `config` than the original (diffusers' `test_from_pretrained`).
        """
        defaults = set(config_dict.get("_use_default_values") or ())
        unset = {key: None for key in cls.hfddpm_options if key not in config_dict and key not in defaults}
        return super().extract_init_dict({**unset, **config_dict}, **kwargs)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """diffusers' `add_noise` (x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε), refusing timesteps that are not integers in
        [0, T − 1]: stock indexes ᾱ with them, so −1 silently reads ᾱ_{T−1} and T fails inside torch."""
        timesteps = torch.as_tensor(timesteps)
        steps = len(self.alphas_cumprod)
        if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
            raise TypeError(f"add_noise's timesteps must be an integer tensor, got dtype {timesteps.dtype}")
        low, high = (int(value) for value in torch.aminmax(timesteps)) if timesteps.numel() else (0, 0)
        if not 0 <= low <= high < steps:
            raise ValueError(f"add_noise's timesteps must be in [0, {steps - 1}], got values from {low} to {high}")
        return super().add_noise(original_samples, noise, timesteps)

    def quadratic_timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """The "quadratic" spacing (see `TIMESTEP_SPACINGS`), descending, bumped to stay strictly increasing where
        the squares of small i round to the same timestep."""
        check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps)
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
            if t >= len(self.alphas_cumprod):
                raise ValueError(f"timesteps must be below num_train_timesteps={len(self.alphas_cumprod)}, got {t}")
            return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod.to(self.alphas_cumprod)
        table = torch.cat([self.final_alpha_cumprod.reshape(1).to(self.alphas_cumprod), self.alphas_cumprod])
        if (index >= len(self.alphas_cumprod)).any():
            raise ValueError(
                f"timesteps must be below num_train_timesteps={len(self.alphas_cumprod)}, got {timesteps}"
            )
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
        beta_ts = 1 - alpha_ts
        mean = (alpha_bar_s**0.5 * beta_ts) / beta_bar_t * original_samples + (
            alpha_ts**0.5 * beta_bar_s / beta_bar_t
        ) * sample
        return mean, posterior_variance_between(alpha_bar_t, alpha_bar_s)

    def posterior_variance(
        self,
        timesteps: int | torch.Tensor,
        prev_timesteps: int | torch.Tensor,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """β̃_{t,s} of the step t → s (`posterior_variance_between`), in `dtype`, shaped like `timesteps`. It is 0 at
        s = −1 when ᾱ_{−1} = 1."""
        return posterior_variance_between(
            self.alpha_bar(timesteps).to(dtype), self.alpha_bar(prev_timesteps).to(dtype)
        )

    def convert_prediction(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        timesteps: int | torch.Tensor,
        to_type: str,
        from_type: str | None = None,
    ) -> torch.Tensor:
        """Turn a prediction (of type `from_type`, by default `config.prediction_type`) at x_t into `to_type`.

        See `convert_prediction` in this module for the formulas.
        """
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
        choice = ReverseVariance(reverse_variance or self.config.reverse_variance)
        if choice == ReverseVariance.LEARNED:
            if model_variance is None:
                raise ValueError("reverse_variance='learned' needs the model's variance output")
            return model_variance
        timesteps = self._as_timesteps(timesteps)
        prev_timesteps = self._as_timesteps(prev_timesteps)
        alpha_bar_t = self.alpha_bar(timesteps).double()
        alpha_bar_s = self.alpha_bar(prev_timesteps).double()
        log_beta = torch.log(1 - alpha_bar_t / alpha_bar_s)
        small_variance = posterior_variance_between(alpha_bar_t, alpha_bar_s)
        log_posterior_variance = torch.where(
            prev_timesteps >= 0,
            torch.log(small_variance.clamp(min=1e-20)),
            self._last_step_log_variance(timesteps),
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
        if model_variance is None:
            raise ValueError("reverse_variance='learned_range' needs the model's variance output")
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
        if self.config.get("analytic_gamma") is None:
            raise ValueError("analytic_variance needs analytic_gamma in the scheduler config; estimate it first")
        timesteps = self._as_timesteps(timesteps)
        gamma = torch.tensor(self.config.analytic_gamma, dtype=torch.float64)[timesteps.cpu()].to(timesteps.device)
        alpha_bar_t = self.alpha_bar(timesteps).double()
        alpha_bar_s = self.alpha_bar(prev_timesteps).double()
        lambda_sq = torch.as_tensor(lambda_sq, dtype=torch.float64, device=alpha_bar_t.device)
        beta_bar_t, beta_bar_s = 1 - alpha_bar_t, 1 - alpha_bar_s
        x0_variance = (beta_bar_t / alpha_bar_t * (1 - gamma)).clamp(0, 1)
        weight = (alpha_bar_s.sqrt() - ((beta_bar_s - lambda_sq).clamp(min=0) * alpha_bar_t / beta_bar_t).sqrt()) ** 2
        return lambda_sq + weight * x0_variance

    def _last_step_log_variance(self, timesteps: torch.Tensor) -> torch.Tensor:
        """log β̃ of the training step n → n − 1 that lands on t (n = t + 1, kept inside [1, T − 1]).

        Stands in for the posterior variance on the step that returns x_0, where it is 0 (Ho et al. 2020, code).
        """
        n = (timesteps + 1).clamp(1, self.config.num_train_timesteps - 1)
        return torch.log(posterior_variance_between(self.alpha_bar(n).double(), self.alpha_bar(n - 1).double()))

    def split_model_output(
        self, model_output: torch.Tensor, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split a learned-variance network's 2C output channels into (prediction, variance channels)."""
        channels = sample.shape[1]
        if model_output.shape[1] == 2 * channels:
            prediction, model_variance = torch.split(model_output, channels, dim=1)
            return prediction, model_variance
        if self.config.reverse_variance in LEARNED_VARIANCES:
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
