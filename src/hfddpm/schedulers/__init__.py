"""Noise schedules and sampling steps: diffusers' DDPM and DDIM schedulers with the closed forms they lack."""

from .gaussian_diffusion import GaussianDiffusionMixin, ReverseVariance, convert_prediction
from .scheduling_ddim import DDIMScheduler
from .scheduling_ddpm import DDPMScheduler

__all__ = ["DDIMScheduler", "DDPMScheduler", "GaussianDiffusionMixin", "ReverseVariance", "convert_prediction"]
