"""A `UNet2DModel` that also sees the Fourier features of its input (Kingma et al. 2021, App. C)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DModel  # the pipeline loader finds ModelMixin in this module
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

# 2ⁿπ for n = 3 … 8: periods from 1/4 of [−1, 1] down to one 8-bit level (2/256).
DEFAULT_EXPONENTS = (3, 4, 5, 6, 7, 8)


class FourierFeaturesUNet(ModelMixin, ConfigMixin):
    """A `UNet2DModel` fed z and sin(2ⁿπ z), cos(2ⁿπ z) of every channel for n in `exponents` (VDM's Fourier
    features): at low noise z = α x + σ ε differs from an 8-bit level by a few σ, a residual a network reading z alone
    barely resolves, and the fine features turn it into an O(1) signal, which the likelihood at low noise needs.

    Called and configured like the UNet it holds (`in_channels` is the sample's; the inner UNet takes
    C(1 + 2 · len(exponents)) channels), so pipelines, training and evaluation use it unchanged; a pipeline holding it
    names this class in `model_index.json`, which stock diffusers loads only where hfddpm is installed.
    """

    @register_to_config
    def __init__(
        self,
        *,  # by name: register_to_config records positional arguments as defaults
        unet_config: dict,
        exponents: Sequence[int] = DEFAULT_EXPONENTS,
        in_channels: int | None = None,
        sample_size: int | None = None,
        out_channels: int | None = None,
        num_class_embeds: int | None = None,
        class_embed_type: str | None = None,
    ) -> None:
        """`unet_config` is the UNet's for the sample's channels; the other keys mirror it, for what reads a UNet's
        config (pipelines, class conditioning), and are set from it."""
        super().__init__()
        channels = unet_config["in_channels"]
        self.unet = UNet2DModel.from_config({**unet_config, "in_channels": channels * (1 + 2 * len(exponents))})
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.tensor(list(exponents)), persistent=False)
        mirrored = ("in_channels", "sample_size", "out_channels", "num_class_embeds", "class_embed_type")
        self.register_to_config(**{key: unet_config.get(key) for key in mirrored})

    @classmethod
    def around(cls, unet: UNet2DModel, exponents: Sequence[int] = DEFAULT_EXPONENTS) -> FourierFeaturesUNet:
        """A freshly initialised model with `unet`'s architecture for the sample's channels."""
        model = cls(unet_config=dict(unet.config), exponents=list(exponents))
        if unet.is_gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        return model

    def forward(
        self, sample: torch.Tensor, timestep, class_labels: torch.Tensor | None = None, return_dict: bool = True
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        angles = sample.unsqueeze(2) * self.frequencies.to(sample).reshape(1, 1, -1, 1, 1)  # (B, C, n, H, W)
        features = torch.cat([angles.sin(), angles.cos()], dim=2).flatten(1, 2)
        return self.unet(torch.cat([sample, features], dim=1), timestep, class_labels, return_dict=return_dict)
