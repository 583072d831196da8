"""Importance sampling of the training timestep (Nichol & Dhariwal 2021, §3.3) and the loss types using it."""

import pytest
import torch

from hfddpm import DDPMScheduler
from hfddpm.training.checkpoints import load_state_dict, save_state_dict
from hfddpm.training.losses import DiffusionLoss
from hfddpm.training.timestep_sampling import (
    LossSecondMomentSampler,
    UniformTimestepSampler,
    create_timestep_sampler,
)


def warmed_sampler(losses: torch.Tensor, history: int = 10) -> LossSecondMomentSampler:
    """A sampler whose history holds `history` copies of the per-timestep loss `losses[t]`."""
    sampler = LossSecondMomentSampler(len(losses), history_per_term=history)
    for _ in range(history):
        sampler.update(torch.arange(len(losses)), losses)
    return sampler


def test_uniform_until_every_timestep_has_its_history():
    sampler = LossSecondMomentSampler(5, history_per_term=2)
    sampler.update(torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3]), torch.arange(9.0))  # t = 4 has one loss only
    assert not sampler.warmed_up()
    torch.testing.assert_close(sampler.probabilities(), torch.full((5,), 0.2, dtype=torch.float64))
    timesteps, weights = sampler.sample(1000, torch.Generator().manual_seed(0))
    assert torch.equal(weights, torch.ones(1000)) and set(timesteps.tolist()) == set(range(5))
    sampler.update(torch.tensor([4]), torch.tensor([9.0]))
    assert sampler.warmed_up()


def test_probabilities_follow_the_root_mean_square_loss_with_a_uniform_share():
    sampler = LossSecondMomentSampler(3, history_per_term=2, uniform_prob=0.1)
    sampler.update(torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([3.0, 4.0, 1.0, 1.0, 0.0, 0.0]))
    rms = torch.tensor([12.5**0.5, 1.0, 0.0], dtype=torch.float64)  # √((3² + 4²)/2), √1, 0
    expected = 0.9 * rms / rms.sum() + 0.1 / 3
    torch.testing.assert_close(sampler.probabilities(), expected)
    # The history keeps the last two losses of each t.
    sampler.update(torch.tensor([0, 0]), torch.tensor([0.0, 0.0]))
    assert sampler.history[0].tolist() == [0.0, 0.0]


def test_importance_weighted_loss_is_unbiased_and_less_noisy():
    # E_{t~p}[ℓ_t / (T p_t)] = (1/T) Σ_t ℓ_t for any p; with p_t ∝ ℓ_t (constant losses) its variance vanishes.
    losses = torch.logspace(-3, 1, 50, dtype=torch.float64)
    sampler = warmed_sampler(losses)
    timesteps, weights = sampler.sample(200_000, torch.Generator().manual_seed(0))
    weighted = losses[timesteps] * weights.double()
    assert weighted.mean().item() == pytest.approx(losses.mean().item(), rel=5e-3)
    uniform = losses[UniformTimestepSampler(50).sample(200_000, torch.Generator().manual_seed(0))[0]]
    assert weighted.std() < 0.1 * uniform.std()


def test_state_round_trips_through_a_checkpoint_file(tmp_path):
    sampler = warmed_sampler(torch.rand(20, generator=torch.Generator().manual_seed(0)))
    save_state_dict(sampler.state_dict(), tmp_path / "timestep_sampler")
    restored = LossSecondMomentSampler(20)
    restored.load_state_dict(load_state_dict(tmp_path / "timestep_sampler"))
    torch.testing.assert_close(restored.probabilities(), sampler.probabilities(), rtol=0, atol=0)
    first = sampler.sample(64, torch.Generator().manual_seed(3))
    again = restored.sample(64, torch.Generator().manual_seed(3))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_create_timestep_sampler_by_name():
    assert type(create_timestep_sampler("uniform", 10)) is UniformTimestepSampler
    assert type(create_timestep_sampler("loss_second_moment", 10)) is LossSecondMomentSampler
    with pytest.raises(ValueError, match="timestep sampling must be one of"):
        create_timestep_sampler("lossaware", 10)


def _batch(scheduler, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.rand(6, 1, 4, 4, generator=generator) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.tensor([0, 1, 10, 300, 700, 999])
    return x0, noise, t, scheduler.add_noise(x0, noise, t)


@pytest.mark.parametrize("reverse_variance, channels", [("fixed_small", 1), ("learned_range", 2)])
def test_vlb_loss_is_t_times_the_bound_term_and_trains_the_mean(reverse_variance, channels):
    scheduler = DDPMScheduler(reverse_variance=reverse_variance)
    x0, noise, t, x_t = _batch(scheduler)
    output = torch.randn(6, channels, 4, 4, requires_grad=True)
    result = DiffusionLoss(scheduler, "vlb")(output, x0, noise, t, x_t)
    torch.testing.assert_close(result.per_sample, 1000 * result.vlb)
    torch.testing.assert_close(result.loss, result.per_sample.mean())
    (gradient,) = torch.autograd.grad(result.loss, output)
    assert gradient[:, :1].abs().sum() > 0  # no stop-gradient on the mean, unlike the hybrid loss
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0, 1.0, 3.0])
    weighted = DiffusionLoss(scheduler, "vlb")(output, x0, noise, t, x_t, importance_weights=weights)
    torch.testing.assert_close(weighted.loss, (result.per_sample * weights).mean())


def test_loss_type_defaults_and_refusals():
    assert DiffusionLoss(DDPMScheduler()).loss_type == "simple"
    assert DiffusionLoss(DDPMScheduler(reverse_variance="learned_range")).loss_type == "hybrid"
    with pytest.raises(ValueError, match="'simple' trains no variance"):
        DiffusionLoss(DDPMScheduler(reverse_variance="learned"), "simple")
    with pytest.raises(ValueError, match="'hybrid' needs a learned variance"):
        DiffusionLoss(DDPMScheduler(reverse_variance="fixed_large"), "hybrid")
    with pytest.raises(ValueError, match="snr_gamma weights the MSE term"):
        DiffusionLoss(DDPMScheduler(), "vlb", snr_gamma=5.0)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        DiffusionLoss(DDPMScheduler(), "kl")
