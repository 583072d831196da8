"""RePaint's resampling schedule and its two noising moves (Lugmayr et al. 2022, Algorithm 1 and §4.2).

Inpainting runs a scheduler's reverse steps over its own timestep grid, but after some steps goes back up the grid
("jumps") and denoises that stretch again, so that the generated region has time to agree with the known one. The
grid positions are 0 … N: position p < N holds x at the scheduler's `timesteps[p]`, position N holds x_0.
"""

from __future__ import annotations

import torch

from ..arguments import checked_integer


def repaint_schedule(num_steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The grid positions visited, from 0 (pure noise) to `num_steps` (x_0): each +1 is one reverse step (one
    network evaluation), each −`jump_length` one jump back up.

    As RePaint's reference code: after the reverse steps that reach positions N − j for j = 0, L, 2L, … < N − L
    (L = `jump_length`), jump L positions back up, `jump_n_sample` − 1 times at each. The reverse steps number
    N + (`jump_n_sample` − 1) · L · ⌈(N − L)/L⌉; `jump_n_sample` = 1 is plain replacement, without resampling.
    """
    num_steps = checked_integer("num_inference_steps", num_steps)
    jump_length = checked_integer("jump_length", jump_length)
    jump_n_sample = checked_integer("jump_n_sample", jump_n_sample)
    jumps_left = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    level = num_steps  # RePaint's t: the position is num_steps − t
    positions = [0]
    while level >= 1:
        level -= 1
        positions.append(num_steps - level)
        if jumps_left.get(level, 0) > 0:
            jumps_left[level] -= 1
            level += jump_length
            positions.append(num_steps - level)
    return positions


def renoise(
    sample: torch.Tensor, alpha_bar_from: torch.Tensor, alpha_bar_to: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """A draw of q(x_to | x_from) = N(√(ᾱ_to/ᾱ_from) x_from, (1 − ᾱ_to/ᾱ_from) I) for ᾱ_to ≤ ᾱ_from: the forward
    process between two noise levels (Ho et al. 2020, eq. 4, composed), given the standard normal `noise`.

    From x_0 (ᾱ_from = 1) it is RePaint's known region at the next level (Algorithm 1, line 5); from a sample it is
    a jump back up the grid (line 10, several steps at once: the composed Gaussians are exactly this one).
    """
    ratio = alpha_bar_to / alpha_bar_from
    return ratio.sqrt() * sample + (1 - ratio).sqrt() * noise
