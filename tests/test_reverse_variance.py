"""The reverse-variance choices of the DDPM derivation (`reverse_variance`), against closed forms and stock."""

import math

import diffusers
import pytest
import torch

from hfddpm import DDIMScheduler, DDPMScheduler, GaussianMixtureDenoiser

from .conftest import dummy_model, dummy_sample_deter

CHOICES = ["fixed_small", "fixed_large", "learned", "learned_range"]


def _loop(scheduler, num_inference_steps, model_variance=None, seed=0, **step_kwargs):
    scheduler.set_timesteps(num_inference_steps)
    sample, generator, outputs = dummy_sample_deter(), torch.Generator().manual_seed(seed), []
    for t in scheduler.timesteps:
        output = dummy_model(sample, t)
        if model_variance is not None:
            output = torch.cat([output, torch.full_like(sample, model_variance)], dim=1)
        sample = scheduler.step(output, t, sample, generator=generator, **step_kwargs).prev_sample
        outputs.append(sample)
    return outputs


@pytest.mark.parametrize("num_inference_steps", [1000, 10])
def test_fixed_small_is_stock_fixed_small(num_inference_steps):
    ours = _loop(DDPMScheduler(reverse_variance="fixed_small"), num_inference_steps)
    stock = _loop(diffusers.DDPMScheduler(variance_type="fixed_small"), num_inference_steps)
    for a, b in zip(ours, stock, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # float32 rounding, accumulated over 1000 steps


def test_fixed_large_is_stock_fixed_large_but_for_a_noiseless_last_step():
    # "leading" ends at t = 0, where stock adds no noise either: the chains agree throughout.
    ours = _loop(DDPMScheduler(reverse_variance="fixed_large"), 10)
    stock = _loop(diffusers.DDPMScheduler(variance_type="fixed_large"), 10)
    for a, b in zip(ours, stock, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # "trailing" ends at t = 99: stock adds noise of variance 1 − ᾱ_99 ≈ 0.1 to the final images; hfddpm does not.
    ours = _loop(DDPMScheduler(reverse_variance="fixed_large", timestep_spacing="trailing", clip_sample=False), 10)
    stock = _loop(
        diffusers.DDPMScheduler(variance_type="fixed_large", timestep_spacing="trailing", clip_sample=False), 10
    )
    for a, b in zip(ours[:-1], stock[:-1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (ours[-1] - stock[-1]).std().item() == pytest.approx(
        math.sqrt(1 - DDPMScheduler().alphas_cumprod[99]), rel=0.1
    )


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize(
    "t, s", [(999, 998), (500, 499), (1, 0), (980, 960), (420, 400), (0, -1), (19, -1), (999, -1)]
)
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
    for choice in ("fixed_small", "fixed_large"):
        decoder = scheduler.reverse_log_variance(0, -1, reverse_variance=choice).double().exp()
        assert decoder.item() == pytest.approx(posterior_variance[0].item(), rel=5e-4)


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


@pytest.mark.parametrize("choice", CHOICES)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_with_eta_one_is_the_ddpm_step_of_the_same_choice(choice, spacing):
    model_variance = -4.0 if choice == "learned" else 0.3 if choice == "learned_range" else None
    ddpm = _loop(DDPMScheduler(reverse_variance=choice, timestep_spacing=spacing), 12, model_variance)
    # The identity needs ε̂ consistent with the clipped x̂_0, which `use_clipped_model_output` re-derives.
    ddim_scheduler = DDIMScheduler(reverse_variance=choice, timestep_spacing=spacing)
    ddim = _loop(ddim_scheduler, 12, model_variance, eta=1.0, use_clipped_model_output=True)
    for a, b in zip(ddpm, ddim, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("choice", CHOICES)
def test_ddim_with_eta_zero_stays_deterministic_whatever_the_choice(choice):
    # A DDPM config converted with DDIMScheduler.from_config carries its reverse_variance: DDIM must stay DDIM.
    model_variance = -4.0 if choice == "learned" else 0.3 if choice == "learned_range" else None
    ours = _loop(DDIMScheduler(reverse_variance=choice), 10, model_variance, eta=0.0)
    stock = _loop(diffusers.DDIMScheduler(), 10, eta=0.0)
    for a, b in zip(ours, stock, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_ddim_fixed_small_is_the_stock_eta_family():
    # σ² = η² β̃_{t,s}: stock's λ², except that the step to x_0 adds no noise (with set_alpha_to_one=False and a
    # schedule ending at t = 99 stock adds η² β̃_{99,−1} > 0 there).
    config = {"set_alpha_to_one": False, "timestep_spacing": "trailing", "clip_sample": False}
    ours = _loop(DDIMScheduler(reverse_variance="fixed_small", **config), 10, eta=0.5)
    stock = _loop(diffusers.DDIMScheduler(**config), 10, eta=0.5)
    for a, b in zip(ours[:-1], stock[:-1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours[-1], stock[-1])


@pytest.mark.parametrize("choice", CHOICES)
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_the_step_to_x0_adds_no_noise(cls, choice):
    scheduler = cls(reverse_variance=choice, timestep_spacing="trailing")
    scheduler.set_timesteps(5)
    sample, t = dummy_sample_deter(), scheduler.timesteps[-1]
    assert t > 0  # the stock rule "noise while t > 0" would add noise here
    output = torch.cat([dummy_model(sample, t), torch.zeros_like(sample)], dim=1)
    extra = {"eta": 1.0} if cls is DDIMScheduler else {}
    step = scheduler.step(output, t, sample, generator=torch.manual_seed(0), **extra)
    torch.testing.assert_close(step.prev_sample, step.pred_original_sample)


@pytest.mark.parametrize("choice", ["learned", "learned_range"])
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_learned_choices_need_the_variance_channels(cls, choice):
    scheduler = cls(reverse_variance=choice)
    scheduler.set_timesteps(10)
    sample = dummy_sample_deter()
    with pytest.raises(ValueError, match=r"needs a model with 2 × 3 output channels"):
        scheduler.step(dummy_model(sample, 500), scheduler.timesteps[0], sample)


@pytest.mark.parametrize("t, s", [(999, 998), (999, 899), (500, 250), (120, 119), (60, 0)])
def test_fixed_variances_are_exact_in_the_two_cases_of_the_derivation(t, s):
    # Ho et al. 2020, §3.2: σ² = β̃ is optimal for x_0 deterministic, σ² = β for x_0 ~ N(0, I). Here the true
    # reverse conditional q(x_s|x_t) comes from conditioning the joint Gaussian of (x_s, x_t), and the exact denoiser
    # gives the model mean: both moments must match.
    scheduler = DDPMScheduler(clip_sample=False)
    a_t, a_s = (scheduler.alphas_cumprod[i].double() for i in (t, s))
    x_t = torch.tensor([[[[-1.3]]], [[[0.2]]], [[[2.1]]]], dtype=torch.float64)
    point = torch.full((1, 1, 1), 0.6, dtype=torch.float64)
    for data_std, choice in ((0.0, "fixed_small"), (1.0, "fixed_large")):
        data_mean = point if data_std == 0 else torch.zeros_like(point)
        denoiser = GaussianMixtureDenoiser.for_scheduler(scheduler, data_mean.unsqueeze(0), [data_std])
        # Joint of (x_s, x_t): x_s = √ᾱ_s x_0 + √(1−ᾱ_s) e_1, x_t = √(ᾱ_t/ᾱ_s) x_s + √(1−ᾱ_t/ᾱ_s) e_2.
        var_s = a_s * data_std**2 + 1 - a_s
        var_t = a_t * data_std**2 + 1 - a_t
        cov_st = (a_t / a_s).sqrt() * var_s
        true_mean = a_s.sqrt() * data_mean + cov_st / var_t * (x_t - a_t.sqrt() * data_mean)
        true_variance = var_s - cov_st**2 / var_t

        x0_hat = scheduler.convert_prediction(denoiser(x_t, t).sample, x_t, t, "sample")
        model_mean, _ = scheduler.posterior_mean_variance(x0_hat, x_t, t, s)
        torch.testing.assert_close(model_mean, true_mean, rtol=1e-5, atol=1e-6)
        variance = scheduler.reverse_log_variance(t, s, reverse_variance=choice).double().exp()
        assert variance.item() == pytest.approx(true_variance.item(), rel=3e-4)


@pytest.mark.parametrize(
    "data_std, exact, wrong", [(0.0, "fixed_small", "fixed_large"), (1.0, "fixed_large", "fixed_small")]
)
def test_at_few_steps_the_right_fixed_variance_keeps_every_marginal_exact(data_std, exact, wrong):
    # Ten ancestral steps with the exact denoiser: with the right choice every intermediate x_s has the marginal
    # of q(x_s) = N(√ᾱ_s μ, ᾱ_s s² + 1 − ᾱ_s); with the other it drifts far outside the Monte Carlo tolerance.
    num_samples = 100_000
    tolerance = 5 * math.sqrt(2 / num_samples)  # five standard errors of a relative variance estimate
    worst = {}
    for choice in (exact, wrong):
        scheduler = DDPMScheduler(reverse_variance=choice, clip_sample=False, timestep_spacing="linspace")
        mean = torch.full((1, 1, 1), 0.5 if data_std == 0 else 0.0, dtype=torch.float64)
        denoiser = GaussianMixtureDenoiser.for_scheduler(scheduler, mean.unsqueeze(0), [data_std])
        scheduler.set_timesteps(10)
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((num_samples, 1, 1, 1), generator=generator, dtype=torch.float64)
        errors = []
        for t in scheduler.timesteps[:-1]:
            x = scheduler.step(denoiser(x, t).sample, t, x, generator=generator).prev_sample
            s = scheduler.previous_timestep(t)
            a_s = scheduler.alphas_cumprod[s].double()
            errors.append(abs(x.var().item() / (a_s * data_std**2 + 1 - a_s).item() - 1))
        worst[choice] = max(errors)
    assert worst[exact] < tolerance
    assert worst[wrong] > 10 * tolerance
