"""The latent space of a diffusers autoencoder (`AutoencoderKL`), as latent diffusion uses it (Rombach et al. 2022,
§3.1 and §4.3.2): an image x in [−1, 1] maps to z = s·(E(x) − b), E(x) a draw from the encoder's
q(E|x) = N(μ(x), diag σ²(x)), and back to x̂ = D(z/s + b); s is the autoencoder's `scaling_factor`, 1/std of the
training latents (so that z has about unit variance, as the diffusion's x_0 must), b its `shift_factor` (0 when
unset, as in Stable Diffusion 1 and 2)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL


def encode(vae: AutoencoderKL, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = s·(E(x) − b) in float32, E(x) drawn from q(E|x) with `generator` (the mean μ(x) when it is None)."""
    posterior = vae.encode(images.to(vae.dtype)).latent_dist
    latents = posterior.mode() if generator is None else posterior.sample(generator)
    return (latents.float() - shift(vae)) * vae.config.scaling_factor


def decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """x̂ = D(z/s + b) in float32, about [−1, 1]."""
    return vae.decode((latents / vae.config.scaling_factor + shift(vae)).to(vae.dtype)).sample.float()


def image_size(vae: AutoencoderKL, latent_size: int) -> int:
    """The side of the images whose latents have side `latent_size`: one halving per resolution but the last."""
    return latent_size * 2 ** (len(vae.config.block_out_channels) - 1)


def shift(vae: AutoencoderKL) -> float:
    return vae.config.get("shift_factor") or 0.0


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, images: torch.Tensor, generator: torch.Generator) -> float:
    """s = 1/std of the unscaled latents E(x) − b of `images`, drawn from q(E|x) (Rombach et al. 2022, §4.3.2)."""
    posterior = vae.encode(images.to(vae.dtype)).latent_dist
    return 1.0 / float((posterior.sample(generator).float() - shift(vae)).std())
