"""The variational bound: its terms against numerical integration, and the whole bound against a known density."""

import math
from types import SimpleNamespace

import diffusers
import numpy as np
import pytest
import torch
from diffusers.models.unets.unet_2d import UNet2DOutput

from hfddpm import DDPMScheduler, GaussianMixtureDenoiser
from hfddpm.evaluation import plot_bound_terms, variational_bound
from hfddpm.evaluation.likelihood import decoder_scale, latent_variational_bound, timestep_strata
from hfddpm.schedulers.bound_terms import (
    constant_terms,
    discretized_gaussian_log_likelihood,
    normal_data_mean_terms,
    normal_kl,
    prior_term,
    vlb_terms,
)

from .conftest import gaussian_denoiser, linear_gaussian_case


def _integrate(f, low: float, high: float, points: int = 400_001) -> float:
    """∫ f over [low, high] by Simpson's rule in float64."""
    x = np.linspace(low, high, points)
    y = f(x)
    h = (high - low) / (points - 1)
    return h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())


def _normal_pdf(x, mean, std):
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


@pytest.mark.parametrize("m1, s1, m2, s2", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 1.5), (1.0, 0.1, 0.9, 0.12)])
def test_normal_kl_is_the_integral_of_p_log_p_over_q(m1, s1, m2, s2):
    def integrand(x):
        p, q = _normal_pdf(x, m1, s1), _normal_pdf(x, m2, s2)
        return p * (np.log(p) - np.log(q))

    expected = _integrate(integrand, m1 - 14 * s1, m1 + 14 * s1)
    kl = normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, 2 * math.log(s1), m2, 2 * math.log(s2))))
    assert kl.item() == pytest.approx(expected, rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("mean, std", [(0.1, 0.05), (-0.97, 0.01), (0.999, 0.3), (0.4, 0.004)])
def test_discretized_decoder_is_the_integral_of_the_density_over_each_bin(mean, std):
    # Bins are [x − 1/255, x + 1/255] for the 254 inner levels, and reach ±∞ for the first and the last.
    levels = [-1.0, -1 + 2 / 255, round((mean + 1) * 127.5) / 127.5 - 1, 1 - 2 / 255, 1.0]  # k/127.5 − 1
    for x in levels:
        low = -1 - 30 * std - 10 if x == -1.0 else x - 1 / 255
        high = 1 + 30 * std + 10 if x == 1.0 else x + 1 / 255
        mass = _integrate(lambda v: _normal_pdf(v, mean, std), max(low, mean - 40 * std), min(high, mean + 40 * std))
        log_p = discretized_gaussian_log_likelihood(
            torch.tensor(x, dtype=torch.float64),
            torch.tensor(mean, dtype=torch.float64),
            torch.tensor(math.log(std), dtype=torch.float64),
        )
        if mass > 1e-11:  # the decoder floors a bin's probability at 1e-12
            assert log_p.exp().item() == pytest.approx(mass, rel=1e-7)


@pytest.mark.parametrize("beta_schedule", ["linear", "cosine"])
def test_prior_term_is_the_closed_form_kl_and_almost_zero(beta_schedule):
    scheduler = DDPMScheduler(beta_schedule=beta_schedule)
    x0 = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64).reshape(5, 1, 1, 1)
    alpha_bar = scheduler.alphas_cumprod[-1].double()
    # KL(N(√ᾱ x, 1 − ᾱ) ‖ N(0, 1)) = ½ (−log(1 − ᾱ) + (1 − ᾱ) + ᾱ x² − 1), in nats.
    expected = 0.5 * (-torch.log(1 - alpha_bar) - alpha_bar + alpha_bar * x0.flatten() ** 2) / math.log(2)
    terms = prior_term(scheduler, x0)
    torch.testing.assert_close(terms, expected, rtol=1e-9, atol=1e-15)
    # ᾱ_T is 4.0e-5 for DDPM's linear schedule and 2.5e-9 for the capped cosine one: L_T is negligible.
    assert terms.max().item() < (1e-4 if beta_schedule == "linear" else 1e-8)


def _expected_variance_mismatch(scheduler, data_std: float, choice: str) -> torch.Tensor:
    """E KL(q(x_{t−1}|x_t) ‖ p_θ(x_{t−1}|x_t)) per dimension, nats, for each t, with p_θ's exact mean.

    For x_0 ~ N(μ, s²) the true reverse conditional is Gaussian with variance
    v_t = V_{t−1} − α_t V_{t−1}²/V_t, V_t = ᾱ_t s² + 1 − ᾱ_t (V_{−1} = s²): only the variance σ_t² is wrong, by
    ½ (r − 1 − log r) with r = v_t/σ_t².
    """
    alpha_bar = scheduler.alphas_cumprod.double()
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    variance = alpha_bar * data_std**2 + 1 - alpha_bar
    variance_prev = alpha_bar_prev * data_std**2 + 1 - alpha_bar_prev
    true_variance = variance_prev - alpha_bar / alpha_bar_prev * variance_prev**2 / variance
    t = torch.arange(len(alpha_bar))
    ratio = true_variance / scheduler.reverse_log_variance(t, t - 1, reverse_variance=choice).double().exp()
    return 0.5 * (ratio - 1 - torch.log(ratio))


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["fixed_small", "fixed_large"])
def test_bound_on_gaussian_data_is_the_true_nll_plus_the_variance_mismatch(choice):
    # x_0 ~ N(0.3, 0.5² I) in 16 dimensions, the exact noise predictor, T = 1000, the continuous decoder: the bound
    # is E[−log q(x_0)] = ½ log(2πe s²) = 0.726 nats/dim plus the closed-form cost of the wrong reverse variance,
    # 0.570 nats/dim for β̃ and 0.115 for β (0.114 of which is the decoder's, whose σ² is Ho et al.'s β̃_1 for both).
    data_std = 0.5
    scheduler = DDPMScheduler(reverse_variance=choice)
    denoiser = gaussian_denoiser(scheduler, torch.full((1, 4, 4), 0.3), data_std)
    x0 = denoiser.sample_data(512, torch.Generator().manual_seed(0))
    bound = variational_bound(denoiser, scheduler, x0.split(256), decoder="continuous", progress_bar=False)

    nats = math.log(2)
    true_nll = 0.5 * math.log(2 * math.pi * math.e * data_std**2)
    mismatch = _expected_variance_mismatch(scheduler, data_std, choice).sum().item()
    estimate, error = bound.bits_per_dim * nats, bound.standard_error * nats
    assert error < 0.025  # Monte Carlo error of the mean over 512 images, each with one draw of x_t per t
    assert estimate - true_nll > mismatch - 3 * error > 0  # a bound, and not a vacuous one
    assert estimate == pytest.approx(true_nll + mismatch, abs=3 * error)
    assert bound.timesteps == list(range(1000)) and bound.num_timesteps == 1000
    expected_gap = {"fixed_small": 0.570, "fixed_large": 0.115}[choice]
    assert mismatch == pytest.approx(expected_gap, abs=5e-4)


@pytest.mark.slow
def test_stratified_subsample_of_t_is_unbiased():
    scheduler = DDPMScheduler(reverse_variance="fixed_large")
    denoiser = gaussian_denoiser(scheduler, torch.zeros(1, 2, 2), 0.5)
    x0 = denoiser.sample_data(256, torch.Generator().manual_seed(1))
    full = variational_bound(denoiser, scheduler, [x0], decoder="continuous", progress_bar=False)
    estimates = [
        variational_bound(
            denoiser,
            scheduler,
            [x0],
            num_timesteps=20,
            decoder="continuous",
            generator=torch.Generator().manual_seed(seed),
            progress_bar=False,
        )
        for seed in range(4)
    ]
    mean = np.mean([e.bits_per_dim for e in estimates])
    error = math.sqrt(np.mean([e.standard_error**2 for e in estimates]) / 4 + full.standard_error**2)
    assert mean == pytest.approx(full.bits_per_dim, abs=3 * error)
    assert all(e.num_timesteps == 20 and e.timesteps[0] == 0 for e in estimates)  # the decoder always counts


def test_timestep_strata_cover_every_timestep_once():
    for k in (2, 7, 100, 999):
        strata = timestep_strata(1000, k)
        assert len(strata) == k and strata[0] == (0, 1)
        covered = [t for low, high in strata for t in range(low, high)]
        assert covered == list(range(1000))
    assert timestep_strata(1000, None) == timestep_strata(1000, 5000) == [(t, t + 1) for t in range(1000)]
    with pytest.raises(ValueError, match="num_timesteps must be at least 2"):
        timestep_strata(1000, 1)


class _ConstantVarianceChannels(torch.nn.Module):
    """The exact denoiser with learned-range variance channels fixed at v."""

    def __init__(self, denoiser: GaussianMixtureDenoiser, v: float):
        super().__init__()
        self.denoiser, self.v = denoiser, v
        self.device, self.dtype = denoiser.device, torch.float64

    def forward(self, sample, timesteps):
        epsilon = self.denoiser(sample, timesteps).sample
        return UNet2DOutput(sample=torch.cat([epsilon, torch.full_like(epsilon, self.v)], dim=1))


def test_learned_range_bound_at_its_ends_is_the_fixed_variances_bound():
    # Nichol & Dhariwal 2021, eq. 15: v = −1 is β̃ (fixed_small), v = +1 is β (fixed_large) for every t ≥ 1; the
    # decoder's upper end is β_0 itself, where fixed_large carries Ho et al.'s σ_1² = β̃_1.
    learned = DDPMScheduler(reverse_variance="learned_range", num_train_timesteps=100)
    denoiser = gaussian_denoiser(learned, torch.zeros(1, 2, 2), 0.3)
    x0 = denoiser.sample_data(32, torch.Generator().manual_seed(0)).clamp(-1, 1)

    def bound(model, scheduler):
        return variational_bound(
            model, scheduler, [x0], generator=torch.Generator().manual_seed(0), progress_bar=False
        )

    low = bound(_ConstantVarianceChannels(denoiser, -1.0), learned)
    high = bound(_ConstantVarianceChannels(denoiser, 1.0), learned)
    small = bound(denoiser, DDPMScheduler(reverse_variance="fixed_small", num_train_timesteps=100))
    large = bound(denoiser, DDPMScheduler(reverse_variance="fixed_large", num_train_timesteps=100))
    # The fixed choices' log σ² is rounded to float32 (the interpolation is not): agreement to ~1e-7.
    assert low.bits_per_dim == pytest.approx(small.bits_per_dim, rel=1e-6)
    np.testing.assert_allclose(high.terms_bits_per_dim[1:], large.terms_bits_per_dim[1:], rtol=1e-5)
    assert high.decoder_bits_per_dim != pytest.approx(large.decoder_bits_per_dim, rel=1e-3)


def test_bound_evaluates_a_checkpoint_with_another_reverse_variance_and_plots_its_terms(tmp_path):
    scheduler = DDPMScheduler(num_train_timesteps=50)
    denoiser = gaussian_denoiser(scheduler, torch.zeros(1, 2, 2), 0.3)
    x0 = denoiser.sample_data(16, torch.Generator().manual_seed(0)).clamp(-1, 1)
    small = variational_bound(denoiser, scheduler, [x0], progress_bar=False)
    large = variational_bound(denoiser, scheduler, [x0], reverse_variance="fixed_large", progress_bar=False)
    assert (small.reverse_variance, large.reverse_variance) == ("fixed_small", "fixed_large")
    assert small.bits_per_dim != pytest.approx(large.bits_per_dim, rel=1e-3)
    # The total is L_T plus every term (one per t here).
    assert small.bits_per_dim == pytest.approx(small.prior_bits_per_dim + sum(small.terms_bits_per_dim), rel=1e-12)
    path = plot_bound_terms(small, tmp_path / "terms.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_stock_schedulers_checkpoint_is_evaluated_with_its_own_variance():
    # A stock DDPMScheduler states its σ²_t as variance_type; the bound evaluates that choice.
    ours = DDPMScheduler(num_train_timesteps=50, reverse_variance="fixed_large")
    stock = diffusers.DDPMScheduler(num_train_timesteps=50, variance_type="fixed_large")
    denoiser = gaussian_denoiser(ours, torch.zeros(1, 2, 2), 0.3)
    x0 = denoiser.sample_data(8, torch.Generator().manual_seed(0)).clamp(-1, 1)
    bounds = [variational_bound(denoiser, scheduler, [x0], progress_bar=False) for scheduler in (stock, ours)]
    assert bounds[0].reverse_variance == "fixed_large" and bounds[0] == bounds[1]


@pytest.mark.parametrize("choice", ["fixed_small", "fixed_large"])
def test_each_term_is_its_constant_plus_lsgms_importance_weight_for_normal_data(choice):
    """L_t with x̂_0 = x_0 is `constant_terms` exactly; for x_0 ~ N(0, I) and its exact denoiser the rest,
    ‖μ̃ − μ_θ‖²/(2σ²), has the mean `normal_data_mean_terms` (to 4 standard errors of 4,096 draws of 64 dimensions)."""
    scheduler = DDPMScheduler(reverse_variance=choice, prediction_type="sample")
    constants, expected = constant_terms(scheduler), normal_data_mean_terms(scheduler)
    denoiser = gaussian_denoiser(scheduler, torch.zeros(1, 8, 8), 1.0)
    generator = torch.Generator().manual_seed(0)
    for t in (0, 1, 10, 500, 999):
        original = torch.randn(4096, 1, 8, 8, dtype=torch.float64, generator=generator)
        timesteps = torch.full((4096,), t)
        noisy = scheduler.add_noise(original, torch.randn(original.shape, generator=generator).double(), timesteps)
        oracle = vlb_terms(scheduler, original, original, noisy, timesteps, "continuous") * math.log(2)
        torch.testing.assert_close(oracle, torch.full_like(oracle, constants[t].item()))
        exact = denoiser(noisy, timesteps).sample.double()
        excess = vlb_terms(scheduler, exact, original, noisy, timesteps, "continuous") * math.log(2) - constants[t]
        assert abs(excess.mean() - expected[t]) < 4 * excess.std() / math.sqrt(len(excess))
    assert expected.argmax() == 0 and expected[:100].sum() > 0.75 * expected.sum()  # LSGM's draws favour small t


def test_the_latent_bound_of_the_exact_linear_gaussian_model_is_its_likelihood_up_to_the_decoder_step():
    """With the exact posterior as encoder and the exact denoiser of N(0, 1) latents with β_t variances, the VAE
    bound is tight but for the last diffusion step: E[bound] = −log P(x) + E[L_0 excess], the KL between the true
    q(z_0|z_1) = N(μ, β_0) and the model's N(μ, σ_0²), ½ (log σ_0²/β_0 + β_0/σ_0² − 1) per latent dimension (here as
    many as pixels). Tolerance: 3 standard errors of the estimate, whose spread comes from the draws of E, t and ε,
    and 0.005 bits/dim for the discretisation, which makes the exact posterior of the 8-bit x slightly non-Gaussian."""
    images, autoencoder, exact = linear_gaussian_case()
    scheduler = DDPMScheduler(reverse_variance="fixed_large")
    prior = gaussian_denoiser(scheduler, torch.zeros(1, 4, 4), 1.0)
    bound = latent_variational_bound(prior, scheduler, autoencoder, images.split(128), 0.05, progress_bar=False)
    model_variance = float(scheduler.reverse_log_variance(torch.tensor([0]), torch.tensor([-1])).exp())
    beta = 1 - float(scheduler.alphas_cumprod[0])
    excess = 0.5 * (math.log(model_variance / beta) + beta / model_variance - 1) / math.log(2)
    expected = exact.mean().item() + excess
    assert abs(bound.bits_per_dim - expected) < 3 * bound.standard_error + 0.005
    parts = bound.decoder_bits_per_dim + bound.entropy_bits_per_dim + bound.prior_bits_per_dim
    assert parts == pytest.approx(bound.bits_per_dim, rel=1e-12)
    entropy = 0.5 * (math.log(2 * math.pi * math.e) - math.log(autoencoder.precision)) / math.log(2)
    assert bound.entropy_bits_per_dim == pytest.approx(-entropy, rel=1e-12)  # H(q) in closed form, per pixel


class NoisyIdentity:
    """An autoencoder whose E is x and whose decoder adds N(0, s²) noise, except to black pixels, decoded to −3."""

    device, dtype = torch.device("cpu"), torch.float64

    def __init__(self, s: float) -> None:
        self.s, self.generator = s, torch.Generator().manual_seed(0)

    def encode(self, images):
        return SimpleNamespace(latent_dist=SimpleNamespace(sample=lambda generator: images))

    def decode(self, latents):
        noise = torch.randn(latents.shape, generator=self.generator, dtype=latents.dtype) * self.s
        return SimpleNamespace(sample=torch.where(latents == -1, -3.0, latents + noise))


@pytest.mark.parametrize("s", [0.02, 0.2])
def test_the_decoder_scale_is_the_maximum_likelihood_sigma_of_the_8_bit_pixels(s):
    """Interior pixels whose reconstruction errors are N(0, s²): the fit is s, a σ of several bins making the
    discretised likelihood the density's (to 6 %, the grid's spacing; 100,000 errors). Black pixels decoded to −3, far
    into their end bin, cost nothing at any σ: they leave the fit at s, where the root mean square error is near 2."""
    generator = torch.Generator().manual_seed(1)
    interior = (torch.randint(28, 228, (128, 1, 28, 28), generator=generator) / 127.5 - 1).double()
    assert decoder_scale(NoisyIdentity(s), [interior]) == pytest.approx(s, rel=0.06)
    images = torch.cat([interior, torch.full_like(interior, -1.0)])
    assert decoder_scale(NoisyIdentity(s), [images]) == pytest.approx(s, rel=0.06)
