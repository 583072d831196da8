"""DDPM's training objective (`DenoisingLoss`) and its timestep samplers, against closed forms and diffusers'
formulas."""

from types import SimpleNamespace

import pytest
import torch
from diffusers.training_utils import compute_snr

from hfddpm import DDPMScheduler
from hfddpm.schedulers.bound_terms import vlb_terms
from hfddpm.training.checkpoints import load_state_dict, save_state_dict
from hfddpm.training.objectives import DenoisingLoss, drop_labels
from hfddpm.training.timestep_sampling import (
    ImportanceTimestepSampler,
    LossSecondMomentSampler,
    UniformTimestepSampler,
)

TIMESTEPS = torch.tensor([0, 1, 10, 300, 700, 999])


class FixedTimesteps(UniformTimestepSampler):
    """Draws the given timesteps with the given importance weights."""

    def __init__(self, timesteps: torch.Tensor, weights: torch.Tensor | None = None):
        super().__init__(1000)
        self.timesteps, self.weights = timesteps, torch.ones(len(timesteps)) if weights is None else weights

    def sample(self, batch_size, generator):
        return self.timesteps, self.weights


class Recorder(torch.nn.Module):
    """A network that returns `output` and records what it was called with."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output, self.calls = output, []

    def forward(self, sample, timestep, class_labels=None):
        self.calls.append(SimpleNamespace(sample=sample, timestep=timestep, class_labels=class_labels))
        return SimpleNamespace(sample=self.output)


def images(channels=1, seed=0):
    return torch.rand(len(TIMESTEPS), channels, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def loss_of(scheduler, output, x0, **options):
    """The loss of `DenoisingLoss` at `TIMESTEPS` for a network answering `output`, with the noise it drew."""
    model = Recorder(output)
    result = DenoisingLoss(scheduler, timestep_sampler=FixedTimesteps(TIMESTEPS), **options)(
        model, x0, torch.Generator().manual_seed(1)
    )
    alpha_bar = scheduler.alphas_cumprod[TIMESTEPS].reshape(-1, 1, 1, 1)
    noise = (model.calls[0].sample - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()  # x_t = √ᾱ x_0 + √(1−ᾱ) ε
    return result, noise, alpha_bar


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_simple_loss_is_the_mse_to_the_prediction_target(prediction_type):
    scheduler, x0 = DDPMScheduler(prediction_type=prediction_type), images()
    output = torch.randn_like(x0)
    result, noise, alpha_bar = loss_of(scheduler, output, x0)
    target = {"epsilon": noise, "sample": x0, "v_prediction": alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0}
    # float32 noising and the noise recovered from it: errors of a few float32 ulps of x_t / √(1−ᾱ_0) ≈ 100 x_t.
    torch.testing.assert_close(result.loss, ((output - target[prediction_type]) ** 2).mean(), rtol=1e-4, atol=1e-5)
    assert result.logs == {}


def test_the_step_draws_t_then_the_noise_from_the_runs_generator():
    # The order of the draws is what makes a resumed run exact: t first, then ε, from the generator it is given.
    x0, model = images(), Recorder(torch.zeros(len(TIMESTEPS), 1, 4, 4))
    DenoisingLoss(DDPMScheduler())(model, x0, torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (len(x0),), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    assert torch.equal(model.calls[0].timestep, t)
    torch.testing.assert_close(model.calls[0].sample, DDPMScheduler().add_noise(x0, noise, t), rtol=0, atol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_min_snr_weights_follow_hang_et_al(prediction_type):
    scheduler = DDPMScheduler(prediction_type=prediction_type, beta_schedule="cosine")
    t = torch.arange(0, 1000, 37)
    snr = compute_snr(scheduler, t)  # diffusers' own SNR as the oracle
    clipped = torch.minimum(snr, torch.full_like(snr, 5.0))
    expected = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[prediction_type]
    torch.testing.assert_close(DenoisingLoss(scheduler, snr_gamma=5.0).snr_weight(t), expected, rtol=1e-4, atol=0)


def test_hybrid_loss_trains_the_variance_alone_through_lambda_t_times_the_bound():
    scheduler, x0 = DDPMScheduler(reverse_variance="learned_range"), images()
    output = torch.randn(len(TIMESTEPS), 2, 4, 4, requires_grad=True)
    simple, _, _ = loss_of(DDPMScheduler(), output[:, :1], x0)
    hybrid, _, _ = loss_of(scheduler, output, x0, loss_type="hybrid", vlb_weight=1e-3)
    (grad_hybrid,) = torch.autograd.grad(hybrid.loss, output, retain_graph=True)
    (grad_simple,) = torch.autograd.grad(simple.loss, output)
    # The bound's gradient reaches the variance channels only (Nichol & Dhariwal 2021, §3.1: stop-gradient on μ).
    torch.testing.assert_close(grad_hybrid[:, :1], grad_simple[:, :1])
    assert grad_hybrid[:, 1:].abs().sum() > 0
    # λ applies to the whole bound, estimated as T·L_t.
    torch.testing.assert_close(hybrid.loss, simple.loss + 1e-3 * 1000 * hybrid.logs["vlb_bits_per_dim"].mean())


@pytest.mark.parametrize("reverse_variance, channels", [("fixed_small", 1), ("learned_range", 2)])
def test_vlb_loss_is_t_times_the_bound_term_importance_weighted_and_trains_the_mean(reverse_variance, channels):
    scheduler, x0 = DDPMScheduler(reverse_variance=reverse_variance), images()
    output = torch.randn(len(TIMESTEPS), channels, 4, 4, requires_grad=True)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.0, 1.0, 3.0])
    model = Recorder(output)
    objective = DenoisingLoss(scheduler, "vlb", timestep_sampler=FixedTimesteps(TIMESTEPS, weights))
    result = objective(model, x0, torch.Generator().manual_seed(1))
    bound = vlb_terms(scheduler, output, x0, model.calls[0].sample, TIMESTEPS)
    torch.testing.assert_close(result.per_sample, 1000 * bound.detach())
    torch.testing.assert_close(result.loss, (1000 * bound * weights).mean())
    (gradient,) = torch.autograd.grad(result.loss, output)
    assert gradient[:, :1].abs().sum() > 0  # no stop-gradient on the mean, unlike the hybrid loss


def test_noising_and_the_loss_stay_in_float32_under_bf16_autocast():
    # In bfloat16, √(1 − ᾱ_t) at t = 0 (0.01) would round to 0.00999 and x_t lose its noise's low bits.
    x0, model = images(), Recorder(torch.zeros(len(TIMESTEPS), 1, 4, 4, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = DenoisingLoss(DDPMScheduler())(model, x0, torch.Generator().manual_seed(0))
    assert model.calls[0].sample.dtype == torch.float32 and result.loss.dtype == torch.float32


def test_class_labels_reach_the_network_and_are_dropped_to_no_label_at_the_given_rate():
    labels = torch.arange(4000) % 10
    dropped = drop_labels(labels, 10, 0.25, torch.Generator().manual_seed(0))
    changed = dropped != labels
    assert (dropped[changed] == 10).all()  # "no label" is index K = 10
    assert changed.float().mean().item() == pytest.approx(0.25, abs=0.025)  # 4 standard errors of 4000 draws
    assert torch.equal(drop_labels(labels, 10, 0.0, torch.Generator()), labels)
    model = Recorder(torch.zeros(len(TIMESTEPS), 1, 4, 4))
    DenoisingLoss(DDPMScheduler(), label_names=list("abcdefghij"), class_dropout_prob=0.5)(
        model, (images(), torch.arange(len(TIMESTEPS))), torch.Generator().manual_seed(0)
    )
    passed = model.calls[0].class_labels
    assert ((passed == torch.arange(len(TIMESTEPS))) | (passed == 10)).all()


def warmed_sampler(losses: torch.Tensor, history: int = 10) -> LossSecondMomentSampler:
    """A sampler whose history holds `history` copies of the per-timestep loss `losses[t]`."""
    sampler = LossSecondMomentSampler(len(losses), history_per_term=history)
    for _ in range(history):
        sampler.update(torch.arange(len(losses)), losses)
    return sampler


def test_importance_sampling_is_uniform_until_every_timestep_has_its_history():
    sampler = LossSecondMomentSampler(5, history_per_term=2)
    sampler.update(torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3]), torch.arange(9.0))  # t = 4 has one loss only
    assert not sampler.warmed_up()
    timesteps, weights = sampler.sample(1000, torch.Generator().manual_seed(0))
    assert torch.equal(weights, torch.ones(1000)) and set(timesteps.tolist()) == set(range(5))
    sampler.update(torch.tensor([4, 4]), torch.tensor([9.0, float("nan")]))  # a faulty step's loss is left out
    assert sampler.warmed_up() and sampler.history[4].tolist() == [4.0, 9.0]


def test_probabilities_follow_the_root_mean_square_loss_with_a_uniform_share():
    sampler = LossSecondMomentSampler(3, history_per_term=2, uniform_prob=0.1)
    sampler.update(torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([3.0, 4.0, 1.0, 1.0, 0.0, 0.0]))
    rms = torch.tensor([12.5**0.5, 1.0, 0.0], dtype=torch.float64)  # √((3² + 4²)/2), √1, 0 (Nichol & Dhariwal, eq. 18)
    torch.testing.assert_close(sampler.probabilities(), 0.9 * rms / rms.sum() + 0.1 / 3)
    sampler.update(torch.tensor([0, 0]), torch.tensor([0.0, 0.0]))  # the history keeps the last two losses
    assert sampler.history[0].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("sampler", [warmed_sampler, ImportanceTimestepSampler], ids=["loss_second_moment", "fixed"])
def test_importance_weighted_loss_is_unbiased_and_less_noisy(sampler):
    # E_{t~p}[ℓ_t / (T p_t)] = (1/T) Σ_t ℓ_t for any p; with p_t ∝ ℓ_t (constant losses) its variance vanishes.
    losses = torch.logspace(-3, 1, 50, dtype=torch.float64)
    timesteps, weights = sampler(losses).sample(200_000, torch.Generator().manual_seed(0))
    weighted = losses[timesteps] * weights.double()
    assert weighted.mean().item() == pytest.approx(losses.mean().item(), rel=5e-3)  # ~5 standard errors
    uniform = losses[UniformTimestepSampler(50).sample(200_000, torch.Generator().manual_seed(0))[0]]
    assert weighted.std() < 0.1 * uniform.std()


def test_the_samplers_state_round_trips_through_a_checkpoint_file(tmp_path):
    sampler = warmed_sampler(torch.rand(20, generator=torch.Generator().manual_seed(0)))
    objective = DenoisingLoss(DDPMScheduler(num_train_timesteps=20), timestep_sampler=sampler)
    save_state_dict(objective.state_dict(), tmp_path / "objective")
    restored = DenoisingLoss(DDPMScheduler(num_train_timesteps=20), timestep_sampler=LossSecondMomentSampler(20))
    restored.load_state_dict(load_state_dict(tmp_path / "objective"))
    first = sampler.sample(64, torch.Generator().manual_seed(3))
    again = restored.timestep_sampler.sample(64, torch.Generator().manual_seed(3))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
