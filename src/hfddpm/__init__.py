"""hfddpm: denoising diffusion probabilistic models and their fast samplers, built on diffusers."""

__version__ = "0.1.0"

from .evaluation import evaluate  # noqa: E402
from .models import UNET_PRESETS, GaussianMixtureDenoiser, create_unet, unet_config  # noqa: E402
from .pipelines import HFDDPMPipeline  # noqa: E402
from .schedulers import DDIMScheduler, DDPMScheduler, ReverseVariance  # noqa: E402

__all__ = [
    "UNET_PRESETS",
    "DDIMScheduler",
    "DDPMScheduler",
    "GaussianMixtureDenoiser",
    "HFDDPMPipeline",
    "ReverseVariance",
    "__version__",
    "create_unet",
    "evaluate",
    "unet_config",
]
