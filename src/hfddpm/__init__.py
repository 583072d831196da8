"""hfddpm: denoising diffusion probabilistic models and their fast samplers, built on diffusers.

The names below are imported on first use (as diffusers does), so `import hfddpm` stays light: diffusers' model
classes pull in transformers, and evaluation pulls in datasets, neither of which a scheduler needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "UNET_PRESETS": "models",
    "GaussianMixtureDenoiser": "models",
    "create_unet": "models",
    "unet_config": "models",
    "HFDDPMPipeline": "pipelines",
    "DDIMScheduler": "schedulers",
    "DDPMScheduler": "schedulers",
    "ReverseVariance": "schedulers",
    "evaluate": "evaluation",
}
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

if TYPE_CHECKING:
    from .evaluation import evaluate
    from .models import UNET_PRESETS, GaussianMixtureDenoiser, create_unet, unet_config
    from .pipelines import HFDDPMPipeline
    from .schedulers import DDIMScheduler, DDPMScheduler, ReverseVariance


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hfddpm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
