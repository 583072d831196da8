"""The training objective and the bound's terms it uses, against closed forms and diffusers' formulas."""

import math

import numpy as np
import pytest
import torch
from diffusers.training_utils import compute_snr

from hfddpm import DDPMScheduler
from hfddpm.schedulers.bound_terms import discretized_gaussian_log_likelihood, normal_kl, vlb_terms
from hfddpm.training.losses import DiffusionLoss


def batch(scheduler, channels=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.rand(6, channels, 4, 4, generator=generator) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.tensor([0, 1, 10, 300, 700, 999])
    return x0, noise, t, scheduler.add_noise(x0, noise, t)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_simple_loss_is_the_mse_to_the_prediction_target(prediction_type):
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    x0, noise, t, x_t = batch(scheduler)
    alpha_bar = scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    target = {"epsilon": noise, "sample": x0, "v_prediction": alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0}
    output = torch.randn_like(x0)
    result = DiffusionLoss(scheduler)(output, x0, noise, t, x_t)
    expected = ((output - target[prediction_type]) ** 2).mean()
    torch.testing.assert_close(result.loss, expected, rtol=1e-6, atol=1e-7)
    assert result.vlb is None


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_min_snr_weights_follow_hang_et_al(prediction_type):
    scheduler = DDPMScheduler(prediction_type=prediction_type, beta_schedule="cosine")
    t = torch.arange(0, 1000, 37)
    snr = compute_snr(scheduler, t)  # diffusers' own SNR as the oracle
    clipped = torch.minimum(snr, torch.full_like(snr, 5.0))
    expected = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[prediction_type]
    weights = DiffusionLoss(scheduler, snr_gamma=5.0).snr_weight(t)
    torch.testing.assert_close(weights, expected, rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="snr_gamma must be positive"):
        DiffusionLoss(scheduler, snr_gamma=0)


def test_hybrid_loss_mean_term_is_simple_loss_and_vlb_trains_only_the_variance():
    scheduler = DDPMScheduler(reverse_variance="learned_range")
    x0, noise, t, x_t = batch(scheduler)
    output = torch.randn(6, 2, 4, 4, requires_grad=True)
    simple = DiffusionLoss(DDPMScheduler())(output[:, :1], x0, noise, t, x_t).loss
    assert DiffusionLoss(scheduler, vlb_weight=0.0)(output, x0, noise, t, x_t).loss.item() == pytest.approx(
        simple.item(), rel=1e-6
    )

    hybrid = DiffusionLoss(scheduler, vlb_weight=1e-3)(output, x0, noise, t, x_t)
    (grad_hybrid,) = torch.autograd.grad(hybrid.loss, output)
    (grad_simple,) = torch.autograd.grad(simple, output)
    # The bound's gradient reaches the variance channels only (Nichol & Dhariwal 2021, §3.1: stop-gradient on μ).
    torch.testing.assert_close(grad_hybrid[:, :1], grad_simple[:, :1])
    assert grad_hybrid[:, 1:].abs().sum() > 0
    # λ applies to the whole bound: the per-sample term is λ·T·L_t.
    expected = simple + 1e-3 * 1000 * hybrid.vlb.mean()
    torch.testing.assert_close(hybrid.loss, expected, rtol=1e-6, atol=1e-7)


def test_normal_kl_against_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=generator), torch.randn(50, generator=generator)
    lv1, lv2 = torch.randn(50, generator=generator), torch.randn(50, generator=generator)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-5, atol=1e-6)


def test_discretized_decoder_is_a_distribution_over_256_levels():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_scale in ((0.1, math.log(0.05)), (-0.97, math.log(0.01)), (0.999, math.log(0.3)), (3.0, 0.0)):
        log_p = discretized_gaussian_log_likelihood(
            levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale)
        )
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
        # Each inner bin is the Gaussian mass of [x − 1/255, x + 1/255].
        normal = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), math.exp(log_scale))
        inner = levels[1:-1]
        mass = normal.cdf(inner + 1 / 255) - normal.cdf(inner - 1 / 255)
        big = mass > 1e-10
        np.testing.assert_allclose(log_p[1:-1][big].exp().numpy(), mass[big].numpy(), rtol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("choice", ["fixed_small", "fixed_large", "learned", "learned_range"])
def test_vlb_terms_with_the_exact_prediction_are_the_variance_mismatch_alone(prediction_type, choice):
    # With the exact ε, x_0 or v, μ_θ = μ̃ and L_{t−1} = KL(N(μ̃, β̃) ‖ N(μ̃, σ²)) = ½ (log σ²/β̃ + β̃/σ² − 1): zero for
    # σ² = β̃ (fixed_small; learned with log β̃; learned_range with v = −1), the closed form for σ² = β.
    scheduler = DDPMScheduler(reverse_variance=choice, prediction_type=prediction_type)
    x0, noise, t, x_t = batch(scheduler)
    x0, noise, x_t = x0.double(), noise.double(), x_t.double()
    output = scheduler.training_target(x0, noise, t)
    t1 = t[1:]
    small = scheduler.reverse_log_variance(t1, t1 - 1, reverse_variance="fixed_small").double()
    if choice == "learned":
        variance = torch.cat([torch.zeros(1), small.float()]).reshape(-1, 1, 1, 1).expand_as(x0).double()
        output = torch.cat([output, variance], dim=1)
    elif choice == "learned_range":
        output = torch.cat([output, -torch.ones_like(output)], dim=1)
    terms = vlb_terms(scheduler, output, x0, x_t, t)
    if choice == "fixed_large":
        log_ratio = scheduler.reverse_log_variance(t1, t1 - 1, reverse_variance="fixed_large").double() - small
        expected = 0.5 * (log_ratio + torch.exp(-log_ratio) - 1) / math.log(2)
        torch.testing.assert_close(terms[1:], expected, rtol=1e-5, atol=1e-9)
        assert (expected > 0).all()
    else:
        assert terms[1:].abs().max().item() < 1e-6
    assert terms[0].item() > 0  # t = 0 is the decoder's NLL, positive
