"""The closed forms of the diffusion process (`hfddpm.schedulers.gaussian_diffusion`) against the published formulas
and direct computations, and the scheduler options refused because they would sample with wrong numbers."""

import math

import numpy as np
import pytest
import torch
from diffusers.training_utils import compute_snr

from hfddpm import DDIMScheduler, DDPMScheduler, GaussianMixtureDenoiser
from hfddpm.schedulers.gaussian_diffusion import STOCK_VARIANCE_TYPES, convert_prediction, ddim_step

from .conftest import dummy_model, dummy_sample_deter, gaussian_gamma, scheduler_loop

NAN = float("nan")
# The reverse-variance choices, with Γ_t of N(0, 0.3² I) data for "analytic"; the value a learned-variance
# network's extra channels hold in the loops (log σ² for "learned", v ∈ [−1, 1] for "learned_range").
CHOICES = {
    "fixed_small": ({}, None),
    "fixed_large": ({}, None),
    "learned": ({}, -4.0),
    "learned_range": ({}, 0.3),
    "analytic": ({"analytic_gamma": gaussian_gamma(DDPMScheduler(), 0.3).tolist()}, None),
}


def choice(name: str, **config) -> dict:
    """Scheduler keyword arguments for the reverse-variance choice `name`."""
    return {"reverse_variance": name, **CHOICES[name][0], **config}


# Noise schedules


def test_linear_schedule_is_ddpm_paper():
    # Ho et al. 2020, §4: T = 1000, β increasing linearly from 1e-4 to 0.02.
    scheduler = DDPMScheduler()
    expected = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(scheduler.betas.double().numpy(), expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy(), np.cumprod(1 - expected), rtol=1e-4)


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("num_train_timesteps", [1000, 100])
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
    # Where no β was capped, ᾱ is the formula itself (float32 products: 2e-4 relative).
    uncapped = np.cumsum(betas >= 0.999) == 0
    np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy()[uncapped], alpha_bar[uncapped], rtol=2e-4)


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
def test_quadratic_spacing_is_the_ddim_papers(scheduler_class):
    # Song et al. 2021, App. D.2: τ_i = ⌊(i √(0.8 T)/(S − 1))²⌋, i = 0 … S − 1; the first squares, which round to the
    # same timestep, are moved up by one so that every step is distinct.
    scheduler = scheduler_class(timestep_spacing="quadratic")
    scheduler.set_timesteps(50)
    timesteps = scheduler.timesteps.tolist()
    assert len(timesteps) == 50 and timesteps[0] == 800 and timesteps[-1] == 0
    assert all(a > b for a, b in zip(timesteps, timesteps[1:], strict=False))
    formula = [math.floor((i * math.sqrt(800) / 49) ** 2) for i in range(50)][::-1]
    assert timesteps[:45] == formula[:45]  # from i = 5 on the squares are distinct
    assert scheduler.previous_timestep(timesteps[10]) == timesteps[11]
    scheduler.set_timesteps(1000)  # past 0.8 T the bumps carry the schedule up to T − 1
    assert scheduler.timesteps.tolist() == list(range(999, -1, -1))


# q(x_t | x_0) and the posterior q(x_s | x_t, x_0)


def test_forward_process_moments_closed_form_and_monte_carlo():
    scheduler = DDPMScheduler(beta_schedule="cosine")
    x0 = torch.tensor([[-0.7, 0.2, 0.9]], dtype=torch.float64)
    n = 50_000
    for t in (0, 250, 999):
        mean, variance = scheduler.marginal_mean_variance(x0, t)
        alpha_bar = scheduler.alphas_cumprod[t].double()
        torch.testing.assert_close(mean, alpha_bar.sqrt() * x0)
        torch.testing.assert_close(variance, 1 - alpha_bar)
        # add_noise draws from exactly this Gaussian: four standard errors of the mean and of the variance.
        noise = torch.randn((n, 3), generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        x_t = scheduler.add_noise(x0.expand(n, 3), noise, torch.full((n,), t))
        torch.testing.assert_close(x_t.mean(0), mean[0], atol=4 * math.sqrt(variance.item() / n), rtol=0)
        torch.testing.assert_close(x_t.var(0), variance.expand(3), rtol=4 * math.sqrt(2 / n), atol=0)


def test_marginal_is_the_composition_of_single_steps():
    # q(x_t|x_0) must equal t + 1 applications of q(x_i|x_{i−1}) = N(√(1−β_i) x_{i−1}, β_i I) (Ho et al. 2020, eq. 2).
    scheduler = DDPMScheduler()
    betas = scheduler.betas.double()
    mean, variance = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    for t in range(600):
        mean = (1 - betas[t]).sqrt() * mean
        variance = (1 - betas[t]) * variance + betas[t]
    closed_mean, closed_variance = scheduler.marginal_mean_variance(torch.tensor(0.8, dtype=torch.float64), 599)
    # ᾱ is a float32 product, as in diffusers: 1e-5 relative after 600 factors.
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


def test_alpha_bar_of_the_step_to_x0():
    assert DDPMScheduler().alpha_bar(-1).item() == 1.0
    assert DDIMScheduler(set_alpha_to_one=True).alpha_bar(-1).item() == 1.0
    scheduler = DDIMScheduler(set_alpha_to_one=False)
    assert scheduler.alpha_bar(-1).item() == scheduler.alphas_cumprod[0].item()
    assert scheduler.alpha_bar(-20).item() == scheduler.alphas_cumprod[0].item()  # stock DDIM's t − T//S < 0
    batched = scheduler.alpha_bar(torch.tensor([-1, 0, 999]))
    assert batched.tolist() == [scheduler.alphas_cumprod[0].item(), *scheduler.alphas_cumprod[[0, 999]].tolist()]


# ε, x_0 and v


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
    # float32 round trips through 1/√ᾱ_t ≈ 15 at t = 990: 1e-4.
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


# Reverse variances


def test_fixed_variances_are_the_ddpm_formulas():
    scheduler = DDPMScheduler()
    betas, alpha_bar = scheduler.betas.double(), scheduler.alphas_cumprod.double()
    posterior_variance = betas[1:] * (1 - alpha_bar[:-1]) / (1 - alpha_bar[1:])  # β̃_t for t ≥ 1 (Ho et al. eq. 7)
    t = torch.arange(1, 1000)
    small = scheduler.reverse_log_variance(t, t - 1, reverse_variance="fixed_small").double().exp()
    large = scheduler.reverse_log_variance(t, t - 1, reverse_variance="fixed_large").double().exp()
    # ᾱ is stored in float32 as diffusers does: 1 − ᾱ_t/ᾱ_{t−1} carries up to ~5e-4 relative rounding at small t.
    torch.testing.assert_close(small, posterior_variance, rtol=5e-4, atol=0)
    torch.testing.assert_close(large, betas[1:], rtol=5e-4, atol=0)
    # The first-step fix of Ho et al.'s code: the decoder step uses β̃ of timestep 1 in both fixed choices.
    for name in ("fixed_small", "fixed_large"):
        decoder = scheduler.reverse_log_variance(0, -1, reverse_variance=name).double().exp()
        assert decoder.item() == pytest.approx(posterior_variance[0].item(), rel=5e-4)


@pytest.mark.parametrize("t, s", [(999, 998), (999, 899), (500, 250), (120, 119), (60, 0)])
def test_fixed_variances_are_exact_in_the_two_cases_of_the_derivation(t, s):
    # Ho et al. 2020, §3.2: σ² = β̃ is optimal for x_0 deterministic, σ² = β for x_0 ~ N(0, I). Here the true
    # reverse conditional q(x_s|x_t) comes from conditioning the joint Gaussian of (x_s, x_t), and the exact denoiser
    # gives the model mean: both moments must match.
    scheduler = DDPMScheduler(clip_sample=False)
    a_t, a_s = (scheduler.alphas_cumprod[i].double() for i in (t, s))
    x_t = torch.tensor([[[[-1.3]]], [[[0.2]]], [[[2.1]]]], dtype=torch.float64)
    point = torch.full((1, 1, 1), 0.6, dtype=torch.float64)
    for data_std, name in ((0.0, "fixed_small"), (1.0, "fixed_large")):
        data_mean = point if data_std == 0 else torch.zeros_like(point)
        denoiser = GaussianMixtureDenoiser.for_scheduler(scheduler, data_mean.unsqueeze(0), [data_std])
        var_s = a_s * data_std**2 + 1 - a_s
        var_t = a_t * data_std**2 + 1 - a_t
        cov_st = (a_t / a_s).sqrt() * var_s
        true_mean = a_s.sqrt() * data_mean + cov_st / var_t * (x_t - a_t.sqrt() * data_mean)
        true_variance = var_s - cov_st**2 / var_t

        x0_hat = scheduler.convert_prediction(denoiser(x_t, t).sample, x_t, t, "sample")
        model_mean, _ = scheduler.posterior_mean_variance(x0_hat, x_t, t, s)
        torch.testing.assert_close(model_mean, true_mean, rtol=1e-5, atol=1e-6)
        variance = scheduler.reverse_log_variance(t, s, reverse_variance=name).double().exp()
        assert variance.item() == pytest.approx(true_variance.item(), rel=3e-4)  # float32 ᾱ, as above


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("t, s", [(999, 998), (500, 499), (1, 0), (980, 960), (420, 400), (0, -1), (19, -1)])
def test_learned_range_interpolates_between_the_fixed_choices(cls, t, s):
    # Nichol & Dhariwal 2021, eq. 15: v = −1 gives β̃ (fixed_small), v = +1 gives β (fixed_large). On the step to
    # x_0 the upper end stays β_{t,−1} = 1 − ᾱ_t, as in improved-diffusion, while fixed_large carries Ho's fix.
    scheduler = cls(reverse_variance="learned_range")
    v = torch.full((1, 1, 2, 2), -1.0)
    small = scheduler.reverse_log_variance(t, s, reverse_variance="fixed_small")
    large = scheduler.reverse_log_variance(t, s, reverse_variance="fixed_large")
    if s < 0:
        large = torch.log(1 - scheduler.alphas_cumprod[t].double()).float()
    torch.testing.assert_close(scheduler.reverse_log_variance(t, s, v), small.expand_as(v))
    torch.testing.assert_close(scheduler.reverse_log_variance(t, s, -v), large.expand_as(v))
    midpoint = scheduler.reverse_log_variance(t, s, torch.zeros_like(v))
    torch.testing.assert_close(midpoint, ((small + large) / 2).expand_as(v))


def test_learned_reads_the_log_variance():
    scheduler = DDPMScheduler(reverse_variance="learned", clip_sample=False)
    scheduler.set_timesteps(10)
    sample = dummy_sample_deter()
    t = scheduler.timesteps[3]
    log_variance = -3.0
    output = torch.cat([dummy_model(sample, t), torch.full_like(sample, log_variance)], dim=1)
    step = scheduler.step(output, t, sample, generator=torch.Generator().manual_seed(7))
    x0 = scheduler.convert_prediction(dummy_model(sample, t), sample, t, "sample")
    mean, _ = scheduler.posterior_mean_variance(x0, sample, t, scheduler.previous_timestep(t))
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(step.prev_sample, mean + math.exp(log_variance / 2) * noise)


@pytest.mark.parametrize("data_std", [0.0, 0.15, 1.0])
def test_analytic_variance_lies_between_the_fixed_variances_and_meets_them_at_the_derivation_cases(data_std):
    # Bao et al. 2022, Thm. 2: β̃_t ≤ σ*²_t, and for data with covariance ≤ I also σ*²_t ≤ β_t; σ*² is β̃_t for
    # one-point data (s = 0) and β_t for N(0, I) data (s = 1), the two cases of Ho et al.'s derivation.
    gamma = gaussian_gamma(DDPMScheduler(), data_std).tolist()
    scheduler = DDPMScheduler(reverse_variance="analytic", analytic_gamma=gamma)
    t = torch.arange(1, 1000)
    optimal = scheduler.reverse_log_variance(t, t - 1).double().exp()
    small = scheduler.reverse_log_variance(t, t - 1, reverse_variance="fixed_small").double().exp()
    large = scheduler.reverse_log_variance(t, t - 1, reverse_variance="fixed_large").double().exp()
    # log σ² is rounded to float32, and ᾱ is stored in float32: 1e-5 relative slack.
    assert (optimal >= small * (1 - 1e-5)).all() and (optimal <= large * (1 + 1e-5)).all()
    if data_std == 0.0:
        torch.testing.assert_close(optimal, small, rtol=1e-5, atol=0)
    elif data_std == 1.0:
        torch.testing.assert_close(optimal, large, rtol=1e-4, atol=0)
    else:
        assert (optimal > small * 1.001).any() and (optimal < large * 0.999).any()


def test_analytic_variance_is_theorem_1_for_a_skipped_step():
    # Bao et al. 2022, §4: for a step t → s with noise weight √(β̄_s − λ²) in the mean,
    # σ*² = λ² + (√ᾱ_s − √((β̄_s − λ²) ᾱ_t/β̄_t))² (β̄_t/ᾱ_t)(1 − Γ_t), written here from the paper in float64.
    scheduler = DDIMScheduler(
        reverse_variance="analytic", analytic_gamma=gaussian_gamma(DDIMScheduler(), 0.4).tolist()
    )
    for t, s, eta in ((999, 899, 0.0), (500, 300, 0.5), (120, 20, 1.0)):
        a_t, a_s = scheduler.alphas_cumprod[t].double(), scheduler.alphas_cumprod[s].double()
        lambda_sq = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        gamma = gaussian_gamma(scheduler, 0.4)[t]
        x0_variance = ((1 - a_t) / a_t * (1 - gamma)).clamp(0, 1)
        expected = lambda_sq + (a_s.sqrt() - ((1 - a_s - lambda_sq) * a_t / (1 - a_t)).sqrt()) ** 2 * x0_variance
        torch.testing.assert_close(scheduler.analytic_variance(t, s, lambda_sq), expected, rtol=1e-12, atol=0)


CHOICE_NAMES = list(CHOICES)


@pytest.mark.parametrize(
    "cls, config",
    [(cls, choice(name)) for cls in (DDPMScheduler, DDIMScheduler) for name in CHOICE_NAMES]
    + [(DDPMScheduler, {"variance_type": name}) for name in STOCK_VARIANCE_TYPES],
    ids=lambda value: getattr(value, "__name__", None) or next(iter(value.values())),
)
@pytest.mark.parametrize("grid", [{"timestep_spacing": "trailing"}, {"steps_offset": 1}], ids=["trailing", "offset"])
def test_the_step_to_x0_adds_no_noise(cls, config, grid):
    # The last timestep of "trailing" (99 here) or of steps_offset=1 (1) is above 0; stock's rule "noise while t > 0"
    # added noise of variance β_t (fixed_large) or the learned one to the final images. With hfddpm the last step
    # returns x̂_0 (clipping off), whatever the seed.
    scheduler = cls(clip_sample=False, **config, **grid)
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[-1]
    assert t > 0
    sample = dummy_sample_deter()
    output = torch.cat([dummy_model(sample, t), torch.full_like(sample, 0.3)], dim=1)
    if "learned" not in str(config):
        output = output[:, :3]
    extra = {"eta": 1.0} if cls is DDIMScheduler else {}
    alpha_bar = scheduler.alphas_cumprod[t]
    expected_x0 = (sample - (1 - alpha_bar) ** 0.5 * dummy_model(sample, t)) / alpha_bar**0.5
    for seed in (0, 1):
        step = scheduler.step(output, t, sample, generator=torch.manual_seed(seed), **extra)
        torch.testing.assert_close(step.pred_original_sample, expected_x0, rtol=1e-6, atol=1e-6)
        assert torch.equal(step.prev_sample, step.pred_original_sample)


@pytest.mark.parametrize("name", ["learned", "learned_range"])
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_learned_choices_need_the_variance_channels(cls, name):
    scheduler = cls(reverse_variance=name)
    scheduler.set_timesteps(10)
    sample = dummy_sample_deter()
    with pytest.raises(ValueError, match=r"needs a model with 2 × 3 output channels.*learned-variance UNet preset"):
        scheduler.step(dummy_model(sample, 500), scheduler.timesteps[0], sample)


# The DDIM step


def test_ddim_step_is_song_et_al_eq_12_and_the_schedulers_deterministic_step():
    scheduler = DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    scheduler.set_timesteps(10)
    sample, epsilon = torch.randn(2, 1, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t, s = int(scheduler.timesteps[3]), int(scheduler.timesteps[4])
    a_t, a_s = scheduler.alpha_bar(t).double(), scheduler.alpha_bar(s).double()
    original = (sample - (1 - a_t).sqrt() * epsilon) / a_t.sqrt()
    # Song et al. 2021, eq. 12 with σ = 0: x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s) ε̂.
    expected = a_s.sqrt() * original + (1 - a_s).sqrt() * epsilon
    torch.testing.assert_close(ddim_step(sample, original, a_t, a_s), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(ddim_step(sample, original, a_t, torch.tensor(1.0, dtype=torch.float64)), original)
    step = scheduler.step(epsilon.float(), t, sample.float(), eta=0.0).prev_sample
    torch.testing.assert_close(step.double(), expected, rtol=0, atol=2e-6)  # the scheduler works in float32


@pytest.mark.parametrize("name", CHOICE_NAMES)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_with_eta_one_is_the_ddpm_step_of_the_same_choice(name, spacing):
    # η = 1 makes DDIM's λ² = β̃_{t,s}, so its mean √ᾱ_s x̂_0 + √(1 − ᾱ_s − β̃) ε̂ is the posterior mean μ̃ and its
    # noise the choice's σ: Analytic-DDIM at η = 1 is Analytic-DDPM (Bao et al. 2022, §4). The identity needs ε̂
    # consistent with the clipped x̂_0, which `use_clipped_model_output` re-derives.
    channels = CHOICES[name][1]
    ddpm = scheduler_loop(DDPMScheduler(**choice(name, timestep_spacing=spacing)), 12, channels)
    ddim_scheduler = DDIMScheduler(**choice(name, timestep_spacing=spacing))
    ddim = scheduler_loop(ddim_scheduler, 12, channels, eta=1.0, use_clipped_model_output=True)
    for (a, _), (b, _) in zip(ddpm, ddim, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # float32: two orders of the same operations


# Options refused because they would sample with wrong numbers (or fail later, deep inside diffusers)


UNKNOWN_NAMES = [
    ("prediction_type", "noise", "v_prediction"),
    ("timestep_spacing", "uniform", "quadratic"),
    ("reverse_variance", "small", "learned_range"),
    ("beta_schedule", "quadratic", "cosine"),
]


@pytest.mark.parametrize(
    "cls, option, value, choices",
    [(cls, *case) for cls in (DDPMScheduler, DDIMScheduler) for case in UNKNOWN_NAMES]
    + [(DDPMScheduler, "variance_type", "fixed", "fixed_small_log")],  # stock reads an unknown one as fixed_small
)
def test_unknown_names_are_refused_with_the_choices(cls, option, value, choices):
    with pytest.raises(ValueError, match=rf"{option} must be .*one of .*'{choices}'.*got '{value}'") as info:
        cls(**{option: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize(
    "options, message",
    [
        # Stock diffusers builds each of these and samples NaN, or fails at the first step with an IndexError.
        ({"beta_start": NAN}, r"beta_start must be a finite number in \(0, 1\), got nan"),
        ({"beta_end": float("inf")}, r"beta_end must be a finite number in \(0, 1\), got inf"),
        ({"beta_start": -0.001}, r"beta_start .* \(0, 1\), got -0.001"),
        ({"beta_start": 0.0}, r"beta_start .* \(0, 1\), got 0.0"),
        ({"beta_end": 1.0}, r"beta_end .* \(0, 1\), got 1.0"),
        ({"beta_start": 0.1, "beta_end": 0.01}, "beta_start must not exceed beta_end"),
        ({"beta_schedule": "scaled_linear", "beta_start": NAN}, r"beta_start .*, got nan"),
        ({"num_train_timesteps": 0}, r"num_train_timesteps must be in \[1, inf\), got 0"),
        ({"trained_betas": [0.1, 0.2]}, r"trained_betas needs one β per training timestep .*1000.*got 2"),
        ({"num_train_timesteps": 2, "trained_betas": [0.1, NAN]}, r"\(0, 1\), got nan at timestep 1"),
        ({"num_train_timesteps": 2, "trained_betas": [0.0, 0.1]}, r"\(0, 1\), got 0.0 at timestep 0"),
        ({"num_train_timesteps": 2, "trained_betas": [0.1, 1.0]}, r"\(0, 1\), got 1.0 at timestep 1"),
    ],
)
def test_schedulers_refuse_a_broken_noise_schedule(cls, options, message):
    with pytest.raises(ValueError, match=message) as info:
        cls(**options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize(
    "key, value, switch",
    [
        # Stock diffusers builds each of these and, with its switch on, samples constant or NaN images, reads
        # ᾱ_{T−1} at t < 0, or fails at the first step (a quantile outside [0, 1], an index past T − 1); the
        # 0 quantile is the smallest |x̂_0|, no percentile.
        ("clip_sample_range", 0.0, "clip_sample"),
        ("clip_sample_range", -1.0, "clip_sample"),
        ("clip_sample_range", NAN, "clip_sample"),
        ("dynamic_thresholding_ratio", 0.0, "thresholding"),
        ("dynamic_thresholding_ratio", 1.5, "thresholding"),
        ("sample_max_value", 0.0, "thresholding"),
        ("sample_max_value", -1.0, "thresholding"),
        ("steps_offset", -1, None),
        ("steps_offset", 1000, None),  # T = 1000
    ],
)
def test_config_numbers_that_sample_constant_or_nan_images_are_refused(cls, key, value, switch):
    config = {key: value, **({switch: True} if switch else {})}
    with pytest.raises(ValueError, match=key) as info:
        cls(**config)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=key):  # as a checkpoint's scheduler_config.json loads
        cls.from_config({"_class_name": cls.__name__, "num_train_timesteps": 1000, **config})
    if switch:  # unread while its switch is off
        cls(**{**config, switch: False})


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_analytic_needs_one_finite_gamma_per_training_timestep(cls):
    with pytest.raises(ValueError, match="reverse_variance='analytic' needs analytic_gamma.*fit_analytic_variance"):
        cls(reverse_variance="analytic")
    with pytest.raises(ValueError, match=r"one Γ_t per training timestep \(1000\), got 3"):
        cls(reverse_variance="analytic", analytic_gamma=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"analytic_gamma\[1\] must be a finite number in \[0, inf\), got nan"):
        cls(num_train_timesteps=2, reverse_variance="analytic", analytic_gamma=[1.0, NAN])


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize(
    "steps, error, message",
    [
        (0, ValueError, r"num_inference_steps must be in \[1, 1000\], got 0"),
        (-3, ValueError, r"num_inference_steps must be in \[1, 1000\], got -3"),
        (1001, ValueError, r"num_inference_steps must be in \[1, 1000\], got 1001"),
        # Stock samples with 1 and 3 steps.
        (True, TypeError, r"num_inference_steps must be an integer, got True \(bool\)"),
        (2.5, TypeError, r"num_inference_steps must be an integer, got 2.5 \(float\)"),
    ],
)
def test_set_timesteps_refuses_a_step_count_outside_1_to_T(cls, steps, error, message):
    with pytest.raises(error, match=message):
        cls().set_timesteps(steps)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_set_timesteps_takes_numpy_integers(cls):
    scheduler = cls()
    scheduler.set_timesteps(np.int64(4))
    assert scheduler.num_inference_steps == 4 and type(scheduler.num_inference_steps) is int


@pytest.mark.parametrize(
    "timesteps, error, message",
    [
        # Stock refuses these two in its own words; hfddpm in one line each.
        ([100, 87, 50, 51, 0], ValueError, r"timesteps must strictly descend .*, got \[100, 87, 50, 51, 0\]"),
        ([1000], ValueError, r"timesteps\[0\] must be in \[0, 999\], got 1000"),
        # Stock takes these silently: a duplicate, a negative t (read as ᾱ of t = 999), a fraction (truncated).
        ([100, 50, 50, 0], ValueError, "timesteps must strictly descend"),
        ([100, 50, -1], ValueError, r"timesteps\[2\] must be in \[0, 999\], got -1"),
        ([100, 50.5, 0], TypeError, r"timesteps\[1\] must be an integer, got 50.5 \(float\)"),
        ([], ValueError, "timesteps is empty; pass at least one"),
    ],
)
def test_bad_custom_timesteps_are_refused_in_one_line(timesteps, error, message):
    with pytest.raises(error, match=message):
        DDPMScheduler().set_timesteps(timesteps=timesteps)


@pytest.mark.parametrize("eta", [NAN, -0.5, 1.5])
def test_ddim_step_refuses_an_eta_outside_0_and_1(eta):
    # Above 1 the mean's √(1 − ᾱ_s − η² β̃) turns NaN; below 0 η² hides the sign.
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\] \(0 is deterministic DDIM"):
        scheduler.step(x, scheduler.timesteps[0], x, eta=eta)
