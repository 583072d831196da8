"""Named `UNet2DModel` configurations, from a test-sized network to the published DDPM architectures."""

from __future__ import annotations

import math
import numbers
from types import MappingProxyType
from typing import Any

import torch
from diffusers import UNet2DModel

from ..arguments import is_integer, is_number

# The sinusoidal time embedding of Ho et al. (2020): sin before cos, frequencies 10000^(−i/(d/2 − 1)).
_DDPM_TIME_EMBEDDING = {"flip_sin_to_cos": False, "freq_shift": 1}

UNET_PRESETS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {
        # For tests and smoke runs: 0.18M parameters, one attention level.
        "tiny": MappingProxyType(
            {
                "sample_size": 16,
                "in_channels": 3,
                "block_out_channels": (16, 32),
                "layers_per_block": 1,
                "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
                "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
                "norm_num_groups": 8,
                "attention_head_dim": 8,
            }
        ),
        # The built-in digits at their native 8×8 on a CPU budget: 1.1M parameters, three resolutions (8, 4, 2),
        # attention at the lowest.
        "digits": MappingProxyType(
            {
                "sample_size": 8,
                "in_channels": 1,
                "block_out_channels": (32, 64, 64),
                "layers_per_block": 1,
                "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                "attention_head_dim": 32,
            }
        ),
        # MNIST at 28×28: 6.5M parameters, three resolutions (28, 14, 7), two residual blocks per resolution,
        # attention at 7×7, dropout 0.1 (the CIFAR-10 model's recipe at a third of its width).
        "mnist-28": MappingProxyType(
            {
                "sample_size": 28,
                "in_channels": 1,
                "block_out_channels": (64, 128, 128),
                "layers_per_block": 2,
                "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                "attention_head_dim": None,
                "dropout": 0.1,
                **_DDPM_TIME_EMBEDDING,
            }
        ),
        # Ho et al. (2020), appendix B, CIFAR-10: 35.7M parameters, channel multipliers (1, 2, 2, 2), two residual
        # blocks per resolution, single-head self-attention at 16×16, dropout 0.1 (google/ddpm-cifar10-32's layout).
        "ddpm-cifar10-32": MappingProxyType(
            {
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
            }
        ),
        # Nichol & Dhariwal (2021), ImageNet 64×64: channel multipliers (1, 2, 3, 4) on 128 channels, three
        # residual blocks per resolution, attention at 16×16 and 8×8 (64 channels per head here).
        "improved-ddpm-64": MappingProxyType(
            {
                "sample_size": 64,
                "in_channels": 3,
                "block_out_channels": (128, 256, 384, 512),
                "layers_per_block": 3,
                "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                "attention_head_dim": 64,
                "norm_eps": 1e-6,
                **_DDPM_TIME_EMBEDDING,
            }
        ),
    }
)


def unet_config(preset: str, learned_variance: bool = False, **overrides: Any) -> dict[str, Any]:
    """The `UNet2DModel` keyword arguments of a preset, with `overrides` applied.

    `out_channels` is `in_channels`, doubled when `learned_variance` is set: the network then outputs the
    prediction and the variance channels of p_θ(x_{t−1}|x_t) (Nichol & Dhariwal 2021, §3.1).
    """
    if not isinstance(preset, str):
        raise TypeError(f"the UNet preset is a name such as 'digits', got {preset!r} ({type(preset).__name__})")
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {preset!r}; choose one of {sorted(UNET_PRESETS)}")
    if not isinstance(learned_variance, bool):
        raise TypeError(f"learned_variance must be True or False, got {learned_variance!r}")
    if "out_channels" in overrides:
        raise ValueError("out_channels follows in_channels and learned_variance; set those instead")
    config = {**UNET_PRESETS[preset], **overrides}
    in_channels = config["in_channels"]  # of the wrong kind, left for check_unet_config to name
    config["out_channels"] = in_channels * (2 if learned_variance else 1) if is_integer(in_channels) else in_channels
    return check_unet_config(config, f"UNet preset {preset!r}")


# Bounds far above any UNet hfddpm trains, below sizes whose tensors could not be allocated: a config beyond them is
# refused before a single weight is.
MAX_SAMPLE_SIZE = 16384
MAX_CHANNELS = 65536
MAX_PARAMETERS = 10**10
# The keys a saved UNet2DModel config always holds: without one, diffusers would silently build its default.
REQUIRED_KEYS = ("sample_size", "in_channels", "out_channels", "block_out_channels", "down_block_types")
REQUIRED_KEYS += ("up_block_types", "layers_per_block")
# UNet2DModel options by kind: counts (positive integers, None allowed for the optional ones), other integers,
# numbers, switches and names.
_COUNTS = ("in_channels", "out_channels", "layers_per_block", "norm_num_groups")
_OPTIONAL_COUNTS = ("attention_head_dim", "time_embedding_dim", "attn_norm_num_groups", "num_class_embeds")
_INTEGERS = ("freq_shift", "downsample_padding", "num_train_timesteps")
_NUMBERS = ("mid_block_scale_factor", "dropout", "norm_eps")
_SWITCHES = ("center_input_sample", "flip_sin_to_cos", "add_attention")
_NAMES = ("time_embedding_type", "act_fn", "resnet_time_scale_shift", "downsample_type", "upsample_type")
_OPTIONAL_NAMES = ("mid_block_type", "class_embed_type")


def _require(ok: bool, key: str, source: str, requirement: str, value: Any, error: type = ValueError) -> None:
    """Raise `error` naming `key`, `source`, what it must be and what it is, unless `ok`."""
    if not ok:
        raise error(f"{key} in {source} must be {requirement}, got {value!r} ({type(value).__name__})")


def _check_sizes(config: dict[str, Any], source: str) -> None:
    """sample_size and block_out_channels, where present: integers within bounds; then the downsampling."""
    if "sample_size" in config:
        size = config["sample_size"]
        sides = [size] if is_integer(size) else list(size) if isinstance(size, (list, tuple)) else []
        is_size = len(sides) in (1, 2) and all(map(is_integer, sides))
        _require(is_size, "sample_size", source, "a size or [height, width]", size, TypeError)
        within = all(1 <= side <= MAX_SAMPLE_SIZE for side in sides)
        _require(within, "sample_size", source, f"in [1, {MAX_SAMPLE_SIZE}]", size)
    if "block_out_channels" in config:
        channels = config["block_out_channels"]
        is_counts = isinstance(channels, (list, tuple)) and len(channels) > 0 and all(map(is_integer, channels))
        _require(is_counts, "block_out_channels", source, "a list of counts", channels, TypeError)
        within = all(1 <= count <= MAX_CHANNELS for count in channels)
        _require(within, "block_out_channels", source, f"in [1, {MAX_CHANNELS}]", channels)
        if "sample_size" in config:
            check_sample_size(config, source)


def _check_block_types(config: dict[str, Any], source: str) -> None:
    """down_block_types and up_block_types, where present: lists of names, one per block_out_channels."""
    for key in (key for key in ("down_block_types", "up_block_types") if key in config):
        names = config[key]
        is_names = isinstance(names, (list, tuple)) and all(isinstance(name, str) for name in names)
        _require(is_names, key, source, "a list of block class names", names, TypeError)
        if "block_out_channels" in config:
            blocks = len(config["block_out_channels"])
            _require(len(names) == blocks, key, source, f"{blocks} names, one per block_out_channels", names)


def _check_kinds(config: dict[str, Any], source: str) -> None:
    """Every other UNet2DModel option present: the kind of value it takes."""
    for key in (key for key in (*_COUNTS, *_OPTIONAL_COUNTS) if key in config):
        value = config[key]
        if value is not None or key in _COUNTS:
            _require(is_integer(value), key, source, "a positive integer", value, TypeError)
            _require(1 <= value <= MAX_CHANNELS, key, source, f"in [1, {MAX_CHANNELS}]", value)
    for key in (key for key in _INTEGERS if config.get(key) is not None):
        _require(is_integer(config[key]), key, source, "an integer", config[key], TypeError)
        _require(config[key] >= 0, key, source, "at least 0", config[key])
    for key in (key for key in _NUMBERS if key in config):
        value = config[key]
        _require(is_number(value), key, source, "a number", value, TypeError)
        _require(math.isfinite(value) and value >= 0, key, source, "a finite number >= 0", value)
    for key in (key for key in _SWITCHES if key in config):
        _require(isinstance(config[key], bool), key, source, "a switch, true or false", config[key], TypeError)
    for key in (key for key in (*_NAMES, *_OPTIONAL_NAMES) if key in config):
        optional = key in _OPTIONAL_NAMES and config[key] is None
        _require(optional or isinstance(config[key], str), key, source, "a name (a string)", config[key], TypeError)


def check_unet_config(
    config: dict[str, Any], source: str, required: tuple[str, ...] = REQUIRED_KEYS
) -> dict[str, Any]:
    """`config` (UNet2DModel keyword arguments, named `source` in errors) with NumPy integers made plain ints.

    Refused in one line naming the key: a `required` key missing (diffusers' defaults fill the others), a value of
    the wrong kind or an absurd size, a sample size the UNet cannot halve at every downsampling, or a network of more
    than `MAX_PARAMETERS` parameters; nothing is allocated (the network is measured on the meta device).
    """
    if not isinstance(config, dict):
        raise TypeError(f"{source} must hold a JSON object of UNet2DModel options, got {type(config).__name__}")
    if missing := [key for key in required if key not in config]:
        raise ValueError(
            f"{source} has no {missing[0]}; copy the config again from its source or re-save the model with "
            "save_pretrained"
        )
    _check_sizes(config, source)
    _check_block_types(config, source)
    _check_kinds(config, source)
    config = {key: _plain(value) for key, value in config.items()}
    count = sum(p.numel() for p in meta_unet(config, source).parameters())
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"{source} describes a UNet of {count:.3g} parameters, more than hfddpm builds ({MAX_PARAMETERS:.0e}); "
            "check block_out_channels and layers_per_block"
        )
    return config


def _plain(value: Any) -> Any:
    """NumPy integers as ints, inside lists too (a config must be written as JSON)."""
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return int(value) if is_integer(value) else value


def meta_unet(config: dict[str, Any], source: str) -> UNet2DModel:
    """The UNet2DModel of `config` on the meta device (shapes only, nothing allocated); an option diffusers refuses
    is re-raised as one line naming `source`."""
    try:
        with torch.device("meta"):
            return UNet2DModel(**config)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{source} does not describe a UNet2DModel diffusers can build ({reason}); fix it") from None


def check_sample_size(config: dict[str, Any], source: str) -> None:
    """Refuse a size the UNet of `config` (named `source` in the message) cannot halve at every downsampling: its
    skip connections would not line up, and the first forward pass would fail deep inside diffusers."""
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    size = config["sample_size"]
    for side in (size,) if isinstance(size, numbers.Integral) else tuple(size):
        if side % factor:
            lower, upper = side // factor * factor, (side // factor + 1) * factor
            nearest = f"{lower} or {upper}" if lower else f"{upper}"
            raise ValueError(
                f"sample_size={side} is not divisible by {factor}, the downsampling factor of {source} "
                f"({len(config['block_out_channels'])} resolutions); use a multiple of {factor} such as {nearest}"
            )


def create_unet(preset: str, learned_variance: bool = False, **overrides: Any) -> UNet2DModel:
    """A randomly initialised `UNet2DModel` built from `unet_config(preset, learned_variance, **overrides)`."""
    return UNet2DModel(**unet_config(preset, learned_variance, **overrides))
