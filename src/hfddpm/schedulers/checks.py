"""What a DDPM or DDIM scheduler config and `set_timesteps` may hold, checked when given (by a caller or a config
file): a value that would sample with wrong numbers is refused in one line; names unknown to diffusers get the list
of choices instead of a later NotImplementedError."""

from __future__ import annotations

import math
from typing import Any

from ..arguments import checked_integer, checked_number, is_number

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
# How `set_timesteps(S)` picks S of the T training timesteps (t descending, sampled from the first):
# - "leading": 0, T/S, 2T/S, … (stock default; never starts at T − 1, so x_T's noise level is not the first one).
# - "trailing": T − 1, T − 1 − T/S, …: starts at pure noise (Lin et al. 2024, §3.3) but ends at T/S − 1, so with few
#   steps the final jump to x_0 returns a mean over many images (blurred) when the data is spread out.
# - "linspace": round(linspace(0, T − 1, S)): both ends, T − 1 and 0, evenly in between (the DDPM/DDIM papers' grid).
# - "quadratic": ⌊(i √(0.8 T)/(S − 1))²⌋ (Song et al. 2021, App. D.2): dense at low noise, where detail forms;
#   their choice for the linear schedule on CIFAR-10 (it starts at 0.8 T, where that schedule is already noise).
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace", "quadratic")
BETA_SCHEDULE_ALIASES = {"cosine": "squaredcos_cap_v2"}
# Stock beta schedules that read beta_start and beta_end (the cosine and Laplace ones ignore them).
_SCHEDULES_WITH_ENDPOINTS = ("linear", "scaled_linear", "sigmoid")
# What η means, for the messages refusing one (Song et al. 2021, eq. 16: η² scales the DDPM posterior variance;
# above 1 the noise can exceed what the step leaves room for, and the mean's square root turns NaN).
ETA_MEANING = "0 is deterministic DDIM, 1 is DDPM-like"
# Stock numbers read only while their switch is on: (switch, key, interval, meaning). Outside it stock samples
# constant or NaN images: clip_sample_range r < 0 clamps every x̂_0 to −r (torch.clamp's max wins), 0 to 0;
# sample_max_value < 0 makes every thresholded x̂_0 one value, 0 makes it 0/0; NaN in either gives NaN. A ratio
# outside [0, 1] fails torch.quantile at the first step, and 0 is no percentile (the smallest |x̂_0|).
_SWITCHED_NUMBERS = (
    ("clip_sample", "clip_sample_range", "(0, inf)", "clip_sample clips x̂_0 to ± it"),
    ("thresholding", "dynamic_thresholding_ratio", "(0, 1]", "thresholding's quantile of |x̂_0|"),
    ("thresholding", "sample_max_value", "(0, inf)", "thresholding's largest threshold"),
)


def check_scheduler_options(
    options: dict[str, Any], beta_schedules: tuple[str, ...], reverse_variances: tuple[str, ...]
) -> dict[str, Any]:
    """The constructor's `options` with T a plain int, the beta schedule under its stock name and Γ_t as plain
    floats (a config is JSON); refused in one line when the noise schedule would hold a β outside (0, 1) (its ᾱ_t
    then stop being noise levels) or a name is unknown.

    `beta_start` ≤ `beta_end` lie in (0, 1) where the schedule reads them; `trained_betas` holds one β in (0, 1)
    per training timestep (stock accepts another length and fails with an IndexError when sampling), and then
    `beta_schedule` is ignored, as in stock diffusers. The clipping and thresholding numbers where switched on
    (`_SWITCHED_NUMBERS`), and `steps_offset`, are refused where stock samples constant or NaN images or fails
    mid-sampling.
    """
    options = dict(options)
    steps = options["num_train_timesteps"] = checked_integer("num_train_timesteps", options["num_train_timesteps"])
    schedule = options["beta_schedule"] = BETA_SCHEDULE_ALIASES.get(options["beta_schedule"], options["beta_schedule"])
    if options["trained_betas"] is not None:
        _check_trained_betas(options["trained_betas"], steps)
    elif schedule not in beta_schedules:
        choices = (*beta_schedules, *BETA_SCHEDULE_ALIASES)
        raise ValueError(f"beta_schedule must be one of {choices} (or pass trained_betas), got {schedule!r}")
    elif schedule in _SCHEDULES_WITH_ENDPOINTS:
        start = checked_number("beta_start", options["beta_start"], "(0, 1)")
        if start > checked_number("beta_end", options["beta_end"], "(0, 1)"):
            end = options["beta_end"]
            raise ValueError(f"beta_start must not exceed beta_end (the noise grows with t), got {start} > {end}")
    for switch, name, interval, meaning in _SWITCHED_NUMBERS:
        if options[switch]:
            checked_number(name, options[name], interval, meaning)
    # "leading" spacing with S steps samples t = k⌊T/S⌋ + steps_offset, k = 0, …, S − 1 (the other spacings ignore
    # the offset), so every t stays in [0, T − 1] exactly when 0 ≤ steps_offset ≤ T − 1 − (S − 1)⌊T/S⌋
    # = ⌊T/S⌋ + (T mod S) − 1: T − 1 at S = 1, 0 at S = T (stock's steps_offset=1 fits every S < T). S comes later,
    # so only an offset out of range for every S is refused here; a larger one for the S asked fails at the first
    # step with an IndexError. A negative offset gives t < 0, which stock reads silently as ᾱ_{T−1} (Python's
    # index −1) and hfddpm's DDIM as x_0 (ᾱ = 1: NaN images).
    options["steps_offset"] = checked_integer("steps_offset", options["steps_offset"], 0, steps - 1)
    for name, choices in (("prediction_type", PREDICTION_TYPES), ("timestep_spacing", TIMESTEP_SPACINGS)):
        if options[name] not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {options[name]!r}")
    if (variance := options["reverse_variance"]) not in (None, *reverse_variances):
        raise ValueError(f"reverse_variance must be None or one of {reverse_variances}, got {variance!r}")
    options["reverse_variance"] = None if variance is None else str(getattr(variance, "value", variance))
    gamma = options["analytic_gamma"]
    if options["reverse_variance"] == "analytic" and gamma is None:
        raise ValueError(
            "reverse_variance='analytic' needs analytic_gamma, the model's Γ_t: estimate it with "
            "hfddpm.schedulers.analytic_dpm.fit_analytic_variance (or `hfddpm analytic-variance CHECKPOINT`)"
        )
    if gamma is not None:
        if len(gamma) != steps:
            raise ValueError(f"analytic_gamma needs one Γ_t per training timestep ({steps}), got {len(gamma)}")
        options["analytic_gamma"] = [
            checked_number(f"analytic_gamma[{t}]", g, "[0, inf)") for t, g in enumerate(gamma)
        ]
    return options


def _check_trained_betas(trained_betas: Any, num_train_timesteps: int) -> None:
    values = trained_betas.tolist() if hasattr(trained_betas, "tolist") else trained_betas
    if not isinstance(values, (list, tuple)) or not all(is_number(v) for v in values):
        raise TypeError(f"trained_betas must be a 1-D sequence of numbers, got {type(trained_betas).__name__}")
    if len(values) != num_train_timesteps:
        raise ValueError(
            f"trained_betas needs one β per training timestep (num_train_timesteps={num_train_timesteps}), got "
            f"{len(values)}"
        )
    if bad := [(t, v) for t, v in enumerate(values) if not (math.isfinite(v) and 0 < v < 1)]:
        raise ValueError(f"trained_betas must be finite numbers in (0, 1), got {bad[0][1]} at timestep {bad[0][0]}")


def checked_timesteps(timesteps: Any, num_train_timesteps: int) -> list[int]:
    """Custom sampling timesteps as plain ints, refused unless each is an integer in [0, T − 1] and they strictly
    descend (stock truncates 99.5 to 99 and reads a negative t as ᾱ of the last timestep); a whole float such as
    999.0 counts as its integer, as stock casts another scheduler's float timesteps."""
    values = timesteps.tolist() if hasattr(timesteps, "tolist") else list(timesteps)
    if not values:
        raise ValueError("timesteps is empty; pass at least one training timestep, or num_inference_steps instead")
    values = [int(t) if isinstance(t, float) and t.is_integer() else t for t in values]
    values = [checked_integer(f"timesteps[{i}]", t, 0, num_train_timesteps - 1) for i, t in enumerate(values)]
    if any(later >= earlier for earlier, later in zip(values, values[1:], strict=False)):
        raise ValueError(f"timesteps must strictly descend (each step lands on an earlier timestep), got {values}")
    return values
