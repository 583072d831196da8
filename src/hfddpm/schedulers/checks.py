"""Checks of a noise schedule and of custom sampling timesteps (the numbers `hfddpm.arguments` checks one by one,
here checked together), each refused in one line before any work starts."""

from __future__ import annotations

import math
from typing import Any

from ..arguments import checked_integer, checked_number, is_number

# What η means, for the messages refusing one (Song et al. 2021, eq. 16: η² scales the DDPM posterior variance;
# above 1 the noise can exceed what the step leaves room for, and the mean's square root turns NaN).
ETA_MEANING = "0 is deterministic DDIM, 1 is DDPM-like"


# Stock beta schedules that read beta_start and beta_end (the cosine and Laplace ones ignore them).
_SCHEDULES_WITH_ENDPOINTS = ("linear", "scaled_linear", "sigmoid")


def check_noise_schedule(
    num_train_timesteps: Any, beta_start: Any, beta_end: Any, beta_schedule: str, trained_betas: Any
) -> int:
    """Refuse a noise schedule that would hold a β outside (0, 1) or NaN, whose ᾱ_t then stop being noise levels;
    return T as a plain int.

    T is a positive integer; `beta_start` ≤ `beta_end`, both in (0, 1), where the schedule reads them;
    `trained_betas` holds one β in (0, 1) per training timestep (stock accepts another length and fails with an
    IndexError when sampling).
    """
    num_train_timesteps = checked_integer("num_train_timesteps", num_train_timesteps)
    if trained_betas is not None:
        _check_trained_betas(trained_betas, num_train_timesteps)
    elif beta_schedule in _SCHEDULES_WITH_ENDPOINTS:
        start = checked_number("beta_start", beta_start, 0, 1, open_low=True, open_high=True)
        end = checked_number("beta_end", beta_end, 0, 1, open_low=True, open_high=True)
        if start > end:
            raise ValueError(
                f"beta_start must not exceed beta_end (the noise grows with t), got beta_start={start} > "
                f"beta_end={end}"
            )
    return num_train_timesteps


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
        t, v = bad[0]
        raise ValueError(f"trained_betas must be finite numbers in (0, 1), got {v} at timestep {t}")


def checked_timesteps(timesteps: Any, num_train_timesteps: int) -> list[int]:
    """Custom sampling timesteps as plain ints, refused unless each is an integer in [0, T − 1] and they strictly
    descend (stock truncates 99.5 to 99 and reads a negative t as ᾱ of the last timestep); a whole float such as
    999.0 counts as its integer."""
    values = timesteps.tolist() if hasattr(timesteps, "tolist") else list(timesteps)
    if not values:
        raise ValueError("timesteps is empty; pass at least one training timestep, or num_inference_steps instead")
    # a whole float is its integer, as stock casts a float tensor of timesteps (another scheduler's) to int64
    values = [int(t) if isinstance(t, float) and t.is_integer() else t for t in values]
    values = [checked_integer(f"timesteps[{i}]", t, 0, num_train_timesteps - 1) for i, t in enumerate(values)]
    if any(later >= earlier for earlier, later in zip(values, values[1:], strict=False)):
        raise ValueError(
            f"timesteps must be in strictly descending order (each step lands on an earlier timestep), got {values}"
        )
    return values
