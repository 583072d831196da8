"""Networks: named UNet2DModel presets, and the exact denoiser of Gaussian-mixture data."""

from .gaussian_mixture_denoiser import GaussianMixtureDenoiser
from .unet_presets import UNET_PRESETS, create_unet, unet_config

__all__ = ["UNET_PRESETS", "GaussianMixtureDenoiser", "create_unet", "unet_config"]
