"""Noise schedules and sampling steps: diffusers' DDPM and DDIM schedulers with the closed forms they lack."""

import diffusers

from .gaussian_diffusion import GaussianDiffusionMixin, ReverseVariance, convert_prediction
from .scheduling_ddim import DDIMScheduler
from .scheduling_ddpm import DDPMScheduler
from .scheduling_score_sde import ScoreSDEScheduler

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "GaussianDiffusionMixin",
    "ReverseVariance",
    "ScoreSDEScheduler",
    "convert_prediction",
]


def as_hfddpm_scheduler(scheduler: diffusers.SchedulerMixin) -> DDPMScheduler | DDIMScheduler | None:
    """`scheduler` if it is hfddpm's DDPM or DDIM scheduler, hfddpm's of its config for a stock one, else None."""
    for stock, ours in ((diffusers.DDPMScheduler, DDPMScheduler), (diffusers.DDIMScheduler, DDIMScheduler)):
        if isinstance(scheduler, stock):
            return scheduler if isinstance(scheduler, ours) else ours.from_config(scheduler.config)
    return None
