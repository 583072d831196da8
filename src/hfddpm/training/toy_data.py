"""2-D point clouds of the diffusion tutorials, generated in code: swiss roll, two moons, eight Gaussians, circles."""

from __future__ import annotations

import math

import torch

TOY_DATASETS = ("swiss_roll", "two_moons", "eight_gaussians", "circles")


def toy_points(name: str, num_points: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`num_points` points (N, 2), float32, scaled to about [−1, 1]², each dataset with a little Gaussian noise."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {TOY_DATASETS}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    u = torch.rand(num_points, generator=generator)
    noise = torch.randn(num_points, 2, generator=generator)
    if name == "swiss_roll":  # the (x, z) plane of scikit-learn's make_swiss_roll, t ∈ [1.5π, 4.5π]
        t = 1.5 * math.pi * (1 + 2 * u)
        points, scale = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 12, 0.02
    elif name == "two_moons":  # scikit-learn's make_moons, centred
        upper = u < 0.5
        angle = math.pi * torch.rand(num_points, generator=generator)
        x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
        y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
        points, scale = torch.stack([x - 0.5, y - 0.25], dim=1) / 1.2, 0.04
    elif name == "eight_gaussians":  # eight modes on the unit circle
        angle = torch.randint(0, 8, (num_points,), generator=generator) * math.pi / 4
        points, scale = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1), 0.06
    else:  # two concentric circles, radii 1 and 0.5
        radius = torch.where(u < 0.5, 1.0, 0.5)
        angle = 2 * math.pi * torch.rand(num_points, generator=generator)
        points, scale = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1), 0.03
    return points + scale * noise
