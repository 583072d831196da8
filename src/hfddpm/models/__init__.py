"""Networks: named UNet2DModel and AutoencoderKL presets, the latent space of an autoencoder, a UNet with Fourier
features, and the exact denoiser of Gaussian-mixture data."""

from .autoencoder_presets import AUTOENCODER_PRESETS, create_autoencoder
from .fourier_features import FourierFeaturesUNet
from .gaussian_mixture_denoiser import GaussianMixtureDenoiser
from .unet_presets import UNET_PRESETS, create_unet, unet_config

__all__ = [
    "AUTOENCODER_PRESETS",
    "UNET_PRESETS",
    "FourierFeaturesUNet",
    "GaussianMixtureDenoiser",
    "create_autoencoder",
    "create_unet",
    "unet_config",
]
