"""The sliced Wasserstein distance between two point clouds of the same size."""

from __future__ import annotations

import torch


def sliced_wasserstein(
    first: torch.Tensor, second: torch.Tensor, num_projections: int = 512, generator: torch.Generator | None = None
) -> float:
    """SW_2 = (E_θ W_2²(θᵀX, θᵀY))^½ over directions θ uniform on the unit sphere (Rabin et al. 2011).

    In one dimension W_2² between two empirical laws of N points each is the mean squared difference of their sorted
    values; the expectation over θ is a Monte Carlo average over `num_projections` directions. 0 for one law, and
    about c/√N between two samples of the same law (the sampling floor to compare against).
    """
    if first.shape != second.shape or first.ndim != 2:
        raise ValueError(
            f"need two point clouds of one shape (N, d), got {tuple(first.shape)} and {tuple(second.shape)}"
        )
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    directions = torch.randn(first.shape[1], num_projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    projected_first = (first.double() @ directions).sort(dim=0).values
    projected_second = (second.double() @ directions).sort(dim=0).values
    return float((projected_first - projected_second).pow(2).mean().sqrt())
