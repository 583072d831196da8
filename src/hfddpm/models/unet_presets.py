"""Named `UNet2DModel` configurations, from a test-sized network to the published DDPM architectures."""

from __future__ import annotations

import numbers
from types import MappingProxyType
from typing import Any

from diffusers import UNet2DModel

# The sinusoidal time embedding of Ho et al. (2020): sin before cos, frequencies 10000^(−i/(d/2 − 1)).
_DDPM_TIME_EMBEDDING = {"flip_sin_to_cos": False, "freq_shift": 1}

# One grey channel, three resolutions of 32, 64, 64 channels with one residual block each, attention at the lowest.
_SMALL_GREY = {
    "sample_size": 8,
    "in_channels": 1,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    "attention_head_dim": 32,
}

_PRESETS = {
    # For tests and smoke runs: 0.18M parameters, one attention level.
    "tiny": {
        "sample_size": 16,
        "in_channels": 3,
        "block_out_channels": (16, 32),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        "norm_num_groups": 8,
        "attention_head_dim": 8,
    },
    # The built-in digits at their native 8×8 on a CPU budget: 1.1M parameters, three resolutions (8, 4, 2),
    # attention at the lowest.
    "digits": _SMALL_GREY,
    # MNIST at 28×28: 6.5M parameters, three resolutions (28, 14, 7), two residual blocks per resolution,
    # attention at 7×7, dropout 0.1 (the CIFAR-10 model's recipe at a third of its width).
    "mnist-28": {
        "sample_size": 28,
        "in_channels": 1,
        "block_out_channels": (64, 128, 128),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "attention_head_dim": None,
        "dropout": 0.1,
        **_DDPM_TIME_EMBEDDING,
    },
    # MNIST-format data (Fashion-MNIST, MNIST) at 28×28 on 2 CPU cores: the digits' network (1.1M parameters), at the
    # resolutions of "mnist-28" (28, 14, 7) with half its width and one residual block each; a training step costs
    # 1.1 GFLOP per image (forward and backward), 6× less than "mnist-28" (benchmarks/RESULTS.md, "A 28×28 preset").
    "mnist-28-cpu": {**_SMALL_GREY, "sample_size": 28, **_DDPM_TIME_EMBEDDING},
    # Latents of the autoencoder presets (4×7×7 for 28×28 images, 4×8×8 for 32×32): one resolution, which any latent
    # side allows (7 cannot be halved), of 96 channels with two residual blocks and attention in the middle block;
    # 2.0M parameters, a training step 0.45 GFLOP per 4×7×7 latent (forward and backward), 2.5× less than
    # "mnist-28-cpu" per 28×28 image.
    "latent-small": {
        "sample_size": 7,
        "in_channels": 4,
        "block_out_channels": (96,),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",),
        "attention_head_dim": 32,
        **_DDPM_TIME_EMBEDDING,
    },
    # Ho et al. (2020), appendix B, CIFAR-10: 35.7M parameters, channel multipliers (1, 2, 2, 2), two residual
    # blocks per resolution, single-head self-attention at 16×16, dropout 0.1 (google/ddpm-cifar10-32's layout).
    "ddpm-cifar10-32": {
        "sample_size": 32,
        "in_channels": 3,
        "block_out_channels": (128, 256, 256, 256),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": None,
        "downsample_padding": 0,
        "norm_eps": 1e-6,
        "dropout": 0.1,
        **_DDPM_TIME_EMBEDDING,
    },
    # Nichol & Dhariwal (2021), ImageNet 64×64: channel multipliers (1, 2, 3, 4) on 128 channels, three
    # residual blocks per resolution, attention at 16×16 and 8×8 (64 channels per head here).
    "improved-ddpm-64": {
        "sample_size": 64,
        "in_channels": 3,
        "block_out_channels": (128, 256, 384, 512),
        "layers_per_block": 3,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "attention_head_dim": 64,
        "norm_eps": 1e-6,
        **_DDPM_TIME_EMBEDDING,
    },
}

# Read-only: a preset is the same network in every run.
UNET_PRESETS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {name: MappingProxyType(config) for name, config in _PRESETS.items()}
)


def unet_config(preset: str, learned_variance: bool = False, **overrides: Any) -> dict[str, Any]:
    """The `UNet2DModel` keyword arguments of a preset, with `overrides` applied.

    `out_channels` is `in_channels`, doubled when `learned_variance` is set: the network then outputs the
    prediction and the variance channels of p_θ(x_{t−1}|x_t) (Nichol & Dhariwal 2021, §3.1).
    """
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {preset!r}; choose one of {sorted(UNET_PRESETS)}")
    if "out_channels" in overrides:
        raise ValueError("out_channels follows in_channels and learned_variance; set those instead")
    config = {**UNET_PRESETS[preset], **overrides}
    config["out_channels"] = config["in_channels"] * (2 if learned_variance else 1)
    return config


def check_sample_size(config: Any, source: str) -> None:
    """Refuse a size the UNet of `config` (named `source` in the message) cannot halve at every downsampling: its
    skip connections would not line up, and the first forward pass would fail deep inside diffusers."""
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    size = config["sample_size"]
    for side in (size,) if isinstance(size, numbers.Integral) else tuple(size):
        if side % factor:
            lower, upper = side // factor * factor, (side // factor + 1) * factor
            raise ValueError(
                f"sample_size={side} is not divisible by {factor}, the downsampling factor of {source} "
                f"({len(config['block_out_channels'])} resolutions); use a multiple of {factor} such as "
                f"{f'{lower} or {upper}' if lower else upper}"
            )


def create_unet(preset: str, learned_variance: bool = False, **overrides: Any) -> UNet2DModel:
    """A randomly initialised `UNet2DModel` built from `unet_config(preset, learned_variance, **overrides)`."""
    unet = UNet2DModel(**unet_config(preset, learned_variance, **overrides))
    check_sample_size(unet.config, f"UNet preset {preset!r}")
    return unet
