"""hfddpm: denoising diffusion probabilistic models and their fast samplers, built on diffusers.

The names below are imported on first use (as diffusers does), so `import hfddpm` stays light: diffusers' model
classes pull in transformers, and evaluation pulls in datasets, neither of which a scheduler needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "AUTOENCODER_PRESETS": "models",
    "UNET_PRESETS": "models",
    "FourierFeaturesUNet": "models",
    "GaussianMixtureDenoiser": "models",
    "create_unet": "models",
    "unet_config": "models",
    "create_autoencoder": "models",
    "AutoencoderPipeline": "pipelines",
    "HFDDPMPipeline": "pipelines",
    "HFDDPMInpaintPipeline": "pipelines",
    "DDIMScheduler": "schedulers",
    "DDPMScheduler": "schedulers",
    "ReverseVariance": "schedulers",
    "ScoreSDEScheduler": "schedulers",
    "evaluate": "evaluation",
}
__all__ = [
    "AUTOENCODER_PRESETS",
    "UNET_PRESETS",
    "AutoencoderPipeline",
    "DDIMScheduler",
    "DDPMScheduler",
    "FourierFeaturesUNet",
    "GaussianMixtureDenoiser",
    "HFDDPMInpaintPipeline",
    "HFDDPMPipeline",
    "ReverseVariance",
    "ScoreSDEScheduler",
    "__version__",
    "create_autoencoder",
    "create_unet",
    "evaluate",
    "unet_config",
]

if TYPE_CHECKING:
    from .evaluation import evaluate
    from .models import (
        AUTOENCODER_PRESETS,
        UNET_PRESETS,
        FourierFeaturesUNet,
        GaussianMixtureDenoiser,
        create_autoencoder,
        create_unet,
        unet_config,
    )
    from .pipelines import AutoencoderPipeline, HFDDPMInpaintPipeline, HFDDPMPipeline
    from .schedulers import DDIMScheduler, DDPMScheduler, ReverseVariance, ScoreSDEScheduler


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
