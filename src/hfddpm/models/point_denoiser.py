"""A small MLP denoiser for 2-D points: the toy network of the diffusion tutorials, called like a UNet2DModel."""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.unets.unet_2d import UNet2DOutput

COORDINATE_SCALE = 25.0


class PointDenoiser(ModelMixin, ConfigMixin):
    """x_t (and t's sinusoidal embedding) → a stack of linear layers with SiLU → the prediction of p_θ(x_{t−1}|x_t).

    Each coordinate enters both as is and as sinusoidal features of 25·x (Fourier features, Tancik et al. 2020):
    near t = 0 the ε to predict varies on the scale of √(1 − ᾱ_t) ≈ 0.03, finer than a plain MLP of raw
    coordinates learns in a few thousand steps (it then predicts ε ≈ 0 there and samples stay blurred).

    Points are tensors of shape (B, dims, 1, 1), so hfddpm's schedulers treat them as 1×1 "images" with `dims`
    channels. With `learned_variance` the last layer has twice the outputs: the mean (through the ε, x_0 or v
    prediction the scheduler turns into μ̃) and the variance (the ``learned_range`` interpolation v) of each
    coordinate, as the network of the source documents' 2-D example does."""

    @register_to_config
    def __init__(
        self,
        dims: int = 2,
        hidden: int = 128,
        layers: int = 3,
        embedding_dim: int = 32,
        learned_variance: bool = False,
    ) -> None:
        super().__init__()
        blocks, width = [], dims * (1 + embedding_dim) + embedding_dim
        for _ in range(layers):
            blocks += [torch.nn.Linear(width, hidden), torch.nn.SiLU()]
            width = hidden
        self.body = torch.nn.Sequential(*blocks)
        self.head = torch.nn.Linear(hidden, dims * (2 if learned_variance else 1))
        self.register_to_config(in_channels=dims, out_channels=dims * (2 if learned_variance else 1), sample_size=1)

    def forward(
        self, sample: torch.Tensor, timestep: int | torch.Tensor, return_dict: bool = True
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        points = sample.flatten(1)
        timesteps = torch.as_tensor(timestep, device=points.device).reshape(-1).expand(len(points))
        # t and 25·x as [sin(s ω_i), cos(s ω_i)], ω_i = 10000^(−i/(d/2)) (Vaswani et al. 2017; Ho et al. 2020, App. B)
        dim = self.config.embedding_dim
        coordinates = get_timestep_embedding(COORDINATE_SCALE * points.reshape(-1), dim, downscale_freq_shift=0)
        time = get_timestep_embedding(timesteps, dim, downscale_freq_shift=0)
        features = torch.cat([points, coordinates.reshape(len(points), -1), time], dim=1)
        output = self.head(self.body(features)).reshape(len(points), -1, 1, 1)
        return UNet2DOutput(sample=output) if return_dict else (output,)
