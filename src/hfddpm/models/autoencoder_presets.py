"""Named `AutoencoderKL` configurations for latent diffusion: an image of side s maps to a 4-channel latent of side
s/4 (three resolutions, two downsamplings), as the first stage of Rombach et al. (2022) with a KL-regularised
latent, sized for small images."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from diffusers import AutoencoderKL

_THREE_RESOLUTIONS = {
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "latent_channels": 4,
}

_PRESETS = {
    # For tests: 16 channels at every resolution, 0.08M parameters.
    "tiny": {**_THREE_RESOLUTIONS, "in_channels": 3, "block_out_channels": (16, 16, 16), "norm_num_groups": 8},
    # 28×28 grey (Fashion-MNIST, MNIST) → 4×7×7 latents, 196 numbers for 784 pixels: 0.95M parameters, one residual
    # block per resolution of 32, 64, 64 channels.
    "grey-28": {
        **_THREE_RESOLUTIONS,
        "in_channels": 1,
        "sample_size": 28,
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
    },
    # 32×32 RGB (CIFAR-10) → 4×8×8 latents: 5.1M parameters, two residual blocks per resolution of 64, 128, 128.
    "rgb-32": {
        **_THREE_RESOLUTIONS,
        "in_channels": 3,
        "sample_size": 32,
        "block_out_channels": (64, 128, 128),
        "layers_per_block": 2,
    },
}

# Read-only: a preset is the same network in every run.
AUTOENCODER_PRESETS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {name: MappingProxyType(config) for name, config in _PRESETS.items()}
)


def autoencoder_config(preset: str, **overrides: Any) -> dict[str, Any]:
    """The `AutoencoderKL` keyword arguments of a preset, with `overrides` applied; `out_channels` follows
    `in_channels`."""
    config = {**AUTOENCODER_PRESETS[preset], **overrides}
    return {**config, "out_channels": config["in_channels"]}


def create_autoencoder(preset: str, **overrides: Any) -> AutoencoderKL:
    """A randomly initialised `AutoencoderKL` built from `autoencoder_config(preset, **overrides)`."""
    return AutoencoderKL(**autoencoder_config(preset, **overrides))
