"""Networks: named UNet2DModel and AutoencoderKL presets, the latent space of an autoencoder, and the exact denoiser
of Gaussian-mixture data."""

from .autoencoder_presets import AUTOENCODER_PRESETS, create_autoencoder
from .gaussian_mixture_denoiser import GaussianMixtureDenoiser
from .unet_presets import UNET_PRESETS, create_unet, unet_config

__all__ = [
    "AUTOENCODER_PRESETS",
    "UNET_PRESETS",
    "GaussianMixtureDenoiser",
    "create_autoencoder",
    "create_unet",
    "unet_config",
]
