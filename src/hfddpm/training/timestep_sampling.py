"""How the training timestep t is drawn: uniformly (Ho et al. 2020, Algorithm 1), or by importance sampling of the
bound's terms (Nichol & Dhariwal 2021, §3.3), which makes training on the bound alone stable.

A sampler returns timesteps and importance weights w_t = 1/(T p_t), so that E_{t~p}[w_t ℓ_t] = (1/T) Σ_t ℓ_t
whatever p is: the weighted loss estimates the same objective as uniform sampling, with another variance.
"""

from __future__ import annotations

import math

import torch


class UniformTimestepSampler:
    """t ~ U{0, …, T−1}, every importance weight 1."""

    def __init__(self, num_timesteps: int) -> None:
        self.num_timesteps = num_timesteps

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        timesteps = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=generator.device)
        return timesteps, torch.ones(batch_size, device=generator.device)

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling learns nothing from the losses."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ImportanceTimestepSampler(UniformTimestepSampler):
    """t ~ p for fixed probabilities p_t, such as LSGM's, in proportion to the part of each term of the bound that
    data and network enter, for standard Normal data (Vahdat et al. 2021, variance reduction;
    `hfddpm.schedulers.bound_terms.normal_data_mean_terms`)."""

    def __init__(self, probabilities: torch.Tensor) -> None:
        super().__init__(len(probabilities))
        self.fixed = (probabilities / probabilities.sum()).double().cpu()

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return draw(self.fixed, batch_size, generator)


class LossSecondMomentSampler(UniformTimestepSampler):
    """Importance sampling p_t ∝ √E[ℓ_t²] (Nichol & Dhariwal 2021, §3.3, eq. 18; improved-diffusion's
    `LossSecondMomentResampler`). Each t keeps its last `history_per_term` losses; until every t has that many, t is
    drawn uniformly (the warm-up). Afterwards p_t = (1 − u) √mean(ℓ_t²)/Σ + u/T, the uniform share u keeping every
    weight finite. Call `update` with the losses of every process (gathered) so that data-parallel replicas stay
    identical."""

    def __init__(self, num_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(num_timesteps)
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self.history = torch.zeros(num_timesteps, history_per_term, dtype=torch.float64)
        self.counts = torch.zeros(num_timesteps, dtype=torch.long)

    def warmed_up(self) -> bool:
        return bool((self.counts == self.history_per_term).all())

    def probabilities(self) -> torch.Tensor:
        """p_t, float64 on the CPU; uniform during the warm-up."""
        if not self.warmed_up():
            return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)
        weights = self.history.pow(2).mean(dim=1).sqrt()
        return weights / weights.sum() * (1 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.warmed_up():
            return super().sample(batch_size, generator)
        return draw(self.probabilities(), batch_size, generator)

    def update(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Append each loss to its timestep's history, dropping the oldest when full; NaN and Inf are left out."""
        history, counts = self.history.numpy(), self.counts.numpy()  # views: numpy's scalar indexing is ~10× faster
        for t, loss in zip(timesteps.tolist(), losses.detach().double().cpu().tolist(), strict=True):
            if not math.isfinite(loss):  # a faulty step must not poison p_t
                continue
            if counts[t] == self.history_per_term:
                history[t, :-1] = history[t, 1:]  # numpy copies overlapping slices safely
                history[t, -1] = loss
            else:
                history[t, counts[t]] = loss
                counts[t] += 1

    def state_dict(self) -> dict:
        return {"history": self.history.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.history = state["history"].to(torch.float64).clone()
        self.counts = state["counts"].to(torch.long).clone()


def draw(
    probabilities: torch.Tensor, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` timesteps t ~ p (on `generator`'s device) and their weights 1/(T p_t)."""
    probabilities = probabilities.to(generator.device)
    timesteps = torch.multinomial(probabilities, batch_size, True, generator=generator)
    return timesteps, (1.0 / (len(probabilities) * probabilities[timesteps])).float()
