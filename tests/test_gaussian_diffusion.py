"""The closed forms of the diffusion process against the published formulas and direct computations."""

import math

import numpy as np
import pytest
import torch
from diffusers.training_utils import compute_snr

from hfddpm import DDIMScheduler, DDPMScheduler
from hfddpm.schedulers import convert_prediction


def test_linear_schedule_is_ddpm_paper():
    # Ho et al. 2020, §4: T = 1000, β increasing linearly from 1e-4 to 0.02.
    scheduler = DDPMScheduler()
    expected = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(scheduler.betas.double().numpy(), expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy(), np.cumprod(1 - expected), rtol=1e-4)


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("num_train_timesteps", [1000, 4000, 100])
def test_cosine_schedule_is_improved_ddpm_eq_17(scheduler_class, num_train_timesteps):
    # Nichol & Dhariwal 2021, eq. 17: ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2), s = 0.008, β_t ≤ 0.999.
    scheduler = scheduler_class(num_train_timesteps=num_train_timesteps, beta_schedule="cosine")
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"  # diffusers' name, so stock diffusers loads it

    T, s = num_train_timesteps, 0.008
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    alpha_bar = f[1:] / f[0]  # paper t = 1..T is diffusers' t = 0..T−1
    betas = np.minimum(1 - alpha_bar / np.concatenate([[1.0], alpha_bar[:-1]]), 0.999)
    np.testing.assert_allclose(scheduler.betas.double().numpy(), betas, rtol=1e-5, atol=1e-7)
    assert scheduler.betas[-1].item() == pytest.approx(0.999)
    # Where no β was capped, ᾱ is the formula itself.
    uncapped = np.cumsum(betas >= 0.999) == 0
    np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy()[uncapped], alpha_bar[uncapped], rtol=2e-4)


def test_forward_process_moments_closed_form_and_monte_carlo():
    scheduler = DDPMScheduler(beta_schedule="cosine")
    x0 = torch.tensor([[-0.7, 0.2, 0.9]], dtype=torch.float64)
    for t in (0, 250, 999):
        mean, variance = scheduler.marginal_mean_variance(x0, t)
        alpha_bar = scheduler.alphas_cumprod[t].double()
        torch.testing.assert_close(mean, alpha_bar.sqrt() * x0)
        torch.testing.assert_close(variance, 1 - alpha_bar)
        # add_noise draws from exactly this Gaussian: check with 200k draws (relative s.e. of a variance 0.3%).
        noise = torch.randn((200_000, 3), generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        x_t = scheduler.add_noise(x0.expand(200_000, 3), noise, torch.full((200_000,), t))
        torch.testing.assert_close(x_t.mean(0), mean[0], atol=4 * math.sqrt(variance.item() / 200_000), rtol=0)
        torch.testing.assert_close(x_t.var(0), variance.expand(3), rtol=4 * math.sqrt(2 / 200_000), atol=0)


def test_marginal_is_the_composition_of_single_steps():
    # q(x_t|x_0) must equal t + 1 applications of q(x_i|x_{i−1}) = N(√(1−β_i) x_{i−1}, β_i I) (Ho et al. 2020, eq. 2).
    scheduler = DDPMScheduler()
    betas = scheduler.betas.double()
    mean, variance = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    for t in range(600):
        mean = (1 - betas[t]).sqrt() * mean
        variance = (1 - betas[t]) * variance + betas[t]
    closed_mean, closed_variance = scheduler.marginal_mean_variance(torch.tensor(0.8, dtype=torch.float64), 599)
    torch.testing.assert_close(closed_mean, mean, rtol=1e-5, atol=0)
    torch.testing.assert_close(closed_variance, variance, rtol=1e-5, atol=0)


@pytest.mark.parametrize("t, s", [(1, 0), (500, 499), (999, 998), (999, 899), (480, 20), (37, -1), (0, -1)])
def test_posterior_is_gaussian_conditioning(t, s):
    # q(x_s|x_t, x_0) by conditioning the joint Gaussian of (x_s, x_t) given x_0:
    # x_s = √ᾱ_s x_0 + √(1−ᾱ_s) e_1 and x_t = √(ᾱ_t/ᾱ_s) x_s + √(1 − ᾱ_t/ᾱ_s) e_2.
    scheduler = DDPMScheduler(beta_schedule="cosine")
    a_t = scheduler.alphas_cumprod[t].double()
    a_s = scheduler.alphas_cumprod[s].double() if s >= 0 else torch.tensor(1.0, dtype=torch.float64)
    x0 = torch.tensor([0.3, -1.0], dtype=torch.float64)
    x_t = torch.tensor([1.2, 0.4], dtype=torch.float64)
    mean_s, var_s = a_s.sqrt() * x0, 1 - a_s
    mean_t, var_t = a_t.sqrt() * x0, 1 - a_t
    cov_st = (a_t / a_s).sqrt() * var_s
    expected_mean = mean_s + cov_st / var_t * (x_t - mean_t)
    expected_variance = var_s - cov_st**2 / var_t

    mean, variance = scheduler.posterior_mean_variance(x0, x_t, t, s)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(variance, expected_variance.expand_as(variance), rtol=1e-6, atol=1e-12)
    if s == t - 1:  # Ho et al. 2020, eq. 7: β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t
        # ᾱ is stored in float32, as diffusers does: 1 − ᾱ_t/ᾱ_{t−1} carries ~1e-4 relative rounding at small t.
        beta = scheduler.betas[t].double()
        assert variance.item() == pytest.approx(((1 - a_s) / (1 - a_t) * beta).item(), rel=3e-4)


def test_posterior_with_batched_timesteps_matches_one_by_one():
    scheduler = DDPMScheduler()
    x0, x_t = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    timesteps = torch.tensor([3, 100, 650, 999])
    mean, variance = scheduler.posterior_mean_variance(x0, x_t, timesteps)
    for i, t in enumerate(timesteps):
        mean_i, variance_i = scheduler.posterior_mean_variance(x0[i : i + 1], x_t[i : i + 1], int(t))
        torch.testing.assert_close(mean[i : i + 1], mean_i)
        torch.testing.assert_close(variance[i].reshape(()), variance_i)


@pytest.mark.parametrize("from_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("to_type", ["epsilon", "sample", "v_prediction"])
def test_prediction_conversions_agree_with_definitions(from_type, to_type):
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 3, dtype=torch.float64, generator=generator)
    eps = torch.randn(5, 3, dtype=torch.float64, generator=generator)
    alpha_bar = torch.rand(5, 1, dtype=torch.float64, generator=generator) * 0.98 + 0.01
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    truth = {"epsilon": eps, "sample": x0, "v_prediction": alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0}
    converted = convert_prediction(truth[from_type], x_t, alpha_bar, from_type, to_type)
    torch.testing.assert_close(converted, truth[to_type], rtol=1e-10, atol=1e-10)


def test_scheduler_conversions_use_its_prediction_type_and_training_target():
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    x0, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([10, 500, 990])
    x_t = scheduler.add_noise(x0, eps, t)
    v = scheduler.training_target(x0, eps, t)
    torch.testing.assert_close(v, scheduler.get_velocity(x0, eps, t))  # stock diffusers as the oracle
    torch.testing.assert_close(scheduler.convert_prediction(v, x_t, t, "epsilon"), eps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scheduler.convert_prediction(v, x_t, t, "sample"), x0, rtol=1e-4, atol=1e-4)
    assert torch.equal(DDPMScheduler(prediction_type="epsilon").training_target(x0, eps, t), eps)
    assert torch.equal(DDPMScheduler(prediction_type="sample").training_target(x0, eps, t), x0)


def test_snr_matches_closed_form_and_diffusers_compute_snr():
    scheduler = DDPMScheduler(beta_schedule="cosine")
    t = torch.tensor([0, 10, 500, 998])
    alpha_bar = scheduler.alphas_cumprod[t].double()
    torch.testing.assert_close(scheduler.snr(t).double(), alpha_bar / (1 - alpha_bar), rtol=1e-6, atol=0)
    torch.testing.assert_close(scheduler.snr(t), compute_snr(scheduler, t), rtol=1e-4, atol=0)
    assert torch.all(scheduler.snr(t)[:-1] > scheduler.snr(t)[1:])  # SNR decreases with t


def test_alpha_bar_of_the_step_to_x0():
    assert DDPMScheduler().alpha_bar(-1).item() == 1.0
    assert DDIMScheduler(set_alpha_to_one=True).alpha_bar(-1).item() == 1.0
    scheduler = DDIMScheduler(set_alpha_to_one=False)
    assert scheduler.alpha_bar(-1).item() == scheduler.alphas_cumprod[0].item()
    assert scheduler.alpha_bar(-20).item() == scheduler.alphas_cumprod[0].item()  # stock DDIM's t − T//S < 0
    with pytest.raises(ValueError, match="timesteps must be below num_train_timesteps=1000"):
        scheduler.alpha_bar(1000)
